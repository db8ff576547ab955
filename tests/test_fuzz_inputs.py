"""Nothing a parameter file or a flag sends can crash: property-based tests (Hypothesis) of every
parser of outside input - class files, CamVid's label_colors.txt, --remap, config files, KITTI
calibration, --augment, --group-by, and the size and crop flags.

The property of each: the right answer, or a clean refusal - a UserError (argparse's
ArgumentTypeError for the argparse types, which argparse turns into one line) whose message is
one line naming the file or flag - never another exception. Each crash the properties found has
an example-based regression test beside its property. The `ci` profile (tests/conftest.py) keeps
the examples few and the same every run; `--hypothesis-profile long` hunts.
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import tempfile

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import main
from roadseg import bev, cli, files, inference, settings
from roadseg.commands import evaluate, export, plot, predict
from roadseg.data import classes as class_files
from roadseg.data import groups, kitti_names, layouts, transforms
from roadseg.errors import UserError
from roadseg.training import config, inputs, options
from tests.test_bev import calib_text


def assert_refusal(error, *names):
    """A clean refusal: one line, naming one of `names` (the file or the flag)."""
    message = str(error)
    assert len(message.splitlines()) == 1, message
    assert any(str(name) in message for name in names), (message, names)


@contextlib.contextmanager
def temporary_file(content, name='input.json'):
    """A file holding `content` (text, or bytes as they are), removed afterwards: Hypothesis runs
    a test many times, so the function-scoped tmp_path fixture does not fit."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, name)
        with open(path, 'wb') as f:
            f.write(content if isinstance(content, bytes) else content.encode('utf-8',
                                                                              'surrogatepass'))
        yield path


# JSON values of every type, NaN and the infinities included (Python's json reads and writes
# them), and text with every kind of character.
json_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
odd_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324,
                               1e-12, 1e12])


# ----------------------------------------------------------------------------------------------
# Class files
# ----------------------------------------------------------------------------------------------

def is_byte(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def is_colour(value):
    return isinstance(value, list) and len(value) == 3 and all(map(is_byte, value))


label_values = st.one_of(st.lists(st.integers(0, 12), max_size=3),
                         st.lists(st.integers(-1, 300) | json_scalars, max_size=3), json_values)
colour_values = st.one_of(st.lists(st.integers(0, 255), min_size=3, max_size=3),
                          st.lists(st.integers(-1, 256) | st.booleans() | st.floats() |
                                   st.text(max_size=2), max_size=4),
                          json_values)


@st.composite
def class_specs(draw):
    """A class file's JSON, mostly near-valid: each part right or wrong."""
    count = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(['road', 'sky', 'car', '', 'Road']) |
                          st.text(max_size=6) | json_scalars, min_size=count, max_size=count))
    entries = []
    for name in names:
        entry = {'name': name, 'color': draw(colour_values)}
        if draw(st.booleans()):  # the label values an index class takes (Cityscapes' ids)
            entry['values'] = draw(label_values)
        for key in draw(st.sets(st.sampled_from(['name', 'color']), max_size=1)):
            del entry[key]
        entries.append(entry)
    spec = {'classes': entries}
    encoding = draw(st.sampled_from(['color', 'index', None, 'rgb', 3]))
    if encoding is not None:
        spec['encoding'] = encoding
    void = draw(st.none() | st.fixed_dictionaries({'color': colour_values}) |
                st.fixed_dictionaries({'value': st.integers(-1, 300) | json_scalars}) |
                st.fixed_dictionaries({'values': label_values}) |
                json_values)
    if void is not None:
        spec['void'] = void
    return spec


def valid_class_spec(spec):
    """What load_class_file should make of `spec`, or None where it should refuse it."""
    entries, encoding = spec['classes'], spec.get('encoding', 'color')
    void = spec.get('void', {})
    if encoding not in ('color', 'index') or not 1 <= len(entries) <= 255 or \
            not isinstance(void, dict) or not all('name' in e and 'color' in e for e in entries):
        return None
    names, colours = [e['name'] for e in entries], [e['color'] for e in entries]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) < len(names):
        return None
    if not all(map(is_colour, colours)) or ('color' in void and not is_colour(void['color'])):
        return None
    if 'value' in void and 'values' in void:
        return None
    void_values = void['values'] if 'values' in void else [void['value']] if 'value' in void \
        else []
    given = [e['values'] for e in entries if 'values' in e]
    if given and encoding == 'color':
        return None
    taken = [e.get('values', [i]) for i, e in enumerate(entries)] + [void_values]
    if not all(isinstance(t, list) and all(is_byte(v) for v in t) for t in taken) or \
            not all(taken[:-1]):
        return None
    owners = [{*t} for t in taken]
    if sum(map(len, owners)) > len(set().union(*owners)):  # a value of two classes, or void
        return None
    if encoding == 'color':  # every colour decodes to one class
        used = [tuple(c) for c in colours] + ([tuple(void['color'])] if 'color' in void else [])
        if len(set(used)) < len(used):
            return None
    return names, [tuple(c) for c in colours], encoding, void, taken if given else None


