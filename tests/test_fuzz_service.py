"""Property-based tests (Hypothesis) of what a client sends the service: the predict JSON in
both formats, /segment's query and bodies, the image decoder behind both, and the HTTP layer's
request heads and Content-Length. Whatever
arrives, the answer is a correct one or a 4xx with one JSON line; never a 500 or a traceback.
The example budget is the `ci` profile's (tests/conftest.py); `--hypothesis-profile long`
hunts longer."""
import asyncio
import io
import json

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image
from uvicorn.server import ServerState

from roadseg import images, inference, serving
from roadseg.errors import UserError
from roadseg.serving.errors import RequestFailed
from roadseg.serving.limits import LimitedH11Protocol, declared_length
from roadseg.serving.protocol import SEGMENT_QUERY, SIGNATURES, answer_bytes
from tests.conftest import save_tiny_model

PREDICT = '/v1/models/fcn:predict'
REFUSALS = (400, 404, 413, 414, 415, 431)


@pytest.fixture(scope='module')
def client(tmp_path_factory):
    run = tmp_path_factory.mktemp('fuzz') / 'run'
    save_tiny_model(str(run / 'model'))
    with TestClient(serving.create_app(inference.load_model(str(run)), max_pixels=10_000,
                                       batch_timeout_ms=1)) as test_client:
        yield test_client


def refused_cleanly(response):
    """A 4xx whose body is {"error": one line}."""
    assert response.status_code in REFUSALS, (response.status_code, response.text[:300])
    error = response.json()['error']
    assert isinstance(error, str) and error and '\n' not in error and 'Traceback' not in error
    return error


# ----------------------------------------------------------------------------------------------
# Strategies: JSON of every kind, near-valid predict requests, images and their damage
# ----------------------------------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-300, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30)
PIXEL = st.one_of(st.integers(0, 255), SCALARS)  # mostly right, sometimes anything


@st.composite
def pixel_arrays(draw, good=False):
    """Nested lists of about an image's shape: [H][W][3] of 0..255 when `good`, else with
    a wrong rank, a ragged row or a bad value thrown in now and then."""
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    value = st.integers(0, 255) if good else PIXEL
    rows = [[[draw(value) for _ in range(3)] for _ in range(width)] for _ in range(height)]
    if not good:
        damage = draw(st.sampled_from(['none', 'rank', 'ragged', 'deep']))
        if damage == 'rank':
            rows = rows[0]
        elif damage == 'ragged':
            rows[0] = rows[0][:-1] or [[1, 2]]
        elif damage == 'deep':
            rows = [rows]
    return rows


def instance(good=False):
    b64 = st.builds(lambda text: {'b64': text}, st.one_of(
        st.sampled_from(['AA==', '@@', '']), st.text(max_size=8)))
    return pixel_arrays(good) if good else st.one_of(pixel_arrays(), b64, ANY_JSON)


SIGNATURE = st.one_of(st.sampled_from(sorted(SIGNATURES)), ANY_JSON)


@st.composite
def predict_requests(draw):
    """A predict request, row or columnar, of near-valid or arbitrary parts."""
    instances = draw(st.one_of(st.lists(instance(), min_size=0, max_size=3), ANY_JSON))
    request = {}
    if draw(st.booleans()):
        request['signature_name'] = draw(SIGNATURE)
    key = draw(st.sampled_from(['instances', 'inputs', 'inputs.image']))
    if key == 'inputs.image':
        request['inputs'] = {'image': instances}
    else:
        request[key] = instances
    if draw(st.integers(0, 9)) == 0:
        request[draw(st.text(max_size=6))] = draw(ANY_JSON)
    return request


