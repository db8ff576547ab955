"""Time the VGG16 FCN-8s on this CPU: training and inference per image, the inference FLOP rate
against numpy's float32 matmul, and, when the peer scripts are there, against Keras and PyTorch.

The network is built exactly as main.py trains it (in-graph VGG16 encoder with random weights,
fcn.layers, fcn.optimize, a default tf1.Session), fed random images and one-hot labels:

    python benchmark.py --image-shape 160x576 --batch-size 4 --repeats 5 --json bench.json
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

import helper
import main as fcn
import vgg

tf, tf1 = fcn.tf, fcn.tf1

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PEER_DIR = os.path.join(HERE, '..', 'shared', 'bench')
PEERS = (('keras', 'peer_keras_fcn8s_vgg.py'), ('torch', 'peer_torch_fcn8s_vgg.py'))
PEER_RESULT = re.compile(r'inference ([0-9.]+) s/img.*train ([0-9.]+) s/img')
TARGET_PERCENT = 80  # inference GFLOP/s as a share of numpy's matmul GFLOP/s


class UserErrorParser(argparse.ArgumentParser):
    """An ArgumentParser that reports a bad flag as a one-line helper.UserError."""

    def error(self, message):
        raise helper.UserError(message)


def parse_args(argv=None):
    """Options; a bad value is a helper.UserError."""
    parser = UserErrorParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--image-shape', type=fcn.image_shape_arg, default=(160, 576),
                        help='HxW, multiples of 32 (default: 160x576)')
    parser.add_argument('--batch-size', type=int, default=4, help='(default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs after warm-up; the median is reported '
                             '(default: %(default)s)')
    parser.add_argument('--peer-dir', help='folder holding the peer scripts '
                                           '(default: ../shared/bench beside this file)')
    parser.add_argument('--torch-python', help='Python interpreter with torch, to run the '
                                               'PyTorch peer (skipped without it)')
    parser.add_argument('--json', help='also write every figure to this JSON file')
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1:
        raise helper.UserError('--batch-size and --repeats must be at least 1')
    if args.peer_dir is not None and not os.path.isdir(args.peer_dir):
        raise helper.UserError(f'--peer-dir {args.peer_dir}: folder not found')
    if args.torch_python is not None and not os.access(args.torch_python, os.X_OK):
        raise helper.UserError(f'--torch-python {args.torch_python}: not an executable')
    return args


def build_fcn(image_shape, batch_size):
    """The training graph at a static [batch, H, W, 3] input, in a new graph and session with
    every variable initialised.

    :return: (sess, tensors) with tensors image_input, keep_prob, label, learning_rate,
             output (the logits at the input's size) and train_op
    """
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        image_input = tf1.placeholder(tf.float32, [batch_size, *image_shape, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        layer3, layer4, layer7 = vgg.build_encoder(image_input, keep_prob)
        output = fcn.layers(layer3, layer4, layer7, fcn.NUM_CLASSES)
        label = tf1.placeholder(tf.float32, [batch_size, *image_shape, fcn.NUM_CLASSES], 'label')
        learning_rate = tf1.placeholder(tf.float32, [], 'learning_rate')
        _, train_op, _ = fcn.optimize(output, label, learning_rate, fcn.NUM_CLASSES)
        sess = tf1.Session(graph=graph)
        sess.run(tf1.global_variables_initializer())
    return sess, dict(image_input=image_input, keep_prob=keep_prob, label=label,
                      learning_rate=learning_rate, output=output, train_op=train_op)


def count_flops(output):
    """FLOPs per image of the forward pass that computes `output`: its Conv2D ops
    (2*out_h*out_w*kh*kw*cin*cout) and transposed convolutions (Conv2DBackpropInput, counted on
    their input size: 2*in_h*in_w*kh*kw*cin*cout). Needs static shapes; the backward pass of a
    training graph is not counted."""
    flops, seen, stack = 0, set(), [output.op]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        if op.type == 'Conv2D':
            kh, kw, cin, cout = op.inputs[1].shape.as_list()
            _, h, w, _ = op.outputs[0].shape.as_list()
        elif op.type == 'Conv2DBackpropInput':
            kh, kw, cout, cin = op.inputs[1].shape.as_list()
            _, h, w, _ = op.inputs[2].shape.as_list()
        else:
            continue
        flops += 2 * h * w * kh * kw * cin * cout
    return flops


def time_call(fn, repeats, warmup=1):
    """Median wall-clock seconds of `fn()` over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_matmul_gflops(n=4096, repeats=3):
    """numpy's float32 GFLOP/s on an n x n @ n x n product (median after one warm-up)."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
    return 2 * n ** 3 / time_call(lambda: a @ b, repeats) / 1e9


def measure_project(image_shape, batch_size, repeats):
    """Inference and training time per image of the project's FCN-8s, and its forward FLOPs."""
    sess, t = build_fcn(image_shape, batch_size)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, *image_shape, 3)).astype(np.float32)
    labels = np.eye(fcn.NUM_CLASSES, dtype=np.float32)[
        rng.integers(0, fcn.NUM_CLASSES, (batch_size, *image_shape))]
    infer_feed = {t['image_input']: images, t['keep_prob']: 1.0}
    train_feed = {t['image_input']: images, t['label']: labels, t['keep_prob']: 0.5,
                  t['learning_rate']: 1e-4}
    with sess:
        inference = time_call(lambda: sess.run(t['output'], infer_feed), repeats)
        train = time_call(lambda: sess.run(t['train_op'], train_feed), repeats)
    return {'gflop_per_image': count_flops(t['output']) / 1e9,
            'inference_s_per_image': inference / batch_size,
            'train_s_per_image': train / batch_size}


