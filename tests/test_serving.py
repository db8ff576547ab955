"""serve.py: the app in-process through its ASGI test client (TensorFlow Serving's formats, the
PNG endpoint, the page, metrics, every bad request), the batcher, the real server as a
subprocess stopped with SIGTERM mid-request, and the page in a real browser (Chromium).

Answers are checked against predict.py's outputs for the same image file: the service must
give exactly what the command line gives.
"""
import asyncio
import base64
import contextlib
import functools
import io
import itertools
import json
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx2 as httpx
import imageio.v3 as iio
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.service import Server, free_port
from roadseg import cli, drawing, images, inference, serving, zoo
from roadseg.commands import predict, serve
from roadseg.data import kitti_names
from roadseg.errors import UserError
from roadseg.model_info import ModelInfo
from roadseg.serving.app import DISCONNECTED
from roadseg.serving.batcher import Batcher
from roadseg.serving.limits import MAX_ANSWER_BYTES, WARN_EVERY_S, LimitedH11Protocol, _Refusals
from roadseg.serving.protocol import SIGNATURES, answer_bytes
from tests.conftest import COLORS, ROOT, save_tiny_model

SCENE = 'um_000007.png'  # a 45x77 PNG of the inputs fixture (and street.jpg, 50x90)


# ----------------------------------------------------------------------------------------------
# Fixtures: a tiny trained model, images, the app, predict.py's outputs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp('serving') / 'run'
    save_tiny_model(str(run / 'model'), steps=150)
    return run


@pytest.fixture(scope='module')
def client(run_dir):
    app = serving.create_app(inference.load_model(str(run_dir)), max_batch=4,
                             batch_timeout_ms=20)
    with TestClient(app) as test_client:
        yield test_client


def predicted(run_dir, image_path, folder, *flags):
    """predict.py's outputs for one image: {suffix: pixels} of its overlay, mask and road
    probability PNGs."""
    assert cli.main_guard(predict.main, ['--model', str(run_dir), str(image_path),
                                         '--output-dir', str(folder), '--overlay', '--mask',
                                         '--probability', *flags]) == 0
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return {'overlay': iio.imread(folder / f'{stem}.png'),
            'mask': iio.imread(folder / f'{stem}_mask.png'),
            'probability': iio.imread(folder / kitti_names.probability_name(stem))}


def png(response):
    assert response.status_code == 200, response.text
    assert response.headers['content-type'] == 'image/png'
    return iio.imread(io.BytesIO(response.content))


def b64(path):
    return base64.b64encode(open(path, 'rb').read()).decode()


# ----------------------------------------------------------------------------------------------
# POST /segment
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('name', ['um_000007.png', 'street.jpg'])
def test_segment_answers_what_predict_writes(client, run_dir, inputs, tmp_path, name):
    expected = predicted(run_dir, inputs / name, tmp_path)
    data = (inputs / name).read_bytes()
    kind = 'image/png' if name.endswith('.png') else 'image/jpeg'
    for output, pixels in expected.items():
        response = client.post(f'/segment?output={output}', content=data,
                               headers={'Content-Type': kind})
        assert np.array_equal(png(response), pixels), output
    assert response.headers['x-image-size'] == f'{pixels.shape[1]}x{pixels.shape[0]}'
    assert float(response.headers['x-inference-ms']) > 0
    assert np.any(expected['mask']) and not np.all(expected['mask'])  # the model sees road
    # the default output is the overlay; a multipart upload works as a raw body does
    response = client.post('/segment', files={'image': (name, data, kind)})
    assert np.array_equal(png(response), expected['overlay'])
    assert f'filename="{os.path.splitext(name)[0]}_overlay.png"' in \
        response.headers['content-disposition']
    response = client.post('/segment', files={'image': ('道路 1.png', data, kind)})
    assert 'filename="___1_overlay.png"' in response.headers['content-disposition']


def test_segment_crop_and_flip_tta_as_predict(client, run_dir, inputs, tmp_path):
    expected = predicted(run_dir, inputs / SCENE, tmp_path, '--crop', '10,-8',
                         '--flip-tta')
    response = client.post('/segment?output=mask&crop=10,-8&flip_tta=1',
                           content=(inputs / SCENE).read_bytes(),
                           headers={'Content-Type': 'image/png'})
    assert np.array_equal(png(response), expected['mask'])
    plain = client.post('/segment?output=probability&crop=10,-8',
                        content=(inputs / SCENE).read_bytes(),
                        headers={'Content-Type': 'image/png'})
    assert not np.array_equal(png(plain), expected['probability'])  # flip_tta=1 mattered
    assert not png(plain)[:10].any() and not png(plain)[37:].any()  # outside the crop: not road


# ----------------------------------------------------------------------------------------------
# TensorFlow Serving's REST API
# ----------------------------------------------------------------------------------------------

def test_predict_row_format_every_signature(client, run_dir, inputs, tmp_path):
    expected = predicted(run_dir, inputs / 'street.jpg', tmp_path)
    instances = [{'b64': b64(inputs / 'street.jpg')}, {'b64': b64(inputs / SCENE)}]
    with inference.load_model(str(run_dir)) as model:
        (probabilities,) = inference.segment(model, [iio.imread(inputs / 'street.jpg')])

    answer = client.post('/v1/models/fcn:predict', json={'instances': instances}).json()
    first, second = answer['predictions']
    assert set(first) == {'probabilities', 'classes'}
    np.testing.assert_allclose(first['probabilities'], probabilities, atol=5.1e-5)
    assert np.array_equal(first['classes'], expected['mask'])
    assert np.array(second['classes']).shape == (45, 77)

    def only(signature):
        (value, _) = client.post('/v1/models/fcn:predict', json={
            'signature_name': signature, 'instances': instances}).json()['predictions']
        return value
    assert np.array_equal(only('classes'), expected['mask'])
    np.testing.assert_allclose(only('road_probability'), probabilities[..., 1], atol=5.1e-5)
    for signature, output in (('mask_png', 'mask'), ('probability_png', 'probability'),
                              ('overlay_png', 'overlay')):
        value = only(signature)
        assert set(value) == {'b64'}  # TensorFlow Serving's form for bytes
        assert np.array_equal(iio.imread(base64.b64decode(value['b64'])), expected[output])


