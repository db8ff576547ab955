"""Choosing and training are two jobs: crossval.py's leave-one-drive-out folds and their
summary, and main.py --all-labelled, the final model that trains on every labelled image and
selects nothing, on synthetic drives (tests/test_groups.py's three); and main.py --remap-at
output, the data set's own classes as training signal for a --remap model."""
import json
import os

import numpy as np
import pytest

import crossval
import main
from roadseg import cli, inference, metrics
from roadseg.data import classes as class_files
from roadseg.data import datasets, groups
from roadseg.errors import UserError
from roadseg.model import network
from roadseg.model.ops import tf
from roadseg.training import config, distribute, inputs, monitoring
from roadseg.training import crossval as folds
from roadseg.training.settings import TrainingConfig
from tests.test_groups import make_drives

TINY = ['--dataset', 'camvid', '--remap', 'road=3', '--encoder', 'mobilenetv2',
        '--encoder-weights', 'none', '--alpha', '0.35', '--batch-size', '2',
        '--image-shape', '32x64', '--learning-rate', '0.01', '--epochs', '2', '--val-every', '1',
        '--augment', 'none,flip=0.5']
EVERY_IMAGE = {'A_000010.png', 'A_000020.png', 'B_000010.png', 'B_000020.png', 'C_000010.png',
               'C_000020.png', 'C_000030.png', 'C_000040.png'}  # C's last two from val/