def run_peer(python, script, image_shape, batch_size):
    """Run a peer script as `python script H W B`; its figures, or None with a note printed."""
    try:
        done = subprocess.run([python, script, *map(str, image_shape), str(batch_size)],
                              capture_output=True, text=True, check=False)
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


def run_peers(args, project):
    """Time the peers found in the peer folder and compare each with `project`."""
    peer_dir = args.peer_dir or DEFAULT_PEER_DIR
    if not os.path.isdir(peer_dir):
        print(f'note: no peer folder {os.path.normpath(peer_dir)}, peers skipped')
        return {}
    pythons = {'keras': sys.executable, 'torch': args.torch_python}
    results = {}
    for name, script in PEERS:
        path = os.path.join(peer_dir, script)
        if not pythons[name]:
            print(f'note: {name} peer skipped (give --torch-python)')
        elif not os.path.isfile(path):
            print(f'note: no {path}, {name} peer skipped')
        else:
            peer = run_peer(pythons[name], path, args.image_shape, args.batch_size)
            if peer:
                for key in ('inference', 'train'):
                    peer[f'{key}_ratio'] = (project[f'{key}_s_per_image']
                                            / peer[f'{key}_s_per_image'])
                results[name] = peer
    return results


def print_table(results):
    """The figures as an aligned table."""
    p = results
    rows = [('forward pass', f'{p["gflop_per_image"]:.1f}', 'GFLOP/img'),
            ('inference', f'{p["inference_s_per_image"] * 1e3:.0f}', 'ms/img'),
            ('inference rate', f'{p["inference_gflops"]:.1f}', 'GFLOP/s'),
            ('training step', f'{p["train_s_per_image"]:.3f}', 's/img'),
            ('numpy matmul 4096^3', f'{p["numpy_gflops"]:.1f}', 'GFLOP/s'),
            ('inference / numpy', f'{p["inference_vs_numpy_percent"]:.0f}',
             f'% (target >= {TARGET_PERCENT} %)')]
    for name, peer in p['peers'].items():
        rows += [(f'{name} inference', f'{peer["inference_s_per_image"] * 1e3:.0f}', 'ms/img'),
                 (f'{name} training step', f'{peer["train_s_per_image"]:.3f}', 's/img'),
                 (f'project/{name} inference', f'{peer["inference_ratio"]:.2f}',
                  'x time (>1: project slower)'),
                 (f'project/{name} training', f'{peer["train_ratio"]:.2f}',
                  'x time (>1: project slower)')]
    h, w = p['image_shape']
    print(f'\nFCN-8s VGG16 {h}x{w}, batch {p["batch_size"]}, median of {p["repeats"]}: '
          f'TensorFlow {p["tensorflow"]}, numpy {p["numpy"]}, {p["cpus"]} CPUs')
    width = max(len(r[0]) for r in rows)
    for label, value, unit in rows:
        print(f'  {label:<{width}}  {value:>7}  {unit}')


def write_json(path, results):
    """Write `results` to `path` atomically."""
    with helper.atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(results, f, indent=2)


def main(argv=None):
    """Measure the project, numpy and the peers; print the table, optionally write JSON."""
    args = parse_args(argv)
    print(f'timing the project at {args.image_shape[0]}x{args.image_shape[1]}, '
          f'batch {args.batch_size} ...')
    results = {'image_shape': list(args.image_shape), 'batch_size': args.batch_size,
               'repeats': args.repeats, 'tensorflow': tf.__version__, 'numpy': np.__version__,
               'python': platform.python_version(), 'cpus': os.cpu_count()}
    results.update(measure_project(args.image_shape, args.batch_size, args.repeats))
    results['inference_gflops'] = results['gflop_per_image'] / results['inference_s_per_image']
    results['numpy_gflops'] = numpy_matmul_gflops()
    results['inference_vs_numpy_percent'] = (100 * results['inference_gflops']
                                             / results['numpy_gflops'])
    results['peers'] = run_peers(args, results)
    print_table(results)
    if args.json:
        write_json(args.json, results)
        print(f'wrote {args.json}')
    return results


if __name__ == '__main__':
    sys.exit(helper.main_guard(main))
