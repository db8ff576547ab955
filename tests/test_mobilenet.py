"""The MobileNetV2 encoder, the two towers and the learning-rate schedule, on tiny inputs."""
import contextlib
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import main
from roadseg.commands import evaluate, export
from roadseg.errors import PartlyFailed, UserError
from roadseg.model import decoders, keras_weights, mobilenet, network, ops, vgg
from roadseg.model.config import NetworkConfig
from roadseg.model.ops import tf, tf1
from roadseg.training import checkpoints, loop, monitoring, options, outputs
from roadseg.training.config import TrainingConfig
from roadseg.training.loss import optimize
from tests.conftest import ROOT, make_kitti

ALPHA = 0.1  # 8 channels in most layers: fast, yet every block is built


def network_args(encoder='mobilenetv2', decoder='fcn8s', ema_decay=0.0, input_norm='fixed',
                 aux_loss=0.0):
    return NetworkConfig(encoder, decoder, 'none', alpha=ALPHA, ema_decay=ema_decay,
                         input_norm=input_norm, aux_loss=aux_loss)


@contextlib.contextmanager
def built(args, num_classes, learning_rate=1e-2):
    """The network of `args` with its training op, in a graph and session of its own, seeded:
    (sess, net, label placeholder, train_op, loss)."""
    with tf.Graph().as_default() as graph, tf1.Session(graph=graph) as sess:
        tf1.set_random_seed(0)
        net = network.build_network(sess, args, num_classes)
        label = tf1.placeholder(tf.float32, [None, None, None, num_classes])
        _, train_op, loss = optimize(net.train_output, label, learning_rate, num_classes)
        net.initialise()
        yield sess, net, label, train_op, loss


@pytest.fixture
def trainable():
    """A tiny MobileNetV2 FCN with its training op."""
    with built(network_args(), 2) as (sess, net, label, train_op, _):
        yield sess, net, label, train_op


def images(count=4, shape=(64, 96), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, *shape, 3)).astype(np.float32)


def moving_statistics(sess):
    return {v.name: sess.run(v) for v in tf1.global_variables() if 'moving_' in v.name}


def test_make_divisible_rounds_to_multiples_of_8_within_10_percent():
    assert [mobilenet.make_divisible(v) for v in (32, 3.2, 24 * 0.35, 96 * 0.75, 20)] == \
        [32, 8, 8, 72, 24]


@pytest.mark.parametrize('encoder,decoder', [('mobilenetv2', 'fcn8s'), ('mobilenetv2', 'fcn4s'),
                                             ('mobilenetv2', 'dilated'), ('mobilenetv2', 'fpn'),
                                             ('vgg16', 'fcn8s')])
def test_both_towers_keep_unknown_input_sizes(encoder, decoder, monkeypatch):
    monkeypatch.setattr(vgg, 'BLOCKS', ((4, 4), (4, 4), (6, 6, 6), (8, 8, 8), (8, 8, 8)))
    monkeypatch.setattr(vgg, 'FC_WIDTH', 16)  # a few channels suffice
    with tf.Graph().as_default(), tf1.Session() as sess:
        net = network.build_network(sess, network_args(encoder, decoder), 3)
        assert net.output.shape.as_list() == net.train_output.shape.as_list() == \
            [None, None, None, 3]
        net.initialise()
        for shape in ((64, 96), (96, 32)):
            out = sess.run([net.train_output, net.output],
                           {net.input_image: images(2, shape), net.keep_prob: 0.5})
            assert [o.shape for o in out] == [(2, *shape, 3)] * 2


