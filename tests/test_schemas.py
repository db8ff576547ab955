"""Every JSON file the project reads back has a schema (roadseg/schemas.py), checked as it is
read: what the writers write passes, and anything else - random JSON, or a written file with
keys dropped, values of other types or nested deeper - gives its reader's right answer or one
clean line naming the file, never another exception (issue 48, causes 6 and 7).

Each property runs the real readers of its file on it (inference.load_model's checks, plot.py,
a resumed run's records, zoo.write_card, ...), not the schema alone.
"""
import copy
import dataclasses
import functools
import json
import os
import re
import shutil
import types
from unittest import mock

import jsonschema
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadseg import cli, drawing, evaluation, files, inference, schemas, zoo
from roadseg.commands import plot
from roadseg.data import classes as class_files
from roadseg.errors import UserError
from roadseg.model.ops import tf, tf1
from roadseg.model_info import ModelInfo
from roadseg.training import checkpoints, inputs, options, run
from roadseg.training import crossval as folds
from tests.conftest import make_kitti
from tests.test_fuzz_inputs import assert_refusal, json_values

# ----------------------------------------------------------------------------------------------
# What the writers write
# ----------------------------------------------------------------------------------------------

def evaluation_results():
    """evaluation.evaluate's results for a two-class model on two images, as a run records."""
    def run_model(images):
        road = (images[..., 0] > 128).astype(np.float32)
        return np.stack([1 - road, road], -1)
    model = inference.Model('fake', 'fake', ModelInfo.of_classes(
        (32, 64), class_files.builtin('kitti_road')), run_model)
    rng = np.random.default_rng(0)
    samples = []
    for name in ('a', 'b'):
        image = rng.integers(0, 256, (32, 64, 3), np.uint8)
        samples.append((name, image, (image[..., 0] > 100).astype(np.uint8)))
    return json.loads(json.dumps(evaluation.evaluate(model, samples)))


def records():
    """Two epochs of monitoring.RunMonitor.epoch_end: one not validated, one validated."""
    results = evaluation_results()
    return [{'epoch': 1, 'train_loss': 0.7, 'seconds': 12.5},
            {'epoch': 2, 'train_loss': 0.4, 'seconds': 12.1, 'val': results,
             'key_metric': evaluation.key_metric(results), 'seen': results}]


def run_config(folder):
    """The config.json that run.save_config writes for main.py's defaults."""
    run.save_config(str(folder), options.parse_args(['--data-dir', str(folder / 'data')]),
                    None, 'python main.py')
    return json.loads((folder / 'config.json').read_text())


def model_info():
    """run.model_info of KITTI Road's defaults: a model's fcn.json."""
    defaults = options.parse_args(['--data-dir', 'data'])
    return dataclasses.replace(run.model_info(defaults, class_files.builtin('kitti_road')),
                               epoch=2, val_iou=0.5).to_json()


CARD = {  # roadseg/shipped/camvid-road/card.json, as zoo.card wrote it
    'task': 'road against the rest, CamVid', 'command': 'python main.py --config x.json',
    'commit': 'd508357e316dbb92b728795b6e6ab1702114954c',
    'trained_on': '468 labelled images of camvid (every labelled one), 40 epochs, from scratch',
    'quality': {'crossval': 'road IoU 0.882 +- 0.029', 'int8': 'road IoU 0.9571',
                'val': 'road IoU 0.9695 on val/'},
    'input_size': '352x480', 'classes': ['other', 'road'], 'megabytes': 2.719392,
    'speed': '9 ms per image', 'licence': 'CamVid: research and non-commercial use'}
ROW = {'epoch': 2, 'folds': {'A': 0.5, 'B': 0.7}, 'mean': 0.6, 'std': 0.1, 'min': 0.5,
       'max': 0.7, 'pooled': 0.6, 'class_iou_mean': [0.9, 0.6]}
