"""benchmark.py --loader: the training input's own rate, in images per second, against what one
GPU consumes in training, so a user sees whether the input keeps a GPU fed; with --against, the
same against the old in-memory generator of another checkout (5b3ce9e and before), in turn, and
this pipeline on 1 and on all cores (taskset).

Each measurement runs in a fresh process (`python -m benchmarks.loader SOURCE ...`, importing
the project from SOURCE), reads one epoch untimed (the old generator reads every pair before it
starts, the pipeline fills its cache), then times `epochs` epochs of batches in the form the
trainer takes them: the old generator's float32 images and one-hot labels, fed; the pipeline's
uint8 batches from its iterator, which the graph casts and one-hot encodes itself.

The GPU figures are estimates, not measurements (no GPU here): the training FLOPs per image
(three times the forward pass, which benchmark.py counts) over a rate an A100 sustains in
mixed precision: about 100 TFLOP/s for VGG16's large convolutions (a third of its bf16 peak),
about 20 TFLOP/s for MobileNetV2, whose depthwise convolutions bind on memory.
"""
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (encoder, image shape): (training GFLOP per image, sustained TFLOP/s on one A100)
GPU_ESTIMATES = {('VGG16 FCN-8s', (160, 576)): (234, 100),
                 ('MobileNetV2 FCN-8s', (352, 480)): (12, 20)}
KITTI_DEFAULT = 'flip=0.5,scale=0.25,brightness=0.1,contrast=0.2,saturation=0.2'


def recipe_options(recipe):
    """(augment text, image shape text or None, train crop text or None, remap) of a --config
    recipe file, or KITTI's defaults without one."""
    if not recipe:
        return KITTI_DEFAULT, None, None, None
    with open(recipe) as f:
        config = json.load(f)
    crop = config.get('train_crop')
    return (config.get('augment', KITTI_DEFAULT), config.get('image_shape'),
            None if crop in (None, 'none') else crop, config.get('remap'))


def one_run(source, kind, path, batch_size, epochs, recipe):
    """Images per second of `epochs` timed epochs of the training input of the project in
    `source`, after one untimed epoch: a dict, printed as JSON by the __main__ block."""
    sys.path.insert(0, source)
    from roadseg.data import layouts
    from roadseg.data.transforms import Augment
    augment, shape, crop, remap = recipe_options(recipe)
    dataset = layouts.open_dataset(kind, path, 'road', None, remap)
    shape = tuple(int(v) for v in shape.split('x')) if shape else \
        layouts.default_image_shape(kind, path)
    crop = tuple(int(v) for v in crop.split('x')) if crop else None
    pairs = dataset.train + (dataset.val or [])
    args = (pairs, shape, dataset.read_label, dataset.classes.num_classes, Augment(augment, crop))
    try:
        from roadseg.data.pipeline import TrainingData
    except ImportError:  # an old checkout: the in-memory generator
        from roadseg.data.batches import BatchGenerator
        started = time.perf_counter()
        batches = BatchGenerator(*args, seed=0)
        setup = time.perf_counter() - started

        def epoch():
            return sum(len(images) for images, _ in batches(batch_size))
        kind_of = f'generator ({batches.workers} threads)'
    else:
        from roadseg.model.ops import tf1
        started = time.perf_counter()
        data = TrainingData(*args, seed=0)
        pipeline = data.bind(batch_size)
        sess = tf1.Session()
        setup = time.perf_counter() - started

        def epoch():
            pipeline.start_epoch(sess)
            return sum(len(sess.run(pipeline.labels)) for _ in range(data.steps(batch_size)))
        kind_of = 'tf.data pipeline' + (' (cached)' if data.cached else '')
    started = time.perf_counter()
    epoch()
    first = time.perf_counter() - started
    started, count = time.perf_counter(), 0
    for _ in range(epochs):
        count += epoch()
    return {'input': kind_of, 'images': len(pairs), 'image_shape': list(shape),
            'crop': list(crop) if crop else None, 'augment': augment,
            'setup_s': setup, 'first_epoch_s': first,
            'images_per_second': count / (time.perf_counter() - started),
            'cpus': len(os.sched_getaffinity(0))}


def measure_in_process(source, kind, path, batch_size, epochs, recipe, cores=None):
    """one_run in a fresh Python on `cores` (a taskset CPU list, or all)."""
    command = [sys.executable, '-m', 'benchmarks.loader', source, kind, path, str(batch_size),
               str(epochs), recipe or '']
    if cores:
        command = ['taskset', '-c', cores] + command
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, 'PYTHONPATH': source})
    if done.returncode:
        raise RuntimeError(f'{" ".join(command)} failed: {done.stderr.strip()[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(kind, path, batch_size, repeats, recipe=None, against=None, epochs=2):
    """The rates of this checkout's pipeline on all cores, and with `against` (another
    checkout) the old input's and this pipeline's on one core, each variant once per repeat
    in turn, so drift in the machine's speed falls on all alike."""
    from roadseg import cpu  # here, not at the top: a measuring process imports another checkout
    variants = [('new', ROOT, None)]
    if against:
        variants = [('old', os.path.abspath(against), None)] + variants + \
            [('new, 1 core', ROOT, '0')]
    runs = {name: [] for name, _, _ in variants}
    for _ in range(repeats):
        for name, source, cores in variants:
            runs[name].append(measure_in_process(source, kind, path, batch_size, epochs,
                                                 recipe, cores))
    result = {'dataset': kind, 'path': os.path.relpath(path), 'batch_size': batch_size,
              'recipe': recipe, 'cpu': cpu.model(), 'variants': {}}
    for name, measured in runs.items():
        rates = [m['images_per_second'] for m in measured]
        result['variants'][name] = {**measured[0], 'runs': rates,
                                    'images_per_second': statistics.median(rates)}
    return result


def print_loader(result):
    variants = result['variants']
    new = variants['new']
    print(f'\nloader: {result["dataset"]} ({new["images"]} images) at '
          '{}x{}'.format(*new['image_shape'])
          + (' (crops {}x{})'.format(*new['crop']) if new['crop'] else '')
          + f', batch {result["batch_size"]}, augment {new["augment"]}, on {result["cpu"]}:')
    for name, v in variants.items():
        print(f'  {name:12s} {v["input"]}, {v["cpus"]} CPU(s): {v["images_per_second"]:.0f} '
              f'images/s (median of ' + ', '.join(f'{r:.0f}' for r in v['runs'])
              + f'; set-up {v["setup_s"]:.1f} s, first epoch {v["first_epoch_s"]:.1f} s)')
    if 'old' in variants:
        old, one = variants['old']['images_per_second'], variants['new, 1 core']
        print(f'  new / old: {new["images_per_second"] / old:.2f}x; new on {new["cpus"]} '
              f'cores / on 1: {new["images_per_second"] / one["images_per_second"]:.2f}x')
    for (network, shape), (gflop, tflops) in GPU_ESTIMATES.items():
        consumed = tflops * 1e3 / gflop
        print(f'  one A100 training {network} at {shape[0]}x{shape[1]} consumes about '
              f'{consumed:.0f} images/s ({gflop} GFLOP per image at {tflops} TFLOP/s, an '
              f'estimate): the pipeline here covers '
              f'{100 * new["images_per_second"] / consumed:.0f} %, so about '
              f'{consumed / (new["images_per_second"] / new["cpus"]):.0f} such cores feed it')


if __name__ == '__main__':
    source, kind, path, batch, epochs, recipe = sys.argv[1:7]
    print(json.dumps(one_run(source, kind, path, int(batch), int(epochs), recipe or None)))
