"""Paired image+label training transforms: geometric ones move both, photometric ones the image.

Options, each switched off by 0 (its strength or its probability):
  flip        probability of a horizontal flip
  scale       zoom factor uniform in [1 - scale, 1 + scale], then a random crop (zoomed in) or
              pad (zoomed out) back to the original size
  rotate      rotation about the image centre, uniform in +-rotate degrees
  shift       translation uniform in +-shift x width and +-shift x height
  brightness  offset added to all channels, uniform in +-brightness x 255
  contrast    factor about the image mean, uniform in [1 - contrast, 1 + contrast]
  saturation  factor of the blend with grayscale, uniform in [1 - saturation, 1 + saturation]
  gamma       exponent of (value / 255), exp(uniform(-gamma, gamma)): above 1 darkens the mid
              tones as dusk does, below 1 lifts them
  hue         rotation of every pixel's hue, uniform in +-hue x 360 degrees
  blur        probability of a Gaussian blur with sigma uniform in [0, blur_sigma]
  clahe       probability of CLAHE on the L channel of LAB, clip limit clahe_clip, 8x8 tiles
  noise       Gaussian sensor noise on every value, its deviation uniform in [0, noise x 255]

A training crop (`Augment(options, crop=(h, w))`, --train-crop) cuts a random h x w
window out of the transformed pair, last of the geometric steps: the network sees every part of
the scene at its full resolution, at a fraction of the step's cost.

Defaults follow the FCN / KITTI / CamVid seed projects: flip 0.5, a mild +-25 % zoom with
crop or pad (the DeepLab-style scale-and-crop, narrowed for small training sizes), and colour
jitter of +-10 % brightness, +-20 % contrast and saturation. Rotation, shift, gamma, hue, blur,
CLAHE and noise are off: road scenes come from a level camera at a fixed height, rotation and
shift add void corners, and the others suit only some data sets; turned on, blur uses sigma up
to 1 and CLAHE a clip limit of 2. The CamVid configurations turn gamma, hue, blur and noise on
and widen the jitter, for other drives and dusk light (docs/experiments.md, "Unseen drives").

The transforms are TensorFlow ops, run by the tf.data pipeline (pipeline.py) on every core.
Flip, zoom with crop or pad, rotation and shift are one affine matrix, applied with one
projective transform per array: bilinear for the image, nearest neighbour for the label, so class
indices never blend; pixels from outside the source become 0 in the image and VOID in the label.
Then the photometric transforms change the image only: the three jitters as one colour matrix,
gamma, hue, then blur (separable, edges reflected as OpenCV's), CLAHE and noise, each rounded and
saturated to 0..255 as 8-bit images are. They may lift the padded 0s, which are void in the label.
CLAHE has no TensorFlow op: it runs OpenCV's through tf.numpy_function, in the pipeline's threads
(OpenCV releases the GIL), costing what OpenCV costs plus a copy.

All randomness is stateless: an image's seed, from (run seed, epoch, image index), is split into
one key per transform, so a run repeats exactly, and switching one transform on or off leaves the
draws of the others unchanged.
"""
import math

import cv2
import numpy as np

from roadseg.data.classes import VOID
from roadseg.errors import UserError
from roadseg.graph_mode import import_tensorflow


class _Deferred:
    """TensorFlow, imported at its first use: reading the options (DataConfig, --help) must not
    load it."""

    def __getattr__(self, name):
        global tf
        tf = import_tensorflow()
        return getattr(tf, name)


tf = _Deferred()

DEFAULTS = {'flip': 0.5, 'scale': 0.25, 'rotate': 0.0, 'shift': 0.0,
            'brightness': 0.1, 'contrast': 0.2, 'saturation': 0.2, 'gamma': 0.0, 'hue': 0.0,
            'blur': 0.0, 'blur_sigma': 1.0, 'clahe': 0.0, 'clahe_clip': 2.0, 'noise': 0.0}
OFF = {key: 0.0 for key in DEFAULTS}  # every transform switched off: the text item `none`

# The allowed values of each option, both ends included.
LIMITS = {'flip': (0, 1), 'scale': (0, 0.9), 'rotate': (0, 180), 'shift': (0, 0.5),
          'brightness': (0, 1), 'contrast': (0, 1), 'saturation': (0, 1), 'gamma': (0, 2),
          'hue': (0, 0.5), 'blur': (0, 1), 'blur_sigma': (0, 10), 'clahe': (0, 1),
          'clahe_clip': (0, 40), 'noise': (0, 0.5)}

# A probability and its strength: the transform is on only when both are above 0.
PAIRED = {'blur': 'blur_sigma', 'blur_sigma': 'blur', 'clahe': 'clahe_clip', 'clahe_clip': 'clahe'}

