"""Does a change of the code leave training as it was? Train each recipe in configs/ for two
epochs on small data, at a small size, in this checkout and in another (`--against`), and
compare the two runs' last checkpoints variable by variable, bit for bit.

    python -m benchmarks.same_weights --against ../old-checkout \\
        --data camvid:../shared/data/camvid --data cityscapes:PATH

A recipe whose data set is not given is skipped. Each run is `python main.py --config RECIPE`
in its checkout, with the data, two epochs, a 64x96 size and 32x64 crops (any recipe's own
are larger than small data), and no cross-validation record. A run repeats exactly under the
same seed, machine and TensorFlow build, so any difference is the code's.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['--epochs', '2', '--image-shape', '64x96', '--train-crop', '32x64', '--crossval', '']


def train(checkout, recipe, data_dir, runs_dir):
    """Train `recipe` (a path relative to a checkout) in `checkout`; its run folder."""
    command = [sys.executable, 'main.py', '--config', recipe, '--data-dir', data_dir,
               '--runs-dir', runs_dir, *SMALL]
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f'{checkout}: {" ".join(command)} failed:\n{done.stderr[-2000:]}')
    return max(glob.glob(os.path.join(runs_dir, '2*')))


def variables(run_dir):
    """{name: array} of the run's newest checkpoint."""
    import tensorflow as tf
    index = max(glob.glob(os.path.join(run_dir, 'checkpoints', 'epoch-*', '*.index')))
    reader = tf.train.load_checkpoint(index[:-len('.index')])
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def compare(old, new):
    """(variables compared, the names that differ or exist on one side only)."""
    differ = sorted(set(old) ^ set(new))
    differ += [name for name in sorted(set(old) & set(new))
               if old[name].dtype.kind != 'O' and not np.array_equal(old[name], new[name])]
    return len(set(old) & set(new)), differ


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--against', required=True, help='the other checkout')
    parser.add_argument('--data', action='append', default=[], metavar='DATASET:PATH',
                        help='the data set of the recipes of that layout')
    args = parser.parse_args(argv)
    data = dict(item.split(':', 1) for item in args.data)
    results = {}
    for recipe in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.json'))):
        name = os.path.relpath(recipe, ROOT)
        dataset = json.loads(open(recipe).read()).get('dataset', 'kitti')
        if dataset not in data:
            print(f'{name}: skipped (no --data {dataset}:PATH)')
            continue
        with tempfile.TemporaryDirectory() as runs:
            runs_of = [train(checkout, name, os.path.abspath(data[dataset]),
                             os.path.join(runs, str(i)))
                       for i, checkout in enumerate((args.against, ROOT))]
            count, differ = compare(*map(variables, runs_of))
        results[name] = differ
        print(f'{name}: {count} variables, '
              + ('every one the same, bit for bit' if not differ else
                 f'{len(differ)} differ: {", ".join(differ[:5])}'))
    return 1 if any(results.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
