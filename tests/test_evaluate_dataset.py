"""evaluate.py --dataset: a model scored on another data set's labels, its classes matched to the
model's by name (roadseg.data.matching), and the confusion matrix every evaluation writes
(confusion.csv, confusion.png). The model is a stand-in whose prediction is made by hand (road
where the image's red channel is bright), so that every figure is known."""
import contextlib
import io
import json
import os
import re

import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from roadseg import cli, drawing, evaluation, inference
from roadseg.commands import evaluate
from roadseg.data import layouts, matching
from roadseg.data.classes import VOID
from roadseg.errors import UserError
from roadseg.model_info import ModelInfo
from tests.conftest import NOT_ROAD, ROAD
from tests.conftest import VOID as VOID_RGB
from tests.test_fuzz_inputs import assert_refusal

CAMVID_ROAD = ModelInfo((8, 12), 2, ('other', 'road'), ((0, 0, 0), (128, 64, 128)),
                        dataset='camvid', remap='road=3')  # as the shipped camvid-road's
CAMVID11 = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
            'Pedestrian', 'Bicyclist')


def road_where_red(images):
    """The stand-in model: road where the red channel is above 128, with certainty."""
    road = (images[..., 0] > 128).astype(np.float32)
    return np.stack([1 - road, road], -1)


@pytest.fixture
def stand_in(monkeypatch):
    """evaluate.py loads `CAMVID_ROAD`'s stand-in, whatever --model says; returns the
    ModelInfo holder, so that a test can give it another."""
    holder = {'info': CAMVID_ROAD}
    monkeypatch.setattr(inference, 'load_model', lambda path, **_: inference.Model(
        path, 'stand-in', holder['info'], road_where_red))
    return holder


