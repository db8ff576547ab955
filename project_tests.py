"""Tests of each step of the FCN-8s project, offline, on tiny fixtures made on the fly.

Run with `python -m pytest project_tests.py` or `python project_tests.py`.
"""
import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

import datasets
import helper
import main
import vgg

tf = main.tf
tf1 = main.tf1
HERE = os.path.dirname(os.path.abspath(__file__))
TINY_BLOCKS = ((4, 4), (4, 4), (6, 6, 6), (8, 8, 8), (8, 8, 8))  # VGG16's 13 convolutions
TINY_FC = 16
ROAD, NOT_ROAD, VOID = (255, 0, 255), (255, 0, 0), (0, 0, 0)  # KITTI's ground-truth colours


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
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


def value_of(sess, name):
    """The value of the session graph's variable called `name`."""
    with sess.graph.as_default():
        (variable,) = [v for v in tf1.global_variables() if v.name == name]
    return sess.run(variable)


def tiny_network(image_shape=(None, None)):
    """Tiny in-graph encoder + the FCN-8s decoder + optimize: the tensors train_nn needs."""
    image = tf1.placeholder(tf.float32, [None, *image_shape, 3], 'image_input')
    keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
    l3, l4, l7 = vgg.build_encoder(image, keep_prob, TINY_BLOCKS, TINY_FC)
    last = main.layers(l3, l4, l7, 2)
    label = tf1.placeholder(tf.float32, [None, None, None, 2])
    lr = tf1.placeholder(tf.float32, [])
    logits, train_op, loss = main.optimize(last, label, lr, 2)
    return dict(image=image, keep_prob=keep_prob, last=last, label=label, lr=lr, logits=logits,
                train_op=train_op, loss=loss)


# ----------------------------------------------------------------------------------------------
# load_vgg
# ----------------------------------------------------------------------------------------------

def test_load_vgg(sess, tiny_vgg):
    tensors = main.load_vgg(sess, tiny_vgg)
    assert [t.name for t in tensors] == list(main.VGG_TENSORS)
    image, keep_prob, l3, l4, l7 = tensors
    out = sess.run([l3, l4, l7], {image: np.zeros((1, 64, 96, 3)), keep_prob: 1.0})
    assert [o.shape for o in out] == [(1, 8, 12, 6), (1, 4, 6, 8), (1, 2, 3, TINY_FC)]


def test_load_vgg_restores_saved_weights(sess, tiny_vgg):
    main.load_vgg(sess, tiny_vgg)
    kernel = value_of(sess, 'block1_conv1/kernel:0')
    with tf.Graph().as_default(), tf1.Session() as other:
        main.load_vgg(other, tiny_vgg)
        again = value_of(other, 'block1_conv1/kernel:0')
    assert np.abs(kernel).sum() > 0 and np.array_equal(kernel, again)


def test_load_vgg_wrong_tag(sess, tmp_path):
    path = save_partial_model(str(tmp_path / 'other'), tags=('serve',))
    with pytest.raises(helper.UserError, match=r'other.*tagged .vgg16.'):
        main.load_vgg(sess, path)


def test_load_vgg_missing_tensor(sess, tmp_path):
    path = save_partial_model(str(tmp_path / 'partial'), tags=(vgg.TAG,))
    with pytest.raises(helper.UserError, match=r'partial.*lacks a tensor.*layer4_out'):
        main.load_vgg(sess, path)


def test_load_vgg_missing_folder(sess, tmp_path):
    with pytest.raises(helper.UserError, match='nowhere'):
        main.load_vgg(sess, str(tmp_path / 'nowhere'))


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------

def test_layers_unknown_size(sess):
    net = tiny_network()
    assert net['last'].shape.as_list() == [None, None, None, 2]
    sess.run(tf1.global_variables_initializer())
    for height, width in ((64, 96), (96, 32)):
        out = sess.run(net['last'], {net['image']: np.zeros((2, height, width, 3)),
                                     net['keep_prob']: 1.0})
        assert out.shape == (2, height, width, 2)


def test_layers_160x576(sess):
    net = tiny_network((160, 576))
    assert net['last'].shape.as_list() == [None, 160, 576, 2]
    sess.run(tf1.global_variables_initializer())
    out = sess.run(net['last'], {net['image']: np.zeros((1, 160, 576, 3)), net['keep_prob']: 1.0})
    assert out.shape == (1, 160, 576, 2)


