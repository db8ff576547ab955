"""serve.py's HTTP service: any model the project writes behind TensorFlow Serving's REST API,
a PNG endpoint, a page to try it in a browser, health and Prometheus metrics.

Every image goes the way predict.py's do (inference.model_input, the model, inference.at_image_size,
inference.overlay): decoded and resized in a worker thread, then queued for the Batcher, which
gathers concurrent requests into one model call (up to max_batch images, or what arrived within
batch_timeout_ms of the first) on a thread of its own, so the event loop never waits for the
model. Bad requests are answered 4xx with {"error": "..."} and never reach the model.

With --crf the dense CRF runs in a worker process (crf.IsolatedRefiner): pydensecrf's native code
can crash or overrun on one image without taking the service down.

What a client can make the service read or build is bounded: the body (BodyLimit, 413 before it
is read), the JSON answer (estimated from the images' sizes before they are decoded, 413), the
request head's size and the time it takes to arrive, and the open connections
(LimitedH11Protocol). A client that goes away mid-request is counted under status 499, nginx's
"client closed request", not as a server error.

    create_app(model, max_batch=8, batch_timeout_ms=5, max_pixels=40_000_000,
               crf_parameters=None, max_body_bytes=MAX_BODY_BYTES,
               max_answer_bytes=MAX_ANSWER_BYTES)
"""
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import http
import json
import logging
import math
import os
import re
import sys
import time
import traceback

import h11
import numpy as np
import prometheus_client
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from roadseg import cli, crf, images, inference, media, metrics
from roadseg.errors import UserError

MODEL_NAME, MODEL_VERSION = 'fcn', '1'
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'serving_page.html')
SEGMENT_OUTPUTS = ('overlay', 'mask', 'probability')
SEGMENT_QUERY = ('output', 'crop', 'flip_tta')
RAW_TYPES = ('', 'application/octet-stream')  # and image/*: a raw image body
# TensorFlow Serving's predict API: signature_name -> {output: dtype}. serving_default answers
# what export.py's SavedModel answers under TensorFlow Serving; the others are smaller answers.
# Outputs named *_bytes come back as {"b64": ...}, TensorFlow Serving's convention for bytes.
SIGNATURES = {'serving_default': {'probabilities': 'DT_FLOAT', 'classes': 'DT_UINT8'},
              'classes': {'classes': 'DT_UINT8'},
              'road_probability': {'road_probability': 'DT_FLOAT'},
              'mask_png': {'mask_bytes': 'DT_STRING'},
              'probability_png': {'probability_bytes': 'DT_STRING'},
              'overlay_png': {'overlay_bytes': 'DT_STRING'}}
