"""Time the FCN on this CPU: training and inference per image for each encoder and image size,
the inference FLOP rate against numpy's float32 matmul measured in the same run, and, for VGG16,
the peer implementations (Keras, PyTorch) in ../shared/bench run one after the other.

Each network is built exactly as main.py trains it (main.build_network with random weights,
main.optimize, a default tf1.Session) and fed random images and one-hot labels:

    python benchmark.py --encoders vgg16,mobilenetv2 --image-shapes 160x576,352x480 --json b.json
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

tf, tf1 = fcn.tf, fcn.tf1

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PEER_DIR = os.path.join(HERE, '..', 'shared', 'bench')
PEERS = (('keras', 'peer_keras_fcn8s_vgg.py'), ('torch', 'peer_torch_fcn8s_vgg.py'))
PEER_RESULT = re.compile(r'inference ([0-9.]+) s/img.*train ([0-9.]+) s/img')


# Targets from the issues, printed beside the figures (not asserted anywhere).
TARGETS = {('vgg16', 'inference_vs_numpy_percent'): '>= 80 % of numpy',
           ('mobilenetv2', 'train_s_per_image', (352, 480)): '<= 0.18 s',
           ('mobilenetv2', 'inference_ms_batch1', (352, 480)): '< 34 ms',
           ('mobilenetv2', 'inference_ms_batch1', (160, 576)): '< 20 ms'}


def parse_args(argv=None):
    """Options; a bad value is a helper.UserError."""
    parser = helper.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--encoders', default='vgg16,mobilenetv2',
                        help='comma-separated, of vgg16 and mobilenetv2 (default: %(default)s)')
    parser.add_argument('--decoder', choices=sorted(fcn.mobilenet.DECODERS), default='fcn8s',
                        help="mobilenetv2's decoder (default: %(default)s)")
    parser.add_argument('--image-shapes', default='160x576,352x480',
                        help='comma-separated HxW, multiples of 32 (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=4,
                        help='images per training step and per batched inference, as the peers '
                             'use (default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs after warm-up; the median is reported '
                             '(default: %(default)s)')
    parser.add_argument('--peer-dir', help='folder holding the peer scripts '
                                           '(default: ../shared/bench beside this file)')
    parser.add_argument('--torch-python', help='Python interpreter with torch, to run the '
                                               'PyTorch peer (skipped without it)')
    parser.add_argument('--json', help='also write every figure to this JSON file')
    args = parser.parse_args(argv)
    args.encoders = [e.strip() for e in args.encoders.split(',') if e.strip()]
    unknown = sorted(set(args.encoders) - {'vgg16', 'mobilenetv2'})
    if unknown or not args.encoders:
        raise helper.UserError(f'--encoders {",".join(unknown)}: use vgg16 and/or mobilenetv2')
    try:
        args.image_shapes = [fcn.image_shape_arg(s.strip()) for s in args.image_shapes.split(',')]
    except argparse.ArgumentTypeError as e:
        raise helper.UserError(f'--image-shapes {e}') from None
    if args.batch_size < 1 or args.repeats < 1:
        raise helper.UserError('--batch-size and --repeats must be at least 1')
    if args.peer_dir is not None and not os.path.isdir(args.peer_dir):
        raise helper.UserError(f'--peer-dir {args.peer_dir}: folder not found')
    if args.torch_python is not None and not os.access(args.torch_python, os.X_OK):
        raise helper.UserError(f'--torch-python {args.torch_python}: not an executable')
    return args


def build_fcn(encoder, decoder, image_shape):
    """The training graph of `encoder` for a [any batch, H, W, 3] input, in a new graph and
    session with every variable initialised.

    :return: (sess, net: main.Network, label placeholder, learning-rate placeholder, train_op)
    """
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        sess = tf1.Session(graph=graph)
        options = argparse.Namespace(encoder=encoder, decoder=decoder, alpha=1.0,
                                     encoder_weights='none', weight_decay=1e-3, data_dir='.')
        net = fcn.build_network(sess, options, fcn.NUM_CLASSES, (None, *image_shape))
        label = tf1.placeholder(tf.float32, [None, *image_shape, fcn.NUM_CLASSES], 'label')
        learning_rate = tf1.placeholder(tf.float32, [], 'learning_rate')
        _, train_op, _ = fcn.optimize(net.train_output, label, learning_rate, fcn.NUM_CLASSES)
        net.initialise()
    return sess, net, label, learning_rate, train_op


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


def measure(encoder, decoder, image_shape, batch_size, repeats):
    """Inference time per image at batch 1 and at `batch_size`, training time per image at
    `batch_size`, and the forward FLOPs of one network."""
    sess, net, label, learning_rate, train_op = build_fcn(encoder, decoder, image_shape)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, *image_shape, 3)).astype(np.float32)
    labels = np.eye(fcn.NUM_CLASSES, dtype=np.float32)[
        rng.integers(0, fcn.NUM_CLASSES, (batch_size, *image_shape))]

    def infer(batch):
        return sess.run(net.output, {net.input_image: batch, net.keep_prob: 1.0})
    train_feed = {net.input_image: images, label: labels, net.keep_prob: 0.5,
                  learning_rate: 1e-4}
    with sess:
        single = time_call(lambda: infer(images[:1]), repeats)
        batched = time_call(lambda: infer(images), repeats) / batch_size
        train = time_call(lambda: sess.run(train_op, train_feed), repeats) / batch_size
    gflop = count_flops(net.output) / 1e9
    return {'encoder': encoder, 'decoder': decoder if encoder == 'mobilenetv2' else 'fcn8s',
            'image_shape': list(image_shape), 'gflop_per_image': gflop,
            'inference_ms_batch1': 1e3 * single, 'inference_ms_per_image': 1e3 * batched,
            'inference_gflops': gflop / batched, 'train_s_per_image': train}


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


def run_peers(args, measurement):
    """Time the peers found in the peer folder at the size of a VGG16 `measurement` and compare
    each with it (ratios of time per image: above 1, the project is slower)."""
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
            peer = run_peer(pythons[name], path, measurement['image_shape'], args.batch_size)
            if peer:
                peer['inference_ratio'] = (measurement['inference_ms_per_image'] / 1e3
                                           / peer['inference_s_per_image'])
                peer['train_ratio'] = (measurement['train_s_per_image']
                                       / peer['train_s_per_image'])
                results[name] = peer
    return results


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
          f'{results["numpy_gflops"]:.1f} GFLOP/s')
    header = ('network', 'HxW', 'GFLOP', 'infer b1 ms', 'infer ms', 'GFLOP/s', '% numpy',
              'train s')
    rows = []
    for m in results['measurements']:
        name = m['encoder'] if m['encoder'] == 'vgg16' else f'{m["encoder"]}-{m["decoder"]}'
        size = '{}x{}'.format(*m['image_shape'])
        rows.append((name, size, f'{m["gflop_per_image"]:.1f}', f'{m["inference_ms_batch1"]:.1f}',
                     f'{m["inference_ms_per_image"]:.1f}', f'{m["inference_gflops"]:.1f}',
                     f'{m["inference_vs_numpy_percent"]:.0f}', f'{m["train_s_per_image"]:.3f}'))
        for peer_name, peer in m.get('peers', {}).items():
            rows.append((f'{peer_name} peer', size, '', '',
                         f'{peer["inference_s_per_image"] * 1e3:.1f}', '', '',
                         f'{peer["train_s_per_image"]:.3f}'))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print('  ' + '  '.join(f'{v:<{w}}' if i < 2 else f'{v:>{w}}'
                               for i, (v, w) in enumerate(zip(row, widths))))
    for m in results['measurements']:
        size = '{}x{}'.format(*m['image_shape'])
        for peer_name, peer in m.get('peers', {}).items():
            print(f'  project/{peer_name} at {size}: inference {peer["inference_ratio"]:.2f}x, '
                  f'training {peer["train_ratio"]:.2f}x the time (above 1: project slower)')
        for key in ('inference_vs_numpy_percent', 'inference_ms_batch1', 'train_s_per_image'):
            if target(m, key):
                print(f'  target {m["encoder"]} {size} {key}: {target(m, key)}; measured '
                      f'{m[key]:.3g}')


def write_json(path, results):
    """Write `results` to `path` atomically."""
    with helper.atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(results, f, indent=2)


def main(argv=None):
    """Measure each encoder at each size, numpy and the peers; print the table, optionally
    write JSON."""
    args = parse_args(argv)
    results = {'batch_size': args.batch_size, 'repeats': args.repeats,
               'tensorflow': tf.__version__, 'numpy': np.__version__,
               'python': platform.python_version(), 'cpus': os.cpu_count(),
               'numpy_gflops': numpy_matmul_gflops(), 'measurements': []}
    for encoder in args.encoders:
        for shape in args.image_shapes:
            print(f'timing {encoder} at {shape[0]}x{shape[1]}, batch {args.batch_size} ...')
            m = measure(encoder, args.decoder, shape, args.batch_size, args.repeats)
            m['inference_vs_numpy_percent'] = 100 * m['inference_gflops'] / results['numpy_gflops']
            if encoder == 'vgg16':
                m['peers'] = run_peers(args, m)
            results['measurements'].append(m)
    print_table(results)
    if args.json:
        write_json(args.json, results)
        print(f'wrote {args.json}')
    return results


if __name__ == '__main__':
    sys.exit(helper.main_guard(main))
