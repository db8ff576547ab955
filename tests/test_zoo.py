"""Shipped models (roadseg/shipped/, roadseg.zoo): --model NAME in predict, serve and evaluate,
the road model by default, export.py --ship rebuilding one from a run with its card, and the
commit a run records (git.commit)."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadseg import cli, cpu, evaluation, files, git, inference, zoo
from roadseg import export as formats
from roadseg.commands import evaluate, export, predict, serve
from roadseg.errors import PartlyFailed, UserError
from roadseg.model_info import ModelInfo
from tests.conftest import ROOT, SHARED_DATA
from tests.test_mobilenet import train_tiny_run


def test_a_name_resolves_to_its_shipped_file_and_anything_else_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, 'DIR', str(tmp_path / 'models'))
    with pytest.raises(UserError, match=r'--model camvid11: the shipped model .*models/camvid11/'
                                        r'model_int8.tflite is missing; .* python export.py '
                                        r'--model RUN --ship camvid11') as missing:
        zoo.resolve('camvid11')
    assert len(str(missing.value).splitlines()) == 1
    (tmp_path / 'models' / 'camvid-road').mkdir(parents=True)
    (tmp_path / 'models' / 'camvid-road' / zoo.FILE).write_bytes(b'')
    found = str(tmp_path / 'models' / 'camvid-road' / zoo.FILE)
    assert zoo.resolve(None) == zoo.resolve('camvid-road') == found
    assert zoo.describe(None, found) == \
        f'model: camvid-road, the shipped road against the rest, CamVid ({found})'
    assert zoo.resolve('runs/x') == 'runs/x' and zoo.describe('runs/x', 'runs/x') == \
        'model: runs/x'
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'camvid11').mkdir()  # a folder of that name here is what the user means
    assert zoo.resolve('camvid11') == 'camvid11'


@given(st.text(max_size=40))
def test_any_model_text_resolves_or_is_refused_in_one_line(text):
    try:
        resolved = zoo.resolve(text)
    except UserError as e:
        assert text in zoo.SHIPPED and len(str(e).splitlines()) == 1
        return
    assert resolved == text or resolved == zoo.path(text)


def test_git_commit_reads_loose_packed_detached_and_worktree_heads(tmp_path):
    sha, other = 'a' * 40, 'b' * 40
    dot_git = tmp_path / 'repo' / '.git'
    (dot_git / 'refs' / 'heads').mkdir(parents=True)
    (dot_git / 'HEAD').write_text('ref: refs/heads/main\n')
    (dot_git / 'refs' / 'heads' / 'main').write_text(sha + '\n')
    (tmp_path / 'repo' / 'pkg').mkdir()
    assert git.commit(tmp_path / 'repo' / 'pkg') == sha
    (dot_git / 'refs' / 'heads' / 'main').unlink()
    (dot_git / 'packed-refs').write_text(f'# pack-refs\n{other} refs/heads/dev\n{sha} '
                                         f'refs/heads/main\n')
    assert git.commit(tmp_path / 'repo') == sha
    (dot_git / 'HEAD').write_text(other + '\n')
    assert git.commit(tmp_path / 'repo') == other
    (dot_git / 'worktrees' / 'w').mkdir(parents=True)  # a worktree: .git is a file
    (dot_git / 'worktrees' / 'w' / 'HEAD').write_text('ref: refs/heads/main\n')
    (dot_git / 'worktrees' / 'w' / 'commondir').write_text('../..\n')
    (tmp_path / 'w').mkdir()
    (tmp_path / 'w' / '.git').write_text(f'gitdir: {dot_git / "worktrees" / "w"}\n')
    assert git.commit(tmp_path / 'w') == sha
    (dot_git / 'HEAD').write_text('ref: refs/heads/gone\n')
    assert git.commit(tmp_path / 'repo') is None
    assert git.commit('/') is None


@pytest.fixture(scope='module')
def final_run(tmp_path_factory):
    """A tiny final run (--all-labelled, eight epochs) with its data."""
    return train_tiny_run(tmp_path_factory.mktemp('final'), '--epochs', '8', '--input-norm',
                          'image', '--all-labelled')


@pytest.mark.slow
def test_ship_rebuilds_a_shipped_model_with_its_card_and_every_command_takes_its_name(
        final_run, tmp_path, monkeypatch, capsys):
    data, run_dir = final_run
    monkeypatch.setattr(zoo, 'DIR', str(tmp_path / 'models'))
    monkeypatch.setitem(formats.TOLERANCES, 'int8', (None, 1.0))  # int8's own test is elsewhere
    config = json.loads(open(os.path.join(run_dir, 'config.json')).read())
    assert config['command'].startswith('python main.py --data-dir ')
    assert config['commit'] == git.commit(ROOT)
    export.main(['--model', run_dir, '--ship', 'camvid-road', '--check-dir', str(data),
                 '--calibration-images', '4'])
    shipped = tmp_path / 'models' / 'camvid-road'
    assert sorted(os.listdir(shipped)) == ['card.json', 'fcn.json', 'manifest.json', zoo.FILE]
    card = json.loads((shipped / 'card.json').read_text())
    # The card's paths read relative to the repository, so that it reads right in any clone.
    assert card['command'] == zoo.portable(config['command']) != config['command']
    assert card['command'].startswith('python main.py --data-dir ../')
    assert card['commit'] == config['commit']
    assert card['trained_on'] == ('6 labelled images of kitti (every labelled one), '
                                  '8 epochs, from scratch')
    assert card['quality']['crossval'] == 'not cross-validated'
    assert 'val' not in card['quality']  # KITTI has no validation images of its own
    assert card['quality']['int8'].startswith('road IoU ') and '6 labelled images of' in \
        card['quality']['int8'] and card['quality']['int8'].endswith('not of the model')
    assert card['input_size'] == '32x64' and card['classes'] == ['not road', 'road']
    assert 0 < card['megabytes'] < 1 and card['speed'].endswith(
        f"on {len(os.sched_getaffinity(0))} cores: {cpu.model()})")
    readme = (tmp_path / 'models' / 'README.md').read_text()
    assert '## `camvid-road`: road against the rest, CamVid' in readme
    assert f'| trained by | `{card["command"]}` at commit {config["commit"]} |' in readme
    assert '## `camvid11`' not in readme  # not shipped
    capsys.readouterr()
    # The road model is predict.py's default; evaluate.py takes the name.
    image = data / 'data_road' / 'training' / 'image_2' / 'um_000000.png'
    monkeypatch.chdir(tmp_path)
    predict.main([str(image), '--output-dir', str(tmp_path / 'out')])
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f'model: camvid-road, the shipped road against the rest, CamVid ' \
                    f'({shipped / zoo.FILE})'
    assert (tmp_path / 'out' / 'um_000000.png').is_file()
    evaluate.main(['--model', 'camvid-road', '--data-dir', str(data), '--split', 'all'])
    assert capsys.readouterr().out.startswith('model: camvid-road, the shipped')
    scored = json.loads((tmp_path / 'runs' / 'camvid-road-eval-all' / 'metrics.json').read_text())
    assert scored['model'] == str(shipped / zoo.FILE)
    # A rebuilt model outside its tolerance ships nothing: the shipped one stays as it was.
    before = (shipped / zoo.FILE).read_bytes()
    monkeypatch.setitem(formats.TOLERANCES, 'int8', (None, -1.0))
    with pytest.raises(PartlyFailed, match='int8 disagree .* tolerance; nothing shipped'):
        export.main(['--model', run_dir, '--ship', 'camvid-road', '--check-dir', str(data),
                     '--calibration-images', '4'])
    assert (shipped / zoo.FILE).read_bytes() == before
    assert sorted(os.listdir(tmp_path / 'models')) == ['README.md', 'camvid-road']


def test_ship_refuses_other_outputs_and_a_model_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match='--ship camvid-road writes the int8 file into '
                                        'roadseg/shipped/camvid-road/: leave out --output-dir'):
        export.parse_args(['--model', 'x', '--ship', 'camvid-road', '--formats', 'int8'])
    with pytest.raises(UserError, match="argument --ship: invalid choice: 'kitti'"):
        export.parse_args(['--model', 'x', '--ship', 'kitti'])


def test_serve_without_a_model_names_the_missing_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, 'DIR', str(tmp_path / 'models'))
    with pytest.raises(UserError, match=r'--model camvid-road: the shipped model .* is '
                                        r'missing'):
        serve.main([])


def test_predict_writes_into_runs_without_an_output_dir():
    args = predict.parse_args(['image.png'])
    assert args.model is None and args.output_dir.startswith(os.path.join('runs', 'predict-'))
    assert predict.parse_args(['x.png', '--output-dir', 'o']).output_dir == 'o'


def shipped_or_skip(name):
    """The shipped model `name`'s file, or a skip saying it is not in this checkout."""
    path = zoo.path(name)
    if not os.path.isfile(path):
        pytest.skip(f'{name} is not shipped in this checkout ({path} is absent)')
    return path