GRAY_RGB = np.array([0.299, 0.587, 0.114])  # BT.601 luma weights, as cv2.COLOR_RGB2GRAY
# The transforms in the order of their keys in an image's seed (Augment.__call__)
KEYS = ('flip', 'scale', 'rotate', 'shift', 'crop', 'jitter', 'gamma', 'hue', 'blur', 'clahe',
        'noise')


def parse_options(options):
    """Check options given as 'key=value,...' text or a dict.

    Returns the given keys only, as floats, for merging over DEFAULTS. In text, the item `none`
    switches every option off first, so 'none,flip=0.5' is flips only.
    """
    if isinstance(options, str):
        items = [item for item in options.split(',') if item.strip()]
        off = OFF if items and items[0].strip() == 'none' else {}
        options = {**off, **dict(split_option(item) for item in items[1 if off else 0:])}
    parsed = {}
    for key, value in options.items():
        if key not in DEFAULTS:
            raise UserError(f'--augment: unknown option {key!r}; allowed: '
                            f'{", ".join(DEFAULTS)}')
        low, high = LIMITS[key]
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not low <= number <= high:  # NaN fails too
            raise UserError(f'--augment: {key}={value!r} must be a number from {low} to {high}')
        parsed[key] = number
    return parsed


def split_option(item):
    """'key=value' to (key, value), spaces around either stripped."""
    key, equals, value = item.partition('=')
    if not equals:
        raise UserError(f'--augment: {item.strip()!r} has no value; write key=value, e.g. '
                        f'flip=0.5')
    return key.strip(), value.strip()