def test_layers_scales_skips_and_collects_weight_decay(own_graph):
    l3 = tf1.placeholder(tf.float32, [1, 4, 4, 3])
    l4 = tf1.placeholder(tf.float32, [1, 2, 2, 3])
    l7 = tf1.placeholder(tf.float32, [1, 1, 1, 3])
    main.layers(l3, l4, l7, 2, weight_decay=0.5)
    scales = {op.inputs[0].name: float(tf.get_static_value(op.inputs[1]))
              for op in own_graph.get_operations() if op.type == 'Mul'
              and op.inputs[0].op.type == 'Placeholder'}
    assert scales == {l3.name: pytest.approx(1e-4), l4.name: pytest.approx(1e-2)}
    # 3 scoring kernels + 3 upsampling kernels, each 0.5 * sum(w^2) / 2
    assert len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)) == 6


def test_bilinear_kernel_upsamples_linearly(sess):
    kernel = main.bilinear_kernel(4, 1)
    np.testing.assert_allclose(kernel[:, :, 0, 0][0], [0.0625, 0.1875, 0.1875, 0.0625])
    ramp = np.arange(8, dtype=np.float32).reshape(1, 1, 8, 1).repeat(8, axis=1)
    up = sess.run(tf.nn.conv2d_transpose(ramp, kernel, [1, 16, 16, 1], 2, 'SAME'))
    # away from the border, a linear ramp stays a linear ramp at half the slope
    np.testing.assert_allclose(np.diff(up[0, 8, 2:14, 0]), 0.5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# optimize and train_nn
# ----------------------------------------------------------------------------------------------

def test_optimize_logits_shape_and_training_steps_change_weights(sess):
    net = tiny_network()
    sess.run(tf1.global_variables_initializer())
    labels = helper.one_hot(np.tile([[0, 1]], (2, 32, 32)).astype(np.uint8), 2)
    feed = {net['image']: np.random.default_rng(0).uniform(0, 255, (2, 32, 64, 3)),
            net['label']: labels, net['keep_prob']: 1.0, net['lr']: 1e-3}
    assert sess.run(net['logits'], feed).shape == (2 * 32 * 64, 2)
    weights = tf1.trainable_variables()

    def changed_by_a_step():
        before = sess.run(weights)
        sess.run(net['train_op'], feed)
        return {w.name for w, b, a in zip(weights, before, sess.run(weights))
                if not np.array_equal(b, a)}
    # the scoring layers start at zero (as in FCN), so the first step moves the decoder only...
    assert {'fcn8s/score_fr/kernel:0', 'fcn8s/upscore8/kernel:0'} <= changed_by_a_step()
    # ...and from the second on, every variable
    assert changed_by_a_step() == {w.name for w in weights}


def test_optimize_loss_ignores_void_and_learning_rate(sess):
    logits_in = tf1.placeholder(tf.float32, [1, 2, 2, 2])
    label = tf1.placeholder(tf.float32, [1, 2, 2, 2])
    lr = tf1.placeholder(tf.float32, [])
    scale = tf1.get_variable('scale', [], initializer=tf1.ones_initializer())  # for Adam
    _, _, loss = main.optimize(logits_in * scale, label, lr, 2)
    sess.run(tf1.global_variables_initializer())
    x = np.array([[[[2.0, 0.0], [0.0, 1.0]], [[5.0, -5.0], [1.0, 1.0]]]])
    y = np.array([[[[1, 0], [0, 1]], [[0, 0], [0, 1]]]], np.float32)  # pixel (1, 0) is void
    p = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    expected = -np.mean([np.log(p[0, 0, 0, 0]), np.log(p[0, 0, 1, 1]), np.log(p[0, 1, 1, 1])])
    got = sess.run(loss, {logits_in: x, label: y})  # learning_rate not fed: loss doesn't need it
    assert got == pytest.approx(expected, rel=1e-5)
    x_void_changed = x.copy()
    x_void_changed[0, 1, 0] = [-9.0, 9.0]
    assert sess.run(loss, {logits_in: x_void_changed, label: y}) == pytest.approx(got, rel=1e-6)


def jaccard_loss(truth, predicted):
    return 1 - np.sum(truth & predicted) / np.sum(truth | predicted)


@pytest.mark.parametrize('num_classes', [2, 4])
def test_lovasz_equals_one_minus_iou_on_hard_predictions(sess, num_classes):
    """On 0/1 probabilities the Lovasz extension is the Jaccard loss itself: 1 - IoU of class 1
    for two classes, the mean over present classes otherwise; void pixels do not count."""
    rng = np.random.default_rng(num_classes)
    truth = rng.integers(0, num_classes, 500)
    predicted = np.where(rng.random(500) < 0.7, truth, rng.integers(0, num_classes, 500))
    void = rng.random(500) < 0.2
    predicted[void] = 1  # would be wrong everywhere, were void scored
    labels = np.eye(num_classes, dtype=np.float32)[truth] * ~void[:, None]
    got = sess.run(main.lovasz_softmax(tf.constant(np.eye(num_classes, dtype=np.float32)[
        predicted]), tf.constant(labels)))
    kept = ~void
    expected = [jaccard_loss(truth[kept] == c, predicted[kept] == c)
                for c in ([1] if num_classes == 2 else range(num_classes))]
    assert got == pytest.approx(np.mean(expected), rel=1e-5)


def test_lovasz_scores_a_sample_of_large_batches(sess):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200_000)
    predicted = np.where(rng.random(200_000) < 0.8, truth, 1 - truth)
    loss = main.lovasz_softmax(tf.constant(np.eye(2, dtype=np.float32)[predicted]),
                               tf.constant(np.eye(2, dtype=np.float32)[truth]), max_pixels=5000)
    sampled = [sess.run(loss) for _ in range(2)]
    assert sampled[0] != sampled[1]  # a new sample each step...
    assert sampled == pytest.approx([jaccard_loss(truth == 1, predicted == 1)] * 2, abs=0.03)


