"""Paired transforms on synthetic images whose pixel values say where they came from.

Augment builds TensorFlow ops, and TensorFlow runs in graph mode here: each test builds its
Augment once into a graph of its own (`compiled`), with the image, label and seed fed per run.
"""
import contextlib

import cv2
import numpy as np
import pytest

from roadseg.data import transforms
from roadseg.data.classes import VOID
from roadseg.errors import UserError
from roadseg.graph_mode import import_tensorflow

tf = import_tensorflow()
tf1 = tf.compat.v1

CLASSES = {0, 1, 2}
PALETTE = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)
SWITCHES = ('flip', 'scale', 'rotate', 'shift', 'brightness', 'contrast', 'saturation', 'gamma',
            'hue', 'blur', 'clahe', 'noise')
GEOMETRIC = {'flip': {'flip': 1}, 'scale': {'scale': 0.4}, 'rotate': {'rotate': 20},
             'shift': {'shift': 0.2}, 'all': {'flip': 0.5, 'scale': 0.4, 'rotate': 20,
                                              'shift': 0.2}}
PHOTOMETRIC = {'brightness': {'brightness': 0.3}, 'contrast': {'contrast': 0.5},
               'saturation': {'saturation': 0.8}, 'blur': {'blur': 1, 'blur_sigma': 3},
               'clahe': {'clahe': 1, 'clahe_clip': 4}, 'gamma': {'gamma': 0.8},
               'hue': {'hue': 0.2}, 'noise': {'noise': 0.05}}
EVERYTHING = {k: v for options in [*GEOMETRIC.values(), *PHOTOMETRIC.values()]
              for k, v in options.items()}
SEEDS = [(0, s) for s in range(8)]  # an image's seed: int64 [2]
# One thread each: the tests run beside training jobs, and their graphs are tiny.
CONFIG = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)


@contextlib.contextmanager
def compiled(augment, shape, graph_seed=None):
    """`augment`'s ops, built once for (height, width) `shape` in a graph of their own; yields
    apply(image, label, seed) giving the numpy (image, label). `graph_seed`: a graph-level
    seed, which stateless transforms must ignore."""
    with tf.Graph().as_default() as graph:
        if graph_seed is not None:
            tf1.set_random_seed(graph_seed)
        image = tf1.placeholder(tf.uint8, (*shape, 3))
        label = tf1.placeholder(tf.uint8, shape)
        seed = tf1.placeholder(tf.int64, [2])
        outputs = augment(image, label, seed)
    with tf1.Session(graph=graph, config=CONFIG) as session:
        yield lambda images, labels, seeds: tuple(session.run(
            outputs, {image: images, label: labels, seed: seeds}))


def run_seeds(augment, image, label, seeds=SEEDS):
    """[(image, label)] out of `augment` for each seed, from one graph."""
    with compiled(augment, label.shape) as apply:
        return [apply(image, label, seed) for seed in seeds]


def run(augment, image, label, seed=(0, 1)):
    """The numpy (image, label) out of `augment` for one seed."""
    return run_seeds(augment, image, label, [seed])[0]


def only(**options):
    """An Augment with every transform off except `options`."""
    return transforms.Augment({**{k: 0 for k in SWITCHES}, **options})


