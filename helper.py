"""Data, downloads and inference output for the FCN-8s road segmenter.

Sections: bad-input errors and atomic writes; downloads (Udacity's VGG16 SavedModel, KITTI Road);
the KITTI batch generator with its paired image+label transforms; overlays written to runs/.
"""
import argparse
import collections
import contextlib
import glob
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor

import imageio.v3 as iio
import numpy as np
from PIL import Image
from tqdm import tqdm

VGG_URL = 'https://s3-us-west-1.amazonaws.com/udacity-selfdrivingcar/vgg.zip'
KITTI_URL = 'https://s3.eu-central-1.amazonaws.com/avg-kitti/data_road.zip'

VOID = 255  # class index stored for void pixels; one-hot rows of void pixels are all zero

OVERLAY_RGB = (0, 255, 0)
OVERLAY_ALPHA = 0.5
CALIBRATION_IMAGES = 32  # batch norm of averaged weights (main.py), int8 ranges (export.py)


class UserError(Exception):
    """A bad input, file or flag: reported as one line naming it and what to do, no traceback."""


class PartlyFailed(Exception):
    """Part of the work failed after the rest was done and the failures were listed (inputs
    that could not be read, exports that disagree): reported as one line, exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad flag as one line (a UserError), like every other bad input."""

    def error(self, message):
        raise UserError(f'{message} (see --help)')


def main_guard(fn, *args):
    """Run `fn`, turning a UserError into one line on stderr and exit status 2 (a PartlyFailed:
    exit status 1)."""
    try:
        fn(*args)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except PartlyFailed as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C++ libraries' notices) inside the block; Python exceptions
    raised in it still reach the user after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """TensorFlow in TF1 graph mode, without its C++ start-up notices about absent GPUs."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    with quiet_stderr():
        import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    tf.get_logger().setLevel('ERROR')  # TF1 API deprecation notices are expected here
    return tf


class RunLog:
    """Prints each message and appends it to a run's log file."""

    def __init__(self, path):
        self.path = path

    def __call__(self, message):
        print(message)
        with open(self.path, 'a') as f:
            f.write(message + '\n')


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories, so a reader never sees a half-written result.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=parent)
    target = os.path.join(tmp, os.path.basename(path))
    try:
        yield target
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(value, f, indent=2)


# ----------------------------------------------------------------------------------------------
# Downloads
# ----------------------------------------------------------------------------------------------

def download(url, dest, sha256=None, timeout=30):
    """Download `url` to `dest` with a progress bar, via a temporary name renamed when complete.

    The byte count is checked against Content-Length and, when given, the SHA-256 digest.
    Returns the digest. Raises UserError when offline or when the file is truncated or wrong.
    """
    name = os.path.basename(dest)
    digest = hashlib.sha256()
    received = 0
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, 'wb') as out:
                expected = int(response.headers.get('Content-Length') or 0) or None
                with tqdm(total=expected, unit='B', unit_scale=True, desc=name, leave=False,
                          disable=None) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except http.client.IncompleteRead as e:
            raise UserError(f'download of {url} was cut off after {received + len(e.partial)} '
                            f'bytes; run again to retry') from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, 'reason', e)
            raise UserError(f'could not download {url} ({reason})') from None
        if expected is not None and received != expected:
            raise UserError(f'download of {url} is truncated: {received} of {expected} bytes; '
                            f'run again to retry')
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise UserError(f'download of {url} has SHA-256 {digest.hexdigest()}, expected '
                            f'{sha256}; the file on the server changed or was corrupted')
    return digest.hexdigest()


def safe_extract(zip_path, target_dir):
    """Extract a zip archive, refusing members whose path would land outside `target_dir`."""
    root = os.path.realpath(target_dir)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                dest = os.path.realpath(os.path.join(root, member))
                if dest != root and not dest.startswith(root + os.sep):
                    raise UserError(f'{zip_path}: member {member!r} would be written outside '
                                    f'{target_dir}; refusing to extract this archive')
            bad = archive.testzip()
            if bad is not None:
                raise UserError(f'{zip_path}: member {bad!r} is corrupt; delete the file and '
                                f'download it again')
            archive.extractall(root)
    except zipfile.BadZipFile as e:
        raise UserError(f'{zip_path}: not a valid zip file ({e}); delete it and download again') \
            from None