def test_optimize_with_lovasz_adds_it_to_the_reported_loss(sess):
    logits_in = tf1.placeholder(tf.float32, [1, 4, 4, 2])
    label = tf1.placeholder(tf.float32, [1, 4, 4, 2])
    scale = tf1.get_variable('scale', [], initializer=tf1.ones_initializer())
    _, train_op, loss = main.optimize(logits_in * scale, label, 1e-2, 2, lovasz_weight=0.5)
    sess.run(tf1.global_variables_initializer())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, (1, 4, 4))]
    cross_entropy = sess.run(tf1.get_default_graph().get_tensor_by_name('cross_entropy_loss:0'),
                             {logits_in: x, label: y})
    lovasz = sess.run(main.lovasz_softmax(tf.nn.softmax(tf.reshape(logits_in, (-1, 2))),
                                          tf.reshape(label, (-1, 2))), {logits_in: x, label: y})
    assert lovasz > 0.1
    assert sess.run(loss, {logits_in: x, label: y}) == pytest.approx(
        cross_entropy + 0.5 * lovasz, rel=1e-5)
    sess.run(train_op, {logits_in: x, label: y})
    assert sess.run(scale) != 1.0


@pytest.mark.parametrize('class_weights', [None, [1.0, 3.0]])
def test_optimize_with_hard_pixels_averages_the_hardest_non_void_pixels(sess, class_weights):
    logits_in = tf1.placeholder(tf.float32, [1, 4, 4, 2])
    label = tf1.placeholder(tf.float32, [1, 4, 4, 2])
    scale = tf1.get_variable('scale', [], initializer=tf1.ones_initializer())
    _, train_op, loss = main.optimize(logits_in * scale, label, 1e-2, 2, class_weights,
                                      hard_pixels=0.4)
    sess.run(tf1.global_variables_initializer())
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 4, 2)).astype(np.float32)
    truth = rng.integers(0, 2, 16)
    y = np.eye(2, dtype=np.float32)[truth]
    y[:6] = 0  # void: not counted, not even in the fraction
    logits = x.reshape(16, 2)
    per_pixel = np.log(np.exp(logits).sum(1)) - logits[np.arange(16), truth]
    hardest = 6 + np.argsort(-per_pixel[6:])[:4]  # ceil(0.4 * 10 non-void pixels)
    w = np.ones(16) if class_weights is None else np.array(class_weights)[truth]
    feed = {logits_in: x, label: y.reshape(1, 4, 4, 2)}
    assert sess.run(loss, feed) == pytest.approx(
        (w * per_pixel)[hardest].sum() / w[hardest].sum(), rel=1e-5)
    sess.run(train_op, feed)
    assert sess.run(scale) != 1.0


