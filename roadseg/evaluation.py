"""Scoring a model on labelled images: per-class accuracy and IoU, pixel accuracy, mean and
frequency-weighted IoU, for two classes the KITTI road devkit's MaxF/AP figures, and the time per
image; optionally the overlays and KITTI's 8-bit road-probability PNGs."""
import csv
import io
import os
import time

import numpy as np
from tqdm import tqdm

from roadseg import bev, cli, drawing, files, inference, metrics
from roadseg.data import classes as class_files
from roadseg.data import kitti_names, layouts, matching
from roadseg.errors import UserError


def evaluate(model, samples, output_dir=None, colors=(None, drawing.OVERLAY_RGB),
             label='road', bev_evaluation=None, match=None):
    """Segment each (name, RGB image, class map) sample with `model` (inference.segment),
    score it at the label's own size and return the metrics; with a bev.Evaluation, also in
    KITTI's bird's-eye view (results['bev']). With a matching.ClassMatch, the labels are those
    of another data set's classes, scored in `match.names` as it says; else the model's own.

    With `output_dir`, writes overlays/ (drawn in `colors`) and, for two scored classes,
    probabilities/ (8-bit class-1 probability PNGs named as KITTI's `label` ground truth), and
    with a bev.Evaluation bev/ (bev.picture of each calibrated image).
    """
    match = match or matching.identity(model.info.class_names)
    confusion = metrics.ConfusionMatrix(len(match.names))
    road = metrics.RoadMetrics() if metrics.is_road_model(len(match.names)) else None
    if output_dir and not metrics.is_road_model(model.num_classes):  # which colour is which
        drawing.write_legend(os.path.join(output_dir, 'overlays', 'legend.png'),
                               model.info.class_names, colors)
    inference.segment(model, [samples[0][1]])  # warm-up, not timed
    seconds = []
    for name, image, classes in tqdm(samples, desc='Evaluating', leave=False, disable=None):
        start = time.perf_counter()
        (probabilities,) = inference.segment(model, [image])
        seconds.append(time.perf_counter() - start)
        prediction = inference.classes_of(probabilities)
        classes = match.truth[classes]
        confusion.update(classes, match.predicted[prediction])
        road_probability = match.road_probability(probabilities) if \
            road or bev_evaluation else None
        if road:
            road.update(classes, road_probability)
        warp = bev_evaluation.update(name, classes, road_probability) \
            if bev_evaluation else None
        if output_dir:
            _write_images(output_dir, name, image, prediction, colors, label, warp,
                          road_probability if road else None, classes)
    results = confusion.results()
    if road:
        results['kitti_road'] = road.results()
    if bev_evaluation:
        results['bev'] = bev_evaluation.results()
    results['ms_per_image'] = 1000 * float(np.median(seconds))
    results['images'] = len(samples)
    return results


def _write_images(output_dir, name, image, prediction, colors, label, warp, road_probability,
                  classes):
    """evaluate's pictures of one image: its overlay, its BEV picture with a `warp`, and its
    8-bit road probability when there is one."""
    stem = os.path.splitext(name)[0]
    if warp:
        files.write_png(os.path.join(output_dir, 'bev', stem + '.png'),
                        bev.picture(warp, image, road_probability, classes))
    files.write_png(os.path.join(output_dir, 'overlays', stem + '.png'),
                    drawing.overlay(image, prediction, colors))
    if road_probability is not None:
        files.write_png(os.path.join(output_dir, 'probabilities',
                                     kitti_names.probability_name(stem, label)),
                        metrics.quantize(road_probability))


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


def no_dataset(path, advice):
    """The error for a model whose fcn.json names no data set, with `advice`."""
    return UserError(f'{path}: its fcn.json does not say which data set the model learned '
                     f'("dataset"); {advice}')


def split_file(path):
    """The split.json of the run that `path` (a run folder, or an export file in the run's
    export/ folder) came from, or None outside a run."""
    folders = [path] if os.path.isdir(path) else [os.path.dirname(path) or '.']
    folders.append(os.path.dirname(os.path.abspath(folders[0])))
    found = [f for f in (os.path.join(f, 'split.json') for f in folders) if os.path.isfile(f)]
    return found[0] if found else None


def default_split(path):
    """The images to score a model on when none are asked for: its run's validation images
    (val), or every labelled image (all) when the run held none out (a final model,
    --all-labelled)."""
    found = split_file(path)
    if found and not files.read_json(found, 'use --split all', 'split').get('val'):
        return 'all'
    return 'val'


