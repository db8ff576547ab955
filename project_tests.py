"""The contract tests: each function of the classic project's main.py and helper.py, and main.py
run as a user runs it, offline, on tiny fixtures made on the fly (tests/conftest.py).

Run with `python -m pytest project_tests.py` or `python project_tests.py`; the rest of the
suite is in tests/.
"""
import hashlib
import json
import os
import re
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import helper
import main
from roadseg import cli, drawing
from roadseg.data import classes as class_files
from roadseg.data import downloads
from roadseg.data.pipeline import one_hot
from roadseg.errors import UserError
from roadseg.model import vgg
from roadseg.model.ops import tf, tf1
from roadseg.training import options
from tests import conftest
from tests.conftest import (
    TINY_BLOCKS,
    TINY_FC,
    label_rgb,
    leftovers,
    make_kitti,
    road_coded_image,
    run_main,
    save_partial_model,
    serve,
    value_of,
    write_bad,
    write_keras_h5,
    zip_bytes,
)

# The shared fixtures this module uses (pytest finds fixtures by the module's names)
own_graph, sess, tiny_vgg, tiny_data = (conftest.own_graph, conftest.sess, conftest.tiny_vgg,
                                        conftest.tiny_data)


@pytest.fixture(autouse=True)
def seeded_graph(own_graph):
    """Each test builds into a graph of its own, seeded: initial weights are the same each run."""
    return own_graph


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
    assert [t.name for t in tensors] == list(vgg.TENSORS)
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
    with pytest.raises(UserError, match=r'other.*tagged .vgg16.'):
        main.load_vgg(sess, path)


def test_load_vgg_missing_tensor(sess, tmp_path):
    path = save_partial_model(str(tmp_path / 'partial'), tags=(vgg.TAG,))
    with pytest.raises(UserError, match=r'partial.*lacks a tensor.*layer4_out'):
        main.load_vgg(sess, path)


def test_load_vgg_missing_folder(sess, tmp_path):
    with pytest.raises(UserError, match='nowhere'):
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


# ----------------------------------------------------------------------------------------------
# optimize and train_nn
# ----------------------------------------------------------------------------------------------

def test_optimize_logits_shape_and_training_steps_change_weights(sess):
    net = tiny_network()
    sess.run(tf1.global_variables_initializer())
    labels = one_hot(np.tile([[0, 1]], (2, 32, 32)).astype(np.uint8), 2)
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


def test_train_nn_reduces_loss_and_reports(sess, capsys):
    net = tiny_network()
    sess.run(tf1.global_variables_initializer())
    rng = np.random.default_rng(0)
    rgb = label_rgb(32, 64)
    classes = class_files.builtin('kitti_road').decode(rgb, 'synthetic')
    image = road_coded_image(rgb).astype(np.float32)

    def get_batches_fn(batch_size):
        for _ in range(3):
            yield image[None].repeat(batch_size, 0) + rng.normal(0, 1, (batch_size, 32, 64, 3)), \
                one_hot(classes[None].repeat(batch_size, 0), 2)

    history = main.train_nn(sess, 4, 2, get_batches_fn, net['train_op'], net['loss'],
                            net['image'], net['label'], net['keep_prob'], net['lr'],
                            keep_prob_value=1.0, learning_rate_value=1e-2)
    assert len(history) == 4 and history[-1] < history[0]
    out = capsys.readouterr().out
    assert f'epoch 1/4: mean loss {history[0]:.4f}' in out
    assert f'epoch 4/4: mean loss {history[3]:.4f}' in out


# ----------------------------------------------------------------------------------------------
# helper: gen_batch_function
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('remove, message', [
    ('image_2/um_000001.png', r'um_road_000001.png: label without an image'),
    ('gt_image_2/um_road_000001.png', r'um_000001.png: image without a road label'),
])
def test_unpaired_files_are_reported(tmp_path, remove, message):
    training = make_kitti(tmp_path)
    os.remove(os.path.join(training, remove))
    with pytest.raises(UserError, match=message):  # when made (headers) or at the first read
        list(helper.gen_batch_function(training, (32, 64))(2))


def test_missing_and_empty_folders_are_reported(tmp_path):
    with pytest.raises(UserError, match=r'nothing.image_2: folder not found'):
        helper.gen_batch_function(str(tmp_path / 'nothing'), (32, 64))
    training = make_kitti(tmp_path, stems=())
    with pytest.raises(UserError, match=r'image_2: no .png images'):
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
    with pytest.raises(UserError, match=message):  # when made (headers) or at the first read
        list(helper.gen_batch_function(training, (32, 64))(2))