@given(class_specs())
@example({'classes': [{'name': 'road', 'color': [1, 2, 3]}], 'void': []})  # was AttributeError
@example({'classes': [{'name': 'a', 'color': [1, 2, 3]}, {'name': 'b', 'color': [1, 2, 3]}]})
@example({'classes': [{'name': 'a', 'color': [True, 2, 3]}]})
def test_class_files_give_their_classes_or_one_line(spec):
    with temporary_file(json.dumps(spec), 'classes.json') as path:
        wanted = valid_class_spec(spec)
        if wanted is None:
            with pytest.raises(UserError) as refused:
                class_files.load_class_file(path)
            assert_refusal(refused.value, path)
            return
        loaded = class_files.load_class_file(path)
    names, colours, encoding, void, taken = wanted
    assert (loaded.names, loaded.colors, loaded.encoding) == (names, colours, encoding)
    assert loaded.void_color == (tuple(void['color']) if 'color' in void else None)
    assert list(loaded.void_values) == void.get('values', [void['value']] if 'value' in void
                                                else [])
    if encoding == 'index':  # every label value decodes to its class, or to void
        for index, values in enumerate(taken or [[i] for i in range(len(names))]):
            assert all(loaded.lookup[v] == index for v in values)
        assert all(loaded.lookup[v] == class_files.VOID for v in loaded.void_values)


@given(st.one_of(json_values.map(json.dumps), st.text(), st.binary()))
def test_any_file_as_a_class_file_is_classes_or_one_line(content):
    with temporary_file(content, 'classes.json') as path:
        try:
            loaded = class_files.load_class_file(path)
        except UserError as e:
            assert_refusal(e, path)
            return
    assert 1 <= loaded.num_classes <= 255


@pytest.mark.parametrize('text, message', [
    ('{"classes": [{"name": "road", "color": [1, 2, 3]}], "void": []}', 'void'),
    ('[' * 100000, 'recursion'),
    ('{"classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [1, 2, 3]}]}',
     r'colour \[1, 2, 3\] is given twice'),
    ('{"classes": [{"name": "a", "color": [1, 2, 3]}], "void": {"color": [1, 2, 3]}}',
     r'colour \[1, 2, 3\] is given twice'),
    ('{"classes": [{"name": "a", "color": [true, 2, 3]}]}', 'is not three values'),
    (json.dumps({'encoding': 'index', 'classes': [{'name': str(i), 'color': [0, 0, 0]}
                                                  for i in range(256)]}), 'at most 255 classes'),
], ids=['void not an object', 'nested too deeply', 'a colour twice', 'void colour of a class',
        'true as a colour value', '256 classes'])
def test_class_files_that_crashed_or_were_misread(text, message):
    with temporary_file(text, 'classes.json') as path:
        with pytest.raises(UserError, match=message) as refused:
            class_files.load_class_file(path)
        assert_refusal(refused.value, path)


def test_index_class_files_may_repeat_a_display_colour():
    """With class-number labels the colours only draw the classes: two may share one."""
    spec = {'encoding': 'index', 'classes': [{'name': 'a', 'color': [1, 2, 3]},
                                             {'name': 'b', 'color': [1, 2, 3]}]}
    with temporary_file(json.dumps(spec)) as path:
        assert class_files.load_class_file(path).names == ['a', 'b']


# --remap
REMAP_BASES = {'camvid11': class_files.builtin('camvid11'),
               'kitti_road': class_files.builtin('kitti_road')}


@st.composite
def remap_specs(draw):
    """NAME=I[+I..][,..] text from its parts, with the groups it means (None: it should be
    refused)."""
    base = REMAP_BASES[draw(st.sampled_from(sorted(REMAP_BASES)))]
    parts, groups_meant = [], []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(['road', 'car', 'other', ' sign ', '']) |
                    st.text(st.characters(blacklist_characters=',=+'), max_size=5))
        indexes = draw(st.lists(st.integers(-1, base.num_classes), min_size=1, max_size=3))
        parts.append(f'{name}=' + '+'.join(draw(st.sampled_from(['{}', ' {} '])).format(i)
                                          for i in indexes))
        groups_meant.append((name.strip(), indexes))
    return base, ','.join(parts), groups_meant


def valid_remap(base, groups_meant):
    names = ['other'] + [name for name, _ in groups_meant]
    owner = {}
    for group, (name, indexes) in enumerate(groups_meant):
        if not name or not all(0 <= i < base.num_classes for i in indexes):
            return False
        if any(owner.setdefault(i, group) != group for i in indexes):
            return False  # a class in two groups
    return len(set(names)) == len(names)