def test_predict_columnar_format_pixel_arrays_and_versions(client, inputs):
    image = iio.imread(inputs / SCENE)
    by_png = client.post('/v1/models/fcn:predict', json={
        'signature_name': 'classes', 'instances': [{'b64': b64(inputs / SCENE)}]}).json()
    # columnar, the named input, an [H][W][3] array as a client of the export would send
    answer = client.post('/v1/models/fcn/versions/1:predict', json={
        'signature_name': 'classes', 'inputs': {'image': [image.tolist()]}}).json()
    assert answer == {'outputs': by_png['predictions']}
    answer = client.post('/v1/models/fcn:predict', json={
        'inputs': [{'b64': b64(inputs / SCENE)}]}).json()['outputs']
    assert set(answer) == {'probabilities', 'classes'} and answer['classes'] == \
        by_png['predictions']
    answer = client.post('/v1/models/fcn:predict', json={
        'signature_name': 'classes', 'instances': [{'image': {'b64': b64(inputs / SCENE)}},
                                                   {'b64': b64(inputs / SCENE)}]}).json()
    assert answer['predictions'] == by_png['predictions'] * 2
    answer = client.post('/v1/models/fcn:predict', json={
        'signature_name': 'classes', 'instances': [image.tolist()] * 2}).json()
    assert answer['predictions'] == by_png['predictions'] * 2


def test_model_status_and_metadata_as_tensorflow_serving(client):
    assert client.get('/v1/models/fcn').json() == {'model_version_status': [{
        'version': '1', 'state': 'AVAILABLE', 'status': {'error_code': 'OK',
                                                         'error_message': ''}}]}
    meta = client.get('/v1/models/fcn/metadata').json()
    assert meta['model_spec'] == {'name': 'fcn', 'signature_name': '', 'version': '1'}
    signatures = meta['metadata']['signature_def']['signature_def']
    assert set(signatures) == set(SIGNATURES)
    assert signatures['serving_default']['inputs']['image']['dtype'] == 'DT_STRING'
    assert [d['size'] for d in signatures['serving_default']['outputs']['probabilities']
            ['tensor_shape']['dim']] == ['-1', '-1', '-1', '2']
    fcn = meta['metadata']['fcn']
    assert fcn['format'] == 'savedmodel' and fcn['image_shape'] == [32, 64]
    assert fcn['class_names'] == ['not road', 'road'] and fcn['num_classes'] == 2
    assert fcn['overlay_colors'] == [None, list(drawing.OVERLAY_RGB)]
    assert fcn['max_batch'] == 4 and fcn['max_pixels'] == 40_000_000


# ----------------------------------------------------------------------------------------------
# Bad requests: 4xx with one JSON line, and the service stays up
# ----------------------------------------------------------------------------------------------

