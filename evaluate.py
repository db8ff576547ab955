"""Evaluate a trained model on labelled images of the data set it was trained on.

Prints per-class accuracy and IoU, pixel accuracy, mean and frequency-weighted IoU, for two
classes the KITTI road devkit's MaxF/AP figures, and the inference time per image; writes
metrics.json and, with --save-images, overlays and (two classes) 8-bit road-probability PNGs,
KITTI's submission format.

    python evaluate.py --model runs/20261121-143000 --data-dir data --split val --save-images
"""
import json
import os
import sys
import time

import numpy as np
from tqdm import tqdm

import datasets
import helper
import metrics
import predict


def load_samples(pairs, read_label):
    """(name, RGB image, class map) at the original size for each (image, label) path pair."""
    samples = []
    with tqdm(pairs, desc='Reading validation data', leave=False, disable=None) as bar:
        for image_path, label_path in bar:
            image, classes = helper.read_rgb(image_path), read_label(label_path)
            if image.shape[:2] != classes.shape:
                raise helper.UserError(f'{label_path}: size {classes.shape[1]}x'
                                       f'{classes.shape[0]} differs from its image {image_path}')
            samples.append((os.path.basename(image_path), image, classes))
    return samples


def evaluate(predict, samples, image_shape, num_classes=2, output_dir=None,
             colors=(None, helper.OVERLAY_RGB), label='road'):
    """Run `predict` (a batch of RGB images at `image_shape` -> class probabilities) on each
    sample, score it at the label's own size and return the metrics.

    With `output_dir`, writes overlays/ (drawn in `colors`) and, for two classes,
    probabilities/ (8-bit class-1 probability PNGs named as KITTI's `label` ground truth).
    """
    confusion = metrics.ConfusionMatrix(num_classes)
    road = metrics.RoadMetrics() if num_classes == 2 else None
    if output_dir:
        for sub in ('overlays', 'probabilities'):
            os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    predict(helper.resize_image(samples[0][1], image_shape)[None])  # warm-up, not timed
    seconds = []
    for name, image, classes in tqdm(samples, desc='Evaluating', leave=False, disable=None):
        start = time.perf_counter()
        probabilities = predict(helper.resize_image(image, image_shape)[None])[0]
        seconds.append(time.perf_counter() - start)
        full = helper.full_size(probabilities, classes.shape)
        prediction = full.argmax(-1)
        confusion.update(classes, prediction)
        if road:
            road.update(classes, full[..., 1])
        if output_dir:
            write_images(output_dir, name, helper.overlay(image, prediction, colors),
                         full[..., 1] if road else None, label)
    results = confusion.results()
    if road:
        results['kitti_road'] = road.results()
    results['ms_per_image'] = 1000 * float(np.median(seconds))
    results['images'] = len(samples)
    return results


def write_images(output_dir, name, overlay, road_probability=None, label='road'):
    """The overlay and the probability PNG, named as predict.probability_name says
    (KITTI's format: `um_000001` -> `um_road_000001`)."""
    import imageio.v3 as iio
    stem = os.path.splitext(name)[0]
    outputs = [(os.path.join('overlays', stem + '.png'), overlay)]
    if road_probability is not None:
        outputs.append((os.path.join('probabilities', predict.probability_name(stem, label)),
                        metrics.quantize(road_probability)))
    for relative, pixels in outputs:
        with helper.atomic_path(os.path.join(output_dir, relative)) as tmp:
            iio.imwrite(tmp, pixels, extension='.png')


def key_metric(results):
    """The figure that picks the best model: road IoU for two classes, else mean IoU."""
    return results['iou'][1] if len(results['iou']) == 2 else results['mean_iou']


def _fmt(value):
    return '   n/a' if value is None else f'{value:.4f}'


def format_table(results, class_names):
    """The metrics as a small text table."""
    width = max(12, *(len(name) for name in class_names))
    lines = [f'{"class":<{width}} {"accuracy":>8} {"IoU":>8}']
    for name, accuracy, iou in zip(class_names, results['class_accuracy'], results['iou']):
        lines.append(f'{name:<{width}} {_fmt(accuracy):>8} {_fmt(iou):>8}')
    lines.append(f'pixel accuracy {_fmt(results["pixel_accuracy"])}, mean class accuracy '
                 f'{_fmt(results["mean_class_accuracy"])}, mean IoU {_fmt(results["mean_iou"])}, '
                 f'frequency-weighted IoU {_fmt(results["frequency_weighted_iou"])}')
    kitti = results.get('kitti_road')
    if kitti:
        lines.append(f'KITTI road: MaxF {_fmt(kitti["max_f"])}, AP '
                     f'{_fmt(kitti["average_precision"])}; at threshold {_fmt(kitti["threshold"])}:'
                     f' precision {_fmt(kitti["precision"])}, recall {_fmt(kitti["recall"])}, '
                     f'FPR {_fmt(kitti["fpr"])}, FNR {_fmt(kitti["fnr"])}')
    mirrored = ', each also mirrored (--flip-tta)' if results.get('flip_tta') else ''
    lines.append(f'{results["images"]} images, {results["ms_per_image"]:.1f} ms per image '
                 f'(inference at the training size{mirrored}, median after a warm-up)')
    return '\n'.join(lines)


