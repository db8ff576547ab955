"""Data set layouts: which files of a --data-dir are the images, which their labels, and which
classes they hold.

Readers, chosen with --dataset: `kitti` (KITTI Road, road or lane ground truth; downloaded when
absent), `camvid` (the SegNet 11-class layout: train/ trainannot/ val/ valannot/ [test/
testannot/]; downloaded when absent), `camvid32` (the original 32-class colour labels `*_L.png`
with label_colors.txt), `cityscapes` (the official layout, its 19 training classes; never
downloaded, as it needs a login) and `folder` (images/ and masks/ with a classes.json). Images
and labels pair by file stem, whatever their extensions.
"""
import glob
import os
from dataclasses import dataclass, field

from roadseg.data import classes as class_files
from roadseg.data import downloads, kitti_names
from roadseg.errors import UserError
from roadseg.images import read_rgb

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff')
LABELS = ('road', 'lane')  # KITTI's ground truth: the road, or the ego-lane (um only)
CITYSCAPES_HINT = ('Cityscapes needs a login: register at https://www.cityscapes-dataset.com/, '
                   'download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, unzip '
                   'both into one folder and give it as --data-dir')


@dataclass
class Dataset:
    """A data set's classes and its training and validation pairs (validation may be None:
    then the caller splits the training pairs), and the images overlays are made for."""
    name: str
    classes: class_files.ClassSet
    train: list
    val: list = None
    test_images: list = field(default_factory=list)
    test_note: str = None  # said when overlays are written: what test_images stand in for

    def read_label(self, path):
        """A label file as a uint8 class map, VOID for void."""
        return class_files.read_label(self.classes, path)


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
    labels = {}
    for path in glob.glob(os.path.join(label_dir, '*.png')):
        category, named, number = kitti_names.parse(os.path.basename(path)[:-4]) or (0, 0, 0)
        if named == label:
            labels[f'{category}_{number}'] = path
    if not labels:
        other = next((kind for kind in LABELS if kind != label and glob.glob(
            os.path.join(label_dir, f'*_{kind}_*.png'))), None)
        raise UserError(f'{label_dir}: no *_{label}_*.png ground truth found' + (
            f'; it holds {other} ground truth (--label {other})' if other else
            '; check --label'))
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


def kitti_overlay_images(data_dir):
    """(the images to write overlays for, a note when they are not KITTI's testing set): its
    testing set, else its training set."""
    for split in ('testing', 'training'):
        paths = sorted(glob.glob(os.path.join(data_dir, 'data_road', split, 'image_2', '*.png')))
        if paths:
            return paths, None if split == 'testing' else (
                f'{data_dir}/data_road/testing has no images: writing overlays for the '
                f'training images instead')
    raise UserError(f'{data_dir}/data_road: no testing or training images to run inference on')


def kitti_test_images(data_dir):
    """The images to write overlays for (kitti_overlay_images), saying so when they are the
    training set."""
    paths, note = kitti_overlay_images(data_dir)
    if note:
        print(note)
    return paths


def pair_by_stem(image_dir, label_dir, label_stem=lambda stem: stem):
    """(image, label) path pairs of two folders, matched by file stem whatever the extensions;
    unpaired files or an empty folder are a UserError."""
    def by_stem(folder):
        if not os.path.isdir(folder):
            raise UserError(f'{folder}: folder not found')
        found = {}
        for path in sorted(glob.glob(os.path.join(folder, '*'))):
            stem, ext = os.path.splitext(os.path.basename(path))
            if ext.lower() in IMAGE_EXTENSIONS:
                if stem in found:
                    raise UserError(f'{path}: two files with the stem {stem!r}')
                found[stem] = path
        if not found:
            raise UserError(f'{folder}: no images found')
        return found
    images, labels = by_stem(image_dir), by_stem(label_dir)
    wanted = {label_stem(stem): stem for stem in images}
    orphans = sorted(set(labels) - set(wanted))
    if orphans:
        raise UserError(f'{labels[orphans[0]]}: label without an image '
                        f'({len(orphans)} such labels)')
    missing = sorted(stem for label, stem in wanted.items() if label not in labels)
    if missing:
        raise UserError(f'{images[missing[0]]}: image without a label '
                        f'({len(missing)} such images)')
    return [(images[stem], labels[label]) for label, stem in sorted(wanted.items())]


def kitti(data_dir, label='road'):
    """KITTI Road: data_dir/data_road/training/{image_2, gt_image_2}, downloaded if absent, its
    classes named after `label` (kitti_classes). Its overlays are made for testing/image_2."""
    downloads.maybe_download_kitti(data_dir)
    pairs = kitti_pairs(os.path.join(data_dir, 'data_road', 'training'), label)
    test_images, note = kitti_overlay_images(data_dir)  # said only when overlays are written
    return Dataset('kitti', kitti_classes(label), pairs, test_images=test_images,
                   test_note=note)


def kitti_classes(label='road'):
    """KITTI's two classes, named after its ground truth: not road and road, or for the ego-lane
    truth not lane and lane (kitti_road.json's colours), so that a model is scored on what its
    classes are named."""
    classes = class_files.builtin('kitti_road')
    if label != 'road':
        classes.names = [f'not {label}', label]
    return classes


