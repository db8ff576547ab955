"""FC-DenseNet (--encoder tiramisu): its depths, sizes, parameter count, training step and
inference tower, and main.py, export.py, predict.py and evaluate.py on it."""
import json
import os

import numpy as np
import pytest

from roadseg.commands import evaluate, export, predict
from roadseg.errors import UserError
from roadseg.model import network
from roadseg.model.config import NetworkConfig
from roadseg.model.entries.tiramisu import DEPTHS
from roadseg.model.ops import tf, tf1
from roadseg.training import options
from tests.test_mobilenet import built, images, moving_statistics, train_tiny_run


def tiramisu_args(depth=56):
    return NetworkConfig('tiramisu', encoder_weights='none', depth=depth, weight_decay=1e-4)


@pytest.fixture
def trainable():
    """A Tiramisu-56 with its training op, in a graph and session of its own."""
    with built(tiramisu_args(), 3, learning_rate=1e-3) as built_network:
        yield built_network


@pytest.mark.slow
@pytest.mark.parametrize('depth', sorted(DEPTHS))
def test_each_depth_builds_and_keeps_sizes_that_are_multiples_of_32(depth):
    with tf.Graph().as_default(), tf1.Session() as sess:
        net = network.build_network(sess, tiramisu_args(depth), 3)
        net.initialise()
        for shape in ((32, 64), (64, 32)):
            out = sess.run([net.train_output, net.output],
                           {net.input_image: images(1, shape), net.keep_prob: 0.8})
            assert [o.shape for o in out] == [(1, *shape, 3)] * 2
        # the depth counts the paper's layers: a first convolution, the dense layers, five
        # transitions down, five up and the classifier, each with one kernel
        kernels = [v for v in tf1.trainable_variables() if v.name.endswith('kernel:0')]
        assert len(kernels) == 1 + sum(DEPTHS[depth][1]) + 5 + 5 + 1 == depth


def parameters(depth, num_classes):
    with tf.Graph().as_default(), tf1.Session() as sess:
        network.build_network(sess, tiramisu_args(depth), num_classes, (1, 352, 480))
        return sum(np.prod(v.shape.as_list()) for v in tf1.trainable_variables())


def test_parameter_count_of_103_at_11_classes_is_the_papers_9_4_million():
    assert parameters(103, 11) == pytest.approx(9.4e6, rel=0.01)


@pytest.mark.slow
def test_one_training_step_lowers_the_loss_on_a_tiny_batch(trainable):
    sess, net, label, train_op, loss = trainable
    x = images(2, (32, 32))
    y = np.eye(3, dtype=np.float32)[(x[..., 0] > 127).astype(int) + (x[..., 1] > 200)]
    feed = {net.input_image: x, label: y, net.keep_prob: 1.0}
    before = sess.run(loss, feed)
    for _ in range(3):
        sess.run(train_op, feed)
    assert sess.run(loss, feed) < before


@pytest.mark.slow
def test_inference_tower_uses_the_moving_statistics(trainable):
    sess, net, label, train_op, _ = trainable
    x = images(3, (32, 64))
    y = np.eye(3, dtype=np.float32)[np.random.default_rng(1).integers(0, 3, x.shape[:3])]
    before = moving_statistics(sess)
    sess.run(train_op, {net.input_image: x, label: y, net.keep_prob: 0.8})
    trained = moving_statistics(sess)
    assert all(not np.allclose(before[k], trained[k]) for k in before)
    # Inference reads the moving statistics and changes nothing: an image's output is the same
    # alone or in a batch, and dropout (keep_prob) does not reach it.
    batch = sess.run(net.output, {net.input_image: x, net.keep_prob: 0.8})
    single = sess.run(net.output, {net.input_image: x[:1], net.keep_prob: 0.5})
    np.testing.assert_allclose(single, batch[:1], rtol=1e-4, atol=1e-5)
    assert all(np.array_equal(v, moving_statistics(sess)[k]) for k, v in trained.items())
    # Training normalises with the batch's own statistics.
    train_single, train_batch = (sess.run(net.train_output, {net.input_image: b,
                                                             net.keep_prob: 1.0})
                                 for b in (x[:1], x))
    assert np.abs(train_single - train_batch[:1]).max() > 1e-3


def test_encoder_tiramisu_brings_its_own_decoder():
    network = options.parse_args(['--encoder', 'tiramisu', '--encoder-weights', 'none',
                                  '--depth', '67']).network
    assert (network.decoder, network.depth) == ('tiramisu', 67)
    for flags, message in ((['--encoder', 'tiramisu', '--encoder-weights', 'none', '--decoder',
                             'fpn'], 'has its own decoder'),
                           (['--encoder', 'mobilenetv2', '--encoder-weights', 'none',
                             '--decoder', 'tiramisu'], 'give --encoder tiramisu'),
                           (['--encoder', 'tiramisu'], 'trains from scratch'),
                           (['--encoder', 'tiramisu', '--encoder-weights', 'none', '--depth',
                             '50'], 'invalid choice')):
        with pytest.raises(UserError, match=message):
            options.parse_args(flags)


@pytest.mark.slow
def test_main_trains_exports_evaluates_and_predicts_tiramisu(tmp_path):
    data, run_dir = train_tiny_run(tmp_path, '--epochs', '1', '--encoder', 'tiramisu',
                                   '--depth', '56', '--keep-prob', '0.8')
    info = json.loads(open(os.path.join(run_dir, 'model', 'fcn.json')).read())
    assert (info['encoder'], info['decoder'], info['depth']) == ('tiramisu', 'tiramisu', 56)
    best = json.loads(open(os.path.join(run_dir, 'metrics.json')).read())['epochs'][-1]
    evaluate.main(['--model', run_dir, '--data-dir', str(data)])
    got = json.loads(open(os.path.join(run_dir, 'eval-val', 'metrics.json')).read())
    assert got['iou'] == pytest.approx(best['val']['iou'], abs=1e-9)
    export.main(['--model', run_dir, '--formats', 'frozen,tflite32', '--calibration-images',
                 '2'])
    agreement = json.loads(open(os.path.join(run_dir, 'export', 'agreement.json')).read())
    assert all(agreement['exports'][kind]['within_tolerance'] for kind in ('frozen', 'tflite32'))
    for model in (run_dir, os.path.join(run_dir, 'export', 'model_float32.tflite')):
        out = tmp_path / os.path.basename(model)
        predict.main(['--model', model, str(data / 'data_road' / 'training' / 'image_2'),
                      '--output-dir', str(out)])
        assert len(os.listdir(out)) >= 6
