"""Data sets: which images pair with which labels, and what the label values mean.

A class file (JSON) describes a data set's classes, so a new data set needs no code:

    {"encoding": "color",                       # labels are colours ("index": class numbers)
     "classes": [{"name": "not road", "color": [255, 0, 0]},
                 {"name": "road", "color": [255, 0, 255]}],
     "void": {"color": [0, 0, 0]}}              # or {"value": 11} for index labels

Readers, chosen with --dataset: `kitti` (KITTI Road, road or lane ground truth), `camvid`
(the SegNet 11-class layout: train/ trainannot/ val/ valannot/ [test/ testannot/]), `camvid32`
(the original 32-class colour labels `*_L.png` with label_colors.txt) and `folder` (images/ and
masks/ with a classes.json). Images and labels pair by file stem, whatever their extensions.
Internally every label becomes a uint8 class map with VOID (255) for ignored pixels.
"""
import glob
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

import helper

VOID = helper.VOID
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff')
CLASS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'classes')


@dataclass
class ClassSet:
    """Class names and colours, and how label files encode them."""
    names: list
    colors: list
    encoding: str = 'color'          # 'color': RGB labels; 'index': class-number labels
    void_color: tuple = None         # with 'color' encoding
    void_value: int = None           # with 'index' encoding
    source: str = '(built in)'       # the file it came from, for error messages
    lookup: np.ndarray = field(default=None, repr=False)  # label value -> class, for 'index'

    def __post_init__(self):
        if self.encoding == 'index':
            self.lookup = np.full(256, -1, np.int16)
            self.lookup[:len(self.names)] = np.arange(len(self.names))
            if self.void_value is not None:
                self.lookup[self.void_value] = VOID

    @property
    def num_classes(self):
        return len(self.names)

    def decode(self, label, path):
        """A label image to a uint8 class map (VOID for void); values outside the set are a
        UserError naming the file and the value."""
        if self.encoding == 'index':
            if label.ndim == 3:
                raise helper.UserError(f'{path}: colour label, but {self.source} says labels are '
                                       f'class numbers (single channel)')
            classes = self.lookup[label]
            bad = classes < 0
            if bad.any():
                y, x = np.argwhere(bad)[0]
                raise helper.UserError(f'{path}: label value {int(label[y, x])} at row {y}, '
                                       f'column {x} is not in {self.source} (classes 0..'
                                       f'{self.num_classes - 1}, void {self.void_value})')
            return classes.astype(np.uint8)
        if label.ndim != 3 or label.shape[2] != 3:
            raise helper.UserError(f'{path}: expected an RGB colour label ({self.source})')
        code = _pack(label)
        table = {_pack(np.array(c)): i for i, c in enumerate(self.colors)}
        if self.void_color is not None:
            table[_pack(np.array(self.void_color))] = VOID
        keys = np.array(list(table))
        values = np.array(list(table.values()), np.uint8)
        order = np.argsort(keys)
        position = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
        found = keys[order][position] == code
        if not found.all():
            y, x = np.argwhere(~found)[0]
            raise helper.UserError(f'{path}: colour {tuple(int(c) for c in label[y, x])} at row '
                                   f'{y}, column {x} ({int((~found).sum())} pixels) is not in '
                                   f'{self.source}')
        return values[order][position]

    def remapped(self, spec):
        """A two-or-more-class set from `NAME=I[+I..][,NAME=..]`: the named groups of classes
        become classes 1.., everything else class 0 ('other'); void stays void."""
        groups = []
        for part in spec.split(','):
            name, _, members = part.partition('=')
            try:
                indexes = [int(v) for v in members.split('+')]
            except ValueError:
                raise helper.UserError(f'--remap {spec!r}: {part!r} is not NAME=INDEX[+INDEX..]') \
                    from None
            wrong = [i for i in indexes if not 0 <= i < self.num_classes]
            if not name.strip() or wrong:
                raise helper.UserError(f'--remap {spec!r}: {part!r} names no class of '
                                       f'{self.source} (0..{self.num_classes - 1})')
            groups.append((name.strip(), indexes))
        mapping = np.zeros(256, np.uint8)
        mapping[VOID] = VOID
        for new, (_, indexes) in enumerate(groups, 1):
            mapping[indexes] = new
        names = ['other'] + [name for name, _ in groups]
        colors = [(0, 0, 0)] + [self.colors[indexes[0]] for _, indexes in groups]
        return RemappedClassSet(names, colors, self.encoding, base=self, mapping=mapping,
                                source=f'{self.source} remapped by {spec!r}')