@given(remap_specs())
@example((REMAP_BASES['camvid11'], 'a=3,a=4', [('a', [3]), ('a', [4])]))
@example((REMAP_BASES['camvid11'], 'a=3,b=3', [('a', [3]), ('b', [3])]))
def test_remap_gives_its_groups_or_one_line(case):
    base, spec, groups_meant = case
    if not valid_remap(base, groups_meant):
        with pytest.raises(UserError) as refused:
            base.remapped(spec)
        assert_refusal(refused.value, '--remap')
        return
    remapped = base.remapped(spec)
    assert remapped.names == ['other'] + [name for name, _ in groups_meant]
    for new, (_, indexes) in enumerate(groups_meant, 1):
        assert remapped.colors[new] == base.colors[indexes[0]]
        assert all(remapped.mapping[i] == new for i in indexes)
    grouped = {i for _, indexes in groups_meant for i in indexes}
    assert all(remapped.mapping[i] == 0 for i in range(base.num_classes) if i not in grouped)
    assert remapped.mapping[class_files.VOID] == class_files.VOID


@given(st.text(max_size=30))
def test_any_remap_text_is_classes_or_one_line(spec):
    base = REMAP_BASES['camvid11']
    try:
        remapped = base.remapped(spec)
    except UserError as e:
        assert_refusal(e, '--remap')
        return
    assert 2 <= remapped.num_classes <= base.num_classes + 1
    assert len(set(remapped.names)) == remapped.num_classes


def test_remap_of_many_groups_is_one_line():
    """256 groups crashed (OverflowError: 256 does not fit the uint8 mapping), and 255 would
    have made group 255 void."""
    with pytest.raises(UserError, match=r'--remap .*class 0 is in two groups'):
        REMAP_BASES['camvid11'].remapped(','.join(f'g{i}=0' for i in range(256)))
    many = class_files.ClassSet([str(i) for i in range(255)], [(0, 0, i) for i in range(255)])
    with pytest.raises(UserError, match=r'--remap .*255 groups; give at most 254 groups'):
        many.remapped(','.join(f'g{i}={i}' for i in range(255)))
    assert many.remapped(','.join(f'g{i}={i}' for i in range(254))).num_classes == 255


# CamVid's label_colors.txt
@st.composite
def label_colour_files(draw):
    """label_colors.txt text from its lines, and the (names, colours, void) it means (None:
    refused)."""
    lines, names, colours, void, valid = [], [], [], None, True
    for _ in range(draw(st.integers(0, 5))):
        rgb = draw(st.lists(st.integers(0, 255) | st.integers(-1, 300), min_size=3, max_size=3))
        name = draw(st.sampled_from(['Road', 'Sky', 'Void', 'void', 'Car Park']) |
                    st.text(st.characters(blacklist_characters=cli.LINE_BREAKS), max_size=6))
        separator = draw(st.sampled_from(['\t', ' ', '  \t']))
        lines.append(' '.join(map(str, rgb)) + separator + name)
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(['', '   '])))
        if any(v < 0 for v in rgb) or not name.strip():
            valid = False  # not "R G B Name"
        elif any(v > 255 for v in rgb) or name.strip().lower() == 'void' and void:
            valid = False  # a value above 255, a second Void
        elif name.strip().lower() == 'void':
            void = tuple(rgb)
        else:
            names.append(name.strip())
            colours.append(tuple(rgb))
    used = colours + ([void] if void else [])
    if not names or len(set(names)) < len(names) or len(set(used)) < len(used):
        valid = False
    return '\n'.join(lines) + '\n', (names, colours, void) if valid else None


@given(label_colour_files())
@example(('300 0 0\tRoad\n', None))  # was accepted as the colour (300, 0, 0)
@example(('0 0 0\tVoid\n', None))  # was a set of no classes
@example(('0 0 1\tRoad\n0 0 256\tVoid\n0 0 0\tVoid\n', None))  # the second Void hid the first
def test_label_colors_give_their_classes_or_one_line(case):
    text, wanted = case
    with temporary_file(text, 'label_colors.txt') as path:
        if wanted is None:
            with pytest.raises(UserError) as refused:
                class_files.read_label_colors(path)
            assert_refusal(refused.value, path)
            return
        loaded = class_files.read_label_colors(path)
    assert (loaded.names, loaded.colors, loaded.void_color) == wanted


@given(st.text() | st.binary())
@example(b'\xff\xfe 1 2 3\tRoad\n')  # was UnicodeDecodeError
def test_any_file_as_label_colors_is_classes_or_one_line(content):
    with temporary_file(content, 'label_colors.txt') as path:
        try:
            loaded = class_files.read_label_colors(path)
        except UserError as e:
            assert_refusal(e, path)
            return
    assert loaded.num_classes >= 1 and all(map(is_colour, map(list, loaded.colors)))


# ----------------------------------------------------------------------------------------------
# Config files
# ----------------------------------------------------------------------------------------------

INTS = {'epochs', 'batch_size', 'plain_epochs', 'depth', 'seed', 'val_every', 'tb_images_every'}
FLOATS = {'learning_rate', 'keep_prob', 'weight_decay', 'alpha', 'ema_decay', 'val_fraction',
          'step_timeout', 'aux_loss'}
