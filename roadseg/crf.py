"""Dense-CRF post-processing (--crf): a fully connected CRF (Krähenbühl and Koltun 2011) on a
model's softmax probabilities, the image as the bilateral kernel's guide, so that class edges
move to the image's colour edges. An optional dependency: `pip install pydensecrf2`.

The kernel widths and weights live in configs/crf.json, chosen on training images (never on
a validation split) by `python -m roadseg.crf --model RUN_DIR`, which scores a grid of them on
the run's training images and prints the best.
"""
import functools
import itertools
import json
import os
import sys
import time

import numpy as np

from tqdm import tqdm

from roadseg import cli, evaluation, files, inference, metrics
from roadseg.data import datasets
from roadseg.errors import UserError

DEFAULT_PARAMETERS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  'configs', 'crf.json')
KEYS = ('iterations', 'gaussian_sxy', 'gaussian_weight', 'bilateral_sxy', 'bilateral_srgb',
        'bilateral_weight')
# The grid `python -m roadseg.crf` searches (pixels at the image's own size; colour steps of
# 0..255), about DeepLab's choices
GRID = {'bilateral_sxy': (40, 80, 120), 'bilateral_srgb': (5, 10, 20),
        'bilateral_weight': (4, 8, 12)}


def require():
    """pydensecrf's DenseCRF2D, or one line saying what to install."""
    try:
        from pydensecrf import densecrf
    except ImportError:
        raise UserError('--crf needs pydensecrf2: pip install pydensecrf2 (it builds from '
                        'source with gcc, in about two minutes)') from None
    return densecrf.DenseCRF2D


def add_flag(parser):
    """The --crf [FILE.json] option of evaluate.py, predict.py and serve.py."""
    parser.add_argument('--crf', nargs='?', const=DEFAULT_PARAMETERS, metavar='FILE.json',
                        help='refine each prediction with a dense CRF guided by the image '
                             '(needs pydensecrf2), its kernels from FILE.json (default: '
                             'configs/crf.json)')


def refiner(path):
    """For --crf `path`: refine(image, probabilities) with its parameters, or None without
    --crf. Stops at once with one line when pydensecrf2 or the file is missing."""
    if path is None:
        return None
    require()
    return functools.partial(refine, parameters=read_parameters(path))


def read_parameters(path=DEFAULT_PARAMETERS):
    """The CRF's kernel widths and weights from a JSON file of KEYS."""
    parameters = files.read_json(path, 'give a JSON file of CRF parameters')
    missing = [key for key in KEYS if not isinstance(parameters, dict)
               or not isinstance(parameters.get(key), (int, float))]
    if missing:
        raise UserError(f'{path}: CRF parameters need numbers for {", ".join(missing or KEYS)}')
    return {key: parameters[key] for key in KEYS}


def refine(image, probabilities, parameters):
    """The CRF's class probabilities [H, W, C] for `probabilities` [H, W, C] of the RGB `image`
    [H, W, 3] (both at the image's own size): mean-field inference from the softmax as the
    unary term, with a smoothness (Gaussian) and an appearance (bilateral) kernel, Potts
    compatibilities."""
    dense_crf = require()
    height, width, classes = probabilities.shape
    crf = dense_crf(width, height, classes)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0)).transpose(2, 0, 1).reshape(classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    crf.addPairwiseGaussian(sxy=parameters['gaussian_sxy'],
                            compat=parameters['gaussian_weight'])
    crf.addPairwiseBilateral(sxy=parameters['bilateral_sxy'], srgb=parameters['bilateral_srgb'],
                             rgbim=np.array(image[..., :3], np.uint8, order='C'),
                             compat=parameters['bilateral_weight'])
    q = np.array(crf.inference(int(parameters['iterations'])), np.float32)
    return q.reshape(classes, height, width).transpose(1, 2, 0)


def search(model, samples, base):
    """Each GRID combination over `base`, scored on `samples` ((name, image, label map)):
    [(key metric, parameters)], best first, with the key metric (mean IoU; road IoU for two
    classes) without the CRF as parameters None."""
    predictions = [(inference.segment(model, [image])[0], image, label)
                   for _, image, label in tqdm(samples, desc='Segmenting', leave=False,
                                                    disable=None)]

    def score(parameters):
        confusion = metrics.ConfusionMatrix(model.num_classes)
        for probabilities, image, label in predictions:
            if parameters:
                probabilities = refine(image, probabilities, parameters)
            confusion.update(label, probabilities.argmax(-1))
        return evaluation.key_metric(confusion.results())
    results = [(score(None), None)]
    for values in tqdm(list(itertools.product(*GRID.values())), desc='CRF settings',
                       leave=False, disable=None):
        parameters = {**base, **dict(zip(GRID, values))}
        results.append((score(parameters), parameters))
    return sorted(results, key=lambda r: -r[0])


def main(argv=None):
    """Choose the CRF's parameters on a run's training images: print the grid's scores."""
    parser = cli.ArgumentParser(description=main.__doc__)
    parser.add_argument('--model', required=True, help='a run folder')
    parser.add_argument('--data-dir', required=True,
                        help='the data set folder the run trained on')
    parser.add_argument('--images', type=int, default=20,
                        help='how many of the training images, spread evenly (default: '
                             '%(default)s)')
    parser.add_argument('--output', help='write the best parameters to this JSON file')
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error('argument --images: must be at least 1')
    require()
    base = read_parameters()
    with inference.load_model(args.model) as model:
        dataset, pairs = evaluation.evaluation_data(args.model, args.data_dir, model.info,
                                                    'train')
        pairs = pairs[::max(1, len(pairs) // args.images)][:args.images]
        samples = datasets.load_samples(pairs, dataset.read_label)
        print(f'scoring {len(list(itertools.product(*GRID.values())))} CRF settings on '
              f'{len(samples)} training images of {args.model}')
        start = time.perf_counter()
        results = search(model, samples, base)
    shown = results[:5] + [r for r in results[5:] if r[1] is None]
    for iou, parameters in shown:
        print(f'{iou:.4f}: ' + (json.dumps(parameters) if parameters else 'no CRF'))
    print(f'{time.perf_counter() - start:.0f} s; the key metric is mean IoU, road IoU for two '
          f'classes')
    best = next(parameters for _, parameters in results if parameters)
    if results[0][1] is None:
        print('no CRF setting beats the model alone on these images: --crf does not help it')
    if args.output:
        files.write_json(args.output, best)
        print(f'wrote the best CRF setting to {args.output}')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