@st.composite
def encoded_images(draw):
    """PNG or JPEG bytes of a small random image, sometimes grayscale or with alpha."""
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(['RGB', 'L', 'RGBA', 'P']))
    seed = draw(st.integers(0, 2 ** 16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels).convert(mode)
    kind = draw(st.sampled_from(['PNG', 'JPEG'] if mode in ('RGB', 'L') else ['PNG']))
    buffer = io.BytesIO()
    picture.save(buffer, kind)
    return buffer.getvalue(), (height, width)


@st.composite
def damaged(draw, data):
    """`data` truncated, with bytes overwritten, or with junk appended."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(['truncate', 'flip', 'append']))
        if how == 'truncate' and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif how == 'flip' and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        else:
            data += draw(st.binary(max_size=16))
    return bytes(data)


# ----------------------------------------------------------------------------------------------
# The predict API
# ----------------------------------------------------------------------------------------------

@given(request=predict_requests())
def test_any_predict_request_is_answered_or_refused_in_one_line(client, request):
    response = client.post(PREDICT, content=json.dumps(request).encode(),
                           headers={'Content-Type': 'application/json'})
    if response.status_code != 200:
        refused_cleanly(response)


@given(body=st.one_of(st.binary(max_size=64), ANY_JSON.map(lambda v: json.dumps(v).encode())))
def test_any_body_to_predict_is_answered_or_refused_in_one_line(client, body):
    response = client.post(PREDICT, content=body)
    if response.status_code != 200:
        refused_cleanly(response)


@given(arrays=st.integers(1, 6).flatmap(lambda height: st.integers(1, 6).flatmap(
    lambda width: st.lists(st.lists(st.lists(st.lists(st.integers(0, 255), min_size=3,
                                                      max_size=3),
                                             min_size=width, max_size=width),
                                    min_size=height, max_size=height),
                           min_size=1, max_size=3))),
    columnar=st.booleans())
def test_valid_pixel_arrays_get_one_class_map_each_at_their_size(client, arrays, columnar):
    """The right answer: as many class maps as images, each of the image's size, equal to
    what the model gives the same pixels through the shared inference path."""
    key = 'inputs' if columnar else 'instances'
    response = client.post(PREDICT, json={'signature_name': 'classes', key: arrays})
    assert response.status_code == 200, response.text
    maps = response.json()['outputs' if columnar else 'predictions']
    height, width = len(arrays[0]), len(arrays[0][0])
    assert len(maps) == len(arrays)
    assert all(np.array(m).shape == (height, width) for m in maps)
    service = client.app.state.service
    expected = inference.segment(service.model, [np.array(arrays[0], np.uint8)])[0]
    assert maps[0] == inference.classes_of(expected, 0.5).tolist()


@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda v: not (v == v and v == int(v) if abs(v) != float('inf') else False)),
    st.booleans(), st.text(max_size=3), st.none(), st.integers(256, 10 ** 30),
    st.integers(-10 ** 30, -1)),
    where=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 2)))
def test_a_bad_pixel_anywhere_is_a_400_naming_its_place(client, value, where):
    pixels = [[[7, 7, 7], [7, 7, 7]], [[7, 7, 7], [7, 7, 7]]]
    pixels[where[0]][where[1]][where[2]] = value
    response = client.post(PREDICT, content=json.dumps({'instances': [pixels]}).encode())
    assert response.status_code == 400
    error = refused_cleanly(response)
    assert error.startswith(f'instances[0][{where[0]}][{where[1]}][{where[2]}] is ')


# ----------------------------------------------------------------------------------------------
# /segment and the image decoder
# ----------------------------------------------------------------------------------------------

QUERY_KEYS = st.one_of(st.sampled_from(SEGMENT_QUERY), st.text(min_size=1, max_size=6))
QUERY_VALUES = st.one_of(st.sampled_from(['overlay', 'mask', 'probability', '1', '0', 'yes',
                                          '10,-5', '0,20', '3,2', '-1,4', 'a,b', '']),
                         st.text(max_size=8))


@given(query=st.dictionaries(QUERY_KEYS, QUERY_VALUES, max_size=3), image=encoded_images())
def test_any_segment_query_is_answered_or_refused_in_one_line(client, query, image):
    data, (height, width) = image
    response = client.post('/segment', params=query, content=data,
                           headers={'Content-Type': 'application/octet-stream'})
    if response.status_code != 200:
        refused_cleanly(response)
        return
    answer = np.asarray(Image.open(io.BytesIO(response.content)))
    assert answer.shape[:2] == (height, width)  # every output is at the image's own size


@given(body=st.one_of(st.binary(max_size=256), encoded_images().flatmap(
    lambda image: damaged(image[0]))),
    kind=st.sampled_from(['image/png', 'image/jpeg', 'application/octet-stream', 'text/plain',
                          'multipart/form-data', 'multipart/form-data; boundary=x', '']))
def test_any_segment_body_is_answered_or_refused_in_one_line(client, body, kind):
    response = client.post('/segment', content=body, headers={'Content-Type': kind})
    if response.status_code != 200:
        refused_cleanly(response)


@given(data=st.one_of(st.binary(max_size=512),
                      encoded_images().flatmap(lambda image: damaged(image[0]))),
       max_pixels=st.one_of(st.none(), st.integers(1, 2000)))
def test_the_decoder_gives_rgb_pixels_or_one_line(data, max_pixels):
    try:
        pixels = images.decode_rgb(data, 'the upload', max_pixels)
    except UserError as e:
        assert str(e).startswith('the upload') and '\n' not in str(e)
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert max_pixels is None or pixels.shape[0] * pixels.shape[1] <= max_pixels


@given(image=encoded_images())
def test_the_decoder_reads_every_valid_image_at_its_size(image):
    data, size = image
    assert images.decode_rgb(data, 'the upload').shape == (*size, 3)


# ----------------------------------------------------------------------------------------------
# The HTTP layer: request heads, Content-Length, the answer's size
# ----------------------------------------------------------------------------------------------

class Transport(asyncio.Transport):
    """What LimitedH11Protocol writes, for a connection that never goes anywhere."""

    def __init__(self):
        super().__init__()
        self.written, self.closing = b'', False

    def write(self, data):
        self.written += data

    def get_extra_info(self, name, default=None):
        return ('127.0.0.1', 8501) if name in ('sockname', 'peername') else default

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def can_write_eof(self):
        return True

    def write_eof(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


async def unused(scope, receive, send):
    """The app behind the HTTP layer in these tests: requests reach it, and it never runs."""


HTTP_CONFIG = uvicorn.Config(unused, log_config=None)
LINES = st.one_of(st.sampled_from([b'GET /healthz HTTP/1.1', b'POST /segment HTTP/1.1',
                                   b'GET / HTTP/1.0', b'\xff\xfe GET / HTTP/1.1', b'garbage',
                                   b'GET /a b HTTP/1.1', b'GET / HTTP/2', b'']),
                  st.binary(max_size=30))
LENGTHS = st.one_of(st.integers(-10 ** 30, 10 ** 30).map(lambda n: str(n).encode()),
                    st.sampled_from([b'', b' 12', b'1e3', b'0x10', b'12, 12', b'+5']),
                    st.binary(max_size=6))
HEADERS = st.lists(st.one_of(st.tuples(st.just(b'Content-Length'), LENGTHS),
                             st.tuples(st.sampled_from([b'Host', b'Transfer-Encoding',
                                                        b'Expect', b'X']),
                                       st.sampled_from([b'x', b'chunked', b'100-continue',
                                                        b'gzip, chunked', b''])),
                             st.tuples(st.binary(min_size=1, max_size=6),
                                       st.binary(max_size=6))), max_size=4)


@given(line=LINES, headers=HEADERS, ending=st.sampled_from([b'\r\n\r\n', b'\n\n', b'\r\n', b'']),
       body=st.binary(max_size=20))
def test_any_request_head_reaches_the_app_or_is_refused_in_one_json_line(line, headers,
                                                                         ending, body):
    """Whatever bytes open a connection, the HTTP layer passes a request on to the app, waits
    for more, or answers a 4xx of one JSON line; never uvicorn's plain text."""
    loop = asyncio.new_event_loop()
    try:
        protocol = LimitedH11Protocol(HTTP_CONFIG, ServerState(), {}, _loop=loop)
        transport = Transport()
        protocol.connection_made(transport)
        data = line + b''.join(b'\r\n' + name + b': ' + value for name, value in headers)
        assume(data + ending + body)  # asyncio never hands a protocol b'' (h11's end of input)
        protocol.data_received(data + ending + body)
        if transport.written:
            head, answer = transport.written.split(b'\r\n\r\n', 1)
            assert 400 <= int(head.split()[1]) < 500 and b'application/json' in head
            error = json.loads(answer)['error']
            assert error and '\n' not in error
        else:
            assert protocol.cycle is not None or protocol.waiting_for_head()
    finally:
        loop.run_until_complete(cancelled(asyncio.all_tasks(loop)))  # the app's, never run
        loop.close()


async def cancelled(tasks):
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@given(values=st.lists(LENGTHS, max_size=3))
def test_any_content_length_is_read_as_its_number_or_refused_in_one_line(values):
    headers = [(b'content-length', value) for value in values] + [(b'host', b'x')]
    try:
        length = declared_length(headers)
    except RequestFailed as e:
        assert e.status == 400 and '\n' not in str(e) and str(e).startswith('Content-Length ')
        return
    if not values:
        assert length is None
    else:
        number = values[0].strip()
        assert number.isdigit() and all(v.strip() == number for v in values)
        assert length == min(int(number), 10 ** 18) if len(number) < 4000 else 10 ** 18


@given(sizes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 12)), min_size=1,
                      max_size=3),
       signature=st.sampled_from(['serving_default', 'classes', 'road_probability']),
       columnar=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_the_answer_estimate_is_never_below_the_answer(client, sizes, signature, columnar,
                                                       seed):
    service = client.app.state.service
    rng = np.random.default_rng(seed)
    segmented = [(np.zeros((h, w, 3), np.uint8),
                  rng.dirichlet([0.3, 0.3], (h, w)).astype(np.float32)) for h, w in sizes]
    answer = service.answer(signature, columnar, segmented)
    assert len(answer) <= answer_bytes(signature, sizes, 2)