PREDICT = '/v1/models/fcn:predict'
BAD = [
    ('raw bytes that are not an image', 'post', '/segment',
     {'content': b'hello', 'headers': {'Content-Type': 'image/jpeg'}}, 400,
     'the body: not an image'),
    ('an empty body', 'post', '/segment', {'content': b'',
                                           'headers': {'Content-Type': 'image/png'}},
     400, 'the body: empty'),
    ('a truncated PNG', 'post', '/segment', {'truncate': True}, 400, 'cannot decode'),
    ('text', 'post', '/segment', {'content': b'hi', 'headers': {'Content-Type': 'text/plain'}},
     415, "content type 'text/plain' not supported"),
    ('a multipart form without a file', 'post', '/segment',
     {'files': {'note': (None, b'no image')}}, 400, 'multipart body without a file'),
    ('an unknown output', 'post', '/segment?output=sky', {'image': True}, 400,
     'output=sky: choose from overlay, mask, probability'),
    ('a crop that is not TOP,BOTTOM', 'post', '/segment?crop=a', {'image': True}, 400,
     "crop='a' is not TOP,BOTTOM"),
    ('a crop leaving no rows', 'post', '/segment?crop=50,60', {'image': True, 'crop': True},
     400, 'leaves none of its 45 rows'),
    ('a flip_tta that is not 0 or 1', 'post', '/segment?flip_tta=maybe', {'image': True}, 400,
     'flip_tta=maybe: use 1 or 0'),
    ('an unknown query parameter', 'post', '/segment?outptu=mask', {'image': True}, 400,
     "unknown query parameter 'outptu'"),
    ('malformed JSON', 'post', PREDICT, {'content': b'{"instances": ['}, 400,
     'malformed JSON'),
    ('JSON that is not an object', 'post', PREDICT, {'json': [1, 2]}, 400,
     'not a JSON object'),
    ('a wrong key', 'post', PREDICT, {'json': {'instance': []}}, 400, "unknown key 'instance'"),
    ('both formats', 'post', PREDICT, {'json': {'instances': [], 'inputs': []}}, 400,
     'exactly one of'),
    ('no images', 'post', PREDICT, {'json': {'instances': []}}, 400, 'non-empty list'),
    ('a b64 that does not decode', 'post', PREDICT, {'json': {'instances': [{'b64': '@@@'}]}},
     400, 'instances[0].b64 does not decode as base64'),
    ('a b64 that is not an image', 'post', PREDICT,
     {'json': {'instances': [{'b64': base64.b64encode(b'hello').decode()}]}}, 400,
     'instances[0]: not an image'),
    ('an instance with wrong keys', 'post', PREDICT, {'json': {'instances': [{'png': 'x'}]}},
     400, "instances[0] has keys ['png']"),
    ('an array that is not an image', 'post', PREDICT, {'json': {'inputs': [[[1, 2]]]}}, 400,
     'inputs[0] has shape [1][2]; an instance is one image, an [H][W][3] array'),
    # TensorFlow Serving's rules for pixel arrays: a list of [H][W][3] instances of whole
    # numbers 0..255, one shape within a request
    ('a 2-D instance', 'post', PREDICT, {'json': {'instances': [[[1, 2, 3], [4, 5, 6]]]}}, 400,
     'instances[0] has shape [2][3]; an instance is one image'),
    ('instances that are one image, not a list of them', 'post', PREDICT,
     {'json': {'instances': [[[1, 2, 3]], [[4, 5, 6]]]}}, 400, 'instances[0] has shape [1][3]'),
    ('a NaN pixel', 'post', PREDICT, {'content': b'{"instances": [[[[1, 2, NaN]]]]}'},
     400, 'instances[0][0][0][2] is NaN; pixel values are whole numbers from 0 to 255'),
    ('an infinite pixel', 'post', PREDICT, {'content': b'{"instances": [[[[Infinity, 2, 3]]]]}'},
     400, 'instances[0][0][0][0] is infinite'),
    ('a boolean pixel', 'post', PREDICT, {'json': {'instances': [[[[1, True, 3]]]]}}, 400,
     'instances[0][0][0][1] is the boolean true'),
    ('a fractional pixel', 'post', PREDICT, {'json': {'instances': [[[[1, 2, 1.5]]]]}}, 400,
     'instances[0][0][0][2] is 1.5, not written as a whole number'),
    ('a pixel over 255', 'post', PREDICT, {'json': {'instances': [[[[1, 2, 256]]]]}}, 400,
     'instances[0][0][0][2] is 256, outside 0..255'),
    ('a text pixel', 'post', PREDICT, {'json': {'instances': [[[[1, 2, '3']]]]}}, 400,
     'instances[0][0][0][2] is text'),
    ('a ragged array', 'post', PREDICT, {'json': {'instances': [[[[1, 2, 3]], [[1, 2]]]]}},
     400, 'instances[0] is ragged or nested deeper than [H][W][3]'),
    ('arrays of two shapes', 'post', PREDICT,
     {'json': {'instances': [[[[1, 2, 3]]], [[[1, 2, 3], [4, 5, 6]]]]}}, 400,
     'instances[1] is an array of shape [1][2][3] but instances[0] is an array of shape '
     '[1][1][3]'),
    ('an array beside an encoded image', 'post', PREDICT,
     {'json': {'instances': [{'b64': 'AA=='}, [[[1, 2, 3]]]]}}, 400,
     'instances[1] is an array of shape [1][1][3] but instances[0] is an encoded image'),
    ('JSON nested too deeply', 'post', PREDICT, {'content': b'[' * 100_000}, 400,
     'nested too deeply'),
    ('a long URL', 'post', '/segment?output=' + 'm' * 9000, {'image': True}, 414,
     'the URL takes 9015 bytes, over the limit of 8192'),
    ('large headers', 'get', '/healthz', {'headers': {'X-Big': 'b' * 40_000}}, 431,
     'the request headers take'),
    ('a named input that does not exist', 'post', PREDICT, {'json': {'inputs': {'x': []}}},
     400, "inputs has keys ['x']"),
    ('a signature_name that is not text', 'post', PREDICT,
     {'json': {'signature_name': [], 'instances': [{'b64': 'AA=='}]}}, 400,
     'signature_name [] not found'),
    ('too many images', 'post', PREDICT, {'json': {'instances': [{'b64': 'AA=='}] * 65}}, 413,
     'instances holds 65 images, over the limit of 64 a request'),
    ('an unknown signature', 'post', PREDICT,
     {'json': {'signature_name': 'sky', 'instances': [{'b64': 'AA=='}]}}, 400,
     'signature_name "sky" not found'),
    ('another model', 'post', '/v1/models/other:predict', {'json': {'instances': []}}, 404,
     "no model 'other'"),
    ('another version', 'get', '/v1/models/fcn/versions/2:predict', {}, 405, 'not allowed'),
    ('another version', 'post', '/v1/models/fcn/versions/2:predict',
     {'json': {'instances': []}}, 404, "no version 2 of model 'fcn'"),
    ('an unknown path', 'get', '/v2/nothing', {}, 404, 'no endpoint /v2/nothing'),
    ('a GET where a POST is due', 'get', '/segment', {}, 405, 'GET is not allowed on /segment'),
]


@pytest.mark.parametrize('what, method, path, request_args, status, message', BAD,
                         ids=[row[0] for row in BAD])
def test_bad_requests_are_4xx_with_one_json_line(client, inputs, what, method, path,
                                                 request_args, status, message):
    request_args = dict(request_args)
    data = (inputs / SCENE).read_bytes()
    if request_args.pop('truncate', False):
        request_args = {'content': data[:len(data) // 2],
                        'headers': {'Content-Type': 'image/png'}}
    if request_args.pop('image', False):
        request_args.pop('crop', None)
        request_args.update(content=data, headers={'Content-Type': 'image/png'})
    response = getattr(client, method)(path, **request_args)
    assert response.status_code == status, response.text
    error = response.json()['error']
    assert message in error and '\n' not in error and 'Traceback' not in error
    assert client.get('/healthz').json()['status'] == 'ok'  # still up


def test_the_model_is_served_under_its_name(run_dir):
    """A shipped model is served as its name, any model as --model-name's (TensorFlow
    Serving's flag); a path without one as fcn. The page asks for it by that name."""
    def served_name(*argv):
        args = serve.parse_args(list(argv))
        return serve.served_name(args, zoo.resolve(args.model))
    assert served_name() == 'camvid-road'
    assert served_name('--model', 'camvid11') == 'camvid11'
    assert served_name('--model', str(run_dir)) == 'fcn'
    assert served_name('--model', 'camvid11', '--model-name', 'streets') == 'streets'
    app = serving.create_app(inference.load_model(str(run_dir)), model_name='roads-1.0')
    with TestClient(app) as named:
        assert named.get('/v1/models/roads-1.0/metadata').json()['model_spec']['name'] == \
            'roads-1.0'
        assert named.get('/v1/models/roads-1.0').status_code == 200
        refused = named.get('/v1/models/fcn/metadata')
        assert refused.status_code == 404 and refused.json() == {
            'error': "no model 'fcn'; this server serves 'roads-1.0', version 1"}
        assert named.get('/healthz').json()['model'] == 'roads-1.0'
        page = named.get('/').text
        assert '/v1/models/roads-1.0/metadata' in page and '/v1/models/fcn/' not in page


@given(st.text(max_size=120))
def test_a_model_name_flag_is_a_name_or_one_line(text):
    try:
        args = serve.parse_args(['--model-name', text])
    except UserError as e:
        assert len(str(e).splitlines()) == 1 and '--model-name' in str(e)
        return
    assert re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]*', args.model_name) and \
        len(args.model_name) <= 100


