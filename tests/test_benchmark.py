"""benchmark.py's FLOP count and options (its timings are figures to read, not to assert)."""
import subprocess
import sys

import numpy as np
import pytest

import benchmark
from roadseg import bench
from roadseg.errors import UserError
from roadseg.model.ops import tf, tf1
from tests.conftest import ROOT


def test_count_flops_of_conv_depthwise_and_transposed_conv():
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [None, 8, 10, 3])
        y = tf.nn.conv2d(x, tf.zeros([3, 3, 3, 4]), 2, 'SAME')                 # -> 4x5x4
        y = tf.nn.depthwise_conv2d(y, tf.zeros([3, 3, 4, 2]), [1, 1, 1, 1], 'SAME')  # -> 4x5x8
        y = tf.nn.conv2d_transpose(y, tf.zeros([4, 4, 5, 8]), [1, 8, 10, 5], 2, 'SAME')
        flops = bench.count_flops(tf.nn.relu(y))
    assert flops == 2 * (4 * 5 * 3 * 3 * 3 * 4 + 4 * 5 * 3 * 3 * 4 * 2 + 4 * 5 * 4 * 4 * 8 * 5)


@pytest.mark.parametrize('argv,message', [
    (['--encoders', 'resnet'], 'resnet'),
    (['--image-shapes', '160x570'], 'multiples of 32'),
    (['--batch-size', '0'], 'at least 1'),
    (['--peer-dir', '/nowhere/at/all'], '/nowhere/at/all')])
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=message):
        benchmark.parse_args(argv)


def test_time_paired_gives_the_median_time_and_the_median_of_per_pair_ratios(monkeypatch):
    monkeypatch.setattr(bench, 'PAUSE_S', 0)
    times = iter([2, 1, 6, 2, 3, 3])  # (reference, fn) three times
    monkeypatch.setattr(bench, 'seconds', lambda call: next(times))
    calls = []
    seconds, ratio = bench.time_paired(lambda: calls.append('fn'),
                                           lambda: calls.append('reference'), 3)
    assert calls == ['fn', 'reference']  # the warm-up; the timed calls go through seconds()
    assert (seconds, ratio) == (2, 2)  # ratios 2, 3, 1; the medians' ratio would be 1.5


def test_a_child_process_reports_its_own_peak_memory_not_its_parents():
    ballast = np.ones(2**30 // 8)  # 1 GiB, touched, held while the child runs
    assert bench.peak_memory_mb() > 1024
    done = subprocess.run([sys.executable, '-c', 'from roadseg import bench; '
                           'print(bench.peak_memory_mb())'], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert float(done.stdout.split()[-1]) < bench.peak_memory_mb() - ballast.nbytes / 2**21


def test_peers_are_skipped_with_a_note_without_peer_dir(capsys):
    assert bench.run_peers(None, None, 4, {'image_shape': [32, 32]}) == {}
    assert 'no --peer-dir, peers skipped' in capsys.readouterr().out
