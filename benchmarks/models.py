"""benchmark.py's measurements: the FCN's training and inference time per image as main.py
builds it, its FLOP rate against numpy's float32 matmul timed in alternation, the peer
implementations, and a trained model's deployment formats, each timed in a process of its own.

`python -m benchmarks.models MODEL REPEATS` is that child process: it prints time_model's JSON.
"""
import dataclasses
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.service import peak_memory_mb
from roadseg import cli, export, inference
from roadseg.errors import UserError
from roadseg.model.config import NetworkConfig
from roadseg.model.ops import tf, tf1
from roadseg.model_info import ModelInfo
from roadseg.training import graph as training_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds predict.py
NUM_CLASSES = 2
PAUSE_S = 0.3  # between paired timings: longer than OpenBLAS's threads spin after a product
PEERS = (('keras', 'peer_keras_fcn8s_vgg.py'), ('torch', 'peer_torch_fcn8s_vgg.py'))
PEER_RESULT = re.compile(r'inference ([0-9.]+) s/img.*train ([0-9.]+) s/img')

# Targets from the issues, printed beside the figures (not asserted anywhere).
TARGETS = {('vgg16', 'inference_vs_numpy_percent'): '>= 80 % of numpy',
           ('mobilenetv2', 'train_s_per_image', (352, 480)): '<= 0.18 s',
           ('mobilenetv2', 'inference_ms_batch1', (352, 480)): '< 34 ms',
           ('mobilenetv2', 'inference_ms_batch1', (160, 576)): '< 20 ms'}


def network_options(encoder, decoder):
    """main.py's network options for a benchmark's network name: vgg16, mobilenetv2 (with
    `decoder`), or tiramisu56, tiramisu67 or tiramisu103 (FC-DenseNet at that depth)."""
    depth = 103  # read by tiramisu only
    if encoder.startswith('tiramisu'):
        encoder, decoder, depth = 'tiramisu', 'tiramisu', int(encoder[len('tiramisu'):])
    return NetworkConfig(encoder, decoder, 'none', depth=depth)


def build_fcn(encoder, decoder, image_shape, config=None):
    """The training graph of the network `encoder` (network_options) for a [any batch, H, W, 3]
    input, in a new graph and session (of ConfigProto `config`) with every variable initialised.

    :return: (sess, net: network.Network, label placeholder, learning-rate placeholder, train_op)
    """
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        sess = tf1.Session(graph=graph, config=config)
        built = training_graph.build(sess, network_options(encoder, decoder), NUM_CLASSES,
                                     input_shape=(None, *image_shape))
        built.net.initialise()
    return sess, built.net, built.label, built.learning_rate, built.train_op


def count_flops(output):
    """FLOPs per image of the forward pass that computes `output`: its Conv2D ops
    (2*out_h*out_w*kh*kw*cin*cout), depthwise convolutions (2*out_h*out_w*kh*kw*cin*multiplier)
    and transposed convolutions (Conv2DBackpropInput, counted on their input size:
    2*in_h*in_w*kh*kw*cin*cout). Needs static heights and widths; the backward pass of a
    training graph is not counted."""
    flops, seen, stack = 0, set(), [output.op]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        if op.type in ('Conv2D', 'DepthwiseConv2dNative'):
            kh, kw, cin, cout = op.inputs[1].shape.as_list()
            _, h, w, _ = op.outputs[0].shape.as_list()
        elif op.type == 'Conv2DBackpropInput':
            kh, kw, cout, cin = op.inputs[1].shape.as_list()
            _, h, w, _ = op.inputs[2].shape.as_list()
        else:
            continue
        flops += 2 * h * w * kh * kw * cin * cout
    return flops


def seconds(fn):
    """Wall-clock seconds of one `fn()` call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_call(fn, repeats, warmup=1):
    """Median wall-clock seconds of `fn()` over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


