"""Class files: a data set's class names and colours, and how its label files encode them, so
a new data set needs no code:

    {"encoding": "color",                       # labels are colours ("index": class numbers)
     "classes": [{"name": "not road", "color": [255, 0, 0]},
                 {"name": "road", "color": [255, 0, 255]}],
     "void": {"color": [0, 0, 0]}}              # or {"value": 11} for index labels

With "index" labels a class is the label value of its place in the list, unless it gives the
values it takes, `"values": [7]` (Cityscapes' labelIds: cityscapes19.json), and void may be
several values, `"void": {"values": [0, 1, 2]}`. Every label becomes a uint8 class map with VOID
(255) for ignored pixels.
"""
import io
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from roadseg import configs, files
from roadseg.errors import UserError
from roadseg.images import read_label_image

VOID = 255  # class index stored for void pixels; one-hot rows of void pixels are all zero
CLASS_DIR = configs.path('classes')


@dataclass
class ClassSet:
    """Class names and colours, and how label files encode them."""
    names: list
    colors: list
    encoding: str = 'color'          # 'color': RGB labels; 'index': class-number labels
    void_color: tuple = None         # with 'color' encoding
    void_values: tuple = ()          # with 'index' encoding
    values: tuple = None             # with 'index' encoding: each class's label values (default:
                                     # its index)
    source: str = '(built in)'       # the file it came from, for error messages
    lookup: np.ndarray = field(default=None, repr=False)  # label value -> class, for 'index'

    def __post_init__(self):
        if self.encoding == 'index':
            self.lookup = np.full(256, -1, np.int16)
            for index, values in enumerate(self.values or [(i,) for i in range(len(self.names))]):
                self.lookup[list(values)] = index
            self.lookup[list(self.void_values)] = VOID

    @property
    def num_classes(self):
        return len(self.names)

    def decode(self, label, path):
        """A label image to a uint8 class map (VOID for void); values outside the set are a
        UserError naming the file and the value."""
        if self.encoding == 'index':
            if label.ndim == 3:
                raise UserError(f'{path}: colour label, but {self.source} says labels are '
                                f'class numbers (single channel)')
            classes = self.lookup[label]
            bad = classes < 0
            if bad.any():
                y, x = np.argwhere(bad)[0]
                raise UserError(f'{path}: label value {int(label[y, x])} at row {y}, '
                                f'column {x} is neither a class nor void in {self.source}')
            return classes.astype(np.uint8)
        if label.ndim != 3 or label.shape[2] != 3:
            raise UserError(f'{path}: expected an RGB colour label ({self.source})')
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
            raise UserError(f'{path}: colour {tuple(int(c) for c in label[y, x])} at row '
                            f'{y}, column {x} ({int((~found).sum())} pixels) is not in '
                            f'{self.source}')
        return values[order][position]

    def remapped(self, spec):
        """A two-or-more-class set from `NAME=I[+I..][,NAME=..]`: the named groups of classes
        become classes 1.., everything else class 0 ('other'); void stays void."""
        groups, owner = [], {}
        for part in spec.split(','):
            name, _, members = part.partition('=')
            try:
                indexes = [int(v) for v in members.split('+')]
            except ValueError:
                raise UserError(f'--remap {spec!r}: {part!r} is not NAME=INDEX[+INDEX..]') \
                    from None
            wrong = [i for i in indexes if not 0 <= i < self.num_classes]
            if not name.strip() or wrong:
                raise UserError(f'--remap {spec!r}: {part!r} names no class of '
                                f'{self.source} (0..{self.num_classes - 1})')
            if name.strip() in ['other'] + [group for group, _ in groups]:
                raise UserError(f'--remap {spec!r}: the name {name.strip()!r} is given twice '
                                f'(class 0 is "other"); give each group its own name')
            twice = [i for i in indexes if owner.setdefault(i, len(groups)) != len(groups)]
            if twice:
                raise UserError(f'--remap {spec!r}: class {twice[0]} is in two groups; put it '
                                f'in one')
            groups.append((name.strip(), indexes))
        if len(groups) >= VOID:
            raise UserError(f'--remap {spec!r}: {len(groups)} groups; give at most {VOID - 1} '
                            f'groups (with "other", {VOID} classes; {VOID} is void)')
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
        spec = json.loads(files.read_limited(path, files.MAX_JSON_BYTES, 'class file'))
        if not isinstance(spec, dict) or not isinstance(spec.get('void', {}), dict):
            raise ValueError('a class file is a JSON object, and its "void" one too')
        names = [c['name'] for c in spec['classes']]
        colors = [tuple(c['color']) for c in spec['classes']]
        encoding = spec.get('encoding', 'color')
        void = spec.get('void', {})
        if encoding not in ('color', 'index'):
            raise ValueError('encoding must be "color" or "index"')
        void_color = tuple(void['color']) if 'color' in void else None
        values = [c['values'] for c in spec['classes']] if any(
            'values' in c for c in spec['classes']) else None
        if values is not None:  # a class that gives none takes its index
            values = [c.get('values', [i]) for i, c in enumerate(spec['classes'])]
        void_values = void['values'] if 'values' in void else \
            [void['value']] if 'value' in void else []
        if 'value' in void and 'values' in void:
            raise ValueError('void has "value" or "values", not both')
        check_classes(names, colors, void_color, void_values, encoding, values)
        return ClassSet(names, colors, encoding, void_color=void_color,
                        void_values=tuple(void_values), source=path,
                        values=values and tuple(tuple(v) for v in values))
    except FileNotFoundError:
        raise UserError(f'{path}: class file not found') from None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise UserError(f'{path}: cannot parse the class file ({type(e).__name__}: {e})') \
            from None


