"""benchmark.py --loader: the training loader's own rate, in images per second, against what
one GPU consumes in training, so a user sees whether the loader keeps a GPU fed.

The GPU figures are estimates, not measurements (no GPU here): the training FLOPs per image
(three times the forward pass, which benchmark.py counts) over a rate an A100 sustains in
mixed precision: about 100 TFLOP/s for VGG16's large convolutions (a third of its bf16 peak),
about 20 TFLOP/s for MobileNetV2, whose depthwise convolutions bind on memory.
"""
import os
import statistics
import time

from roadseg.data import datasets
from roadseg.data.batches import BatchGenerator
from roadseg.data.transforms import DEFAULTS, Augment

# (encoder, image shape): (training GFLOP per image, sustained TFLOP/s on one A100)
GPU_ESTIMATES = {('VGG16 FCN-8s', (160, 576)): (234, 100),
                 ('MobileNetV2 FCN-8s', (352, 480)): (12, 20)}


def measure(kind, path, batch_size, repeats):
    """Images per second of BatchGenerator epochs over the data set (after reading it once,
    untimed, as main.py does before training), median over `repeats` epochs."""
    dataset = datasets.open_dataset(kind, path, 'road', None, None)
    shape = datasets.default_image_shape(kind, path)
    batches = BatchGenerator(dataset.train, shape, dataset.read_label,
                             dataset.classes.num_classes, Augment(DEFAULTS), seed=0)
    rates = []
    for _ in range(repeats):
        start, count = time.perf_counter(), 0
        for images, _ in batches(batch_size):
            count += len(images)
        rates.append(count / (time.perf_counter() - start))
    return {'dataset': kind, 'path': os.path.abspath(path), 'image_shape': list(shape),
            'images': len(batches), 'batch_size': batch_size, 'threads': batches.workers,
            'images_per_second': statistics.median(rates), 'runs': rates,
            'cpus': os.cpu_count()}


def print_loader(result):
    print(f'\nloader: {result["dataset"]} ({result["images"]} images) at '
          '{}x{}'.format(*result['image_shape'])
          + f', batch {result["batch_size"]}, default augmentation, {result["threads"]} threads '
          f'on {result["cpus"]} CPUs: {result["images_per_second"]:.0f} images/s (median of '
          f'{len(result["runs"])} epochs: '
          + ', '.join(f'{r:.0f}' for r in result['runs']) + ')')
    for (network, shape), (gflop, tflops) in GPU_ESTIMATES.items():
        consumed = tflops * 1e3 / gflop
        print(f'  one A100 training {network} at {shape[0]}x{shape[1]} consumes about '
              f'{consumed:.0f} images/s ({gflop} GFLOP per image at {tflops} TFLOP/s, an '
              f'estimate): the loader covers {100 * result["images_per_second"] / consumed:.0f} %')
