"""Leave-one-group-out cross-validation (crossval.py): choosing a recipe and its number of
epochs on the mean over every held-out group (CamVid's drives), never on one.

Each fold is a training run (train.train) of the recipe with `all_labelled` and `val_groups`
GROUP: it trains on every
labelled image of the other groups (train/ and val/ alike) and validates on all of its own,
every --val-every epochs. The folds run in turn, each in CV_DIR/GROUP/<run folder>, so an
interrupted cross-validation resumes where it stopped (a fold's run resumes exactly, as any
run does). The summary holds, for each validated epoch, each fold's key metric (road IoU for
two classes, else mean IoU), their mean, spread and range, and the pooled figure (the folds'
confusion matrices summed: folds of unequal size weigh by their pixels), and the epoch with the
best mean, which the final model (`--all-labelled`, no validation) then trains for.
"""
import dataclasses
import os

import numpy as np

from roadseg import cli, evaluation, files, metrics
from roadseg.data import groups
from roadseg.errors import UserError

STATE = 'crossval.json'  # in CV_DIR: the options and folds it was started with, then the summary


def labelled_groups(data):
    """{group: images} over every labelled image of the data (a DataConfig)."""
    dataset = data.open()
    return groups.count(dataset.train + (dataset.val or []), data.grouper())


def fold_config(config, cv_dir, group):
    """The RunConfig of the fold that holds out `group`: every other labelled image trains,
    its run folder goes in CV_DIR/GROUP, and it carries no crossval record (a configured final
    recipe does)."""
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, all_labelled=True, val_groups=group),
        run=dataclasses.replace(config.run, runs_dir=os.path.join(cv_dir, group),
                                crossval=None))


def fold_run(cv_dir, group):
    """The run folder of `group`'s fold (the one folder in CV_DIR/GROUP/), or None."""
    folder = os.path.join(cv_dir, group)
    found = sorted(name for name in os.listdir(folder) if not name.startswith('.')
                   and os.path.isdir(os.path.join(folder, name))) \
        if os.path.isdir(folder) else []
    if len(found) > 1:
        raise UserError(f'{folder}: holds {len(found)} run folders; a fold has one, remove '
                        f'the others')
    return os.path.join(folder, found[0]) if found else None


def finished(run_dir):
    """Whether a fold's run has trained and recorded all its epochs."""
    path = os.path.join(run_dir, 'metrics.json')
    if not os.path.isfile(path):
        return False
    epochs = files.read_json(os.path.join(run_dir, 'config.json'), kind='config',
                             needs=('epochs',))['epochs']
    return any(record['epoch'] == epochs
               for record in files.read_json(path, kind='metrics')['epochs'])


def run_folds(config, cv_dir, folds, train, resume, log=print):
    """Train each fold of the RunConfig `config` not yet finished with `train` (train.train),
    going on with one that was interrupted with `resume` (train.resume); the folds' run
    folders."""
    runs = {}
    for number, group in enumerate(folds, 1):
        run_dir = fold_run(cv_dir, group)
        if run_dir and finished(run_dir):
            log(f'fold {number}/{len(folds)} ({group} held out): done in {run_dir}')
        elif run_dir:
            log(f'fold {number}/{len(folds)} ({group} held out): resuming {run_dir}')
            resume(run_dir)
        else:
            log(f'fold {number}/{len(folds)} ({group} held out): training')
            run_dir = train(fold_config(config, cv_dir, group))
        runs[group] = run_dir
    return runs


def summarise(runs, sizes):
    """The cross-validation's figures from the folds' run folders {group: run folder} and
    their sizes {group: images}: for each epoch every fold validated, each fold's key metric,
    the mean, standard deviation, range and pooled figure; the epoch of the best mean."""
    validations = {}
    for group, run_dir in runs.items():
        records = files.read_json(os.path.join(run_dir, 'metrics.json'), kind='metrics')['epochs']
        validations[group] = {r['epoch']: r['val'] for r in records if 'val' in r}
    common = sorted(set.intersection(*(set(v) for v in validations.values())))
    if not common:
        raise UserError('the folds have no validated epoch in common; give them the same '
                        '--epochs and --val-every')
    rows = []
    for epoch in common:
        results = [validations[group][epoch] for group in runs]
        scores = [evaluation.key_metric(r) for r in results]
        pooled = metrics.ConfusionMatrix.of(sum(np.array(r['confusion']) for r in results))
        rows.append({'epoch': epoch, 'folds': dict(zip(runs, scores)),
                     'mean': float(np.mean(scores)), 'std': float(np.std(scores)),
                     'min': min(scores), 'max': max(scores),
                     'pooled': evaluation.key_metric(pooled.results()),
                     'class_iou_mean': _class_means([r['iou'] for r in results])})
    best = max(rows, key=lambda row: row['mean'])
    return {'metric': metrics.key_metric_name(len(rows[0]['class_iou_mean'])),
            # each fold's run relative to CV_DIR, so that a record copied elsewhere reads right
            'folds': {group: {'images': sizes[group],
                              'run': os.path.join(group, os.path.basename(run_dir))}
                      for group, run_dir in runs.items()},
            'epochs': rows, 'best_epoch': best['epoch'], 'best': best}