@pytest.mark.parametrize('name', sorted(zoo.SHIPPED))
def test_each_shipped_model_loads_checks_and_segments_and_a_damaged_copy_is_one_line(
        name, tmp_path, capsys):
    path = shipped_or_skip(name)
    assert files.manifest_problem(os.path.dirname(path), [zoo.FILE]) is None
    with inference.load_model(path) as model:
        assert model.kind == 'tflite-int8' and model.info == ModelInfo.from_json(zoo_info(name))
        image = np.random.default_rng(0).integers(0, 256, (*model.image_shape, 3), np.uint8)
        (probabilities,) = inference.segment(model, [image])
    assert probabilities.shape == (*model.image_shape, model.num_classes)
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=0.02)
    copy = tmp_path / name
    shutil.copytree(os.path.dirname(path), copy)
    data = bytearray((copy / zoo.FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / zoo.FILE).write_bytes(bytes(data))
    assert cli.main_guard(predict.main, ['--model', str(copy / zoo.FILE), 'x.png']) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(rf'error: --model {re.escape(str(copy / zoo.FILE))}: .*SHA-256.*; the '
                        r'model is damaged: copy or export it again', line), line


def zoo_info(name):
    return files.read_json(os.path.join(zoo.folder_of(name), inference.MODEL_INFO))


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(zoo.SHIPPED))
def test_each_shipped_model_scores_val_as_its_card_says(name, tmp_path):
    shipped_or_skip(name)
    data = os.path.join(SHARED_DATA, 'camvid')
    if not os.path.isdir(data):
        pytest.skip(f'no CamVid at {data}: the card\'s val/ figure is checked where it is')
    card = files.read_json(os.path.join(zoo.folder_of(name), zoo.CARD))
    figure = float(re.match(r'\S+ IoU ([0-9.]+) on val/', card['quality']['val'])[1])
    evaluate.main(['--model', name, '--data-dir', data, '--output-dir', str(tmp_path)])
    scored = json.loads((tmp_path / 'metrics.json').read_text())
    assert abs(evaluation.key_metric(scored) - figure) <= 0.005, (scored, figure)