@pytest.mark.parametrize('fraction', ['0', '1.5'])
def test_hard_pixels_outside_zero_to_one_is_a_one_line_error(fraction):
    with pytest.raises(helper.UserError, match=rf'--hard-pixels: {fraction}\S* must be in'):
        main.parse_args(['--hard-pixels', fraction])


def test_train_nn_reduces_loss_and_reports(sess, capsys):
    net = tiny_network()
    sess.run(tf1.global_variables_initializer())
    rng = np.random.default_rng(0)
    rgb = label_rgb(32, 64)
    classes = datasets.kitti_classes().decode(rgb, 'synthetic')
    image = road_coded_image(rgb).astype(np.float32)

    def get_batches_fn(batch_size):
        for _ in range(3):
            yield image[None].repeat(batch_size, 0) + rng.normal(0, 1, (batch_size, 32, 64, 3)), \
                helper.one_hot(classes[None].repeat(batch_size, 0), 2)

    history = main.train_nn(sess, 4, 2, get_batches_fn, net['train_op'], net['loss'],
                            net['image'], net['label'], net['keep_prob'], net['lr'],
                            keep_prob_value=1.0, learning_rate_value=1e-2)
    assert len(history) == 4 and history[-1] < history[0]
    out = capsys.readouterr().out
    assert f'epoch 1/4: mean loss {history[0]:.4f}' in out
    assert f'epoch 4/4: mean loss {history[3]:.4f}' in out


# ----------------------------------------------------------------------------------------------
# gen_batch_function and the KITTI reader
# ----------------------------------------------------------------------------------------------

def test_pairs_images_and_labels(tmp_path):
    training = make_kitti(tmp_path, stems=('um_000001', 'umm_000000', 'uu_000003'))
    pairs = helper.kitti_pairs(training, 'road')
    assert [tuple(map(os.path.basename, pair)) for pair in pairs] == [
        ('um_000001.png', 'um_road_000001.png'), ('umm_000000.png', 'umm_road_000000.png'),
        ('uu_000003.png', 'uu_road_000003.png')]


def test_lane_labels_leave_out_categories_without_lane_truth(tmp_path):
    training = make_kitti(tmp_path, stems=('um_000000', 'um_000001'), label='lane')
    make_kitti(tmp_path, stems=('uu_000000',), label='road')
    pairs = helper.kitti_pairs(training, 'lane')
    assert [os.path.basename(i) for i, _ in pairs] == ['um_000000.png', 'um_000001.png']


@pytest.mark.parametrize('remove, message', [
    ('image_2/um_000001.png', r'um_road_000001.png: label without an image'),
    ('gt_image_2/um_road_000001.png', r'um_000001.png: image without a road label'),
])
def test_unpaired_files_are_reported(tmp_path, remove, message):
    training = make_kitti(tmp_path)
    os.remove(os.path.join(training, remove))
    with pytest.raises(helper.UserError, match=message):
        helper.gen_batch_function(training, (32, 64))


def test_missing_and_empty_folders_are_reported(tmp_path):
    with pytest.raises(helper.UserError, match=r'nothing.image_2: folder not found'):
        helper.gen_batch_function(str(tmp_path / 'nothing'), (32, 64))
    training = make_kitti(tmp_path, stems=())
    with pytest.raises(helper.UserError, match=r'image_2: no .png images'):
        helper.gen_batch_function(training, (32, 64))


def test_batches_resize_labels_without_blending_and_keep_void(tmp_path):
    training = make_kitti(tmp_path, size=(47, 93))
    get_batches_fn = helper.gen_batch_function(training, (32, 64), seed=1)
    assert len(get_batches_fn) == 3
    batches = list(get_batches_fn(2))
    assert [len(images) for images, _ in batches] == [2, 1]
    for images, labels in batches:
        assert images.shape[1:] == (32, 64, 3) and labels.shape[1:] == (32, 64, 2)
        assert set(np.unique(labels)) == {0.0, 1.0}
        assert set(np.unique(labels.sum(-1))) == {0.0, 1.0}
        assert np.all(labels[:, 0].sum(-1) == 0)  # the black top row is void: all-zero rows
        assert np.all(labels[:, 1:].sum(-1) == 1)


def test_flip_moves_image_and_label_together(tmp_path):
    training = make_kitti(tmp_path, size=(32, 64))
    get_batches_fn = helper.gen_batch_function(training, (32, 64), seed=3)
    left_road = []
    for _ in range(6):
        for images, labels in get_batches_fn(3):
            road, valid = labels[..., 1] == 1, labels.sum(-1) == 1
            assert np.all((images[..., 0] > 128)[valid] == road[valid])
            left_road += list(road[:, 5, 0])
    assert any(left_road) and not all(left_road)  # both orientations occurred