ROAD_ONLY = ('road_probability', 'probability_png', 'probability')
MAX_IMAGES = 64  # images in one predict request
# HTTP limits: a longer URL is answered 414, a larger request head (request line and headers)
# 431 or, when its request line alone overflows it, 414
MAX_URL_BYTES = 8192
MAX_HEAD_BYTES = 32768
LINGER_S = 2  # how long the rest of a refused request is read and dropped before closing
# A body over this is refused 413 before it is read: 64 MB holds any JPEG under --max-pixels,
# and a photo of about 20 megapixels as PNG in base64 JSON, while a client cannot make the
# server hold more than that for one request.
MAX_BODY_BYTES = 64_000_000
# A JSON answer over this is refused 413 before the images are decoded: 32 MB is three
# KITTI-size (1242x375) images under serving_default (up to 8.9 MB each), where one 4000x3000
# photo would be up to 228 MB of JSON and over 2 GB of Python lists while it is built. The PNG
# signatures stay small.
MAX_ANSWER_BYTES = 32_000_000
HEAD_TIMEOUT_S = 5  # a request head must arrive within this of the connection or last answer
# Connections one server process holds open (and as many refused ones, for LINGER_S at most);
# serve.py checks that the file-descriptor limit (ulimit -n) holds them, as accept() failing
# for want of one starves the service and logs a traceback a connection.
MAX_CONNECTIONS = 512
WARN_EVERY_S = 10  # each kind of refusal is logged at most this often, with a count
DISCONNECTED = 499  # the status a request whose client went away is counted under
DECIMALS = 4  # probabilities in JSON: float32 noise beyond this only lengthens the answer
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class RequestFailed(Exception):
    """A request the service answers with `status` and {"error": message}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------

class Batcher:
    """Gathers images queued by concurrent requests into one model call: up to `max_batch`,
    or whatever arrived within `timeout_s` of the first, as TensorFlow Serving batches. The
    model runs on one thread of its own (a TFLite interpreter is not thread-safe); images that
    ask for flip test-time augmentation are batched apart from those that do not."""

    def __init__(self, model, max_batch, timeout_s, batch_sizes):
        self.model, self.max_batch, self.timeout_s = model, max_batch, timeout_s
        self.batch_sizes = batch_sizes  # a Prometheus histogram
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='model')
        self.queue, self.task, self.batch = None, None, []

    def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self):
        """Stop batching; requests still waiting (none after a graceful shutdown) are
        cancelled."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        waiting = self.batch + [self.queue.get_nowait() for _ in range(self.queue.qsize())]
        for _, _, future in waiting:
            future.cancel()
        self.executor.shutdown(wait=True)

    async def __call__(self, image, flip):
        """The model's probabilities for one image at its training size."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((image, flip, future))
        return await future

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            self.batch = batch = [await self.queue.get()]
            deadline = loop.time() + self.timeout_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait() if not self.queue.empty() else
                                 await asyncio.wait_for(self.queue.get(),
                                                        deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            for flip in (False, True):
                group = [item for item in batch if item[1] == flip and not item[2].done()]
                if group:
                    await self._run(loop, group, flip)
            self.batch = []

    async def _run(self, loop, group, flip):
        try:
            self.batch_sizes.observe(len(group))
            inputs = np.stack([image for image, _, _ in group])
            outputs = await loop.run_in_executor(self.executor, self.model, inputs, flip)
        except Exception as e:  # the model failed: every request of the batch is told
            for _, _, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, _, future), probabilities in zip(group, outputs):
            if not future.done():  # a client that went away has its future cancelled
                future.set_result(probabilities)


# ----------------------------------------------------------------------------------------------
# HTTP limits
# ----------------------------------------------------------------------------------------------

class _Connection(h11.Connection):
    """h11's connection, remembering why it refused a request head: the status h11 suggests for
    a head over its size limit, or its reason for a malformed one."""

    too_large = reason = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as e:
            if e.error_status_hint == 431:
                self.too_large = 431 if b'\n' in self.trailing_data[0] else 414
            self.reason = str(e).split(':')[0]  # without the client's bytes it may quote
            raise


class _Refusals(logging.Filter):
    """uvicorn's log with each kind of warning (its format string) at most once every
    WARN_EVERY_S, the next one counting those held back, so that a flood of bad connections
    cannot flood the log. uvicorn's own line for a malformed head is dropped:
    LimitedH11Protocol logs what was wrong with it."""

    def __init__(self):
        super().__init__()
        self.logged = {}  # format string -> (when last logged, lines held back since)

    def filter(self, record):
        if record.levelno != logging.WARNING:
            return True
        if record.msg == 'Invalid HTTP request received.':
            return False
        now = time.monotonic()
        last, held = self.logged.get(record.msg, (-math.inf, 0))
        if now - last < WARN_EVERY_S:
            self.logged[record.msg] = (last, held + 1)
            return False
        self.logged[record.msg] = (now, 0)
        if held:
            record.msg, record.args = f'{record.getMessage()} ({held} more since the last)', ()
        return True


REFUSALS = _Refusals()


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 server with what a client can hold bounded (serve.py runs uvicorn with it,
    its limits given through functools.partial):
    - a request head over MAX_HEAD_BYTES that arrives in pieces is answered 414 (its request
      line overflows) or 431 (its headers do), a malformed one 400;
    - a head must arrive within `head_timeout_s` of the connection or of the last answer: a
      client that sent part of one is then answered 408, an idle one closed;
    - at most `max_connections` are open: one more closes the connection that has waited
      longest for a request head or, when all are in requests, is answered 503;
    - a request answered before its body was read (413) has the rest of it dropped, and the
      connection is closed if it is still coming LINGER_S later.
    Each refusal is one JSON line (uvicorn's is plain text) and one warning in the log at most
    (REFUSALS)."""

    def __init__(self, *args, head_timeout_s=HEAD_TIMEOUT_S, max_connections=MAX_CONNECTIONS,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.conn = _Connection(h11.SERVER, MAX_HEAD_BYTES)
        self.head_timeout_s, self.max_connections = head_timeout_s, max_connections
        self.head_timer, self.head_since, self.lingering = None, 0.0, False
        if REFUSALS not in self.logger.filters:
            self.logger.addFilter(REFUSALS)

    def connection_made(self, transport):
        super().connection_made(transport)
        self.await_head()
        if len(self.connections) <= self.max_connections:
            return
        waiting = [c for c in self.connections if c is not self and c.waiting_for_head()]
        if waiting:
            self.logger.warning('closed the connection waiting longest for a request head: '
                                '%d connections are open, the limit', self.max_connections)
            min(waiting, key=lambda c: c.head_since).close_waiting(
                503, f'the server is at its limit of {self.max_connections} connections, and '
                     f'this one sent no whole request head; send it at once')
        else:
            self.logger.warning('refused a connection: %d are open in requests, the limit',
                                self.max_connections)
            self.refuse(503, f'the server is at its limit of {self.max_connections} open '
                             f'connections; try again shortly')

    def connection_lost(self, exc):
        self.head_timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data):
        if not self.lingering:  # else the rest of a refused request: dropped
            super().data_received(data)

    def on_response_complete(self):
        unread = self.conn.their_state is h11.SEND_BODY  # answered before its body was read
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if unread:  # uvicorn drops the rest; a body still coming after LINGER_S is cut off
            self.loop.call_later(LINGER_S, self.cut_off, self.cycle)
        self.await_head()

    def cut_off(self, cycle):
        if self.cycle is cycle and self.conn.their_state is h11.SEND_BODY:
            self.logger.warning('closed a connection: the rest of a body answered unread was '
                                'still coming after %g s', LINGER_S)
            self.transport.close()

    def send_400_response(self, msg):
        status = self.conn.too_large or 400
        if self.conn.too_large:
            message = too_large_message(status, f'over {MAX_HEAD_BYTES} bytes')
        else:
            message = f'malformed HTTP request ({self.conn.reason}); send HTTP/1.1'
        self.logger.warning('refused a request head: %s', message)
        self.refuse(status, message)

    def await_head(self):
        """Start the clock for the next request head."""
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_since = self.loop.time()
        self.head_timer = self.loop.call_later(self.head_timeout_s, self.head_timed_out)

    def waiting_for_head(self):
        return self.conn.their_state is h11.IDLE and not self.lingering and \
            not self.transport.is_closing()

    def head_timed_out(self):
        if self.waiting_for_head():
            if self.conn.trailing_data[0]:
                self.logger.warning('closed a connection: no whole request head within %g s',
                                    self.head_timeout_s)
            self.close_waiting(408, f'the request head did not arrive within '
                                    f'{self.head_timeout_s:g} s')

    def close_waiting(self, status, message):
        """Close a connection waiting for a request head, answered `status` with `message`
        when part of one had arrived (an idle one was not asked anything)."""
        if self.conn.trailing_data[0]:
            self.refuse(status, message)
        else:
            self.transport.close()

    def refuse(self, status, message):
        """Answer `status` with `message`, then close: once the client has had time to read
        it while under twice max_connections are open, else at once (a flood: the descriptor
        back now, the answer perhaps lost)."""
        self.transport.write(refusal(status, message))
        if len(self.connections) <= 2 * self.max_connections:
            self.linger()
        else:
            self.transport.close()

    def linger(self):
        """Close once the client has had LINGER_S to read the answer, dropping what it still
        sends: closing with its bytes arriving would reset the connection and lose the
        answer."""
        self.lingering = True
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def refusal(status, message):
    """A whole HTTP answer of `status` with {"error": message} that closes the connection, as
    bytes: written whatever state h11 is in."""
    body = json.dumps({'error': message}).encode()
    return (f'HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n'
            f'content-type: application/json\r\ncontent-length: {len(body)}\r\n'
            f'connection: close\r\n\r\n').encode() + body


