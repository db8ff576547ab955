"""Serve a trained model over HTTP: TensorFlow Serving's REST API, a PNG endpoint and a page to
try it in a browser.

    python serve.py --model runs/20261121-143000 [--host 127.0.0.1] [--port 8501] \\
        [--max-batch 8] [--batch-timeout-ms 5] [--workers N] [--max-pixels 40000000] \\
        [--max-body-bytes 64000000] [--max-answer-bytes 32000000] [--head-timeout-s 5] \\
        [--max-connections 512]

then open http://127.0.0.1:8501/ and drop an image. Endpoints (roadseg.serving):

    POST /v1/models/fcn:predict   {"instances": [{"b64": "<JPEG or PNG>"}]} -> {"predictions": ...}
    GET  /v1/models/fcn           status, as TensorFlow Serving answers it
    GET  /v1/models/fcn/metadata  signatures, input size, classes, format
    POST /segment?output=overlay|mask|probability&crop=TOP,BOTTOM&flip_tta=1   image -> PNG
    GET  /  the page;  GET /healthz;  GET /metrics (Prometheus)

--model takes whatever predict.py takes: a run folder, a SavedModel, a frozen graph (.pb), a
TFLite model (.tflite, run on LiteRT without importing TensorFlow) or an ONNX model (.onnx, on
onnxruntime, also without TensorFlow). Concurrent requests are
gathered into one model call of up to --max-batch images, waiting at most --batch-timeout-ms
for more after the first. SIGTERM (or Ctrl-C) answers the requests in flight, then stops.
What a client can make the server read, build or hold is bounded (roadseg.serving.limits): the body,
the JSON answer, the time a request head may take, the open connections.
"""
import argparse
import errno
import functools
import json
import math
import os
import re
import resource
import signal
import socket
import sys

import uvicorn

from roadseg import cli, crf, inference, zoo
from roadseg.errors import UserError
from roadseg.serving import limits
from roadseg.serving.app import create_app
from roadseg.serving.protocol import MODEL_NAME

GRACE_S = 30  # how long a stopping server lets requests in flight finish
FD_RESERVE = 256  # open files a server process needs beside its connections (model, log, CRF)


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', help='a run folder, a SavedModel folder, a frozen graph .pb, '
                                        'a .tflite, a .onnx, or a shipped model by name: '
                                        f'{", ".join(zoo.SHIPPED)} (default: {zoo.DEFAULT})')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default: %(default)s, this machine only; '
                             '0.0.0.0 for every interface)')
    parser.add_argument('--port', type=int, default=8501,
                        help="port (default: %(default)s, TensorFlow Serving's REST port)")
    parser.add_argument('--max-batch', type=int, default=8,
                        help='most images per model call (default: %(default)s)')
    parser.add_argument('--batch-timeout-ms', type=float, default=5.0,
                        help='how long a model call waits for more images after the first '
                             '(default: %(default)s)')
    parser.add_argument('--workers', type=int, default=1,
                        help='server processes, each with its own copy of the model '
                             '(default: %(default)s)')
    parser.add_argument('--max-pixels', type=int, default=40_000_000,
                        help='larger images are refused with 413 (default: %(default)s)')
    parser.add_argument('--max-body-bytes', type=int, default=limits.MAX_BODY_BYTES,
                        help='a larger request body is refused with 413 before it is read '
                             '(default: %(default)s)')
    parser.add_argument('--max-answer-bytes', type=int, default=limits.MAX_ANSWER_BYTES,
                        help='a predict request whose JSON answer would be larger is refused '
                             'with 413 before any image is decoded; the *_png signatures answer '
                             'small PNGs (default: %(default)s)')
    parser.add_argument('--head-timeout-s', type=float, default=limits.HEAD_TIMEOUT_S,
                        help='a connection whose request head has not arrived this long after '
                             'it opened, or after its last answer, is closed (default: '
                             '%(default)s)')
    parser.add_argument('--max-connections', type=int, default=limits.MAX_CONNECTIONS,
                        help='open connections a server process holds; one more closes the '
                             'one waiting longest for a request head, or is answered 503 '
                             '(default: %(default)s)')
    parser.add_argument('--model-name', type=model_name_arg,
                        help="the model's name in TensorFlow Serving's URLs, /v1/models/NAME "
                             "(TensorFlow Serving's flag; default: the shipped model's name, "
                             f"else {MODEL_NAME})")
    crf.add_flag(parser)
    args = parser.parse_args(argv)
    for flag, value, low in (('--port', args.port, 1), ('--max-batch', args.max_batch, 1),
                             ('--workers', args.workers, 1), ('--max-pixels', args.max_pixels, 1),
                             ('--batch-timeout-ms', args.batch_timeout_ms, 0),
                             ('--max-body-bytes', args.max_body_bytes, 1),
                             ('--max-answer-bytes', args.max_answer_bytes, 1),
                             ('--head-timeout-s', args.head_timeout_s, 0.1),
                             ('--max-connections', args.max_connections, 1)):
        if value < low:
            parser.error(f'argument {flag}: must be at least {low}')
    for flag, value in (('--batch-timeout-ms', args.batch_timeout_ms),
                        ('--head-timeout-s', args.head_timeout_s)):
        if not math.isfinite(value):
            parser.error(f'argument {flag}: must be a finite number')
    if args.port > 65535:
        parser.error('argument --port: must be at most 65535')
    return args