def check_classes(names, colors, void_color=None, void_values=(), encoding='color',
                  values=None):
    """Raise ValueError unless there are 1 to 255 classes (class maps are uint8, VOID is 255),
    the names are distinct text, every colour is three whole numbers from 0 to 255 and, for
    colour labels, no two classes (nor a class and void) share one; for index labels, each
    class's label `values` (default: its index) and the `void_values` are label values
    (0..255), each of one class or of void only."""
    if not 1 <= len(names) <= VOID:
        raise ValueError(f'a class file needs at least one class and at most {VOID} classes, '
                         f'not {len(names)}')
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError('every class needs a name')
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f'the class name {repeated[0]!r} is given twice')
    every = list(colors) + ([void_color] if void_color is not None else [])
    for color in every:
        if len(color) != 3 or not all(_byte(v) for v in color):
            raise ValueError(f'colour {list(color)} is not three values from 0 to 255')
    shared = [c for i, c in enumerate(every) if c in every[:i]]
    if encoding == 'color' and shared:
        raise ValueError(f'colour {list(shared[0])} is given twice; a colour label needs one '
                         f'colour per class and another for void')
    if encoding == 'color' and values is not None:
        raise ValueError('a class\'s "values" are for index labels ("encoding": "index")')
    owner = {}
    for what, taken in [*((f'class {name!r}', v) for name, v in
                          zip(names, values or [[i] for i in range(len(names))])),
                        ('void', void_values)]:
        if not isinstance(taken, (list, tuple)) or (what != 'void' and not taken) or \
                not all(_byte(v) for v in taken):
            raise ValueError(f'the label values of {what}, {json.dumps(taken)[:40]}, must be '
                             f'a list of values from 0 to 255')
        for value in taken:
            if owner.setdefault(value, what) != what:
                raise ValueError(f'the label value {value} is both {owner[value]} and {what}; '
                                 f'give each value to one class or to void')


def _byte(value):
    """Whether a JSON value is a whole number from 0 to 255 (true and false are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def read_label_colors(path):
    """CamVid's label_colors.txt (`R G B<tab>Name` per line) as a colour ClassSet; its `Void`
    entry is the void colour."""
    names, colors, void = [], [], None
    try:
        text = files.read_limited(path, files.MAX_TEXT_BYTES, 'class file').decode('utf-8')
        for number, line in enumerate(io.StringIO(text, newline=None), 1):  # as open() splits
            if not line.strip():
                continue
            match = re.fullmatch(r'\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S.*?)\s*', line)
            if not match:
                raise UserError(f'{path}: line {number} is not "R G B Name"')
            rgb, name = tuple(int(v) for v in match.groups()[:3]), match.group(4)
            if max(rgb) > 255:
                raise UserError(f'{path}: line {number} has a colour value above 255')
            if name.lower() == 'void' and void:
                raise UserError(f'{path}: line {number} is a second Void; keep one')
            if name.lower() == 'void':
                void = rgb
            else:
                names.append(name)
                colors.append(rgb)
        check_classes(names, colors, void)
    except (OSError, ValueError) as e:  # ValueError: not UTF-8 text, or check_classes
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f'{path}: cannot read the classes ({reason})') from None
    return ClassSet(names, colors, 'color', void_color=void, source=path)


def read_label(classes, path):
    """A label file as a uint8 class map of `classes`, VOID for void."""
    return classes.decode(read_label_image(path, classes.encoding == 'color'), path)


def builtin(name):
    """The class file roadseg/configs/classes/`name`.json (kitti_road, camvid11)."""
    return load_class_file(os.path.join(CLASS_DIR, name + '.json'))
