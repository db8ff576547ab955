"""--crf: the dense CRF on synthetic scenes, its one-line error without pydensecrf2, and the
commands that take it (evaluate.py, predict.py, the server)."""
import errno
import importlib.util
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time

import imageio.v3 as iio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from roadseg import cli, crf, inference, serving
from roadseg.commands import choose_crf, evaluate, predict
from roadseg.errors import UserError
from roadseg.model_info import ModelInfo
from tests.conftest import make_kitti, save_tiny_model

needs_crf = pytest.mark.skipif(importlib.util.find_spec('pydensecrf') is None,
                               reason='pydensecrf2 is not installed (pip install pydensecrf2)')


@pytest.fixture(scope='module')
def refiner():
    """One isolated CRF worker for a module's property tests (a worker starts in a second)."""
    isolated = crf.IsolatedRefiner(GOOD)
    yield isolated
    isolated.close()


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
    info = ModelInfo((40, 60), 2, ('a', 'b'), ((0, 0, 0), (255, 0, 255)))
    model = inference.Model('fake', 'fake', info,
                            lambda batch: probabilities[None].repeat(len(batch), 0))
    results = crf.search(model, [('a.png', image, truth)], crf.read_parameters())
    assert len(results) == 1 + np.prod([len(v) for v in crf.GRID.values()])
    assert [r[0] for r in results] == sorted((r[0] for r in results), reverse=True)
    assert results[0][1] is not None  # the CRF helps here
    without = next(iou for iou, parameters in results if parameters is None)
    assert without < results[0][0]


def test_crf_without_pydensecrf2_is_one_line_naming_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'pydensecrf', None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"--crf needs pydensecrf2: pip install 'roadseg\[crf\]'"):
        predict.main(['--model', str(tmp_path), str(tmp_path), '--output-dir',
                      str(tmp_path / 'out'), '--crf'])


GOOD = {'iterations': 5, 'gaussian_sxy': 3, 'gaussian_weight': 3, 'bilateral_sxy': 40,
        'bilateral_srgb': 5, 'bilateral_weight': 4}
BAD_PARAMETERS = [  # what crashed (a width of 0), hung (1e9 iterations) or was taken silently
    ({'bilateral_srgb': 0}, 'bilateral_srgb is 0; it must be a number from 0.1 to 1000'),
    ({'bilateral_sxy': 0}, 'bilateral_sxy is 0; it must be a number from 0.1 to 1000'),
    ({'gaussian_sxy': 1e-30}, 'gaussian_sxy is 1e-30; it must be a number from 0.1 to 1000'),
    ({'iterations': 1e9}, 'iterations is 1000000000.0; it must be a whole number from 1 to 50'),
    ({'iterations': 51}, 'iterations is 51; it must be a whole number from 1 to 50'),
    ({'iterations': -3}, 'iterations is -3; it must be a whole number from 1 to 50'),
    ({'iterations': 2.5}, 'iterations is 2.5; it must be a whole number from 1 to 50'),
    ({'iterations': True}, 'iterations is true; it must be a whole number from 1 to 50'),
    ({'gaussian_sxy': -1}, 'gaussian_sxy is -1; it must be a number from 0.1 to 1000'),
    ({'gaussian_weight': float('nan')}, 'gaussian_weight is NaN; it must be a number from 0 '
                                        'to 100'),
    ({'bilateral_weight': '4'}, 'bilateral_weight is "4"; it must be a number from 0 to 100'),
    ({'iterations': None}, 'iterations is null'),
    ({'bilateral_srgb': 5, 'srgb': 3}, "unknown CRF parameter 'srgb'; the keys are iterations"),
]


@pytest.mark.parametrize('change, message', BAD_PARAMETERS, ids=[m for _, m in BAD_PARAMETERS])
def test_bad_parameters_are_one_line_naming_the_file_key_and_range(tmp_path, change, message):
    (tmp_path / 'crf.json').write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(UserError) as error:
        crf.read_parameters(str(tmp_path / 'crf.json'))
    assert str(error.value) == f'{tmp_path / "crf.json"}: {message}' or \
        str(error.value).startswith(f'{tmp_path / "crf.json"}: {message}')
    assert '\n' not in str(error.value)


def test_bad_parameter_files_are_one_line(tmp_path):
    (tmp_path / 'crf.json').write_text(json.dumps({'iterations': 5}))
    with pytest.raises(UserError, match='crf.json: CRF parameters need numbers for '
                                        'gaussian_sxy'):
        crf.read_parameters(str(tmp_path / 'crf.json'))
    (tmp_path / 'crf.json').write_text('[5]')
    with pytest.raises(UserError, match='crf.json: a CRF parameter file holds one JSON object'):
        crf.read_parameters(str(tmp_path / 'crf.json'))
    with pytest.raises(UserError, match='missing.json'):
        crf.read_parameters(str(tmp_path / 'missing.json'))
    assert crf.read_parameters() == GOOD  # roadseg/configs/crf.json