def trained_on(path, pairs):
    """One line when some of the (image, label) `pairs` scored are images the run of the model
    `path` trained on (its split.json's train), saying how many and where the held-out
    figures are; else None."""
    found = split_file(path)
    if not found:
        return None
    split = files.read_json(found, 'use --split all', 'split')
    trained = set(split.get('train', []))
    count = sum(os.path.basename(image) in trained for image, _ in pairs)
    if not count:
        return None
    elsewhere = ('score the images it held out (--split val) or cross-validate (crossval.py)'
                 if split.get('val') else 'it held none out, so see the cross-validation that '
                 'chose its recipe (crossval.py)')
    return (f'note: {count} of these {len(pairs)} images are among the {len(trained)} the model '
            f'trained on ({found}), so this figure flatters it; for what to expect on new '
            f'images, {elsewhere}')


def evaluation_data(path, data_dir, info, split):
    """The model's data set in `data_dir` and the (image, label) pairs to evaluate: the run's
    validation images or, with `seen`, the training groups' unseen images (split.json), or every
    labelled image (`all`). A model outside a run folder (a shipped model) is scored on the
    data set's own validation images for `val` (CamVid's val/)."""
    if not info.dataset:  # optional in fcn.json: predict.py and serve.py need it not
        raise no_dataset(path, 'so there are no labels to score it on; evaluate a model that '
                               'main.py or export.py wrote')
    classes = info.classes and class_files.load_class_file(info.classes)
    dataset = layouts.open_dataset(info.dataset, data_dir, info.kitti_label, classes,
                                   info.remap)
    if dataset.classes.num_classes != info.num_classes:
        raise UserError(f'{data_dir}: {dataset.classes.num_classes} classes, but the model '
                        f'predicts {info.num_classes}')
    pairs = dataset.train + (dataset.val or [])
    if split == 'all':
        return dataset, pairs
    found = split_file(path)
    if not found and split == 'val' and dataset.val:
        return dataset, dataset.val
    if not found:
        raise UserError(f'--split {split} needs a run folder holding split.json, or for val a '
                        f'data set with validation images; {path} has none: use --split all')
    names = set(files.read_json(found, 'use --split all', 'split').get(split, []))
    if not names:
        raise UserError(f'--split {split}: {found} lists no such images (only a run with '
                        f'--val-groups has unseen images of its training groups)')
    chosen = [pair for pair in pairs if os.path.basename(pair[0]) in names]
    if len(chosen) != len(names):
        raise UserError(f'{data_dir}: {len(names) - len(chosen)} of the run\'s {split} '
                        f'images are missing; is --data-dir the one it trained on?')
    return dataset, chosen


def scoring_data(path, data_dir, info, split=None, dataset=None, label=None, model=None):
    """evaluate.py's data: (data set, (image, label) pairs, matching.ClassMatch or None, the
    split scored). Without a `split`, the model's own validation images (default_split), or
    another data set's own validation images where it has some, else every labelled image.
    Without `dataset` (--dataset's layout), or with the model's own (for KITTI, and its
    `label`), the model's own data set as evaluation_data gives it, scored on its classes.
    With another, that data set in `data_dir` with its own classes (KITTI's named after
    `label`, by default the model's), matched to those of the model (`model`, as the user named
    it) by name, and of it every labelled image (`all`) or its own validation images (`val`,
    CamVid's val/): a run's split.json names images of the data set it trained on."""
    name = dataset or info.dataset
    if not name:
        raise no_dataset(path, f'give the layout of the labels to score it on with --dataset '
                               f'({", ".join(sorted(layouts.READERS))})')
    if label and name != 'kitti':
        raise UserError(f'--label {label}: it chooses KITTI\'s ground truth, and the labels '
                        f'here are {name}\'s; leave it out, or score on --dataset kitti')
    label = label or info.kitti_label
    if name == info.dataset and (name != 'kitti' or label == info.kitti_label):
        split = split or default_split(path)
        return (*evaluation_data(path, data_dir, info, split), None, split)
    data = layouts.open_dataset(name, data_dir, label)
    where = f'--dataset {name}' + (f' --label {label}' if name == 'kitti' and label != 'road'
                                   else '')
    match = matching.match(data.classes.names, info.class_names, where, model or path)
    split = split or ('val' if data.val else 'all')
    if split == 'all':
        return data, data.train + (data.val or []), match, split
    if split == 'val' and data.val:
        return data, data.val, match, split
    raise UserError(f'--split {split} with {where}: a run\'s split names images of the data '
                    f'set it trained on' + ('' if split == 'seen' else
                                            f', and {data_dir} has no validation images of '
                                            f'its own') + '; use --split all')


def confusion_csv(matrix, names):
    """A confusion matrix as CSV text: the class names as the header row and the first column,
    a row per true class, a column per predicted class, pixel counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['true \\ predicted', *names])
    writer.writerows([name, *(int(count) for count in row)] for name, row in zip(names, matrix))
    return buffer.getvalue()
