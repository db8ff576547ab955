"""Reading images and labels (any unreadable file is one UserError naming it) and resizing
them: images and probabilities bilinearly, class maps by nearest neighbour so classes never
blend."""
import io

import cv2
import numpy as np
from PIL import Image, ImageOps

from roadseg.errors import UserError

CALIBRATION_IMAGES = 32  # batch norm of averaged weights (training), int8 ranges (export)


def upright(image):
    """`image` turned as its EXIF Orientation says, as every viewer shows it: a phone stores
    photos as the sensor saw them and the tag says how to turn them, so masks are computed and
    written in the orientation a person sees."""
    ImageOps.exif_transpose(image, in_place=True)  # no tag, or 1: unchanged
    return image


EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations whose turn swaps width and height


def displayed_size(data):
    """(height, width) of encoded image bytes, or of an open image file, as upright shows them,
    from the header alone (nothing decoded); None when Pillow cannot read it as an image."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        width, height = image.size
        turned = image.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED
    except Exception:  # PIL raises many types for what is not an image
        return None
    return (width, height) if turned else (height, width)


def _open_image(path):
    """A PIL image, fully decoded so that truncated files fail here, upright (EXIF)."""
    try:
        image = Image.open(path)
        image.load()
        return upright(image)
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


class TooLarge(UserError):
    """An image with more pixels than the reader allows."""


def check_pixels(width, height, name, max_pixels):
    """TooLarge when a `width` x `height` image has more than `max_pixels` pixels."""
    if max_pixels and width * height > max_pixels:
        raise TooLarge(f'{name}: {width}x{height} is over the limit of {max_pixels} pixels; '
                       f'send a smaller image')


def decode_rgb(data, name, max_pixels=None):
    """Image file bytes (JPEG, PNG, ...) as uint8 RGB HxWx3: grayscale and palette images are
    expanded, an alpha channel dropped (what a person drops into a page). The size is checked
    against `max_pixels` before the pixels are decoded (TooLarge); anything else that is not an
    8-bit image is a UserError naming `name`."""
    if not data:
        raise UserError(f'{name}: empty; send the bytes of a JPEG or PNG image')
    try:
        image = Image.open(io.BytesIO(data))
        check_pixels(image.width, image.height, name, max_pixels)
        if image.mode not in ('RGB', 'RGBA', 'L', 'LA', 'P', '1'):
            raise UserError(f'{name}: {image.mode} image, expected 8-bit RGB or grayscale')
        return np.asarray(upright(image).convert('RGB'))
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL's own limit, far above any sane max_pixels
        raise TooLarge(f'{name}: over the limit of {max_pixels} pixels; send a smaller '
                       f'image') from None
    except Image.UnidentifiedImageError:
        raise UserError(f'{name}: not an image (neither JPEG, PNG nor another format Pillow '
                        f'reads)') from None
    except Exception as e:  # PIL raises many types for damaged images
        raise UserError(f'{name}: cannot decode the image '
                        f'({(str(e).splitlines() or [type(e).__name__])[0]})') from None


def encode_png(pixels):
    """An image array (HxW or HxWx3 RGB, uint8) as PNG bytes, compressed fast (OpenCV's level
    1: a KITTI frame in milliseconds, where level 6 costs tens)."""
    if pixels.ndim == 3:
        pixels = np.ascontiguousarray(pixels[..., ::-1])  # OpenCV writes BGR
    ok, data = cv2.imencode('.png', pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError('OpenCV could not encode the PNG')
    return data.tobytes()


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