@pytest.mark.slow
def test_input_norm_image_maps_each_images_channels_to_one_mean_and_deviation():
    """--input-norm image: an image and the same image darkened, with less contrast and a
    tint (a per-channel affine change) reach the encoder alike, so the network's outputs agree."""
    batch = images(2)
    tinted = batch * np.array([0.3, 0.35, 0.5], np.float32) + np.array([5, 8, 20], np.float32)
    with tf.Graph().as_default(), tf1.Session() as sess:
        normal = sess.run(network.normalised(tf.constant(batch)))
        np.testing.assert_allclose(normal.mean(axis=(1, 2)), network.NORMAL_MEAN, atol=1e-3)
        np.testing.assert_allclose(normal.std(axis=(1, 2)), network.NORMAL_STD, rtol=1e-3)
        for norm, agree in (('image', True), ('fixed', False)):
            with tf1.variable_scope(norm):
                tf1.set_random_seed(0)
                net = network.build_network(sess, network_args(input_norm=norm), 2)
            net.initialise()
            rng = np.random.default_rng(0)  # the score layers and offsets start at zero
            for v in tf1.trainable_variables(norm):
                if not sess.run(v).any():
                    v.load(rng.normal(0, 0.1, v.shape.as_list()).astype(np.float32), sess)
            plain, dusk = (sess.run(net.output, {net.input_image: x, net.keep_prob: 1.0})
                           for x in (batch, tinted))
            change = np.abs(plain - dusk).max() / np.abs(plain).max()
            assert change < 1e-4 if agree else change > 1e-3


def test_the_auxiliary_loss_trains_its_own_score_and_leaves_the_inference_tower_alone():
    """--aux-loss 0.4: the training tower's stride-16 features get a class score at the
    input's size, weighted 0.4 in what Adam minimises (its score learns, where without it
    there is no such variable); the inference tower, which validation and export run, does
    not reach it."""
    x = images(2)
    y = np.eye(2, dtype=np.float32)[np.random.default_rng(1).integers(0, 2, (2, 64, 96))]
    for aux_loss in (0.0, 0.4):
        with built(network_args(decoder='fcn4s', aux_loss=aux_loss, ema_decay=0.99), 2) as \
                (sess, net, label, train_op, loss):
            auxiliary = tf1.get_collection(ops.AUXILIARY_LOGITS)
            scores = [v for v in tf1.trainable_variables() if 'auxiliary/score' in v.name]
            assert len(auxiliary) == (aux_loss > 0) and len(scores) == 2 * (aux_loss > 0)
            inference = tf1.graph_util.extract_sub_graph(sess.graph.as_graph_def(),
                                                         [net.output.op.name])
            assert not any('auxiliary' in node.name for node in inference.node)
            if aux_loss:
                (logits, weight), = auxiliary
                assert weight == 0.4
                feed = {net.input_image: x, label: y, net.keep_prob: 1.0}
                assert sess.run(logits, feed).shape == (2, 64, 96, 2)
                before = sess.run(scores[0])
                sess.run(train_op, feed)
                assert not np.array_equal(before, sess.run(scores[0]))


@pytest.mark.slow
def test_keras_mobilenetv2_weights_give_this_encoder_keras_own_features(tmp_path):
    """--encoder mobilenetv2 --encoder-weights keras-h5:PATH: a weights file of Keras's own
    MobileNetV2 (random weights and batch-norm statistics, written in the layout of its
    ImageNet file by tests/keras_mobilenet.py) makes this encoder's inference tower compute
    Keras's features, and build_network loads it."""
    weights, reference = tmp_path / 'mobilenet_v2.h5', tmp_path / 'keras.npz'
    subprocess.run([sys.executable, os.path.join(ROOT, 'tests', 'keras_mobilenet.py'),
                    str(weights), str(reference)], check=True, capture_output=True, timeout=300)
    expected = np.load(reference)
    values = mobilenet.read_keras_h5(str(weights))
    assert len(values) == 52 + 4 * 52  # 52 convolutions, each with its batch norm
    with tf.Graph().as_default(), tf1.Session() as sess:
        images = tf1.placeholder(tf.float32, [None, 64, 96, 3])
        *_, features = mobilenet.build_encoder(images, False)
        sess.run(tf1.global_variables_initializer())
        keras_weights.assign(sess, values)
        got = sess.run(features, {images: expected['images']})
    np.testing.assert_allclose(got, expected['features'], atol=2e-4 * np.abs(got).max())
    config = NetworkConfig('mobilenetv2', encoder_weights=f'keras-h5:{weights}')
    with tf.Graph().as_default(), tf1.Session() as sess:
        net = network.build_network(sess, config, 2, weights=network.encoder_weights(config, '.'))
        net.initialise()
        (variable,) = [v for v in tf1.global_variables()
                       if v.name == 'mobilenetv2/stage4_block2/depthwise/bn/moving_variance:0']
        loaded = sess.run(variable)
    np.testing.assert_array_equal(loaded, values['mobilenetv2/stage4_block2/depthwise/bn/'
                                                  'moving_variance'])
    (tmp_path / 'other.h5').write_bytes(weights.read_bytes())
    with h5py.File(tmp_path / 'other.h5', 'r+') as f:
        del f['block_7_project_BN']
    with pytest.raises(UserError, match=r"other.h5: no weights for layer block_7_project_BN; "
                                        r"expected Keras's mobilenet_v2_weights"):
        mobilenet.read_keras_h5(str(tmp_path / 'other.h5'))


