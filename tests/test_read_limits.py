"""Reads have limits (issue 48, cause 8): only regular files of a bounded size are read as
settings, class, calibration, JSON or model files, so that a device reads no further and a
named pipe blocks nothing; a full disk is reported as a full disk, naming the folder, not as
running out of memory; and a message stays one line whatever the names in it hold.

A reader that blocks on a named pipe is let go after a few seconds, by a process opening the
pipe's other end, and the test fails (`at_once`).
"""
import json
import os
import socket
import subprocess
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import main
from roadseg import bev, cli, crf, files, inference, zoo
from roadseg.data import classes as class_files
from roadseg.data import groups
from roadseg.errors import UserError
from roadseg.model.ops import tf, tf1
from roadseg.training import checkpoints, distribute, options
from roadseg.training.config import TrainingConfig
from tests.test_crossval import TINY
from tests.test_fuzz_inputs import assert_refusal
from tests.test_groups import make_drives
from tests.test_schemas import model_info


def at_once(read, pipe=None, seconds=5):
    """read()'s answer, failing the test when it took `seconds` or more: by then a process
    opens the named pipe `pipe` for writing, which lets a reader blocked on it go on (a
    thread could not: LiteRT blocks holding the GIL)."""
    writer = pipe and subprocess.Popen(['sh', '-c', 'sleep "$1"; exec 3> "$2"', 'sh',
                                        str(seconds), pipe])
    start = time.monotonic()
    try:
        return read()
    finally:
        took = time.monotonic() - start
        if writer:
            writer.kill()
            writer.wait()
        if took >= seconds:
            pytest.fail(f'read {pipe or "its file"} for {took:.0f} s: it blocks')


# ----------------------------------------------------------------------------------------------
# The bounded reader, over every kind of file
# ----------------------------------------------------------------------------------------------

KINDS = ('file', 'empty file', 'file over the cap', 'link to a file', 'folder', 'named pipe',
         'link to a named pipe', 'socket', 'device', 'dangling link', 'nothing')
REFUSALS = {'file over the cap': 'over', 'folder': 'a folder', 'named pipe': 'a named pipe',
            'link to a named pipe': 'a named pipe', 'socket': 'a socket', 'device': 'a device'}


def make(folder, kind, content, cap):
    """A path in `folder` holding `kind` (a file holds `content`; over the cap, one byte more
    than `cap`); returns the path and the socket to close, if any."""
    path, target = os.path.join(folder, 'x.json'), os.path.join(folder, 'target')
    opened = None
    if kind in ('file', 'link to a file'):
        open(target if kind.startswith('link') else path, 'wb').write(content)
    elif kind == 'empty file':
        open(path, 'wb').close()
    elif kind == 'file over the cap':
        open(path, 'wb').write(content.ljust(cap + 1, b'x'))
    elif kind == 'folder':
        os.mkdir(path)
    elif kind in ('named pipe', 'link to a named pipe'):
        os.mkfifo(target if kind.startswith('link') else path)
    elif kind == 'socket':
        opened = socket.socket(socket.AF_UNIX)
        opened.bind(path)
    elif kind == 'device':
        path = os.devnull  # a character device: /dev/zero would read for ever
    if kind.startswith('link') or kind == 'dangling link':
        os.symlink(target, path)
    return path, opened


@given(st.sampled_from(KINDS), st.binary(max_size=64), st.integers(0, 80))
def test_only_regular_files_within_the_cap_are_read_and_the_rest_refused_in_one_line(
        kind, content, cap):
    with tempfile.TemporaryDirectory() as folder:
        path, opened = make(folder, kind, content, cap)
        try:
            if kind in ('dangling link', 'nothing'):
                with pytest.raises(FileNotFoundError):  # the callers' own words: "not found"
                    files.read_limited(path, cap, 'JSON file')
            elif kind in REFUSALS or len(content) > cap and kind != 'empty file':
                with pytest.raises(UserError) as refused:
                    at_once(lambda: files.read_limited(path, cap, 'JSON file', 'do this'),
                            path if 'pipe' in kind else None)
                assert_refusal(refused.value, path)
                assert REFUSALS.get(kind, 'over') in str(refused.value)
                assert str(refused.value).endswith('; do this')
            else:
                assert files.read_limited(path, cap, 'JSON file') == (
                    b'' if kind == 'empty file' else content)
        finally:
            if opened:
                opened.close()


def test_a_file_that_grows_past_the_cap_while_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / 'x.json'
    path.write_bytes(b'{}')
    stat = os.stat
    monkeypatch.setattr(os, 'stat', lambda p, *a, **k: stat(p, *a, **k) if p != str(path) else
                        os.stat_result((*stat(p)[:6], 0, *stat(p)[7:])))  # stat saw it empty
    path.write_bytes(b'{"a": 1}')
    with pytest.raises(UserError, match=r'x.json: over 4 bytes, more than a JSON file holds'):
        files.read_limited(str(path), 4, 'JSON file')


# ----------------------------------------------------------------------------------------------
# Settings, classes, calibration and models: a named pipe or a device is one line at once
# ----------------------------------------------------------------------------------------------

READERS = {  # name: (file name, read(path), what the line names)
    'config': ('options.json', lambda p: options.parse_args(['--config', p]), 'JSON file'),
    'crf': ('crf.json', crf.read_parameters, 'CRF parameters'),
    'class file': ('classes.json', class_files.load_class_file, 'class file'),
    'label colours': ('label_colors.txt', class_files.read_label_colors, 'class file'),
    'calibration': ('um_000000.txt', bev.read_calibration, 'calib/'),
    'groups': ('groups.json', lambda p: groups.grouper('camvid', p), 'JSON object'),
}