def maybe_download_and_extract(url, data_dir, folder, sha256=None):
    """Make `data_dir/folder` exist by downloading and extracting `url`, whose zip holds `folder/`.

    The archive is extracted into a temporary folder and moved into place only when complete.
    """
    target = os.path.join(data_dir, folder)
    if os.path.isdir(target):
        return target
    zip_path = os.path.join(data_dir, os.path.basename(url))
    print(f'{target} not found; downloading {url}')
    manual = (f'download {url} by hand and unzip it into {data_dir} so that {target}/ exists')
    try:
        os.makedirs(data_dir, exist_ok=True)
        download(url, zip_path, sha256=sha256)
    except UserError as e:
        raise UserError(f'{e}. To proceed offline, {manual}') from None
    extract_dir = tempfile.mkdtemp(prefix='.extract-', dir=data_dir)
    try:
        safe_extract(zip_path, extract_dir)
        if not os.path.isdir(os.path.join(extract_dir, folder)):
            raise UserError(f'{zip_path} has no {folder}/ folder; {manual}')
        os.replace(os.path.join(extract_dir, folder), target)
    finally:
        shutil.rmtree(extract_dir, ignore_errors=True)
    os.remove(zip_path)
    return target


def maybe_download_pretrained_vgg(data_dir, url=VGG_URL, sha256=None):
    """Make `data_dir/vgg` hold Udacity's VGG16 SavedModel, downloading vgg.zip if needed."""
    return maybe_download_and_extract(url, data_dir, 'vgg', sha256)


def maybe_download_kitti(data_dir, url=KITTI_URL, sha256=None):
    """Make `data_dir/data_road` hold KITTI Road, downloading data_road.zip (0.5 GB) if needed."""
    return maybe_download_and_extract(url, data_dir, 'data_road', sha256)


# ----------------------------------------------------------------------------------------------
# Reading and transforming images and labels
# ----------------------------------------------------------------------------------------------

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


