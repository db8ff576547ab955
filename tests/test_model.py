"""The model's parts: the decoder's upsampling kernel and the VGG16 encoder built from Keras's
ImageNet weights file."""
import dataclasses
import functools
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest

import main
from roadseg.errors import UserError
from roadseg.model import decoders, vgg
from roadseg.model.ops import tf
from tests.conftest import ROOT, TINY_FC, value_of, write_keras_h5


def test_bilinear_kernel_upsamples_linearly(sess):
    kernel = decoders.bilinear_kernel(4, 1)
    np.testing.assert_allclose(kernel[:, :, 0, 0][0], [0.0625, 0.1875, 0.1875, 0.0625])
    ramp = np.arange(8, dtype=np.float32).reshape(1, 1, 8, 1).repeat(8, axis=1)
    up = sess.run(tf.nn.conv2d_transpose(ramp, kernel, [1, 16, 16, 1], 2, 'SAME'))
    # away from the border, a linear ramp stays a linear ramp at half the slope
    np.testing.assert_allclose(np.diff(up[0, 8, 2:14, 0]), 0.5, atol=1e-5)


@pytest.mark.parametrize('size, height, width', [(7, 5, 18), (7, 2, 3), (3, 4, 4), (1, 3, 5)])
def test_conv_as_matmul_is_the_same_convolution_forward_and_backward(size, height, width):
    """fc6 and fc7 as one matrix product: the SAME convolution's values and gradients, on a
    map of unknown size, smaller than the kernel too."""
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, height, width, 5)).astype(np.float32)
    kernel = rng.normal(size=(size, size, 5, 6)).astype(np.float32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 5])
        weights = tf.constant(kernel)
        ours, theirs = vgg.conv_as_matmul(images, weights), tf.nn.conv2d(images, weights, 1,
                                                                         'SAME')
        assert ours.shape.as_list() == [None, None, None, 6]
        gradients = [tf.gradients(tf.reduce_sum(tf.sin(y)), [images, weights])
                     for y in (ours, theirs)]
        (a, b), (ga, gb) = sess.run([(ours, theirs), gradients], {images: x})
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for mine, reference in zip(ga, gb):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-4)


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
    with pytest.raises(UserError, match=r'bad.h5: no weights for layer block1_conv1'):
        vgg.read_keras_h5(str(tmp_path / 'bad.h5'))
    (tmp_path / 'text.h5').write_text('hello')
    with pytest.raises(UserError, match=r'text.h5: not a readable Keras weights file'):
        vgg.read_keras_h5(str(tmp_path / 'text.h5'))


def test_caffe_preprocessing_is_bgr_minus_mean(sess):
    rgb = tf.constant([[[[10.0, 20.0, 30.0]]]])
    bgr = sess.run(vgg.preprocess(rgb, 'caffe'))
    np.testing.assert_allclose(bgr[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68],
                               rtol=1e-5)


def test_the_network_config_gives_each_encoder_its_decoder_and_keeps_every_rule():
    from roadseg.model import registry
    from roadseg.model.config import RULES, NetworkConfig
    def made(encoder='vgg16', **fields):  # from scratch unless the fields say otherwise
        return NetworkConfig(encoder, **{'encoder_weights': 'none', **fields})
    assert NetworkConfig().encoder_weights == 'udacity'  # main.py's default: Udacity's VGG16
    assert [made(encoder).decoder for encoder in ('vgg16', 'mobilenetv2', 'tiramisu')] \
        == ['fcn8s', 'fcn8s', 'tiramisu']
    refused = {
        "--decoder fpn is for mobilenetv2; VGG16": dict(decoder='fpn'),
        '--ema-decay needs an encoder built in the graph': dict(encoder_weights='udacity',
                                                               ema_decay=0.9),
        '--input-norm image needs': dict(encoder_weights='udacity', input_norm='image'),
        '--encoder mobilenetv2 takes --encoder-weights none, imagenet or keras-h5': dict(
            encoder='mobilenetv2', encoder_weights='udacity'),
        "--alpha 0.5: Keras's MobileNetV2 weights are of width 1.0": dict(
            encoder='mobilenetv2', encoder_weights='keras-h5:x.h5', alpha=0.5),
        '--decoder fpn is for mobilenetv2; --encoder tiramisu has its own': dict(
            encoder='tiramisu', decoder='fpn'),
        "--decoder tiramisu is FC-DenseNet's own": dict(encoder='mobilenetv2',
                                                         decoder='tiramisu'),
        '--depth 50': dict(encoder='tiramisu', depth=50),
        '--alpha: nan': dict(alpha=float('nan')),
        '--ema-decay: 1 must be in': dict(ema_decay=1),
        "--encoder-weights 'imagenet1k': use udacity, imagenet, none": dict(
            encoder_weights='imagenet1k'),
        '--aux-loss: -0.4 must be a number from 0 up': dict(encoder='mobilenetv2',
                                                            aux_loss=-0.4),
        '--aux-loss is for --encoder mobilenetv2 with an FCN decoder (fcn8s, fcn4s, dilated), '
        'not mobilenetv2 with fpn': dict(encoder='mobilenetv2', decoder='fpn', aux_loss=0.4),
    }
    for message, fields in refused.items():
        with pytest.raises(UserError, match=re.escape(message)):
            made(**fields)
    own = [rule for table in (registry.ENCODERS, registry.DECODERS) for entry in table.values()
           for rule in entry.rules]
    choices = [field for field in dataclasses.fields(NetworkConfig) if field.metadata['choices']]
    assert len(RULES) - 1 + len(own) + len(choices) == 17  # CHOSEN stands for the entries' own
    with pytest.raises(dataclasses.FrozenInstanceError):
        NetworkConfig().encoder = 'mobilenetv2'


def test_an_encoder_and_a_decoder_are_looked_up_by_name_and_checked_before_tensorflow_loads():
    """The options' checks, the registry and its entries import no TensorFlow: an entry names
    its builders, imported when the network is built."""
    from roadseg.model import registry
    from roadseg.model.config import NetworkConfig
    from roadseg.model.entries import load
    code = ('import sys; from roadseg.model import config; '
            'config.NetworkConfig("tiramisu", encoder_weights="none", depth=56); '
            'print("tensorflow" in sys.modules)')
    shown = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout
    assert shown.split() == ['False']
    assert list(registry.ENCODERS) == ['vgg16', 'mobilenetv2', 'tiramisu']
    assert list(registry.DECODERS) == ['fcn8s', 'fcn4s', 'dilated', 'fpn', 'tiramisu']
    assert load(registry.DECODERS['fpn'].builder) is decoders.fpn_tower
    assert load(registry.ENCODERS['vgg16'].read_keras) is vgg.read_keras_h5
    for name, encoder in registry.ENCODERS.items():
        assert encoder.decoder in encoder.strides and encoder.name == name
        with pytest.raises(UserError, match='use one of fcn8s, fcn4s, dilated, fpn, tiramisu'):
            NetworkConfig(name, decoder='fcn2s')
    with pytest.raises(UserError, match='--encoder resnet50: use one of vgg16, mobilenetv2, '
                                        'tiramisu'):
        NetworkConfig('resnet50')
