"""Drawing a segmentation for people to see: its class map blended in colour over the image
(the overlays of main.py, evaluate.py, predict.py, the service and the training monitor), the
colours a model's overlays use, and a legend naming them. Kept apart from roadseg.inference,
which computes the probabilities: every command draws through these few functions."""
import functools

import numpy as np
from PIL import Image, ImageDraw

from roadseg import files, metrics

OVERLAY_RGB = (0, 255, 0)
OVERLAY_ALPHA = 0.5


def overlay(image, classes, colors=(None, OVERLAY_RGB)):
    """Blend each class's colour into `image` where the class map `classes` has that class;
    classes whose colour is None are not drawn (by default: road, class 1, in green). Each
    blended byte is looked up in a table of every (class, value) pair, one gather per channel:
    a video frame's overlay in a few milliseconds whatever the number of classes."""
    table = _blend_table(tuple(None if c is None else tuple(c) for c in colors))
    index = classes.astype(np.uint16)[..., None] * 256 + image  # at most 256 classes
    return np.stack([table[:, channel][index[..., channel]] for channel in range(3)], -1)


@functools.lru_cache(maxsize=8)
def _blend_table(colors):
    """[classes * 256, 3] uint8: row class * 256 + value holds `value` blended with the class's
    colour (OVERLAY_ALPHA, rounded half to even), or `value` itself for undrawn classes."""
    values = np.arange(256, dtype=np.float32)[:, None]
    return np.concatenate([
        np.broadcast_to(values, (256, 3)) if color is None else
        ((1 - OVERLAY_ALPHA) * values + OVERLAY_ALPHA * np.array(color, np.float32)).round()
        for color in colors]).astype(np.uint8)


def overlay_colors(class_colors):
    """What overlays draw: road in green for two classes, every class in its colour for more."""
    return ((None, OVERLAY_RGB) if metrics.is_road_model(len(class_colors)) else
            tuple(map(tuple, class_colors)))


def write_legend(path, names, colors):
    """A PNG with a colour swatch and the name of each drawn class."""
    drawn = [(name, color) for name, color in zip(names, colors) if color is not None]
    legend = Image.new('RGB', (220, 20 * len(drawn) + 4), 'white')
    draw = ImageDraw.Draw(legend)
    for row, (name, color) in enumerate(drawn):
        draw.rectangle([4, 4 + 20 * row, 36, 20 + 20 * row], fill=tuple(color), outline='black')
        draw.text((44, 6 + 20 * row), name, fill='black')
    files.write_png(path, np.asarray(legend))
