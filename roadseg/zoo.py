"""The models that come with the project, in the repository's models/ folder: their names for
--model NAME, the default one, and their model card (roadseg/shipped/README.md).

Each shipped model is a folder models/NAME/ holding an int8 TFLite file with its fcn.json and
manifest.json (export.py writes them) and card.json, what shipped/README.md says of it. They are
rebuilt from a run with `python export.py --model RUN --ship NAME`.
"""
import os
import re
import time

import numpy as np

from roadseg import cli, cpu, evaluation, files, metrics
from roadseg.data import reading
from roadseg.errors import UserError

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shipped')
FILE = 'model_int8.tflite'
CARD = 'card.json'
# The data's terms, which a model trained on them carries
LICENCES = {'camvid': 'CamVid (Brostow et al. 2009): research and non-commercial use; a model '
                      'trained on it carries these terms',
            'kitti': 'KITTI (Geiger et al.): CC BY-NC-SA 3.0, non-commercial; a model trained on '
                     'it carries these terms'}
# name: (what it segments, the recipe it is trained by)
SHIPPED = {'camvid-road': ('road against the rest, CamVid', 'configs/camvid_road_mobilenetv2.json'),
           'camvid11': ("CamVid's 11 street-scene classes", 'configs/camvid11_mobilenetv2.json')}
DEFAULT = 'camvid-road'


def path(name):
    """The model file of the shipped model `name`."""
    return os.path.join(DIR, name, FILE)


def resolve(model):
    """The path --model `model` names: a shipped model's file for its name (unless a file or
    folder of that name exists here), else `model` as it is. None: the default model."""
    model = DEFAULT if model is None else model
    if model not in SHIPPED or os.path.exists(model):
        return model
    found = path(model)
    if not os.path.isfile(found):
        raise UserError(f'--model {model}: the shipped model {found} is missing; it comes with '
                        f'the package (reinstall it), or rebuild it from a run of '
                        f'{SHIPPED[model][1]} with python export.py --model RUN --ship {model}')
    return found


def shipped_name(model, resolved):
    """The shipped model's name when --model `model` resolved to one (None: the default), else
    None (a path, or a local file or folder of a shipped model's name)."""
    if resolved != model and (model is None or model in SHIPPED):
        return model or DEFAULT
    return None


def describe(model, resolved):
    """One line naming the model a command uses: the shipped model's name and file, or the
    path given (its line breaks escaped)."""
    name = shipped_name(model, resolved)
    if name:
        return cli.one_line(f'model: {name}, the shipped {SHIPPED[name][0]} ({resolved})')
    return cli.one_line(f'model: {resolved}')


def folder_of(name):
    """The shipped model `name`'s folder."""
    return os.path.join(DIR, name)


def seen_in_training(name, dataset):
    """For the shipped model `name` scored on its own data set `dataset`, which it trained on
    whole: one line saying so, with the figure its card gives for a new street; else None."""
    if name not in SHIPPED or not os.path.isfile(os.path.join(DIR, name, CARD)):
        return None
    card = files.read_json(os.path.join(DIR, name, CARD), kind='card')
    on_what = card['trained_on'].split(',')[0]  # '468 labelled images of camvid (every ...)'
    if not on_what.endswith(f' of {dataset} (every labelled one)'):
        return None
    return (f'note: {name} trained on every labelled image of {dataset}, these among them, '
            f'so this figure measures how well it learned them, not what to expect on a new '
            f'street; for that, its card (cross-validation): {card["quality"]["crossval"]}')