def too_large_message(status, size):
    """The error of a 414 or 431 answer, `size` saying how large that part was."""
    what = 'the URL takes' if status == 414 else 'the request headers take'
    return f'{what} {size}; send the image in the body and options in a short query'


def declared_length(headers):
    """A request's Content-Length in bytes, None without one. One that is not a number of
    bytes is a 400 (h11 refuses those before the app; another server might not)."""
    values = {value.strip() for name, value in headers if name.lower() == b'content-length'}
    if not values:
        return None
    (value, *others) = values
    if others or not value.isdigit():  # bytes.isdigit: ASCII digits only
        shown = b', '.join(sorted(values)).decode('latin-1')
        raise RequestFailed(400, f'Content-Length {shown[:40]!r} is not one number of bytes')
    value = value.lstrip(b'0') or b'0'
    return int(value) if len(value) < 19 else 10 ** 18  # past any limit; int() takes 4300 digits


class BodyLimit:
    """ASGI middleware refusing a request body over `max_bytes` with 413 before it is read: at
    once when its Content-Length says so, and as soon as a chunked one streams past the limit
    (RequestFailed from receive, which the app answers), so that no request makes the server
    hold more than the limit."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            await self.app(scope, receive, send)
            return
        try:
            declared = declared_length(scope['headers'])
            if declared is not None and declared > self.max_bytes:
                raise RequestFailed(413, self.over(f'the body declares {declared} bytes, over'))
        except RequestFailed as e:
            await JSONResponse({'error': str(e)}, e.status)(scope, receive, send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            received += len(message.get('body', b''))
            if received > self.max_bytes:
                raise RequestFailed(413, self.over('the body streams past'))
            return message
        await self.app(scope, counted, send)

    def over(self, what):
        return (f'{what} the limit of {self.max_bytes} bytes; send a smaller image (a '
                f'JPEG), or start serve.py with a larger --max-body-bytes')


# ----------------------------------------------------------------------------------------------
# Requests: TensorFlow Serving's JSON and raw images
# ----------------------------------------------------------------------------------------------

def parse_predict(body):
    """A TensorFlow Serving predict request: (signature name, columnar or not, the images'
    payloads: encoded bytes or uint8 arrays), checked by TensorFlow Serving's rules: a list of
    instances, each {"b64": ...} or an [H][W][3] array of whole numbers 0..255, the arrays of
    one shape."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestFailed(400, f'malformed JSON ({e}); send {{"instances": [{{"b64": '
                                 f'"<base64 JPEG or PNG>"}}]}}') from None
    except RecursionError:
        raise RequestFailed(400, 'the JSON is nested too deeply; an image is {"b64": ...} or '
                                 'an [H][W][3] array') from None
    if not isinstance(request, dict):
        raise RequestFailed(400, 'the request is not a JSON object; send {"instances": [...]} '
                                 'or {"inputs": ...}')
    unknown = sorted(set(request) - {'signature_name', 'instances', 'inputs'})
    if unknown:
        raise RequestFailed(400, f'unknown key {unknown[0]!r}; a request has "instances" or '
                                 f'"inputs", and optionally "signature_name"')
    if ('instances' in request) == ('inputs' in request):
        raise RequestFailed(400, 'a request has exactly one of "instances" (row format) and '
                                 '"inputs" (columnar format)')
    signature = request.get('signature_name', 'serving_default')
    if not isinstance(signature, str) or signature not in SIGNATURES:
        raise RequestFailed(400, f'signature_name {json.dumps(signature)} not found; choose '
                                 f'from {", ".join(SIGNATURES)}')
    columnar = 'inputs' in request
    values = request['inputs'] if columnar else request['instances']
    where = 'inputs' if columnar else 'instances'
    if columnar and isinstance(values, dict):
        if 'b64' in values:
            values = [values]  # the one image of a batch of one
        elif set(values) != {'image'}:
            raise RequestFailed(400, f'inputs has keys {sorted(values)}; the only input is '
                                     f'"image"')
        else:
            values, where = values['image'], 'inputs.image'
    if not isinstance(values, list) or not values:
        raise RequestFailed(400, f'{where} must be a non-empty list of images')
    if len(values) > MAX_IMAGES:
        raise RequestFailed(413, f'{where} holds {len(values)} images, over the limit of '
                                 f'{MAX_IMAGES} a request; send them in several requests')
    payloads = [_payload(value, f'{where}[{i}]') for i, value in enumerate(values)]
    first = payloads[0]
    for i, payload in enumerate(payloads[1:], 1):
        if isinstance(payload, np.ndarray) != isinstance(first, np.ndarray) or \
                isinstance(first, np.ndarray) and payload.shape != first.shape:
            raise RequestFailed(400, f'{where}[{i}] is {_kind(payload)} but {where}[0] is '
                                     f'{_kind(first)}; the images of a request are all '
                                     f'{{"b64": ...}} or all arrays of one shape')
    return signature, columnar, payloads