BOOLS = {'val_bev', 'xla', 'all_labelled'}
SHAPES = {'image_shape', 'train_crop'}
PATHS = {'data_dir', 'runs_dir', 'classes', 'resume', 'config', 'encoder_weights', 'group_by',
         'crossval'}
TEXTS = {'dataset', 'label', 'cache', 'class_weights', 'encoder', 'decoder', 'lr_schedule',
         'input_norm', 'distribute', 'precision', 'remap', 'augment', 'val_groups'} | PATHS
OPTIONS = sorted(INTS | FLOATS | BOOLS | SHAPES | TEXTS)
NEAR = {  # a value of the right kind for each option, often a valid one
    'dataset': st.sampled_from(sorted(layouts.READERS)),
    'label': st.sampled_from(['road', 'lane']),
    'class_weights': st.sampled_from(['none', 'median']),
    'cache': st.sampled_from(['auto', 'memory', 'none', 'disk']),
    'encoder': st.sampled_from(['vgg16', 'mobilenetv2', 'tiramisu']),
    'decoder': st.sampled_from(['fcn8s', 'fcn4s', 'dilated', 'fpn', 'tiramisu']),
    'lr_schedule': st.sampled_from(['constant', 'poly']),
    'input_norm': st.sampled_from(['fixed', 'image']),
    'distribute': st.sampled_from(['auto', 'none', 'mirrored']),
    'precision': st.sampled_from(['float32', 'bfloat16']),
    'encoder_weights': st.sampled_from(['udacity', 'none', 'keras-h5:missing.h5']),
    'image_shape': st.sampled_from(['64x64', '160x576', '100x64', '0x32', 'x']),
    'train_crop': st.sampled_from(['none', '32x32', '64x96', '1x1']),
    'augment': st.sampled_from(['flip=0.5', 'none,flip=0.5', 'zoom=1', 'flip=2', '']),
    'group_by': st.sampled_from([r'^([^_]+)_', '(', 'missing.json', '[', '*', '(?P<']),
    'classes': st.sampled_from([os.path.join(class_files.CLASS_DIR, 'camvid11.json'),
                                'missing.json']),
    'depth': st.sampled_from([56, 67, 103, 50]),
    'crossval': st.sampled_from(['missing.json', 'crossval.json']),
}
safe_text = st.text(st.characters(blacklist_characters=cli.LINE_BREAKS), max_size=12)


def option_values(name):
    """Any JSON value, or one of the option's kind (paths: without line breaks, which a message
    naming the path would show as they are; main_guard prints them escaped)."""
    if name in NEAR:
        kind = NEAR[name]
    elif name in INTS:
        kind = st.integers(-2, 5) | st.integers()
    elif name in FLOATS:
        kind = st.floats(-1, 2) | odd_numbers | st.integers(-1, 2)
    elif name in BOOLS:
        kind = st.booleans()
    else:
        kind = st.text(max_size=12)
    if name in PATHS:
        anything = st.recursive(json_scalars.filter(lambda v: not isinstance(v, str)) | safe_text,
                                lambda inner: st.lists(inner, max_size=3), max_leaves=5)
    else:
        anything = json_values
    return kind | anything


OPTIONS_OF = options.parse_args  # main.py's options: the defaults, a --config file, the flags
config_files = st.lists(st.sampled_from(OPTIONS), unique=True, max_size=8).flatmap(
    lambda names: st.fixed_dictionaries({name: option_values(name) for name in names}))


def test_the_fuzzed_options_are_every_option():
    assert set(OPTIONS) == set(config.option_fields()) | {'config', 'resume'}


def check_option_types(run_config):
    """Every option of a RunConfig has its option's type."""
    fields, values = config.option_fields(), run_config.values()
    for name in OPTIONS:
        if name not in values or settings.optional(fields[name]) and values[name] is None:
            continue
        value = values[name]
        if name in INTS:
            assert isinstance(value, int) and not isinstance(value, bool), (name, value)
        elif name in FLOATS:
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
        elif name in BOOLS:
            assert isinstance(value, bool), (name, value)
        elif name in SHAPES:
            assert isinstance(value, tuple) and len(value) == 2 and all(
                isinstance(v, int) and v > 0 and v % 32 == 0 for v in value), (name, value)
        else:
            assert isinstance(value, str), (name, value)
    assert math.isfinite(values['alpha']) and values['alpha'] > 0 and values['seed'] >= 0