@needs_crf
def test_predict_refuses_a_crashing_parameter_file_before_any_work(tmp_path, capsys):
    (tmp_path / 'crf.json').write_text(json.dumps({**GOOD, 'bilateral_srgb': 0}))
    status = cli.main_guard(predict.main, ['--model', str(tmp_path / 'none'), str(tmp_path),
                                           '--output-dir', str(tmp_path / 'out'), '--crf',
                                           str(tmp_path / 'crf.json')])
    assert status == 2
    assert capsys.readouterr().err == (f'error: {tmp_path / "crf.json"}: bilateral_srgb is 0; '
                                       f'it must be a number from 0.1 to 1000\n')
    assert not (tmp_path / 'out').exists()


@needs_crf
def test_the_isolated_crf_survives_a_native_crash_and_an_overrun():
    image, probabilities, _ = two_regions()
    expected = crf.refine(image, probabilities, GOOD)
    refiner = crf.IsolatedRefiner({**GOOD, 'bilateral_srgb': 0})  # past the checks: SIGSEGV
    try:
        with pytest.raises(crf.RefineFailed, match=r'^the dense CRF crashed \(signal SIGSEGV\); '
                                                   r'its worker was restarted$'):
            refiner(image, probabilities)
        refiner.parameters = GOOD
        np.testing.assert_allclose(refiner(image, probabilities), expected, atol=1e-6)
        refiner.timeout_s = 0.2
        big = np.zeros((1500, 1500, 3), np.uint8), np.full((1500, 1500, 2), 0.5, np.float32)
        with pytest.raises(crf.RefineFailed, match='took over 0.2 s; its worker was stopped'):
            refiner(*big)
        refiner.timeout_s = 60
        np.testing.assert_allclose(refiner(image, probabilities), expected, atol=1e-6)
    finally:
        refiner.close()


@pytest.mark.slow
@needs_crf
def test_a_crf_that_crashes_is_a_500_line_and_the_service_stays_up(tmp_path, inputs, capfd):
    """The issue's crash, fed to the server past the file checks: SIGSEGV in pydensecrf."""
    save_tiny_model(str(tmp_path / 'model'))
    app = serving.create_app(inference.load_model(str(tmp_path)),
                             crf_parameters={**GOOD, 'bilateral_srgb': 0})
    data = (inputs / 'street.jpg').read_bytes()
    with TestClient(app) as client:
        for restarts in (2, 3):  # the worker is replaced (after the warm-up's crash too)
            response = client.post('/segment', content=data,
                                   headers={'Content-Type': 'image/jpeg'})
            assert response.status_code == 500
            assert response.json() == {'error': 'the dense CRF crashed (signal SIGSEGV); its '
                                                'worker was restarted'}
            assert client.get('/healthz').json() == {
                'status': 'ok', 'model': 'fcn', 'format': 'savedmodel',
                'crf': {'workers': 1, 'ready': True, 'restarts': restarts}}
        response = client.post('/v1/models/fcn:predict', json={'instances': [
            np.zeros((4, 4, 3), int).tolist()]})
        assert response.status_code == 500 and 'SIGSEGV' in response.json()['error']
        assert client.get('/v1/models/fcn').status_code == 200
    assert 'POST /segment: the dense CRF crashed (signal SIGSEGV)' in capfd.readouterr().err


@needs_crf
@given(parameters=st.fixed_dictionaries({
    key: st.integers(low, high) if kind is int else st.floats(low, high)
    for key, (kind, low, high) in crf.LIMITS.items()}),
    size=st.tuples(st.integers(1, 48), st.integers(1, 48)), seed=st.integers(0, 2 ** 16))