def _kind(payload):
    """What an instance was sent as, for messages."""
    if isinstance(payload, np.ndarray):
        return f'an array of shape {_shape(payload.shape)}'
    return 'an encoded image'


def _shape(shape):
    return ''.join(f'[{size}]' for size in shape) or 'a single value'


def _payload(value, where):
    """One instance: {"b64": ...}, {"image": ...} or an [H][W][3] array (_pixels)."""
    if isinstance(value, dict):
        if set(value) == {'image'}:
            return _payload(value['image'], where + '.image')
        if set(value) != {'b64'}:
            raise RequestFailed(400, f'{where} has keys {sorted(value)}; an image is '
                                     f'{{"b64": "<base64 JPEG or PNG>"}} or an [H][W][3] array')
        try:
            return base64.b64decode(value['b64'], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise RequestFailed(400, f'{where}.b64 does not decode as base64') from None
    if not isinstance(value, list):
        raise RequestFailed(400, f'{where} is {json.dumps(value)[:40]}, neither {{"b64": ...}} '
                                 f'nor an [H][W][3] array of whole numbers 0..255')
    return _pixels(value, where)


def _pixels(value, where):
    """Nested lists as a uint8 [H][W][3] image, by TensorFlow Serving's rules for a uint8
    tensor: rectangular, of rank 3 with 3 channels, every value a whole number from 0 to 255
    (no booleans, fractions, NaN or text); else a 400 naming the instance and the problem."""
    try:
        pixels = np.array(value, dtype=object)
    except (ValueError, TypeError, RecursionError):
        raise RequestFailed(400, f'{where} is not a rectangular [H][W][3] array') from None
    kinds = np.frompyfunc(type, 1, 1)(pixels)
    if (kinds == list).any():  # noqa: E721  (element-wise, over an array of types)
        raise RequestFailed(400, f'{where} is ragged or nested deeper than [H][W][3]: its rows '
                                 f'must all hold the same number of values')
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or not pixels.size:
        raise RequestFailed(400, f'{where} has shape {_shape(pixels.shape)}; an instance is '
                                 f'one image, an [H][W][3] array')
    bad = kinds != int  # noqa: E721  (element-wise) bool, float, str, None and dict are all refused
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RequestFailed(400, f'{where}{_shape(index)} is {_describe(pixels[index])}; pixel '
                                 f'values are whole numbers from 0 to 255')
    outside = (pixels < 0) | (pixels > 255)
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise RequestFailed(400, f'{where}{_shape(index)} is {str(pixels[index])[:20]}, outside '
                                 f'0..255')
    return pixels.astype(np.uint8)


def _describe(value):
    """A JSON value that is not a pixel value, for messages."""
    if isinstance(value, bool):
        return f'the boolean {json.dumps(value)}'
    if isinstance(value, float):
        return 'NaN' if value != value else f'{value!r}, not written as a whole number' \
            if abs(value) != float('inf') else 'infinite'
    return {str: 'text', type(None): 'null', dict: 'an object'}.get(type(value), 'not a number')


def _bool(text, name):
    if text.lower() in ('1', 'true', 'yes'):
        return True
    if text.lower() in ('0', 'false', 'no', ''):
        return False
    raise RequestFailed(400, f'{name}={text[:40]}: use 1 or 0')


def segment_options(query):
    """/segment's query: (output, crop (TOP, BOTTOM) or None, flip)."""
    unknown = sorted(set(query) - set(SEGMENT_QUERY))
    if unknown:
        raise RequestFailed(400, f'unknown query parameter {unknown[0]!r}; use '
                                 f'{", ".join(SEGMENT_QUERY)}')
    output = query.get('output', 'overlay')
    if output not in SEGMENT_OUTPUTS:
        raise RequestFailed(400, f'output={output[:40]}: choose from '
                                 f'{", ".join(SEGMENT_OUTPUTS)}')
    crop = None
    if 'crop' in query:
        try:
            crop = cli.crop_arg(query['crop'])
        except Exception as e:  # argparse.ArgumentTypeError
            raise RequestFailed(400, f'crop={e}') from None
    return output, crop, _bool(query.get('flip_tta', '0'), 'flip_tta')


# ----------------------------------------------------------------------------------------------
# The service
# ----------------------------------------------------------------------------------------------

class Service:
    """The model, its batcher, the request handling and the metrics behind the app."""

    def __init__(self, model, max_batch, batch_timeout_ms, max_pixels, crf_parameters,
                 max_body_bytes, max_answer_bytes):
        self.model, self.max_pixels, self.max_answer_bytes = model, max_pixels, max_answer_bytes
        self.refiner = None
        if crf_parameters is not None:  # at_image_size refines through the worker process
            model.refine = self.refiner = crf.IsolatedRefiner(crf_parameters)
        self.two_classes = metrics.is_road_model(model.num_classes)
        self.threshold = 0.5 if self.two_classes else None  # predict.py's default
        self.colors = inference.overlay_colors(model.info['class_colors'])
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            'fcn_requests', 'HTTP requests by endpoint and status code',
            ['endpoint', 'status'], registry=self.registry)
        self.latency = prometheus_client.Histogram(
            'fcn_request_seconds', 'Time from request to response, by endpoint', ['endpoint'],
            registry=self.registry)
        batch_sizes = prometheus_client.Histogram(
            'fcn_batch_size', 'Images per model call', buckets=BATCH_BUCKETS,
            registry=self.registry)
        self.batcher = Batcher(model, max_batch, batch_timeout_ms / 1000, batch_sizes)
        self.settings = {'max_batch': max_batch, 'batch_timeout_ms': batch_timeout_ms,
                         'max_pixels': max_pixels, 'max_body_bytes': max_body_bytes,
                         'max_answer_bytes': max_answer_bytes}

    # The pipeline: decode and resize (thread), model (batcher), resize back and draw (thread)

    def prepare(self, payload, name, crop):
        """(image, rows, model input) for encoded bytes or a pixel array."""
        if isinstance(payload, np.ndarray):
            image = payload
            images.check_pixels(image.shape[1], image.shape[0], name, self.max_pixels)
        else:
            image = images.decode_rgb(payload, name, self.max_pixels)
        rows = media.crop_rows(crop, image.shape[0], name)
        return image, rows, inference.model_input(image, rows, self.model.image_shape)

    async def segment(self, prepared, flip=False):
        """A prepared image and its class probabilities at its own size."""
        image, rows, small = prepared
        probabilities = await self.batcher(small, flip)
        return image, await run_in_threadpool(inference.at_image_size, self.model, image,
                                              probabilities, rows)

    def render(self, output, image, probabilities):
        """predict.py's outputs: the overlay, the class map or the 8-bit road probability."""
        if output == 'probability':
            return metrics.quantize(probabilities[..., 1])
        classes = inference.classes_of(probabilities, self.threshold)
        return classes if output == 'mask' else inference.overlay(image, classes, self.colors)

    def check_road_only(self, name, what):
        """Refuse a road-only signature or /segment output `name` (asked for as `what`) when
        the model has more than two classes."""
        if name in ROAD_ONLY and not self.two_classes:
            raise RequestFailed(400, f'{what} is for two-class (road) models; this model has '
                                     f'{self.model.num_classes} classes')

    def signature_outputs(self, signature, image, probabilities):
        """One image's outputs under a predict signature, as JSON values."""
        values = {}
        for output in SIGNATURES[signature]:
            if output == 'probabilities':
                values[output] = _rounded(probabilities)
            elif output == 'classes':
                values[output] = inference.classes_of(probabilities, self.threshold).tolist()
            elif output == 'road_probability':
                values[output] = _rounded(probabilities[..., 1])
            else:
                png = images.encode_png(self.render(output[:-len('_bytes')], image,
                                                    probabilities))
                values[output] = {'b64': base64.b64encode(png).decode('ascii')}
        return values

    # Endpoints

    def check_servable(self, name, version=None):
        if name != MODEL_NAME or version not in (None, MODEL_VERSION):
            which = f'version {version} of ' if version else ''
            raise RequestFailed(404, f'no {which}model {name!r}; this server serves '
                                     f'{MODEL_NAME!r}, version {MODEL_VERSION}')

    async def predict(self, request, name, version=None):
        self.check_servable(name, version)
        signature, columnar, payloads = await run_in_threadpool(parse_predict,
                                                                await request.body())
        self.check_road_only(signature, f'signature_name {signature!r}')
        where = 'inputs' if columnar else 'instances'
        self.check_answer_size(signature, [size for size in map(_size, payloads) if size])
        prepared = await asyncio.gather(*(run_in_threadpool(self.prepare, payload,
                                                            f'{where}[{i}]', None)
                                          for i, payload in enumerate(payloads)))
        segmented = await asyncio.gather(*(self.segment(p) for p in prepared))
        return Response(await run_in_threadpool(self.answer, signature, columnar, segmented),
                        media_type='application/json')

    def check_answer_size(self, signature, sizes):
        """Refuse a JSON answer that would be over max_answer_bytes (answer_bytes' estimate
        for images of `sizes`, (H, W)), before anything is decoded."""
        size = answer_bytes(signature, sizes, self.model.num_classes)
        if size > self.max_answer_bytes:
            what = f'a {sizes[0][1]}x{sizes[0][0]} image' if len(sizes) == 1 else \
                f'{len(sizes)} images of {sum(h * w for h, w in sizes) / 1e6:.3g} megapixels'
            raise RequestFailed(413, f'{signature} would answer up to {_mb(size)} of JSON for '
                                     f'{what}, over the limit of {_mb(self.max_answer_bytes)}; '
                                     f'ask for signature_name "mask_png" (a PNG of the classes; '
                                     f'"probability_png" for the road probability) or POST '
                                     f'the image to /segment?output=mask')

    def answer(self, signature, columnar, segmented):
        """TensorFlow Serving's answer as JSON bytes: predictions (row format) or outputs
        (columnar), a single output unwrapped as TensorFlow Serving does."""
        outputs = [self.signature_outputs(signature, image, probabilities)
                   for image, probabilities in segmented]
        names = list(SIGNATURES[signature])
        if columnar:
            answer = {key: [values[key] for values in outputs] for key in names}
            body = {'outputs': answer[names[0]] if len(names) == 1 else answer}
        else:
            body = {'predictions': [values[names[0]] if len(names) == 1 else values
                                    for values in outputs]}
        return json.dumps(body, separators=(',', ':')).encode()

    async def segment_png(self, request):
        output, crop, flip = segment_options(request.query_params)
        self.check_road_only(output, f'output={output}')
        data, name = await _upload(request)
        start = time.perf_counter()
        prepared = await run_in_threadpool(self.prepare, data, name, crop)
        image, probabilities = await self.segment(prepared, flip)
        png = await run_in_threadpool(
            lambda: images.encode_png(self.render(output, image, probabilities)))
        stem = os.path.splitext(os.path.basename(name))[0] if name != 'the body' else 'image'
        stem = re.sub(r'[^A-Za-z0-9._-]', '_', stem)  # HTTP headers are Latin-1
        return Response(png, media_type='image/png', headers={
            'X-Inference-Ms': f'{1000 * (time.perf_counter() - start):.1f}',
            'X-Image-Size': f'{image.shape[1]}x{image.shape[0]}',
            'Content-Disposition': f'inline; filename="{stem}_{output}.png"'})

    def status(self, name):
        self.check_servable(name)
        return {'model_version_status': [{'version': MODEL_VERSION, 'state': 'AVAILABLE',
                                          'status': {'error_code': 'OK', 'error_message': ''}}]}

    def metadata(self, name):
        self.check_servable(name)
        info = self.model.info
        signatures = {
            signature: {
                'inputs': {'image': _tensor('DT_STRING', [-1], 'image')},
                'outputs': {output: _tensor(dtype, _output_shape(output, info['num_classes']),
                                            output)
                            for output, dtype in outputs.items()},
                'method_name': 'tensorflow/serving/predict'}
            for signature, outputs in SIGNATURES.items()
            if self.two_classes or signature not in ROAD_ONLY}
        return {'model_spec': {'name': MODEL_NAME, 'signature_name': '',
                               'version': MODEL_VERSION},
                'metadata': {'signature_def': {'signature_def': signatures},
                             'fcn': {'format': self.model.kind,
                                     'image_shape': list(self.model.image_shape),
                                     'num_classes': info['num_classes'],
                                     'class_names': info['class_names'],
                                     'class_colors': info['class_colors'],
                                     'overlay_colors': [list(c) if c else None
                                                        for c in self.colors],
                                     **self.settings}}}