@pytest.mark.parametrize('reader', sorted(READERS))
def test_a_named_pipe_as_a_settings_class_or_calibration_file_is_one_line_at_once(tmp_path,
                                                                                  reader):
    name, read, what = READERS[reader]
    pipe = str(tmp_path / name)
    os.mkfifo(pipe)
    with pytest.raises(UserError, match=rf'{name}: a named pipe, not a regular file; .*{what}') \
            as refused:
        at_once(lambda: read(pipe), pipe)
    assert_refusal(refused.value, pipe)


@pytest.mark.parametrize('reader', sorted(READERS))
def test_a_device_as_a_settings_class_or_calibration_file_is_one_line(tmp_path, reader):
    """/dev/zero would read until memory runs out; /dev/null, through a link, stands for it."""
    name, read, what = READERS[reader]
    link = tmp_path / name
    link.symlink_to(os.devnull)
    with pytest.raises(UserError, match=rf'{name}: a device, not a regular file; .*{what}'):
        read(str(link))


@pytest.mark.parametrize('name', ['model.tflite', 'model.pb'])
def test_a_named_pipe_as_a_model_file_is_one_line_at_once(tmp_path, name):
    pipe = str(tmp_path / name)
    os.mkfifo(pipe)
    (tmp_path / inference.MODEL_INFO).write_text(json.dumps(model_info()))
    with pytest.raises(UserError, match=rf'{name}: a named pipe, not a regular file; give '
                                        r'--model a model file'):
        at_once(lambda: inference.load_model(pipe), pipe)


def test_a_folder_or_a_pipe_named_as_a_models_fcn_json_is_one_line(tmp_path):
    (tmp_path / 'model.tflite').write_bytes(b'x')
    os.mkfifo(tmp_path / inference.MODEL_INFO)
    with pytest.raises(UserError, match=r'fcn.json: a named pipe, not a regular file'):
        at_once(lambda: inference.load_model(str(tmp_path / 'model.tflite')),
                str(tmp_path / inference.MODEL_INFO))


# ----------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------

def fill_device(sess=None):
    """Write to /dev/full, a device that is always full: with TensorFlow in `sess` (its
    ResourceExhaustedError, as when a checkpoint meets a full disk), else with Python."""
    if not os.path.exists('/dev/full'):
        pytest.skip('no /dev/full here')
    if sess is None:
        with open('/dev/full', 'wb') as f:
            f.write(b'x' * (1 << 16))
        return
    with sess.graph.as_default():
        sess.run(tf.io.write_file('/dev/full', tf.constant('x' * (1 << 16))))


@pytest.mark.parametrize('writer', ['tensorflow', 'python'])
def test_a_full_disk_is_one_line_naming_the_folder_not_out_of_memory(tmp_path, writer):
    training = TrainingConfig(image_shape=(160, 576), batch_size=8)
    with tf.Graph().as_default(), tf1.Session() as sess:
        with pytest.raises(UserError) as refused:
            with distribute.failures(training, distribute.Setup('none')), \
                    files.full_disk(str(tmp_path), '--runs-dir'):
                fill_device(sess if writer == 'tensorflow' else None)
    assert str(refused.value) == (f'--runs-dir {tmp_path}: the disk is full (No space left on '
                                  f'device); free space on it, or write somewhere else, and '
                                  f'run again')
    with pytest.raises(UserError, match=rf'^{tmp_path}: the disk is full \(No space left'):
        with files.full_disk(str(tmp_path)):  # export.py's output folder
            fill_device()


def test_a_full_disk_outside_a_command_s_folders_is_still_called_full(capsys):
    def writes():
        fill_device()
    assert cli.main_guard(writes) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == 'error: No space left on device; the disk is full: free space on it and ' \
                   'run again'


@pytest.mark.slow
def test_main_on_a_full_disk_says_so_naming_runs_dir(tmp_path, monkeypatch, capsys):
    """A checkpoint that meets a full disk: TensorFlow's ResourceExhaustedError, which
    main.py reported as running out of memory."""
    data = make_drives(tmp_path / 'camvid')

    def full(sess, saver, checkpoint_dir, epoch, keep=(), extra=None):
        fill_device(sess)
    monkeypatch.setattr(checkpoints, 'save', full)
    runs = tmp_path / 'runs'
    assert cli.main_guard(main.run, [*TINY, '--epochs', '1', '--data-dir', str(data),
                                     '--runs-dir', str(runs)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error')]
    assert line == f'error: --runs-dir {runs}: the disk is full (No space left on device); ' \
                   f'free space on it, or write somewhere else, and run again'


# ----------------------------------------------------------------------------------------------
# One line, whatever the names hold
# ----------------------------------------------------------------------------------------------

def test_the_line_naming_the_model_stays_one_line_whatever_its_path_holds():
    assert zoo.describe('a\nb.tflite', 'a\nb.tflite') == 'model: a\\nb.tflite'


def test_an_unusable_checkpoint_is_logged_in_one_line_whatever_its_path_holds(tmp_path):
    checkpoint_dir = tmp_path / 'run\nname' / 'checkpoints'
    (checkpoint_dir / 'epoch-0001').mkdir(parents=True)
    (checkpoint_dir / 'epoch-0001' / 'stray\nfile').write_bytes(b'x')
    messages = []
    assert checkpoints.restore_latest(None, None, str(checkpoint_dir), messages.append) == 0
    (message,) = messages
    assert len(message.splitlines()) == 1 and 'run\\nname' in message


def test_a_missing_file_keeps_each_readers_own_words(tmp_path):
    missing = str(tmp_path / 'missing.json')
    for read, words in ((files.read_json, 'cannot read it'),
                        (class_files.load_class_file, 'class file not found'),
                        (bev.read_calibration, 'cannot read the calibration')):
        with pytest.raises(UserError, match=words):
            read(missing)