def numpy_matmul(n=4096):
    """A function computing one n x n @ n x n float32 numpy product, and its FLOPs."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    return (lambda: a @ b), 2 * n ** 3


def numpy_matmul_gflops(repeats=3):
    """numpy's float32 GFLOP/s on a 4096^3 product (median after one warm-up)."""
    product, flop = numpy_matmul()
    return flop / time_call(product, repeats) / 1e9


def time_paired(fn, reference, repeats):
    """Median seconds of `fn()`, and the median over calls of reference()'s time divided by
    fn()'s, each fn() timed right after a reference() call. This machine's speed drifts by 20 %
    and more within minutes; a pair sees the same state, so their ratio holds still where
    either time alone does not. A pause follows each call: numpy's OpenBLAS threads spin for a
    while after a product and would slow what runs next."""
    fn(), reference()  # warm-up

    def paused(call):
        took = seconds(call)
        time.sleep(PAUSE_S)
        return took
    pairs = [(paused(reference), paused(fn)) for _ in range(repeats)]
    return (statistics.median(t for _, t in pairs),
            statistics.median(ref / t for ref, t in pairs))


def measure(encoder, decoder, image_shape, batch_size, repeats):
    """Inference time per image at batch 1 and at `batch_size`, training time per image at
    `batch_size`, and the forward FLOPs of one network."""
    sess, net, label, learning_rate, train_op = build_fcn(encoder, decoder, image_shape)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, *image_shape, 3)).astype(np.float32)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[
        rng.integers(0, NUM_CLASSES, (batch_size, *image_shape))]

    def infer(batch):
        return sess.run(net.output, {net.input_image: batch, net.keep_prob: 1.0})
    train_feed = {net.input_image: images, label: labels, net.keep_prob: 0.5,
                  learning_rate: 1e-4}
    product, product_flop = numpy_matmul()
    with sess:
        single = time_call(lambda: infer(images[:1]), repeats)
        batched, ratio = time_paired(lambda: infer(images), product, repeats)
        batched /= batch_size
        train = time_call(lambda: sess.run(train_op, train_feed), repeats) / batch_size
        parameters = int(sum(np.prod(v.shape.as_list()) for v in tf1.trainable_variables()))
    gflop = count_flops(net.output) / 1e9
    return {'encoder': encoder, 'decoder': network_options(encoder, decoder).decoder
            if encoder != 'vgg16' else 'fcn8s', 'parameters': parameters,
            'image_shape': list(image_shape), 'gflop_per_image': gflop,
            'inference_ms_batch1': 1e3 * single, 'inference_ms_per_image': 1e3 * batched,
            'inference_gflops': gflop / batched, 'train_s_per_image': train,
            # FLOP rate over numpy's, each batch timed right after a numpy product
            'inference_vs_numpy_percent': 100 * gflop * batch_size / (product_flop / 1e9) * ratio}