def read(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_drives(tmp_path_factory.mktemp('drives') / 'camvid')


@pytest.fixture(scope='module')
def uninterrupted(data, tmp_path_factory):
    cv_dir = tmp_path_factory.mktemp('cv') / 'whole'
    summary = crossval.main([*TINY, '--data-dir', str(data), '--cv-dir', str(cv_dir)])
    return cv_dir, summary


@pytest.mark.slow
def test_each_fold_holds_out_one_drive_and_trains_on_every_other_labelled_image(uninterrupted):
    cv_dir, summary = uninterrupted
    state = read(cv_dir / 'crossval.json')
    assert state['folds'] == ['A', 'B', 'C'] and state['sizes'] == {'A': 2, 'B': 2, 'C': 4}
    group_of = groups.grouper('camvid')
    for group in 'ABC':
        split = read(os.path.join(folds.fold_run(str(cv_dir), group), 'split.json'))
        assert {group_of(name) for name in split['val']} == {group}
        assert sorted(split['val']) == sorted(n for n in EVERY_IMAGE if n[0] == group)
        assert sorted(split['train']) == sorted(n for n in EVERY_IMAGE if n[0] != group)
        assert split['seen'] == []  # every image of the other drives trains
    assert summary == state['summary']


@pytest.mark.slow
def test_the_summary_is_the_mean_spread_and_pool_of_the_folds_at_each_epoch(uninterrupted,
                                                                           capsys):
    cv_dir, summary = uninterrupted
    assert [row['epoch'] for row in summary['epochs']] == [1, 2]
    for row in summary['epochs']:
        results = []
        for group in 'ABC':
            records = read(os.path.join(folds.fold_run(str(cv_dir), group), 'metrics.json'))
            results.append(next(r['val'] for r in records['epochs']
                                if r['epoch'] == row['epoch']))
        scores = [r['iou'][1] for r in results]  # road IoU: two classes
        assert row['folds'] == dict(zip('ABC', scores))
        assert row['mean'] == pytest.approx(np.mean(scores))
        assert row['std'] == pytest.approx(np.std(scores))
        pooled = metrics.ConfusionMatrix.of(sum(np.array(r['confusion']) for r in results))
        assert row['pooled'] == pytest.approx(pooled.results()['iou'][1])
    best = max(summary['epochs'], key=lambda row: row['mean'])
    assert summary['best_epoch'] == best['epoch'] and summary['metric'] == 'road IoU'
    table = folds.format_summary(summary)
    assert 'A (2)' in table and 'C (4)' in table and 'pooled' in table
    assert f'best epoch on the mean over 3 folds: {best["epoch"]}' in table


@pytest.mark.slow
def test_a_resumed_cross_validation_repeats_the_uninterrupted_one(uninterrupted, data,
                                                                  tmp_path, monkeypatch):
    """Killed after fold B's first epoch, then resumed: fold A is kept, B resumes from its
    checkpoint, C trains, and every figure is the uninterrupted run's."""
    cv_dir = tmp_path / 'resumed'
    epoch_end = monitoring.RunMonitor.epoch_end

    def interrupted(monitor, epoch, loss):
        epoch_end(monitor, epoch, loss)
        if os.sep + 'B' + os.sep in monitor.run_dir and epoch == 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(monitoring.RunMonitor, 'epoch_end', interrupted)
    assert cli.main_guard(crossval.main, [*TINY, '--data-dir', str(data), '--cv-dir',
                                          str(cv_dir)]) == 130
    assert folds.fold_run(str(cv_dir), 'C') is None
    monkeypatch.setattr(monitoring.RunMonitor, 'epoch_end', epoch_end)
    summary = crossval.main(['--resume', str(cv_dir)])
    whole = uninterrupted[1]
    assert [row['epoch'] for row in summary['epochs']] == [1, 2]
    for got, expected in zip(summary['epochs'], whole['epochs']):
        assert got['folds'] == pytest.approx(expected['folds'], abs=1e-6)
        assert got['pooled'] == pytest.approx(expected['pooled'], abs=1e-6)
    log = open(os.path.join(folds.fold_run(str(cv_dir), 'B'), 'train.log')).read()
    assert 'resuming' in log


@pytest.mark.parametrize('argv, message', [
    (['--val-groups', 'A'], '--val-groups: crossval.py sets it for every fold'),
    (['--runs-dir', 'x'], '--runs-dir: crossval.py sets it'),
    (['--folds', 'D'], "no image is of group 'D'"),
    (['--resume', 'nowhere'], '--resume nowhere: no crossval.json there'),
])
def test_bad_cross_validation_options_are_one_line(data, argv, message):
    base = [] if argv[0] == '--resume' else [*TINY, '--data-dir', str(data)]
    with pytest.raises(UserError, match=message):
        crossval.main(base + argv)


@pytest.mark.slow
def test_the_final_model_trains_on_every_labelled_image_and_selects_nothing(data, tmp_path):
    run_dir = main.run([*TINY, '--data-dir', str(data), '--runs-dir', str(tmp_path),
                        '--all-labelled'])
    split = read(os.path.join(run_dir, 'split.json'))
    assert sorted(split['train']) == sorted(EVERY_IMAGE)
    assert split['val'] == [] and split['seen'] == []
    records = read(os.path.join(run_dir, 'metrics.json'))
    assert records['best_epoch'] is None
    assert [r['epoch'] for r in records['epochs']] == [1, 2]
    assert not any('val' in r or 'seen' in r for r in records['epochs'])
    assert read(os.path.join(run_dir, 'model', 'fcn.json'))['epoch'] == 2  # the last epoch
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert 'every one of the 8 labelled images trains; nothing validates' in log


@pytest.mark.slow
def test_the_final_model_records_the_cross_validation_that_chose_its_recipe(
        uninterrupted, data, tmp_path):
    cv_dir, summary = uninterrupted
    run_dir = main.run([*TINY, '--data-dir', str(data), '--runs-dir', str(tmp_path),
                        '--all-labelled', '--epochs', '1', '--crossval',
                        str(cv_dir / 'crossval.json')])
    recorded = read(os.path.join(run_dir, 'crossval.json'))
    assert recorded['best'] == summary['best'] and recorded['metric'] == 'road IoU'
    assert recorded['source'] == str(cv_dir / 'crossval.json')
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert f'road IoU {summary["best"]["mean"]:.4f} +- {summary["best"]["std"]:.4f} over ' \
           f'3 held-out groups (A, B, C)' in log


def test_remap_at_output_sums_the_learned_probabilities_into_the_groups():
    base = class_files.builtin('camvid11')
    merge = base.remapped('road=3,car=8+9').merge_matrix()
    assert merge.shape == (11, 3) and (merge.sum(axis=1) == 1).all()
    assert merge[3, 1] == merge[8, 2] == merge[9, 2] == 1 and merge[0, 0] == merge[10, 0] == 1
    logits = np.random.default_rng(0).normal(size=(1, 4, 5, 11)).astype(np.float32)
    with tf.Graph().as_default():
        got = tf.compat.v1.Session().run(network.probabilities(tf.constant(logits), merge))
    learned = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(got[..., 1], learned[..., 3], atol=1e-6)
    np.testing.assert_allclose(got[..., 2], learned[..., 8] + learned[..., 9], atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_remap_at_output_trains_on_the_data_sets_classes_and_exports_the_groups(data, tmp_path):
    argv = [*TINY, '--data-dir', str(data), '--remap-at', 'output']
    args = config.parse_args(argv + ['--all-labelled'])
    dataset, train, _, _ = inputs.data_split(args)
    setup = distribute.setup(TrainingConfig.of(args))
    batches = inputs.batch_generator(args, dataset, train, setup)
    assert batches.num_classes == 11  # the training labels keep CamVid's classes
    assert {0, 1, 3} <= set(np.unique(np.concatenate([label.ravel() for label in batches.labels])))
    run_dir = main.run(argv + ['--runs-dir', str(tmp_path), '--epochs', '1'])
    assert 'learning its 11 classes, summed into these at the output' in \
        open(os.path.join(run_dir, 'train.log')).read()
    records = read(os.path.join(run_dir, 'metrics.json'))
    assert len(records['epochs'][0]['val']['iou']) == 2  # validated as road against the rest
    with inference.load_model(os.path.join(run_dir, 'model')) as model:
        image = datasets.read_rgb(os.path.join(data, 'train', 'A_000010.png'))
        probabilities = model(image[None])
    assert model.num_classes == 2 and probabilities.shape == (1, 32, 64, 2)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-4)


def test_remap_at_output_needs_a_remap(data):
    argv = [a for a in TINY if a not in ('--remap', 'road=3')]
    with pytest.raises(UserError, match='--remap-at output .* give --remap too'):
        config.parse_args([*argv, '--data-dir', str(data), '--remap-at', 'output'])


def test_a_config_files_crossval_record_is_found_beside_the_file(tmp_path, monkeypatch):
    (tmp_path / 'recipes').mkdir()
    (tmp_path / 'records').mkdir()
    record = tmp_path / 'records' / 'cv.json'
    record.write_text(json.dumps({'metric': 'road IoU', 'folds': {}, 'epochs': [],
                                  'best_epoch': 2, 'best': {}}))
    recipe = tmp_path / 'recipes' / 'r.json'
    recipe.write_text(json.dumps({'crossval': '../records/cv.json'}))
    assert config.load_config(str(recipe))['crossval'] == str(record)
    monkeypatch.chdir(tmp_path / 'records')  # wherever the command runs from
    assert config.load_config(os.path.join('..', 'recipes', 'r.json'))['crossval'] == \
        os.path.normpath(os.path.join('..', 'records', 'cv.json'))
