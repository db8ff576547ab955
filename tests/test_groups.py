"""Sequence-aware validation: images grouped by where they were filmed, whole groups held out,
on synthetic names and tiny data sets."""
import json
import os
import re

import pytest

import main
from roadseg import evaluation
from roadseg.commands import evaluate
from roadseg.data import groups
from roadseg.data.config import RULES, DataConfig
from roadseg.errors import UserError
from roadseg.model_info import ModelInfo
from roadseg.training import inputs, options
from tests.conftest import make_kitti
from tests.test_datasets import image, index_label, write

ALPHA = 0.35


@pytest.mark.parametrize('dataset, name, group', [
    ('camvid', 'train/0016E5_07959.png', '0016E5'),
    ('camvid', '/data/val/0006R0_f02400.jpg', '0006R0'),
    ('camvid', 'Seq05VD_f00030.png', 'Seq05VD'),
    ('camvid32', '0001TP_008550_L.png', '0001TP'),
    ('kitti', 'image_2/um_000012.png', 'um'),
    ('kitti', 'umm_000001.png', 'umm'),
    ('kitti', 'uu_000099.png', 'uu'),
])
def test_each_data_set_groups_by_its_names(dataset, name, group):
    assert groups.grouper(dataset)(name) == group


def test_a_regex_groups_by_its_first_capture_or_whole_match():
    assert groups.grouper('folder', r'drive(\d+)')('images/x_drive07_f001.png') == '07'
    assert groups.grouper('folder', r'^[a-z]+')('images/city_0001.jpg') == 'city'
    with pytest.raises(UserError, match=r'images/0001\.jpg: its name does not match'):
        groups.grouper('folder', r'^[a-z]+')('images/0001.jpg')
    with pytest.raises(UserError, match='not a regular expression'):
        groups.grouper('folder', r'(')
    with pytest.raises(UserError, match='--group-by'):
        groups.grouper('folder')  # a folder data set has no rule of its own


def test_a_groups_file_maps_stems_or_file_names(tmp_path):
    path = tmp_path / 'groups.json'
    path.write_text(json.dumps({'a': 'north', 'b.png': 'south'}))
    group_of = groups.grouper('folder', str(path))
    assert [group_of(f'images/{n}') for n in ('a.jpg', 'b.png')] == ['north', 'south']
    with pytest.raises(UserError, match=r'c\.png: not in the groups file'):
        group_of('images/c.png')
    path.write_text(json.dumps(['a', 'b']))
    with pytest.raises(UserError, match='one JSON object'):
        groups.grouper('folder', str(path))


def test_the_data_config_names_its_split_and_keeps_every_rule(tmp_path):
    assert DataConfig().final is False and DataConfig(all_labelled=True).final is True
    held = DataConfig(dataset='camvid', val_groups=' 0001TP, 0006R0,', all_labelled=True)
    assert held.held_out == ['0001TP', '0006R0'] and not held.final
    assert held.grouper()('0006R0_f02400.png') == '0006R0'
    refused = {
        '--dataset bdd100k: use one of': dict(dataset='bdd100k'),
        '--label lanes: use one of road, lane': dict(label='lanes'),
        '--val-fraction 1: must be at least 0 and below 1': dict(val_fraction=1),
        '--val-fraction nan': dict(val_fraction=float('nan')),
        '--seed: -2 must be a whole number from 0 up': dict(seed=-2),
        '--cache disk: use one of auto, memory, none': dict(cache='disk'),
        "--group-by '(': not a regular expression": dict(group_by='('),
        'missing.json: class file not found': dict(classes=str(tmp_path / 'missing.json')),
        "--augment: unknown option 'zoom'": dict(augment='zoom=1'),
    }
    for message, fields in refused.items():
        with pytest.raises(UserError, match=re.escape(message)):
            DataConfig(**fields)
    assert len(RULES) == 2  # the rest are the fields' choices
    assert options.parse_args(['--dataset', 'camvid', '--val-groups', 'A']).data == \
        DataConfig(dataset='camvid', val_groups='A')


def test_hold_out_and_count_keep_order():
    pairs = [(f'{g}_{i}.png', None) for i, g in enumerate('ABACB')]
    group_of = groups.grouper('camvid')
    assert groups.count(pairs, group_of) == {'A': 2, 'B': 2, 'C': 1}
    rest, held = groups.hold_out(pairs, ['A', 'C'], group_of)
    assert [p for p, _ in rest] == ['B_1.png', 'B_4.png']
    assert [p for p, _ in held] == ['A_0.png', 'A_2.png', 'C_3.png']


def make_drives(root):
    """A CamVid layout of three drives: train/ holds drives A, B and C, val/ drive C only (as
    CamVid's val/ is all 0016E5)."""
    layout = {'train': ['A_000010', 'A_000020', 'B_000010', 'B_000020', 'C_000010', 'C_000020'],
              'val': ['C_000030', 'C_000040']}
    for split, stems in layout.items():
        for i, stem in enumerate(stems):
            write(os.path.join(root, split, stem + '.png'), image(i, (32, 64)))
            write(os.path.join(root, split + 'annot', stem + '.png'), index_label((32, 64)))
    return root


def names(pairs):
    return [os.path.basename(image_path) for image_path, _ in pairs]


def split_of(*flags):
    return inputs.data_split(options.parse_args(list(flags)).data)[1:]