def measure_precisions(encoder, decoder, image_shape, batch_size, repeats, variants,
                       peers=()):
    """Inference and training seconds per image at `batch_size` of each variant (name, session
    config) of one graph, the variants timed in turn within each repeat, so that all see the
    machine in the same state; and each variant's time over the first's, per repeat, median.

    `peers` (name, python, script, environment, the variant it is compared with) run in their
    own processes once per repeat, after the variants (a peer that fails runs once more): each
    peer's time over its variant's is taken per repeat, so a ratio never spans minutes of this
    machine's drift."""
    sessions = []
    for _, config in variants:
        sess, net, label, learning_rate, train_op = build_fcn(encoder, decoder, image_shape,
                                                              config)
        sessions.append((sess, net, label, learning_rate, train_op))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, *image_shape, 3)).astype(np.float32)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[
        rng.integers(0, NUM_CLASSES, (batch_size, *image_shape))]
    calls = []
    for sess, net, label, learning_rate, train_op in sessions:
        infer = {net.input_image: images, net.keep_prob: 1.0}
        train = {**infer, label: labels, net.keep_prob: 0.5, learning_rate: 1e-4}
        calls.append((lambda s=sess, n=net, f=infer: s.run(n.output, f),
                      lambda s=sess, t=train_op, f=train: s.run(t, f)))
    for infer, train in calls:  # warm-up: graph optimisation, the first allocations
        infer(), train()
    times, peer_times = [], {peer[0]: [] for peer in peers}
    for repeat in range(repeats):
        times.append([(seconds(infer) / batch_size, seconds(train) / batch_size)
                      for infer, train in calls])
        for name, python, script, environment, _ in peers:
            print(f'  repeat {repeat + 1}/{repeats}: {name} ...', flush=True)
            peer = run_peer(python, script, image_shape, batch_size, environment) or \
                run_peer(python, script, image_shape, batch_size, environment)  # once more
            peer_times[name].append(peer)
    for sess, *_ in sessions:
        sess.close()
    results = []
    for index, (name, _) in enumerate(variants):
        mine = [run[index] for run in times]
        results.append({'encoder': encoder, 'decoder': decoder, 'image_shape': list(image_shape),
                        'variant': name,
                        'inference_s_per_image': statistics.median(i for i, _ in mine),
                        'train_s_per_image': statistics.median(t for _, t in mine),
                        'inference_speedup': statistics.median(
                            run[0][0] / run[index][0] for run in times),
                        'train_speedup': statistics.median(
                            run[0][1] / run[index][1] for run in times)})
    names = [name for name, _ in variants]
    for name, *_, variant in peers:
        paired = [(run, mine) for run, mine in zip(peer_times[name], times) if run]
        if not paired:
            continue  # run_peer said why
        index = names.index(variant)
        ratios = {kind: [run[f'{kind}_s_per_image'] / mine[index][i] for run, mine in paired]
                  for i, kind in enumerate(('inference', 'train'))}
        runs = [run for run, _ in paired]
        results.append({'encoder': name, 'decoder': decoder, 'image_shape': list(image_shape),
                        'variant': variant, 'lines': [run['line'] for run in runs],
                        'failed_repeats': repeats - len(runs),
                        **{f'{kind}_s_per_image': statistics.median(
                            run[f'{kind}_s_per_image'] for run in runs)
                           for kind in ('inference', 'train')},
                        **{f'{kind}_peer_over_project': values
                           for kind, values in ratios.items()},
                        **{f'{kind}_peer_over_project_median': statistics.median(values)
                           for kind, values in ratios.items()}})
    return results


def peer_runs(peer_dir, torch_python, variants):
    """The peers to run beside `variants` (measure_precisions' `peers`): Keras in float32 and
    under mixed_bfloat16 beside the project's float32 and bfloat16, and PyTorch (with
    `torch_python`) in float32; a note for each peer that cannot run."""
    if peer_dir is None:
        print('note: no --peer-dir, peers skipped')
        return []
    peers = []
    keras, torch = (os.path.join(peer_dir, script) for _, script in PEERS)
    for variant, policy in (('float32', 'float32'), ('bfloat16', 'mixed_bfloat16')):
        if variant in variants and os.path.isfile(keras):
            peers.append((f'keras peer {policy}', sys.executable, keras,
                          {'KERAS_PRECISION': policy}, variant))
    if not os.path.isfile(keras):
        print(f'note: no {keras}, keras peer skipped')
    if 'float32' in variants:
        if not torch_python:
            print('note: torch peer skipped (give --torch-python)')
        elif not os.path.isfile(torch):
            print(f'note: no {torch}, torch peer skipped')
        else:
            peers.append(('torch peer float32', torch_python, torch, {}, 'float32'))
    return peers


def measure_precision_variants(encoders, decoder, shapes, batch_size, repeats, variants,
                               peer_dir=None, torch_python=None):
    """measure_precisions for each encoder and size, with the peers (peer_runs) in alternation
    beside VGG16 when `peer_dir` holds them."""
    from roadseg.training import distribute
    configs = [(v, distribute.session_config(v.partition('+')[0], v.endswith('+xla')))
               for v in variants]
    rows = []
    for encoder in encoders:
        peers = peer_runs(peer_dir, torch_python, variants) if encoder == 'vgg16' else []
        for shape in shapes:
            print(f'timing {encoder} at {shape[0]}x{shape[1]}, batch {batch_size}: '
                  f'{", ".join([*variants, *(p[0] for p in peers)])}, in turn ...', flush=True)
            rows += measure_precisions(encoder, decoder, shape, batch_size, repeats, configs,
                                       peers)
    return rows


