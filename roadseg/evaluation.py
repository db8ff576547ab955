"""Scoring a model on labelled images: per-class accuracy and IoU, pixel accuracy, mean and
frequency-weighted IoU, for two classes the KITTI road devkit's MaxF/AP figures, and the time per
image; optionally the overlays and KITTI's 8-bit road-probability PNGs."""
import os
import time

import numpy as np
from tqdm import tqdm

from roadseg import bev, cli, drawing, files, inference, metrics
from roadseg.data import classes as class_files
from roadseg.data import kitti_names, layouts
from roadseg.errors import UserError


def evaluate(model, samples, output_dir=None, colors=(None, drawing.OVERLAY_RGB),
             label='road', bev_evaluation=None):
    """Segment each (name, RGB image, class map) sample with `model` (inference.segment),
    score it at the label's own size and return the metrics; with a bev.Evaluation, also in
    KITTI's bird's-eye view (results['bev']).

    With `output_dir`, writes overlays/ (drawn in `colors`) and, for two classes,
    probabilities/ (8-bit class-1 probability PNGs named as KITTI's `label` ground truth), and
    with a bev.Evaluation bev/ (bev.picture of each calibrated image).
    """
    confusion = metrics.ConfusionMatrix(model.num_classes)
    road = metrics.RoadMetrics() if metrics.is_road_model(model.num_classes) else None
    if output_dir and not road:  # many classes: which colour is which
        drawing.write_legend(os.path.join(output_dir, 'overlays', 'legend.png'),
                               model.info.class_names, colors)
    inference.segment(model, [samples[0][1]])  # warm-up, not timed
    seconds = []
    for name, image, classes in tqdm(samples, desc='Evaluating', leave=False, disable=None):
        start = time.perf_counter()
        (probabilities,) = inference.segment(model, [image])
        seconds.append(time.perf_counter() - start)
        prediction = inference.classes_of(probabilities)
        confusion.update(classes, prediction)
        if road:
            road.update(classes, probabilities[..., 1])
        warp = bev_evaluation.update(name, classes, probabilities[..., 1]) \
            if bev_evaluation else None
        if output_dir and warp:
            files.write_png(os.path.join(output_dir, 'bev', os.path.splitext(name)[0] + '.png'),
                            bev.picture(warp, image, probabilities[..., 1], classes))
        if output_dir:
            stem = os.path.splitext(name)[0]
            files.write_png(os.path.join(output_dir, 'overlays', stem + '.png'),
                            drawing.overlay(image, prediction, colors))
            if road:
                files.write_png(os.path.join(output_dir, 'probabilities',
                                             kitti_names.probability_name(stem, label)),
                                metrics.quantize(probabilities[..., 1]))
    results = confusion.results()
    if road:
        results['kitti_road'] = road.results()
    if bev_evaluation:
        results['bev'] = bev_evaluation.results()
    results['ms_per_image'] = 1000 * float(np.median(seconds))
    results['images'] = len(samples)
    return results


def key_metric(results):
    """The figure that picks the best model: road IoU for two classes, else mean IoU."""
    return results['iou'][1] if metrics.is_road_model(len(results['iou'])) else \
        results['mean_iou']


def summary_line(results):
    """The figures of one evaluation, in one line."""
    road = metrics.is_road_model(len(results['iou']))
    figures = [f'road IoU {results["iou"][1]:.4f}' if road else '',
               f'mean IoU {results["mean_iou"]:.4f}',
               f'pixel accuracy {results["pixel_accuracy"]:.4f}']
    kitti = results.get('kitti_road')
    if kitti and kitti['max_f'] is not None:
        figures += [f'MaxF {kitti["max_f"]:.4f}', f'AP {kitti["average_precision"]:.4f}']
    bev_figures = bev_summary(results)
    if bev_figures and bev_figures['max_f'] is not None:
        figures += [f'BEV MaxF {bev_figures["max_f"]:.4f}',
                    f'BEV AP {bev_figures["average_precision"]:.4f}']
    return ', '.join(f for f in figures if f)


def bev_summary(results):
    """The bird's-eye-view figures over every image: URBAN's for road, the one category's
    (UM_LANE) for lanes; None when the evaluation had no BEV."""
    categories = results.get('bev', {}).get('categories', {})
    pooled = [figures for name, figures in categories.items() if name.startswith('URBAN')]
    if pooled:
        return pooled[0]
    return next(iter(categories.values())) if len(categories) == 1 else None


def _fmt(value):
    return '   n/a' if value is None else f'{value:.4f}'