def test_each_decoder_gets_the_features_at_its_strides():
    with tf.Graph().as_default():
        image = tf1.placeholder(tf.float32, [1, 64, 96, 3])
        features = {}
        for decoder in ('fcn8s', 'fcn4s', 'dilated', 'fpn'):
            with tf1.variable_scope(decoder):
                features[decoder] = mobilenet.build_encoder(image, False, ALPHA, decoder)
    sizes = {decoder: [t.shape.as_list()[1:3] for t in tensors]
             for decoder, tensors in features.items()}
    assert sizes == {'fcn8s': [[8, 12], [4, 6], [2, 3]],
                     'fcn4s': [[16, 24], [8, 12], [4, 6], [2, 3]],
                     'dilated': [[16, 24], [8, 12], [8, 12]],
                     'fpn': [[16, 24], [8, 12], [4, 6], [2, 3]]}
    assert [t.shape[-1] for t in features['dilated']] == [8, 8, 1280]  # 24, 32 channels x 0.1
    assert [t.shape[-1] for t in features['fcn4s']] == [8, 8, 16, 1280]


def test_fcn4s_adds_a_stride_4_skip_and_upsamples_4x_at_the_end():
    with tf.Graph().as_default(), tf1.Session() as sess:
        network.build_network(sess, network_args('mobilenetv2', 'fcn4s'), 2)
        kernels = {v.name: v.shape.as_list() for v in tf1.trainable_variables()
                   if v.name.startswith('fcn8s/')}
    assert kernels['fcn8s/score_pool2/kernel:0'] == [1, 1, 8, 2]
    assert kernels['fcn8s/upscore_pool3/kernel:0'] == [4, 4, 2, 2]
    assert kernels['fcn8s/upscore4/kernel:0'] == [8, 8, 2, 2]
    assert 'fcn8s/upscore8/kernel:0' not in kernels


def test_fpn_merges_features_top_down_then_scores_once_at_stride_4():
    with tf.Graph().as_default(), tf1.Session() as sess:
        net = network.build_network(sess, network_args('mobilenetv2', 'fpn'), 2)
        kernels = {v.name[:-len('/kernel:0')]: v.shape.as_list()
                   for v in tf1.trainable_variables() if v.name.endswith('/kernel:0')}
        net.initialise()
        x = images(2)
        merged, output = sess.run(['fpn/pyramid/merge4_pointwise/Relu6:0', net.output],
                                  {net.input_image: x})
    decoder = {name[len('fpn/'):]: shape for name, shape in kernels.items()
               if name.startswith('fpn/')}
    channels = decoders.PYRAMID_CHANNELS
    assert decoder == {
        'pyramid/lateral32': [1, 1, 1280, channels], 'pyramid/lateral16': [1, 1, 16, channels],
        'pyramid/lateral8': [1, 1, 8, channels], 'pyramid/lateral4': [1, 1, 8, channels],
        **{f'pyramid/merge{s}_depthwise': [3, 3, channels, 1] for s in (16, 8, 4)},
        **{f'pyramid/merge{s}_pointwise': [1, 1, channels, channels] for s in (16, 8, 4)},
        'score': [1, 1, channels, 2], 'upscore4': [8, 8, 2, 2]}
    assert merged.shape == (2, 16, 24, channels) and output.shape == (2, 64, 96, 2)
    assert not any(name.startswith('fcn8s/') for name in kernels)