def _too_large(scope):
    """A 414 or 431 answer when the URL or the headers are over their limits (uvicorn
    refuses a head over MAX_HEAD_BYTES that arrives in pieces, LimitedH11Protocol, but takes
    one that arrives whole), else None."""
    url = len(scope.get('raw_path') or b'') + len(scope['query_string'])
    head = sum(len(name) + len(value) + 4 for name, value in scope['headers'])
    for status, size, limit in ((414, url, MAX_URL_BYTES), (431, head, MAX_HEAD_BYTES)):
        if size > limit:
            return JSONResponse({'error': too_large_message(
                status, f'{size} bytes, over the limit of {limit}')}, status)
    return None


def answer_bytes(signature, sizes, num_classes):
    """At least the length of the JSON answer of `signature` for images of `sizes` ((H, W)),
    known before it is built: a probability takes at most DECIMALS + 3 bytes ("0.1234,"), a
    class its digits and a comma, brackets 3 bytes a list ("[...],"), and each image's keys
    under 100; 0 for the PNG signatures, whose answers are small."""
    value, label = DECIMALS + 3, len(str(num_classes - 1)) + 1
    per_pixel = {'probabilities': num_classes * value + 3, 'classes': label,
                 'road_probability': value}
    outputs = [per_pixel[output] for output in SIGNATURES[signature] if output in per_pixel]
    if not outputs:
        return 0
    return sum(h * w * sum(outputs) + 3 * (h + 1) * len(outputs) + 100 for h, w in sizes)