def model_name_arg(text):
    """A model name for URLs: letters, digits, '.', '_' and '-', starting with a letter or
    digit, at most 100 characters."""
    if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]{0,99}', text):
        raise argparse.ArgumentTypeError(f'{text!r}: use letters, digits, ".", "_" and "-", '
                                         f'starting with a letter or digit, at most 100')
    return text


def served_name(args, model_path):
    """The model's name in the URLs: --model-name, else the shipped model's name (--model
    naming one, or none given, resolved to `model_path`), else MODEL_NAME."""
    return args.model_name or zoo.shipped_name(args.model, model_path) or MODEL_NAME


def check_port(host, port):
    """Stop with one line when `host:port` cannot be listened on (in use, or not this
    machine's address), before the model is loaded."""
    try:
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        why = 'in use; choose another --port' if e.errno == errno.EADDRINUSE else \
            f'cannot listen there ({e.strerror or e})'
        raise UserError(f'--host {host} --port {port}: {why}') from None


def check_file_limit(connections):
    """Raise this process's limit on open files (ulimit -n) to hold `connections`, as many
    refused ones lingering (limits.LimitedH11Protocol) and FD_RESERVE more, or stop with one
    line: accept() failing for want of a file descriptor starves the service and logs a
    traceback a connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(f'--max-connections {connections} needs {needed} open files, over this '
                        f'process\'s limit of {hard} (ulimit -Hn); lower --max-connections')
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def stopped(*_):
    """SIGTERM before uvicorn runs (while the model loads), or raised again by uvicorn after its
    graceful shutdown: a stop that was asked for, so exit status 0."""
    print('stopped on SIGTERM', flush=True)
    sys.exit(0)


def main(argv=None):
    args = parse_args(argv)
    model_path = zoo.resolve(args.model)  # a missing shipped model: one line, now
    print(zoo.describe(args.model, model_path), flush=True)
    check_port(args.host, args.port)
    check_file_limit(args.max_connections)
    settings = {'max_batch': args.max_batch, 'batch_timeout_ms': args.batch_timeout_ms,
                'max_pixels': args.max_pixels, 'max_body_bytes': args.max_body_bytes,
                'max_answer_bytes': args.max_answer_bytes,
                'model_name': served_name(args, model_path)}
    crf_parameters = crf.parameters_for(args.crf)  # a bad file or no pydensecrf2: one line, now
    signal.signal(signal.SIGTERM, stopped)
    model = inference.load_model(model_path)  # one that does not load: one line, now
    print(f'serving {model_path} as {settings["model_name"]} ({model.kind}, '
          f'{model.num_classes} classes, '
          f'{model.image_shape[0]}x{model.image_shape[1]}'
          + (f', dense CRF of {args.crf}' if args.crf else '')
          + f') on http://{args.host}:{args.port}/', flush=True)
    common = {'host': args.host, 'port': args.port, 'timeout_graceful_shutdown': GRACE_S,
              'http': functools.partial(limits.LimitedH11Protocol,
                                        head_timeout_s=args.head_timeout_s,
                                        max_connections=args.max_connections)}
    if args.workers == 1:
        uvicorn.run(create_app(model, **settings, crf_parameters=crf_parameters),
                    **common)
    else:  # each worker process loads the model itself (roadseg.serving.app.app_from_environment)
        model.close()
        os.environ['ROADSEG_SERVE'] = json.dumps({
            'model': os.path.abspath(model_path),
            'crf': args.crf and os.path.abspath(args.crf), **settings})
        uvicorn.run('roadseg.serving.app:app_from_environment', factory=True,
                    workers=args.workers, **common)


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
