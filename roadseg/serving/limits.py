"""What a client can make a server process read, hold or wait on, bounded: the request head's
size and the time it takes to arrive, the open connections (LimitedH11Protocol, which serve.py
runs uvicorn with), the body (BodyLimit, 413 before it is read) and the URL and headers of a
head that arrives whole (too_large). MAX_ANSWER_BYTES, the JSON answer's bound, is checked by
the service before any image is decoded. Each refusal is one JSON line, and at most one
warning in the log a window (REFUSALS), so that a flood of bad connections cannot flood it.
"""
import http
import json
import logging
import math
import time

import h11
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from roadseg.serving.errors import RequestFailed

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


def too_large(scope):
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