def class_map(height=60, width=80):
    """Big asymmetric flat regions of classes 0, 1, 2, with 0|2 and 2|1 borders."""
    label = np.zeros((height, width), np.uint8)
    label[:, width // 2:] = 2
    label[height // 3:, 3 * width // 4:] = 1
    label[5:height // 2, 5:width // 4] = 1
    return label


def voided(label):
    """`label` with a void block next to classes 1 and 2."""
    label = label.copy()
    label[-12:, 30:60] = VOID
    return label


def coordinate_image(height=48, width=64):
    """Red is 4x and green 4y of each pixel's position, so warped values give source positions."""
    y, x = np.mgrid[:height, :width]
    return np.dstack([4 * x, 4 * y, np.full_like(x, 100)]).astype(np.uint8)


def interior(mask, pixels=2):
    """`mask` shrunk by `pixels` from region borders and the frame: there, bilinear samples only
    pixels of the same region (at the frame, it may sample outside the source, which is 0)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderValue=0).astype(bool)


def source_positions(augment, seeds=SEEDS):
    """Augment the coordinate image with each seed; for each, the output label and, for output
    pixels well inside the source, their (x, y) positions and the source (x, y) the image says
    they came from."""
    image = coordinate_image()
    found = []
    with compiled(augment, image.shape[:2]) as apply:
        for seed in seeds:
            _, out_label = apply(image, np.zeros(image.shape[:2], np.uint8), seed)
            out_image, _ = apply(image, image[..., 0] // 4, seed)
            inside = interior(out_label != VOID)
            y, x = np.nonzero(inside)
            found.append((out_label, np.stack([x, y], 1), out_image[inside][:, :2] / 4))
    return found


def fit_affine(points, sources):
    """The 2x3 affine matrix taking `points` to `sources`, by least squares."""
    design = np.hstack([points, np.ones((len(points), 1))])
    return np.linalg.lstsq(design, sources, rcond=None)[0].T


def draws(key, count, seeds=SEEDS):
    """The `count` uniform draws the transform `key` makes for each image seed, as a
    [seeds, count] array: a test's replica of Augment.__call__'s key split (one key per
    transform, in transforms.KEYS order)."""
    with tf.Graph().as_default() as graph:
        seed = tf1.placeholder(tf.int64, [2])
        keys = tf.random.experimental.stateless_split(seed, len(transforms.KEYS))
        values = tf.random.stateless_uniform([count], keys[transforms.KEYS.index(key)])
    with tf1.Session(graph=graph, config=CONFIG) as session:
        return np.array([session.run(values, {seed: s}) for s in seeds])


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------

def test_parse_options_text_and_dict():
    assert transforms.parse_options('flip=0.5,scale=0.25,rotate=5,blur=0') == \
        {'flip': 0.5, 'scale': 0.25, 'rotate': 5.0, 'blur': 0.0}
    assert transforms.parse_options(' shift = 0.1 , clahe=1, ') == {'shift': 0.1, 'clahe': 1.0}
    assert transforms.parse_options('') == {}
    assert transforms.parse_options({'blur_sigma': '2', 'contrast': 0}) == \
        {'blur_sigma': 2.0, 'contrast': 0.0}


@pytest.mark.parametrize('options', ['flip=0.5,zoom=0.2', {'zoom': 0.2}])
def test_unknown_option_names_it_and_the_allowed_keys(options):
    with pytest.raises(UserError, match=r"'zoom'.*allowed: flip, scale, rotate, shift"):
        transforms.parse_options(options)
    with pytest.raises(UserError, match='zoom'):
        transforms.Augment(options)


@pytest.mark.parametrize('text, key', [('flip=yes', 'flip'), ('flip=1.5', 'flip'),
                                       ('scale=-0.1', 'scale'), ('scale=1', 'scale'),
                                       ('rotate=nan', 'rotate'), ('shift=inf', 'shift'),
                                       ('flip=0.5,brightness', 'brightness'),
                                       ('contrast=', 'contrast')])
def test_bad_option_value(text, key):
    with pytest.raises(UserError, match=key):
        transforms.parse_options(text)


def test_bad_value_in_a_dict():
    with pytest.raises(UserError, match='blur'):
        transforms.Augment({'blur': None})


def test_options_merge_over_defaults_and_describe_what_is_on():
    augment = transforms.Augment('flip=0,rotate=5')
    assert augment.options == {**transforms.DEFAULTS, 'flip': 0.0, 'rotate': 5.0}
    assert augment.describe() == 'scale=0.25,rotate=5,brightness=0.1,contrast=0.2,saturation=0.2'
    assert only(blur=1).describe() == 'blur=1,blur_sigma=1'
    assert only(blur=1, blur_sigma=0).describe() == 'off'
    assert repr(only()) == "Augment('off')"
    assert repr(transforms.Augment('none,flip=1', crop=[8, 16])) == \
        "Augment('flip=1', crop=(8, 16))"
    assert only(clahe=1).is_on('clahe') and not only(clahe=1, clahe_clip=0).is_on('clahe')
    assert not only(clahe=1, clahe_clip=0).is_on('clahe_clip')


def test_flips_only_keeps_the_flip_and_crop_and_switches_the_rest_off():
    plain = transforms.Augment('flip=0.7,rotate=5,blur=1', crop=(16, 24)).flips_only()
    assert plain.describe() == 'flip=0.7' and plain.crop == (16, 24)
    assert transforms.Augment('flip=0').flips_only().describe() == 'off'


def test_flips_only_draws_the_same_flips_and_crops():
    """Its flip and crop come from the same keys as the full Augment's: a seed flips and cuts
    alike in both, while flips_only leaves the colours alone."""
    image = coordinate_image()
    full = transforms.Augment('none,flip=0.5,brightness=0.3', crop=(32, 16))
    directions = set()
    for (plain, plain_label), (_, label) in zip(
            run_seeds(full.flips_only(), image, image[..., 0]),
            run_seeds(full, image, image[..., 0])):
        np.testing.assert_array_equal(plain_label, label)
        np.testing.assert_array_equal(plain[..., 0], label)
        np.testing.assert_array_equal(plain[..., 2], 100)
        directions.add(int(label[0, 1]) - int(label[0, 0]))
    assert directions == {-4, 4}


def test_none_switches_everything_off_before_the_options_that_follow():
    assert transforms.Augment('none').describe() == 'off'
    assert transforms.Augment('none,flip=0.5').describe() == 'flip=0.5'
    assert transforms.parse_options('none')['scale'] == 0.0


def test_bad_tensors():
    augment = transforms.Augment()
    with tf.Graph().as_default():
        seed = tf.constant([0, 1], tf.int64)
        with pytest.raises(UserError, match=r'same static size.*\(4, 5, 3\).*\(4, 6\)'):
            augment(tf.zeros([4, 5, 3], tf.uint8), tf.zeros([4, 6], tf.uint8), seed)
        with pytest.raises(UserError, match='float32'):
            augment(tf.zeros([4, 5, 3], tf.float32), tf.zeros([4, 5], tf.uint8), seed)
        with pytest.raises(UserError, match='int32'):
            augment(tf.zeros([4, 5, 3], tf.uint8), tf.zeros([4, 5], tf.int32), seed)
        with pytest.raises(UserError, match='static size'):
            augment(tf1.placeholder(tf.uint8, [None, None, 3]),
                    tf1.placeholder(tf.uint8, [None, None]), seed)


# ----------------------------------------------------------------------------------------------
# Labels stay class indices
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', [*GEOMETRIC, *PHOTOMETRIC, 'everything'])
def test_label_values_stay_in_the_class_set(name):
    options = EVERYTHING if name == 'everything' else {**GEOMETRIC, **PHOTOMETRIC}[name]
    label = voided(class_map())
    image = PALETTE[np.minimum(label, 2)]
    for out_image, out_label in run_seeds(only(**options), image, label):
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_label.shape == label.shape and out_label.dtype == np.uint8
        assert set(np.unique(out_label).tolist()) <= CLASSES | {VOID}


# ----------------------------------------------------------------------------------------------
# Geometric transforms move image and label together
# ----------------------------------------------------------------------------------------------

def test_flip_is_exact():
    label = voided(class_map())
    image = np.random.default_rng(1).integers(0, 256, label.shape + (3,), np.uint8)
    out_image, out_label = run(only(flip=1), image, label)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_label, label[:, ::-1])


def test_flip_happens_with_its_probability():
    label = class_map()
    outputs = run_seeds(only(flip=0.5), PALETTE[label], label, [(0, s) for s in range(200)])
    flips = [np.array_equal(out_label, label[:, ::-1]) for _, out_label in outputs]
    assert all(flipped or np.array_equal(out_label, label)
               for flipped, (_, out_label) in zip(flips, outputs))
    assert 70 < sum(flips) < 130


@pytest.mark.parametrize('crop', [None, (48, 64)])
@pytest.mark.parametrize('name', GEOMETRIC)
def test_palette_image_follows_its_label(name, crop):
    """Where the output label is class c, away from region borders, the image is palette[c];
    where it is void (outside the source), the image is 0; with a crop too."""
    augment = transforms.Augment({**{k: 0 for k in SWITCHES}, **GEOMETRIC[name]}, crop)
    label = class_map()
    for out_image, out_label in run_seeds(augment, PALETTE[label], label):
        assert out_label.shape == (crop or label.shape)
        for c in CLASSES:
            inside = interior(out_label == c)
            assert inside.sum() > (50 if crop is None else 20)  # every class, away from borders
            assert np.abs(out_image[inside].astype(int) - PALETTE[c]).max() <= 1
        void = interior(out_label == VOID)
        assert not out_image[void].any()


@pytest.mark.parametrize('name', GEOMETRIC)
@pytest.mark.parametrize('axis', [0, 1])
def test_label_is_the_nearest_neighbour_of_the_image_sample(name, axis):
    """The label holds 4x (or 4y) of each source pixel: the nearest neighbour of the position
    bilinear sampling gives the image, so they differ by at most 2 (half a pixel, x4). Where the
    sampling positions' fractions vary (zoom, rotation), an offset of half a pixel or more
    between image and label would fail this."""
    image = coordinate_image()
    for out_image, out_label in run_seeds(only(**GEOMETRIC[name]), image, image[..., axis]):
        inside = interior(out_label != VOID)
        assert inside.sum() > 500
        difference = np.abs(out_image[..., axis][inside].astype(int) - out_label[inside])
        assert difference.max() <= 2


@pytest.mark.parametrize('crop', [None, (32, 40)])
def test_pixels_land_where_the_geometry_matrix_says(crop):
    """Every output pixel samples the source point the inverse of Augment.geometry gives it
    (flip, zoom, rotation, shift and crop together), and is void exactly where that point's
    nearest pixel lies outside the source."""
    augment = transforms.Augment({**{k: 0 for k in SWITCHES}, **GEOMETRIC['all']}, crop)
    image = coordinate_image()
    shape = image.shape[:2]
    with tf.Graph().as_default() as graph:
        seed = tf1.placeholder(tf.int64, [2])
        keys = dict(zip(transforms.KEYS, tf.unstack(tf.random.experimental.stateless_split(
            seed, len(transforms.KEYS)))))
        matrix = augment.geometry(shape, keys)
        outputs = augment(tf.constant(image), tf.zeros(shape, tf.uint8), seed)
    height, width = crop or shape
    y, x = np.mgrid[:height, :width]
    flipped = []
    with tf1.Session(graph=graph, config=CONFIG) as session:
        for s in SEEDS:
            m, (out_image, out_label) = session.run([matrix, outputs], {seed: s})
            flipped.append(m[0, 0] < 0)
            source = np.einsum('ij,jyx->yxi', np.linalg.inv(m)[:2],
                               np.stack([x, y, np.ones_like(x)]))
            nearest = np.floor(source + 0.5)
            outside = ((nearest < 0) | (nearest > [shape[1] - 1, shape[0] - 1])).any(axis=2)
            edge = (np.abs(source - np.round(source) - 0.5) < 1e-3).any(axis=2)  # either way
            np.testing.assert_array_equal((out_label == VOID)[~edge], outside[~edge])
            inside = interior(~outside)
            assert inside.sum() > 300
            np.testing.assert_allclose(out_image[inside][:, :2] / 4, source[inside], atol=0.2)
    assert any(flipped) and not all(flipped)


def test_scale_zooms_within_its_range_and_crops_or_pads():
    zooms = []
    for out_label, points, sources in source_positions(only(scale=0.4)):
        m = fit_affine(points, sources)
        zoom = 1 / m[0, 0]
        zooms.append(zoom)
        assert 0.6 - 0.02 < zoom < 1.4 + 0.02
        np.testing.assert_allclose(m[:, :2], np.eye(2) / zoom, atol=0.01)
        assert np.abs(points / zoom + m[:, 2] - sources).max() < 0.6
        valid = (out_label != VOID).mean()
        assert valid == pytest.approx(min(zoom, 1) ** 2, abs=0.06)
        if zoom > 1:  # a crop: every output pixel comes from inside the source
            assert valid == 1
    assert min(zooms) < 0.9 and max(zooms) > 1.1


def test_crop_cuts_the_same_window_of_image_and_label_at_random_places():
    image, label = coordinate_image(), class_map(48, 64)
    corners = set()
    for out_image, out_label in run_seeds(transforms.Augment('none', crop=(32, 16)), image,
                                          label, [(0, s) for s in range(16)]):
        assert out_image.shape == (32, 16, 3) and out_label.shape == (32, 16)
        x, y = out_image[0, 0, :2] // 4
        corners.add((x, y))
        np.testing.assert_array_equal(out_image, image[y:y + 32, x:x + 16])
        np.testing.assert_array_equal(out_label, label[y:y + 32, x:x + 16])
    assert len(corners) > 8 and all(x <= 48 and y <= 16 for x, y in corners)
    assert len({x for x, _ in corners}) > 4 and len({y for _, y in corners}) > 4


@pytest.mark.parametrize('crop', [(64, 32), (32, 81)])
def test_crop_larger_than_the_image_is_an_error(crop):
    with tf.Graph().as_default():
        image, label = tf.zeros([60, 80, 3], tf.uint8), tf.zeros([60, 80], tf.uint8)
        with pytest.raises(UserError, match=f'crop {crop[0]}x{crop[1]} is larger than the 60x80'):
            transforms.Augment(crop=crop)(image, label, tf.constant([0, 1], tf.int64))


def test_crop_of_the_whole_image_changes_nothing():
    image, label = coordinate_image(), class_map(48, 64)
    for out_image, out_label in run_seeds(transforms.Augment('none', crop=(48, 64)), image,
                                          label):
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_label, label)


def test_rotation_is_about_the_centre_within_its_range():
    angles = []
    for _, points, sources in source_positions(only(rotate=20)):
        m = fit_affine(points, sources)
        angle = np.degrees(np.arctan2(m[0, 1], m[0, 0]))
        angles.append(angle)
        assert abs(angle) <= 20.5
        cos, sin = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        np.testing.assert_allclose(m[:, :2], [[cos, sin], [-sin, cos]], atol=0.01)
        centre = np.array([63 / 2, 47 / 2])
        np.testing.assert_allclose(m[:, :2] @ centre + m[:, 2], centre, atol=0.05)
    assert min(angles) < -5 and max(angles) > 5


def test_shift_translates_within_its_range():
    shifts = []
    for _, points, sources in source_positions(only(shift=0.2)):
        m = fit_affine(points, sources)
        np.testing.assert_allclose(m[:, :2], np.eye(2), atol=0.01)
        shift = -m[:, 2]
        assert abs(shift[0]) <= 0.2 * 64 + 0.2 and abs(shift[1]) <= 0.2 * 48 + 0.2
        shifts.append(shift)
    assert np.ptp(np.array(shifts), axis=0).min() > 5


# ----------------------------------------------------------------------------------------------
# Photometric transforms change the image only, in place
# ----------------------------------------------------------------------------------------------

def square_scene():
    """A bright square off centre on a dark textured ground, and a class map."""
    rng = np.random.default_rng(5)
    image = rng.integers(20, 60, (60, 80, 3), np.uint8)
    image[10:30, 45:70] = rng.integers(180, 230, (20, 25, 3), np.uint8)
    return image, voided(class_map())


def mid_scene():
    """The square scene in 86..156, so that no jitter tested here saturates."""
    image, label = square_scene()
    return image // 3 + 80, label


def centroid_of_bright(image):
    gray = image.astype(float).mean(axis=2)
    y, x = np.nonzero(gray > (gray.min() + gray.max()) / 2)
    return np.array([x.mean(), y.mean()])


@pytest.mark.parametrize('name', PHOTOMETRIC)
def test_photometric_keeps_label_and_content_in_place(name):
    image, label = square_scene()
    changed = 0
    for out_image, out_label in run_seeds(only(**PHOTOMETRIC[name]), image, label):
        np.testing.assert_array_equal(out_label, label)
        # CLAHE brightens some dark ground next to the square: about 1 pixel of centroid
        np.testing.assert_allclose(centroid_of_bright(out_image), centroid_of_bright(image),
                                   atol=1.5)
        changed += not np.array_equal(out_image, image)
    # A blur sigma below about 0.2 (of up to 3) changes no 8-bit value, as OpenCV's does not
    unseen = (draws('blur', 2)[:, 1] * 3 < 0.2).sum() if name == 'blur' else 0
    assert changed >= len(SEEDS) - 1 - unseen


def test_brightness_moves_values_by_at_most_its_strength():
    image, label = mid_scene()
    offsets = []
    for out, _ in run_seeds(only(brightness=0.3), image, label):
        change = out.astype(int) - image
        assert np.abs(change).max() <= 0.3 * 255 + 1
        assert np.ptp(change) <= 1  # one offset for every pixel and channel: nothing saturates
        offsets.append(change.mean())
    assert min(offsets) < -20 and max(offsets) > 20


def test_brightness_saturates_at_black_and_white():
    image = np.zeros((8, 10, 3), np.uint8)
    image[:, 5:] = 255
    outputs = run_seeds(only(brightness=1), image, np.zeros((8, 10), np.uint8))
    for out, _ in outputs:
        assert (out[:, :5] == out[0, 0]).all() and (out[:, 5:] == out[0, 5]).all()
        assert out[0, 0, 0] == 0 or out[0, 5, 0] == 255  # one end stays, clipped, not wrapped
    assert {out[0, 0, 0] > 0 for out, _ in outputs} == {False, True}


def test_contrast_and_brightness_are_monotonic_per_pixel():
    """Both map each value through one increasing function, whatever its position."""
    image, label = square_scene()
    order = np.argsort(image.ravel(), kind='stable')
    for out, _ in run_seeds(only(brightness=0.2, contrast=0.5), image, label):
        assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_contrast_keeps_the_mean_and_scales_the_spread():
    image, label = mid_scene()
    factors = []
    for out, _ in run_seeds(only(contrast=0.5), image, label):
        assert out.mean() == pytest.approx(image.mean(), abs=0.5)
        factors.append(out.std() / image.std())
        assert 0.5 - 0.02 < factors[-1] < 1.5 + 0.02
    assert min(factors) < 0.8 and max(factors) > 1.2


def test_saturation_keeps_luma_and_gray_pixels():
    """A blend with the BT.601 gray changes colourfulness only, not lightness."""
    image, label = mid_scene()
    image[:, :20] = image[:, :20, :1]  # a gray band
    changed = 0
    for out, _ in run_seeds(only(saturation=0.8), image, label):
        luma = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(int)
        assert np.abs(luma - cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)).max() <= 1
        assert np.abs(out[:, :20].astype(int) - image[:, :20]).max() <= 1
        changed += not np.array_equal(out[:, 20:], image[:, 20:])
    assert changed >= len(SEEDS) - 2


def test_saturation_spreads_or_narrows_the_channels():
    image, label = mid_scene()
    spread = np.ptp(image.astype(int), axis=2).mean()
    factors = [np.ptp(out.astype(int), axis=2).mean() / spread
               for out, _ in run_seeds(only(saturation=0.8), image, label)]
    assert all(0.2 - 0.02 < f < 1.8 + 0.02 for f in factors)
    assert min(factors) < 0.7 and max(factors) > 1.3


def test_gamma_is_monotonic_keeps_black_and_white_and_darkens_or_lifts():
    image, label = square_scene()
    image[0, :2] = [[0, 0, 0], [255, 255, 255]]
    order = np.argsort(image.ravel(), kind='stable')
    means = []
    for out, _ in run_seeds(only(gamma=0.8), image, label):
        assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()
        np.testing.assert_array_equal(out[0, :2], image[0, :2])
        means.append(out.mean() - image.mean())
        # one exponent for every value, within exp(+-0.8), read off the mid tones
        mid = (image > 60) & (image < 200)
        exponents = np.log(np.maximum(out[mid], 1) / 255) / np.log(image[mid] / 255)
        assert np.exp(-0.8) - 0.05 < np.median(exponents) < np.exp(0.8) + 0.05
    assert min(means) < -5 and max(means) > 5


def test_hue_turns_colours_and_keeps_value_and_grays():
    image, label = mid_scene()
    image[:, :20] = image[:, :20, :1]  # a gray band
    image[:, 20:30] = [200, 60, 60]  # a red band
    turns = []
    for out, _ in run_seeds(only(hue=0.2), image, label):
        np.testing.assert_array_equal(out[:, :20], image[:, :20])
        # HSV's value, the largest channel, stays within rounding
        assert np.abs(out.max(axis=2).astype(int) - image.max(axis=2)).max() <= 2
        hue = cv2.cvtColor(out[:1, 20:30], cv2.COLOR_RGB2HSV)[0, :, 0].astype(int) * 2
        turns.append((hue[0] + 180) % 360 - 180)  # red is 0 degrees
        assert (hue == hue[0]).all()
    assert max(abs(t) for t in turns) <= 0.2 * 360 + 2
    assert min(turns) < -20 and max(turns) > 20


def test_blur_lowers_the_variance_as_opencv_blurs():
    """Each seed's blur is OpenCV's Gaussian (edges reflected, BORDER_REFLECT_101) with the
    sigma its draw gives, within rounding; the wider it is, the less variance is left."""
    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), np.uint8)
    sigmas, ratios = draws('blur', 2)[:, 1] * 3, []
    for sigma, (out, _) in zip(sigmas, run_seeds(only(blur=1, blur_sigma=3), image,
                                                 np.zeros((30, 40), np.uint8))):
        expected = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        assert np.abs(out.astype(int) - expected).max() <= 1
        assert out.mean() == pytest.approx(image.mean(), abs=1)
        ratios.append(out.std() / image.std())
    assert max(ratios) <= 1
    assert np.all(np.diff(np.array(ratios)[np.argsort(sigmas)]) <= 0)
    assert min(ratios) < 0.3 and max(sigmas) > 1.4


def test_blur_reaches_edges_narrower_than_its_kernel():
    """An image narrower than 3 blur_sigma still blurs, its kernel cut to fit the reflection."""
    image = np.random.default_rng(3).integers(0, 256, (6, 5, 3), np.uint8)
    for out, _ in run_seeds(only(blur=1, blur_sigma=10), image, np.zeros((6, 5), np.uint8)):
        assert out.shape == image.shape and out.std() <= image.std()


def test_clahe_raises_contrast_as_opencv_does():
    """A dull image comes out as OpenCV's CLAHE of its LAB lightness (8x8 tiles) gives it."""
    image, label = square_scene()
    image = image // 4 + 90  # 95..147: dull
    lightness, a, b = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2LAB))
    clahe = cv2.createCLAHE(clipLimit=4, tileGridSize=(8, 8))
    expected = cv2.cvtColor(cv2.merge((clahe.apply(lightness), a, b)), cv2.COLOR_LAB2RGB)
    for out, out_label in run_seeds(only(clahe=1, clahe_clip=4), image, label, SEEDS[:2]):
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(out_label, label)
        assert cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).std() > \
            1.5 * cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).std()