class Augment:
    """`augment(image, label, seed)`: TensorFlow ops giving the randomly transformed pair, same
    dtypes, and the same shapes or, with `crop`, cropped to it.

    The image is a uint8 HxWx3 RGB tensor, the label a uint8 HxW tensor of class indices with
    VOID ignored, both of static size; `seed` is an int64 [2] tensor, the image's own.
    """

    def __init__(self, options=None, crop=None):
        """`options`: 'key=value,...' text or a dict, merged over DEFAULTS; `crop`: (height,
        width) of a random window to cut out last, or None for the whole image."""
        self.options = {**DEFAULTS, **parse_options(options or {})}
        self.crop = tuple(crop) if crop else None

    def flips_only(self):
        """The same flips and crop without the other transforms: what --plain-epochs
        trains on at the end, so the low-rate steps fit the images as inference sees them."""
        return Augment({**OFF, 'flip': self.options['flip']}, self.crop)

    def __repr__(self):
        return f'Augment({self.describe()!r}' + (f', crop={self.crop})' if self.crop else ')')

    def describe(self):
        """The options in effect as 'key=value,...', or 'off' when none is."""
        return ','.join(f'{k}={v:g}' for k, v in self.options.items() if self.is_on(k)) or 'off'

    def is_on(self, key):
        """Whether option `key` and, for blur and CLAHE, its partner are both above 0."""
        return self.options[key] > 0 and self.options[PAIRED.get(key, key)] > 0


    def happens(self, key, draw):
        """Whether the transform with probability option `key` applies, for a uniform `draw`
        (a boolean tensor; only asked when the transform is on)."""
        return draw < self.options[key]

    def __call__(self, image, label, seed):
        height, width = label.shape.as_list()
        if image.dtype != tf.uint8 or label.dtype != tf.uint8 or \
                image.shape.as_list() != [height, width, 3] or None in (height, width):
            raise UserError(f'augment: expected a uint8 HxWx3 image and a uint8 HxW label '
                            f'of the same static size, got {image.dtype.name} {image.shape} '
                            f'and {label.dtype.name} {label.shape}')
        keys = dict(zip(KEYS, tf.unstack(tf.random.experimental.stateless_split(
            tf.cast(seed, tf.int64), len(KEYS)))))
        image, label = self.warped(image, label, keys)
        image = self.toned(self.jittered(image, keys), keys)
        image = self.noisy(self.equalized(self.blurred(image, keys), keys), keys)
        return tf.cast(image, tf.uint8), label

    def geometry(self, shape, keys):
        """This call's flip, zoom with crop or pad, rotation and shift as one 3x3 matrix taking
        source pixel centres to output ones (a float32 tensor)."""
        height, width = shape
        o = self.options
        m = tf.eye(3)
        if self.is_on('flip'):
            flipped = self.happens('flip', uniform(keys['flip']))
            m = tf.where(flipped, affine(-1, 0, width - 1, 0, 1, 0), m)
        if self.is_on('scale'):
            zoom, *offsets = tf.unstack(uniform(keys['scale'], [3]))
            s = 1 - o['scale'] + 2 * o['scale'] * zoom
            # Offsets between 0 and (n - 1)(1 - s): the output lies inside the zoomed image
            # when s > 1 (a crop), the zoomed image inside the output when s < 1 (a pad).
            tx, ty = (draw * (n - 1) * (1 - s) for draw, n in zip(offsets, (width, height)))
            m = affine(s, 0, tx, 0, s, ty) @ m
        if self.is_on('rotate'):  # as cv2.getRotationMatrix2D about the centre
            angle = (2 * uniform(keys['rotate']) - 1) * math.radians(o['rotate'])
            a, b = tf.cos(angle), tf.sin(angle)
            cx, cy = (width - 1) / 2, (height - 1) / 2
            m = affine(a, b, (1 - a) * cx - b * cy, -b, a, b * cx + (1 - a) * cy) @ m
        if self.is_on('shift'):
            dx, dy = tf.unstack((2 * uniform(keys['shift'], [2]) - 1) * o['shift']
                                * [width, height])
            m = affine(1, 0, dx, 0, 1, dy) @ m
        if self.crop:
            ox, oy = (tf.cast(tf.random.stateless_uniform([], key, 0, n - c + 1, tf.int64),
                              tf.float32)
                      for key, n, c in zip(tf.unstack(tf.random.experimental.stateless_split(
                          keys['crop'])), (width, height), self.crop[::-1]))
            m = affine(1, 0, -ox, 0, 1, -oy) @ m
        return m

    def warped(self, image, label, keys):
        """The geometric transforms: one warp each for image and label (none for the identity);
        the image comes out float32, rounded as an 8-bit warp rounds. Without rotation the
        matrix scales and moves each axis alone, which tf.image.crop_and_resize samples at
        twice the speed of the general projective warp."""
        shape = tuple(label.shape.as_list())
        if self.crop and any(c > n for c, n in zip(self.crop, shape)):
            raise UserError(f'augment: crop {self.crop[0]}x{self.crop[1]} is larger than '
                            f'the {shape[0]}x{shape[1]} training images')
        if not self.crop and not any(self.is_on(k) for k in ('flip', 'scale', 'rotate',
                                                                 'shift')):
            return tf.cast(image, tf.float32), label
        inverse = tf.linalg.inv(self.geometry(shape, keys))  # output pixel -> source pixel
        size = self.crop or shape
        if self.is_on('rotate'):
            warp = projective_warp(inverse, size)
        else:
            warp = axis_aligned_warp(inverse, shape, size)
        image = tf.clip_by_value(tf.round(warp(image, 'bilinear', 0.0)), 0, 255)
        return image, tf.cast(warp(label[..., None], 'nearest', float(VOID))[..., 0], tf.uint8)

    def jittered(self, image, keys):
        """Brightness, contrast and saturation jitter, as one 3x4 colour matrix."""
        if not any(self.is_on(k) for k in ('brightness', 'contrast', 'saturation')):
            return image
        o = self.options
        draws = 2 * uniform(keys['jitter'], [3]) - 1  # each in [-1, 1)
        b = draws[0] * 255 * o['brightness'] if self.is_on('brightness') else 0.0
        c = 1 + draws[1] * o['contrast'] if self.is_on('contrast') else 1.0
        f = 1 + draws[2] * o['saturation'] if self.is_on('saturation') else 1.0
        # x + b, scaled by c about its mean, blended by f with its gray (whose weights sum to 1,
        # so constants pass through): c (f I + (1 - f) G) x + b + (1 - c) mean(x)
        gray = tf.constant(np.tile(GRAY_RGB, (3, 1)), tf.float32)
        matrix = c * (f * tf.eye(3) + (1 - f) * gray)
        offset = b + (1 - c) * tf.reduce_mean(image)
        return saturated(tf.tensordot(image, tf.transpose(matrix), 1) + offset)

    def toned(self, image, keys):
        """Gamma on every channel, then a rotation of every pixel's hue."""
        if self.is_on('gamma'):
            exponent = tf.exp((2 * uniform(keys['gamma']) - 1) * self.options['gamma'])
            # a lookup table of the 256 values (the image's are whole numbers by now): a tenth
            # of the power's cost over every pixel
            table = saturated(255 * (tf.range(256.0) / 255) ** exponent)
            image = tf.gather(table, tf.cast(image, tf.int32))
        if self.is_on('hue'):
            turn = (2 * uniform(keys['hue']) - 1) * self.options['hue']  # of a full circle
            image = saturated(255 * tf.image.adjust_hue(image / 255, turn))
        return image

    def blurred(self, image, keys):
        """Gaussian blur with probability `blur`, sigma uniform in [0, blur_sigma], the kernel
        reaching 3 sigma (OpenCV's size for 8-bit images), edges reflected as OpenCV's are."""
        if not self.is_on('blur'):
            return image
        happen, draw = tf.unstack(uniform(keys['blur'], [2]))
        sigma = draw * self.options['blur_sigma']
        radius = min(math.ceil(3 * self.options['blur_sigma']), *(n - 1 for n in
                                                                  image.shape[:2]))
        x = tf.range(-radius, radius + 1, dtype=tf.float32)
        reach = tf.math.ceil(3 * sigma)
        kernel = tf.where((tf.abs(x) <= reach) & (sigma > 1e-3),
                          tf.exp(-x * x / (2 * tf.maximum(sigma, 1e-3) ** 2)),
                          tf.cast(tf.equal(x, 0), tf.float32))
        kernel /= tf.reduce_sum(kernel)

        def blur():
            padded = tf.pad(image[None], [[0, 0], [radius] * 2, [radius] * 2, [0, 0]], 'REFLECT')
            rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
            across = tf.nn.depthwise_conv2d(padded, rows, [1] * 4, 'VALID')
            both = tf.nn.depthwise_conv2d(across, tf.transpose(rows, [1, 0, 2, 3]), [1] * 4,
                                          'VALID')
            return saturated(both[0])
        return tf.cond(self.happens('blur', happen), blur, lambda: image)

    def equalized(self, image, keys):
        """CLAHE on the lightness channel with probability `clahe` (OpenCV's, through
        tf.numpy_function)."""
        if not self.is_on('clahe'):
            return image

        def clahe():
            out = tf.numpy_function(lambda a: equalize(a, self.options['clahe_clip']),
                                    [tf.cast(image, tf.uint8)], tf.uint8, stateful=False)
            return tf.cast(tf.ensure_shape(out, image.shape), tf.float32)
        return tf.cond(self.happens('clahe', uniform(keys['clahe'])), clahe, lambda: image)

    def noisy(self, image, keys):
        """Gaussian noise of a deviation uniform in [0, noise x 255], rounded and clipped."""
        if not self.is_on('noise'):
            return image
        deviation, field = tf.unstack(tf.random.experimental.stateless_split(keys['noise']))
        sigma = tf.random.stateless_uniform([], deviation) * self.options['noise'] * 255
        noise = tf.random.stateless_normal(tf.shape(image), field) * sigma
        return tf.floor(tf.clip_by_value(image + noise + 0.5, 0, 255))


