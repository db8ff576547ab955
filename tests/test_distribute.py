"""Training on replicas (--distribute): two logical CPU devices (mirrored) and two worker
processes on 127.0.0.1 (multi-worker) against one device; the chief alone writes, a dead
worker stops the run and --resume continues it; --precision and the one-line errors."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from roadseg import cpu
from roadseg.commands import evaluate
from roadseg.data.pipeline import TrainingData
from roadseg.errors import UserError
from roadseg.model.ops import tf, tf1
from roadseg.training import distribute
from roadseg.training.config import TrainingConfig
from tests.conftest import ROOT, make_kitti, write_keras_h5

TIMEOUT = 300  # seconds any one subprocess may take


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cluster(index, ports):
    return json.dumps({'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
                       'task': {'type': 'worker', 'index': index}})


def environment(tf_config=None):
    env = {**os.environ, 'PYTHONPATH': ROOT}
    env.pop('TF_CONFIG', None)
    if tf_config:
        env['TF_CONFIG'] = tf_config
    return env


@pytest.fixture(scope='module')
def h5(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('h5') / 'tiny.h5')
    write_keras_h5(path, trainable=True)
    return path


def steps(kind, encoder, count, folder, h5=None, workers=1):
    """tests/replica_steps.py's results: one .npz, or one per worker."""
    init = str(folder / f'init-{encoder}.ckpt')
    outs = [str(folder / f'{kind}-{encoder}-{w}.npz') for w in range(workers)]
    command = [sys.executable, '-m', 'tests.replica_steps', kind, encoder, str(count), init]
    extra = [h5] if h5 else []
    if workers == 1:
        subprocess.run(command + [outs[0]] + extra, cwd=ROOT, env=environment(), check=True,
                       timeout=TIMEOUT, capture_output=True)
    else:
        ports = free_ports(workers)
        processes = [subprocess.Popen(command + [out] + extra, cwd=ROOT,
                                      env=environment(cluster(w, ports)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for w, out in enumerate(outs)]
        for p in processes:
            assert p.wait(TIMEOUT) == 0, p.stderr.read().decode()[-2000:]
    return [dict(np.load(out)) for out in outs]


def close(a, b, prefix=''):
    """The largest difference between the variables (or `prefix`ed entries) of two results,
    relative to each variable's largest value (at least 1e-3)."""
    keys = [k for k in a if k.startswith(prefix) and k not in ('losses', 'copies_spread')
            and (prefix or ':' not in k)]
    assert keys
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-3)) for k in keys)


def relative_norm(a, b, keys):
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in keys))
                 / np.sqrt(sum((a[k] ** 2).sum() for k in keys)))


@pytest.mark.slow
def test_two_replicas_step_as_one_device_on_the_global_batch(tmp_path, h5):
    """VGG16 without batch norm, dropout off, weight averages on: after one step and after 20,
    two mirrored replicas at global batch 4 hold one device's weights."""
    (single,) = steps('single', 'vgg16', 20, tmp_path, h5)
    (mirrored,) = steps('mirrored', 'vgg16', 20, tmp_path, h5)
    assert close(single, mirrored, 'gradient:') < 1e-5
    assert close(single, mirrored, 'step1:') < 1e-5
    assert close(single, mirrored) < 1e-5
    np.testing.assert_allclose(single['losses'], mirrored['losses'], rtol=1e-5)
    assert mirrored['copies_spread'] == 0  # the replicas' copies are one


@pytest.mark.slow
def test_class_weights_normalise_over_the_global_batch(tmp_path, h5):
    """The weighted mean's denominator sums every replica's weights: the first step's gradients
    are one device's. (Over 20 steps this toy drifts to 1e-5 in loss once Adam meets a
    gradient near zero, so the check is on the first.)"""
    (single,) = steps('single', 'vgg16+weighted', 1, tmp_path, h5)
    (mirrored,) = steps('mirrored', 'vgg16+weighted', 1, tmp_path, h5)
    assert close(single, mirrored, 'gradient:') < 1e-5
    np.testing.assert_allclose(single['losses'], mirrored['losses'], rtol=1e-6)


@pytest.mark.slow
def test_two_workers_end_identical_and_as_one_device(tmp_path, h5):
    (single,) = steps('single', 'vgg16', 20, tmp_path, h5)
    first, second = steps('multi-worker', 'vgg16', 20, tmp_path, h5, workers=2)
    assert close(first, second) == 0 and close(first, second, 'step1:') == 0
    assert close(single, first) < 1e-5 and close(single, first, 'gradient:') < 1e-5
    np.testing.assert_allclose(single['losses'], first['losses'], rtol=1e-5)


