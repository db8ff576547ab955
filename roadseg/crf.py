"""Dense-CRF post-processing (--crf): a fully connected CRF (Krähenbühl and Koltun 2011) on a
model's softmax probabilities, the image as the bilateral kernel's guide, so that class edges
move to the image's colour edges. An optional dependency: `pip install 'roadseg[crf]'`.

The kernel widths and weights live in roadseg/configs/crf.json, chosen on training images (never on
a validation split) by `python choose_crf.py --model RUN_DIR`, which scores a grid of them
(`search`) on the run's training images and prints the best.
"""
import concurrent.futures
import concurrent.futures.process
import functools
import itertools
import json
import multiprocessing
import signal
import sys
import threading

import numpy as np
import pebble
from tqdm import tqdm

from roadseg import configs, evaluation, files, inference, metrics
from roadseg.errors import UserError

DEFAULT_PARAMETERS = configs.path('crf.json')
# Each parameter's type and range (widths in pixels at the image's own size, colour steps of
# 0..255). Outside them pydensecrf's native code divides by zero and crashes the process
# (a width of 0, or below about 1e-20), or runs for ever (iterations); the ranges keep well
# clear of both while spanning every sensible setting.
LIMITS = {'iterations': (int, 1, 50),
          'gaussian_sxy': (float, 0.1, 1000), 'gaussian_weight': (float, 0, 100),
          'bilateral_sxy': (float, 0.1, 1000), 'bilateral_srgb': (float, 0.1, 1000),
          'bilateral_weight': (float, 0, 100)}
KEYS = tuple(LIMITS)
# The grid choose_crf.py searches, about DeepLab's choices
GRID = {'bilateral_sxy': (40, 80, 120), 'bilateral_srgb': (5, 10, 20),
        'bilateral_weight': (4, 8, 12)}
# How long the server's worker process may take over one image before it is stopped
TIMEOUT_S = 60
BROKEN = concurrent.futures.process.BrokenProcessPool


class RefineFailed(Exception):
    """The server's dense CRF crashed or overran on one image; its worker was replaced."""


def require():
    """pydensecrf's DenseCRF2D, or one line saying what to install."""
    try:
        from pydensecrf import densecrf
    except ImportError:
        raise UserError("--crf needs pydensecrf2: pip install 'roadseg[crf]' (it builds from "
                        'source with gcc, in about two minutes)') from None
    return densecrf.DenseCRF2D


def add_flag(parser):
    """The --crf [FILE.json] option of evaluate.py, predict.py and serve.py."""
    parser.add_argument('--crf', nargs='?', const=DEFAULT_PARAMETERS, metavar='FILE.json',
                        help='refine each prediction with a dense CRF guided by the image '
                             '(needs pydensecrf2), its kernels from FILE.json (default: '
                             'roadseg/configs/crf.json)')


def parameters_for(path):
    """For --crf `path`: its checked parameters, or None without --crf. Stops at once with one
    line when pydensecrf2 or the file is missing or the file is bad."""
    if path is None:
        return None
    require()
    return read_parameters(path)


def refiner(path):
    """For --crf `path`: refine(image, probabilities) with its parameters, in this process, or
    None without --crf (parameters_for's checks)."""
    parameters = parameters_for(path)
    return parameters and functools.partial(refine, parameters=parameters)


def read_parameters(path=DEFAULT_PARAMETERS):
    """The CRF's kernel widths and weights from a JSON file of KEYS, each checked against its
    LIMITS: a bad file is one line naming it, the key and the allowed range."""
    parameters = files.read_json(path, 'give a JSON file of CRF parameters')
    if not isinstance(parameters, dict):
        raise UserError(f'{path}: a CRF parameter file holds one JSON object of '
                        f'{", ".join(KEYS)}')
    unknown = sorted(set(parameters) - set(KEYS))
    if unknown:
        raise UserError(f'{path}: unknown CRF parameter {unknown[0]!r}; the keys are '
                        f'{", ".join(KEYS)}')
    missing = [key for key in KEYS if key not in parameters]
    if missing:
        raise UserError(f'{path}: CRF parameters need numbers for {", ".join(missing)}')
    for key, (kind, low, high) in LIMITS.items():
        value = parameters[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and (kind is float or isinstance(value, int)) and low <= value <= high):
            wanted = 'a whole number' if kind is int else 'a number'
            raise UserError(f'{path}: {key} is {json.dumps(value)}; it must be {wanted} from '
                            f'{low:g} to {high:g}')
    return {key: parameters[key] for key in KEYS}


def refine(image, probabilities, parameters):
    """The CRF's class probabilities [H, W, C] for `probabilities` [H, W, C] of the RGB `image`
    [H, W, 3] (both at the image's own size): mean-field inference from the softmax as the
    unary term, with a smoothness (Gaussian) and an appearance (bilateral) kernel, Potts
    compatibilities."""
    dense_crf = require()
    height, width, classes = probabilities.shape
    crf = dense_crf(width, height, classes)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).transpose(2, 0, 1).reshape(classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=parameters['gaussian_sxy'],
                            compat=parameters['gaussian_weight'])
    crf.addPairwiseBilateral(sxy=parameters['bilateral_sxy'], srgb=parameters['bilateral_srgb'],
                             rgbim=np.array(image[..., :3], np.uint8, order='C'),
                             compat=parameters['bilateral_weight'])
    q = np.array(crf.inference(int(parameters['iterations'])), np.float32)
    return q.reshape(classes, height, width).transpose(1, 2, 0)


