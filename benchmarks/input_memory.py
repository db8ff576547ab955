"""Memory does not grow with the data set: a synthetic set of 1024x2048 images (Cityscapes' size)
trains its first steps through the tf.data pipeline, with 50 images and with 5,000, each in a
fresh process; the peak resident memory of each is printed, and their difference.

    python benchmarks/input_memory.py [--images 50,5000] [--steps 20] [--folder DIR]

The set is a few distinct PNG pairs, hard-linked under every name (the files are read, decoded
and resized one by one whatever their bytes; the links keep the set's disk use small). The
network is MobileNetV2 FCN-8s at alpha 0.35 from scratch at 256x512, batch 2, default
augmentation, --cache auto: it keeps the 50 decoded pairs (26 MB at 256x512) and not the 5,000
(2.6 GB, over its 1 GiB), which stream from the files.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTINCT = 4  # distinct image pairs, linked under every name
SIZE = (1024, 2048)
CLASSES = {'encoding': 'index', 'classes': [{'name': 'other', 'color': [0, 0, 0]},
                                             {'name': 'road', 'color': [128, 64, 128]}],
           'void': {'value': 255}}


def make_set(folder, count):
    """A folder data set (images/, masks/, classes.json) of `count` 1024x2048 pairs."""
    from PIL import Image
    os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
    os.makedirs(os.path.join(folder, 'masks'), exist_ok=True)
    with open(os.path.join(folder, 'classes.json'), 'w') as f:
        json.dump(CLASSES, f)
    rng = np.random.default_rng(0)
    rows = np.arange(SIZE[0])[:, None]
    for i in range(DISTINCT):
        horizon = SIZE[0] // 2 + 40 * i
        image = np.broadcast_to((rows * 200 // SIZE[0]).astype(np.uint8)[..., None],
                                (*SIZE, 3)).copy()
        image[..., i % 3] += rng.integers(0, 40, SIZE, dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f'source{i}.png'), compress_level=1)
        mask = np.broadcast_to((rows > horizon).astype(np.uint8), SIZE)
        Image.fromarray(np.ascontiguousarray(mask)).save(os.path.join(folder, f'mask{i}.png'))
    for n in range(count):
        for kind, sub, ext in (('source', 'images', 'png'), ('mask', 'masks', 'png')):
            os.link(os.path.join(folder, f'{kind}{n % DISTINCT}.{ext}'),
                    os.path.join(folder, sub, f'frame{n:05d}.{ext}'))


def train_steps(folder, steps):
    """Train `steps` steps on the folder data set; the peak resident memory in MB (a dict)."""
    sys.path.insert(0, ROOT)
    from roadseg.data import layouts
    from roadseg.data.pipeline import TrainingData
    from roadseg.data.transforms import Augment
    from roadseg.model.config import NetworkConfig
    from roadseg.model.ops import tf1
    from roadseg.training import graph
    dataset = layouts.open_dataset('folder', folder)
    data = TrainingData(dataset.train, (256, 512), dataset.read_label, 2, Augment(), seed=0)
    with tf1.Graph().as_default(), tf1.Session() as sess:
        pipeline = data.bind(2)
        built = graph.build(sess, NetworkConfig(encoder='mobilenetv2', decoder='fcn8s',
                                                alpha=0.35, encoder_weights='none'), 2,
                            batch=(pipeline.images, pipeline.labels))
        built.net.initialise()
        pipeline.start_epoch(sess)
        for _ in range(steps):
            pipeline.run(sess, built.train_op, {built.net.keep_prob: 1.0,
                                                built.learning_rate: 1e-3})
    return {'images': len(data), 'cached': data.cached, 'steps': steps,
            'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--images', default='50,5000')
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--folder', help='where the sets go (default: a temporary folder)')
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.images.split(',')]
    results = []
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for count in counts:
            folder = os.path.join(tmp, str(count))
            make_set(folder, count)
            done = subprocess.run([sys.executable, __file__, '--child', folder,
                                   str(args.steps)], capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f'{count} images of {SIZE[0]}x{SIZE[1]}: {results[-1]["steps"]} steps, peak '
                  f'resident memory {results[-1]["peak_rss_mb"]:.0f} MB'
                  + (' (cached)' if results[-1]['cached'] else ''), flush=True)
    if len(results) > 1:
        print(f'difference: {results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"]:+.0f} MB '
              f'(target: within 1 GB)')
    return results


if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']:
        print(json.dumps(train_steps(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
