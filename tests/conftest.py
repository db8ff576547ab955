"""Shared test fixtures: tiny synthetic data sets, a tiny VGG16 SavedModel, seeded graphs, and a
local HTTP server for the downloads. Everything is made on the fly, offline.

Test modules import the builders from here (`from tests.conftest import make_kitti`); pytest
gives every test under tests/ the fixtures, and project_tests.py imports the ones it uses.
"""
import contextlib
import http.server
import io
import os
import subprocess
import sys
import threading
import zipfile

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import main
from roadseg import files
from roadseg.data.pipeline import one_hot
from roadseg.model import vgg
from roadseg.model.ops import tf, tf1
from roadseg.model_info import MODEL_INFO, ModelInfo
from roadseg.training import outputs

# Hypothesis (tests/test_fuzz_*.py): `ci`, the default, is small, fast and the same every run;
# `long` hunts, e.g. `pytest tests/test_fuzz_inputs.py --hypothesis-profile long` or
# HYPOTHESIS_PROFILE=long. The plugin's --hypothesis-profile, applied after this, wins.
settings.register_profile('ci', max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('long', max_examples=2000, deadline=None, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow])
if settings.get_current_profile_name() in ('default', 'ci'):  # not already chosen by the flag
    settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project's top level
SHARED_DATA = os.path.join(ROOT, '..', 'shared', 'data')  # this repository's real data, if any
TINY_BLOCKS = ((4, 4), (4, 4), (6, 6, 6), (8, 8, 8), (8, 8, 8))  # VGG16's 13 convolutions
TINY_FC = 16
SHAPE = (32, 64)  # the training size of the tiny deployable model (save_tiny_model)
NAMES, COLORS = ['not road', 'road', 'sky'], [[255, 0, 0], [255, 0, 255], [0, 0, 255]]
ROAD, NOT_ROAD, VOID = (255, 0, 255), (255, 0, 0), (0, 0, 0)  # KITTI's ground-truth colours


# ----------------------------------------------------------------------------------------------
# Graphs and the tiny VGG16
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def own_graph():
    """Each test builds into a graph of its own, seeded: initial weights are the same each run."""
    with tf.Graph().as_default() as graph:
        tf1.set_random_seed(0)
        yield graph


@pytest.fixture
def sess(own_graph):
    with tf1.Session(graph=own_graph) as session:
        yield session


def save_tiny_vgg(path, seed=0):
    """A SavedModel with Udacity's signature and a few channels per layer."""
    return vgg.save_vgg_saved_model(path, blocks=TINY_BLOCKS, fc_width=TINY_FC, seed=seed)


def save_partial_model(path, tags):
    """A SavedModel under `tags` with image_input, keep_prob and layer3_out only."""
    with tf.Graph().as_default(), tf1.Session() as s:
        image = tf1.placeholder(tf.float32, [None, None, None, 3], 'image_input')
        tf1.placeholder(tf.float32, [], 'keep_prob')
        tf.identity(image, 'layer3_out')
        builder = tf1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(s, list(tags))
        builder.save()
    return path


@pytest.fixture(scope='module')
def tiny_vgg(tmp_path_factory):
    return save_tiny_vgg(str(tmp_path_factory.mktemp('model') / 'vgg'))


def value_of(sess, name):
    """The value of the session graph's variable called `name`."""
    with sess.graph.as_default():
        (variable,) = [v for v in tf1.global_variables() if v.name == name]
    return sess.run(variable)


def write_keras_h5(path, blocks=TINY_BLOCKS, fc=TINY_FC, top=True, seed=0, trainable=False):
    """A weights file in the layout of Keras's vgg16_weights_tf_dim_ordering_tf_kernels.h5;
    `trainable`: kernels He-scaled and biases 0, so that activations keep their scale."""
    rng = np.random.default_rng(seed)

    def layer(*shape):
        scale = np.sqrt(2 / np.prod(shape[:-1])) if trainable else 1.0
        return [rng.normal(size=shape) * scale, rng.normal(size=shape[-1]) * (not trainable)]
    weights, channels = {}, 3
    for b, widths in enumerate(blocks, 1):
        for c, width in enumerate(widths, 1):
            weights[f'block{b}_conv{c}'] = layer(3, 3, channels, width)
            channels = width
    if top:
        weights['fc1'] = layer(7 * 7 * channels, fc)
        weights['fc2'] = layer(fc, fc)
        weights['predictions'] = [rng.normal(size=(fc, 10)), rng.normal(size=10)]
    with h5py.File(path, 'w') as f:
        f.attrs['layer_names'] = [n.encode() for n in weights] + [b'flatten']
        f.create_group('flatten').attrs['weight_names'] = []
        for name, (kernel, bias) in weights.items():
            group = f.create_group(name)
            names = [f'{name}_W_1:0', f'{name}_b_1:0']
            group.attrs['weight_names'] = [n.encode() for n in names]
            group[names[0]] = kernel.astype(np.float32)
            group[names[1]] = bias.astype(np.float32)
    return weights