CROSSVAL_RECORD = {'source': 'cv/crossval.json', 'metric': 'road IoU', 'epochs': 2,
                   'at_epochs': ROW, 'best': ROW,
                   'folds': {'A': {'images': 2, 'run': '/cv/A/1'}, 'B': {'images': 2,
                                                                         'run': '/cv/B/1'}}}


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """{kind: a file of that kind as the project writes it}."""
    folder = tmp_path_factory.mktemp('written')
    (folder / 'model.tflite').write_bytes(b'not really a model')
    (folder / 'fcn.json').write_text(json.dumps(model_info()))
    files.write_manifest(str(folder), ['fcn.json', 'model.tflite'])
    manifest = json.loads((folder / 'manifest.json').read_text())
    return {'manifest': manifest, 'checkpoint': {**manifest, 'epoch': 2, 'records': records()},
            'fcn': model_info(), 'card': CARD,
            'metrics': {'epochs': records(), 'best_epoch': 2},
            'resumed metrics': {'epochs': records(), 'best_epoch': 2},
            'config': run_config(folder),
            'split': {'train': ['a.png', 'b.png'], 'val': ['c.png'], 'seen': [],
                      'groups': {'train': {'A': 2}, 'val': {'B': 1}, 'seen': {}}},
            'crossval record': CROSSVAL_RECORD}


def test_every_schema_is_a_json_schema_and_every_file_written_passes_its_own(written):
    assert set(written) == set(schemas.KINDS)
    for kind, (schema, _) in schemas.KINDS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schemas.problem(written[kind], kind) is None, kind


@pytest.mark.parametrize('name', sorted(zoo.SHIPPED))
def test_the_shipped_models_files_pass_their_schemas(name):
    folder = zoo.folder_of(name)
    if not os.path.isdir(folder):
        pytest.skip(f'{name} is not shipped in this checkout')
    for file, kind in (('manifest.json', 'manifest'), ('fcn.json', 'fcn'), ('card.json', 'card')):
        files.read_json(os.path.join(folder, file), kind=kind)


def test_whole_numbers_are_ints_and_a_field_is_named_by_its_json_path():
    info = model_info()
    for changed, where in (({'num_classes': 2.0}, '$.num_classes is 2.0; it must be a whole '
                                                   'number'),
                           ({'image_shape': [160, 'x']}, '$.image_shape[1] is "x"'),
                           ({'class_colors': [[0, 0, 0], [1, 2, 300]]},
                            '$.class_colors[1][2] is 300; it must be at most 255'),
                           ({'class_names': ['a']}, '$.class_names has 1 items but num_classes '
                                                    'is 2')):
        assert schemas.problem({**info, **changed}, 'fcn').startswith(where)
    assert schemas.problem({'files': {'a\nb': 3}}, 'manifest') == \
        '$.files["a\\nb"] is 3; it must be an object'


# ----------------------------------------------------------------------------------------------
# Random files: the reader's right answer or one clean line
# ----------------------------------------------------------------------------------------------