def format_table(results, class_names):
    """The metrics as a small text table."""
    lines = cli.aligned(('class', 'accuracy', 'IoU'), [
        (name, _fmt(accuracy), _fmt(iou))
        for name, accuracy, iou in zip(class_names, results['class_accuracy'], results['iou'])],
        left=1)
    lines.append(f'pixel accuracy {_fmt(results["pixel_accuracy"])}, mean class accuracy '
                 f'{_fmt(results["mean_class_accuracy"])}, mean IoU {_fmt(results["mean_iou"])}, '
                 f'frequency-weighted IoU {_fmt(results["frequency_weighted_iou"])}')
    kitti = results.get('kitti_road')
    if kitti:
        lines.append(f'KITTI road: MaxF {_fmt(kitti["max_f"])}, AP '
                     f'{_fmt(kitti["average_precision"])}; at threshold {_fmt(kitti["threshold"])}:'
                     f' precision {_fmt(kitti["precision"])}, recall {_fmt(kitti["recall"])}, '
                     f'FPR {_fmt(kitti["fpr"])}, FNR {_fmt(kitti["fnr"])}')
    if results.get('bev'):
        lines.append(bev_table(results['bev']))
    mirrored = ', each also mirrored (--flip-tta)' if results.get('flip_tta') else ''
    lines.append(f'{results["images"]} images, {results["ms_per_image"]:.1f} ms per image '
                 f'(resized to the training size{mirrored}, segmented and resized back; median '
                 f'after a warm-up)')
    return '\n'.join(lines)


def bev_table(results):
    """bev.Evaluation's figures per category, one row each, as the devkit prints them."""
    count = results['images']
    lines = [f'KITTI in bird\'s-eye view ({count} image{"s" * (count != 1)} with calibration): '
             f'the devkit\'s figures at the MaxF threshold',
             f'{"category":<12} {"MaxF":>8} {"AP":>8} {"PRE":>8} {"REC":>8} {"FPR":>8} '
             f'{"FNR":>8}']
    for name, figures in results['categories'].items():
        lines.append(f'{name:<12} ' + ' '.join(
            f'{_fmt(figures[key]):>8}' for key in ('max_f', 'average_precision', 'precision',
                                                  'recall', 'fpr', 'fnr')))
    return '\n'.join(lines)


def evaluation_data(path, data_dir, info, split):
    """The model's data set in `data_dir` and the (image, label) pairs to evaluate: the run's
    validation images or, with `seen`, the training groups' unseen images (split.json), or every
    labelled image (`all`). A model outside a run folder (a shipped model) is scored on the
    data set's own validation images for `val` (CamVid's val/)."""
    if not info.dataset:  # optional in fcn.json: predict.py and serve.py need it not
        raise UserError(f'{path}: its fcn.json does not say which data set the model learned '
                        f'("dataset"), so there are no labels to score it on; evaluate a model '
                        f'that main.py or export.py wrote')
    classes = info.classes and class_files.load_class_file(info.classes)
    dataset = layouts.open_dataset(info.dataset, data_dir, info.kitti_label, classes,
                                   info.remap)
    if dataset.classes.num_classes != info.num_classes:
        raise UserError(f'{data_dir}: {dataset.classes.num_classes} classes, but the model '
                        f'predicts {info.num_classes}')
    pairs = dataset.train + (dataset.val or [])
    if split == 'all':
        return dataset, pairs
    # A run folder holds split.json; an export file lies in the run's export/ folder.
    folders = [path] if os.path.isdir(path) else [os.path.dirname(path) or '.']
    folders.append(os.path.dirname(os.path.abspath(folders[0])))
    found = [f for f in (os.path.join(f, 'split.json') for f in folders) if os.path.isfile(f)]
    if not found and split == 'val' and dataset.val:
        return dataset, dataset.val
    if not found:
        raise UserError(f'--split {split} needs a run folder holding split.json, or for val a '
                        f'data set with validation images; {path} has none: use --split all')
    names = set(files.read_json(found[0], 'use --split all', 'split').get(split, []))
    if not names:
        raise UserError(f'--split {split}: {found[0]} lists no such images (only a run with '
                        f'--val-groups has unseen images of its training groups)')
    chosen = [pair for pair in pairs if os.path.basename(pair[0]) in names]
    if len(chosen) != len(names):
        raise UserError(f'{data_dir}: {len(names) - len(chosen)} of the run\'s {split} '
                        f'images are missing; is --data-dir the one it trained on?')
    return dataset, chosen
