"""Paired transforms on synthetic images whose pixel values say where they came from."""
import cv2
import numpy as np
import pytest

from roadseg.data import transforms
from roadseg.data.classes import VOID
from roadseg.errors import UserError

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
SEEDS = range(8)


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


def source_positions(augment, seed):
    """Augment the coordinate image; return the output label and, for output pixels well inside
    the source, their (x, y) positions and the source (x, y) the image says they came from."""
    image = coordinate_image()
    _, out_label = augment(image, np.zeros(image.shape[:2], np.uint8), np.random.default_rng(seed))
    out_image, _ = augment(image, image[..., 0] // 4, np.random.default_rng(seed))
    inside = interior(out_label != VOID)
    y, x = np.nonzero(inside)
    return out_label, np.stack([x, y], 1), out_image[inside][:, :2] / 4


def fit_affine(points, sources):
    """The 2x3 affine matrix taking `points` to `sources`, by least squares."""
    design = np.hstack([points, np.ones((len(points), 1))])
    return np.linalg.lstsq(design, sources, rcond=None)[0].T


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


def test_flips_only_keeps_the_flip_and_crop_and_switches_the_rest_off():
    plain = transforms.Augment('flip=0.7,rotate=5,blur=1', crop=(16, 24)).flips_only()
    assert plain.describe() == 'flip=0.7' and plain.crop == (16, 24)
    assert transforms.Augment('flip=0').flips_only().describe() == 'off'


def test_bad_arrays():
    augment = transforms.Augment()
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match='same size'):
        augment(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6), np.uint8), rng)
    with pytest.raises(UserError, match='float32'):
        augment(np.zeros((4, 5, 3), np.float32), np.zeros((4, 5), np.uint8), rng)


# ----------------------------------------------------------------------------------------------
# Labels stay class indices
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', [*GEOMETRIC, *PHOTOMETRIC, 'everything'])
def test_label_values_stay_in_the_class_set(name):
    options = EVERYTHING if name == 'everything' else {**GEOMETRIC, **PHOTOMETRIC}[name]
    augment = only(**options)
    label = voided(class_map())
    image = PALETTE[np.minimum(label, 2)]
    for seed in SEEDS:
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        assert out_image.shape == image.shape and out_image.dtype == np.uint8
        assert out_label.shape == label.shape and out_label.dtype == np.uint8
        assert set(np.unique(out_label).tolist()) <= CLASSES | {VOID}


# ----------------------------------------------------------------------------------------------
# Geometric transforms move image and label together
# ----------------------------------------------------------------------------------------------

def test_flip_is_exact():
    label = voided(class_map())
    image = np.random.default_rng(1).integers(0, 256, label.shape + (3,), np.uint8)
    out_image, out_label = only(flip=1)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_label, label[:, ::-1])


def test_flip_happens_with_its_probability():
    label = class_map()
    flips = [np.array_equal(only(flip=0.5)(PALETTE[label], label, np.random.default_rng(s))[1],
                            label[:, ::-1]) for s in range(200)]
    assert 70 < sum(flips) < 130


@pytest.mark.parametrize('crop', [None, (48, 64)])
@pytest.mark.parametrize('name', GEOMETRIC)
def test_palette_image_follows_its_label(name, crop):
    """Where the output label is class c, away from region borders, the image is palette[c];
    where it is void (outside the source), the image is 0; with a crop too."""
    augment = transforms.Augment({**{k: 0 for k in SWITCHES}, **GEOMETRIC[name]}, crop)
    label = class_map()
    image = PALETTE[label]
    for seed in SEEDS:
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
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
    augment = only(**GEOMETRIC[name])
    image = coordinate_image()
    for seed in SEEDS:
        out_image, out_label = augment(image, image[..., axis], np.random.default_rng(seed))
        inside = interior(out_label != VOID)
        assert inside.sum() > 500
        difference = np.abs(out_image[..., axis][inside].astype(int) - out_label[inside])
        assert difference.max() <= 2


