"""The run folder (KittiSeg's idea: everything a run made, in one place): a new folder, its
config.json and split.json, train.log, and a resumed run's state; the log lines that describe
it and the fcn.json its model carries. inputs.py reads a run's data, monitoring.py keeps its
records and checkpoints, outputs.py writes its model and overlays.
"""
import os
import platform
import time

import numpy as np

from roadseg import cli, files, git
from roadseg.data import groups
from roadseg.errors import UserError
from roadseg.model.ops import tf
from roadseg.model_info import ModelInfo
from roadseg.training import checkpoints, crossval


class RunLog:
    """Prints each message and appends it to a run's log file (none: prints only, as a worker
    that is not the chief does)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, message):
        print(message)
        if self.path:
            with open(self.path, 'a') as f:
                f.write(message + '\n')


def new_run_dir(runs_dir):
    """Create and return a fresh `runs_dir/<YYYYmmdd-HHMMSS>[-N]` folder."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for n in range(1000):
        path = os.path.join(runs_dir, stamp if n == 0 else f'{stamp}-{n}')
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'{runs_dir}: could not create a new run folder')


def save_config(run_dir, config, class_weights, command=None):
    """Write the RunConfig to run_dir/config.json: its JSON form (one flat object of options,
    as a recipe is, so that --config and --resume read it back), with the data folder made
    absolute, then what it derived: the class weights, the command that started it, the
    library versions and the commit."""
    record = config.to_json()
    record['data_dir'] = os.path.abspath(config.data.data_dir)  # so it resumes from anywhere
    if class_weights is not None:
        record['class_weight_values'] = [round(float(w), 6) for w in class_weights]
    record['command'] = command
    record['versions'] = {'tensorflow': tf.__version__, 'python': platform.python_version(),
                          'numpy': np.__version__}
    record['commit'] = git.commit(os.path.dirname(__file__))  # the code that trained it
    files.write_json(os.path.join(run_dir, 'config.json'), record)


def start_run(sess, saver, config, split, class_weights, writes=True, resume=None,
              command=None):
    """A new run folder under the RunConfig's runs_dir, with config.json and split.json, or
    the state of the run folder `resume` restored from its newest sound checkpoint: (run
    folder, first epoch to train, earlier epoch records). `split` is the (train, validation,
    in-group) pairs of inputs.data_split, recorded in split.json.

    The checkpoint is the commit point of an epoch: its manifest holds the records of every
    epoch up to it, so a run killed between writing the checkpoint and metrics.json, or during
    an export, resumes with its records whole; temporary folders a kill left are removed.
    A worker that is not the chief (`writes` false) makes no folder and only restores."""
    if not writes:
        done = (checkpoints.restore_latest(sess, saver, os.path.join(resume, 'checkpoints'),
                                           print) if resume else 0)
        return None, done + 1, []
    if not resume:
        run_dir = new_run_dir(config.run.runs_dir)
        save_config(run_dir, config, class_weights, command)
        write_split(run_dir, config, split)
        return run_dir, 1, []
    checkpoint_dir = os.path.join(resume, 'checkpoints')
    for folder in (resume, checkpoint_dir):
        files.remove_temporaries(folder)
    old = files.read_json(os.path.join(resume, 'config.json'), kind='config')
    # --epochs, --data-dir and the devices may have changed; the command that started it stays
    save_config(resume, config, class_weights, old.get('command'))
    log = RunLog(os.path.join(resume, 'train.log'))
    done = checkpoints.restore_latest(sess, saver, checkpoint_dir, log)
    log(cli.one_line(f'resuming {resume} after epoch {done}' if done else
                     f'resuming {resume}: no usable checkpoint, starting from epoch 1'))
    return resume, done + 1, resumed_records(resume, checkpoint_dir, done)


def write_split(run_dir, config, split):
    """split.json: the file names of the (train, validation, in-group) pairs, recorded as
    train, val and seen, with their counts per group under --val-groups; and a final model's
    crossval.json, what its cross-validation expects of it."""
    record = {key: [os.path.basename(image) for image, _ in pairs]
              for key, pairs in zip(('train', 'val', 'seen'), split)}
    if config.data.val_groups:
        group_of = config.data.grouper()
        record['groups'] = {key: groups.count(pairs, group_of)
                            for key, pairs in zip(('train', 'val', 'seen'), split)}
    files.write_json(os.path.join(run_dir, 'split.json'), record)
    if config.run.crossval:
        files.write_json(os.path.join(run_dir, 'crossval.json'),
                         crossval.expected(config.run.crossval, config.training.epochs))


def resumed_records(run_dir, checkpoint_dir, done):
    """The epoch records, up to epoch `done`, that a run resumed from that epoch's checkpoint
    goes on from: its manifest's, or for a checkpoint written before manifests held them, those
    of metrics.json; each file checked against its schema (roadseg.schemas)."""
    records = checkpoints.manifest(checkpoint_dir, done).get('records') if done else []
    if records is None:  # a checkpoint written before its manifest held the records
        path = os.path.join(run_dir, 'metrics.json')
        records = files.read_json(path, kind='resumed metrics')['epochs'] \
            if os.path.exists(path) else []
    return [r for r in records if r['epoch'] <= done]


def describe(run_dir, config, classes, split, start_epoch):
    """The run log's line on data, sizes and epochs (a worker that is not the chief has no
    run folder); `split` is data_split's (train, validation, in-group) pairs."""
    (train, val, in_group), data, training = split, config.data, config.training
    crop, expected = training.train_crop, config.run.crossval
    where = run_dir or '(written by the chief)'
    held = f' (held-out groups {data.val_groups})' if data.val_groups else ''
    images = (f'every one of the {len(train)} labelled images trains; nothing validates '
              f'(a final model: its last epoch is exported)' if data.final else
              f'{len(train)} training and {len(val)} validation images{held}')
    return (f'run {where}: {data.dataset} with {classes.num_classes} classes, {images}'
            + (f', {len(in_group)} unseen images of the training groups scored beside'
               if in_group else '')
            + ', at {}x{}'.format(*training.image_shape)
            + (f' (training on {crop[0]}x{crop[1]} crops)' if crop else '')
            + f', epochs {start_epoch}..{training.epochs}'
            + (f' (the last {training.plain_epochs} on flips only)'
               if training.plain_epochs else '')
            + (f'\n{crossval.expectation_line(crossval.expected(expected, training.epochs))}'
               if expected else ''))


def model_info(config, classes):
    """The fcn.json of the run's model, a ModelInfo: what inference needs to use it (the
    options that do not apply to the model are left out)."""
    network, data = config.network, config.data
    return ModelInfo.of_classes(
        config.training.image_shape, classes, encoder=network.encoder, decoder=network.decoder,
        alpha=network.alpha, depth=network.depth, dataset=data.dataset, label=data.label,
        classes=data.classes, remap=data.remap)
