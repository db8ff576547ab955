"""EXIF orientation: a phone stores a photo as its sensor saw it and tags how to turn it; every
command and the service segment the photo as a viewer shows it, and write masks that way."""
import io

import imageio.v2 as iio2
import numpy as np
import pytest
from PIL import Image

from roadseg import images
from roadseg.commands import predict

ORIENTATION = images.EXIF_ORIENTATION
# EXIF orientation -> how the stored pixels are turned to be shown (numpy, on the stored array)
SHOWN = {1: lambda a: a, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1),
         8: lambda a: np.rot90(a, 1), 2: lambda a: a[:, ::-1], 4: lambda a: a[::-1]}


def stored(upright, orientation):
    """The pixels a camera stores, with tag `orientation`, for a photo shown as `upright`."""
    turned = upright
    while not np.array_equal(SHOWN[orientation](turned), upright):
        turned = np.rot90(turned) if orientation in (3, 6, 8) else turned[::-1] \
            if orientation == 4 else turned[:, ::-1]
    return np.ascontiguousarray(turned)


def png_with_orientation(pixels, orientation):
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    data = io.BytesIO()
    image.save(data, 'PNG', exif=exif)
    return data.getvalue()


@pytest.mark.parametrize('orientation', sorted(SHOWN))
def test_images_are_read_and_decoded_as_shown(tmp_path, orientation):
    upright = np.random.default_rng(orientation).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    data = png_with_orientation(stored(upright, orientation), orientation)
    (tmp_path / 'photo.png').write_bytes(data)
    np.testing.assert_array_equal(images.decode_rgb(data, 'photo'), upright)
    np.testing.assert_array_equal(images.read_rgb(str(tmp_path / 'photo.png')), upright)


def test_predict_writes_the_mask_of_a_rotated_photo_as_it_is_shown(tmp_path):
    """The same street stored upright and stored turned with Orientation 6 gives one mask."""
    rng = np.random.default_rng(0)
    upright = np.zeros((96, 64, 3), np.uint8)  # portrait, as a phone held upright
    upright[:48] = (120, 160, 220)  # sky
    upright[48:] = rng.integers(60, 90, (48, 64, 3))  # asphalt
    iio2.imwrite(tmp_path / 'upright.png', upright)
    (tmp_path / 'turned.png').write_bytes(png_with_orientation(stored(upright, 6), 6))
    predict.main(['--model', 'camvid-road', str(tmp_path / 'upright.png'),
                  str(tmp_path / 'turned.png'), '--mask', '--output-dir', str(tmp_path / 'out')])
    masks = [iio2.imread(tmp_path / 'out' / f'{name}_mask.png') for name in ('upright', 'turned')]
    assert masks[0].shape == masks[1].shape == (96, 64)
    np.testing.assert_array_equal(masks[1], masks[0])
    assert masks[0][70:].mean() > masks[0][:30].mean()  # road below, not above: not blank


@pytest.mark.parametrize('orientation', sorted(SHOWN))
def test_the_size_read_from_the_header_is_the_size_shown(orientation):
    """serve.py bounds an answer from the header's size before decoding: the size it will
    segment, turned as the tag says."""
    upright = np.zeros((20, 36, 3), np.uint8)
    data = png_with_orientation(stored(upright, orientation), orientation)
    assert images.displayed_size(data) == (20, 36) == images.decode_rgb(data, 'x').shape[:2]
    assert images.displayed_size(b'not an image') is None