def test_a_card_writes_absolute_paths_relative_to_the_repository():
    outside = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'camvid')
    command = f'python main.py --data-dir {outside} --runs-dir {ROOT}/runs --config a.json'
    written = zoo.portable(command)
    assert written == ('python main.py --data-dir ../shared/data/camvid --runs-dir runs '
                       '--config a.json')
    assert zoo.portable("the run's validation images") == "the run's validation images"
    assert zoo.portable(None) is None


def test_tracked_files_hold_no_absolute_path_of_a_machine():
    """A clone reads right anywhere: no tracked text names this machine's folders."""
    if not os.path.isdir(os.path.join(ROOT, '.git')):
        pytest.skip('not a git checkout')
    import subprocess
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split('\0')
    pattern = re.compile(r'(?<![\w.:])/(?:work|home|root|Users)/')
    found = []
    for name in filter(None, tracked):
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path) or os.path.getsize(path) > 2_000_000:
            continue
        with open(path, 'rb') as f:
            data = f.read()
        if b'\0' in data:  # binary
            continue
        found += [f'{name}: {m.group(0)}' for m in pattern.finditer(data.decode('utf-8',
                                                                                'replace'))]
    assert found == []


def test_a_shipped_model_scored_on_the_data_it_trained_on_says_so():
    """evaluate.py --model camvid11 on CamVid scores images the model trained on: the note
    says so and gives the card's figure for a new street instead."""
    note = zoo.seen_in_training('camvid11', 'camvid')
    assert note.startswith('note: camvid11 trained on every labelled image of camvid')
    assert 'mean IoU 0.419 +- 0.035' in note
    assert zoo.seen_in_training('camvid-road', 'kitti') is None  # not what it trained on
    assert zoo.seen_in_training('runs/20261207-120000', 'camvid') is None  # not shipped


@pytest.mark.parametrize('name', sorted(zoo.SHIPPED))
def test_a_shipped_fcn_json_holds_only_the_fields_of_its_model(name):
    """No null and no field of another model (a KITTI label, FC-DenseNet's depth) in what
    ships: the file is what ModelInfo writes for it."""
    from roadseg.model_info import ModelInfo
    folder = os.path.dirname(zoo.resolve(name))
    written = files.read_json(os.path.join(folder, 'fcn.json'))
    assert written == ModelInfo.from_json(written).to_json()
    assert files.manifest_problem(folder, complete=False) is None


def test_a_card_gives_no_cross_validated_figure_for_epochs_the_cross_validation_did_not_score(
        tmp_path):
    """A run trained for an epoch count its recipe's cross-validation did not validate gets
    no figure of another epoch as its own: the card says so, and gives the best beside."""
    from roadseg.model_info import ModelInfo
    run = tmp_path / 'run'
    run.mkdir()
    files.write_json(run / 'config.json', {'dataset': 'camvid', 'epochs': 1,
                                           'all_labelled': True})
    files.write_json(run / 'split.json', {'train': ['a.png'], 'val': [], 'seen': []})
    best = {'epoch': 36, 'mean': 0.8841, 'std': 0.0316}
    files.write_json(run / 'crossval.json', {'source': 'cv.json', 'metric': 'road IoU',
                                             'epochs': 1, 'at_epochs': None, 'best': best,
                                             'folds': {'A': 10, 'B': 12}})
    (tmp_path / 'model.tflite').write_bytes(b'0')
    info = ModelInfo((8, 8), 2, ('other', 'road'), ((0, 0, 0), (255, 0, 255)))
    checked = {'result': {'iou': 0.0, 'class_agreement': 1.0}, 'original': 0.0, 'images': 1,
               'source': 'x'}
    card = zoo.card('camvid-road', str(run), info, checked, 5.0, str(tmp_path / 'model.tflite'))
    assert card['quality']['crossval'].startswith(
        "not cross-validated at its 1 epochs; its recipe's best: road IoU 0.884 +- 0.032")
    assert card['quality']['crossval'].endswith('at epoch 36')
