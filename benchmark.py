"""Time the FCN on this CPU: training and inference per image for each encoder and image size,
and the inference FLOP rate against numpy's float32 matmul measured in the same run. Each
network is built exactly as main.py trains it (with random weights) and fed random images and
one-hot labels:

    python benchmark.py --encoders vgg16,mobilenetv2 --image-shapes 160x576,352x480 --json b.json

With --precisions, the variants (float32, bfloat16, ...) are timed in turn within each repeat,
and with --peer-dir the peer implementations of VGG16 (Keras in float32 and mixed_bfloat16,
PyTorch with --torch-python) run in processes of their own once per repeat, in turn with them:
each peer's time over the project's is reported per repeat, with its median:

    python benchmark.py --encoders vgg16 --precisions float32,bfloat16 \
        --image-shapes 160x576,352x480 --peer-dir PEERS_DIR --json p.json

With --deploy RUN_DIR it times that trained model's deployment formats instead: the frozen
TensorFlow graph, TFLite float32, float16 and int8, and ONNX on onnxruntime (export.py's code;
ONNX when the onnx extra is installed), each frozen and converted at every --deploy-shapes size
(the network is fully convolutional; KITTI's full 375x1242 frame runs as 384x1248, the next
multiples of 32) and timed in a process of its own, for its peak resident memory: latency at
batch 1, throughput at batch 8, GFLOP/s; then int8 and onnxruntime each in alternation with the
frozen graph and float32 TFLite in one process, for ratios a drifting machine leaves standing.
The table names the CPU. With --video-frames
DIR, predict.py then segments a video made of those images with the fastest format, decoding
and encoding included, and each stage of its work is timed alone for its share; with
--video MODEL, the same for any model (a path or a shipped name):

    python benchmark.py --deploy RUN_DIR --video-frames IMAGE_DIR --json d.json
    python benchmark.py --video camvid-road --video-frames IMAGE_DIR

With --serve MODEL[,MODEL...] it load-tests serve.py on loopback instead (benchmarks/service.py):
1, 4 and 16 concurrent clients each posting --requests KITTI-sized JPEGs (of --serve-images, or
synthetic), against predict.py on the same files; throughput, p50/p99 latency, mean batch size,
errors and the server's peak memory:

    python benchmark.py --serve RUN_DIR/export/model_int8.tflite,RUN_DIR/export/savedmodel \
        --serve-images IMAGE_DIR --json s.json

With --soak MODEL it runs serve.py for --soak-seconds under the largest --clients number of
clients sending good and bad requests in turn (images, predict JSON, malformed bodies, NaN
pixels, long URLs, large headers, bodies over the limit declared and chunked, 12-megapixel
photos to serving_default), beside connections that send half a request head and idle, and a
/healthz probe: answers by request and status, 5xx, p50/p99 latency, and the targets checked
(no 5xx, resident memory after warm-up within 10 % at the end, /healthz p99 under 1 s
throughout):

    python benchmark.py --soak RUN_DIR/export/model_int8.tflite --soak-seconds 600
"""
import math
import os
import platform
import sys
import tempfile

import numpy as np

from benchmarks import video
from roadseg import cli, cpu, files, images
from roadseg.data import layouts
from roadseg.errors import UserError
from roadseg.model.entries import mobilenetv2, tiramisu

NETWORKS = ('vgg16', 'mobilenetv2', *(f'tiramisu{depth}' for depth in tiramisu.DEPTHS))


