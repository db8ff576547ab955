"""Training checkpoints that survive being killed at any moment.

Each epoch's checkpoint (weights and optimizer state) is written to a hidden temporary folder
with a manifest of its files' sizes and SHA-256 digests, then renamed to `epoch-NNNN`. A resume
takes the newest checkpoint whose files match their manifest and restore cleanly; a truncated or
corrupt one is reported and the one before it used.
"""
import glob
import os
import re
import shutil

from roadseg import cli, files
from roadseg.graph_mode import import_tensorflow

tf = import_tensorflow()
MANIFEST = files.MANIFEST
PREFIX = 'model'


def folder_for(checkpoint_dir, epoch):
    return os.path.join(checkpoint_dir, f'epoch-{epoch:04d}')


def save(sess, saver, checkpoint_dir, epoch, keep=(), extra=None):
    """Write the checkpoint of `epoch` atomically, with the `extra` keys in its manifest (the
    run's records), then delete all but the two newest and the epochs in `keep` (the best)."""
    with files.atomic_path(folder_for(checkpoint_dir, epoch), replace_folder=True) as tmp:
        os.makedirs(tmp)
        saver.save(sess, os.path.join(tmp, PREFIX), write_meta_graph=False, write_state=False)
        files.write_manifest(tmp, epoch=epoch, **(extra or {}))
    for old in epochs(checkpoint_dir)[:-2]:
        if old not in keep:
            shutil.rmtree(folder_for(checkpoint_dir, old))


def epochs(checkpoint_dir):
    """The epochs with a checkpoint folder, oldest first."""
    found = (re.fullmatch(r'epoch-(\d+)', os.path.basename(p))
             for p in glob.glob(os.path.join(checkpoint_dir, 'epoch-*')))
    return sorted(int(m.group(1)) for m in found if m)


def problem(folder):
    """Why a checkpoint folder cannot be trusted, or None when its manifest has a checkpoint's
    shape (roadseg.schemas: its records too) and its files match it."""
    return files.manifest_problem(folder, complete=True, kind='checkpoint')


def manifest(checkpoint_dir, epoch):
    """The manifest of the checkpoint of `epoch`: its files and the keys saved with it."""
    return files.read_json(os.path.join(folder_for(checkpoint_dir, epoch), MANIFEST),
                           kind='checkpoint')


def restore(sess, saver, checkpoint_dir, epoch):
    """Restore the checkpoint of `epoch` after checking it against its manifest; returns why it
    is unusable, or None when it was restored."""
    folder = folder_for(checkpoint_dir, epoch)
    reason = problem(folder)
    if reason is None:
        try:
            saver.restore(sess, os.path.join(folder, PREFIX))
        except (tf.errors.OpError, ValueError) as e:
            reason = f'restore failed ({str(e).splitlines()[0]})'
    return reason


def restore_latest(sess, saver, checkpoint_dir, log=print):
    """Restore the newest sound checkpoint; returns its epoch, or 0 when there is none."""
    for epoch in reversed(epochs(checkpoint_dir)):
        reason = restore(sess, saver, checkpoint_dir, epoch)
        if reason is None:
            return epoch
        log(cli.one_line(f'checkpoint {folder_for(checkpoint_dir, epoch)} is unusable: '
                         f'{reason}; trying the one before it'))
    return 0
