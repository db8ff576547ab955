"""The typed configuration (issue 50): every recipe round-trips through RunConfig, a run's
config.json written before it still resumes, only the command-line adapter reads an argparse
Namespace, and no function of the package is too long to read at once."""
import ast
import dataclasses
import glob
import json
import os
import shutil

import pytest

from roadseg.errors import UserError
from roadseg.training import config, options, run
from roadseg.training.config import RunConfig
from tests.conftest import ROOT

RECIPES = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.json')))
LONGEST = 60  # lines, def to last line


@pytest.mark.parametrize('path', RECIPES, ids=os.path.basename)
def test_every_recipe_round_trips_through_the_run_config_to_the_same_json(path):
    recipe = json.loads(open(path).read())
    made = config.read(path)
    written = made.to_json()
    assert json.loads(json.dumps(written)) == written  # plain JSON
    for name, value in recipe.items():  # what the recipe says, it still says
        if name == 'crossval' and value:  # read beside the recipe
            value = os.path.normpath(os.path.join(os.path.dirname(path), value))
        if name == 'train_crop' and value == 'none':
            value = None
        assert written[name] == value, name
    assert RunConfig.from_values(config.values_of(written, 'again')) == made
    assert set(written) == set(config.option_fields())  # every option, once


def test_every_option_has_one_home_and_one_default():
    homes = [field.name for section in config.SECTIONS.values()
             for field in dataclasses.fields(section)]
    assert len(homes) == len(set(homes))
    defaults = RunConfig.from_values({})
    assert defaults.values() == {**{name: field.default for name, field in
                                    config.option_fields().items()},
                                 'decoder': 'fcn8s', 'image_shape': (160, 576)}  # settled
    assert options.parse_args([]) == defaults


def test_a_run_config_is_made_in_python_and_settles_the_size_from_the_data():
    made = RunConfig(data=config.DataConfig(dataset='camvid', data_dir='nowhere'))
    assert made.training.image_shape == (352, 480)
    fold = dataclasses.replace(made, data=dataclasses.replace(made.data, val_fraction=0.5))
    assert fold.training.image_shape == (352, 480) and fold.data.val_fraction == 0.5
    with pytest.raises(UserError, match='--train-crop: 512x512 is larger than --image-shape'):
        RunConfig(training=config.TrainingConfig(train_crop=(512, 512)))
    with pytest.raises(UserError, match='--val-bev: with --all-labelled and no --val-groups'):
        RunConfig(data=config.DataConfig(all_labelled=True),
                  run=config.RunFolderConfig(val_bev=True))


def test_a_config_json_written_at_9990b5a_still_resumes(tmp_path):
    """A run folder of the code before RunConfig: --resume reads its options, and writing
    them back keeps every one."""
    old = json.loads(open(os.path.join(ROOT, 'tests', 'fixtures', 'config_9990b5a.json')).read())
    old['data_dir'], old['runs_dir'] = str(tmp_path / 'data'), str(tmp_path / 'runs')
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'config.json').write_text(json.dumps(old))
    given = options.options(['--resume', str(tmp_path / 'run'), '--epochs', '4'])
    assert given.resume == str(tmp_path / 'run')
    values = given.config.to_json()
    for name in config.DERIVED:
        old.pop(name, None)
    assert values == {**old, 'epochs': 4, 'cache': 'auto'}  # cache came later, at its default
    run.save_config(str(tmp_path / 'run'), given.config, None, 'python main.py')
    again = options.options(['--resume', str(tmp_path / 'run')]).config
    assert again == given.config


def python_files(*folders):
    for folder in folders:
        yield from glob.glob(os.path.join(ROOT, 'roadseg', folder, '**', '*.py'), recursive=True)


def test_only_the_command_line_adapter_reads_a_namespace():
    """No module of training/, model/ or data/ but training/options.py takes argparse's
    results: the rest take the typed configuration."""
    readers = []
    for path in python_files('training', 'model', 'data'):
        if path.endswith(os.path.join('training', 'options.py')):
            continue
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (node.attr == 'Namespace' or isinstance(
                    node.value, ast.Name) and node.value.id == 'args'):
                readers.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}')
    assert readers == []


