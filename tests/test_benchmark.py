"""benchmark.py's FLOP count and options (its timings are figures to read, not to assert)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import benchmark
from benchmarks import models, service, video
from roadseg.errors import UserError
from roadseg.model.ops import tf, tf1
from tests.conftest import ROOT, make_kitti, save_tiny_model


def test_count_flops_of_conv_depthwise_and_transposed_conv():
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, [None, 8, 10, 3])
        y = tf.nn.conv2d(x, tf.zeros([3, 3, 3, 4]), 2, 'SAME')                 # -> 4x5x4
        y = tf.nn.depthwise_conv2d(y, tf.zeros([3, 3, 4, 2]), [1, 1, 1, 1], 'SAME')  # -> 4x5x8
        y = tf.nn.conv2d_transpose(y, tf.zeros([4, 4, 5, 8]), [1, 8, 10, 5], 2, 'SAME')
        flops = models.count_flops(tf.nn.relu(y))
    assert flops == 2 * (4 * 5 * 3 * 3 * 3 * 4 + 4 * 5 * 3 * 3 * 4 * 2 + 4 * 5 * 4 * 4 * 8 * 5)


@pytest.mark.slow
def test_tiramisu_is_measured_at_its_depth_with_its_parameters():
    m = models.measure('tiramisu56', 'fcn8s', (32, 32), 1, 1)
    assert (m['encoder'], m['decoder']) == ('tiramisu56', 'tiramisu')
    assert 1.3e6 < m['parameters'] < 1.5e6  # at two classes; the paper's 1.5 M at eleven
    assert m['gflop_per_image'] > 0 and m['train_s_per_image'] > 0


@pytest.mark.parametrize('argv,message', [
    (['--encoders', 'resnet'], 'resnet'),
    (['--encoders', 'tiramisu50'], 'tiramisu50: use any of vgg16, mobilenetv2, tiramisu56'),
    (['--image-shapes', '160x570'], 'multiples of 32'),
    (['--batch-size', '0'], 'at least 1'),
    (['--peer-dir', '/nowhere/at/all'], '/nowhere/at/all'),
    (['--serve', '/no/model'], '--serve /no/model: no such model'),
    (['--serve', '.', '--clients', '1,x'], '--clients 1,x: comma-separated numbers'),
    (['--serve', '.', '--requests', '0'], 'must be positive'),
    (['--soak', '.', '--soak-seconds', 'nan'], 'must be positive'),
    (['--soak', '/no/model'], '--soak /no/model: no such model'),
    (['--loader', 'coco:.'], '--loader coco:.: give DATASET:PATH'),
    (['--loader', 'kitti:/nowhere'], 'give DATASET:PATH'),
    (['--precisions', 'float32,int4'], '--precisions int4: use float32, bfloat16 or float16'),
    (['--video', 'camvid-road'], '--video: give --video-frames IMAGE_DIR'),
    (['--peer-dir', '.'], '--peer-dir: the peers are timed in turn with the --precisions')])
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=message):
        benchmark.parse_args(argv)


def test_time_paired_gives_the_median_time_and_the_median_of_per_pair_ratios(monkeypatch):
    monkeypatch.setattr(models, 'PAUSE_S', 0)
    times = iter([2, 1, 6, 2, 3, 3])  # (reference, fn) three times
    monkeypatch.setattr(models, 'seconds', lambda call: next(times))
    calls = []
    seconds, ratio = models.time_paired(lambda: calls.append('fn'),
                                           lambda: calls.append('reference'), 3)
    assert calls == ['fn', 'reference']  # the warm-up; the timed calls go through seconds()
    assert (seconds, ratio) == (2, 2)  # ratios 2, 3, 1; the medians' ratio would be 1.5


def test_onnx_is_timed_in_alternation_with_the_frozen_graph_and_litert(monkeypatch, tmp_path):
    calls = []

    class Fake:
        image_shape = (2, 3)

        def __init__(self, path):
            self.path = path

        def __call__(self, image):
            calls.append(self.path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass
    monkeypatch.setattr(models, 'PAUSE_S', 0)
    monkeypatch.setattr(models.inference, 'load_model', Fake)
    paths = {fmt: fmt + '.file' for fmt in models.DEPLOY_FORMATS}
    ratios = models.paired_speedups(paths, 'onnx', models.PAIRED['onnx'], 2)
    assert set(ratios) == {'frozen', 'tflite32'} and all(r > 0 for r in ratios.values())
    # in one process, each reference in turn with the onnx model: a warm-up, then 2 pairs
    assert calls == [*['onnx.file', 'frozen.file'] + ['frozen.file', 'onnx.file'] * 2,
                     *['onnx.file', 'tflite32.file'] + ['tflite32.file', 'onnx.file'] * 2]


def test_the_deploy_table_names_the_cpu_and_gives_onnxruntime_its_row_and_ratios(capsys):
    rows = [{'format': fmt, 'image_shape': [160, 576], 'gflop_per_image': 1.1,
             'latency_ms': ms, 'batch8_images_per_s': 1e3 / ms, 'gflops': 1.1e3 / ms,
             'vs_numpy_percent': 50, 'peak_rss_mb': 600}
            for fmt, ms in (('frozen', 20), ('tflite32', 10), ('tflite16', 12), ('int8', 8),
                            ('onnx', 5))]
    rows[3]['speedup_paired'] = {'frozen': 2.4, 'tflite32': 1.3}
    rows[4]['speedup_paired'] = {'frozen': 3.9, 'tflite32': 2.1}
    models.print_deploy_table({'deploy': 'RUN', 'repeats': 5, 'tensorflow': '2.x', 'cpus': 2,
                               'cpu': 'Some CPU @ 2.00GHz', 'numpy_gflops': 100.0,
                               'formats': rows})
    out = capsys.readouterr().out
    assert '2 CPUs (Some CPU @ 2.00GHz)' in out
    assert re.search(r'onnx +160x576 +1\.10 +5\.0 +200\.0', out)
    assert ('onnxruntime at 160x576 over the float32 TensorFlow graph: 4.00x by the table, '
            '3.90x in alternation; over float32 TFLite (LiteRT): 2.00x by the table, 2.10x in '
            'alternation') in out
    assert 'int8 TFLite at 160x576 over float32 TFLite: 1.25x by the table, 1.30x' in out


@pytest.mark.slow
def test_a_child_process_reports_its_own_peak_memory_not_its_parents():
    ballast = np.ones(2**30 // 8)  # 1 GiB, touched, held while the child runs
    assert models.peak_memory_mb() > 1024
    done = subprocess.run([sys.executable, '-c', 'from benchmarks import models; '
                           'print(models.peak_memory_mb())'], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    assert float(done.stdout.split()[-1]) < models.peak_memory_mb() - ballast.nbytes / 2**21


def test_peers_are_skipped_with_a_note_without_peer_dir_or_their_scripts(capsys, tmp_path):
    assert models.peer_runs(None, None, ['float32']) == []
    assert 'no --peer-dir, peers skipped' in capsys.readouterr().out
    assert models.peer_runs(str(tmp_path), None, ['float32']) == []
    out = capsys.readouterr().out
    assert 'peer_keras_fcn8s_vgg.py, keras peer skipped' in out and '--torch-python' in out


def test_peers_match_the_variants_they_are_compared_with(tmp_path):
    for _, script in models.PEERS:
        (tmp_path / script).write_text('')
    peers = models.peer_runs(str(tmp_path), sys.executable, ['float32', 'bfloat16'])
    assert [(name, environment, variant) for name, _, _, environment, variant in peers] == [
        ('keras peer float32', {'KERAS_PRECISION': 'float32'}, 'float32'),
        ('keras peer mixed_bfloat16', {'KERAS_PRECISION': 'mixed_bfloat16'}, 'bfloat16'),
        ('torch peer float32', {}, 'float32')]
    assert [p[0] for p in models.peer_runs(str(tmp_path), None, ['bfloat16'])] == [
        'keras peer mixed_bfloat16']


@pytest.mark.slow
def test_serve_load_test_reports_every_level_against_predict(tmp_path, capsys):
    """benchmark.py --serve on the tiny model, 2 levels of 3 requests a client."""
    save_tiny_model(str(tmp_path / 'run' / 'model'), steps=20)
    results = benchmark.main(['--serve', str(tmp_path / 'run'), '--clients', '1,3',
                              '--requests', '3', '--json', str(tmp_path / 's.json')])
    (result,) = results['serve']
    assert [level['clients'] for level in result['levels']] == [1, 3]
    assert [level['requests'] for level in result['levels']] == [3, 9]
    assert all(level['errors'] == 0 and level['images_per_s'] > 0 and
               level['p99_ms'] >= level['p50_ms'] > 0 for level in result['levels'])
    assert result['levels'][0]['mean_batch'] == 1  # one client: one image a model call
    assert 1 <= result['levels'][1]['mean_batch'] <= 3
    assert len(result['predict_images_per_s_runs']) == 2 and result['server_peak_rss_mb'] > 50
    out = capsys.readouterr().out
    assert 'serve.py on loopback' in out and '% predict' in out
    assert json.loads((tmp_path / 's.json').read_text())['serve'][0]['levels'][1]['clients'] == 3


@pytest.mark.slow
def test_video_reports_predicts_rate_and_every_stages_share(tmp_path, capsys, monkeypatch):
    """benchmark.py --video on the tiny model, a 7-frame video of 3 KITTI-layout images."""
    monkeypatch.setattr(video, 'FRAMES', 7)
    make_kitti(tmp_path / 'data', stems=['um_000000', 'um_000001', 'um_000002'], size=(45, 77))
    save_tiny_model(str(tmp_path / 'run' / 'model'), steps=20)
    results = benchmark.main(['--video', str(tmp_path / 'run'), '--video-frames',
                              str(tmp_path / 'data' / 'data_road' / 'training' / 'image_2'),
                              '--json', str(tmp_path / 'v.json')])['video']
    assert results['frames'] == 7 and results['frame_size'] == [45, 77]
    assert results['frames_per_s'] > 0
    assert list(results['stages']) == list(video.STAGES)
    assert all(s['ms_per_frame'] > 0 for s in results['stages'].values())
    assert sum(s['share'] for s in results['stages'].values()) == pytest.approx(1)
    out = capsys.readouterr().out
    assert '7 frames of 77x45' in out and 'resize back' in out
    assert json.loads((tmp_path / 'v.json').read_text())['video']['frames'] == 7


@pytest.mark.slow
def test_soak_sends_every_good_and_bad_request_and_reports_errors_and_memory(tmp_path,
                                                                           capsys):
    """benchmark.py --soak on the tiny model for a few seconds: every request of the mix is
    sent, the good answered 200 and the bad 4xx, the server stays up and its memory is read."""
    save_tiny_model(str(tmp_path / 'run' / 'model'), steps=20)
    results = benchmark.main(['--soak', str(tmp_path / 'run'), '--soak-seconds', '5',
                              '--clients', '2', '--json', str(tmp_path / 'soak.json')])
    soak = results['soak']
    mix = service.soak_requests(service.kitti_jpegs(None, count=1)[0])
    assert set(soak['by_request']) == {name for name, *_ in mix}
    assert {name for name, counts in soak['by_request'].items() if not counts['good']} == \
        {name for name, _, _, _, good in mix if not good} and len(mix) > 12
    assert (soak['server_errors'], soak['transport_errors'], soak['unexpected']) == (0, 0, 0)
    assert soak['server_survived'] and soak['server_exit_status'] == 0
    assert soak['rss_end_mb'] > 50 and soak['good_p99_ms'] >= soak['good_p50_ms'] > 0
    out = capsys.readouterr().out
    assert 'serve.py soak with' in out and '5xx: 0, transport errors: 0' in out
    assert json.loads((tmp_path / 'soak.json').read_text())['soak']['requests'] == \
        soak['requests']


def test_soak_summary_counts_5xx_transport_errors_and_memory_growth_after_warm_up():
    answers = [('a', True, 200, 0.1), ('a', True, 500, 0.2), ('b', False, 400, 0.01),
               ('b', False, 'ReadTimeout', 60.0), ('b', False, 200, 0.01)]
    # the warm-up (before 20 s), then medians of 20-30 s and of the last 10 s
    memory = [(1, 900.0), (20, 100.0), (24, 300.0), (28, 104.0), (60, 990.0), (91, 120.0),
              (95, 130.0), (99, 10.0)]
    summary = service.soak_summary(answers, memory, 100, 2, True, 0)
    assert (summary['server_errors'], summary['transport_errors'], summary['unexpected']) == \
        (1, 1, 3)
    assert summary['by_request']['b']['statuses'] == {'400': 1, 'ReadTimeout': 1, '200': 1}
    assert (summary['rss_after_warm_up_mb'], summary['rss_end_mb']) == (104, 120)
    assert summary['rss_growth_percent'] == pytest.approx(100 * (120 / 104 - 1))
    assert summary['rss_max_mb'] == 990


def test_loader_rate_is_measured_on_the_data_set(tmp_path, capsys):
    make_kitti(tmp_path, stems=tuple(f'um_{i:06d}' for i in range(6)), size=(40, 70))
    results = benchmark.main(['--loader', f'kitti:{tmp_path}', '--batch-size', '4',
                              '--repeats', '2', '--json', str(tmp_path / 'loader.json')])
    loader = results['loader']['variants']['new']
    assert (loader['images'], loader['image_shape'], len(loader['runs'])) == (6, [160, 576], 2)
    assert loader['images_per_second'] > 0 and loader['input'] == 'tf.data pipeline (cached)'
    assert json.loads((tmp_path / 'loader.json').read_text())['loader']['variants']['new'] == loader
    out = capsys.readouterr().out
    assert 'images/s' in out and 'one A100 training VGG16 FCN-8s at 160x576 consumes' in out


@pytest.mark.slow
def test_precision_variants_and_peers_are_timed_in_turn_within_each_repeat(monkeypatch):
    events = []
    times = iter([4.0, 8.0, 2.0, 4.0, 4.0, 8.0, 1.0, 2.0])  # a's, then b's, per repeat

    def timed(fn):
        events.append('project')
        return next(times)
    peer_times = iter([(3.0, 6.0), (1.5, 3.0)])  # per image, per repeat

    def peer(python, script, shape, batch_size, environment):
        events.append(script)
        inference, train = next(peer_times)
        return {'line': script, 'inference_s_per_image': inference, 'train_s_per_image': train}
    monkeypatch.setattr(models, 'seconds', timed)
    monkeypatch.setattr(models, 'run_peer', peer)
    rows = models.measure_precisions('mobilenetv2', 'fcn8s', (32, 32), 2, 2,
                                    [('a', None), ('b', None)],
                                    [('keras peer', 'python', 'keras.py', {}, 'b')])
    assert events == ['project'] * 4 + ['keras.py'] + ['project'] * 4 + ['keras.py']
    assert [r['variant'] for r in rows] == ['a', 'b', 'b']
    assert (rows[1]['inference_s_per_image'], rows[1]['train_s_per_image']) == (0.75, 1.5)
    assert (rows[1]['inference_speedup'], rows[1]['train_speedup']) == (3.0, 3.0)
    peer_row = rows[2]
    assert peer_row['encoder'] == 'keras peer'
    # b took 1.0 and 0.5 s per image in the two repeats; the peer 3.0 then 1.5: 3x both times
    assert peer_row['inference_peer_over_project'] == [3.0, 3.0]
    assert peer_row['train_peer_over_project'] == [3.0, 3.0]
    assert peer_row['inference_peer_over_project_median'] == 3.0


@pytest.mark.slow
def test_a_peer_that_crashes_runs_once_more_and_its_lost_repeats_are_counted(monkeypatch):
    monkeypatch.setattr(models, 'seconds', lambda fn: 2.0)  # 1 s per image, batch 2
    answers = iter([None, None, {'line': 'ok', 'inference_s_per_image': 2.0,
                                 'train_s_per_image': 4.0},
                    None, {'line': 'ok', 'inference_s_per_image': 3.0, 'train_s_per_image': 3.0}])
    calls = []

    def peer(*args):
        calls.append(args)
        return next(answers)
    monkeypatch.setattr(models, 'run_peer', peer)
    rows = models.measure_precisions('mobilenetv2', 'fcn8s', (32, 32), 2, 3, [('a', None)],
                                    [('keras peer', 'python', 'keras.py', {}, 'a')])
    assert len(calls) == 5  # repeat 1 failed twice; repeat 3 failed once, then ran
    (peer_row,) = [r for r in rows if r['encoder'] == 'keras peer']
    assert peer_row['failed_repeats'] == 1
    assert peer_row['inference_peer_over_project'] == [2.0, 3.0]
    assert peer_row['train_peer_over_project'] == [4.0, 3.0]


def test_same_weights_names_every_variable_that_differs_or_is_on_one_side():
    from benchmarks import same_weights
    old = {'a': np.zeros(2), 'b': np.ones(3), 'gone': np.zeros(1)}
    new = {'a': np.zeros(2), 'b': np.array([1.0, 1.0, 1.0 + 1e-7]), 'added': np.zeros(1)}
    assert same_weights.compare(old, new) == (2, ['added', 'gone', 'b'])
    assert same_weights.compare(old, dict(old)) == (3, [])