@pytest.mark.slow
def test_towers_share_weights_and_weight_decay_is_counted_once(trainable):
    sess, net, _, _ = trainable
    names = [v.name for v in tf1.global_variables()]
    assert len(names) == len(set(names)) and any('moving_mean' in n for n in names)
    kernels = [v for v in tf1.trainable_variables() if v.name.endswith('kernel:0')
               and 'depthwise' not in v.name]
    assert len(tf1.get_collection(tf1.GraphKeys.REGULARIZATION_LOSSES)) == len(kernels)


@pytest.mark.slow
def test_batch_norm_statistics_move_in_training_and_stay_in_inference(trainable):
    sess, net, label, train_op = trainable
    x = images()
    y = np.eye(2, dtype=np.float32)[np.random.default_rng(1).integers(0, 2, x.shape[:3])]
    before = moving_statistics(sess)
    pairs = {}  # each moving statistic's first pair is the training tower's, which updates it
    for moving, batch in tf1.get_collection(ops.BATCH_STATISTICS):
        pairs.setdefault(moving.name, batch)
    assert set(pairs) == set(before)
    # The step also makes the zero-initialised scores non-zero, so outputs differ below
    _, batch = sess.run((train_op, pairs), {net.input_image: x, label: y})
    trained = moving_statistics(sess)
    # Each moving statistic moves (1 - momentum) of the way to its batch's, whatever the size
    # of that step: float32 rounding of the two products and their sum, a few ulp of the terms.
    for name, old in before.items():
        expected = mobilenet.BN_MOMENTUM * old + (1 - mobilenet.BN_MOMENTUM) * batch[name]
        scale = np.abs(old) + np.abs(batch[name])
        assert np.all(np.abs(trained[name] - expected) <= 8 * np.finfo(np.float32).eps * scale), \
            name
    first = sess.run(net.output, {net.input_image: x})
    single = sess.run(net.output, {net.input_image: x[:1]})
    assert all(np.array_equal(v, moving_statistics(sess)[k]) for k, v in trained.items())
    # Inference normalises with the moving statistics: an image's output does not depend on
    # the rest of its batch. Training normalises with the batch's own statistics: it does.
    assert np.abs(first).max() > 1e-3
    np.testing.assert_allclose(single, first[:1], rtol=1e-4, atol=1e-5)
    train_single, train_batch = (sess.run(net.train_output, {net.input_image: batch})
                                 for batch in (x[:1], x))
    assert np.abs(train_single - train_batch[:1]).max() > 1e-3