def print_precision_table(results):
    """The precision variants' times per image and speed-ups, with the Keras peer's times."""
    print(f'\nPer image at batch {results["batch_size"]}, median of {results["repeats"]} '
          f'repeats, the variants timed in turn within each (speed-up: the first variant\'s time '
          f'over this one\'s, per repeat); TensorFlow {results["tensorflow"]}, '
          f'{results["cpus"]} CPUs')
    header = ('network', 'HxW', 'variant', 'infer s', 'x', 'train s', 'x')
    rows = []
    for m in results['precisions']:
        name = m['encoder'] if m['encoder'] != 'mobilenetv2' else f'mobilenetv2-{m["decoder"]}'
        rows.append((name, '{}x{}'.format(*m['image_shape']), m['variant'],
                     f'{m["inference_s_per_image"]:.3f}',
                     f'{m["inference_speedup"]:.2f}' if 'inference_speedup' in m else '',
                     f'{m["train_s_per_image"]:.3f}',
                     f'{m["train_speedup"]:.2f}' if 'train_speedup' in m else ''))
    for line in cli.aligned(header, rows, left=3):
        print('  ' + line)
    for m in results['precisions']:
        if 'inference_peer_over_project' in m:
            print(f'  {m["encoder"]} time over the project {m["variant"]} at '
                  f'{m["image_shape"][0]}x{m["image_shape"][1]} (above 1: the project is '
                  f'faster; target >= 1.1), per repeat: inference '
                  f'{" ".join(f"{r:.2f}" for r in m["inference_peer_over_project"])} (median '
                  f'{m["inference_peer_over_project_median"]:.2f}), training '
                  f'{" ".join(f"{r:.2f}" for r in m["train_peer_over_project"])} (median '
                  f'{m["train_peer_over_project_median"]:.2f})'
                  + (f'; it crashed in {m["failed_repeats"]} repeat(s), twice each'
                     if m['failed_repeats'] else ''))


def run_peer(python, script, image_shape, batch_size, environment=None):
    """Run a peer script as `python script H W B`; its figures, or None with a note printed."""
    try:
        done = subprocess.run([python, script, *map(str, image_shape), str(batch_size)],
                              capture_output=True, text=True, check=False,
                              env={**os.environ, **(environment or {})})
    except OSError as e:
        print(f'note: peer {script} not run ({e})')
        return None
    lines = done.stdout.strip().splitlines()
    found = PEER_RESULT.search(lines[-1]) if lines else None
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ['no output'])[-1]
        print(f'note: peer {os.path.basename(script)} failed (exit {done.returncode}): {last}')
        return None
    return {'line': lines[-1], 'inference_s_per_image': float(found[1]),
            'train_s_per_image': float(found[2])}


def target(measurement, key):
    """The issue's target for this figure, or ''."""
    shape = tuple(measurement['image_shape'])
    return TARGETS.get((measurement['encoder'], key, shape),
                       TARGETS.get((measurement['encoder'], key), ''))