def test_every_parameter_set_the_checks_accept_gives_probabilities(parameters, size, seed,
                                                                   refiner):
    """Inside LIMITS the native code never crashes or hangs and answers probabilities (run in
    the isolated worker, so that a crash would fail this test rather than end pytest)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    probabilities = rng.dirichlet(np.ones(3), size).astype(np.float32)
    refiner.parameters = parameters
    refined = refiner(image, probabilities)
    assert refined.shape == probabilities.shape and np.isfinite(refined).all()
    np.testing.assert_allclose(refined.sum(-1), 1, atol=1e-3)


@given(parameters=st.dictionaries(
    st.one_of(st.sampled_from(crf.KEYS), st.text(max_size=5)),
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20), st.floats(),
              st.text(max_size=5), st.lists(st.integers(), max_size=2))))
def test_any_parameter_file_is_read_within_limits_or_refused_in_one_line(parameters):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'crf.json')
        with open(path, 'w') as f:
            json.dump({**GOOD, **parameters} if len(parameters) % 2 else parameters, f)
        try:
            read = crf.read_parameters(path)
        except UserError as e:
            assert str(e).startswith(path) and '\n' not in str(e)
            return
    assert set(read) == set(crf.KEYS)
    for key, (kind, low, high) in crf.LIMITS.items():
        assert low <= read[key] <= high and not isinstance(read[key], bool)
        assert kind is float or isinstance(read[key], int)


@pytest.mark.slow
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
    model = inference.load_model(str(run))
    with TestClient(serving.create_app(model, crf_parameters=crf.read_parameters())) as client:
        assert client.get('/healthz').json()['crf']['ready'] is True
        response = client.post('/segment?output=mask',
                               content=(inputs / 'street.jpg').read_bytes(),
                               headers={'Content-Type': 'image/jpeg'})
    np.testing.assert_array_equal(iio.imread(response.content), refined.argmax(-1))
    # choose_crf.py chooses the parameters on the run's training images
    (run / 'split.json').write_text(json.dumps({'train': ['um_000000.png'],
                                                'val': ['um_000001.png']}))
    choose_crf.main(['--model', str(run), '--data-dir', str(data), '--output',
              str(tmp_path / 'chosen.json')])
    assert 'on 1 training images' in capsys.readouterr().out
    assert set(crf.read_parameters(str(tmp_path / 'chosen.json'))) == set(crf.KEYS)


# ----------------------------------------------------------------------------------------------
# The server's worker pool: a worker that dies between requests, workers that cannot start
# ----------------------------------------------------------------------------------------------

def kill_idle_worker(refiner):
    """SIGKILL the worker of a one-worker IsolatedRefiner while it waits for work."""
    os.kill(refiner.pool.schedule(os.getpid).result(timeout=60), signal.SIGKILL)


@pytest.mark.slow
@needs_crf
def test_the_isolated_crf_replaces_a_worker_killed_between_requests(capfd):
    image, probabilities, _ = two_regions()
    expected = crf.refine(image, probabilities, GOOD)
    refiner = crf.IsolatedRefiner(GOOD)
    try:
        for restarts in (1, 2):
            kill_idle_worker(refiner)
            np.testing.assert_allclose(refiner(image, probabilities), expected, atol=1e-6)
            assert refiner.restarts == restarts
    finally:
        refiner.close()
    err = capfd.readouterr().err
    assert err.count("warning: the dense CRF's worker pool is broken (a worker ended outside a "
                     "request, or none could start); starting a new one\n") == 2
    assert 'Traceback' not in err


@pytest.mark.slow
@needs_crf
def test_a_crf_worker_killed_while_idle_is_replaced_and_healthz_reports_the_pool(tmp_path,
                                                                               inputs, capfd):
    save_tiny_model(str(tmp_path / 'model'))
    app = serving.create_app(inference.load_model(str(tmp_path)), crf_parameters=GOOD)
    refiner = app.state.service.model.refine
    data = (inputs / 'street.jpg').read_bytes()
    with TestClient(app) as client:
        assert client.get('/healthz').json()['crf'] == {'workers': 1, 'ready': True,
                                                        'restarts': 0}
        kill_idle_worker(refiner)  # the next request finds the pool broken
        response = client.post('/segment?output=mask', content=data,
                               headers={'Content-Type': 'image/jpeg'})
        assert response.status_code == 200, response.text
        assert iio.imread(response.content).shape == (50, 90)
        kill_idle_worker(refiner)  # a health check finds it broken
        deadline = time.monotonic() + 60
        while refiner.pool.active:  # until pebble has seen the worker go
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = client.get('/healthz')
        assert health.status_code == 200 and health.json() == {
            'status': 'ok', 'model': 'fcn', 'format': 'savedmodel',
            'crf': {'workers': 1, 'ready': True, 'restarts': 2}}
        response = client.post('/segment?output=mask', content=data,
                               headers={'Content-Type': 'image/jpeg'})
        assert response.status_code == 200, response.text
    assert 'Traceback' not in capfd.readouterr().err


class _NoProcesses(multiprocessing.context.SpawnContext):
    """A spawn context whose processes cannot start, as on a machine out of them."""

    class Process(multiprocessing.context.SpawnProcess):
        def start(self):
            raise OSError(errno.EAGAIN, 'Resource temporarily unavailable')


def test_healthz_is_503_and_the_crf_a_500_line_when_its_workers_cannot_start(monkeypatch,
                                                                            capfd):
    monkeypatch.setattr(multiprocessing, 'get_context', lambda method: _NoProcesses())
    info = ModelInfo((32, 64), 2, ('a', 'b'), ((0, 0, 0), (255, 0, 255)))
    model = inference.Model('fake', 'fake', info,
                            lambda images: np.full(images.shape[:3] + (2,), 0.5, np.float32))
    with TestClient(serving.create_app(model, crf_parameters=GOOD)) as client:
        health = client.get('/healthz')
        assert health.status_code == 503 and health.json()['status'] == 'unavailable'
        assert health.json()['crf']['ready'] is False
        response = client.post('/v1/models/fcn:predict', json={
            'signature_name': 'classes', 'instances': [np.zeros((4, 4, 3), int).tolist()]})
        assert response.status_code == 500
        assert response.json()['error'] == ("the dense CRF's worker cannot run ([Errno 11] "
                                            "Resource temporarily unavailable)")
    assert 'Traceback' not in capfd.readouterr().err