def default_output_dir(model, split, flip_tta=False):
    """MODEL/eval-SPLIT for a model folder, MODEL-without-extension-eval-SPLIT for a file;
    with a -flip suffix for --flip-tta, so neither evaluation replaces the other."""
    name = f'eval-{split}' + ('-flip' if flip_tta else '')
    if os.path.isdir(model):
        return os.path.join(model, name)
    return f'{os.path.splitext(model)[0]}-{name}'


def evaluation_data(path, data_dir, info, split):
    """The model's data set in `data_dir` and the (image, label) pairs to evaluate: the run's
    validation list (split.json) or every labelled image."""
    dataset = datasets.open_dataset(info['dataset'], data_dir, info['label'], info['classes'],
                                    info['remap'])
    if dataset.classes.num_classes != info['num_classes']:
        raise helper.UserError(f'{data_dir}: {dataset.classes.num_classes} classes, but the model '
                               f'predicts {info["num_classes"]}')
    pairs = dataset.train + (dataset.val or [])
    if split == 'all':
        return dataset, pairs
    # A run folder holds split.json; an export file lies in the run's export/ folder.
    folders = [path] if os.path.isdir(path) else [os.path.dirname(path) or '.']
    folders.append(os.path.dirname(os.path.abspath(folders[0])))
    found = [f for f in (os.path.join(f, 'split.json') for f in folders) if os.path.isfile(f)]
    try:
        with open(found[0]) as f:
            names = set(json.load(f)['val'])
    except (IndexError, OSError, ValueError, KeyError):
        raise helper.UserError(f'--split val needs a run folder holding split.json; {path} has '
                               f'none: use --split all') from None
    chosen = [pair for pair in pairs if os.path.basename(pair[0]) in names]
    if len(chosen) != len(names):
        raise helper.UserError(f'{data_dir}: {len(names) - len(chosen)} of the run\'s validation '
                               f'images are missing; is --data-dir the one it trained on?')
    return dataset, chosen


def main(argv=None):
    parser = helper.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True,
                        help='a run folder, a SavedModel folder, a frozen graph .pb or a .tflite')
    parser.add_argument('--data-dir', required=True,
                        help='the data set folder, in the layout the model was trained on')
    parser.add_argument('--split', choices=('val', 'all'), default='val',
                        help="the run's validation images, or every labelled image")
    parser.add_argument('--output-dir', help='where metrics.json (and images) go '
                                             '(default: MODEL/eval-SPLIT, MODEL-eval-SPLIT '
                                             'beside a model file)')
    parser.add_argument('--save-images', action='store_true',
                        help='also write overlays and road-probability PNGs')
    parser.add_argument('--flip-tta', action='store_true',
                        help='average each prediction with that of the mirrored image '
                             '(test-time augmentation, twice the inference time)')
    args = parser.parse_args(argv)
    with predict.load_model(args.model, flip=args.flip_tta) as model:
        info = model.info
        dataset, pairs = evaluation_data(args.model, args.data_dir, info, args.split)
        output_dir = args.output_dir or default_output_dir(args.model, args.split, args.flip_tta)
        colors = helper.overlay_colors(dataset.classes.colors)
        results = evaluate(model, load_samples(pairs, dataset.read_label), info['image_shape'],
                           info['num_classes'], output_dir if args.save_images else None, colors,
                           info['label'])
    results.update(model=os.path.abspath(args.model), split=args.split, flip_tta=args.flip_tta,
                   classes=dataset.classes.names)
    print(format_table(results, dataset.classes.names))
    helper.write_json(os.path.join(output_dir, 'metrics.json'), results)
    print(f'metrics written to {os.path.join(output_dir, "metrics.json")}')


if __name__ == '__main__':
    sys.exit(helper.main_guard(main))