def projective_warp(inverse, size):
    """warp(array, 'bilinear'|'nearest', fill): `array` ([h, w, c]) sampled at the source
    pixels of the 3x3 `inverse` (output pixel -> source pixel) on a `size` grid, `fill` outside
    the source, as float32."""
    transform = tf.concat([tf.reshape(inverse[:2], [6]), [0.0, 0.0]], 0)[None]

    def warp(array, interpolation, fill):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.cast(array, tf.float32)[None], transforms=transform,
            output_shape=tf.constant(size, tf.int32), fill_value=fill,
            interpolation=interpolation.upper(), fill_mode='CONSTANT')[0]
    return warp


def axis_aligned_warp(inverse, shape, size):
    """projective_warp's warp for an `inverse` that only scales and moves each axis (no
    rotation), from a `shape` source, as one crop_and_resize box: its corners are the source
    pixels of the output's first and last, in units of the source's extent."""
    (height, width), (out_height, out_width) = shape, size
    top, left = inverse[1, 2], inverse[0, 2]
    box = tf.stack([top, left, top + inverse[1, 1] * (out_height - 1),
                    left + inverse[0, 0] * (out_width - 1)])
    box /= [max(height - 1, 1), max(width - 1, 1)] * 2  # [y, x, y, x]

    def warp(array, interpolation, fill):
        return tf.image.crop_and_resize(array[None], box[None], [0], size, interpolation,
                                        fill)[0]
    return warp


def uniform(key, shape=()):
    """Uniform draws in [0, 1) from a stateless key."""
    return tf.random.stateless_uniform(shape, key)


def affine(a, b, c, d, e, f):
    """The 3x3 float32 matrix [[a, b, c], [d, e, f], [0, 0, 1]] of scalars or scalar tensors."""
    return tf.reshape(tf.stack([tf.cast(v, tf.float32) for v in (a, b, c, d, e, f, 0, 0, 1)]),
                      [3, 3])


def saturated(image):
    """Values rounded and clipped to 0..255, as an 8-bit image stores them."""
    return tf.clip_by_value(tf.round(image), 0, 255)


def equalize(image, clip):
    """OpenCV's CLAHE on the L channel of LAB (8x8 tiles) of a uint8 RGB array."""
    # A new CLAHE object per call: apply() keeps buffers, so threads must not share one.
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8))
    lightness, a, b = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2LAB))
    return cv2.cvtColor(cv2.merge((clahe.apply(lightness), a, b)), cv2.COLOR_LAB2RGB)