# ----------------------------------------------------------------------------------------------
# helper: gen_test_output and save_inference_samples
# ----------------------------------------------------------------------------------------------

def red_is_road_network():
    """A stand-in network whose road logit is (red - 128): road exactly where red > 128."""
    image = tf1.placeholder(tf.float32, [None, None, None, 3])
    keep_prob = tf1.placeholder(tf.float32, [])
    last = tf.stack([tf.zeros_like(image[..., 0]), image[..., 0] - 128.0], -1) * keep_prob
    return image, keep_prob, tf.reshape(last, (-1, 2))


def test_gen_test_output_yields_each_images_overlay_at_its_own_size(sess, tmp_path):
    make_kitti(tmp_path, testing=(('uu_000000', (50, 90)), ('um_000007', (40, 70))))
    folder = tmp_path / 'data_road' / 'testing'
    image, keep_prob, logits = red_is_road_network()
    results = list(helper.gen_test_output(sess, logits, keep_prob, image, str(folder), (64, 96)))
    assert [name for name, _ in results] == ['um_000007.png', 'uu_000000.png']
    for name, drawn in results:
        original = iio.imread(folder / 'image_2' / name)
        road = original[..., 0] > 128
        assert drawn.shape == original.shape
        # the road mask went through a resize to 64x96 and back: only its border may differ
        assert np.all(drawn == drawing.overlay(original, road), axis=-1).mean() > 0.8
        assert not np.array_equal(drawn, original)


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
        expected = drawing.overlay(original, road)
        # the road mask went through a resize to 64x96 and back: only its border may differ
        agree = np.all(result == expected, axis=-1)
        assert agree.mean() > 0.8
        assert np.array_equal(result[~road & agree], original[~road & agree])


# ----------------------------------------------------------------------------------------------
# helper: maybe_download_pretrained_vgg, against a local HTTP server
# ----------------------------------------------------------------------------------------------

VGG_ZIP = zip_bytes({'vgg/saved_model.pb': b'model', 'vgg/variables/variables.index': b'idx'})


def test_download_good_file(tmp_path):
    (tmp_path / '.vgg.zip.k1ll3d.tmp').write_bytes(b'half')  # left by a killed download
    (tmp_path / '.extract-k1ll3d.tmp').mkdir()  # and by a killed extraction
    with serve({'/vgg.zip': VGG_ZIP}) as url:
        path = helper.maybe_download_pretrained_vgg(
            str(tmp_path), url=url + '/vgg.zip', sha256=hashlib.sha256(VGG_ZIP).hexdigest())
    assert (tmp_path / 'vgg' / 'saved_model.pb').read_bytes() == b'model'
    assert path == str(tmp_path / 'vgg') and leftovers(tmp_path) == ['vgg']
    # present now: no second download (the server is gone)
    assert helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip') == path