@pytest.mark.slow
def test_synchronised_batch_norm_takes_the_global_batch(tmp_path):
    """MobileNetV2 with batch norm: the first step's moving statistics and gradients are one
    device's, within float32 rounding. This random MobileNetV2 at 64x128 amplifies rounding:
    two one-device runs that differ only in their thread count already differ in gradient by
    about 4 % (relative norm) and drift apart within a few Adam steps, as would any two float32
    computations, so the check is on the first step, against batch norm per replica (whose
    gradients differ by over 100 %, its statistics by 7 %)."""
    encoder = 'mobilenetv2:fcn8s'
    (single,) = steps('single', encoder, 3, tmp_path)
    (mirrored,) = steps('mirrored', encoder, 3, tmp_path)
    moving = [k for k in single if k.startswith('step1:') and '/moving_' in k]
    gradients = [k for k in single if k.startswith('gradient:')]
    assert moving and relative_norm(single, mirrored, moving) < 1e-3
    assert relative_norm(single, mirrored, gradients) < 0.2
    assert mirrored['copies_spread'] == 0  # moving statistics and averages alike everywhere


def test_each_worker_takes_its_share_of_every_global_batch(tmp_path):
    make_kitti(tmp_path, stems=tuple(f'um_{i:06d}' for i in range(11)), size=(20, 30))
    from roadseg.data import layouts
    dataset = layouts.open_dataset('kitti', str(tmp_path), 'road', None, None)
    from roadseg.data.transforms import Augment

    def epoch(**kw):
        batches = TrainingData(dataset.train, (32, 32), dataset.read_label, 2,
                                 Augment('flip=0.5,scale=0.2,brightness=0.2'), seed=3, **kw)
        return list(batches(4))
    whole = epoch()
    assert [len(images) for images, _ in whole] == [4, 4, 3]
    shares = [epoch(replicas=2, shard=(w, 2)) for w in range(2)]
    assert [len(images) for images, _ in shares[0]] == [2, 2, 1]  # 3 cut to 2, one each
    for count, replicas, steps in ((11, 1, 3), (11, 2, 3), (9, 2, 2), (9, 1, 3), (8, 2, 2)):
        batches = TrainingData(dataset.train[:count], (32, 32), dataset.read_label, 2,
                                 replicas=replicas)
        assert batches.steps(4) == steps == len(list(batches(4)))
    for index, (images, labels) in enumerate(whole):
        kept = len(images) - len(images) % 2
        np.testing.assert_array_equal(np.concatenate([s[index][0] for s in shares]),
                                      images[:kept])
        np.testing.assert_array_equal(np.concatenate([s[index][1] for s in shares]),
                                      labels[:kept])


# ----------------------------------------------------------------------------------------------
# main.py on two workers
# ----------------------------------------------------------------------------------------------

def main_command(*args):
    return [sys.executable, os.path.join(ROOT, 'main.py'), *args]


def losses(run_dir):
    return [r['train_loss'] for r in json.loads((run_dir / 'metrics.json').read_text())['epochs']]