def print_table(results):
    """The figures as an aligned table, then the peer ratios and the targets."""
    print(f'\nFCN per image, batch {results["batch_size"]} (inference also at batch 1), median '
          f'of {results["repeats"]}; TensorFlow {results["tensorflow"]}, numpy '
          f'{results["numpy"]}, {results["cpus"]} CPUs; numpy float32 matmul 4096^3: '
          f'{" and ".join(f"{g:.1f}" for g in results["numpy_gflops_runs"])} GFLOP/s before and '
          f'after; "% numpy" pairs each timed batch with a numpy product run just before it)')
    header = ('network', 'HxW', 'M params', 'GFLOP', 'infer b1 ms', 'infer ms', 'GFLOP/s',
              '% numpy', 'train s')
    rows = []
    for m in results['measurements']:
        name = m['encoder'] if m['encoder'] != 'mobilenetv2' else f'mobilenetv2-{m["decoder"]}'
        size = '{}x{}'.format(*m['image_shape'])
        rows.append((name, size, f'{m["parameters"] / 1e6:.2f}', f'{m["gflop_per_image"]:.1f}',
                     f'{m["inference_ms_batch1"]:.1f}',
                     f'{m["inference_ms_per_image"]:.1f}', f'{m["inference_gflops"]:.1f}',
                     f'{m["inference_vs_numpy_percent"]:.0f}', f'{m["train_s_per_image"]:.3f}'))
    for line in cli.aligned(header, rows, left=2):
        print('  ' + line)
    for m in results['measurements']:
        size = '{}x{}'.format(*m['image_shape'])
        for key in ('inference_vs_numpy_percent', 'inference_ms_batch1', 'train_s_per_image'):
            if target(m, key):
                print(f'  target {m["encoder"]} {size} {key}: {target(m, key)}; measured '
                      f'{m[key]:.3g}')


# ----------------------------------------------------------------------------------------------
# Deployment formats (--deploy)
# ----------------------------------------------------------------------------------------------

DEPLOY_FORMATS = ('frozen', 'tflite32', 'tflite16', 'int8', 'onnx')
# {format: the formats it is timed against in alternation, in one process}: the int8 model and
# onnxruntime, each against the float32 TensorFlow graph and float32 LiteRT
PAIRED = {'int8': ('frozen', 'tflite32'), 'onnx': ('frozen', 'tflite32')}