def test_images_over_max_pixels_are_413(run_dir, inputs):
    app = serving.create_app(inference.load_model(str(run_dir)), max_pixels=45 * 77 - 1)
    with TestClient(app) as small:
        response = small.post('/segment', content=(inputs / SCENE).read_bytes(),
                              headers={'Content-Type': 'image/png'})
        assert response.status_code == 413
        assert response.json()['error'] == ('the body: 77x45 is over the limit of 3464 pixels; '
                                            'send a smaller image')
        image = iio.imread(inputs / SCENE).tolist()
        response = small.post(PREDICT, json={'instances': [image]})
        assert response.status_code == 413 and 'instances[0]: 77x45' in response.json()['error']
        response = small.post('/segment', content=(inputs / 'street.jpg').read_bytes()[:3000],
                              headers={'Content-Type': 'image/jpeg'})
        assert response.status_code == 413  # the size is read before the pixels are decoded


@pytest.mark.slow
def test_a_request_line_over_the_head_limit_is_414_on_the_real_server(run_dir, tmp_path):
    """uvicorn refuses a head that arrives in pieces over its buffer: the answer is still a
    414 with one JSON line, read before the connection closes, and the service stays up."""
    server = Server(run_dir, tmp_path / 'serve.log')
    port = int(server.url.rsplit(':', 1)[1])
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=30) as connection:
            connection.sendall(b'GET /healthz?q=' + b'a' * 200_000 + b' HTTP/1.1\r\n'
                               b'Host: x\r\n\r\n')
            answer = b''
            while chunk := connection.recv(65536):
                answer += chunk
        head, body = answer.split(b'\r\n\r\n', 1)
        assert head.startswith(b'HTTP/1.1 414 '), answer[:200]
        assert json.loads(body) == {'error': 'the URL takes over 32768 bytes; send the image '
                                             'in the body and options in a short query'}
        assert httpx.get(server.url + '/healthz', timeout=30).status_code == 200
    finally:
        assert server.stop() == 0


def test_a_failing_model_is_a_500_json_line_and_the_service_stays_up(inputs, capsys):
    def run(images):
        if images[0, 0, 0, 0] == 0:
            raise RuntimeError('out of memory')
        return np.ones(images.shape[:3] + (2,), np.float32) / 2
    info = ModelInfo((32, 64), 2, ('a', 'b'), COLORS[:2])
    with TestClient(serving.create_app(inference.Model('fake', 'fake', info, run))) as c:
        response = c.post(PREDICT, json={'instances': [np.zeros((4, 4, 3), int).tolist()]})
        assert response.status_code == 500
        assert response.json() == {'error': 'internal error: RuntimeError: out of memory'}
        assert 'Traceback' in capsys.readouterr().err  # for the operator, not the client
        response = c.post(PREDICT, json={'signature_name': 'classes',
                                         'instances': [np.ones((4, 4, 3), int).tolist()]})
        assert response.status_code == 200 and response.json()['predictions'] == \
            [[[1] * 4] * 4]


def test_many_classes_refuse_road_only_outputs(tmp_path, inputs):
    save_tiny_model(str(tmp_path / 'model'), num_classes=3)
    with TestClient(serving.create_app(inference.load_model(str(tmp_path)))) as c:
        data = (inputs / SCENE).read_bytes()
        response = c.post('/segment?output=probability', content=data,
                          headers={'Content-Type': 'image/png'})
        assert response.status_code == 400 and 'this model has 3 classes' in response.text
        response = c.post(PREDICT, json={'signature_name': 'road_probability',
                                         'instances': [{'b64': b64(inputs / SCENE)}]})
        assert response.status_code == 400 and 'two-class' in response.text
        overlay = png(c.post('/segment', content=data, headers={'Content-Type': 'image/png'}))
        assert overlay.shape == (45, 77, 3)
        meta = c.get('/v1/models/fcn/metadata').json()['metadata']
        assert 'road_probability' not in meta['signature_def']['signature_def']
        assert meta['fcn']['overlay_colors'] == COLORS  # every class drawn in its colour


# ----------------------------------------------------------------------------------------------
# Bounds: the body, the answer, the request head, the connections; clients that go away
# ----------------------------------------------------------------------------------------------

def fake_model(calls=None):
    """A two-class model at SHAPE answering 0.5 everywhere, noting each call in `calls`."""
    def run(images):
        if calls is not None:
            calls.append(len(images))
        return np.full(images.shape[:3] + (2,), 0.5, np.float32)
    info = ModelInfo((32, 64), 2, ('a', 'b'), COLORS[:2])
    return inference.Model('fake', 'fake', info, run)


