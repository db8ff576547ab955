"""The run folder (KittiSeg's idea: everything a run made, in one place): a new folder, its
config.json and split.json, train.log, and a resumed run's state; the log lines that describe
it and the fcn.json its model carries. inputs.py reads a run's data, monitoring.py keeps its
records and checkpoints, outputs.py writes its model and overlays.
"""
import dataclasses
import os
import platform
import time

import numpy as np

from roadseg import cli, files
from roadseg.data import groups
from roadseg.data.settings import DataConfig
from roadseg.errors import UserError
from roadseg.model.ops import tf
from roadseg.model.settings import NetworkConfig
from roadseg.training import checkpoints, crossval
from roadseg.training.settings import TrainingConfig


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


def save_config(run_dir, args, weights):
    """Write the run's configuration to run_dir/config.json: the typed data, network and
    training settings, then the run's own options (validation, dropout, seeds, records), the
    command that started it, the class weights, the library versions and the commit. It is one
    flat object of options, as a --config file is, so that --config and --resume read it
    back."""
    config = {}
    for settings in (DataConfig.of(args), NetworkConfig.of(args), TrainingConfig.of(args)):
        config.update(dataclasses.asdict(settings))
    config.update({k: v for k, v in vars(args).items()
                   if k not in config and k not in ('config', 'resume')})
    config['data_dir'] = os.path.abspath(args.data_dir)  # so the run resumes from anywhere
    for shape in ('image_shape', 'train_crop'):
        if config[shape]:
            config[shape] = '{}x{}'.format(*config[shape])
    if weights is not None:
        config['class_weight_values'] = [round(float(w), 6) for w in weights]
    config['versions'] = {'tensorflow': tf.__version__, 'python': platform.python_version(),
                          'numpy': np.__version__}
    config['commit'] = files.git_commit(os.path.dirname(__file__))  # the code that trained it
    files.write_json(os.path.join(run_dir, 'config.json'), config)


def start_run(sess, saver, args, split, weights, writes=True):
    """A new run folder with config.json and split.json, or the resumed run's state restored
    from its newest sound checkpoint: (run folder, first epoch to train, earlier epoch records).
    `split` is the (train, validation, seen) pairs of data_split, recorded in split.json.

    The checkpoint is the commit point of an epoch: its manifest holds the records of every
    epoch up to it, so a run killed between writing the checkpoint and metrics.json, or during
    an export, resumes with its records whole; temporary folders a kill left are removed.
    A worker that is not the chief (`writes` false) makes no folder and only restores."""
    if not writes:
        done = (checkpoints.restore_latest(sess, saver, os.path.join(args.resume, 'checkpoints'),
                                           print) if args.resume else 0)
        return None, done + 1, []
    if not args.resume:
        run_dir = new_run_dir(args.runs_dir)
        save_config(run_dir, args, weights)
        record = {key: [os.path.basename(image) for image, _ in pairs]
                  for key, pairs in zip(('train', 'val', 'seen'), split)}
        if args.val_groups:
            group_of = DataConfig.of(args).grouper()
            record['groups'] = {key: groups.count(pairs, group_of)
                                for key, pairs in zip(('train', 'val', 'seen'), split)}
        files.write_json(os.path.join(run_dir, 'split.json'), record)
        if args.crossval:
            files.write_json(os.path.join(run_dir, 'crossval.json'),
                             crossval.expected(args.crossval, args.epochs))
        return run_dir, 1, []
    run_dir = args.resume
    checkpoint_dir = os.path.join(run_dir, 'checkpoints')
    for folder in (run_dir, checkpoint_dir):
        files.remove_temporaries(folder)
    save_config(run_dir, args, weights)  # --epochs and --data-dir may have changed
    log = RunLog(os.path.join(run_dir, 'train.log'))
    done = checkpoints.restore_latest(sess, saver, checkpoint_dir, log)
    log(cli.one_line(f'resuming {run_dir} after epoch {done}' if done else
                     f'resuming {run_dir}: no usable checkpoint, starting from epoch 1'))
    return run_dir, done + 1, resumed_records(run_dir, checkpoint_dir, done)


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


def describe(run_dir, args, classes, split, start_epoch):
    """The run log's line on data, sizes and epochs (a worker that is not the chief has no
    run folder); `split` is data_split's (train, validation, seen) pairs."""
    train, val, seen = split
    crop = args.train_crop
    where = run_dir or '(written by the chief)'
    held = f' (held-out groups {args.val_groups})' if args.val_groups else ''
    images = (f'every one of the {len(train)} labelled images trains; nothing validates '
              f'(a final model: its last epoch is exported)'
              if args.all_labelled and not args.val_groups else
              f'{len(train)} training and {len(val)} validation images{held}')
    return (f'run {where}: {args.dataset} with {classes.num_classes} classes, {images}'
            + (f', {len(seen)} unseen images of the training groups scored beside'
               if seen else '')
            + f', at {args.image_shape[0]}x{args.image_shape[1]}'
            + (f' (training on {crop[0]}x{crop[1]} crops)' if crop else '')
            + f', epochs {start_epoch}..{args.epochs}'
            + (f' (the last {args.plain_epochs} on flips only)' if args.plain_epochs else '')
            + (f'\n{crossval.expectation_line(crossval.expected(args.crossval, args.epochs))}'
               if args.crossval else ''))


def model_info(args, classes):
    """The fcn.json of the run's model: what inference needs to use it."""
    return {'image_shape': list(args.image_shape), 'num_classes': classes.num_classes,
            'class_names': classes.names, 'class_colors': [list(c) for c in classes.colors],
            'encoder': args.encoder, 'decoder': args.decoder, 'alpha': args.alpha,
            'depth': args.depth, 'dataset': args.dataset, 'label': args.label,
            'classes': args.classes, 'remap': args.remap}