def time_model(path, repeats):
    """Latency at batch 1 and images per second at batch 8 of the model file at `path`, and
    the peak resident memory of this process (one format per process, so it is that format's)."""
    with inference.load_model(path) as model:
        images = np.random.default_rng(0).integers(0, 256, (8, *model.image_shape, 3),
                                                   dtype=np.uint8)
        latency = time_call(lambda: model(images[:1]), repeats)
        batch = time_call(lambda: model(images), max(1, repeats // 4))
    return {'kind': model.kind, 'latency_ms': 1e3 * latency, 'batch8_images_per_s': 8 / batch,
            'peak_rss_mb': peak_memory_mb()}


def time_in_child(path, repeats):
    """time_model in a fresh Python process."""
    done = subprocess.run([sys.executable, '-m', 'benchmarks.models', path, str(repeats)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise UserError(f'timing {path} failed: '
                        f'{(done.stderr.strip().splitlines() or ["no output"])[-1]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def frozen_flops(path):
    """Forward FLOPs per image of a frozen graph written by export.py."""
    graph_def = tf1.GraphDef()
    with open(path, 'rb') as f:
        graph_def.ParseFromString(f.read())
    with tf.Graph().as_default() as graph:
        tf.graph_util.import_graph_def(graph_def, name='')
        return count_flops(graph.get_tensor_by_name('probabilities:0'))


def deploy_formats():
    """DEPLOY_FORMATS, without onnx (with a note) when tf2onnx or onnxruntime is missing."""
    missing = [name for name in export.ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f'note: onnx skipped: no {" and no ".join(missing)} (pip install \'.[onnx]\')')
        return tuple(fmt for fmt in DEPLOY_FORMATS if fmt != 'onnx')
    return DEPLOY_FORMATS


def measure_deploy(run_dir, shapes, calibration_count, repeats, numpy_gflops, folder):
    """Freeze and convert the model of `run_dir` at each of `shapes` into `folder`, int8
    calibrated on `calibration_count` training images, and time each format."""
    model_folder = inference.model_folder(run_dir)
    info = ModelInfo.read(model_folder, run_dir)
    formats = deploy_formats()
    rows = []
    for shape in shapes:
        size = '{}x{}'.format(*shape)
        print(f'freezing and converting the model at {size} ...')
        shaped = dataclasses.replace(info, image_shape=shape)
        calibration = export.calibration_images(run_dir, shaped, count=calibration_count)
        paths = export.write_exports(model_folder, shaped, os.path.join(folder, size),
                                     formats, calibration)
        gflop = frozen_flops(paths['frozen']) / 1e9
        timed = {}
        for fmt, path in paths.items():
            print(f'timing {fmt} at {size} ...')
            row = timed[fmt] = time_in_child(path, repeats)
            row.update(format=fmt, path=path, image_shape=list(shape), gflop_per_image=gflop,
                       gflops=gflop / (row['latency_ms'] / 1e3))
            row['vs_numpy_percent'] = 100 * row['gflops'] / numpy_gflops
        for fmt, references in PAIRED.items():
            if fmt in timed:
                timed[fmt]['speedup_paired'] = paired_speedups(paths, fmt, references, repeats)
        rows.extend(timed.values())
    return rows


def paired_speedups(paths, fmt, references, repeats):
    """{reference format: its batch-1 time over the `fmt` model's}, for each of `references`:
    each loaded in one process with the `fmt` model and called in alternation with it
    (time_paired), so a slow minute of this machine slows both."""
    ratios = {}
    with inference.load_model(paths[fmt]) as model:
        image = np.random.default_rng(0).integers(0, 256, (1, *model.image_shape, 3),
                                                  dtype=np.uint8)
        for reference in references:
            print(f'timing {reference} and {fmt} in alternation ...')
            with inference.load_model(paths[reference]) as other:
                ratios[reference] = time_paired(lambda: model(image), lambda: other(image),
                                                repeats)[1]
    return ratios


def fastest(rows, shape):
    """The deployment format timed fastest at `shape`."""
    return min((r for r in rows if r['image_shape'] == list(shape)),
               key=lambda r: r['latency_ms'])


def print_deploy_table(results):
    """The deployment figures as an aligned table, with the issue's targets."""
    print(f'\n{results["deploy"]}: median of {results["repeats"]} after a warm-up; TensorFlow '
          f'{results["tensorflow"]}, {results["cpus"]} CPUs ({results["cpu"]}); numpy float32 '
          f'matmul 4096^3: {results["numpy_gflops"]:.1f} GFLOP/s')
    header = ('format', 'HxW', 'GFLOP', 'b1 ms', 'b8 img/s', 'GFLOP/s', '% numpy', 'peak MB')
    rows = [(r['format'], '{}x{}'.format(*r['image_shape']), f'{r["gflop_per_image"]:.2f}',
             f'{r["latency_ms"]:.1f}', f'{r["batch8_images_per_s"]:.1f}', f'{r["gflops"]:.1f}',
             f'{r["vs_numpy_percent"]:.0f}', f'{r["peak_rss_mb"]:.0f}')
            for r in results['formats']]
    for line in cli.aligned(header, rows, left=2):
        print('  ' + line)
    for shape in sorted({tuple(r['image_shape']) for r in results['formats']}):
        rows = {r['format']: r for r in results['formats'] if tuple(r['image_shape']) == shape}
        size = f'{shape[0]}x{shape[1]}'
        print(f'  int8 TFLite at {size} over float32 TFLite: {speedups(rows, "int8", "tflite32")} '
              f'(target >= 1.5x); over the float32 TensorFlow graph: '
              f'{speedups(rows, "int8", "frozen")} (target >= 2x)')
        if 'onnx' in rows:
            print(f'  onnxruntime at {size} over the float32 TensorFlow graph: '
                  f'{speedups(rows, "onnx", "frozen")}; over float32 TFLite (LiteRT): '
                  f'{speedups(rows, "onnx", "tflite32")}')


def speedups(rows, fmt, reference):
    """`reference`'s batch-1 time over `fmt`'s (above 1: `fmt` is faster), by the table and
    timed in alternation."""
    return (f'{rows[reference]["latency_ms"] / rows[fmt]["latency_ms"]:.2f}x by the table, '
            f'{rows[fmt]["speedup_paired"][reference]:.2f}x in alternation')


if __name__ == '__main__':
    print(json.dumps(time_model(sys.argv[1], int(sys.argv[2]))))
