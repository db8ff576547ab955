"""Drawing a segmentation for people to see: its class map blended in colour over the image
(the overlays of main.py, evaluate.py, predict.py, the service and the training monitor), the
colours a model's overlays use, a legend naming them, and evaluate.py's confusion matrix. Kept
apart from roadseg.inference, which computes the probabilities: every command draws through
these few functions. Pillow draws; matplotlib is not needed."""
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


# The confusion matrix picture's layout, in pixels: a square cell per (true, predicted) pair,
# the class names in a band of LABEL beside and above the cells, TITLE above, COUNTS (each
# row's pixels) on the right
CELL, LABEL, TITLE, COUNTS, PAD = 48, 130, 44, 84, 6
CONFUSION_RGB = (24, 90, 160)  # a row's whole share; none is white


@functools.lru_cache(maxsize=1)
def _font():
    return ImageFont.load_default(size=14)


def _fitted(text, width):
    """`text`, cut with an ellipsis to fit `width` pixels in the font."""
    font, cut = _font(), text
    while cut and font.getlength(cut if cut == text else cut + '…') > width:
        cut = cut[:-1]
    return cut if cut == text else cut + '…'


def _count(value):
    return f'{value:,}' if value < 10 ** 6 else f'{value / 10 ** 6:,.1f}M'


def _share(fraction):
    """A fraction as a percentage in a cell: a tenth shown near 0 and near 100, so that
    neither reads as exact."""
    if 0 < fraction < 0.0005:
        return '<0.1'
    if 0.9995 <= fraction < 1:
        return '>99.9'
    return f'{100 * fraction:.1f}' if 0 < fraction < 0.1 or 0.99 < fraction < 1 else \
        f'{100 * fraction:.0f}'


def confusion_picture(matrix, names):
    """An RGB picture of a confusion matrix (rows true classes, columns predicted, counts):
    each cell the percentage of its row's pixels, shaded by it, the class names on both axes
    and each row's pixel count; a row without pixels is grey. Its size is
    (TITLE + LABEL + n CELL + PAD) x (LABEL + n CELL + COUNTS) for n classes."""
    matrix = np.asarray(matrix, np.int64)
    n, font = len(names), _font()
    top, left = TITLE + LABEL, LABEL
    picture = Image.new('RGB', (left + n * CELL + COUNTS, top + n * CELL + PAD), 'white')
    draw = ImageDraw.Draw(picture)
    draw.multiline_text((PAD, PAD), 'rows: true class, columns: predicted\ncells: % of the '
                        'row\'s pixels', fill='black', font=font)
    draw.text((left + n * CELL + PAD, top - 20), 'pixels', fill='black', font=font)
    totals = matrix.sum(1)
    for row, name in enumerate(names):
        y, label = top + row * CELL, _fitted(name, LABEL - 2 * PAD)
        draw.text((PAD, y + CELL // 2), label, fill='black', font=font, anchor='lm')
        draw.text((left + n * CELL + PAD, y + CELL // 2), _count(int(totals[row])),
                  fill='black', font=font, anchor='lm')
        column = Image.new('L', (LABEL, CELL), 0)
        ImageDraw.Draw(column).text((PAD, CELL // 2), label, fill=255, font=font, anchor='lm')
        picture.paste('black', (left + row * CELL, TITLE), column.rotate(90, expand=True))
        for col in range(n):
            _confusion_cell(draw, (left + col * CELL, y), matrix[row, col], totals[row],
                            row == col)
    return np.asarray(picture)


def _confusion_cell(draw, corner, count, total, diagonal):
    """One cell: its share of the row's `total`, shaded, or grey for an empty row."""
    x, y = corner
    fraction = count / total if total else None
    fill = (220, 220, 220) if fraction is None else tuple(
        round(255 - fraction * (255 - c)) for c in CONFUSION_RGB)
    draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=fill,
                   outline='black' if diagonal else (200, 200, 200))
    draw.text((x + CELL // 2, y + CELL // 2), '-' if fraction is None else _share(fraction),
              fill='white' if fraction is not None and fraction > 0.55 else 'black',
              font=_font(), anchor='mm')