def test_noise_is_centred_and_at_most_its_strength():
    image, label = mid_scene()
    deviations = []
    for out, out_label in run_seeds(only(noise=0.05), image, label):
        np.testing.assert_array_equal(out_label, label)
        change = out.astype(float) - image
        assert abs(change.mean()) < 0.5
        deviations.append(change.std())
    assert max(deviations) <= 0.05 * 255 * 1.05 and max(deviations) > 3
    assert min(deviations) < 0.7 * max(deviations)  # the deviation is drawn, not fixed


@pytest.mark.parametrize('name', ['blur', 'clahe'])
def test_blur_and_clahe_happen_with_their_probability(name):
    image, label = square_scene()
    outputs = run_seeds(only(**{**PHOTOMETRIC[name], name: 0.5}), image, label,
                        [(0, s) for s in range(60)])
    changed = [not np.array_equal(out, image) for out, _ in outputs]
    assert 15 < sum(changed) < 45


# ----------------------------------------------------------------------------------------------
# Reproducibility, independent draws, and switching off
# ----------------------------------------------------------------------------------------------

def test_same_seed_same_output_different_seed_different_output():
    """Only the image's seed counts: not the graph's seed, nor the graph, nor earlier runs."""
    augment = transforms.Augment(EVERYTHING)
    image, label = square_scene()
    with compiled(augment, label.shape, graph_seed=1) as apply:
        first = apply(image, label, (7, 7))
        np.random.seed(1)  # the global generators must play no part
        tf1.set_random_seed(2)
        again = apply(image, label, (7, 7))
        others = [apply(image, label, seed) for seed in ((7, 8), (8, 7))]
    with compiled(augment, label.shape, graph_seed=3) as apply:
        elsewhere = apply(image, label, (7, 7))
    for i in range(2):  # image, then label
        np.testing.assert_array_equal(first[i], again[i])
        np.testing.assert_array_equal(first[i], elsewhere[i])
        for other in others:  # each half of the seed counts
            assert not np.array_equal(first[i], other[i])