def asgi(app, path, headers, body):
    """One POST through `app` as a server would send it, the body from the iterable `body`
    of chunks, then a disconnect: (status, answer bytes, chunks the app read)."""
    chunks, answer, read = iter(body), {'status': None, 'body': b''}, [0]

    async def receive():
        chunk = next(chunks, None)
        if chunk is None:
            return {'type': 'http.disconnect'}
        read[0] += 1
        return {'type': 'http.request', 'body': chunk, 'more_body': True}

    async def send(message):
        if message['type'] == 'http.response.start':
            answer['status'] = message['status']
        else:
            answer['body'] += message.get('body', b'')
    path, _, query = path.partition('?')
    scope = {'type': 'http', 'asgi': {'version': '3.0'}, 'http_version': '1.1',
             'method': 'POST', 'scheme': 'http', 'path': path, 'raw_path': path.encode(),
             'query_string': query.encode(), 'root_path': '', 'client': ('127.0.0.1', 1),
             'server': ('127.0.0.1', 2), 'headers': [(k.lower().encode(), v.encode())
                                                     for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    return answer['status'], answer['body'], read[0]


def test_a_declared_body_over_the_limit_is_413_before_any_of_it_is_read():
    app = serving.create_app(fake_model(), max_body_bytes=1000)
    endless = itertools.repeat(b'x' * 1000)
    status, answer, read = asgi(app, '/segment', {'Content-Type': 'image/jpeg',
                                                  'Content-Length': str(10 ** 12)}, endless)
    assert (status, read) == (413, 0)
    assert json.loads(answer) == {'error': 'the body declares 1000000000000 bytes, over the '
                                           'limit of 1000 bytes; send a smaller image (a JPEG), '
                                           'or start serve.py with a larger --max-body-bytes'}


UPLOADS = [('/segment', 'image/jpeg', b''),
           ('/segment', 'multipart/form-data; boundary=x',
            b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'),
           ('/v1/models/fcn:predict', 'application/json', b'')]


def test_a_chunked_body_is_refused_as_soon_as_it_streams_past_the_limit():
    app = serving.create_app(fake_model(), max_body_bytes=10_000)
    for path, kind, start in UPLOADS:  # no Content-Length: chunked, never ending
        endless = itertools.chain([start + b'x' * (1000 - len(start))],
                                  itertools.repeat(b'x' * 1000))
        status, answer, read = asgi(app, path, {'Content-Type': kind}, endless)
        assert (status, read) == (413, 11), path
        assert json.loads(answer)['error'].startswith('the body streams past the limit of '
                                                      '10000 bytes')


def test_a_client_gone_mid_body_is_counted_499_without_a_traceback(capsys):
    app = serving.create_app(fake_model())
    for path, kind, start in UPLOADS:
        status, _, read = asgi(app, path, {'Content-Type': kind, 'Content-Length': '5000'},
                               [start + b'x' * 1000])
        assert (status, read) == (DISCONNECTED, 1)
    with TestClient(app) as c:
        text = c.get('/metrics').text
    assert 'fcn_requests_total{endpoint="/segment",status="499"} 2.0' in text
    assert 'fcn_requests_total{endpoint="/v1/models/{name}:predict",status="499"} 1.0' in text
    assert 'status="500"' not in text and 'Traceback' not in capsys.readouterr().err


def test_a_json_answer_over_the_limit_is_413_naming_the_png_alternatives(inputs):
    calls = []
    image = {'b64': b64(inputs / SCENE)}  # 77x45: 67 KB of serving_default JSON at most
    with TestClient(serving.create_app(fake_model(calls), max_answer_bytes=20_000)) as c:
        for signature in ('serving_default', 'road_probability'):
            response = c.post(PREDICT, json={'signature_name': signature,
                                             'instances': [image]})
            assert response.status_code == 413, response.text
            error = response.json()['error']
            assert error.startswith(f'{signature} would answer up to ') and \
                'of JSON for a 77x45 image, over the limit of 0.02 MB' in error
            assert 'signature_name "mask_png"' in error and '/segment?output=mask' in error
        assert calls == []  # refused before the model ran
        answer = c.post(PREDICT, json={'signature_name': 'classes', 'instances': [image]})
        assert answer.status_code == 200 and len(answer.content) <= 20_000
        response = c.post(PREDICT, json={'signature_name': 'classes',
                                         'instances': [image] * 3})
        assert response.status_code == 413 and 'for 3 images of 0.0104 megapixels' in \
            response.json()['error']
        assert c.post(PREDICT, json={'signature_name': 'mask_png',
                                     'instances': [image] * 3}).status_code == 200


def test_by_default_a_kitti_image_is_answered_and_a_12_megapixel_photo_refused_at_once(
        monkeypatch):
    assert answer_bytes('serving_default', [(375, 1242)] * 3, 2) < \
        MAX_ANSWER_BYTES < answer_bytes('serving_default', [(3000, 4000)], 2)
    buffer = io.BytesIO()
    iio.imwrite(buffer, np.full((3000, 4000, 3), 90, np.uint8), extension='.jpg')
    calls = []
    monkeypatch.setattr(images, 'decode_rgb', lambda *_: calls.append('decoded'))
    with TestClient(serving.create_app(fake_model(calls))) as c:
        response = c.post(PREDICT, json={'instances': [
            {'b64': base64.b64encode(buffer.getvalue()).decode()}]})
    assert response.status_code == 413 and calls == []
    assert 'serving_default would answer up to 228 MB of JSON for a 4000x3000 image' in \
        response.json()['error']


def test_refusals_are_logged_once_a_window_with_a_count_of_the_rest():
    refusals = _Refusals()

    def record(message, *args, level=logging.WARNING):
        return logging.LogRecord('uvicorn.error', level, __file__, 1, message, args, None)
    assert refusals.filter(record('refused a request head: %s', 'a'))
    assert not any(refusals.filter(record('refused a request head: %s', str(i)))
                   for i in range(1000))
    assert refusals.filter(record('closed a connection: %g s', 1))  # another kind
    assert refusals.filter(record('Exception in ASGI application', level=logging.ERROR))
    assert not refusals.filter(record('Invalid HTTP request received.'))  # said better
    refusals.logged['refused a request head: %s'] = (-WARN_EVERY_S, 1000)
    line = record('refused a request head: %s', 'b')
    assert refusals.filter(line)
    assert line.getMessage() == 'refused a request head: b (1000 more since the last)'


@contextlib.contextmanager
def uvicorn_server(app, **limits):
    """`app` under uvicorn with LimitedH11Protocol of `limits`, in this process on a free port
    of 127.0.0.1 (uvicorn's log goes to the root logger: caplog); yields the port."""
    config = uvicorn.Config(app, host='127.0.0.1', port=free_port(), log_config=None,
                            http=functools.partial(LimitedH11Protocol, **limits),
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, 'uvicorn did not start'
        time.sleep(0.05)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def connect(port, data=b''):
    connection = socket.create_connection(('127.0.0.1', port), timeout=30)
    connection.sendall(data)
    return connection


def answer_of(connection):
    """(status, headers, body) of what the server sends before it closes `connection`."""
    answer = b''
    with connection:
        while chunk := connection.recv(65536):
            answer += chunk
    head, body = answer.split(b'\r\n\r\n', 1)
    return int(head.split()[1]), head.decode('latin-1').lower(), body


def json_refusal(connection, status):
    """The error of the one JSON line `connection` is answered with `status`."""
    code, head, body = answer_of(connection)
    assert code == status and 'content-type: application/json' in head, (code, head, body)
    error = json.loads(body)['error']
    assert error and '\n' not in error
    return error


HEALTHZ = b'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'


@pytest.mark.slow
def test_the_http_layer_refuses_bad_heads_bodies_and_slow_clients_in_json(caplog):
    caplog.set_level(logging.INFO)
    app = serving.create_app(fake_model(), max_body_bytes=100_000)
    with uvicorn_server(app, head_timeout_s=1) as port:
        for line in (b'\xff\xfe GET / HTTP/1.1\r\n\r\n', b'garbage\r\n\r\n'):
            assert json_refusal(connect(port, line), 400) == \
                'malformed HTTP request (illegal request line); send HTTP/1.1'
        # a body declared over the limit: answered before it is sent
        head = b'POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n'
        connection = connect(port, head + b'Content-Length: 1000000000\r\n\r\n' + b'x' * 1000)
        assert 'declares 1000000000 bytes' in json_refusal(connection, 413)
        # a chunked one: answered once it passes the limit, the rest dropped
        connection = connect(port, head + b'Transfer-Encoding: chunked\r\n\r\n')
        for _ in range(30):
            connection.sendall(b'2710\r\n' + b'x' * 10_000 + b'\r\n')
        assert 'streams past the limit of 100000 bytes' in json_refusal(connection, 413)
        # a client that goes away mid-body
        connect(port, head + b'Content-Length: 5000\r\n\r\nxx').close()
        # part of a request head, then nothing: 408 once the head timeout has passed
        connection = connect(port, b'GET /healthz HTTP/1.1\r\nHost: x\r\n')
        assert json_refusal(connection, 408) == 'the request head did not arrive within 1 s'
        code, _, body = answer_of(connect(port, HEALTHZ))
        assert code == 200 and json.loads(body)['status'] == 'ok'
        deadline = time.monotonic() + 30
        while 'status="499"' not in (metrics := httpx.get(f'http://127.0.0.1:{port}/metrics',
                                                          timeout=30).text):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
    assert 'fcn_requests_total{endpoint="/segment",status="413"} 1.0' in metrics
    assert 'status="500"' not in metrics
    assert not any(r.exc_info or r.levelno >= logging.ERROR for r in caplog.records), \
        caplog.text
    assert 'Traceback' not in caplog.text


@pytest.mark.slow
def test_at_the_connection_limit_the_longest_wait_for_a_head_makes_room(caplog):
    with uvicorn_server(serving.create_app(fake_model()), max_connections=3,
                        head_timeout_s=60) as port:
        # three connections in requests (the app reading their bodies): a fourth is refused
        busy = [connect(port, b'POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n'
                              b'Expect: 100-continue\r\n\r\n') for _ in range(3)]
        for connection in busy:
            assert connection.recv(100).startswith(b'HTTP/1.1 100 ')
        code, _, body = answer_of(connect(port, HEALTHZ))
        assert (code, json.loads(body)) == (503, {
            'error': 'the server is at its limit of 3 open connections; try again shortly'})
        for connection in busy:
            connection.close()
        # three that sent part of a head: a fourth pushes out the one that waited longest
        idle = [connect(port, b'GET /healthz HTTP/1.1\r\n') for _ in range(3)]
        code, _, body = answer_of(connect(port, HEALTHZ))
        assert code == 200 and json.loads(body)['status'] == 'ok'
        (pushed_out, *_), _, _ = select.select(idle, [], [], 30)
        try:  # answered if the server had read its part of a head, else closed
            assert json_refusal(pushed_out, 503) == (
                'the server is at its limit of 3 connections, and this one sent no whole '
                'request head; send it at once')
        except (ConnectionResetError, ValueError):
            pass
        for connection in idle:
            connection.close()
    assert 'Traceback' not in caplog.text


# ----------------------------------------------------------------------------------------------
# The page, health and metrics
# ----------------------------------------------------------------------------------------------

def test_page_is_served_without_outside_scripts(client):
    response = client.get('/')
    assert response.status_code == 200 and response.headers['content-type'].startswith(
        'text/html')
    page = response.text
    assert '<input type="file" id="file"' in page and 'fetch("/segment"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from the internet


def test_metrics_count_requests_latencies_and_batch_sizes(run_dir, inputs):
    with TestClient(serving.create_app(inference.load_model(str(run_dir)))) as c:
        for _ in range(3):
            png(c.post('/segment', content=(inputs / SCENE).read_bytes(),
                       headers={'Content-Type': 'image/png'}))
        c.post(PREDICT, json={'instances': [{'b64': b64(inputs / SCENE)}] * 2})
        c.post('/segment', content=b'x', headers={'Content-Type': 'image/png'})
        assert c.get('/healthz').json() == {'status': 'ok', 'model': 'fcn',
                                            'format': 'savedmodel', 'crf': None}
        text = c.get('/metrics').text
    assert 'fcn_requests_total{endpoint="/segment",status="200"} 3.0' in text
    assert 'fcn_requests_total{endpoint="/segment",status="400"} 1.0' in text
    assert 'fcn_requests_total{endpoint="/v1/models/{name}:predict",status="200"} 1.0' in text
    assert 'fcn_request_seconds_count{endpoint="/segment"} 4.0' in text
    assert 'fcn_batch_size_count 4.0' in text and 'fcn_batch_size_sum 5.0' in text


# ----------------------------------------------------------------------------------------------
# The batcher
# ----------------------------------------------------------------------------------------------

class Recorder:
    """A model that records the batches it is called with, slowly."""

    def __init__(self, seconds=0.0):
        self.calls, self.seconds = [], seconds

    def __call__(self, images, flip):
        self.calls.append((len(images), flip))
        time.sleep(self.seconds)
        return images[..., :2].astype(np.float32) + flip


class Histogram:
    def observe(self, value):
        pass


def batched(model, max_batch, timeout_s, requests):
    """Run `requests` [(delay before queuing, flip)] through a Batcher; returns the outputs."""
    async def go():
        batcher = Batcher(model, max_batch, timeout_s, Histogram())
        batcher.start()

        async def one(index, delay, flip):
            await asyncio.sleep(delay)
            return await batcher(np.full((2, 2, 3), index, np.uint8), flip)
        try:
            return await asyncio.gather(*(one(i, delay, flip)
                                          for i, (delay, flip) in enumerate(requests)))
        finally:
            await batcher.stop()
    return asyncio.run(go())


def test_batcher_gathers_up_to_max_batch_and_answers_each_its_own():
    model = Recorder()
    outputs = batched(model, 4, 0.05, [(0, False)] * 10)
    assert model.calls == [(4, False), (4, False), (2, False)]
    assert [int(output[0, 0, 0]) for output in outputs] == list(range(10))


def test_batcher_waits_at_most_the_timeout_and_batches_flips_apart():
    model = Recorder()
    batched(model, 8, 0.01, [(0, False), (0.2, False)])  # the second comes too late
    assert model.calls == [(1, False), (1, False)]
    model = Recorder()
    outputs = batched(model, 8, 0.05, [(0, False), (0, True), (0, False)])
    assert sorted(model.calls) == [(1, True), (2, False)]
    assert [int(output[0, 0, 0]) for output in outputs] == [0, 2, 2]  # 1 + flip


def test_batcher_never_blocks_the_event_loop():
    async def go():
        batcher = Batcher(Recorder(seconds=0.5), 8, 0.001, Histogram())
        batcher.start()
        call = asyncio.ensure_future(batcher(np.zeros((2, 2, 3), np.uint8), False))
        await asyncio.sleep(0.05)  # the model is running now
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        ticked = time.perf_counter() - start
        await call
        await batcher.stop()
        return ticked
    assert asyncio.run(go()) < 0.3


# ----------------------------------------------------------------------------------------------
# serve.py: start-up, the real server, SIGTERM, the browser
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('argv, message', [
    (['--model', 'no/such/run'], '--model no/such/run: no such file or folder'),
    (['--model', 'x', '--max-batch', '0'], 'argument --max-batch: must be at least 1'),
    (['--model', 'x', '--port', '70000'], 'argument --port: must be at most 65535'),
    (['--model', 'x', '--batch-timeout-ms', 'inf'], 'argument --batch-timeout-ms: must be a '
                                                    'finite number'),
    (['--model', 'x', '--max-connections', '0'], 'argument --max-connections: must be at '
                                                 'least 1'),
    (['--model', 'x', '--max-body-bytes', '-5'], 'argument --max-body-bytes: must be at least 1'),
    (['--model', 'x', '--head-timeout-s', 'nan'], 'argument --head-timeout-s: must be a finite '
                                                  'number'),
])
def test_serve_stops_at_start_up_with_one_line(argv, message, capsys):
    assert cli.main_guard(serve.main, argv + ['--port', str(free_port())]
                          if '--port' not in argv else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {message}') and err.count('\n') == 1


def test_serve_refuses_a_port_in_use(run_dir):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f'--port {port}: in use; choose another --port'):
            serve.main(['--model', str(run_dir), '--port', str(port)])


def test_serve_raises_the_open_file_limit_for_its_connections_or_says_why_not(monkeypatch):
    raised = []
    monkeypatch.setattr(serve.resource, 'setrlimit', lambda what, limits: raised.append(limits))
    monkeypatch.setattr(serve.resource, 'getrlimit', lambda what: (1024, 4096))
    serve.check_file_limit(512)  # 2 x 512 + 256 open files: more than 1024
    assert raised == [(1280, 4096)]
    monkeypatch.setattr(serve.resource, 'getrlimit', lambda what: (1024, 1024))
    with pytest.raises(UserError, match=r'^--max-connections 512 needs 1280 open files, over '
                                        r"this process's limit of 1024 \(ulimit -Hn\); lower "
                                        r'--max-connections$'):
        serve.check_file_limit(512)
    serve.check_file_limit(300)
    assert raised == [(1280, 4096)]


@pytest.mark.slow
def test_serve_py_bounds_heads_bodies_and_answers_by_its_flags(run_dir, inputs, tmp_path):
    server = Server(run_dir, tmp_path / 'serve.log', '--head-timeout-s', '1',
                    '--max-body-bytes', '20000', '--max-answer-bytes', '5000',
                    '--max-connections', '8')
    port = int(server.url.rsplit(':', 1)[1])
    try:
        assert json_refusal(connect(port, b'GET /healthz HTTP/1.1\r\n'), 408) == \
            'the request head did not arrive within 1 s'
        assert json_refusal(connect(port, b'\xff\xfe GET / HTTP/1.1\r\n\r\n'), 400) == \
            'malformed HTTP request (illegal request line); send HTTP/1.1'
        response = httpx.post(server.url + '/segment', content=b'x' * 20_001,
                              headers={'Content-Type': 'image/jpeg'}, timeout=30)
        assert response.status_code == 413 and 'over the limit of 20000 bytes' in \
            response.json()['error']
        response = httpx.post(server.url + PREDICT, json={'instances': [
            {'b64': b64(inputs / SCENE)}]}, timeout=30)
        assert response.status_code == 413 and 'over the limit of 0.005 MB' in \
            response.json()['error']
        fcn = httpx.get(server.url + '/v1/models/fcn/metadata',
                        timeout=30).json()['metadata']['fcn']
        assert (fcn['max_body_bytes'], fcn['max_answer_bytes']) == (20_000, 5000)
    finally:
        assert server.stop() == 0
    assert 'Traceback' not in server.output()


def test_the_service_imports_no_tensorflow():
    """A .tflite model runs on LiteRT (test_deploy checks loading one); the server around it
    must not pull TensorFlow in either."""
    code = 'import sys, uvicorn; from roadseg import serving; ' \
           'from roadseg.commands import serve; ' \
           'print("tensorflow" in sys.modules)'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.stdout.strip() == 'False', result.stderr


@pytest.mark.slow
def test_sigterm_answers_every_request_in_flight_then_stops(run_dir, inputs, tmp_path):
    # The batcher holds each batch open for 1.5 s, so the requests are still in flight
    # when SIGTERM arrives.
    server = Server(run_dir, tmp_path / 'serve.log', '--batch-timeout-ms', '1500',
                    '--max-batch', '64')
    data = (inputs / SCENE).read_bytes()
    answers = []

    def request():
        answers.append(httpx.post(server.url + '/segment?output=mask', content=data,
                                  headers={'Content-Type': 'image/png'}, timeout=60))
    threads = [threading.Thread(target=request) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    assert [answer.status_code for answer in answers] == [200] * 6
    masks = [iio.imread(io.BytesIO(answer.content)) for answer in answers]
    assert all(np.array_equal(mask, masks[0]) for mask in masks)
    log = server.output()
    assert 'Shutting down' in log and 'Traceback' not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + '/healthz', timeout=2)


@pytest.mark.slow
def test_workers_each_load_the_model_and_answer(run_dir, inputs, tmp_path):
    server = Server(run_dir, tmp_path / 'serve.log', '--workers', '2')
    try:
        answers = [httpx.post(server.url + '/segment?output=mask',
                              content=(inputs / SCENE).read_bytes(),
                              headers={'Content-Type': 'image/png'}, timeout=60)
                   for _ in range(4)]
        meta = httpx.get(server.url + '/v1/models/fcn/metadata', timeout=60).json()
    finally:
        assert server.stop() == 0
    expected = predicted(run_dir, inputs / SCENE, tmp_path)['mask']
    assert all(np.array_equal(png(answer), expected) for answer in answers)
    assert meta['metadata']['fcn']['format'] == 'savedmodel'


def browser():
    """Headless Chromium through Debian's chromedriver, or a skip saying what is missing."""
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed')
    binary, driver = shutil.which('chromium'), shutil.which('chromedriver')
    if not binary or not driver:
        pytest.skip('Chromium and its driver are not installed (Debian: apt-get install '
                    'chromium chromium-driver; .ci/run installs them)')
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
                 '--window-size=1200,900'):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver),
                            options=options)


READ_OVERLAY = '''
const done = arguments[arguments.length - 1];
fetch(document.getElementById("download").href).then((r) => r.blob()).then((blob) => {
  const reader = new FileReader();
  reader.onload = () => done(reader.result);
  reader.readAsDataURL(blob);
});
'''


DROP = '''
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], arguments[1], {type: "image/png"}));
document.getElementById("drop").dispatchEvent(
  new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
'''


@pytest.mark.slow
def test_page_in_a_real_browser_shows_predicts_overlay(run_dir, inputs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver = browser()
    server = Server(run_dir, tmp_path / 'serve.log')
    try:
        driver.set_script_timeout(30)
        driver.get(server.url + '/')
        WebDriverWait(driver, 30).until(
            lambda d: 'road' in d.find_element(By.ID, 'legend').text)
        driver.find_element(By.ID, 'file').send_keys(str(inputs / 'street.jpg'))
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.TAG_NAME, 'body').get_attribute('data-state') == 'done')
        status = driver.find_element(By.ID, 'status').text
        assert re.fullmatch(r'street\.jpg, 90x50: segmented in \d+ ms \(the server\'s part '
                            r'[0-9.]+ ms\)', status), status
        link = driver.find_element(By.ID, 'download')
        assert link.get_attribute('download') == 'street_overlay.png'
        shown = driver.execute_async_script(READ_OVERLAY)
        overlay = iio.imread(base64.b64decode(shown.split(',', 1)[1]))
        size = driver.execute_script('const i = document.getElementById("overlay"); '
                                     'return [i.naturalWidth, i.naturalHeight];')
        assert size == [90, 50]
        driver.save_screenshot(str(tmp_path / 'page.png'))
        assert iio.imread(tmp_path / 'page.png').shape[2] in (3, 4)
        # dropping an image on the page does what choosing it does
        driver.execute_script(DROP, b64(inputs / SCENE), 'um_000007.png')
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, 'status').text
                                        .startswith('um_000007.png, 77x45: segmented in'))
        dropped = driver.execute_async_script(READ_OVERLAY)
    finally:
        driver.quit()
        server.stop()
    assert np.array_equal(overlay, predicted(run_dir, inputs / 'street.jpg', tmp_path)['overlay'])
    assert np.array_equal(iio.imread(base64.b64decode(dropped.split(',', 1)[1])),
                          predicted(run_dir, inputs / SCENE, tmp_path)['overlay'])