def _class_means(ious):
    """Each class's IoU averaged over the folds that scored it (None where none did)."""
    columns = zip(*ious)
    return [float(np.mean([v for v in column if v is not None]))
            if any(v is not None for v in column) else None for column in columns]


def format_summary(summary, class_names=None):
    """The summary as a table: a row per validated epoch, a column per fold, then the mean,
    spread and pooled figure; the best epoch and its per-class IoU below."""
    folds = summary['folds']
    header = ['epoch', *(f'{g} ({f["images"]})' for g, f in folds.items()),
              'mean', 'std', 'min..max', 'pooled']
    rows = [[str(row['epoch']), *(f'{row["folds"][g]:.4f}' for g in folds),
             f'{row["mean"]:.4f}', f'{row["std"]:.4f}', f'{row["min"]:.3f}..{row["max"]:.3f}',
             f'{row["pooled"]:.4f}'] for row in summary['epochs']]
    best = summary['best']
    lines = [f'cross-validation, {summary["metric"]} on each held-out group (its images):',
             *cli.aligned(header, rows),
             f'best epoch on the mean over {len(folds)} folds: {best["epoch"]}, '
             f'{summary["metric"]} {best["mean"]:.4f} +- {best["std"]:.4f} '
             f'(pooled {best["pooled"]:.4f})']
    if class_names and len(class_names) > 2:
        lines.append('its per-class IoU, mean over folds: ' + ', '.join(
            f'{name} {iou:.3f}' for name, iou in zip(class_names, best['class_iou_mean'])
            if iou is not None))
    return '\n'.join(lines)


def write_state(cv_dir, state):
    files.write_json(os.path.join(cv_dir, STATE), state)


def read_state(cv_dir):
    """What CV_DIR's cross-validation was started with, for --resume."""
    path = os.path.join(cv_dir, STATE)
    if not os.path.isfile(path):
        raise UserError(f'--resume {cv_dir}: no {STATE} there; not a cross-validation folder')
    state = files.read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get('argv'), list) or \
            not isinstance(state.get('folds'), list):
        raise UserError(f'{path}: not the {STATE} crossval.py writes')
    return state


def read_summary(path):
    """The summary in a crossval.json (main.py --crossval), checked to hold its best epoch."""
    state = files.read_json(path, 'give the crossval.json that crossval.py wrote')
    summary = state.get('summary') if isinstance(state, dict) else None
    if not isinstance(summary, dict) or not {'metric', 'best', 'folds'} <= set(summary):
        raise UserError(f'{path}: no summary of a finished cross-validation; finish it with '
                        f'crossval.py --resume')
    return summary


def expected(path, epochs):
    """What a final model's run of `epochs` epochs records of the cross-validation (its
    crossval.json at `path`) that chose its recipe: the folds' figures at that many epochs
    (None if they did not validate it), and at their best epoch."""
    summary = read_summary(path)
    at = next((row for row in summary.get('epochs', []) if row['epoch'] == epochs), None)
    return {'source': path, 'metric': summary['metric'], 'epochs': epochs, 'at_epochs': at,
            'best': summary['best'], 'folds': summary['folds']}


def expectation_line(expected):
    """That record in one line, for the run's log."""
    at, best, folds = expected['at_epochs'], expected['best'], expected['folds']
    held = f'over {len(folds)} held-out groups ({", ".join(folds)})'
    if at is None:
        return (f'its recipe, cross-validated ({expected["source"]}), was not validated at '
                f'{expected["epochs"]} epochs; its best: {expected["metric"]} '
                f'{best["mean"]:.4f} +- {best["std"]:.4f} {held} at epoch {best["epoch"]}')
    return (f'its recipe, cross-validated ({expected["source"]}): {expected["metric"]} '
            f'{at["mean"]:.4f} +- {at["std"]:.4f} {held} at epoch {expected["epochs"]}, '
            f'what to expect on a new street (best epoch {best["epoch"]}: {best["mean"]:.4f})')