def paths(value, at=()):
    """The path of every value inside a JSON value, itself first."""
    yield at
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from paths(inner, (*at, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from paths(inner, (*at, index))


def changed(value, at, change):
    """`value` with `change(the value at the path at)` there (None from change: removed)."""
    if not at:
        return change(value)
    head, rest = at[0], at[1:]
    copied = copy.copy(value)
    inner = changed(value[head], rest, change)
    if inner is REMOVED:
        del copied[head]
    else:
        copied[head] = inner
    return copied


REMOVED = object()


def mutate(how, key, extra, value):
    """`value` removed, nested one level deeper (in a list or an object), with the key `key`
    added (an object), or replaced by `extra`."""
    if how == 'remove':
        return REMOVED
    if how == 'in a list':
        return [value]
    if how == 'in an object':
        return {key: value}
    if how == 'add a key':
        return {**value, key: extra} if isinstance(value, dict) else value
    return extra


@st.composite
def mutations(draw, document):
    """`document` with one to three random changes (mutate), each at a random place in it."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.sampled_from(list(paths(document))))
        how = draw(st.sampled_from(['remove' if at else 'replace', 'replace', 'in a list',
                                    'in an object', 'add a key']))
        key, extra = draw(st.text(max_size=6)), draw(json_values)
        document = changed(document, at, functools.partial(mutate, how, key, extra))
    return document


def documents(kind):
    """Files of `kind` to read: as written, changed a little, or any JSON at all."""
    return st.sampled_from([kind]).flatmap(lambda k: st.one_of(
        st.just(WRITTEN[k]), mutations(WRITTEN[k]), json_values))


WRITTEN = {}  # filled from the `written` fixture: Hypothesis's strategies are made at import


@pytest.fixture(scope='module', autouse=True)
def _written(written):
    WRITTEN.update(written)


def same(value, other):
    """Whether two JSON values are the same JSON (Python's == takes true for 1)."""
    return json.dumps(value, sort_keys=True) == json.dumps(other, sort_keys=True)


def write(folder, name, value):
    path = os.path.join(folder, name)
    with open(path, 'w') as f:
        json.dump(value, f)
    return path


def refused_in_one_line(read, *names):
    """read(): its answer, or None when it stopped with one line naming one of `names`."""
    try:
        return read()
    except UserError as e:
        assert_refusal(cli.one_line(e), *names)
        assert '\n' not in str(e)
        return None


@given(st.data())
def test_a_model_folders_manifest_gives_the_models_check_or_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('model')
    (folder / 'model.tflite').write_bytes(b'not really a model')
    (folder / 'fcn.json').write_text(json.dumps(model_info()))
    manifest = data.draw(documents('manifest'))
    write(folder, 'manifest.json', manifest)
    for names in (['model.tflite', 'fcn.json'], None):  # a model file's, a SavedModel's
        reason = files.manifest_problem(str(folder), names)
        assert reason is None or isinstance(reason, str) and '\n' not in reason
        if same(manifest, WRITTEN['manifest']):
            assert reason is None
        refused_in_one_line(functools.partial(inference._verify, str(folder), str(folder),
                                              names), str(folder))


@given(st.data())
def test_an_fcn_json_gives_a_model_its_size_and_classes_or_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('model')
    info = data.draw(documents('fcn'))
    path = write(folder, 'fcn.json', info)
    read = refused_in_one_line(lambda: ModelInfo.read(str(folder), str(folder)), path)
    if read is None:
        return
    kept = read.to_json()  # what applies to the model, as the file holds it
    assert same(kept, {key: info[key] for key in kept}) and same(
        ModelInfo.from_json(kept).to_json(), kept)
    (height, width), count = read.image_shape, read.num_classes
    inference._check(str(folder), read, [1, height, width, 3], [1, height, width, count])
    if height * width * count <= 1 << 22:  # not a model of 16384x16384 pixels and 255 classes
        model = inference.Model(str(folder), 'fake', read, lambda images: np.full(
            (len(images), height, width, count), 1 / count, np.float32))
        image = np.zeros((height // 8, width // 8, 3), np.uint8)
        (probabilities,) = inference.segment(model, [image])
        classes = inference.classes_of(probabilities)
        drawing.overlay(image, classes, drawing.overlay_colors(read.class_colors))
    drawing.write_legend(str(folder / 'legend.png'), read.class_names, read.class_colors)


@given(st.data())
def test_a_metrics_json_gives_plots_curves_and_the_cross_validation_or_one_line(
        tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('run')
    write(folder, 'config.json', WRITTEN['config'])
    metrics = data.draw(documents('metrics'))
    path = write(folder, 'metrics.json', metrics)
    curves = refused_in_one_line(lambda: plot.read_run(str(folder)), path)
    if curves is None:
        return
    label, epochs, minutes, losses, ious = curves
    assert epochs == [r['epoch'] for r in metrics['epochs']] and len(minutes) == len(epochs)
    finished = refused_in_one_line(lambda: folds.finished(str(folder)), path)
    assert finished in (True, False, None)
    refused_in_one_line(lambda: folds.summarise({'A': str(folder)}, {'A': 2}), path,
                        'validated epoch')


def resume(folder, checkpoint_dir, done):
    """What a run resumed after epoch `done` does with its records: keep those up to it, and
    log the best validated epoch's figures (monitoring.RunMonitor)."""
    kept = run.resumed_records(str(folder), str(checkpoint_dir), done)
    assert all(r['epoch'] <= done for r in kept)
    best = max((r for r in kept if 'key_metric' in r), key=lambda r: r['key_metric'],
               default=None)
    if best:
        evaluation.summary_line(best['val'])
        if 'seen' in best:
            evaluation.summary_line(best['seen'])
    return kept


class NoSaver:
    """A tf1.train.Saver whose restore does nothing: the checkpoint's files are not real."""

    def restore(self, sess, prefix):
        pass


@given(st.data())
def test_a_checkpoints_manifest_resumes_its_records_or_is_passed_over(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('run')
    checkpoint_dir = folder / 'checkpoints'
    epoch = checkpoint_dir / 'epoch-0002'
    epoch.mkdir(parents=True)
    (epoch / 'model.index').write_bytes(b'index')
    written = {**WRITTEN['checkpoint'], 'files': {}}
    written['files']['model.index'] = {'bytes': 5, 'sha256': files.sha256_of(
        str(epoch / 'model.index'))}
    manifest = data.draw(st.one_of(st.just(written), mutations(written), json_values))
    write(epoch, 'manifest.json', manifest)
    messages = []
    done = checkpoints.restore_latest(None, NoSaver(), str(checkpoint_dir), messages.append)
    assert done in (0, 2) and len(messages) == (done == 0)
    assert all(len(m.splitlines()) == 1 for m in messages)
    kept = resume(folder, checkpoint_dir, done)
    if same(manifest, written):
        assert done == 2 and kept == written['records']


@given(st.data())
def test_a_metrics_json_behind_an_older_checkpoint_resumes_or_is_one_line(tmp_path_factory,
                                                                         data):
    folder = tmp_path_factory.mktemp('run')
    checkpoint_dir = folder / 'checkpoints'
    epoch = checkpoint_dir / 'epoch-0002'
    epoch.mkdir(parents=True)
    write(epoch, 'manifest.json', {'epoch': 2, 'files': {}})  # written before records
    metrics = data.draw(documents('resumed metrics'))
    path = write(folder, 'metrics.json', metrics)
    kept = refused_in_one_line(lambda: resume(folder, checkpoint_dir, 2), path)
    if same(metrics, WRITTEN['resumed metrics']):
        assert kept == metrics['epochs']


@given(st.data())
def test_a_config_json_gives_plots_label_or_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('run')
    write(folder, 'metrics.json', WRITTEN['metrics'])
    options = data.draw(documents('config'))
    path = write(folder, 'config.json', options)
    curves = refused_in_one_line(lambda: plot.read_run(str(folder)), path)
    if curves is not None:
        assert curves[0].endswith(f'({folder.name})') and options['image_shape'] in curves[0]
    refused_in_one_line(lambda: folds.finished(str(folder)), path)


@given(st.data())
def test_a_split_json_gives_a_resumed_runs_images_or_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('run')
    split = data.draw(documents('split'))
    path = write(folder, 'split.json', split)
    every = ['a.png', 'b.png', 'c.png']
    dataset = types.SimpleNamespace(train=[(name, name + '.label') for name in every], val=None)
    sets = refused_in_one_line(lambda: inputs.resumed_split(str(folder), dataset, 'data'),
                               path, '--resume')
    if sets is not None:
        assert [[image for image, _ in pairs] for pairs in sets] == [
            split.get(key, []) for key in ('train', 'val', 'seen')]


@given(st.data())
def test_a_card_json_gives_the_model_card_or_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('models')
    (folder / 'camvid-road').mkdir()
    card = data.draw(documents('card'))
    path = write(folder / 'camvid-road', zoo.CARD, card)
    with mock.patch.object(zoo, 'DIR', str(folder)):
        cards = refused_in_one_line(zoo.write_card, path)
    if cards is not None:
        assert cards == {'camvid-road': card}
        assert card['task'] in (folder / 'README.md').read_text()


@given(st.data())
def test_a_runs_crossval_record_gives_the_card_its_figures_or_one_line(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp('run')
    write(folder, 'config.json', WRITTEN['config'])
    write(folder, 'split.json', WRITTEN['split'])
    record = data.draw(documents('crossval record'))
    path = write(folder, 'crossval.json', record)
    checked = {'result': {'iou': 0.9, 'class_agreement': 0.99}, 'original': 0.91, 'images': 2,
               'source': 'val'}
    card = refused_in_one_line(lambda: zoo.card('camvid-road', str(folder), ModelInfo.from_json(
        model_info()), checked, 9.0, path), path)
    if card is not None:
        row = record.get('at_epochs') or record['best']
        assert f'{row["mean"]:.3f}' in card['quality']['crossval']


# ----------------------------------------------------------------------------------------------
# Causes 6 and 7 of issue 48, one example each (each a traceback, or a silent load, before)
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def tflite_model(tmp_path_factory):
    """A tiny TFLite model (road where red is above 128, at 32x64) with its fcn.json and the
    manifest export.py writes beside them."""
    folder = tmp_path_factory.mktemp('export')
    with tf.Graph().as_default(), tf1.Session() as sess:
        image = tf1.placeholder(tf.float32, [1, 32, 64, 3], 'image')
        red = image[..., :1] - 128
        probabilities = tf.nn.softmax(tf.concat([-red, red], -1), name='probabilities')
        converter = tf1.lite.TFLiteConverter.from_session(sess, [image], [probabilities])
        (folder / 'model_float32.tflite').write_bytes(converter.convert())
    (folder / 'fcn.json').write_text(json.dumps({
        **model_info(), 'image_shape': [32, 64], 'class_names': ['not road', 'road'],
        'class_colors': [[255, 0, 0], [255, 0, 255]]}))
    files.write_manifest(str(folder), ['fcn.json', 'model_float32.tflite'])
    return folder / 'model_float32.tflite'


def copied(model, tmp_path):
    folder = tmp_path / 'export'
    shutil.copytree(model.parent, folder)
    return folder / model.name


def test_an_edited_fcn_json_beside_a_tflite_model_is_refused(tflite_model, tmp_path):
    with inference.load_model(str(tflite_model)) as model:
        assert model.info.class_names == ('not road', 'road')
    path = copied(tflite_model, tmp_path)
    info = json.loads((path.parent / 'fcn.json').read_text())
    info['class_names'].reverse()
    info['class_colors'].reverse()
    (path.parent / 'fcn.json').write_text(json.dumps(info))
    with pytest.raises(UserError, match=r'fcn.json is corrupt \(SHA-256 mismatch\); the model '
                                        r'is damaged') as refused:
        inference.load_model(str(path))
    assert_refusal(refused.value, str(path))


@pytest.mark.parametrize('manifest', [
    {'files': {'model_float32.tflite': 3}},  # was TypeError
    {'files': {'model_float32.tflite': {'bytes': 1}}},  # was KeyError
    {'files': {'fcn.json': {'bytes': '416', 'sha256': 'a' * 64}}},  # was listed as a string
    {'files': ['model_float32.tflite']},
    {'files': {'../../elsewhere': {'bytes': 1, 'sha256': 'a' * 64}}},
    [],
])
def test_a_manifest_of_the_wrong_shape_is_one_line(tflite_model, tmp_path, manifest):
    path = copied(tflite_model, tmp_path)
    (path.parent / 'manifest.json').write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r'manifest.json is damaged: \$.*; the model is damaged'
                       ) as refused:
        inference.load_model(str(path))
    assert_refusal(refused.value, str(path))


@pytest.mark.parametrize('change, where', [
    ({'image_shape': '32x64'}, r'\$.image_shape is "32x64"'),  # was ValueError
    ({'image_shape': [32]}, r'\$.image_shape is \[32\]; it must be \[height, width\]'),
    ({'class_colors': [[255, 0], [255, 0, 255]]},
     r'\$.class_colors\[0\] is \[255, 0\]; it must be \[red, green, blue\]'),
    ({'class_names': 'not road, road'}, r'\$.class_names is "not road, road"; it must be a list'),
    ({'num_classes': True}, r'\$.num_classes is true; it must be a whole number'),
])
def test_an_fcn_json_with_a_field_of_the_wrong_type_is_one_line(tflite_model, tmp_path, change,
                                                                where):
    path = copied(tflite_model, tmp_path)
    info = json.loads((path.parent / 'fcn.json').read_text())
    (path.parent / 'fcn.json').write_text(json.dumps({**info, **change}))
    files.write_manifest(str(path.parent), ['fcn.json', path.name])  # consistent, yet wrong
    with pytest.raises(UserError, match=rf'fcn.json: {where}.*; keep the fcn.json') as refused:
        inference.load_model(str(path))
    assert_refusal(refused.value, 'fcn.json')


def plot_run(folder, metrics):
    folder.mkdir()
    write(folder, 'config.json', {'encoder': 'vgg16', 'image_shape': '32x64'})
    write(folder, 'metrics.json', metrics)
    return folder


@pytest.mark.parametrize('metrics, where', [
    ({'epochs': [{'epoch': 1}]}, r'\$.epochs\[0\] has no "train_loss"'),  # was KeyError
    ({'epochs': 'abc'}, r'\$.epochs is "abc"; it must be a list'),  # was AttributeError
    ({'epochs': [{'epoch': 1, 'train_loss': 'x'}]}, r'\$.epochs\[0\].train_loss is "x"'),
    ([1, 2], r'\$ is \[1, 2\]; it must be an object'),  # was AttributeError
])
def test_plot_of_a_metrics_json_of_the_wrong_shape_is_one_line(tmp_path, capsys, metrics,
                                                               where):
    folder = plot_run(tmp_path / 'run', metrics)
    assert cli.main_guard(plot.main, [str(folder), '--output', str(tmp_path / 'c.png')]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.search(rf'metrics.json: {where}', line), line


@pytest.mark.parametrize('value', ['nan', 'inf', '-inf', '1', 'x'])
def test_plot_refuses_an_iou_min_that_is_not_a_number_below_1_as_a_bad_flag(tmp_path, capsys,
                                                                           value):
    folder = plot_run(tmp_path / 'run', {'epochs': [{'epoch': 1, 'train_loss': 1.0,
                                                     'key_metric': 0.5}]})
    assert cli.main_guard(plot.main, [str(folder), '--output', str(tmp_path / 'c.png'),
                                      f'--iou-min={value}']) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: argument --iou-min: '{value}' is not a number below 1, e.g. " \
                   f"0.85 (see --help)"
    assert not (tmp_path / 'c.png').exists()


@pytest.fixture
def counter(own_graph, sess):
    variable = tf1.Variable(np.zeros(10, np.float32))
    sess.run(variable.initializer)
    return sess, variable, tf1.train.Saver()


@pytest.mark.parametrize('damage', [
    lambda m: {**m, 'files': {name: 5 for name in m['files']}},  # was TypeError
    lambda m: {**m, 'files': sorted(m['files'])},  # was TypeError
    lambda m: {**m, 'records': [{'epoch': 'x', 'train_loss': 1}]},  # was TypeError on resuming
    lambda m: {**m, 'records': [{'epoch': 1, 'train_loss': 1, 'key_metric': 0.5}]},  # KeyError
])
def test_resume_passes_over_a_checkpoint_whose_manifest_has_the_wrong_shape(counter, tmp_path,
                                                                            damage):
    sess, variable, saver = counter
    for epoch in (1, 2):
        variable.load(np.full(10, epoch, np.float32), sess)
        checkpoints.save(sess, saver, str(tmp_path), epoch,
                         extra={'records': [{'epoch': e, 'train_loss': 1.0 / e}
                                            for e in range(1, epoch + 1)]})
    path = tmp_path / 'epoch-0002' / checkpoints.MANIFEST
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    messages = []
    assert checkpoints.restore_latest(sess, saver, str(tmp_path), messages.append) == 1
    assert np.all(sess.run(variable) == 1)
    (message,) = messages
    assert 'epoch-0002 is unusable: manifest.json is damaged: $' in message
    assert run.resumed_records(str(tmp_path.parent), str(tmp_path), 1) == [
        {'epoch': 1, 'train_loss': 1.0}]


@pytest.mark.parametrize('missing', ['dataset', 'label', 'classes', 'remap'])
def test_an_fcn_json_without_its_optional_data_set_keys_is_scored_or_one_line(tmp_path, missing):
    """predict.py and serve.py need no data set, so fcn.json may leave its keys out; evaluate.py
    then takes the defaults, or says in one line that it cannot know the labels."""
    info = ModelInfo.from_json({key: value for key, value in model_info().items()
                                if key != missing})
    data = tmp_path / 'data'
    if missing == 'dataset':
        with pytest.raises(UserError, match='does not say which data set') as refused:
            evaluation.evaluation_data(str(tmp_path / 'model.tflite'), str(data), info, 'all')
        assert_refusal(refused.value, str(tmp_path / 'model.tflite'))
    else:
        make_kitti(data)
        dataset, pairs = evaluation.evaluation_data(str(tmp_path / 'model.tflite'), str(data),
                                                    info, 'all')
        assert dataset.name == 'kitti' and len(pairs) == 3