def test_scale_zooms_within_its_range_and_crops_or_pads():
    zooms = []
    for seed in SEEDS:
        out_label, points, sources = source_positions(only(scale=0.4), seed)
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
    for seed in SEEDS:
        out_image, out_label = transforms.Augment('none', crop=(32, 16))(
            image, label, np.random.default_rng(seed))
        assert out_image.shape == (32, 16, 3) and out_label.shape == (32, 16)
        x, y = out_image[0, 0, :2] // 4
        corners.add((x, y))
        np.testing.assert_array_equal(out_image, image[y:y + 32, x:x + 16])
        np.testing.assert_array_equal(out_label, label[y:y + 32, x:x + 16])
    assert len(corners) > 4 and all(x <= 48 and y <= 16 for x, y in corners)


def test_crop_larger_than_the_image_is_an_error():
    with pytest.raises(UserError, match='crop 64x32 is larger than the 60x80'):
        transforms.Augment(crop=(64, 32))(PALETTE[class_map()], class_map(),
                                          np.random.default_rng(0))


def test_rotation_is_about_the_centre_within_its_range():
    angles = []
    for seed in SEEDS:
        _, points, sources = source_positions(only(rotate=20), seed)
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
    for seed in SEEDS:
        _, points, sources = source_positions(only(shift=0.2), seed)
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
    augment = only(**PHOTOMETRIC[name])
    image, label = square_scene()
    changed = 0
    for seed in SEEDS:
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_label, label)
        # CLAHE brightens some dark ground next to the square: about 1 pixel of centroid
        np.testing.assert_allclose(centroid_of_bright(out_image), centroid_of_bright(image),
                                   atol=1.5)
        changed += not np.array_equal(out_image, image)
    assert changed >= len(SEEDS) - 1


def test_brightness_moves_values_by_at_most_its_strength():
    image, label = mid_scene()
    offsets = []
    for seed in SEEDS:
        out, _ = only(brightness=0.3)(image, label, np.random.default_rng(seed))
        change = out.astype(int) - image
        assert np.abs(change).max() <= 0.3 * 255 + 1
        assert np.ptp(change) <= 1  # one offset for every pixel and channel: nothing saturates
        offsets.append(change.mean())
    assert min(offsets) < -20 and max(offsets) > 20


def test_contrast_and_brightness_are_monotonic_per_pixel():
    """Both map each value through one increasing function, whatever its position."""
    image, label = square_scene()
    for seed in SEEDS:
        out, _ = only(brightness=0.2, contrast=0.5)(image, label, np.random.default_rng(seed))
        order = np.argsort(image.ravel(), kind='stable')
        assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_contrast_keeps_the_mean_and_scales_the_spread():
    image, label = mid_scene()
    factors = []
    for seed in SEEDS:
        out, _ = only(contrast=0.5)(image, label, np.random.default_rng(seed))
        assert out.mean() == pytest.approx(image.mean(), abs=0.5)
        factors.append(out.std() / image.std())
        assert 0.5 - 0.02 < factors[-1] < 1.5 + 0.02
    assert min(factors) < 0.8 and max(factors) > 1.2


def test_saturation_keeps_luma_and_gray_pixels():
    """A blend with the BT.601 gray changes colourfulness only, not lightness."""
    image, label = mid_scene()
    image[:, :20] = image[:, :20, :1]  # a gray band
    changed = 0
    for seed in SEEDS:
        out, _ = only(saturation=0.8)(image, label, np.random.default_rng(seed))
        luma = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY).astype(int)
        assert np.abs(luma - cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)).max() <= 1
        assert np.abs(out[:, :20].astype(int) - image[:, :20]).max() <= 1
        changed += not np.array_equal(out[:, 20:], image[:, 20:])
    assert changed >= len(SEEDS) - 2


