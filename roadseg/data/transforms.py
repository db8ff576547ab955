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

Flip, zoom with crop or pad, rotation and shift are one affine matrix, applied with one
cv2.warpAffine per array: bilinear for the image, nearest neighbour for the label, so class
indices never blend; pixels from outside the source become 0 in the image and VOID in the label.
Then the photometric transforms change the image only: the three jitters as one colour matrix
(cv2.transform rounds and saturates to uint8), gamma as a lookup table, hue in HSV, then blur,
CLAHE and noise. They may lift the padded 0s, which are void in the label. All randomness comes
from the `rng` argument, and OpenCV releases the GIL, so loader threads can share one Augment.
"""
import math

import cv2
import numpy as np

from roadseg.data.classes import VOID
from roadseg.errors import UserError

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
    """`augment(image, label, rng)`: the randomly transformed pair, same dtypes, and the same
    shapes or, with `crop`, cropped to it.

    The image is uint8 HxWx3 RGB, the label uint8 HxW class indices with VOID ignored.
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

    def happens(self, key, rng):
        """Whether the transform with probability option `key` is applied this time (one draw
        from `rng`, only when it is on)."""
        return self.is_on(key) and rng.random() < self.options[key]

    def __call__(self, image, label, rng):
        if image.dtype != np.uint8 or label.dtype != np.uint8 or image.shape != label.shape + (3,):
            raise UserError(f'augment: expected a uint8 HxWx3 image and a uint8 HxW label '
                            f'of the same size, got {image.dtype} {image.shape} and '
                            f'{label.dtype} {label.shape}')
        image, label = self.warped(image, label, rng)
        image = self.toned(self.jittered(image, rng), rng)
        return self.noisy(self.equalized(self.blurred(image, rng), rng), rng), label

    def geometry(self, shape, rng):
        """This call's flip, zoom with crop or pad, rotation and shift as one 3x3 matrix taking
        source pixel centres to output ones."""
        height, width = shape
        o = self.options
        m = np.eye(3)
        if self.happens('flip', rng):
            m = np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]]) @ m
        if self.is_on('scale'):
            s = rng.uniform(1 - o['scale'], 1 + o['scale'])
            # Offsets between 0 and (n - 1)(1 - s): the output lies inside the zoomed image
            # when s > 1 (a crop), the zoomed image inside the output when s < 1 (a pad).
            tx, ty = (rng.random() * (n - 1) * (1 - s) for n in (width, height))
            m = np.array([[s, 0, tx], [0, s, ty], [0, 0, 1]]) @ m
        if self.is_on('rotate'):
            angle = rng.uniform(-o['rotate'], o['rotate'])
            rotation = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1)
            m = np.vstack([rotation, [0, 0, 1]]) @ m
        if self.is_on('shift'):
            m[:2, 2] += rng.uniform(-o['shift'], o['shift'], 2) * (width, height)
        if self.crop:
            m[:2, 2] -= [rng.integers(n - c + 1)
                         for n, c in zip((width, height), self.crop[::-1])]
        return m

    def warped(self, image, label, rng):
        """The geometric transforms: one warp each for image and label, none for the identity."""
        if self.crop and any(c > n for c, n in zip(self.crop, label.shape)):
            raise UserError(f'augment: crop {self.crop[0]}x{self.crop[1]} is larger than '
                            f'the {label.shape[0]}x{label.shape[1]} training images')
        m = self.geometry(label.shape, rng)
        size = (self.crop or label.shape)[::-1]
        if np.array_equal(m, np.eye(3)) and size == label.shape[::-1]:
            return image, label
        image = cv2.warpAffine(image, m[:2], size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        label = cv2.warpAffine(label, m[:2], size, flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=VOID)
        return image, label

    def jittered(self, image, rng):
        """Brightness, contrast and saturation jitter, as one 3x4 colour matrix."""
        if not any(self.is_on(k) for k in ('brightness', 'contrast', 'saturation')):
            return image
        o = self.options
        b = rng.uniform(-255, 255) * o['brightness'] if self.is_on('brightness') else 0
        c = rng.uniform(1 - o['contrast'], 1 + o['contrast']) if self.is_on('contrast') else 1
        f = rng.uniform(1 - o['saturation'], 1 + o['saturation']) \
            if self.is_on('saturation') else 1
        # x + b, scaled by c about its mean, blended by f with its gray (whose weights sum to 1,
        # so constants pass through): c (f I + (1 - f) G) x + b + (1 - c) mean(x)
        matrix = np.empty((3, 4))
        matrix[:, :3] = c * (f * np.eye(3) + (1 - f) * GRAY_RGB)
        matrix[:, 3] = b + (1 - c) * np.mean(cv2.mean(image)[:3])
        return cv2.transform(image, matrix)

    def toned(self, image, rng):
        """Gamma as a lookup table on every channel, then a hue rotation in HSV."""
        if self.is_on('gamma'):
            exponent = math.exp(rng.uniform(-self.options['gamma'], self.options['gamma']))
            table = np.round(255 * (np.arange(256) / 255) ** exponent).astype(np.uint8)
            image = cv2.LUT(image, table)
        if self.is_on('hue'):
            # OpenCV's 8-bit hue runs 0..179, in steps of 2 degrees
            shift = round(rng.uniform(-1, 1) * self.options['hue'] * 180)
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 180
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return image

    def blurred(self, image, rng):
        """Gaussian blur with probability `blur`, sigma uniform in [0, blur_sigma]."""
        if not self.happens('blur', rng):
            return image
        sigma = rng.uniform(0, self.options['blur_sigma'])
        size = 2 * math.ceil(3 * sigma) + 1
        return cv2.GaussianBlur(image, (size, size), sigma)

    def equalized(self, image, rng):
        """CLAHE on the lightness channel with probability `clahe`."""
        if not self.happens('clahe', rng):
            return image
        # A new CLAHE object per call: apply() keeps buffers, so threads must not share one.
        clahe = cv2.createCLAHE(clipLimit=self.options['clahe_clip'], tileGridSize=(8, 8))
        lightness, a, b = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2LAB))
        return cv2.cvtColor(cv2.merge((clahe.apply(lightness), a, b)), cv2.COLOR_LAB2RGB)

    def noisy(self, image, rng):
        """Gaussian noise of a deviation uniform in [0, noise x 255], rounded and clipped."""
        if not self.is_on('noise'):
            return image
        sigma = rng.uniform(0, self.options['noise'] * 255)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
        return np.clip(image + noise + 0.5, 0, 255).astype(np.uint8)