def test_download_cut_off_resumes_on_the_next_run(tmp_path):
    with serve({'/vgg.zip': VGG_ZIP}) as url:
        with pytest.raises(UserError, match=r'vgg.zip.*(truncated|cut off).*by hand'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip?truncated')
        assert leftovers(tmp_path) == ['vgg.zip.part']  # kept, for the next run to resume
        helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip')
    assert leftovers(tmp_path) == ['vgg']


def test_download_wrong_checksum(tmp_path):
    with serve({'/vgg.zip': VGG_ZIP}) as url:
        with pytest.raises(UserError, match=r'SHA-256 [0-9a-f]{64}, expected 0000'):
            helper.maybe_download_pretrained_vgg(str(tmp_path), url=url + '/vgg.zip',
                                                 sha256='0' * 64)
    assert leftovers(tmp_path) == []


def test_download_refuses_member_escaping_the_folder(tmp_path):
    evil = zip_bytes({'vgg/saved_model.pb': b'ok', '../../evil.txt': b'gotcha'})
    data_dir = tmp_path / 'a' / 'b'
    with serve({'/vgg.zip': evil}) as url:
        with pytest.raises(UserError, match=r"member '../../evil.txt' would be written"):
            helper.maybe_download_pretrained_vgg(str(data_dir), url=url + '/vgg.zip')
    assert not (tmp_path / 'evil.txt').exists() and not (data_dir / 'vgg').exists()


# ----------------------------------------------------------------------------------------------
# run: main.py end to end
# ----------------------------------------------------------------------------------------------

def event_tags(run_dir):
    """{tag: number of values} over a run folder's TensorBoard event files."""
    tags = {}
    for path in run_dir.glob('events.out.tfevents.*'):
        for event in tf1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags[value.tag] = tags.get(value.tag, 0) + 1
    return tags


@pytest.mark.slow
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
    assert re.search(r'epoch 2/2: mean loss [0-9.]+ \(\d+ s, 3 images\)', log)
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
    again = options.parse_args(['--config', str(run_dir / 'config.json')]).training
    assert again.image_shape == (32, 64) and again.learning_rate == 0.01


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
    (['--encoder-weights', 'imagenet1k'], None,
     r"--encoder-weights: .*use udacity, imagenet, none or"),
    ([], ('gt_image_2/um_road_000002.png', 'other size'),
     r'um_road_000002.png: size 70x41 differs'),
    ([], ('image_2/um_000002.png', 'truncated'), r'um_000002.png: cannot read image'),
    (['--data-dir', 'no/such/dir'], None, r'--data-dir no/such/dir: folder not found'),
    (['--val-fraction', '0.9'], None, r'--val-fraction 0.9 holds out all 4 labelled images'),
    (['--runs-dir', '/dev/null/runs'], None, r'/dev/null/runs: Not a directory; check that the '
                                             r'folder exists and is writable'),
    (['--encoder-weights', 'keras-h5:missing.h5'], None, r'missing.h5: file not found'),
])
def test_main_bad_input_one_line_no_run_folder(tiny_data, tmp_path, capfd, args, damage,
                                               message):
    """As `python main.py` reports them (main_guard, in this process: the subprocess tests
    below check the command itself)."""
    if damage:
        write_bad(os.path.join(tiny_data, 'data_road', 'training', damage[0]), damage[1])
    runs = tmp_path / 'runs'
    assert cli.main_guard(main.run, ['--data-dir', str(tiny_data), '--runs-dir', str(runs),
                                     *args]) == 2
    stderr = capfd.readouterr().err
    shown = [line.rsplit('\r', 1)[-1] for line in stderr.split('\n')]  # as a terminal would
    lines = [line for line in shown if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr
    assert re.search(message, lines[0]), lines[0]
    assert leftovers(runs) == []


@pytest.mark.parametrize('damage, message', [
    (('gt_image_2/um_road_000001.png', 'unknown colour'), r'um_road_000001.png: colour'),
])
def test_main_bad_pixels_one_line(tiny_data, tmp_path, capfd, damage, message):
    """A file whose header reads but whose pixels do not is found when the pipeline reads it:
    one line, and the run folder keeps its record of what was tried, but no model."""
    write_bad(os.path.join(tiny_data, 'data_road', 'training', damage[0]), damage[1])
    runs = tmp_path / 'runs'
    assert cli.main_guard(main.run, ['--data-dir', str(tiny_data), '--runs-dir', str(runs),
                                     '--val-fraction', '0', '--cache', 'none']) == 2
    lines = [line.rsplit('\r', 1)[-1] for line in capfd.readouterr().err.split('\n')]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    (run_dir,) = runs.iterdir()
    assert not (run_dir / 'model').exists() and not list(run_dir.glob('checkpoints/*'))


def test_main_offline_names_every_missing_download_and_the_alternatives(tmp_path, capfd,
                                                                       monkeypatch):
    with serve({}) as url:
        pass  # closed: nothing listens there any more
    monkeypatch.setattr(downloads, 'KITTI_URL', url + '/data_road.zip')
    monkeypatch.setattr(vgg, 'VGG_URL', url + '/vgg.zip')
    (tmp_path / 'data').mkdir()
    assert cli.main_guard(main.run, ['--data-dir', str(tmp_path / 'data'), '--runs-dir',
                                     str(tmp_path / 'runs')]) == 2
    (line,) = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert re.fullmatch(r'error: 2 download\(s\) failed: could not download .*data_road.zip .*'
                        r'by hand .*data_road/ folder is .*Also could not download .*vgg.zip.* '
                        r'vgg/ folder is .*--encoder-weights none.*--data-dir.*', line), line
    assert leftovers(tmp_path / 'data') == [] and leftovers(tmp_path / 'runs') == []


@pytest.mark.slow
def test_main_without_vgg_offline_says_what_to_do(tiny_data, tmp_path):
    os.remove(tiny_data / 'vgg')
    result = run_main('--data-dir', str(tiny_data), '--runs-dir', str(tmp_path / 'runs'),
                      proxy='http://127.0.0.1:9')  # a closed port: offline even on a networked box
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'by hand' in result.stderr and '--encoder-weights none' in result.stderr


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q'] + sys.argv[1:]))
