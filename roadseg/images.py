"""Reading images and labels (any unreadable file is one UserError naming it) and resizing
them: images and probabilities bilinearly, class maps by nearest neighbour so classes never
blend."""
import numpy as np
from PIL import Image

from roadseg.errors import UserError

CALIBRATION_IMAGES = 32  # batch norm of averaged weights (training), int8 ranges (export)


def _open_image(path):
    """A PIL image, fully decoded so that truncated files fail here."""
    try:
        image = Image.open(path)
        image.load()
        return image
    except Exception as e:  # PIL raises many types for unreadable files
        raise UserError(f'{path}: cannot read image ({e}); replace or remove the file') from None


def read_rgb(path):
    """Read an 8-bit RGB image as uint8 HxWx3; any other kind of file is a UserError."""
    image = _open_image(path)
    if image.mode != 'RGB':
        kind = {'L': 'grayscale', '1': 'black-and-white', 'P': 'palette', 'RGBA': 'RGBA',
                'LA': 'grayscale+alpha', 'I;16': '16-bit', 'I': '32-bit'}.get(image.mode,
                                                                               image.mode)
        raise UserError(f'{path}: {kind} image, expected 8-bit RGB; convert it to RGB')
    return np.asarray(image)


def read_label_image(path, rgb):
    """Read a label image: RGB colours when `rgb`, else single-channel class numbers (palette
    PNGs give their raw indices)."""
    image = _open_image(path)
    if rgb and image.mode in ('RGB', 'P'):
        return np.asarray(image.convert('RGB'))
    if not rgb and image.mode in ('L', 'P'):
        return np.asarray(image)
    expected = 'RGB colours' if rgb else '8-bit single-channel class numbers'
    raise UserError(f'{path}: {image.mode} label image, expected {expected}')


def resize_image(image, shape):
    """Resize an RGB uint8 image to (height, width) with bilinear interpolation."""
    if image.shape[:2] == tuple(shape):
        return image
    return np.asarray(Image.fromarray(image).resize(shape[::-1], Image.BILINEAR))


def resize_label(classes, shape):
    """Resize a class-index map to (height, width) with nearest neighbour: values never blend."""
    if classes.shape[:2] == tuple(shape):
        return classes
    return np.asarray(Image.fromarray(classes).resize(shape[::-1], Image.NEAREST))


def resize_probabilities(probabilities, shape):
    """Per-class probabilities [h, w, classes] resized bilinearly to `shape` (height, width)."""
    if probabilities.shape[:2] == tuple(shape):
        return probabilities
    return np.stack([np.asarray(Image.fromarray(probabilities[..., c].astype(np.float32), 'F')
                                .resize(shape[::-1], Image.BILINEAR))
                     for c in range(probabilities.shape[-1])], -1)


def calibration_images(paths, image_shape, count=CALIBRATION_IMAGES):
    """`count` of the image `paths`, at an even step from the first, read whole and resized to
    the training size as inference sees them: the batch whose statistics the averaged weights'
    batch norm takes (training) and whose activation ranges the int8 export takes."""
    step = max(1, len(paths) // count)
    return np.stack([resize_image(read_rgb(path), image_shape) for path in paths[::step][:count]])