def parse_args(argv=None):
    """Options; a bad value is a UserError."""
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--encoders', default='vgg16,mobilenetv2',
                        help=f'comma-separated, of {", ".join(NETWORKS)} (tiramisu: FC-DenseNet '
                             f'at that depth) (default: %(default)s)')
    parser.add_argument('--decoder', choices=sorted(mobilenetv2.STRIDES), default='fcn8s',
                        help="mobilenetv2's decoder (default: %(default)s)")
    parser.add_argument('--image-shapes', default='160x576,352x480',
                        help='comma-separated HxW, multiples of 32 (default: %(default)s)')
    parser.add_argument('--batch-size', type=int, default=4,
                        help='images per training step and per batched inference, as the peers '
                             'use (default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs after warm-up; the median is reported '
                             '(default: %(default)s)')
    parser.add_argument('--peer-dir', help='with --precisions: folder holding the peer scripts '
                                           'peer_keras_fcn8s_vgg.py and peer_torch_fcn8s_vgg.py, '
                                           'run in turn with the variants (peers are skipped '
                                           'without it)')
    parser.add_argument('--torch-python', help='Python interpreter with torch, to run the '
                                               'PyTorch peer (skipped without it)')
    parser.add_argument('--precisions', metavar='VARIANT[,VARIANT...]',
                        help='instead: time training and inference in each variant, in turn '
                             'within each repeat: float32, bfloat16, float16, each optionally '
                             '+xla (e.g. float32,bfloat16,float32+xla); speed-ups over the first; '
                             'with --peer-dir, the peers in turn with them')
    parser.add_argument('--loader', metavar='DATASET:PATH',
                        help='instead: the training loader\'s own rate in images per second '
                             '(reading, augmenting, batching) on a data set, e.g. '
                             'camvid:data/camvid, beside what one GPU consumes')
    parser.add_argument('--loader-recipe', metavar='CONFIG.json',
                        help='with --loader: the augmentation, image size and crop of this '
                             'recipe (default: KITTI\'s defaults)')
    parser.add_argument('--against', metavar='CHECKOUT',
                        help='with --loader: also the old in-memory generator of this checkout '
                             '(5b3ce9e or before) and this pipeline on one core, in turn')
    parser.add_argument('--json', help='also write every figure to this JSON file')
    parser.add_argument('--deploy', metavar='RUN_DIR',
                        help="time this trained model's deployment formats instead")
    parser.add_argument('--deploy-shapes', default='160x576,384x1248',
                        help='sizes to freeze and convert the model at (default: %(default)s)')
    parser.add_argument('--calibration-images', type=int, default=images.CALIBRATION_IMAGES,
                        help="int8 calibration images from the run's training set "
                             "(default: %(default)s)")
    parser.add_argument('--video', metavar='MODEL',
                        help='time predict.py --video with this model (a path or a shipped '
                             'name) on a video of --video-frames instead, and each stage alone')
    parser.add_argument('--video-frames', metavar='IMAGE_DIR',
                        help='with --video, or --deploy (its fastest format at the first '
                             '--deploy-shapes size): segment a video of these images, looped to '
                             '100 frames')
    parser.add_argument('--serve', metavar='MODEL[,MODEL...]',
                        help='load-test serve.py with each of these models instead')
    parser.add_argument('--serve-images', metavar='IMAGE_DIR',
                        help='with --serve: images to send, resized to 1242x375 JPEGs '
                             '(default: synthetic scenes)')
    parser.add_argument('--soak', metavar='MODEL',
                        help='soak-test serve.py with this model instead: good and bad requests '
                             'mixed for --soak-seconds')
    parser.add_argument('--soak-seconds', type=float, default=600,
                        help='with --soak: how long (default: %(default)s)')
    parser.add_argument('--clients', default='1,4,16',
                        help='with --serve: comma-separated numbers of concurrent clients '
                             '(default: %(default)s)')
    parser.add_argument('--requests', type=int, default=200,
                        help='with --serve: requests per client (default: %(default)s)')
    parser.add_argument('--serve-seconds', type=float, default=300,
                        help='with --serve: most seconds per load level; clients stop sending '
                             'after it (default: %(default)s)')
    args = parser.parse_args(argv)
    args.encoders = [e.strip() for e in args.encoders.split(',') if e.strip()]
    unknown = sorted(set(args.encoders) - set(NETWORKS))
    if unknown or not args.encoders:
        raise UserError(f'--encoders {",".join(unknown)}: use any of {", ".join(NETWORKS)}')
    args.image_shapes, args.deploy_shapes = (cli.shapes_arg(text, flag) for text, flag in (
        (args.image_shapes, '--image-shapes'), (args.deploy_shapes, '--deploy-shapes')))
    if args.deploy is not None and not os.path.isdir(args.deploy):
        raise UserError(f'--deploy {args.deploy}: no such run folder')
    if args.video_frames is not None and not os.path.isdir(args.video_frames):
        raise UserError(f'--video-frames {args.video_frames}: folder not found')
    if args.video is not None and args.video_frames is None:
        raise UserError('--video: give --video-frames IMAGE_DIR, the frames of its video')
    try:
        args.clients = [int(n) for n in args.clients.split(',')]
    except ValueError:
        raise UserError(f'--clients {args.clients}: comma-separated numbers, e.g. 1,4,16') \
            from None
    args.serve = args.serve.split(',') if args.serve else []
    missing = [model for model in args.serve if not os.path.exists(model)]
    if missing:
        raise UserError(f'--serve {missing[0]}: no such model')
    if args.serve_images is not None and not os.path.isdir(args.serve_images):
        raise UserError(f'--serve-images {args.serve_images}: folder not found')
    if min(args.clients) < 1 or args.requests < 1 or not 0 < args.serve_seconds < math.inf \
            or not 0 < args.soak_seconds < math.inf:
        raise UserError('--clients, --requests, --serve-seconds and --soak-seconds must be '
                        'positive')
    if args.soak is not None and not os.path.exists(args.soak):
        raise UserError(f'--soak {args.soak}: no such model')
    if args.batch_size < 1 or args.repeats < 1:
        raise UserError('--batch-size and --repeats must be at least 1')
    if args.loader is not None:
        kind, _, path = args.loader.partition(':')
        if kind not in layouts.READERS or not os.path.isdir(path):
            raise UserError(f'--loader {args.loader}: give DATASET:PATH, DATASET one of '
                            f'{", ".join(sorted(layouts.READERS))}, and PATH its folder')
        args.loader = (kind, path)
    args.precisions = args.precisions.split(',') if args.precisions else []
    for variant in args.precisions:
        precision, _, xla = variant.partition('+')
        if precision not in ('float32', 'bfloat16', 'float16') or xla not in ('', 'xla'):
            raise UserError(f'--precisions {variant}: use float32, bfloat16 or float16, each '
                            f'optionally +xla')
    if args.peer_dir is not None and not os.path.isdir(args.peer_dir):
        raise UserError(f'--peer-dir {args.peer_dir}: folder not found')
    if args.peer_dir is not None and not args.precisions:
        raise UserError('--peer-dir: the peers are timed in turn with the --precisions '
                        'variants; give --precisions float32 (or float32,bfloat16)')
    if args.torch_python is not None and not os.access(args.torch_python, os.X_OK):
        raise UserError(f'--torch-python {args.torch_python}: not an executable')
    return args