@pytest.mark.slow
def test_saved_and_reloaded_model_gives_identical_outputs(trainable, tmp_path):
    sess, net, label, train_op = trainable
    x = images()
    y = np.eye(2, dtype=np.float32)[np.random.default_rng(1).integers(0, 2, x.shape[:3])]
    for _ in range(2):
        sess.run(train_op, {net.input_image: x, label: y})
    probabilities = tf.nn.softmax(net.output)
    expected = sess.run(probabilities, {net.input_image: x})
    export = str(tmp_path / 'model')
    outputs.save_model(sess, export, net.input_image, net.keep_prob, probabilities, {})
    with tf.Graph().as_default(), tf1.Session() as other:
        meta = tf1.saved_model.loader.load(other, ['serve'], export)
        signature = meta.signature_def['serving_default']
        got = other.run(signature.outputs['probabilities'].name,
                        {signature.inputs['image'].name: x,
                         signature.inputs['keep_prob'].name: 1.0})
    assert os.path.isfile(os.path.join(export, 'fcn.json'))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_inference_tower_reads_averaged_weights_and_their_calibrated_statistics():
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(0)
        net = network.build_network(sess, network_args(ema_decay=0.5), 2)
        averages = [v for v in tf1.global_variables() if v.name.endswith('/average:0')]
        variables = [v for v in tf1.global_variables()  # batch norm statistics included
                     if v not in averages and v.name != 'average_count:0']
        assert [a.name for a in averages] == [v.name[:-2] + '/average:0' for v in variables]
        statistics = [v.trainable for v in variables].count(False)
        assert statistics and \
            len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)) == statistics  # one tower's
        label = tf1.placeholder(tf.float32, [None, None, None, 2])
        _, train_op, _ = optimize(net.train_output, label, 1e-2, 2)
        train_op = net.averaged(train_op)
        net.initialise()
        assert all(np.array_equal(a, v) for a, v in zip(*sess.run([averages, variables])))
        x = images()
        y = np.eye(2, dtype=np.float32)[np.random.default_rng(1).integers(0, 2, x.shape[:3])]
        for step in (1, 2, 3):  # decay min(0.5, (1 + n) / (10 + n)): 2/11, 3/12, then 0.5
            old = sess.run(averages)
            sess.run(train_op, {net.input_image: x, label: y})
            after, new = sess.run([variables, averages])
            decay = min(0.5, (1 + step) / (10 + step))
            for v, v1, a0, a1 in zip(variables, after, old, new):
                expected = decay * a0 + (1 - decay) * v1 if v.trainable else a0
                np.testing.assert_allclose(a1, expected, rtol=1e-5, atol=1e-7)
        assert any(not np.allclose(a, v) for a, v in zip(new, after))
        # Calibration: the first batch norm's statistics are those of the batch's first
        # convolution under the averaged kernel; the weights' averages stay.
        net.calibrate(x)
        calibrated = dict(zip([a.name for a in averages], sess.run(averages)))
        kernel = calibrated['mobilenetv2/conv1/kernel/average:0']
        conv = sess.run(tf.nn.conv2d(x / 127.5 - 1, kernel, 2, 'SAME'))
        np.testing.assert_allclose(calibrated['mobilenetv2/conv1/bn/moving_mean/average:0'],
                                   conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(calibrated['mobilenetv2/conv1/bn/moving_variance/average:0'],
                                   conv.var((0, 1, 2)), rtol=1e-3)
        for v, a0, a1 in zip(variables, new, sess.run(averages)):
            assert np.array_equal(a0, a1) == v.trainable
        # Inference ignores the variables themselves and follows their averages.
        output = sess.run(net.output, {net.input_image: x})
        sess.run([v.assign(tf.zeros_like(v)) for v in variables])
        np.testing.assert_array_equal(sess.run(net.output, {net.input_image: x}), output)
        sess.run([a.assign(tf.zeros_like(a)) for a in averages if 'moving_' not in a.name])
        assert not np.allclose(sess.run(net.output, {net.input_image: x}), output)


@pytest.mark.slow
def test_without_ema_decay_training_op_is_unchanged_and_nothing_calibrates(trainable):
    sess, net, _, train_op = trainable
    assert net.averaged(train_op) is train_op
    assert not [v for v in tf1.global_variables() if 'average' in v.name]
    before = moving_statistics(sess)
    net.calibrate(images())
    assert all(np.array_equal(v, moving_statistics(sess)[k]) for k, v in before.items())


def test_poly_schedule_decays_to_zero_and_constant_stays():
    poly = loop.learning_rate_schedule(
        TrainingConfig(learning_rate=1e-3, lr_schedule='poly', epochs=4), steps_per_epoch=5)
    assert poly(0) == pytest.approx(1e-3)
    assert poly(10) == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert poly(19) == pytest.approx(1e-3 * (1 / 20) ** 0.9) and poly(20) == 0
    constant = TrainingConfig(learning_rate=1e-3, lr_schedule='constant', epochs=4)
    assert loop.learning_rate_schedule(constant, 5)(17) == 1e-3


class Batches:
    """get_batches_fn stand-in: `count` batches of one tiny example per epoch."""

    def __init__(self, count):
        self.count = count

    def __len__(self):
        return self.count

    def __call__(self, batch_size):
        for _ in range(self.count):
            yield images(1, (32, 32)), np.ones((1, 32, 32, 2), np.float32) / 2


@pytest.mark.slow
@pytest.mark.parametrize('start_epoch', [1, 3])
def test_train_nn_feeds_the_schedule_the_global_step(trainable, start_epoch):
    sess, net, label, _ = trainable
    rate = tf1.placeholder(tf.float32, [])
    steps = []

    def schedule(step):
        steps.append(step)
        return 0.0
    loop.train(sess, 4, 1, Batches(3), tf.no_op(), tf.constant(0.5), net.input_image, label,
                  net.keep_prob, rate, learning_rate_value=schedule, log=lambda _: None,
                  start_epoch=start_epoch)
    assert steps == list(range(3 * (start_epoch - 1), 12))


def train_tiny_run(tmp_path, *flags):
    """main.run on six tiny KITTI pairs (two held out) with a narrow MobileNetV2 and weight
    averaging, plus `flags`: (data folder, run folder)."""
    data = tmp_path / 'data'
    make_kitti(data, stems=tuple(f'um_{i:06d}' for i in range(6)))
    run_dir = main.run(['--data-dir', str(data), '--runs-dir', str(tmp_path / 'runs'),
                        '--encoder', 'mobilenetv2', '--encoder-weights', 'none',
                        '--alpha', str(ALPHA), '--batch-size', '2', '--image-shape', '32x64',
                        '--learning-rate', '0.01', '--val-fraction', '0.34',
                        '--ema-decay', '0.9', *flags])
    return data, run_dir


def read_metrics(run_dir):
    """The run's metrics.json."""
    with open(os.path.join(run_dir, 'metrics.json')) as f:
        return json.load(f)


@pytest.mark.slow
def test_main_trains_exports_evaluates_and_resumes_mobilenetv2_through_the_same_paths(
        tmp_path, monkeypatch):
    data, run_dir = train_tiny_run(tmp_path, '--epochs', '2', '--lr-schedule', 'poly',
                                   '--train-crop', '32x32', '--decoder', 'fpn',
                                   '--plain-epochs', '1')
    info = json.loads(open(os.path.join(run_dir, 'model', 'fcn.json')).read())
    assert (info['encoder'], info['decoder'], info['alpha']) == ('mobilenetv2', 'fpn', ALPHA)
    # Trained on 32x32 crops, exported and validated at the whole 32x64.
    assert info['image_shape'] == [32, 64]
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert 'at 32x64 (training on 32x32 crops), epochs 1..2 (the last 1 on flips only)' in log
    config = os.path.join(run_dir, 'config.json')
    again = options.parse_args(['--config', config]).training
    assert (again.train_crop, again.plain_epochs) == ((32, 32), 1)
    assert options.parse_args(['--config', config, '--train-crop', 'none']
                              ).training.train_crop is None
    records = read_metrics(run_dir)
    best = next(r for r in records['epochs'] if r['epoch'] == records['best_epoch'])
    assert all(r['seconds'] > 0 for r in records['epochs'])
    # The exported inference tower, batch norm statistics and weight averages included,
    # scores as validation did.
    evaluate.main(['--model', run_dir, '--data-dir', str(data)])
    got = json.loads(open(os.path.join(run_dir, 'eval-val', 'metrics.json')).read())
    assert got['iou'] == pytest.approx(best['val']['iou'], abs=1e-9)
    assert got['kitti_road']['max_f'] == pytest.approx(best['val']['kitti_road']['max_f'],
                                                       abs=1e-9)
    # Interrupted after epoch 1, the run resumes from that checkpoint, weight averages and
    # their step count included: epoch 2 is validated exactly as before (a fresh average of
    # the restored weights would score differently).
    epoch2 = next(r for r in records['epochs'] if r['epoch'] == 2)
    shutil.rmtree(checkpoints.folder_for(os.path.join(run_dir, 'checkpoints'), 2))
    main.run(['--resume', run_dir])
    redone = read_metrics(run_dir)['epochs']
    assert [r['epoch'] for r in redone] == [1, 2]
    assert redone[1]['train_loss'] == pytest.approx(epoch2['train_loss'], abs=1e-6)
    assert redone[1]['val']['iou'] == pytest.approx(epoch2['val']['iou'], abs=1e-6)
    assert redone[1]['val']['kitti_road']['max_f'] == \
        pytest.approx(epoch2['val']['kitti_road']['max_f'], abs=1e-6)
    # A finished run is extended with --epochs, from another folder, its data moved.
    moved = tmp_path / 'moved'
    os.rename(data, moved)
    monkeypatch.chdir(tmp_path / 'runs')
    main.run(['--resume', run_dir, '--epochs', '3', '--data-dir', str(moved)])
    assert [r['epoch'] for r in read_metrics(run_dir)['epochs']] == [1, 2, 3]
    saved = json.loads(open(config).read())
    assert (saved['epochs'], saved['data_dir']) == (3, str(moved))


@pytest.mark.slow
def test_an_input_norm_image_model_exports_to_int8_with_its_preprocessing_in_float(tmp_path):
    """--input-norm image's per-image statistics, quantized op by op, cost an int8 model 0.13
    road IoU on a dusk drive (docs/experiments.md): the int8 export takes image bytes and keeps
    everything before the first convolution in float, computing what the original computes
    there to float32 rounding. (How far the rest agrees depends on the weights: a 2-epoch model
    is near its decision boundary everywhere, so export.py's own tolerance may refuse it.)"""
    _, run_dir = train_tiny_run(tmp_path, '--epochs', '2', '--input-norm', 'image')
    with contextlib.suppress(PartlyFailed):  # the int8 file is written before it is judged
        export.main(['--model', run_dir, '--formats', 'int8', '--calibration-images', '4'])
    path = os.path.join(run_dir, 'export', 'model_int8.tflite')
    interpreter = Interpreter(path, experimental_preserve_all_tensors=True)
    (image,), (probabilities,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert image['dtype'] == probabilities['dtype'] == np.uint8
    details = interpreter._get_ops_details()
    ops = [op['op_name'] for op in details]
    assert ops[:ops.index('CONV_2D')] == [
        'CAST', 'MEAN', 'SQUARED_DIFFERENCE', 'MEAN', 'ADD', 'RSQRT', 'MUL', 'SUB', 'MUL', 'ADD',
        'MUL', 'SUB', 'QUANTIZE']  # the statistics, the gain and MobileNetV2's scaling in float
    assert 'DEQUANTIZE' not in ops  # and nothing after them
    pixels = np.random.default_rng(0).integers(0, 256, image['shape'], dtype=np.uint8)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image['index'], pixels)
    interpreter.invoke()
    quantize = details[ops.index('QUANTIZE')]
    got = interpreter.get_tensor(quantize['inputs'][0])
    with tf.Graph().as_default() as graph, tf1.Session() as sess:
        meta = tf1.saved_model.loader.load(sess, ['serve'], os.path.join(run_dir, 'model'))
        inputs = meta.signature_def['serving_default'].inputs
        first = next(op for op in graph.get_operations() if op.type == 'Conv2D')
        expected = sess.run(first.inputs[0], {inputs['image'].name: pixels.astype(np.float32),
                                              inputs['keep_prob'].name: 1.0})
    # float32 rounding of the moments and the scaling: a few ulp of the values' size
    np.testing.assert_allclose(got, expected, rtol=0, atol=64 * np.finfo(np.float32).eps *
                               np.abs(expected).max())


@pytest.mark.slow
def test_val_every_validates_and_exports_only_those_epochs_and_the_last(tmp_path):
    data, run_dir = train_tiny_run(tmp_path, '--epochs', '3', '--val-every', '2')
    records = read_metrics(run_dir)
    assert [r['epoch'] for r in records['epochs']] == [1, 2, 3]
    assert ['val' in r for r in records['epochs']] == [False, True, True]
    assert records['best_epoch'] in (2, 3)
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert 'epoch 1: validation' not in log and 'epoch 2: validation' in log
    assert 'epoch 3: validation' in log
    # The export was calibrated before it was validated: evaluate.py scores it the same.
    best = next(r for r in records['epochs'] if r['epoch'] == records['best_epoch'])
    evaluate.main(['--model', run_dir, '--data-dir', str(data)])
    got = json.loads(open(os.path.join(run_dir, 'eval-val', 'metrics.json')).read())
    assert got['iou'] == pytest.approx(best['val']['iou'], abs=1e-9)
    # Resumed after epoch 2, with epoch 1's record holding no validation, epoch 3 comes out
    # as before.
    shutil.rmtree(checkpoints.folder_for(os.path.join(run_dir, 'checkpoints'), 3))
    main.run(['--resume', run_dir])
    redone = read_metrics(run_dir)['epochs']
    assert redone[2]['val']['iou'] == pytest.approx(records['epochs'][2]['val']['iou'],
                                                    abs=1e-6)


@pytest.mark.slow
def test_a_kill_at_an_epochs_commit_points_resumes_with_its_records_whole(tmp_path, monkeypatch):
    """An epoch commits its export (when best), its checkpoint (which holds every record so
    far) and metrics.json, in that order. Killed after the checkpoint, the resume rewrites the
    records; killed after the export, it trains the epoch again to the same figures."""
    def killed_at(target, name, epoch_of):
        original = getattr(target, name)

        def kill(*args, **kwargs):
            if epoch_of(args) == 2:
                raise KeyboardInterrupt  # as a SIGKILL would stop it, with no record written
            return original(*args, **kwargs)
        monkeypatch.setattr(target, name, kill)

    killed_at(monitoring.RunMonitor, 'write_metrics', lambda args: len(args[0].records))
    with pytest.raises(KeyboardInterrupt):
        train_tiny_run(tmp_path / 'a', '--epochs', '2')
    (run_a,) = (tmp_path / 'a' / 'runs').iterdir()
    assert [r['epoch'] for r in read_metrics(run_a)['epochs']] == [1]
    monkeypatch.undo()
    main.run(['--resume', str(run_a)])  # nothing left to train: the records come back whole
    assert 'resuming' in (run_a / 'train.log').read_text()
    whole = read_metrics(run_a)
    assert [r['epoch'] for r in whole['epochs']] == [1, 2]

    killed_at(checkpoints, 'save', lambda args: args[3])
    with pytest.raises(KeyboardInterrupt):
        train_tiny_run(tmp_path / 'b', '--epochs', '2')
    (run_b,) = (tmp_path / 'b' / 'runs').iterdir()
    assert checkpoints.epochs(str(run_b / 'checkpoints')) == [1]
    (run_b / '.model.x1y2.tmp').mkdir()  # what a kill during an export leaves
    monkeypatch.undo()
    main.run(['--resume', str(run_b)])
    again = read_metrics(run_b)
    assert [r['epoch'] for r in again['epochs']] == [1, 2]
    for a, b in zip(whole['epochs'], again['epochs']):
        assert b['train_loss'] == pytest.approx(a['train_loss'], abs=1e-6)
        assert b.get('key_metric') == pytest.approx(a.get('key_metric'), abs=1e-6)
    assert again['best_epoch'] == whole['best_epoch']
    info = json.loads((run_b / 'model' / 'fcn.json').read_text())
    assert info['epoch'] == again['best_epoch']
    assert not [name for name in os.listdir(run_b) if name.endswith('.tmp')]