@given(config_files)
@example({'alpha': math.nan})  # was accepted, then crashed building MobileNetV2
@example({'seed': -1})  # was accepted, then crashed splitting the data
@example({'group_by': '('})  # was accepted without --val-groups
@example({'crossval': 'missing.json'})  # read relative to the config file
def test_config_files_give_typed_options_or_one_line(options):
    with temporary_file(json.dumps(options), 'options.json') as path:
        try:
            run_config = OPTIONS_OF(['--config', path])
        except UserError as e:  # naming the file, the flag, or the file the option names
            given = {**config.RunConfig.from_values({}).to_json(), **options}  # defaults too
            assert_refusal(e, path, '--', *[v for v in given.values() if isinstance(v, str)])
            return
        crossval = options.get('crossval')
        if isinstance(crossval, str) and crossval and not os.path.isabs(crossval):
            # a relative record is read beside the file
            assert run_config.run.crossval == os.path.normpath(
                os.path.join(os.path.dirname(path), crossval))
    check_option_types(run_config)


@given(st.one_of(json_values.map(json.dumps), st.text(), st.binary()))
def test_any_file_as_a_config_file_is_options_or_one_line(content):
    with temporary_file(content, 'options.json') as path:
        try:
            run_config = OPTIONS_OF(['--config', path])
        except UserError as e:
            assert_refusal(e, path)
            return
    check_option_types(run_config)


@pytest.mark.parametrize('argv, message', [
    (['--group-by', '('], r"--group-by '\(': not a regular expression"),
    (['--group-by', '['], r'--group-by'),
    (['--group-by', 'no/such/groups.json'], r'groups.json: cannot read it'),
    (['--augment', 'zoom=0.2'], r"--augment: unknown option 'zoom'"),
    (['--augment', 'flip=2'], r'--augment: flip=.*2.* must be a number from 0 to 1'),
    (['--classes', 'no/such/classes.json'], r'classes.json: class file not found'),
    (['--seed', '-1'], r'--seed: -1 must be a whole number from 0 up'),
    (['--val-fraction', '1.5'], r'--val-fraction 1.5: must be at least 0 and below 1'),
    (['--val-fraction', 'nan'], r'--val-fraction nan: must be at least 0 and below 1'),
    (['--alpha', 'nan'], r'--alpha: nan must be a number above 0'),
    (['--alpha', 'inf'], r'--alpha: inf must be a number above 0'),
])
def test_parse_time_checks_without_val_groups(argv, message):
    """--group-by, --augment and --classes are checked when the options are read, not when (or
    only if) the run gets to them: '--group-by (' without --val-groups used to train and record
    the pattern in config.json."""
    with pytest.raises(UserError, match=message) as refused:
        OPTIONS_OF(argv)
    assert_refusal(refused.value, '--', '.json')


def test_parse_time_checks_pass_good_values(tmp_path):
    table = tmp_path / 'groups.json'
    table.write_text('{"a": "north"}')
    data = OPTIONS_OF(['--group-by', str(table), '--augment', 'none,flip=0.5',
                       '--classes', 'roadseg/configs/classes/kitti_road.json']).data
    assert (data.group_by, data.augment) == (str(table), 'none,flip=0.5')
    table.write_text('["a"]')
    with pytest.raises(UserError, match='groups.json: a groups file holds one JSON object'):
        OPTIONS_OF(['--group-by', str(table)])


# ----------------------------------------------------------------------------------------------
# KITTI calibration
# ----------------------------------------------------------------------------------------------

CALIB_SIZES = {'P2': 12, 'R0_rect': 9, 'Tr_velo_to_cam': 12, 'Tr_cam_to_road': 12}
calib_numbers = st.floats() | odd_numbers | st.sampled_from([0.0, 1.0, -1.0, 1.6, 700.0])


@st.composite
def calibration_texts(draw):
    """KITTI calib text of the four matrices (each may be missing or miscounted), its numbers
    anything; and whether it should be read (all three the warp needs, counted right, finite)."""
    base = bev.read_calibration_text(calib_text())
    lines, readable = [], True
    for name in draw(st.permutations(sorted(CALIB_SIZES))):
        present = draw(st.integers(0, 9)) > 0
        size = CALIB_SIZES[name] + (draw(st.sampled_from([-1, 1])) if draw(st.integers(0, 9)) == 0
                                    else 0)
        numbers = base[name].ravel().tolist() if name in base else [0.0] * CALIB_SIZES[name]
        numbers = (numbers + [0.0])[:size]
        for i in draw(st.sets(st.integers(0, size - 1), max_size=size)):
            numbers[i] = draw(calib_numbers)
        if present:
            form = draw(st.sampled_from(['{!r}', '{:.12e}', '{:g}']))
            lines.append(f'{name}: ' + ' '.join(form.format(v) for v in numbers))
            if name in bev.MATRICES:
                readable &= size == CALIB_SIZES[name] and all(map(math.isfinite, numbers))
        else:
            readable &= name not in bev.MATRICES
    return '\n'.join(lines) + '\n', readable


def check_homography(calibration, path):
    """road_homography's answer: a finite, invertible 3x3 matrix, or a one-line refusal."""
    try:
        homography = bev.road_homography(calibration, path)
    except UserError as e:
        assert_refusal(e, path)
        return
    assert homography.shape == (3, 3) and np.isfinite(homography).all()
    assert np.isfinite(np.linalg.inv(homography)).all()


