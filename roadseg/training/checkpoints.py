"""Training checkpoints that survive being killed at any moment.

Each epoch's checkpoint (weights and optimizer state) is written to a hidden temporary folder
with a manifest of its files' sizes and SHA-256 digests, then renamed to `epoch-NNNN`. A resume
takes the newest checkpoint whose files match their manifest and restore cleanly; a truncated or
corrupt one is reported and the one before it used.
"""
import glob
import hashlib
import json
import os
import re
import shutil

from roadseg import files
from roadseg.errors import UserError
from roadseg.graph_mode import import_tensorflow

tf = import_tensorflow()
MANIFEST = 'manifest.json'
PREFIX = 'model'


def _digest(path):
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(1 << 22):
            sha.update(block)
    return sha.hexdigest()


def _files(folder):
    return sorted(name for name in os.listdir(folder) if name != MANIFEST)


def folder_for(checkpoint_dir, epoch):
    return os.path.join(checkpoint_dir, f'epoch-{epoch:04d}')


def save(sess, saver, checkpoint_dir, epoch, keep=()):
    """Write the checkpoint of `epoch` atomically, then delete all but the two newest and the
    epochs in `keep` (the best one)."""
    with files.atomic_path(folder_for(checkpoint_dir, epoch)) as tmp:
        os.makedirs(tmp)
        saver.save(sess, os.path.join(tmp, PREFIX), write_meta_graph=False, write_state=False)
        manifest = {name: {'bytes': os.path.getsize(os.path.join(tmp, name)),
                           'sha256': _digest(os.path.join(tmp, name))} for name in _files(tmp)}
        with open(os.path.join(tmp, MANIFEST), 'w') as f:
            json.dump({'epoch': epoch, 'files': manifest}, f, indent=1)
    for old in epochs(checkpoint_dir)[:-2]:
        if old not in keep:
            shutil.rmtree(folder_for(checkpoint_dir, old))


def epochs(checkpoint_dir):
    """The epochs with a checkpoint folder, oldest first."""
    found = (re.fullmatch(r'epoch-(\d+)', os.path.basename(p))
             for p in glob.glob(os.path.join(checkpoint_dir, 'epoch-*')))
    return sorted(int(m.group(1)) for m in found if m)


def problem(folder):
    """Why a checkpoint folder cannot be trusted, or None when its files match the manifest."""
    try:
        expected = files.read_json(os.path.join(folder, MANIFEST))['files']
    except (UserError, KeyError) as e:
        return f'unreadable manifest ({e})'
    if sorted(expected) != _files(folder):
        return f'files {_files(folder)} differ from the manifest\'s {sorted(expected)}'
    for name, facts in expected.items():
        path = os.path.join(folder, name)
        if os.path.getsize(path) != facts['bytes']:
            return f'{name} has {os.path.getsize(path)} bytes, expected {facts["bytes"]}'
        if _digest(path) != facts['sha256']:
            return f'{name} is corrupt (SHA-256 mismatch)'
    return None


def restore_latest(sess, saver, checkpoint_dir, log=print):
    """Restore the newest sound checkpoint; returns its epoch, or 0 when there is none."""
    for epoch in reversed(epochs(checkpoint_dir)):
        folder = folder_for(checkpoint_dir, epoch)
        reason = problem(folder)
        if reason is None:
            try:
                saver.restore(sess, os.path.join(folder, PREFIX))
                return epoch
            except (tf.errors.OpError, ValueError) as e:
                reason = f'restore failed ({str(e).splitlines()[0]})'
        log(f'checkpoint {folder} is unusable: {reason}; trying the one before it')
    return 0