def _size(payload):
    """An image's (height, width) as it will be segmented, from its array or its file's header
    before anything is decoded; None when the header does not say (decoding then says what is
    wrong)."""
    if isinstance(payload, np.ndarray):
        return payload.shape[:2]
    return images.displayed_size(payload)


def _mb(size):
    return f'{size / 1e6:.3g} MB'


def _first_line(error):
    """An exception's message, first line only (TensorFlow's run over many)."""
    return (str(error).strip().splitlines() or [''])[0]


def _rounded(values):
    """Probabilities as JSON lists, rounded to DECIMALS (as float64: float32's nearest values
    print with 17 digits)."""
    return np.round(values.astype(np.float64), DECIMALS).tolist()


def _tensor(dtype, dims, name):
    """A TensorInfo as TensorFlow Serving's metadata writes it (-1: any size)."""
    return {'dtype': dtype, 'name': f'{name}:0', 'tensor_shape': {
        'dim': [{'size': str(size), 'name': ''} for size in dims], 'unknown_rank': False}}


def _output_shape(output, num_classes):
    return {'probabilities': [-1, -1, -1, num_classes], 'classes': [-1, -1, -1],
            'road_probability': [-1, -1, -1]}.get(output, [-1])


async def _upload(request):
    """The image bytes of a /segment request and a name for messages: a multipart upload's
    first file, or the raw body."""
    kind = request.headers.get('content-type', '').split(';')[0].strip().lower()
    if kind == 'multipart/form-data':
        try:
            form = await request.form()
        except (ClientDisconnect, RequestFailed):  # gone, or over the body limit
            raise
        except Exception as e:  # python-multipart's errors for a malformed body
            raise RequestFailed(400, f'malformed multipart body ({_first_line(e)})') from None
        try:
            uploads = [value for value in form.values() if hasattr(value, 'filename')]
            if not uploads:
                raise RequestFailed(400, 'multipart body without a file; send the image as a '
                                         'file field (curl -F image=@photo.jpg)')
            return await uploads[0].read(), uploads[0].filename or 'the upload'
        finally:
            await form.close()
    if kind in RAW_TYPES or kind.startswith('image/'):
        return await request.body(), 'the body'
    raise RequestFailed(415, f'content type {kind!r} not supported; send the image as '
                             f'image/jpeg, image/png, application/octet-stream or '
                             f'multipart/form-data')


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------