def test_geometry_draws_ignore_the_photometric_transforms():
    """Each transform draws from its own key: the label, which only geometry moves, comes out
    the same whether or not photometric transforms are on too."""
    label = voided(class_map())
    image = PALETTE[np.minimum(label, 2)]
    photometric = {k: v for options in PHOTOMETRIC.values() for k, v in options.items()}
    for geometric in ({'flip': 0.5, 'scale': 0.4}, GEOMETRIC['all']):
        plain = run_seeds(only(**geometric), image, label)
        assert len({out_label.tobytes() for _, out_label in plain}) == len(SEEDS)
        for extra in ({'brightness': 0.3}, photometric):
            for (_, a), (_, b) in zip(plain, run_seeds(only(**geometric, **extra), image,
                                                       label)):
                np.testing.assert_array_equal(a, b)


def test_geometric_draws_ignore_each_other():
    """Turning the zoom on leaves which seeds flip; turning the flip on leaves each zoom."""
    label = class_map(48, 64)
    flips = [np.array_equal(out, label[:, ::-1])
             for _, out in run_seeds(only(flip=0.5), PALETTE[label], label)]
    assert any(flips) and not all(flips)
    zooms = [1 / fit_affine(points, sources)[0, 0]
             for _, points, sources in source_positions(only(scale=0.4))]
    both = [1 / fit_affine(points, sources)[0, 0]
            for _, points, sources in source_positions(only(flip=0.5, scale=0.4))]
    assert [zoom < 0 for zoom in both] == flips
    np.testing.assert_allclose(np.abs(both), zooms, atol=0.01)