def test_held_out_groups_take_every_image_of_theirs_and_none_trains(tmp_path):
    data = make_drives(tmp_path / 'camvid')
    train, val, seen = split_of('--dataset', 'camvid', '--data-dir', str(data),
                                '--val-groups', 'B')
    assert names(train) == ['A_000010.png', 'A_000020.png', 'C_000010.png', 'C_000020.png']
    assert names(val) == ['B_000010.png', 'B_000020.png']
    assert names(seen) == ['C_000030.png', 'C_000040.png']  # val/ outside the held-out group
    # Holding out C takes its val/ images too; no unseen images of the training drives are left.
    train, val, seen = split_of('--dataset', 'camvid', '--data-dir', str(data),
                                '--val-groups', 'C, A')
    assert names(train) == ['B_000010.png', 'B_000020.png']
    assert names(val) == ['A_000010.png', 'A_000020.png', 'C_000010.png', 'C_000020.png',
                          'C_000030.png', 'C_000040.png']
    assert seen == []
    # Without --val-groups, CamVid's own val/ and nothing beside it.
    train, val, seen = split_of('--dataset', 'camvid', '--data-dir', str(data))
    assert (len(train), names(val), seen) == (6, ['C_000030.png', 'C_000040.png'], [])


@pytest.mark.parametrize('groups_flag, message', [
    ('D', r"no image is of group 'D'; the groups are A \(2 images\), B \(2 images\), "
          r"C \(4 images\)"),
    ('A,B,C', 'holds out every training image'),
])
def test_bad_val_groups_are_one_line(tmp_path, groups_flag, message):
    data = make_drives(tmp_path / 'camvid')
    with pytest.raises(UserError, match=message):
        split_of('--dataset', 'camvid', '--data-dir', str(data), '--val-groups', groups_flag)


def test_kitti_holds_out_a_category_and_splits_the_others_for_the_in_group_figure(tmp_path):
    data = tmp_path / 'kitti'
    stems = tuple(f'{c}_{i:06d}' for c in ('um', 'umm', 'uu') for i in range(4))
    make_kitti(data, stems=stems)
    train, val, seen = split_of('--data-dir', str(data), '--val-groups', 'uu',
                                '--val-fraction', '0.25')
    assert names(val) == [f'uu_{i:06d}.png' for i in range(4)]
    assert len(seen) == 2 and len(train) == 6
    assert not {n.split('_')[0] for n in names(train + seen)} & {'uu'}
    assert not set(names(train)) & set(names(seen))


@pytest.mark.slow
def test_a_run_never_trains_on_its_held_out_group_and_reports_both_figures(tmp_path):
    """main.py with --val-groups: split.json records the groups, no training image is of a
    held-out group, every validation scores the unseen images of the training groups beside
    the held-out ones, and evaluate.py --split val|seen reproduces both figures."""
    data = make_drives(tmp_path / 'camvid')
    run_dir = main.run(['--dataset', 'camvid', '--remap', 'road=3', '--data-dir', str(data),
                        '--runs-dir', str(tmp_path / 'runs'), '--encoder', 'mobilenetv2',
                        '--encoder-weights', 'none', '--alpha', str(ALPHA), '--batch-size', '2',
                        '--image-shape', '32x64', '--learning-rate', '0.01', '--epochs', '2',
                        '--val-groups', 'A', '--augment', 'gamma=0.5,hue=0.05,noise=0.02'])
    split = json.loads(open(os.path.join(run_dir, 'split.json')).read())
    group_of = groups.grouper('camvid')
    assert {group_of(n) for n in split['train']} == {'B', 'C'}
    assert {group_of(n) for n in split['val']} == {'A'}
    assert split['seen'] == ['C_000030.png', 'C_000040.png']
    assert split['groups'] == {'train': {'B': 2, 'C': 2}, 'val': {'A': 2}, 'seen': {'C': 2}}
    metrics = json.loads(open(os.path.join(run_dir, 'metrics.json')).read())
    best = next(r for r in metrics['epochs'] if r['epoch'] == metrics['best_epoch'])
    assert all('seen' in r for r in metrics['epochs'] if 'val' in r)
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert '4 training and 2 validation images (held-out groups A), 2 unseen images of the ' \
           'training groups scored beside' in log
    assert f'best epoch {best["epoch"]}: held-out groups A road IoU {best["val"]["iou"][1]:.4f}' \
           in log
    assert f"training groups' unseen images road IoU {best['seen']['iou'][1]:.4f}" in log
    for split_name, key in (('val', 'val'), ('seen', 'seen')):
        evaluate.main(['--model', run_dir, '--data-dir', str(data), '--split', split_name])
        got = json.loads(open(os.path.join(run_dir, f'eval-{split_name}',
                                           'metrics.json')).read())
        assert got['iou'] == pytest.approx(best[key]['iou'], abs=1e-9)
    # Resumed, the run keeps its split, the unseen images included.
    main.run(['--resume', run_dir, '--epochs', '3'])
    metrics = json.loads(open(os.path.join(run_dir, 'metrics.json')).read())
    assert 'seen' in metrics['epochs'][-1]
    assert json.loads(open(os.path.join(run_dir, 'split.json')).read()) == split


def test_evaluate_split_seen_needs_a_run_with_held_out_groups(tmp_path):
    run_dir = tmp_path / 'run'
    (run_dir / 'model').mkdir(parents=True)
    (run_dir / 'split.json').write_text(json.dumps({'train': ['a.png'], 'val': ['b.png']}))
    info = ModelInfo((32, 64), 2, ('not road', 'road'), ((0, 0, 0), (128, 64, 128)),
                     dataset='camvid', remap='road=3')
    data = make_drives(tmp_path / 'camvid')
    with pytest.raises(UserError, match='--split seen: .* lists no such images'):
        evaluation.evaluation_data(str(run_dir), str(data), info, 'seen')