def create_app(model, max_batch=8, batch_timeout_ms=5.0, max_pixels=40_000_000,
               crf_parameters=None, max_body_bytes=MAX_BODY_BYTES,
               max_answer_bytes=MAX_ANSWER_BYTES):
    """The FastAPI app serving `model` (an inference.Model, closed when the app stops), its
    answers refined by a dense CRF of `crf_parameters` (crf.read_parameters) when given."""
    service = Service(model, max_batch, batch_timeout_ms, max_pixels, crf_parameters,
                      max_body_bytes, max_answer_bytes)
    refiner = service.refiner
    with open(PAGE, encoding='utf-8') as f:
        page = f.read()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        if refiner is not None:
            await run_in_threadpool(refiner.warm_up)
        try:
            yield
        finally:
            await service.batcher.stop()
            if refiner is not None:
                refiner.close()
            model.close()

    app = FastAPI(title='FCN road segmentation', lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(RequestFailed)
    async def request_failed(request, e):
        return JSONResponse({'error': cli.one_line(e)}, e.status)

    @app.exception_handler(crf.RefineFailed)
    async def refine_failed(request, e):  # one line for the operator and the client
        print(f'{request.method} {request.url.path}: {e}', file=sys.stderr, flush=True)
        return JSONResponse({'error': str(e)}, 500)

    @app.exception_handler(UserError)
    async def bad_image(request, e):  # what images.decode_rgb says of the bytes
        return JSONResponse({'error': cli.one_line(e)},
                            413 if isinstance(e, images.TooLarge) else 400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        message = e.detail
        if e.status_code == 404:
            message = f'no endpoint {request.url.path}; see GET / and GET /v1/models/fcn/metadata'
        elif e.status_code == 405:
            message = f'{request.method} is not allowed on {request.url.path}'
        return JSONResponse({'error': cli.one_line(message)}, e.status_code)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # inside measure: counted

    @app.middleware('http')
    async def measure(request, call_next):
        """Count and time every request; answer an unexpected failure 500 with one JSON line
        (the traceback goes to the server's log, not to the client). A client that went away
        before its request was read is no failure: DISCONNECTED, and no one to answer."""
        start = time.perf_counter()
        try:
            response = _too_large(request.scope) or await call_next(request)
        except ClientDisconnect:
            response = Response(status_code=DISCONNECTED)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            response = JSONResponse(
                {'error': f'internal error: {type(e).__name__}: {_first_line(e)}'}, 500)
        route = request.scope.get('route')
        endpoint = route.path if route is not None else 'other'
        service.requests.labels(endpoint, str(response.status_code)).inc()
        service.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.post('/v1/models/{name}:predict')
    async def predict(request: Request, name: str):
        return await service.predict(request, name)

    @app.post('/v1/models/{name}/versions/{version}:predict')
    async def predict_version(request: Request, name: str, version: str):
        return await service.predict(request, name, version)

    @app.get('/v1/models/{name}')
    async def status(name: str):
        return service.status(name)

    @app.get('/v1/models/{name}/metadata')
    async def metadata(name: str):
        return service.metadata(name)

    @app.post('/segment')
    async def segment(request: Request):
        return await service.segment_png(request)

    @app.get('/')
    async def index():
        return HTMLResponse(page)

    @app.get('/healthz')
    async def healthz():
        """ok, or 503 when the dense CRF's workers cannot run; `crf` is the pool's state
        (crf.IsolatedRefiner.state, which replaces a broken pool), null without one."""
        pool = None if refiner is None else await run_in_threadpool(refiner.state)
        ready = pool is None or pool['ready']
        return JSONResponse({'status': 'ok' if ready else 'unavailable', 'model': MODEL_NAME,
                             'format': model.kind, 'crf': pool}, 200 if ready else 503)

    @app.get('/metrics')
    async def prometheus():
        return Response(prometheus_client.generate_latest(service.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)

    return app


def app_from_environment():
    """The app for one of uvicorn's worker processes (serve.py --workers N): the model and
    settings serve.py put in ROADSEG_SERVE, loaded in this process."""
    settings = json.loads(os.environ['ROADSEG_SERVE'])
    path = settings.pop('crf')
    return create_app(inference.load_model(settings.pop('model')), **settings,
                      crf_parameters=crf.parameters_for(path))