def hand_made_kitti(root, label='road', size=(8, 12), stems=('um_000000', 'um_000001')):
    """KITTI folders of `stems`: the left half road, the right half not road, the top row void;
    each image's red channel marks road on the left half and two more columns, and on its top
    row (void, which counts in neither figure)."""
    training = os.path.join(root, 'data_road', 'training')
    os.makedirs(os.path.join(training, 'image_2'))
    os.makedirs(os.path.join(training, 'gt_image_2'))
    height, width = size
    truth = np.zeros((height, width, 3), np.uint8)
    truth[:, :width // 2], truth[:, width // 2:], truth[0] = ROAD, NOT_ROAD, VOID_RGB
    image = np.full((height, width, 3), 60, np.uint8)
    image[:, :width // 2 + 2, 0] = 250
    image[0, :, 0] = 250
    for stem in stems:
        category, number = stem.split('_')
        iio.imwrite(os.path.join(training, 'image_2', stem + '.png'), image)
        iio.imwrite(os.path.join(training, 'gt_image_2', f'{category}_{label}_{number}.png'),
                    truth)
    return root


def run_evaluate(*argv):
    """evaluate.py as a user runs it: (exit status, printed lines, error lines)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main_guard(evaluate.main, [str(a) for a in argv])
    return status, out.getvalue().splitlines(), err.getvalue().splitlines()


# ----------------------------------------------------------------------------------------------
# Matching by name
# ----------------------------------------------------------------------------------------------

def test_kittis_road_is_a_camvid_road_models_road_and_not_road_its_other():
    match = matching.match(['not road', 'road'], ['other', 'road'], '--dataset kitti', 'm')
    assert match.names == ('other', 'road')
    assert match.truth[[0, 1, VOID]].tolist() == [0, 1, VOID]
    assert match.predicted.tolist() == [0, 1]
    assert match.record() == {'road': 'road', 'not road': 'other'} and match.void == ()
    assert match.describe('--dataset kitti') == ("--dataset kitti: classes matched to the "
                                                 "model's by name: road; counted as other: "
                                                 "not road")


def test_camvids_classes_are_matched_case_aside_and_the_rest_merged():
    """CamVid's Road is the road model's road; a CamVid 11-class model on KITTI Road has road
    and the rest of its ten classes, merged as other."""
    onto_road = matching.match(list(CAMVID11), ['other', 'road'], '--dataset camvid', 'm')
    assert onto_road.names == ('other', 'road')
    assert onto_road.truth[:12].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, VOID]
    street = matching.match(['not road', 'road'], list(CAMVID11), '--dataset kitti', 'm')
    assert street.names == ('other', 'Road') and street.merged == CAMVID11[:3] + CAMVID11[4:]
    assert street.predicted.tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert street.truth[:2].tolist() == [0, 1]
    probabilities = np.full((1, 1, 11), 0.05, np.float32)
    probabilities[..., 3] = 0.5
    assert street.road_probability(probabilities).tolist() == [[0.5]]


def test_a_class_the_model_cannot_stand_for_is_void():
    """A model whose every class is matched has no rest: the data set's other classes are
    void, and the line says so."""
    match = matching.match(['road', 'sky', 'car'], ['Road', 'Sky'], '--dataset folder', 'm')
    assert match.names == ('Road', 'Sky') and match.void == ('car',)
    assert match.truth[:3].tolist() == [0, 1, VOID]
    assert 'void, as the model has no such class (scored in neither figure): car' in \
        match.describe('--dataset folder')


@pytest.mark.parametrize('data, model', [
    (['not lane', 'lane'], ['other', 'road']),  # KITTI's ego-lane truth, a road model
    (['not road', 'road'], ['background', 'lane']),
    (['not road', 'road'], ['not road', 'sky']),  # only the rest in common
])
def test_no_class_in_common_is_one_line_naming_the_flag_and_the_model(data, model):
    with pytest.raises(UserError, match='nothing to score') as refused:
        matching.match(data, model, '--dataset kitti', 'camvid-road')
    assert_refusal(refused.value, '--dataset kitti')
    assert 'camvid-road' in str(refused.value) and ', '.join(model) in str(refused.value)


def test_kittis_lane_truth_is_named_lane_and_a_missing_truth_names_the_other(tmp_path):
    assert layouts.kitti_classes('lane').names == ['not lane', 'lane']
    assert layouts.kitti_classes().names == ['not road', 'road']
    hand_made_kitti(tmp_path, label='lane')
    with pytest.raises(UserError, match=r'no \*_road_\*.png ground truth found; it holds lane '
                                        r'ground truth \(--label lane\)'):
        layouts.kitti_pairs(str(tmp_path / 'data_road' / 'training'), 'road')


# ----------------------------------------------------------------------------------------------
# evaluate.py --dataset
# ----------------------------------------------------------------------------------------------

def test_dataset_kitti_scores_a_camvid_road_model_by_name(tmp_path, stand_in):
    """Two 8x12 images, each of 84 scored pixels: 42 road, all found, and 42 not road, 14 of
    them taken for road; the void row, all taken for road, counts in neither figure."""
    data = hand_made_kitti(tmp_path / 'kitti')
    status, printed, errors = run_evaluate('--model', tmp_path / 'model.tflite', '--dataset',
                                           'kitti', '--data-dir', data, '--split', 'all',
                                           '--output-dir', tmp_path / 'out')
    assert (status, errors) == (0, [])
    assert "--dataset kitti: classes matched to the model's by name: road; counted as other: " \
           "not road" in printed
    results = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert results['classes'] == ['other', 'road'] and results['dataset'] == 'kitti'
    assert results['data_classes'] == {'road': 'road', 'not road': 'other'}
    assert results['confusion'] == [[56, 28], [0, 84]]
    assert results['iou'] == pytest.approx([56 / 84, 84 / 112])
    assert results['pixels'] == 2 * 7 * 12
    assert results['kitti_road']['recall'] == 1.0
    assert (tmp_path / 'out' / 'confusion.csv').read_text() == (
        'true \\ predicted,other,road\n'
        'other,56,28\n'
        'road,0,84\n')
    picture = iio.imread(tmp_path / 'out' / 'confusion.png')
    assert picture.shape == (drawing.TITLE + drawing.LABEL + 2 * drawing.CELL + drawing.PAD,
                             drawing.LABEL + 2 * drawing.CELL + drawing.COUNTS, 3) == (276, 310, 3)
    # the table: the model's class names, road IoU 0.75
    assert any(line.split()[:3] == ['road', '1.0000', '0.7500'] for line in printed), printed


def test_a_model_of_one_size_scores_labels_at_their_own(tmp_path, stand_in):
    """The 8x12 model on 16x24 images: its prediction is resized to the label, which is not
    resized, so every labelled pixel is scored once."""
    data = hand_made_kitti(tmp_path / 'kitti', size=(16, 24))
    status, _, errors = run_evaluate('--model', tmp_path / 'model.tflite', '--dataset', 'kitti',
                                     '--data-dir', data, '--split', 'all', '--output-dir',
                                     tmp_path / 'out')
    assert (status, errors) == (0, [])
    results = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert results['pixels'] == 2 * 15 * 24
    assert np.sum(results['confusion'], 1).tolist() == [2 * 15 * 12, 2 * 15 * 12]
    assert results['iou'][1] == pytest.approx(180 / 210, abs=0.05)


def test_a_data_set_sharing_no_class_stops_in_one_line_before_any_output(tmp_path, stand_in):
    data = hand_made_kitti(tmp_path / 'kitti', label='lane')
    status, _, errors = run_evaluate('--model', 'camvid-road-copy.tflite', '--dataset', 'kitti',
                                     '--label', 'lane', '--data-dir', data, '--split', 'all',
                                     '--output-dir', tmp_path / 'out')
    assert status == 2 and len(errors) == 1
    assert errors[0].startswith('error: --dataset kitti --label lane: none of its classes (not '
                                'lane, lane) is named as a class of the model '
                                'camvid-road-copy.tflite (other, road)')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('label, argv, message', [
    ('road', ['--dataset', 'kitti', '--split', 'val'],
     "--split val with --dataset kitti: a run's split names images of the data set it trained "
     "on, and .* has no validation images of its own; use --split all"),
    ('road', ['--dataset', 'kitti', '--split', 'seen'],
     "--split seen with --dataset kitti: a run's split names images of the data set it trained "
     "on; use --split all"),
    ('road', ['--dataset', 'folder', '--label', 'lane'],
     "--label lane: it chooses KITTI's ground truth, and the labels here are folder's"),
    ('lane', ['--dataset', 'kitti', '--split', 'all'],
     r'no \*_road_\*.png ground truth found; it holds lane ground truth \(--label lane\)'),
])
def test_dataset_refusals_are_one_line(tmp_path, stand_in, label, argv, message):
    data = hand_made_kitti(tmp_path / 'kitti', label=label)
    status, _, errors = run_evaluate('--model', 'm.tflite', '--data-dir', data, '--output-dir',
                                     tmp_path / 'out', *argv)
    assert status == 2 and len(errors) == 1, errors
    assert re.search(message, errors[0]), errors[0]


def test_without_dataset_the_own_classes_are_scored_and_the_matrix_written(tmp_path, stand_in):
    """A KITTI model on its own data set: today's scoring, and the confusion matrix in its
    class names; a folder at confusion.png stops the command before the work."""
    stand_in['info'] = ModelInfo((8, 12), 2, ('not road', 'road'), (NOT_ROAD, ROAD),
                                 dataset='kitti', label='road')
    data = hand_made_kitti(tmp_path / 'kitti')
    argv = ('--model', tmp_path / 'model.tflite', '--data-dir', data, '--split', 'all',
            '--output-dir', tmp_path / 'out')
    status, printed, _ = run_evaluate(*argv)
    assert status == 0 and not any('matched' in line for line in printed)
    results = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert results['classes'] == ['not road', 'road'] and 'dataset' not in results
    assert (tmp_path / 'out' / 'confusion.csv').read_text().splitlines() == [
        'true \\ predicted,not road,road', 'not road,56,28', 'road,0,84']
    (tmp_path / 'out' / 'confusion.png').unlink()
    (tmp_path / 'out' / 'confusion.png').mkdir()
    status, _, errors = run_evaluate(*argv)
    assert status == 2 and len(errors) == 1
    assert 'confusion.png (the confusion matrix picture): a folder is there' in errors[0]


def test_confusion_csv_quotes_names_and_keeps_the_order():
    text = evaluation.confusion_csv([[1, 2, 0], [0, 3, 4], [5, 0, 6]],
                                    ['a', 'b, c', 'd "e"'])
    assert text.splitlines() == ['true \\ predicted,a,"b, c","d ""e"""', 'a,1,2,0', '"b, c",0,3,4',
                                 '"d ""e""",5,0,6']


def test_the_confusion_picture_grows_a_cell_a_class_and_greys_an_empty_row():
    two = drawing.confusion_picture([[3, 1], [0, 0]], ['other', 'road'])
    three = drawing.confusion_picture(np.eye(3, dtype=int), ['a', 'b', 'a name longer than '
                                                                       'its band is cut'])
    assert np.subtract(three.shape, two.shape).tolist() == [drawing.CELL, drawing.CELL, 0]
    top, left = drawing.TITLE + drawing.LABEL, drawing.LABEL
    empty_row = two[top + drawing.CELL + 3, left + 3]
    assert empty_row.tolist() == [220, 220, 220]
    full = three[top + 3, left + 3]
    assert full.tolist() == list(drawing.CONFUSION_RGB)  # 100 % of the row


# ----------------------------------------------------------------------------------------------
# The flags
# ----------------------------------------------------------------------------------------------

@given(st.sampled_from(['--dataset', '--label']),
       st.sampled_from(sorted(layouts.READERS) + list(layouts.LABELS)) | st.text(max_size=20))
@example('--dataset', 'kitti')
@example('--dataset', 'KITTI')
@example('--label', '-x')
def test_dataset_and_label_flags_are_a_choice_or_one_line(flag, value):
    try:
        args = evaluate.parser().parse_args(['--model', 'm', '--data-dir', 'd', flag, value])
    except UserError as e:
        assert_refusal(e, flag)
        return
    choices = sorted(layouts.READERS) if flag == '--dataset' else layouts.LABELS
    assert getattr(args, flag[2:]) == value and value in choices


def test_scoring_images_the_run_trained_on_says_how_many(tmp_path):
    """A run's model scored on images of its split.json's train is told so, whether named by
    its folder or by an export in it; held-out images alone, or a model of no run, are not."""
    run = tmp_path / 'run'
    (run / 'export').mkdir(parents=True)
    (run / 'split.json').write_text(json.dumps({'train': ['a.png', 'b.png'], 'val': ['c.png'],
                                                'seen': []}))
    pairs = [('data/a.png', 'a_label.png'), ('data/c.png', 'c_label.png')]
    for model in (run, run / 'export' / 'model.tflite'):
        note = evaluation.trained_on(str(model), pairs)
        assert note.startswith('note: 1 of these 2 images are among the 2 the model trained on')
    assert evaluation.trained_on(str(run), pairs[1:]) is None
    assert evaluation.trained_on(str(tmp_path / 'model.tflite'), pairs) is None


def test_a_run_that_held_no_image_out_is_scored_on_every_labelled_image_by_default(tmp_path):
    """A final model (--all-labelled) has no validation images: evaluate and export's check
    default to every labelled image, and the note says there is no held-out figure."""
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'split.json').write_text(json.dumps({'train': ['a.png'], 'val': [], 'seen': []}))
    assert evaluation.default_split(str(run)) == 'all'
    assert 'it held none out' in evaluation.trained_on(str(run), [('a.png', 'a_label.png')])
    (run / 'split.json').write_text(json.dumps({'train': ['a.png'], 'val': ['b.png']}))
    assert evaluation.default_split(str(run)) == 'val'
    assert evaluation.default_split(str(tmp_path / 'model.tflite')) == 'val'


NAMES = st.sampled_from(['road', 'Road', 'road_', 'other', 'not road', 'Sky', 'sky', 'car',
                         'background', 'lane', 'not lane', 'Pedestrian', 'tree'])


@given(st.lists(NAMES, min_size=1, max_size=6, unique=True),
       st.lists(NAMES, min_size=2, max_size=6, unique=True))
def test_any_two_class_lists_are_matched_consistently_or_refused_in_one_line(data, model):
    """Whatever the names: a UserError in one line, or scored classes of distinct names whose
    tables stay in range, each name-matched pair scored as one class."""
    try:
        found = matching.match(data, model, '--dataset folder', 'm')
    except UserError as e:
        assert '\n' not in str(e) and str(e).startswith(('--dataset folder: ', 'the model m: '))
        return
    assert len(set(found.names)) == len(found.names)
    assert set(found.names) <= set(model) | {'other'}
    scored = range(len(found.names))
    assert all(v in scored for v in found.predicted)
    assert all(v in scored or v == VOID for v in found.truth[:len(data)])
    assert all(v == VOID for v in found.truth[len(data):])
    for data_name, model_name in found.pairs:
        assert found.truth[data.index(data_name)] == found.predicted[model.index(model_name)]
    assert set(found.record()) == set(data)