def test_gamma_is_monotonic_keeps_black_and_white_and_darkens_or_lifts():
    image, label = square_scene()
    image[0, :2] = [[0, 0, 0], [255, 255, 255]]
    means = []
    for seed in SEEDS:
        out, _ = only(gamma=0.8)(image, label, np.random.default_rng(seed))
        order = np.argsort(image.ravel(), kind='stable')
        assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()
        np.testing.assert_array_equal(out[0, :2], image[0, :2])
        means.append(out.mean() - image.mean())
    assert min(means) < -5 and max(means) > 5


def test_hue_turns_colours_and_keeps_value_and_grays():
    image, label = mid_scene()
    image[:, :20] = image[:, :20, :1]  # a gray band
    image[:, 20:30] = [200, 60, 60]  # a red band
    turns = []
    for seed in SEEDS:
        out, _ = only(hue=0.2)(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[:, :20], image[:, :20])
        # HSV's value, the largest channel, stays within rounding
        assert np.abs(out.max(axis=2).astype(int) - image.max(axis=2)).max() <= 2
        hue = cv2.cvtColor(out[:1, 20:30], cv2.COLOR_RGB2HSV)[0, :, 0].astype(int) * 2
        turns.append((hue[0] + 180) % 360 - 180)  # red is 0 degrees
        assert (hue == hue[0]).all()
    assert max(abs(t) for t in turns) <= 0.2 * 360 + 2
    assert min(turns) < -20 and max(turns) > 20


def test_noise_is_centred_and_at_most_its_strength():
    image, label = mid_scene()
    deviations = []
    for seed in SEEDS:
        out, out_label = only(noise=0.05)(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_label, label)
        change = out.astype(float) - image
        assert abs(change.mean()) < 0.5
        deviations.append(change.std())
    assert max(deviations) <= 0.05 * 255 * 1.05 and max(deviations) > 3


@pytest.mark.parametrize('name', ['blur', 'clahe'])
def test_blur_and_clahe_happen_with_their_probability(name):
    augment = only(**{**PHOTOMETRIC[name], name: 0.5})
    image, label = square_scene()
    changed = [not np.array_equal(augment(image, label, np.random.default_rng(s))[0], image)
               for s in range(60)]
    assert 15 < sum(changed) < 45


# ----------------------------------------------------------------------------------------------
# Reproducibility and switching off
# ----------------------------------------------------------------------------------------------

def test_same_seed_same_output_different_seed_different_output():
    augment = transforms.Augment(EVERYTHING)
    image, label = square_scene()
    first = augment(image, label, np.random.default_rng(7))
    np.random.seed(1)  # the global generator must play no part
    again = augment(image, label, np.random.default_rng(7))
    other = augment(image, label, np.random.default_rng(8))
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize('options', [{k: 0 for k in transforms.DEFAULTS},
                                     {**{k: 0 for k in SWITCHES}, 'blur_sigma': 3},
                                     {**{k: 0 for k in SWITCHES}, 'blur': 1, 'blur_sigma': 0},
                                     {**{k: 0 for k in SWITCHES}, 'clahe': 1, 'clahe_clip': 0}])
def test_zero_strengths_change_nothing(options):
    augment = transforms.Augment(options)
    image, label = square_scene()
    for seed in SEEDS:
        out_image, out_label = augment(image, label, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_label, label)


def test_defaults_change_image_and_keep_classes():
    image, label = square_scene()
    out_image, out_label = transforms.Augment()(image, label, np.random.default_rng(0))
    assert not np.array_equal(out_image, image)
    assert set(np.unique(out_label).tolist()) <= CLASSES | {VOID}


def test_none_switches_everything_off_before_the_options_that_follow():
    assert transforms.Augment('none').describe() == 'off'
    assert transforms.Augment('none,flip=0.5').describe() == 'flip=0.5'
    assert transforms.parse_options('none')['scale'] == 0.0