def test_no_function_of_the_package_is_longer_than_60_lines():
    long = []
    for path in python_files(''):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST:
                    long.append(f'{os.path.relpath(path, ROOT)}:{node.name} {length}')
    assert long == []


def test_the_help_shows_each_fields_default_and_choices(capsys):
    with pytest.raises(SystemExit):
        options.parse_args(['--help'])
    shown = ' '.join(capsys.readouterr().out.split())
    assert '--epochs EPOCHS (default: 40)' in shown
    assert '--distribute {auto,none,mirrored,multi-worker}' in shown
    assert '--all-labelled, --no-all-labelled' in shown


def test_a_recipe_copied_elsewhere_reads_its_crossval_record_beside_it(tmp_path):
    recipe = os.path.join(ROOT, 'configs', 'camvid_road_mobilenetv2.json')
    made = config.read(recipe, data_dir=str(tmp_path))
    assert os.path.isfile(made.run.crossval) and made.data.data_dir == str(tmp_path)
    copy = tmp_path / 'recipes'
    copy.mkdir()
    shutil.copy(recipe, copy)
    with pytest.raises(UserError, match='crossval'):  # its record did not travel with it
        config.read(str(copy / os.path.basename(recipe)))
    shutil.copytree(os.path.join(os.path.dirname(recipe), 'crossval'), copy / 'crossval')
    assert config.read(str(copy / os.path.basename(recipe))).run.crossval == \
        str(copy / 'crossval' / 'camvid_road_mobilenetv2.json')


def test_a_recipe_is_taken_by_name_from_any_folder(tmp_path, monkeypatch):
    """--config NAME (or NAME.json) is the packaged recipe when no such file is here; a file
    of that name here is the file; an unknown name lists the recipes."""
    from roadseg import configs
    by_path = config.read(os.path.join(configs.RECIPES, 'camvid11_mobilenetv2.json'))
    monkeypatch.chdir(tmp_path)
    for name in ('camvid11_mobilenetv2', 'camvid11_mobilenetv2.json'):
        assert config.read(name) == by_path
    assert options.parse_args(['--config', 'camvid11_mobilenetv2']).training.epochs == \
        by_path.training.epochs
    (tmp_path / 'camvid11_mobilenetv2.json').write_text('{"epochs": 3}')
    assert config.read('camvid11_mobilenetv2.json').training.epochs == 3
    with pytest.raises(UserError, match=r"recipe's name \(camvid11_mobilenetv2, .*\)$"):
        config.read('camvid12')


def test_the_class_file_and_the_group_pattern_are_read_once_per_run(tmp_path, monkeypatch):
    from roadseg.data import classes as class_files
    from roadseg.data import groups
    from roadseg.training import inputs
    from tests.test_groups import make_drives
    calls = []
    for module, name in ((class_files, 'load_class_file'), (groups, 'grouper')):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, original=original, name=name, **k: (
            calls.append((name, a[-1])), original(*a, **k))[1])
    data = make_drives(tmp_path / 'camvid')
    classes = str(tmp_path / 'classes.json')  # not the data set's own, which it reads too
    shutil.copy(os.path.join(class_files.CLASS_DIR, 'camvid11.json'), classes)
    made = options.parse_args(['--dataset', 'camvid', '--data-dir', str(data), '--classes',
                               classes, '--group-by', '^([^_]+)_', '--val-groups', 'A'])
    dataset, train, val, in_group = inputs.data_split(made.data)
    assert made.data.grouper()(train[0][0]) == 'B' and len(val) == 2
    assert dataset.classes.num_classes == 11
    assert calls.count(('load_class_file', classes)) == 1
    assert [call for call in calls if call[0] == 'grouper'] == [('grouper', '^([^_]+)_')]