def calibration_images(paths, image_shape, count=CALIBRATION_IMAGES):
    """`count` of the image `paths`, at an even step from the first, read whole and resized to
    the training size as inference sees them: the batch whose statistics the averaged weights'
    batch norm takes (main.py) and whose activation ranges the int8 export takes (export.py)."""
    step = max(1, len(paths) // count)
    return np.stack([resize_image(read_rgb(path), image_shape) for path in paths[::step][:count]])


def resize_label(classes, shape):
    """Resize a class-index map to (height, width) with nearest neighbour: values never blend."""
    if classes.shape[:2] == tuple(shape):
        return classes
    return np.asarray(Image.fromarray(classes).resize(shape[::-1], Image.NEAREST))


def resize_probability(prob, shape):
    """Resize a float probability map to (height, width) with bilinear interpolation."""
    if prob.shape == tuple(shape):
        return prob
    return np.asarray(Image.fromarray(prob.astype(np.float32), 'F').resize(shape[::-1],
                                                                          Image.BILINEAR))


def one_hot(classes, num_classes):
    """Class indices to float one-hot; VOID (or any index >= num_classes) gives an all-zero row."""
    return (classes[..., None] == np.arange(num_classes)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The KITTI Road training set
# ----------------------------------------------------------------------------------------------

def kitti_pairs(data_folder, label='road'):
    """Pair `image_2/<cat>_<id>.png` with `gt_image_2/<cat>_<label>_<id>.png`.

    KITTI has lane ground truth for the `um` category only, so an image is required to have a
    label when its category has any label of that kind; images of other categories are left out.
    """
    image_dir = os.path.join(data_folder, 'image_2')
    label_dir = os.path.join(data_folder, 'gt_image_2')
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise UserError(f'{folder}: folder not found; --data-dir must hold '
                            f'data_road/training/image_2 and gt_image_2 (KITTI Road layout)')
    images = {os.path.basename(p)[:-4]: p for p in glob.glob(os.path.join(image_dir, '*.png'))}
    if not images:
        raise UserError(f'{image_dir}: no .png images found')
    pattern = re.compile(rf'^([a-z]+)_{label}_(\d+)\.png$')
    labels = {}
    for path in glob.glob(os.path.join(label_dir, '*.png')):
        match = pattern.match(os.path.basename(path))
        if match:
            labels['_'.join(match.groups())] = path
    if not labels:
        raise UserError(f'{label_dir}: no *_{label}_*.png ground truth found; check --label')
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise UserError(f'{labels[orphans[0]]}: label without an image '
                        f'({len(orphans)} such labels); add the image or remove the label')
    categories = {stem.split('_')[0] for stem in labels}
    missing = sorted(s for s in images if s.split('_')[0] in categories and s not in labels)
    if missing:
        raise UserError(f'{images[missing[0]]}: image without a {label} label '
                        f'({len(missing)} such images); add the label or remove the image')
    return [(images[stem], labels[stem]) for stem in sorted(labels)]


def split_pairs(pairs, val_fraction, seed):
    """A seeded train/validation split: (train pairs, validation pairs), each sorted.

    round(n * val_fraction) pairs go to validation (48 of KITTI's 289 at the default 0.166).
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f'--val-fraction {val_fraction}: must be at least 0 and below 1')
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = set(order[:round(len(pairs) * val_fraction)].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val],
            [p for i, p in enumerate(pairs) if i in val])


def load_pair(image_path, label_path, image_shape, read_label):
    """Read, check and resize one image and its label (a class map from `read_label`)."""
    image = read_rgb(image_path)
    classes = read_label(label_path)
    if image.shape[:2] != classes.shape:
        raise UserError(f'{label_path}: size {classes.shape[1]}x{classes.shape[0]} differs from '
                        f'its image {image_path} ({image.shape[1]}x{image.shape[0]})')
    return resize_image(image, image_shape), resize_label(classes, image_shape)


class BatchGenerator:
    """`get_batches_fn`: called with a batch size, yields one epoch of shuffled, augmented
    (float32 images, one-hot labels) batches, prepared ahead by background threads.

    All pairs are read and checked once, at construction, so bad files are reported before any
    training starts; `len()` is the number of pairs. Every batch draws its randomness from its
    own generator seeded by (seed, epoch, batch), so results do not depend on thread timing and
    a resumed run that sets `epoch` sees the batches the uninterrupted run would have. From
    epoch `plain_from` on, `augment` is cut down to its flips and crop (main.py's --plain-epochs).
    """

    def __init__(self, pairs, image_shape, read_label, num_classes, augment=None, seed=None,
                 workers=2, prefetch=4, plain_from=None):
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.augment = augment
        self.plain_from = plain_from
        self.seed = seed
        self.epoch = 0
        self.workers, self.prefetch = workers, prefetch
        with tqdm(pairs, desc='Reading data', leave=False, disable=None) as bar:
            loaded = [load_pair(image, label, image_shape, read_label) for image, label in bar]
        self.images = np.stack([image for image, _ in loaded])
        self.labels = np.stack([classes for _, classes in loaded])

    def __len__(self):
        return len(self.images)

    def __call__(self, batch_size):
        self.epoch += 1
        epoch_seed = np.random.SeedSequence([self.seed or 0, self.epoch])
        order = np.random.default_rng(epoch_seed).permutation(len(self))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        augment = self.augment_for(self.epoch)
        with ThreadPoolExecutor(self.workers) as pool:
            pending = collections.deque()
            for indexes, seed in zip(batches, epoch_seed.spawn(len(batches))):
                pending.append(pool.submit(self.make_batch, indexes, seed, augment))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def augment_for(self, epoch):
        """The transforms of `epoch` (1-based), or None."""
        if self.augment and self.plain_from and epoch >= self.plain_from:
            return self.augment.flips_only()
        return self.augment

    def make_batch(self, indexes, seed, augment):
        """The examples `indexes`, transformed by `augment` (if any), as network inputs."""
        rng = np.random.default_rng(seed)
        pairs = [augment(self.images[i], self.labels[i], rng) if augment
                 else (self.images[i], self.labels[i]) for i in indexes]
        images, labels = zip(*pairs)
        return np.stack(images).astype(np.float32), one_hot(np.stack(labels), self.num_classes)


def gen_batch_function(data_folder, image_shape, label='road', seed=None):
    """Return `get_batches_fn(batch_size)` over the KITTI folder holding image_2/ and gt_image_2/,
    with random horizontal flips.

    Batches are float32 RGB images in 0..255 and one-hot [not-road, road] labels, void rows zero.
    """
    import datasets  # here: these modules build on this one
    import transforms
    classes = datasets.kitti_classes()
    return BatchGenerator(kitti_pairs(data_folder, label), image_shape,
                          lambda path: datasets.read_label(classes, path), classes.num_classes,
                          transforms.Augment('none,flip=0.5'), seed)


# ----------------------------------------------------------------------------------------------
# Inference samples
# ----------------------------------------------------------------------------------------------

def overlay(image, classes, colors=(None, OVERLAY_RGB)):
    """Blend each class's colour into `image` where the class map `classes` has that class;
    classes whose colour is None are not drawn (by default: road, class 1, in green)."""
    out = image.copy()
    for index, color in enumerate(colors):
        if color is not None:
            mask = classes == index
            blend = (1 - OVERLAY_ALPHA) * image[mask].astype(np.float32) + \
                OVERLAY_ALPHA * np.array(color, np.float32)
            out[mask] = blend.round()
    return out


def overlay_colors(class_colors):
    """What overlays draw: road in green for two classes, every class in its colour for more."""
    return (None, OVERLAY_RGB) if len(class_colors) == 2 else tuple(map(tuple, class_colors))


def write_legend(path, names, colors):
    """A PNG with a colour swatch and the name of each drawn class."""
    from PIL import ImageDraw
    drawn = [(name, color) for name, color in zip(names, colors) if color is not None]
    legend = Image.new('RGB', (220, 20 * len(drawn) + 4), 'white')
    draw = ImageDraw.Draw(legend)
    for row, (name, color) in enumerate(drawn):
        draw.rectangle([4, 4 + 20 * row, 36, 20 + 20 * row], fill=tuple(color), outline='black')
        draw.text((44, 6 + 20 * row), name, fill='black')
    with atomic_path(path) as tmp:
        legend.save(tmp, format='PNG')


def full_size(probabilities, shape):
    """Per-class probabilities [h, w, classes] resized bilinearly to `shape` (height, width)."""
    return np.stack([resize_probability(probabilities[..., c], shape)
                     for c in range(probabilities.shape[-1])], -1)


def gen_test_output(sess, probabilities, keep_prob, image_pl, image_paths, image_shape,
                    bad=None, colors=(None, OVERLAY_RGB)):
    """Yield (file name, overlay at the original size) for each readable image.

    `probabilities` is the softmax over the logits, built once by the caller. Unreadable images
    are skipped and their error messages appended to `bad`.
    """
    for path in image_paths:
        try:
            image = read_rgb(path)
        except UserError as e:
            if bad is None:
                raise
            bad.append(str(e))
            continue
        prob = sess.run(probabilities, {keep_prob: 1.0,
                                        image_pl: resize_image(image, image_shape)[None]})
        classes = full_size(prob.reshape(*image_shape, -1), image.shape[:2]).argmax(-1)
        yield os.path.basename(path), overlay(image, classes, colors)


def sample_images(data_dir):
    """The images to write overlays for: KITTI's testing set, else its training set (said so)."""
    for split in ('testing', 'training'):
        paths = sorted(glob.glob(os.path.join(data_dir, 'data_road', split, 'image_2', '*.png')))
        if paths:
            if split == 'training':
                print(f'{data_dir}/data_road/testing has no images: writing overlays for the '
                      f'training images instead')
            return paths
    raise UserError(f'{data_dir}/data_road: no testing or training images to run inference on')


def save_inference_samples(runs_dir, data_dir, sess, image_shape, logits, keep_prob, input_image,
                           output_dir=None, image_paths=None, colors=(None, OVERLAY_RGB)):
    """Write overlays (green road by default) for KITTI's test images, or `image_paths`, to
    `output_dir` (default `runs_dir/<timestamp>`), each at its original size under its own name.

    Returns the output folder. Unreadable images are skipped and listed at the end.
    """
    import tensorflow as tf  # here, not at the top: the data functions do not need it
    output_dir = output_dir or new_run_dir(runs_dir)
    os.makedirs(output_dir, exist_ok=True)
    probabilities = tf.nn.softmax(logits)
    paths = image_paths or sample_images(data_dir)
    bad = []
    print(f'Writing {len(paths)} overlays to {output_dir}')
    overlays = gen_test_output(sess, probabilities, keep_prob, input_image, paths, image_shape, bad,
                               colors)
    for name, image in tqdm(overlays, total=len(paths), desc='Inference', disable=None):
        with atomic_path(os.path.join(output_dir, os.path.splitext(name)[0] + '.png')) as tmp:
            iio.imwrite(tmp, image, extension='.png')
    for message in bad:
        print(f'skipped {message}', file=sys.stderr)
    return output_dir


def new_run_dir(runs_dir):
    """Create and return a fresh `runs_dir/<YYYYmmdd-HHMMSS>[-N]` folder."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for n in range(1000):
        path = os.path.join(runs_dir, stamp if n == 0 else f'{stamp}-{n}')
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'{runs_dir}: could not create a new run folder')