@given(calibration_texts())
@example((calib_text().replace('P2: 700.0', 'P2: nan'), False))  # was read, NaN and all
@example((calib_text().replace('P2: 700.0', 'P2: inf'), False))
def test_calibration_gives_its_matrices_or_one_line(case):
    text, readable = case
    path = 'calib/um_000000.txt'
    if not readable:
        with pytest.raises(UserError) as refused:
            bev.read_calibration_text(text, path)
        assert_refusal(refused.value, path)
        return
    calibration = bev.read_calibration_text(text, path)
    assert {k: v.shape for k, v in calibration.items()} == bev.MATRICES
    assert all(np.isfinite(v).all() for v in calibration.values())
    check_homography(calibration, path)


@given(st.text())
def test_any_text_as_calibration_is_matrices_or_one_line(text):
    path = 'calib/um_000000.txt'
    try:
        calibration = bev.read_calibration_text(text, path)
    except UserError as e:
        assert_refusal(e, path)
        return
    check_homography(calibration, path)


@pytest.mark.parametrize('p2', ['0 0 0 0 0 0 0 0 0 0 0 0',  # a zero homography was returned
                                '1e308 0 620 0 0 1e308 180 0 0 0 1 0',  # products overflow
                                '1e-320 0 620 0 0 1e-320 180 0 0 0 1 0'])
def test_degenerate_calibration_is_refused_in_one_line(p2):
    calibration = bev.read_calibration_text(re.sub(r'P2: .*', 'P2: ' + p2, calib_text()))
    with pytest.raises(UserError, match=r'calib.txt: .*singular') as refused:
        bev.road_homography(calibration, 'calib.txt')
    assert_refusal(refused.value, 'calib.txt')


# ----------------------------------------------------------------------------------------------
# --augment
# ----------------------------------------------------------------------------------------------

augment_values = st.one_of(st.floats(-0.5, 50).map(str), odd_numbers.map(str),
                           st.sampled_from(['', 'yes', ' 0.5 ', '1e-1', '0.5.5', '0_5']),
                           st.text(st.characters(blacklist_characters=','), max_size=4))


@st.composite
def augment_texts(draw):
    """'key=value,..' text, maybe after `none`, and the options it means (None: refused)."""
    items, meant, valid = [], {}, True
    if draw(st.booleans()):
        items.append(draw(st.sampled_from(['none', ' none '])))
        meant = dict(transforms.OFF)
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(sorted(transforms.DEFAULTS)) |
                   st.sampled_from(['zoom', 'Flip', '', 'none']))
        # now and then a key without a value ('' would be no item; `none` first, all off)
        if draw(st.integers(0, 9)) == 0 and key not in ('', 'none'):
            items.append(key)
            valid = False
            continue
        value = draw(augment_values)
        items.append(draw(st.sampled_from(['{}={}', ' {} = {} '])).format(key, value))
        if key not in transforms.DEFAULTS:
            valid = False
        else:
            meant[key] = value
    for key, value in meant.items():
        try:
            number = float(value)
        except ValueError:
            valid = False
            continue
        low, high = transforms.LIMITS[key]
        valid &= low <= number <= high
        meant[key] = number
    return ','.join(items), meant if valid else None


@given(augment_texts())
@example(('flip=0.\n5', None))  # the value was shown as it is, across two lines
def test_augment_gives_options_within_limits_or_one_line(case):
    text, meant = case
    if meant is None:
        with pytest.raises(UserError) as refused:
            transforms.parse_options(text)
        assert_refusal(refused.value, '--augment')
        return
    assert transforms.parse_options(text) == meant


@given(st.text(max_size=40))
def test_any_augment_text_is_options_within_limits_or_one_line(text):
    try:
        parsed = transforms.parse_options(text)
    except UserError as e:
        assert_refusal(e, '--augment')
        return
    for key, value in parsed.items():
        low, high = transforms.LIMITS[key]
        assert isinstance(value, float) and low <= value <= high


# ----------------------------------------------------------------------------------------------
# --group-by
# ----------------------------------------------------------------------------------------------

regex_text = st.lists(st.sampled_from(list('()[]{}*+?|^$\\.-:<>=!P_aZ09 ') +
                                      ['(?P<', '(?', '\\d', '\\1']),
                      max_size=8).map(''.join) | st.text(max_size=10)
# image file names, which messages show as they are (main_guard escapes their line breaks)
file_names = safe_text.map(lambda stem: f'images/{stem}.png') | \
    st.sampled_from(['0016E5_07959.png', 'um_000012.png', 'a/b/c.jpg', '.png', '', '_'])


def check_group(group_of, name, *refusal_names):
    """`group_of(name)` is a group (non-empty text) or a one-line refusal."""
    try:
        group = group_of(name)
    except UserError as e:
        assert_refusal(e, *refusal_names)
        return
    assert isinstance(group, str) and group


