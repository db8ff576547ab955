"""--encoder-weights imagenet: the ImageNet weights Keras publishes for the VGG16 and MobileNetV2
encoders (no top), downloaded once into data/ and checked before use.

Keras publishes an MD5 digest for VGG16's file and none for MobileNetV2's (keras.applications
calls get_file without a hash for it). The download is checked against the MD5 where there is
one; both files are then read layer by layer, every encoder layer present at its shape, before
training starts. The SHA-256 of the file used is printed for the record.
"""
import collections
import os

from roadseg import downloads
from roadseg.errors import UserError

FOLDER = 'data'
KERAS = 'https://storage.googleapis.com/tensorflow/keras-applications/'
Published = collections.namedtuple('Published', 'url md5')
WEIGHTS = {
    'vgg16': Published(KERAS + 'vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
                       '6d6bbae143d832006294945121d1f1fc'),
    'mobilenetv2': Published(KERAS + 'mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_'
                                     'kernels_1.0_224_no_top.h5', None),
}


def path(encoder, folder=FOLDER):
    """Where `encoder`'s ImageNet file is kept: data/<Keras's file name>."""
    return os.path.join(folder, downloads.url_name(WEIGHTS[encoder].url))


def fetch(encoder, folder=FOLDER):
    """`encoder`'s ImageNet file, downloaded (resumably, with a progress bar) when absent;
    offline, one line says where to put it by hand and how to do without."""
    dest = path(encoder, folder)
    if os.path.isfile(dest):
        return dest
    published = WEIGHTS[encoder]
    print(f'{dest} not found; downloading {published.url}', flush=True)
    try:
        os.makedirs(folder, exist_ok=True)
        sha256 = downloads.download(published.url, dest, md5=published.md5)
    except (UserError, OSError) as e:
        raise UserError(f'--encoder-weights imagenet: {e}. Offline, download {published.url} '
                        f'by hand into {folder}/, or give --encoder-weights keras-h5:PATH '
                        f'naming a copy you have, or --encoder-weights none to train from '
                        f'scratch') from None
    checked = f"Keras's published MD5 {published.md5}" if published.md5 else \
        'no digest, as Keras publishes none for it'
    print(f'{dest}: checked against {checked}; SHA-256 {sha256}', flush=True)
    return dest