def test_photometric_draws_ignore_the_geometry():
    """The colour draws are the same with or without a flip: the flipped output is the mirror
    of the unflipped one."""
    image, label = mid_scene()
    options = {'brightness': 0.3, 'contrast': 0.5, 'saturation': 0.8, 'gamma': 0.8,
               'hue': 0.2, 'blur': 1, 'blur_sigma': 3}
    plain = run_seeds(only(**options), image, label)
    assert len({out.tobytes() for out, _ in plain}) == len(SEEDS)
    for (out, _), (flipped, _) in zip(plain, run_seeds(only(flip=1, **options), image, label)):
        np.testing.assert_array_equal(flipped, out[:, ::-1])


def test_noise_and_jitter_draws_ignore_each_other():
    """On an image nothing saturates, noise adds the same field whether brightness is on or
    not, and brightness the same offset whether noise is on or not."""
    image, label = mid_scene()
    noisy = run_seeds(only(noise=0.05), image, label)
    brighter = run_seeds(only(brightness=0.1), image, label)
    both = run_seeds(only(brightness=0.1, noise=0.05), image, label)
    brightened = 0
    for (n, _), (b, _), (nb, _) in zip(noisy, brighter, both):
        assert not np.array_equal(n, image)
        np.testing.assert_array_equal(nb.astype(int) - b, n.astype(int) - image)
        brightened += not np.array_equal(b, image)
    assert brightened >= len(SEEDS) - 1  # one seed may draw an offset that rounds to 0


@pytest.mark.parametrize('options', [{k: 0 for k in transforms.DEFAULTS},
                                     {**{k: 0 for k in SWITCHES}, 'blur_sigma': 3},
                                     {**{k: 0 for k in SWITCHES}, 'blur': 1, 'blur_sigma': 0},
                                     {**{k: 0 for k in SWITCHES}, 'clahe': 1, 'clahe_clip': 0}])
def test_zero_strengths_change_nothing(options):
    image, label = square_scene()
    for out_image, out_label in run_seeds(transforms.Augment(options), image, label):
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_label, label)


def test_defaults_change_image_and_keep_classes():
    image, label = square_scene()
    out_image, out_label = run(transforms.Augment(), image, label)
    assert not np.array_equal(out_image, image)
    assert set(np.unique(out_label).tolist()) <= CLASSES | {VOID}