@dataclass
class RemappedClassSet(ClassSet):
    """A class set whose labels are decoded by another set, then mapped to new classes."""
    base: ClassSet = None
    mapping: np.ndarray = field(default=None, repr=False)

    def decode(self, label, path):
        return self.mapping[self.base.decode(label, path)]


def _pack(rgb):
    """RGB triples as single integers, for fast colour look-ups."""
    rgb = np.asarray(rgb, np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def load_class_file(path):
    """A ClassSet from a JSON class file (see the module docstring)."""
    try:
        with open(path) as f:
            spec = json.load(f)
        names = [c['name'] for c in spec['classes']]
        colors = [tuple(int(v) for v in c['color']) for c in spec['classes']]
        encoding = spec.get('encoding', 'color')
        void = spec.get('void', {})
        if encoding not in ('color', 'index') or not names:
            raise ValueError('encoding must be "color" or "index", with at least one class')
        return ClassSet(names, colors, encoding,
                        void_color=tuple(void['color']) if 'color' in void else None,
                        void_value=void.get('value'), source=path)
    except FileNotFoundError:
        raise helper.UserError(f'{path}: class file not found') from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise helper.UserError(f'{path}: cannot parse the class file ({type(e).__name__}: {e})') \
            from None


def read_label_colors(path):
    """CamVid's label_colors.txt (`R G B<tab>Name` per line) as a colour ClassSet; its `Void`
    entry is the void colour."""
    names, colors, void = [], [], None
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                match = re.fullmatch(r'\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S.*?)\s*', line)
                if not match:
                    raise helper.UserError(f'{path}: line {number} is not "R G B Name"')
                rgb, name = tuple(int(v) for v in match.groups()[:3]), match.group(4)
                if name.lower() == 'void':
                    void = rgb
                else:
                    names.append(name)
                    colors.append(rgb)
    except OSError as e:
        raise helper.UserError(f'{path}: cannot read ({e.strerror})') from None
    return ClassSet(names, colors, 'color', void_color=void, source=path)


def pair_by_stem(image_dir, label_dir, label_stem=lambda stem: stem):
    """(image, label) path pairs of two folders, matched by file stem whatever the extensions;
    unpaired files or an empty folder are a UserError."""
    def by_stem(folder):
        if not os.path.isdir(folder):
            raise helper.UserError(f'{folder}: folder not found')
        files = {}
        for path in sorted(glob.glob(os.path.join(folder, '*'))):
            stem, ext = os.path.splitext(os.path.basename(path))
            if ext.lower() in IMAGE_EXTENSIONS:
                if stem in files:
                    raise helper.UserError(f'{path}: two files with the stem {stem!r}')
                files[stem] = path
        if not files:
            raise helper.UserError(f'{folder}: no images found')
        return files
    images, labels = by_stem(image_dir), by_stem(label_dir)
    wanted = {label_stem(stem): stem for stem in images}
    orphans = sorted(set(labels) - set(wanted))
    if orphans:
        raise helper.UserError(f'{labels[orphans[0]]}: label without an image '
                               f'({len(orphans)} such labels)')
    missing = sorted(stem for label, stem in wanted.items() if label not in labels)
    if missing:
        raise helper.UserError(f'{images[missing[0]]}: image without a label '
                               f'({len(missing)} such images)')
    return [(images[stem], labels[label]) for label, stem in sorted(wanted.items())]


@dataclass
class Dataset:
    """A data set's classes and its training and validation pairs (validation may be None:
    then the caller splits the training pairs)."""
    name: str
    classes: ClassSet
    train: list
    val: list = None
    test_images: list = field(default_factory=list)

    def read_label(self, path):
        """A label file as a uint8 class map, VOID for void."""
        return read_label(self.classes, path)


def read_label(classes, path):
    """A label file as a uint8 class map of `classes`, VOID for void."""
    return classes.decode(helper.read_label_image(path, classes.encoding == 'color'), path)


def kitti_classes():
    """KITTI Road's colours: not road (255,0,0), road (255,0,255), void black."""
    return load_class_file(os.path.join(CLASS_DIR, 'kitti_road.json'))


def kitti(data_dir, label='road', **_):
    """KITTI Road: data_dir/data_road/training/{image_2, gt_image_2}, downloaded if absent.
    Its overlays are made for testing/image_2 (helper.sample_images)."""
    helper.maybe_download_kitti(data_dir)
    pairs = helper.kitti_pairs(os.path.join(data_dir, 'data_road', 'training'), label)
    return Dataset('kitti', kitti_classes(), pairs)


def camvid(data_dir, **_):
    """CamVid in the SegNet layout: 11 classes as label numbers, 11 = void."""
    classes = load_class_file(os.path.join(CLASS_DIR, 'camvid11.json'))
    folders = {name: os.path.join(data_dir, name) for name in ('train', 'val')}
    split = {name: pair_by_stem(path, path + 'annot') for name, path in folders.items()}
    test = sorted(glob.glob(os.path.join(data_dir, 'test', '*')))
    return Dataset('camvid', classes, split['train'], split['val'], test or
                   [image for image, _ in split['val']])


def camvid32(data_dir, **_):
    """Original CamVid: colour labels `<stem>_L.png` described by label_colors.txt, in
    train/ + train_labels/ and val/ + val_labels/, or one images/ + labels/ pair of folders."""
    classes = read_label_colors(os.path.join(data_dir, 'label_colors.txt'))
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


def folder(data_dir, **_):
    """Any data set as data_dir/images/ + data_dir/masks/ (paired by stem) + classes.json."""
    classes = load_class_file(os.path.join(data_dir, 'classes.json'))
    pairs = pair_by_stem(os.path.join(data_dir, 'images'), os.path.join(data_dir, 'masks'))
    return Dataset('folder', classes, pairs, test_images=[image for image, _ in pairs])


def median_frequency_weights(label_maps, num_classes):
    """SegNet's median-frequency balancing: weight_c = median(freq) / freq_c, where freq_c is the
    class's pixels over all labelled pixels of the images that contain it. A class absent from
    every label gets weight 0 (it never occurs in the loss anyway)."""
    pixels = np.zeros(num_classes)
    present_in = np.zeros(num_classes)
    for classes in label_maps:
        counts = np.bincount(classes[classes < num_classes].ravel(), minlength=num_classes)
        pixels += counts
        present_in += np.where(counts > 0, counts.sum(), 0)
    frequency = np.divide(pixels, present_in, out=np.zeros(num_classes), where=present_in > 0)
    median = np.median(frequency[frequency > 0])
    return np.divide(median, frequency, out=np.zeros(num_classes), where=frequency > 0)


READERS = {'kitti': kitti, 'camvid': camvid, 'camvid32': camvid32, 'folder': folder}


def open_dataset(name, data_dir, label='road', classes=None, remap=None):
    """The data set `name` in `data_dir`; `classes` overrides its class file, `remap` merges
    classes (see ClassSet.remapped)."""
    if not os.path.isdir(data_dir):
        raise helper.UserError(f'--data-dir {data_dir}: folder not found')
    dataset = READERS[name](data_dir, label=label)
    if classes:
        dataset.classes = load_class_file(classes)
    if remap:
        dataset.classes = dataset.classes.remapped(remap)
    return dataset