def test_same_seed_same_batches(tmp_path):
    training = make_kitti(tmp_path)
    first = [b for b, _ in helper.gen_batch_function(training, (32, 64), seed=7)(2)]
    second = [b for b, _ in helper.gen_batch_function(training, (32, 64), seed=7)(2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


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


@pytest.mark.parametrize('which, kind, message', [
    ('image_2/um_000001.png', 'truncated', r'um_000001.png: cannot read image'),
    ('gt_image_2/um_road_000001.png', 'not a png', r'um_road_000001.png: cannot read image'),
    ('image_2/um_000001.png', 'grayscale', r'um_000001.png: grayscale image, expected 8-bit RGB'),
    ('image_2/um_000001.png', 'rgba', r'um_000001.png: RGBA image, expected 8-bit RGB'),
    ('gt_image_2/um_road_000001.png', 'rgba', r'um_road_000001.png: RGBA label image, expected'),
    ('gt_image_2/um_road_000001.png', 'unknown colour',
     r'um_road_000001.png: colour \(12, 34, 56\) at row 5, column 7 \(1 pixels\) is not in '
     r'.*kitti_road.json'),
    ('gt_image_2/um_road_000001.png', 'other size', r'um_road_000001.png: size 70x41 differs'),
])
def test_bad_files_are_reported(tmp_path, which, kind, message):
    training = make_kitti(tmp_path)
    write_bad(os.path.join(training, which), kind)
    with pytest.raises(helper.UserError, match=message):
        helper.gen_batch_function(training, (32, 64))


# ----------------------------------------------------------------------------------------------
# save_inference_samples
# ----------------------------------------------------------------------------------------------

def red_is_road_network():
    """A stand-in network whose road logit is (red - 128): road exactly where red > 128."""
    image = tf1.placeholder(tf.float32, [None, None, None, 3])
    keep_prob = tf1.placeholder(tf.float32, [])
    last = tf.stack([tf.zeros_like(image[..., 0]), image[..., 0] - 128.0], -1) * keep_prob
    return image, keep_prob, tf.reshape(last, (-1, 2))


def test_save_inference_samples_writes_overlays_at_original_size(sess, tmp_path):
    make_kitti(tmp_path, testing=(('uu_000000', (50, 90)), ('um_000007', (40, 70))))
    bad = tmp_path / 'data_road' / 'testing' / 'image_2' / 'zz_broken.png'
    bad.write_bytes(b'not an image')
    image, keep_prob, logits = red_is_road_network()
    out = helper.save_inference_samples(str(tmp_path / 'runs'), str(tmp_path), sess, (64, 96),
                                        logits, keep_prob, image)
    assert os.path.dirname(out) == str(tmp_path / 'runs')
    assert sorted(os.listdir(out)) == ['um_000007.png', 'uu_000000.png']
    for name, shape in (('uu_000000', (50, 90)), ('um_000007', (40, 70))):
        original = iio.imread(tmp_path / 'data_road' / 'testing' / 'image_2' / f'{name}.png')
        result = iio.imread(os.path.join(out, name + '.png'))
        assert result.shape == shape + (3,)
        road = original[..., 0] > 128
        expected = helper.overlay(original, road)
        # the road mask went through a resize to 64x96 and back: only its border may differ
        agree = np.all(result == expected, axis=-1)
        assert agree.mean() > 0.8
        assert np.array_equal(result[~road & agree], original[~road & agree])


def test_overlay_blends_green_only_on_the_mask():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = helper.overlay(image, mask)
    assert out[0, 0].tolist() == [50, 178, 50]
    assert np.all(out[~mask] == 100)


def test_samples_fall_back_to_training_images(tmp_path, capsys):
    make_kitti(tmp_path)
    paths = helper.sample_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ['um_000000.png', 'um_000001.png',
                                                    'um_000002.png']
    assert 'testing has no images' in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# The encoder builder and Keras weights
# ----------------------------------------------------------------------------------------------

def write_keras_h5(path, blocks=TINY_BLOCKS, fc=TINY_FC, top=True, seed=0):
    """A weights file in the layout of Keras's vgg16_weights_tf_dim_ordering_tf_kernels.h5."""
    rng = np.random.default_rng(seed)
    weights, channels = {}, 3
    for b, widths in enumerate(blocks, 1):
        for c, width in enumerate(widths, 1):
            weights[f'block{b}_conv{c}'] = [rng.normal(size=(3, 3, channels, width)),
                                            rng.normal(size=width)]
            channels = width
    if top:
        weights['fc1'] = [rng.normal(size=(7 * 7 * channels, fc)), rng.normal(size=fc)]
        weights['fc2'] = [rng.normal(size=(fc, fc)), rng.normal(size=fc)]
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


def test_keras_h5_weights_land_in_the_saved_model(sess, tmp_path):
    weights = write_keras_h5(tmp_path / 'w.h5')
    path = vgg.save_vgg_saved_model(str(tmp_path / 'vgg'), keras_h5=str(tmp_path / 'w.h5'))
    main.load_vgg(sess, path)
    get = functools.partial(value_of, sess)
    np.testing.assert_allclose(get('block3_conv1/kernel:0'), weights['block3_conv1'][0],
                               rtol=1e-6)
    fc6 = get('fc6/kernel:0')
    assert fc6.shape == (7, 7, 8, TINY_FC)
    # Keras flattens block5_pool (7, 7, C) row-major: fc1's row (y * 7 + x) * C + c is fc6[y, x, c]
    np.testing.assert_allclose(fc6[2, 3, 5], weights['fc1'][0][(2 * 7 + 3) * 8 + 5], rtol=1e-6)
    np.testing.assert_allclose(get('fc7/kernel:0')[0, 0], weights['fc2'][0], rtol=1e-6)


def test_keras_h5_without_required_layer_is_reported(tmp_path):
    with h5py.File(tmp_path / 'bad.h5', 'w') as f:
        f.create_group('block1_conv1').attrs['weight_names'] = []
    with pytest.raises(helper.UserError, match=r'bad.h5: no weights for layer block1_conv1'):
        vgg.read_keras_h5(str(tmp_path / 'bad.h5'))
    (tmp_path / 'text.h5').write_text('hello')
    with pytest.raises(helper.UserError, match=r'text.h5: not a readable Keras weights file'):
        vgg.read_keras_h5(str(tmp_path / 'text.h5'))


def test_caffe_preprocessing_is_bgr_minus_mean(sess):
    rgb = tf.constant([[[[10.0, 20.0, 30.0]]]])
    bgr = sess.run(vgg.preprocess(rgb, 'caffe'))
    np.testing.assert_allclose(bgr[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68],
                               rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Downloads, against a local HTTP server
# ----------------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files[path]`; a path ending in `?truncated` promises more bytes than it sends."""
    files = {}

    def do_GET(self):
        path, _, mode = self.path.partition('?')
        body = self.files.get(path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body) + (1000 if mode == 'truncated' else 0)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(files):
    """An HTTP server on 127.0.0.1 serving `files`; yields its base URL."""
    Handler.files = files
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


VGG_ZIP = zip_bytes({'vgg/saved_model.pb': b'model', 'vgg/variables/variables.index': b'idx'})


def leftovers(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_download_good_file(tmp_path):
    with serve({'/vgg.zip': VGG_ZIP}) as url:
        path = helper.maybe_download_pretrained_vgg(
            str(tmp_path), url=url + '/vgg.zip', sha256=hashlib.sha256(VGG_ZIP).hexdigest())
    assert (tmp_path / 'vgg' / 'saved_model.pb').read_bytes() == b'model'
    assert path == str(tmp_path / 'vgg') and leftovers(tmp_path) == ['vgg']
    # present now: no second download (the server is gone)
    assert helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip') == path


def test_download_kitti(tmp_path):
    data = zip_bytes({'data_road/training/image_2/um_000000.png': b'x'})
    with serve({'/data_road.zip': data}) as url:
        helper.maybe_download_kitti(str(tmp_path), url=url + '/data_road.zip')
    assert (tmp_path / 'data_road' / 'training' / 'image_2' / 'um_000000.png').exists()


def test_download_truncated_file(tmp_path):
    with serve({'/vgg.zip': VGG_ZIP}) as url:
        with pytest.raises(helper.UserError, match=r'vgg.zip.*(truncated|cut off).*by hand'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip?truncated')
    assert leftovers(tmp_path) == []


def test_download_wrong_checksum(tmp_path):
    with serve({'/vgg.zip': VGG_ZIP}) as url:
        with pytest.raises(helper.UserError, match=r'SHA-256 [0-9a-f]{64}, expected 0000'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip',
                                                 sha256='0' * 64)
    assert leftovers(tmp_path) == []


def test_download_refuses_member_escaping_the_folder(tmp_path):
    evil = zip_bytes({'vgg/saved_model.pb': b'ok', '../../evil.txt': b'gotcha'})
    data_dir = tmp_path / 'a' / 'b'
    with serve({'/vgg.zip': evil}) as url:
        with pytest.raises(helper.UserError, match=r"member '../../evil.txt' would be written"):
            helper.maybe_download_pretrained_vgg(str(data_dir), url=url + '/vgg.zip')
    assert not (tmp_path / 'evil.txt').exists() and not (data_dir / 'vgg').exists()


def test_download_offline_gives_manual_steps(tmp_path):
    with serve({}) as url:
        pass  # the server is closed: nothing listens on that port any more
    with pytest.raises(helper.UserError, match=r'could not download .* by hand and unzip it'):
        helper.maybe_download_kitti(str(tmp_path), url=url + '/data_road.zip')
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# main.py end to end
# ----------------------------------------------------------------------------------------------

def run_main(*args, cwd=HERE, proxy=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    if proxy:
        env.update(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy)
    return subprocess.run([sys.executable, os.path.join(HERE, 'main.py'), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tiny_data(tmp_path, tiny_vgg):
    data = tmp_path / 'data'
    make_kitti(data, stems=('um_000000', 'um_000001', 'um_000002', 'um_000003'),
               testing=(('um_000000', (50, 90)), ('umm_000001', (45, 100))))
    os.symlink(tiny_vgg, data / 'vgg')
    return data


def event_tags(run_dir):
    """{tag: number of values} over a run folder's TensorBoard event files."""
    tags = {}
    for path in run_dir.glob('events.out.tfevents.*'):
        for event in tf1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags[value.tag] = tags.get(value.tag, 0) + 1
    return tags


def test_main_end_to_end(tiny_data, tmp_path):
    runs = tmp_path / 'runs'
    result = run_main('--data-dir', str(tiny_data), '--runs-dir', str(runs), '--epochs', '2',
                      '--batch-size', '2', '--image-shape', '32x64', '--learning-rate', '0.01',
                      '--val-fraction', '0.25', '--tb-images-every', '1')
    assert result.returncode == 0, result.stderr
    (run_dir,) = runs.iterdir()
    assert (run_dir / 'um_000000.png').exists() and (run_dir / 'umm_000001.png').exists()
    assert iio.imread(run_dir / 'umm_000001.png').shape == (45, 100, 3)
    assert (run_dir / 'model' / 'saved_model.pb').exists()
    config = json.loads((run_dir / 'config.json').read_text())
    assert config['image_shape'] == '32x64' and config['versions']['tensorflow'] == tf.__version__
    split = json.loads((run_dir / 'split.json').read_text())
    assert len(split['val']) == 1 and len(split['train']) == 3
    log = (run_dir / 'train.log').read_text()
    assert 'epoch 1/2: mean loss' in log and 'epoch 2: validation road IoU' in log
    assert re.search(r'epoch 2/2: mean loss .*images, \d+\.\d% of it waiting for data', log)
    records = json.loads((run_dir / 'metrics.json').read_text())
    assert [r['epoch'] for r in records['epochs']] == [1, 2]
    assert records['best_epoch'] in (1, 2)
    assert sorted(os.listdir(run_dir / 'checkpoints')) == ['epoch-0001', 'epoch-0002']
    info = json.loads((run_dir / 'model' / 'fcn.json').read_text())
    assert info['epoch'] == records['best_epoch'] and info['image_shape'] == [32, 64]
    tags = event_tags(run_dir)
    assert tags['train/loss'] == 4 and tags['val/road_iou'] == 2  # 2 steps x 2 epochs
    assert tags['val/overlay/' + split['val'][0]] == 2
    # the saved model reproduces the training graph's input/output contract
    with tf.Graph().as_default(), tf1.Session() as s:
        meta = tf1.saved_model.loader.load(s, ['serve'], str(run_dir / 'model'))
        signature = meta.signature_def['serving_default']
        probs = s.run(signature.outputs['probabilities'].name,
                      {signature.inputs['image'].name: np.zeros((1, 32, 64, 3)),
                       signature.inputs['keep_prob'].name: 1.0})
    assert probs.shape == (1, 32, 64, 2) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    # the saved run config reproduces the run's options
    again = main.parse_args(['--config', str(run_dir / 'config.json')])
    assert again.image_shape == (32, 64) and again.learning_rate == 0.01


def test_config_file_overlays_the_defaults_and_flags_override_it(tmp_path):
    config = tmp_path / 'small.json'
    config.write_text(json.dumps({'epochs': 7, 'encoder': 'mobilenetv2',
                                  'encoder_weights': 'none'}))
    args = main.parse_args(['--config', str(config), '--batch-size', '3'])
    assert (args.epochs, args.encoder, args.batch_size) == (7, 'mobilenetv2', 3)
    assert args.image_shape == (160, 576) and args.learning_rate == 1e-4  # from the defaults
    config.write_text(json.dumps({'epoch': 7}))
    with pytest.raises(helper.UserError, match=r"small.json: unknown option 'epoch'"):
        main.parse_args(['--config', str(config)])


@pytest.mark.parametrize('argv, message', [
    (['--encoder', 'mobilenetv2'], '--encoder mobilenetv2 trains from scratch'),
    (['--decoder', 'dilated'], '--decoder dilated is for mobilenetv2'),
    (['--encoder', 'mobilenetv2', '--encoder-weights', 'none', '--alpha', '0'], '--alpha'),
    (['--encoder-weights', 'none', '--ema-decay', '1'], r'--ema-decay: 1.0 must be in \[0, 1\)'),
    (['--ema-decay', '0.99'], '--ema-decay needs an encoder built in the graph')])
def test_encoder_options_that_do_not_fit_are_one_line_errors(argv, message):
    with pytest.raises(helper.UserError, match=message):
        main.parse_args(argv)


def test_main_keras_h5_encoder_in_process(tiny_data, tmp_path):
    write_keras_h5(tmp_path / 'w.h5')
    run_dir = main.run(['--data-dir', str(tiny_data), '--runs-dir', str(tmp_path / 'runs'),
                        '--epochs', '1', '--batch-size', '4', '--image-shape', '32x32',
                        '--encoder-weights', f'keras-h5:{tmp_path / "w.h5"}'])
    assert {'model', 'um_000000.png', 'umm_000001.png'} <= set(os.listdir(run_dir))


@pytest.mark.parametrize('args, damage, message', [
    (['--image-shape', '100x64'], None, r"--image-shape: .*'100x64': height and width must be"),
    (['--epochs', '0'], None, r'--epochs: must be at least 1'),
    (['--epochs', '3', '--plain-epochs', '4'], None,
     r'--plain-epochs: 4 must be from 0 to --epochs \(3\)'),
    (['--image-shape', '64x64', '--train-crop', '96x32'], None,
     r'--train-crop: 96x32 is larger than --image-shape 64x64'),
    (['--encoder-weights', 'imagenet'], None, r"--encoder-weights: .*use udacity, none or"),
    ([], ('gt_image_2/um_road_000001.png', 'unknown colour'), r'um_road_000001.png: colour'),
    ([], ('image_2/um_000002.png', 'truncated'), r'um_000002.png: cannot read image'),
    (['--data-dir', 'no/such/dir'], None, r'--data-dir no/such/dir: folder not found'),
    (['--encoder-weights', 'keras-h5:missing.h5'], None, r'missing.h5: file not found'),
])
def test_main_bad_input_one_line_no_run_folder(tiny_data, tmp_path, args, damage, message):
    if damage:
        write_bad(os.path.join(tiny_data, 'data_road', 'training', damage[0]), damage[1])
    runs = tmp_path / 'runs'
    result = run_main('--data-dir', str(tiny_data), '--runs-dir', str(runs), *args)
    assert result.returncode == 2
    shown = [line.rsplit('\r', 1)[-1] for line in result.stderr.split('\n')]  # as a terminal would
    lines = [line for line in shown if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert leftovers(runs) == []


def test_main_without_vgg_offline_says_what_to_do(tiny_data, tmp_path):
    os.remove(tiny_data / 'vgg')
    result = run_main('--data-dir', str(tiny_data), '--runs-dir', str(tmp_path / 'runs'),
                      proxy='http://127.0.0.1:9')  # a closed port: offline even on a networked box
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'by hand' in result.stderr and '--encoder-weights none' in result.stderr


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q'] + sys.argv[1:]))