def main(argv=None):
    """Measure each encoder at each size and numpy, the precisions beside the peers, or
    (--deploy) a trained model's deployment formats; print the table, optionally write JSON."""
    args = parse_args(argv)
    if args.soak:  # no TensorFlow in this process either
        from benchmarks import service
        results = {'python': platform.python_version(), 'cpus': os.cpu_count(),
                   'model': os.path.abspath(args.soak),
                   'soak': service.run_soak(args.soak, args.serve_images, max(args.clients),
                                                args.soak_seconds)}
        service.print_soak(results['soak'], args.soak)
        if args.json:
            files.write_json(args.json, results)
            print(f'wrote {args.json}')
        return results
    if args.video:  # no TensorFlow in this process for a TFLite model
        with tempfile.TemporaryDirectory() as folder:
            results = {'python': platform.python_version(), 'cpus': os.cpu_count(),
                       'video': video.measure(args.video, args.video_frames, folder)}
        video.print_video(results['video'])
        if args.json:
            files.write_json(args.json, results)
            print(f'wrote {args.json}')
        return results
    if args.serve:  # no TensorFlow in this process: the servers load the models
        from benchmarks import service
        results = {'python': platform.python_version(), 'cpus': os.cpu_count(),
                   'requests_per_client': args.requests,
                   'serve': service.run(args.serve, args.serve_images, args.clients,
                                            args.requests, args.serve_seconds)}
        service.print_serve_table(results['serve'])
        if args.json:
            files.write_json(args.json, results)
            print(f'wrote {args.json}')
        return results
    if args.loader:  # no TensorFlow needed
        from benchmarks import loader
        results = {'loader': loader.measure(*args.loader, args.batch_size, args.repeats,
                                            args.loader_recipe, args.against)}
        loader.print_loader(results['loader'])
        if args.json:
            files.write_json(args.json, results)
        return results
    if any(v.endswith('+xla') for v in args.precisions):  # XLA clusters CPU graphs only so
        os.environ.setdefault('TF_XLA_FLAGS', '--tf_xla_cpu_global_jit')
    from benchmarks import models  # loads TensorFlow (seconds): only once the options are sound
    results = {'batch_size': args.batch_size, 'repeats': args.repeats,
               'tensorflow': models.tf.__version__, 'numpy': np.__version__,
               'python': platform.python_version(), 'cpus': os.cpu_count(), 'cpu': cpu.model(),
               'numpy_gflops_runs': [models.numpy_matmul_gflops()]}
    if args.deploy:
        results['numpy_gflops'] = results['numpy_gflops_runs'][0]
        results['deploy'] = os.path.abspath(args.deploy)
        with tempfile.TemporaryDirectory() as folder:
            results['formats'] = models.measure_deploy(
                args.deploy, args.deploy_shapes, args.calibration_images, args.repeats,
                results['numpy_gflops'], folder)
            if args.video_frames:
                fastest = models.fastest(results['formats'], args.deploy_shapes[0])
                results['video'] = video.measure(fastest['path'], args.video_frames, folder)
        models.print_deploy_table(results)
        if args.video_frames:
            video.print_video(results['video'])
    elif args.precisions:
        results['precisions'] = models.measure_precision_variants(
            args.encoders, args.decoder, args.image_shapes, args.batch_size, args.repeats,
            args.precisions, args.peer_dir, args.torch_python)
        models.print_precision_table(results)
    else:
        results['measurements'] = []
        for encoder in args.encoders:
            for shape in args.image_shapes:
                print(f'timing {encoder} at {shape[0]}x{shape[1]}, batch {args.batch_size} ...')
                m = models.measure(encoder, args.decoder, shape, args.batch_size, args.repeats)
                results['measurements'].append(m)
        results['numpy_gflops_runs'].append(models.numpy_matmul_gflops())
        models.print_table(results)
    if args.json:
        files.write_json(args.json, results)
        print(f'wrote {args.json}')
    return results


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