@pytest.mark.slow
def test_a_multi_worker_run_killed_and_resumed_trains_as_one_process(tmp_path, h5):
    """Two workers train main.py's run; the chief alone writes it. Worker 1 is killed in epoch
    2: the chief stops within --step-timeout with one line, and both resumed finish the run
    with the losses of an uninterrupted single-process run. evaluate.py reads the result."""
    data = tmp_path / 'data'
    make_kitti(data, stems=tuple(f'um_{i:06d}' for i in range(40)), size=(64, 128))
    options = ['--data-dir', str(data), '--epochs', '3', '--batch-size', '2', '--image-shape',
               '64x128', '--encoder-weights', f'keras-h5:{h5}', '--keep-prob', '1.0',
               '--val-fraction', '0.2', '--learning-rate', '1e-4', '--step-timeout', '10']
    runs = [tmp_path / f'runs{w}' for w in range(2)]
    ports = free_ports(2)

    def worker(index, *extra):
        return subprocess.Popen(main_command(*options, '--runs-dir', str(runs[index]),
                                             '--distribute', 'multi-worker', *extra),
                                cwd=tmp_path, env=environment(cluster(index, ports)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chief, other = worker(0), worker(1)
    deadline, run_dir = time.time() + TIMEOUT, None
    while time.time() < deadline and chief.poll() is None and not run_dir:
        found = list(runs[0].glob('2*/metrics.json')) if runs[0].exists() else []
        run_dir = found[0].parent if found else None
        time.sleep(0.05)
    assert run_dir, chief.communicate()[1][-2000:]
    other.send_signal(signal.SIGKILL)
    other.wait()
    killed = time.time()
    out, err = chief.communicate(timeout=TIMEOUT)
    assert chief.returncode == 2 and time.time() - killed < 10 + 30, err[-3000:]
    message = err.strip().splitlines()[-1]
    assert message.startswith('error: worker 0: lost the other workers (') and \
        '--step-timeout 10 s' in message and '--resume' in message
    assert out.splitlines()[0].startswith('training on 2 replicas: 2 workers (multi-worker')
    assert not runs[1].exists()  # the chief alone writes

    ports[:] = free_ports(2)
    options[options.index('--step-timeout') + 1] = '60'
    resumed = [subprocess.Popen(main_command('--resume', str(run_dir)), cwd=tmp_path,
                                env=environment(cluster(w, ports)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for w in range(2)]
    for process in resumed:
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err[-2000:]
    assert 'resuming' in (run_dir / 'train.log').read_text()
    assert not runs[1].exists()

    single = subprocess.run(main_command(*options, '--runs-dir', str(tmp_path / 'single'),
                                         '--distribute', 'none'),
                            cwd=tmp_path, env=environment(), capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr[-2000:]
    (single_dir,) = (tmp_path / 'single').glob('2*')
    assert losses(run_dir) == pytest.approx(losses(single_dir), rel=1e-5)

    evaluate.main(['--model', str(run_dir), '--data-dir', str(data)])
    metrics = json.loads((run_dir / 'metrics.json').read_text())
    best = next(r for r in metrics['epochs'] if r['epoch'] == metrics['best_epoch'])
    got = json.loads((run_dir / 'eval-val' / 'metrics.json').read_text())
    assert got['iou'] == pytest.approx(best['val']['iou'], abs=1e-9)


# ----------------------------------------------------------------------------------------------
# Options and their errors
# ----------------------------------------------------------------------------------------------

def test_tf_config_missing_or_malformed_is_one_line(monkeypatch):
    monkeypatch.delenv('TF_CONFIG', raising=False)
    with pytest.raises(UserError, match='TF_CONFIG environment variable, which is not set'):
        distribute.read_tf_config()
    for text, message in [('{"cluster": {}}', 'is not {"cluster"'), ('not json', 'is not'),
                          (cluster(2, [1, 2]), 'task worker 2 is not in its cluster')]:
        monkeypatch.setenv('TF_CONFIG', text)
        with pytest.raises(UserError, match=message):
            distribute.read_tf_config()
    monkeypatch.setenv('TF_CONFIG', cluster(1, [1, 2]))
    assert distribute.read_tf_config() == (['127.0.0.1:1', '127.0.0.1:2'], ('worker', 1), 1)
    monkeypatch.setenv('TF_CONFIG', json.dumps({  # Kubeflow's: a chief, then the workers
        'cluster': {'chief': ['c:1'], 'worker': ['w:1', 'w:2']},
        'task': {'type': 'worker', 'index': 0}}))
    assert distribute.read_tf_config() == (['c:1', 'w:1', 'w:2'], ('worker', 0), 1)


def test_a_batch_that_does_not_split_among_the_replicas_is_refused():
    class Replicated:
        replicas = 2
    with pytest.raises(UserError, match='--batch-size 3 is the global batch .* multiple of 2'):
        distribute.check_batch(Replicated(), 3)
    assert distribute.check_batch(Replicated(), 4)


def test_the_frozen_udacity_vgg_cannot_be_replicated():
    with pytest.raises(UserError, match='frozen graph.*--encoder-weights none, imagenet or '
                                        'keras-h5'):
        distribute.setup(TrainingConfig(distribute='mirrored', batch_size=2),
                         frozen_encoder=True)


def test_xla_is_refused_where_it_does_not_help(monkeypatch):
    monkeypatch.setattr(distribute, 'gpus', lambda: [])
    with pytest.raises(UserError, match='--xla is for GPUs'):
        distribute.setup(TrainingConfig(xla=True, batch_size=2))


def test_a_precision_the_machine_lacks_says_so(monkeypatch):
    for name in ('TF_ENABLE_ONEDNN_OPTS', 'ONEDNN_MAX_CPU_ISA'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cpu, 'flags', lambda: {'avx2'})
    with pytest.raises(UserError, match='bfloat16 needs a CPU with AVX512-BF16 or AMX'):
        distribute.session_config('bfloat16')
    with pytest.raises(UserError, match='float16 runs on GPUs and none is visible here; use '
                                        '--precision float32$'):
        distribute.session_config('float16')
    monkeypatch.setattr(cpu, 'flags', lambda: {'avx512_bf16'})
    with pytest.raises(UserError, match='or bfloat16: this CPU has it'):
        distribute.session_config('float16')
    # The CPU has the kernels, but oneDNN is off or kept below them: its first bf16
    # convolution would fail ("could not create a primitive descriptor")
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'avx512_core_bf16')
    assert distribute.bfloat16_problem() is None
    for name, value, said in (('ONEDNN_MAX_CPU_ISA', 'AVX2', 'ONEDNN_MAX_CPU_ISA=AVX2 keeps it'),
                              ('TF_ENABLE_ONEDNN_OPTS', '0', 'TF_ENABLE_ONEDNN_OPTS=0 turns')):
        monkeypatch.setenv(name, value)
        with pytest.raises(UserError, match=f'--precision bfloat16 runs on oneDNN.*{said}'):
            distribute.session_config('bfloat16')


def test_out_of_memory_and_a_silent_worker_are_one_line():
    args = TrainingConfig(image_shape=(160, 576), batch_size=8)
    with pytest.raises(UserError, match=r'out of memory: lower --batch-size \(now 8\) or '
                                        r'--image-shape \(now 160x576\) or --train-crop'):
        with distribute.failures(args, distribute.Setup('none')):
            raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating')
    worker = distribute.Setup('multi-worker', workers=2)
    for error in (tf.errors.DeadlineExceededError, tf.errors.UnavailableError):
        with pytest.raises(UserError, match=r'worker 0: lost the other workers \(gone\); .* '
                                            r'--step-timeout 600 s. .* --resume'):
            with distribute.failures(args, worker):
                raise error(None, None, 'gone\nmore')


@pytest.mark.slow
@pytest.mark.skipif(bool(distribute.bfloat16_problem()),
                    reason=f'bfloat16 {distribute.bfloat16_problem()}')
def test_a_bfloat16_step_runs_and_changes_the_float32_weights():
    from roadseg.model import network
    from roadseg.model.config import NetworkConfig
    from roadseg.training import loss
    args = NetworkConfig('mobilenetv2', encoder_weights='none', alpha=0.35)
    with tf.Graph().as_default(), tf1.Session(
            config=distribute.session_config('bfloat16')) as sess:
        tf1.set_random_seed(0)
        net = network.build_network(sess, args, 2)
        label = tf1.placeholder(tf.float32, [None, None, None, 2])
        _, train_op, _ = loss.optimize(net.train_output, label, 1e-3, 2)
        net.initialise()
        kernel = next(v for v in tf1.trainable_variables() if v.op.name.endswith('conv1/kernel'))
        assert kernel.dtype.base_dtype == tf.float32
        before = sess.run(kernel)
        rng = np.random.default_rng(0)
        sess.run(train_op, {net.input_image: rng.uniform(0, 255, (2, 64, 64, 3)),
                            label: np.eye(2)[rng.integers(0, 2, (2, 64, 64))],
                            net.keep_prob: 1.0})
        after = sess.run(kernel)
    assert after.dtype == np.float32 and np.abs(after - before).max() > 1e-4


def test_float16_loss_scaling_steps_and_changes_the_weights():
    """--precision float16's optimiser (the rewrite itself needs a GPU): dynamic loss scaling
    takes a step as Adam does."""
    from roadseg.training import loss
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(0)
        features = tf1.placeholder(tf.float32, [None, 4, 4, 3])
        kernel = tf1.get_variable('kernel', [1, 1, 3, 2])
        logits = tf.nn.conv2d(features, kernel, 1, 'SAME')
        label = tf1.placeholder(tf.float32, [None, 4, 4, 2])
        _, train_op, cross_entropy = loss.optimize(logits, label, 1e-2, 2, loss_scale=True)
        sess.run(tf1.global_variables_initializer())
        rng = np.random.default_rng(0)
        feed = {features: rng.normal(size=(2, 4, 4, 3)),
                label: np.eye(2)[rng.integers(0, 2, (2, 4, 4))]}
        before, first = sess.run([kernel, cross_entropy], feed)
        for _ in range(20):
            sess.run(train_op, feed)
        after, last = sess.run([kernel, cross_entropy], feed)
    assert np.abs(after - before).max() > 1e-3 and last < first