@given(regex_text, st.lists(file_names, max_size=3))
@example('(a)?b', ['b.png'])  # the group did not take part: None, which crashed sorting groups
@example('x*', ['b.png'])  # an empty group
def test_group_by_regex_groups_names_or_one_line(pattern, names):
    try:
        group_of = groups.grouper('folder', pattern)
    except UserError as e:
        assert_refusal(e, '--group-by', '--val-groups')
        return
    for name in names:
        check_group(group_of, name, '--group-by')


@pytest.mark.parametrize('pattern', ['(', '[', '*', '\\', '(?P<', 'a{2,1}', '(?P<1>x)', '\\9'])
def test_broken_group_by_regexes_are_one_line(pattern):
    with pytest.raises(UserError, match='--group-by') as refused:
        groups.grouper('folder', pattern)
    assert_refusal(refused.value, '--group-by')


@pytest.mark.parametrize('pattern, name', [('(a)?b', 'b.png'), ('x*', 'b.png')])
def test_a_group_by_that_gives_no_group_text_is_one_line(pattern, name):
    """'(a)?b' gave the group None, which then crashed sorting the groups (TypeError)."""
    with pytest.raises(UserError, match=r'b.png: .*--group-by') as refused:
        groups.grouper('folder', pattern)(name)
    assert_refusal(refused.value, '--group-by')
    pairs = [('x/ab.png', None), ('x/b.png', None)]
    with pytest.raises(UserError):
        groups.count(pairs, groups.grouper('folder', pattern))


@given(st.one_of(json_values.map(json.dumps), st.text(), st.binary(),
                 st.dictionaries(st.text(max_size=6), st.text(max_size=6) | json_scalars,
                                 max_size=4).map(json.dumps)),
       st.lists(file_names, max_size=3))
def test_a_groups_file_groups_names_or_one_line(content, names):
    with temporary_file(content, 'groups.json') as path:
        try:
            group_of = groups.grouper('folder', path)
        except UserError as e:
            assert_refusal(e, path)
            return
    for name in names:
        check_group(group_of, name, path)


@given(st.sampled_from(['folder', 'camvid', 'camvid32', 'kitti']), file_names)
def test_the_data_sets_own_groups_or_one_line(dataset, name):
    try:
        group_of = groups.grouper(dataset)
    except UserError as e:
        assert_refusal(e, '--group-by')
        return
    check_group(group_of, name, '--group-by', name)


# ----------------------------------------------------------------------------------------------
# Size and crop flags
# ----------------------------------------------------------------------------------------------

shape_texts = st.one_of(
    st.tuples(st.integers(-64, 2000), st.sampled_from(['x', 'X', ' x ']),
              st.integers(-64, 2000)).map(lambda t: f'{t[0]}{t[1]}{t[2]}'),
    st.text(st.sampled_from(list('0123456789xX, -+_.')), max_size=10), st.text(max_size=10))


@given(shape_texts)
@example('160x576')
def test_image_shape_is_multiples_of_32_or_one_line(text):
    try:
        height, width = cli.image_shape_arg(text)
    except argparse.ArgumentTypeError as e:
        assert_refusal(e, repr(text))
        return
    assert [height, width] == [int(v) for v in text.lower().split('x')]
    assert height > 0 and width > 0 and height % 32 == 0 and width % 32 == 0


@given(st.lists(shape_texts, min_size=1, max_size=3).map(','.join) | st.text(max_size=20))
def test_shapes_are_multiples_of_32_or_one_line(text):
    try:
        shapes = cli.shapes_arg(text, '--shapes')
    except UserError as e:
        assert_refusal(e, '--shapes')
        return
    assert len(shapes) == text.count(',') + 1
    assert all(h > 0 and w > 0 and not h % 32 and not w % 32 for h, w in shapes)


@given(st.tuples(st.integers(-50, 500), st.integers(-500, 500)).map(lambda t: f'{t[0]},{t[1]}') |
       st.text(st.sampled_from(list('0123456789,-+ ')), max_size=8) | st.text(max_size=8))
@example('120,-40')
def test_crop_is_rows_or_one_line(text):
    try:
        top, bottom = cli.crop_arg(text)
    except argparse.ArgumentTypeError as e:
        assert_refusal(e, repr(text))
        return
    assert [top, bottom] == [int(v) for v in text.split(',')]
    assert top >= 0 and (bottom < 0 or bottom > top)


def test_main_guard_shows_a_message_quoting_line_breaks_as_one_line():
    """A path can hold a line break; the error line shows it escaped."""
    def fail():
        raise UserError('a\nb.json: cannot read it\r')
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert cli.main_guard(fail) == 2
    assert stderr.getvalue() == 'error: a\\nb.json: cannot read it\\r\n'


