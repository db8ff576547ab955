"""--encoder-weights imagenet against a local server: Keras's ImageNet file of each encoder is
downloaded into data/, checked against the MD5 Keras publishes (VGG16's), and its weights land
in the encoder's variables; offline, one line says where to put the file and what else to do."""
import hashlib
import os
import re

import h5py
import numpy as np
import pytest

import main
from roadseg import cli
from roadseg.errors import UserError
from roadseg.model import imagenet, mobilenet, network
from roadseg.model.config import NetworkConfig
from roadseg.model.ops import tf, tf1
from tests.conftest import leftovers, serve, write_keras_h5


def write_mobilenet_h5(path):
    """A file in the layout of Keras's MobileNetV2 ImageNet file (a group per Keras layer, its
    arrays named in weight_names), holding random arrays at this encoder's shapes; returns them
    by this encoder's variable names."""
    with tf.Graph().as_default():
        mobilenet.build_encoder(tf1.placeholder(tf.float32, [None, 64, 64, 3]), False)
        shapes = {v.name[:-len(':0')]: v.shape.as_list() for v in tf1.global_variables()}
    rng, values = np.random.default_rng(3), {}
    with h5py.File(path, 'w') as f:
        for layer, scope in mobilenet.keras_layers().items():
            parts = mobilenet.BN_PARTS if scope.endswith('/bn') else ('kernel',)
            group = f.create_group(layer)
            group.attrs['weight_names'] = [f'{layer}/{part}:0'.encode() for part in parts]
            for part in parts:
                value = np.abs(rng.normal(size=shapes[f'mobilenetv2/{scope}/{part}']))
                group[f'{layer}/{part}:0'] = values[f'mobilenetv2/{scope}/{part}'] = \
                    value.astype(np.float32)
    return values


def vgg_h5(path):
    """A VGG16 no-top file (tiny widths) and its values by variable name."""
    weights = write_keras_h5(path, top=False)
    return {f'{layer}/{part}': value.astype(np.float32) for layer, pair in weights.items()
            for part, value in zip(('kernel', 'bias'), pair)}


@pytest.mark.parametrize('encoder, write', [('vgg16', vgg_h5), ('mobilenetv2', write_mobilenet_h5)])
def test_the_imagenet_file_is_downloaded_checked_and_lands_in_its_variables(
        tmp_path, monkeypatch, capsys, encoder, write):
    monkeypatch.chdir(tmp_path)
    expected = write(tmp_path / 'served.h5')
    body = (tmp_path / 'served.h5').read_bytes()
    md5 = hashlib.md5(body).hexdigest() if encoder == 'vgg16' else None  # as Keras publishes
    config = NetworkConfig(encoder, encoder_weights='imagenet')
    with serve({'/weights_notop.h5': body}) as url:
        monkeypatch.setitem(imagenet.WEIGHTS, encoder,
                            imagenet.Published(url + '/weights_notop.h5', md5))
        path = config.keras_file(fetch=True)
    assert path == os.path.join('data', 'weights_notop.h5') and open(path, 'rb').read() == body
    out = capsys.readouterr().out
    assert f'checked against Keras\'s published MD5 {md5}' in out if md5 else \
        'no digest, as Keras publishes none for it' in out
    assert f'SHA-256 {hashlib.sha256(body).hexdigest()}' in out
    assert config.keras_file(fetch=True) == path  # there now: no download (the server is gone)
    with tf.Graph().as_default(), tf1.Session() as sess:
        net = network.build_network(sess, config, 2, weights=network.encoder_weights(config, '.'))
        net.initialise()
        variables = {v.name[:-len(':0')]: v for v in tf1.global_variables()}
        loaded = sess.run({name: variables[name] for name in expected})
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_a_file_failing_keras_md5_is_refused_and_deleted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with serve({'/w.h5': b'not the weights'}) as url:
        monkeypatch.setitem(imagenet.WEIGHTS, 'vgg16', imagenet.Published(url + '/w.h5', '0' * 32))
        with pytest.raises(UserError, match=r'--encoder-weights imagenet: download of .*w.h5 '
                                            r'has MD5 [0-9a-f]{32}, expected 0{32}'):
            imagenet.fetch('vgg16')
    assert leftovers(tmp_path / 'data') == []


def test_main_offline_names_the_url_where_to_put_the_file_and_the_alternatives(
        tiny_data, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    with serve({}) as url:
        pass  # closed: nothing listens there any more
    monkeypatch.setitem(imagenet.WEIGHTS, 'vgg16', imagenet.Published(url + '/vgg_notop.h5', None))
    assert cli.main_guard(main.run, ['--data-dir', str(tiny_data), '--runs-dir',
                                     str(tmp_path / 'runs'), '--encoder-weights', 'imagenet']) == 2
    (line,) = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert re.search(r'could not download http://127.0.0.1:\d+/vgg_notop.h5 .*Offline, download '
                     r'\S+/vgg_notop.h5 by hand into data/, or give --encoder-weights '
                     r'keras-h5:PATH .*--encoder-weights none', line), line
    assert leftovers(tmp_path / 'runs') == []


def test_the_published_files_are_keras_own():
    assert imagenet.WEIGHTS['vgg16'].url.endswith(
        'keras-applications/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
    assert imagenet.path('mobilenetv2') == os.path.join(
        'data', 'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5')
    with pytest.raises(UserError, match='--alpha 0.5.*imagenet'):
        NetworkConfig('mobilenetv2', encoder_weights='imagenet', alpha=0.5)
    with pytest.raises(UserError, match='--encoder tiramisu takes --encoder-weights none .*; '
                                        'imagenet is for vgg16 and mobilenetv2'):
        NetworkConfig('tiramisu', decoder='tiramisu', encoder_weights='imagenet')