# ----------------------------------------------------------------------------------------------
# Synthetic KITTI data
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# A tiny trained model, as main.py saves it (predict, export, serve)
# ----------------------------------------------------------------------------------------------

def road_scene(rng, height, width):
    """A road-coded image with a random road boundary (a horizon row, or a vertical edge with
    road on a random side) and its class map."""
    if rng.random() < 0.5:
        road = np.arange(height)[:, None] >= rng.integers(height // 4, 3 * height // 4)
    else:
        road = np.arange(width)[None] < rng.integers(width // 4, 3 * width // 4)
        road = road if rng.random() < 0.5 else ~road
    road = np.broadcast_to(road, (height, width))
    image = rng.normal(100, 15, (height, width, 3))
    image[..., 0] = np.where(road, 250, 10) + rng.normal(0, 15, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8), road.astype(np.uint8)


def save_tiny_model(path, num_classes=2, steps=0, seed=0):
    """outputs.save_model of the tiny FCN at SHAPE after `steps` Adam steps on road scenes."""
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(seed)
        image = tf1.placeholder(tf.float32, [None, None, None, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        last = main.layers(*vgg.build_encoder(image, keep_prob, TINY_BLOCKS,
                                              TINY_FC), num_classes)
        label = tf1.placeholder(tf.float32, [None, None, None, num_classes])
        logits, train_op, _ = main.optimize(last, label, 1e-2, num_classes)
        probabilities = tf.reshape(tf.nn.softmax(logits), tf.shape(last))
        sess.run(tf1.global_variables_initializer())
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            images, classes = zip(*(road_scene(rng, *SHAPE) for _ in range(4)))
            sess.run(train_op, {image: np.stack(images), keep_prob: 1.0,
                                label: one_hot(np.stack(classes), num_classes)})
        outputs.save_model(sess, path, image, keep_prob, probabilities, {
            'image_shape': list(SHAPE), 'num_classes': num_classes,
            'class_names': NAMES[:num_classes], 'class_colors': COLORS[:num_classes],
            'dataset': 'kitti', 'label': 'road', 'classes': None, 'remap': None, 'epoch': 1,
            'val_iou': None, 'encoder': 'a key predict.py does not know'})
    return path


def write_tiny_onnx(folder, num_classes=2, manifest=True):
    """A tiny ONNX model shaped as export.py writes one, built with onnx's helpers (no
    TensorFlow, no tf2onnx): `image` [N, *SHAPE, 3] float32 in, `probabilities` out, the
    softmax of a fixed linear map of each pixel's colour (road where red is high, as in
    road_scene). fcn.json and, with `manifest`, manifest.json go beside it; returns its path."""
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper, numpy_helper
    weights = np.zeros((3, num_classes), np.float32)
    weights[0, :2] = [-0.02, 0.02]  # logits -2.5, 2.5 at red 250; 2.3, -2.3 at red 10
    bias = np.zeros(num_classes, np.float32)
    bias[:2] = [2.6, -2.6]
    graph = helper.make_graph(
        [helper.make_node('MatMul', ['image', 'weights'], ['logits']),
         helper.make_node('Add', ['logits', 'bias'], ['shifted']),
         helper.make_node('Softmax', ['shifted'], ['probabilities'], axis=-1)],
        'tiny', [helper.make_tensor_value_info('image', TensorProto.FLOAT, ['N', *SHAPE, 3])],
        [helper.make_tensor_value_info('probabilities', TensorProto.FLOAT,
                                       ['N', *SHAPE, num_classes])],
        [numpy_helper.from_array(weights, 'weights'), numpy_helper.from_array(bias, 'bias')])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, 'model.onnx')
    onnx.save(model, path)
    ModelInfo(SHAPE, num_classes, tuple(NAMES[:num_classes]),
              tuple(map(tuple, COLORS[:num_classes]))).write(folder)
    if manifest:
        files.write_manifest(folder, ['model.onnx', MODEL_INFO])
    return path


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    """A KITTI-named PNG of 45x77 and a JPEG of 50x90 in a folder."""
    folder = tmp_path_factory.mktemp('inputs')
    rng = np.random.default_rng(1)
    iio.imwrite(folder / 'um_000007.png', road_scene(rng, 45, 77)[0])
    iio.imwrite(folder / 'street.jpg', road_scene(rng, 50, 90)[0], quality=95)
    return folder


def label_rgb(height, width, left_is_road=True):
    """A KITTI label: road on one half, not-road on the other, a black (void) top row."""
    rgb = np.zeros((height, width, 3), np.uint8)
    half = width // 2
    rgb[:, :half] = ROAD if left_is_road else NOT_ROAD
    rgb[:, half:] = NOT_ROAD if left_is_road else ROAD
    rgb[0] = VOID
    return rgb


def road_coded_image(label):
    """An image whose red channel says which class its label has: 250 road, 10 not road."""
    image = np.full(label.shape, 100, np.uint8)
    image[..., 0] = np.where(np.all(label == ROAD, axis=-1), 250, 10)
    return image


def make_kitti(root, stems=('um_000000', 'um_000001', 'um_000002'), size=(40, 70),
               label='road', testing=()):
    """A KITTI Road folder `root/data_road` with training pairs and optional testing images."""
    training = os.path.join(root, 'data_road', 'training')
    os.makedirs(os.path.join(training, 'image_2'), exist_ok=True)
    os.makedirs(os.path.join(training, 'gt_image_2'), exist_ok=True)
    for i, stem in enumerate(stems):
        category, number = stem.split('_')
        rgb = label_rgb(*size, left_is_road=i % 2 == 0)
        iio.imwrite(os.path.join(training, 'image_2', stem + '.png'), road_coded_image(rgb))
        iio.imwrite(os.path.join(training, 'gt_image_2', f'{category}_{label}_{number}.png'), rgb)
    for stem, shape in testing:
        folder = os.path.join(root, 'data_road', 'testing', 'image_2')
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(len(stem))
        iio.imwrite(os.path.join(folder, stem + '.png'),
                    rng.integers(0, 256, shape + (3,), dtype=np.uint8))
    return training


def write_bad(path, kind):
    """Overwrite a PNG with one kind of bad content."""
    if kind == 'truncated':
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    elif kind == 'not a png':
        open(path, 'wb').write(b'hello')
    elif kind == 'grayscale':
        iio.imwrite(path, np.zeros((40, 70), np.uint8))
    elif kind == 'rgba':
        iio.imwrite(path, np.zeros((40, 70, 4), np.uint8))
    elif kind == 'unknown colour':
        rgb = label_rgb(40, 70)
        rgb[5, 7] = (12, 34, 56)
        iio.imwrite(path, rgb)
    elif kind == 'other size':
        iio.imwrite(path, label_rgb(41, 70))


@pytest.fixture
def tiny_data(tmp_path, tiny_vgg):
    data = tmp_path / 'data'
    make_kitti(data, stems=('um_000000', 'um_000001', 'um_000002', 'um_000003'),
               testing=(('um_000000', (50, 90)), ('umm_000001', (45, 100))))
    os.symlink(tiny_vgg, data / 'vgg')
    return data


# ----------------------------------------------------------------------------------------------
# A local HTTP server, and main.py as a user runs it
# ----------------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files[path]`, honouring `Range: bytes=N-` (206, or 416 past the end) unless the
    path ends in `?norange`; `?truncated` promises the whole file but sends only its first
    half. Every request's path and Range header is noted in `requests`."""
    files, requests = {}, []

    def do_GET(self):
        path, _, mode = self.path.partition('?')
        body = self.files.get(path)
        asked = self.headers.get('Range')
        self.requests.append((self.path, asked))
        if body is None:
            self.send_error(404)
            return
        start = int(asked[len('bytes='):-1]) if asked and mode != 'norange' else None
        if start is not None and start >= len(body):
            self.send_error(416)
            return
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        body = body[start or 0:]
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if mode == 'truncated' else body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(files):
    """An HTTP server on 127.0.0.1 serving `files`; yields its base URL."""
    Handler.files, Handler.requests = files, []
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


def zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def leftovers(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def run_main(*args, cwd=ROOT, proxy=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    if proxy:
        env.update(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy)
    return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