# ----------------------------------------------------------------------------------------------
# Output folders: checked before the work
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be written in: read-only, or for root (whom permission bits do not
    stop) one under a regular file."""
    if os.geteuid() == 0:
        (tmp_path / 'file').write_text('not a folder')
        yield tmp_path / 'file' / 'out'
        return
    folder = tmp_path / 'read-only'
    folder.mkdir()
    folder.chmod(0o500)
    yield folder
    folder.chmod(0o700)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command loads its model, or main.py its data: the output folder is
    checked before that."""
    def work(*args, **kwargs):
        raise AssertionError('the work began before the output folder was checked')
    monkeypatch.setattr(inference, 'load_model', work)
    monkeypatch.setattr(inputs, 'fetch_downloads', work)


@pytest.mark.parametrize('command', ['evaluate', 'evaluate default', 'predict',
                                     'predict submission', 'plot', 'main'])
def test_an_output_folder_that_cannot_be_written_stops_the_command_first(tmp_path, unwritable,
                                                                        no_work, capsys,
                                                                        command):
    out, model = unwritable, tmp_path / 'model.tflite'
    if command == 'evaluate default':  # MODEL-eval-val beside a model file
        model = out / 'model.tflite'
    fn, argv, flag = {
        'evaluate': (evaluate.main, ['--model', model, '--data-dir', tmp_path,
                                     '--output-dir', out], '--output-dir'),
        'evaluate default': (evaluate.main, ['--model', model, '--data-dir', tmp_path],
                             '--output-dir'),
        'predict': (predict.main, ['--model', model, tmp_path, '--output-dir', out],
                    '--output-dir'),
        'predict submission': (predict.main, ['--model', model, tmp_path,
                                              '--kitti-submission', out], '--kitti-submission'),
        'plot': (plot.main, [tmp_path / 'run', '--output', out / 'curve.png'], '--output'),
        'main': (main.run, ['--data-dir', tmp_path, '--runs-dir', out], '--runs-dir'),
    }[command]
    assert cli.main_guard(fn, [str(a) for a in argv]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert re.fullmatch(rf'error: {flag} .*: (Permission denied|Not a directory); check that '
                        rf'the folder exists and is writable and that the disk has space',
                        line), line


def test_export_checks_its_output_folder_before_exporting(tmp_path, unwritable, monkeypatch,
                                                          capsys):
    """export.py finds its default folder from the model, so checks it once the model loaded;
    before the check samples are read or anything is exported."""

    class Model:
        kind, info = 'savedmodel', {}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(inference, 'load_model', lambda path: Model())
    monkeypatch.setattr(inference, 'model_folder', lambda path: path)
    from roadseg import export as exports

    def no_work(*args):
        raise AssertionError('export.py worked before checking its output folder')
    monkeypatch.setattr(exports, 'check_samples', no_work)
    assert cli.main_guard(export.main, ['--model', str(tmp_path / 'model'),
                                        '--output-dir', str(unwritable)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith('error: --output-dir ') and 'check that the folder exists' in line


def test_check_writable_leaves_nothing_behind_and_makes_no_folder(tmp_path):
    files.check_writable(str(tmp_path / 'new' / 'deeper'), '--output-dir')
    files.check_writable(str(tmp_path), '--output-dir')
    assert os.listdir(tmp_path) == []
    (tmp_path / 'file').write_text('')
    with pytest.raises(UserError, match=r'^--out .*file/x: Not a directory; check that'):
        files.check_writable(str(tmp_path / 'file' / 'x'), '--out')


def test_check_writable_names_the_flag_when_the_folder_refuses_a_file(tmp_path, monkeypatch):
    """What a read-only folder gives a user who is not root (the tests may run as root)."""
    def refused(**kwargs):
        raise PermissionError(13, 'Permission denied', kwargs['dir'])
    monkeypatch.setattr(files.tempfile, 'mkstemp', refused)
    with pytest.raises(UserError, match=r'^--output-dir .*out: Permission denied; check that '
                                        r'the folder exists and is writable') as refused_error:
        files.check_writable(str(tmp_path / 'out'), '--output-dir')
    assert_refusal(refused_error.value, '--output-dir')


# ----------------------------------------------------------------------------------------------
# KITTI file names
# ----------------------------------------------------------------------------------------------

@given(st.text(max_size=30) | st.from_regex(r'(um|umm|uu)_((road|lane)_)?\d{6}', fullmatch=True))
def test_any_name_is_a_kitti_name_it_spells_again_or_none(stem):
    parsed = kitti_names.parse(stem)
    if parsed is None:
        assert kitti_names.labelled_name(stem, 'road') is None
        return
    category, label, number = parsed
    assert '_'.join(part for part in parsed if part) == stem
    named = kitti_names.labelled_name(stem, 'road')
    assert named == (f'{category}_road_{number}' if label is None else None)


def test_kitti_names_of_images_ground_truth_and_others():
    assert kitti_names.parse('umm_000012') == ('umm', None, '000012')
    assert kitti_names.parse('um_lane_000001') == ('um', 'lane', '000001')
    assert kitti_names.labelled_name('uu_000003', 'lane') == 'uu_lane_000003'
    assert kitti_names.parse('0001TP_006690') is None and kitti_names.parse('um_0001a') is None
