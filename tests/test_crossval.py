"""Choosing and training are two jobs: crossval.py's leave-one-drive-out folds and their
summary, and main.py --all-labelled, the final model that trains on every labelled image and
selects nothing, on synthetic drives (tests/test_groups.py's three)."""
import json
import os

import numpy as np
import pytest

import main
from roadseg import cli, metrics
from roadseg.commands import crossval
from roadseg.data import groups
from roadseg.errors import UserError
from roadseg.training import config, monitoring
from roadseg.training import crossval as folds
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


def test_without_tensorflow_a_cross_validation_stops_before_writing(data, tmp_path, capsys,
                                                                  monkeypatch):
    """The base install has no TensorFlow: one line naming the extra, and no crossval.json
    that a later run would take for a cross-validation to resume."""
    import importlib.util

    from roadseg import cli
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *rest: None if name == 'tensorflow' else
                        find_spec(name, *rest))
    cv_dir = tmp_path / 'cv'
    argv = [*TINY, '--data-dir', str(data), '--cv-dir', str(cv_dir)]
    assert cli.main_guard(crossval.main, argv) == 2
    assert "needs TensorFlow here" in capsys.readouterr().err
    assert not cv_dir.exists() or os.listdir(cv_dir) == []


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
def test_the_final_model_records_the_cross_validation_at_its_own_epoch_count(
        uninterrupted, data, tmp_path):
    cv_dir, summary = uninterrupted
    record = str(cv_dir / 'crossval.json')
    run_dir = main.run([*TINY, '--data-dir', str(data), '--runs-dir', str(tmp_path),
                        '--all-labelled', '--epochs', '1', '--crossval', record])
    recorded = read(os.path.join(run_dir, 'crossval.json'))
    at_one = summary['epochs'][0]
    assert at_one['epoch'] == 1 and recorded['at_epochs'] == at_one
    assert recorded['best'] == summary['best'] and recorded['metric'] == 'road IoU'
    assert recorded['source'] == record and recorded['epochs'] == 1
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert f'road IoU {at_one["mean"]:.4f} +- {at_one["std"]:.4f} over 3 held-out groups ' \
           f'(A, B, C) at epoch 1' in log
    unvalidated = folds.expected(record, 7)
    assert unvalidated['at_epochs'] is None
    assert 'was not validated at 7 epochs' in folds.expectation_line(unvalidated)


@pytest.mark.slow
def test_a_final_recipe_that_names_its_record_cross_validates_without_it(
        uninterrupted, data, tmp_path):
    """A configured final recipe (--all-labelled, --crossval) is cross-validated as it stands:
    the folds drop the record, which only a final model may carry."""
    cv_dir, _ = uninterrupted
    recipe = tmp_path / 'final.json'
    recipe.write_text(json.dumps({'all_labelled': True,
                                  'crossval': str(cv_dir / 'crossval.json')}))
    argv = ['--config', str(recipe), *TINY, '--data-dir', str(data), '--epochs', '1']
    summary = crossval.main([*argv, '--cv-dir', str(tmp_path / 'again'), '--folds', 'A,B'])
    assert list(summary['folds']) == ['A', 'B'] and summary['best_epoch'] == 1
    fold = read(os.path.join(folds.fold_run(str(tmp_path / 'again'), 'A'), 'config.json'))
    assert fold['crossval'] is None and fold['val_groups'] == 'A'


def test_a_config_files_crossval_record_is_found_beside_the_file(tmp_path, monkeypatch):
    (tmp_path / 'recipes').mkdir()
    (tmp_path / 'records').mkdir()
    record = tmp_path / 'records' / 'cv.json'
    record.write_text(json.dumps({'metric': 'road IoU', 'folds': {}, 'epochs': [],
                                  'best_epoch': 2, 'best': {}}))
    recipe = tmp_path / 'recipes' / 'r.json'
    recipe.write_text(json.dumps({'crossval': '../records/cv.json'}))
    assert config.read_values(str(recipe))['crossval'] == str(record)
    monkeypatch.chdir(tmp_path / 'records')  # wherever the command runs from
    assert config.read_values(os.path.join('..', 'recipes', 'r.json'))['crossval'] == \
        os.path.normpath(os.path.join('..', 'records', 'cv.json'))
