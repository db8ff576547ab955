"""--crf: the dense CRF on synthetic scenes, its one-line error without pydensecrf2, and the
commands that take it (evaluate.py, predict.py, the server)."""
import importlib.util
import json
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from fastapi.testclient import TestClient

import evaluate
import predict
from roadseg import crf, inference, serving
from roadseg.errors import UserError
from tests.conftest import make_kitti, save_tiny_model

needs_crf = pytest.mark.skipif(importlib.util.find_spec('pydensecrf') is None,
                               reason='pydensecrf2 is not installed (pip install pydensecrf2)')


def two_regions(seed=0, noise=0.35):
    """A 40x60 image of two flat colours (left: class 0, right: class 1), and probabilities of
    the true class with noise that flips about a fifth of the pixels."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((40, 60), np.int64)
    truth[:, 30:] = 1
    image = np.where(truth[..., None] == 1, [200, 60, 40], [40, 90, 200]).astype(np.uint8)
    score = np.clip(0.65 + rng.normal(0, noise, truth.shape), 0.01, 0.99)
    probabilities = np.stack([np.where(truth == 0, score, 1 - score),
                              np.where(truth == 1, score, 1 - score)], -1).astype(np.float32)
    return image, probabilities, truth


@needs_crf
def test_crf_agrees_with_flat_colour_regions_better_than_its_input():
    image, probabilities, truth = two_regions()
    before = (probabilities.argmax(-1) == truth).mean()
    refined = crf.refine(image, probabilities, crf.read_parameters())
    after = (refined.argmax(-1) == truth).mean()
    assert before < 0.85 and after > 0.98
    np.testing.assert_allclose(refined.sum(-1), 1, atol=1e-4)  # still probabilities


@needs_crf
def test_search_scores_every_setting_and_the_input_best_first():
    image, probabilities, truth = two_regions(1)
    model = inference.Model('fake', 'fake', {'image_shape': [40, 60], 'num_classes': 2},
                            lambda batch: probabilities[None].repeat(len(batch), 0))
    results = crf.search(model, [('a.png', image, truth)], crf.read_parameters())
    assert len(results) == 1 + np.prod([len(v) for v in crf.GRID.values()])
    assert [r[0] for r in results] == sorted((r[0] for r in results), reverse=True)
    assert results[0][1] is not None  # the CRF helps here
    without = next(iou for iou, parameters in results if parameters is None)
    assert without < results[0][0]


def test_crf_without_pydensecrf2_is_one_line_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'pydensecrf', None)  # import fails as if not installed
    with pytest.raises(UserError, match='--crf needs pydensecrf2: pip install pydensecrf2'):
        predict.main(['--model', str(tmp_path), str(tmp_path), '--output-dir',
                      str(tmp_path / 'out'), '--crf'])


@needs_crf
def test_bad_parameter_files_are_one_line(tmp_path):
    (tmp_path / 'crf.json').write_text(json.dumps({'iterations': 5}))
    with pytest.raises(UserError, match='crf.json: CRF parameters need numbers for '
                                        'gaussian_sxy'):
        crf.refiner(str(tmp_path / 'crf.json'))
    with pytest.raises(UserError, match='missing.json'):
        crf.refiner(str(tmp_path / 'missing.json'))


@needs_crf
def test_evaluate_predict_serve_and_choose_the_crf(tmp_path, inputs, capsys):
    run = tmp_path / 'run'
    save_tiny_model(str(run / 'model'), steps=60)
    data = tmp_path / 'data'
    make_kitti(data, stems=('um_000000', 'um_000001'))
    (run / 'config.json').write_text(json.dumps({'data_dir': str(data)}))
    evaluate.main(['--model', str(run), '--data-dir', str(data), '--split', 'all', '--crf'])
    scored = json.loads((run / 'eval-all-crf' / 'metrics.json').read_text())
    assert scored['crf'] == crf.read_parameters()
    # predict.py and the server give the CRF's classes, not the model's own
    image = iio.imread(inputs / 'street.jpg')
    with inference.load_model(str(run)) as model:
        (plain,) = inference.segment(model, [image])
    refined = crf.refine(image, plain, crf.read_parameters())
    assert (plain.argmax(-1) != refined.argmax(-1)).any()
    predict.main(['--model', str(run), str(inputs / 'street.jpg'), '--output-dir',
                  str(tmp_path / 'out'), '--mask', '--crf'])
    np.testing.assert_array_equal(iio.imread(tmp_path / 'out' / 'street_mask.png'),
                                  refined.argmax(-1))
    model = inference.load_model(str(run), refine=crf.refiner(crf.DEFAULT_PARAMETERS))
    with TestClient(serving.create_app(model)) as client:
        assert client.get('/healthz').json()['crf'] is True
        response = client.post('/segment?output=mask',
                               content=(inputs / 'street.jpg').read_bytes(),
                               headers={'Content-Type': 'image/jpeg'})
    np.testing.assert_array_equal(iio.imread(response.content), refined.argmax(-1))
    # python -m roadseg.crf chooses the parameters on the run's training images
    (run / 'split.json').write_text(json.dumps({'train': ['um_000000.png'],
                                                'val': ['um_000001.png']}))
    crf.main(['--model', str(run), '--data-dir', str(data), '--output',
              str(tmp_path / 'chosen.json')])
    assert 'on 1 training images' in capsys.readouterr().out
    assert set(crf.read_parameters(str(tmp_path / 'chosen.json'))) == set(crf.KEYS)