def speed(model, image, runs=10):
    """The median milliseconds of `model` (an inference.Model) on one image, after a warm-up."""
    batch = image[None]
    model(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def validation_score(model, path, data_dir):
    """(score, images) of `model` (the shipped file at `path`) on the validation images of
    `data_dir`'s data set (CamVid's val/), as `evaluate.py --model NAME` scores it; None
    without such images."""
    if not data_dir:
        return None
    try:
        dataset, pairs = evaluation.evaluation_data(path, data_dir, model.info, 'val')
    except UserError:
        return None
    results = evaluation.evaluate(model, reading.load_samples(pairs, dataset.read_label))
    return evaluation.key_metric(results), len(pairs)


def card(name, run_dir, info, checked, milliseconds, model_file, validation=None):
    """card.json of the shipped model `name` exported from the run `run_dir`: what trained it,
    on what, its cross-validated quality (the run's crossval.json), its int8 file's agreement
    (`checked`: export.py's agreement for the int8 file and its check images) and its score on
    the data set's validation images (`validation`: validation_score's)."""
    config = files.read_json(os.path.join(run_dir, 'config.json'), kind='config',
                             needs=('dataset', 'epochs'))
    split = files.read_json(os.path.join(run_dir, 'split.json'), kind='split', needs=('train',))
    metric = metrics.key_metric_name(info.num_classes)
    expected = os.path.join(run_dir, 'crossval.json')
    if os.path.isfile(expected):
        record = files.read_json(expected, kind='crossval record')
        row = record.get('at_epochs') or record['best']
        crossval = (f'{metric} {row["mean"]:.3f} +- {row["std"]:.3f}, the mean over '
                    f'{len(record["folds"])} held-out drives ({", ".join(record["folds"])}) of '
                    f'its recipe\'s leave-one-drive-out cross-validation at epoch {row["epoch"]}')
        if not record.get('at_epochs'):  # trained for a count the cross-validation did not score
            crossval = (f'not cross-validated at its {config["epochs"]} epochs; its recipe\'s '
                        f'best: {crossval}')
    else:
        crossval = 'not cross-validated'
    result = checked['result']
    final = config.get('all_labelled') and not config.get('val_groups')
    return {
        'task': SHIPPED[name][0],
        'command': portable(config.get('command')) or
                   f'python main.py --config {SHIPPED[name][1]}',
        'commit': config.get('commit'),
        'trained_on': (f'{len(split["train"])} labelled images of {config["dataset"]}'
                       + (' (every labelled one)' if final else '')
                       + f', {config["epochs"]} epochs, from scratch'),
        'quality': {'crossval': crossval,
                    'int8': f'{metric} {result["iou"]:.4f} against {checked["original"]:.4f} '
                            f'({100 * result["class_agreement"]:.2f} % of pixels agreeing) on '
                            f'{checked["images"]} labelled images of '
                            f'{portable(checked["source"])}'
                            + (', which it trained on: a check of the int8 file, not of the '
                               'model' if final else ''),
                    **({'val': f'{metric} {validation[0]:.4f} on val/, the data set\'s '
                               f'{validation[1]} validation images'
                               + (', which it trained on' if final else '')}
                       if validation else {})},
        'input_size': '{}x{}'.format(*info.image_shape),
        'classes': list(info.class_names),
        'megabytes': os.path.getsize(model_file) / 1e6,
        'speed': f'{milliseconds:.0f} ms per image (LiteRT, one image at a time, on '
                 f'{len(os.sched_getaffinity(0))} cores: {cpu.model()})',
        'licence': LICENCES.get(config['dataset'], 'the terms of the data it trained on')}


def portable(text):
    """`text` (a command, a folder) with every absolute path written relative to the repository,
    so that a card reads right in any clone; None stays None."""
    if text is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return re.sub(r'(?<![\w.])/[^\s\'"]+',
                  lambda m: os.path.relpath(m.group(0), root), text)


def write_card():
    """shipped/README.md from every shipped model's card.json: the model card."""
    cards = {name: files.read_json(os.path.join(DIR, name, CARD), kind='card')
             for name in SHIPPED if os.path.isfile(os.path.join(DIR, name, CARD))}
    lines = ['# Shipped models', '',
             'Small int8 TFLite models the project trained, for `--model NAME` in `predict.py`, '
             '`serve.py` and `evaluate.py` (`predict.py` and `serve.py` use `camvid-road` when '
             'no `--model` is given). Each folder holds the model, its `fcn.json` and its '
             '`manifest.json` (sizes, SHA-256). Rebuild one from a run with '
             '`python export.py --model RUN --ship NAME`, which rewrites this page.', '']
    for name, card in cards.items():
        quality = card['quality']
        lines += [f'## `{name}`: {card["task"]}', '',
                  '| | |', '| --- | --- |',
                  f'| trained by | `{card["command"]}` at commit {card["commit"] or "unknown"} |',
                  f'| trained on | {card["trained_on"]} |',
                  f'| quality on a new street | {quality["crossval"]} |',
                  f'| the int8 file against its float model | {quality["int8"]} |',
                  *([f'| `evaluate.py --model {name}` (the int8 file) | {quality["val"]} |']
                    if 'val' in quality else []),
                  f'| input | RGB, {card["input_size"]}; any image is resized to it and the '
                  f'result back |',
                  f'| classes | {", ".join(card["classes"])} |',
                  f'| file | `{name}/{FILE}`, {card["megabytes"]:.1f} MB |',
                  f'| speed on this machine | {card["speed"]} |',
                  f'| licence | {card["licence"]} |', '']
    files.write_bytes(os.path.join(DIR, 'README.md'), '\n'.join(lines).encode())
    return cards