class IsolatedRefiner:
    """`refine` with fixed parameters in worker processes, for the server: pydensecrf is native
    code, and a crash or an overrun there ends a worker, not the service; that image's request
    fails with RefineFailed. A worker that dies between requests (killed, or crashed) leaves
    pebble's pool broken for good: the next call, or `state`, replaces the pool, and a call
    that found it broken is retried once in the new one. Workers are spawned, not forked from
    a process that may hold TensorFlow's threads."""

    def __init__(self, parameters, workers=1, timeout_s=TIMEOUT_S):
        self.parameters, self.workers, self.timeout_s = parameters, workers, timeout_s
        self.restarts, self.lock = 0, threading.Lock()  # workers replaced so far
        self.pool = self._new_pool()

    def _new_pool(self):
        return pebble.ProcessPool(self.workers, context=multiprocessing.get_context('spawn'))

    def __call__(self, image, probabilities):
        pool = self.pool
        try:
            return self._refine(pool, image, probabilities)
        except _Broken:
            self._replace(pool)
        try:
            return self._refine(self.pool, image, probabilities)
        except _Broken as e:
            raise RefineFailed(f'the dense CRF\'s worker cannot run ({e})') from None

    def _refine(self, pool, image, probabilities):
        try:
            future = pool.schedule(refine, (image, probabilities, self.parameters),
                                   timeout=self.timeout_s)
        except (RuntimeError, BROKEN) as e:  # a pool in error, or whose workers cannot start
            raise _Broken(_reason(e)) from e
        try:
            return future.result()
        except BROKEN as e:  # it broke with this image queued
            raise _Broken(_reason(e)) from e
        except pebble.ProcessExpired as e:
            self.restarts += 1
            code = e.exitcode
            how = f'signal {signal.Signals(-code).name}' if code and code < 0 and \
                -code in signal.Signals._value2member_map_ else f'exit status {code}'
            raise RefineFailed(f'the dense CRF crashed ({how}); its worker was restarted') \
                from None
        except concurrent.futures.TimeoutError:
            self.restarts += 1
            raise RefineFailed(f'the dense CRF took over {self.timeout_s:g} s; its worker was '
                               f'stopped and restarted') from None

    def _replace(self, broken):
        """A new pool in place of `broken`, unless another thread replaced it already."""
        with self.lock:
            if self.pool is not broken:
                return
            print('warning: the dense CRF\'s worker pool is broken (a worker ended outside a '
                  'request, or none could start); starting a new one', file=sys.stderr,
                  flush=True)
            self.pool = self._new_pool()
            self.restarts += 1
        broken.stop()
        broken.join()

    def state(self):
        """For /healthz: {"workers", "ready" (the pool can take an image), "restarts"}; a pool
        found broken is replaced first, so that this says what the next request finds."""
        pool = self.pool
        if not _running(pool):
            self._replace(pool)
        return {'workers': self.workers, 'ready': _running(self.pool),
                'restarts': self.restarts}

    def warm_up(self):
        """Start a worker and refine a tiny image, so the first request does not wait for it;
        a failure is reported in one line and left to the requests (each answered 500)."""
        try:
            self(np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 2), 0.5, np.float32))
        except RefineFailed as e:
            print(f'warning: {e}', file=sys.stderr, flush=True)

    def close(self):
        self.pool.stop()
        self.pool.join()


class _Broken(Exception):
    """IsolatedRefiner's pool cannot take work: replaced, and the image retried."""


def _reason(error):
    """The first message along an exception's causes (pebble's often have none)."""
    while error is not None and not str(error):
        error = error.__cause__ or error.__context__
    return str(error) if error is not None else 'no reason given'


def _running(pool):
    """Whether a pebble pool can take work, starting its workers if it has not yet."""
    try:
        return pool.active
    except BROKEN:  # they cannot start
        return False


def search(model, samples, base):
    """Each GRID combination over `base`, scored on `samples` ((name, image, label map)):
    [(key metric, parameters)], best first, with the key metric (mean IoU; road IoU for two
    classes) without the CRF as parameters None."""
    predictions = [(inference.segment(model, [image])[0], image, label)
                   for _, image, label in tqdm(samples, desc='Segmenting', leave=False,
                                                    disable=None)]

    def score(parameters):
        confusion = metrics.ConfusionMatrix(model.num_classes)
        for probabilities, image, label in predictions:
            if parameters:
                probabilities = refine(image, probabilities, parameters)
            confusion.update(label, probabilities.argmax(-1))
        return evaluation.key_metric(confusion.results())
    results = [(score(None), None)]
    for values in tqdm(list(itertools.product(*GRID.values())), desc='CRF settings',
                       leave=False, disable=None):
        parameters = {**base, **dict(zip(GRID, values))}
        results.append((score(parameters), parameters))
    return sorted(results, key=lambda r: -r[0])