def camvid(data_dir, **_):
    """CamVid in the SegNet layout: 11 classes as label numbers, 11 = void; downloaded if
    absent."""
    downloads.maybe_download_camvid(data_dir)
    classes = class_files.builtin('camvid11')
    folders = {name: os.path.join(data_dir, name) for name in ('train', 'val')}
    split = {name: pair_by_stem(path, path + 'annot') for name, path in folders.items()}
    test = sorted(glob.glob(os.path.join(data_dir, 'test', '*')))
    return Dataset('camvid', classes, split['train'], split['val'], test or
                   [image for image, _ in split['val']])


def camvid32(data_dir, **_):
    """Original CamVid: colour labels `<stem>_L.png` described by label_colors.txt, in
    train/ + train_labels/ and val/ + val_labels/, or one images/ + labels/ pair of folders."""
    classes = class_files.read_label_colors(os.path.join(data_dir, 'label_colors.txt'))
    if os.path.isdir(os.path.join(data_dir, 'train')):
        train, val = (pair_by_stem(os.path.join(data_dir, name),
                                   os.path.join(data_dir, name + '_labels'), _camvid32_label)
                      for name in ('train', 'val'))
    else:
        train = pair_by_stem(os.path.join(data_dir, 'images'), os.path.join(data_dir, 'labels'),
                             _camvid32_label)
        val = None
    return Dataset('camvid32', classes, train, val, [image for image, _ in val or train])


def _camvid32_label(stem):
    return stem + '_L'


def cityscapes(data_dir, **_):
    """Cityscapes as published: leftImg8bit/{train,val}/CITY/*_leftImg8bit.png with
    gtFine/{train,val}/CITY/*_gtFine_labelIds.png, its labelIds mapped to the 19 training
    classes and the rest void (cityscapes19.json). Overlays are made for leftImg8bit/test/."""
    for part in ('leftImg8bit', 'gtFine'):
        if not os.path.isdir(os.path.join(data_dir, part, 'train')):
            raise UserError(f'--data-dir {data_dir}: no {part}/train/ folder; {CITYSCAPES_HINT}')
    split = {}
    for name in ('train', 'val'):
        images = os.path.join(data_dir, 'leftImg8bit', name)
        labels = os.path.join(data_dir, 'gtFine', name)
        cities = sorted(os.listdir(images)) if os.path.isdir(images) else []
        if name == 'train' and not cities:
            raise UserError(f'{images}: no city folders; {CITYSCAPES_HINT}')
        split[name] = [pair for city in cities for pair in pair_by_stem(
            os.path.join(images, city), os.path.join(labels, city), _cityscapes_label)]
    test = sorted(glob.glob(os.path.join(data_dir, 'leftImg8bit', 'test', '*', '*.png')))
    return Dataset('cityscapes', class_files.builtin('cityscapes19'), split['train'],
                   split['val'] or None, test or [image for image, _ in split['val']])


def _cityscapes_label(stem):
    """`aachen_000000_000019_leftImg8bit` -> `aachen_000000_000019_gtFine_labelIds`."""
    return stem.removesuffix('_leftImg8bit') + '_gtFine_labelIds'


def folder(data_dir, **_):
    """Any data set as data_dir/images/ + data_dir/masks/ (paired by stem) + classes.json."""
    classes = class_files.load_class_file(os.path.join(data_dir, 'classes.json'))
    pairs = pair_by_stem(os.path.join(data_dir, 'images'), os.path.join(data_dir, 'masks'))
    return Dataset('folder', classes, pairs, test_images=[image for image, _ in pairs])


READERS = {'kitti': kitti, 'camvid': camvid, 'camvid32': camvid32, 'cityscapes': cityscapes,
           'folder': folder}
# The training size of each data set, multiples of 32: KITTI's 375x1242 frames at about half
# (the FCN-8s seed project's), CamVid's 360x480 whole, Cityscapes' 1024x2048 at half (as its
# papers train).
IMAGE_SHAPES = {'kitti': (160, 576), 'camvid': (352, 480), 'camvid32': (352, 480),
                'cityscapes': (512, 1024)}
DOWNLOADED = {'camvid'}  # readers that fetch their data set into a missing --data-dir


def open_dataset(name, data_dir, label='road', classes=None, remap=None):
    """The data set `name` in `data_dir`; `classes` (a ClassSet, read from a class file)
    replaces its own, `remap` merges classes (see ClassSet.remapped)."""
    if name not in DOWNLOADED and not os.path.isdir(data_dir):
        raise UserError(f'--data-dir {data_dir}: folder not found' +
                        (f'; {CITYSCAPES_HINT}' if name == 'cityscapes' else ''))
    dataset = READERS[name](data_dir, label=label)
    if classes:
        dataset.classes = classes
    if remap:
        dataset.classes = dataset.classes.remapped(remap)
    return dataset


def default_image_shape(name, data_dir):
    """The training size when --image-shape is not given: the data set's (IMAGE_SHAPES), or for
    a folder its first image's size rounded to multiples of 32."""
    if name in IMAGE_SHAPES:
        return IMAGE_SHAPES[name]
    paths = sorted(p for p in glob.glob(os.path.join(data_dir, 'images', '*'))
                   if p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise UserError(f'{os.path.join(data_dir, "images")}: no images found')
    return tuple(max(32, round(n / 32) * 32) for n in read_rgb(paths[0]).shape[:2])
