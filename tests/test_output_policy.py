"""The output policy (files.check_outputs, files.atomic_path, files.output_folder): a command
writes an output path only when it is absent or a regular file it may replace; folders, links,
other files, its own inputs and anything a link leads to outside the output folder are left as
they were, and two outputs of one command never share a path. predict.py runs the shipped int8
model (no TensorFlow), plot.py tiny run folders."""
import json
import os
import shutil

import imageio.v2 as iio2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from roadseg import cli, files
from roadseg.commands import plot, predict
from roadseg.errors import UserError


def write_image(path, seed=0, size=(24, 32)):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    iio2.imwrite(path, pixels)
    return str(path)


def write_run(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump({'encoder': 'vgg16', 'image_shape': '160x576'}, f)
    with open(os.path.join(folder, 'metrics.json'), 'w') as f:
        json.dump({'epochs': [{'epoch': 1, 'train_loss': 0.5, 'seconds': 60,
                               'key_metric': 0.7}]}, f)
    return str(folder)


def snapshot(root):
    """Every entry below `root` (links not followed): its kind and, for files and links, its
    content or target."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ('link', os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = ('folder', None)
            elif not os.path.isfile(path):
                found[rel] = ('other', None)  # a fifo: opening it would wait for a writer
            else:
                with open(path, 'rb') as f:
                    found[rel] = ('file', f.read())
    return found


def predict_guarded(*args):
    return cli.main_guard(predict.main, ['--model', 'camvid-road', *map(str, args)])


# ----------------------------------------------------------------------------------------------
# check_outputs and atomic_path
# ----------------------------------------------------------------------------------------------

def test_check_outputs_takes_absent_paths_and_regular_files_and_refuses_the_rest(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'file.png').write_bytes(b'old')
    (out / 'folder.png').mkdir()
    (tmp_path / 'elsewhere.png').write_bytes(b'mine')
    os.symlink(tmp_path / 'elsewhere.png', out / 'link.png')
    os.mkfifo(out / 'fifo.png')
    os.symlink(tmp_path, out / 'away')
    files.check_outputs([(str(out / 'new.png'), 'a'), (str(out / 'file.png'), 'b')],
                        folders=[str(out)])
    for name, why in (('folder.png', 'a folder is there'), ('link.png', 'a link is there'),
                      ('fifo.png', 'other than a regular file'),
                      (os.path.join('away', 'x.png'), 'a link leads out of the output folder')):
        with pytest.raises(UserError, match=why):
            files.check_outputs([(str(out / name), 'the overlay')], folders=[str(out)])
    with pytest.raises(UserError, match='the mask of x.png and the overlay of x_mask.png would '
                                        'both be'):
        files.check_outputs([(str(out / 'x_mask.png'), 'the mask of x.png'),
                             (str(out / 'x_mask.png'), 'the overlay of x_mask.png')])
    os.symlink(out / 'file.png', tmp_path / 'input.png')  # an input linked into the output
    with pytest.raises(UserError, match='it is an input of this command'):
        files.check_outputs([(str(out / 'file.png'), 'the overlay')], [str(tmp_path / 'input.png')])
    assert (tmp_path / 'elsewhere.png').read_bytes() == b'mine'
    assert (out / 'folder.png').is_dir()


def test_atomic_path_replaces_a_folder_only_when_its_writer_says_so(tmp_path):
    folder = tmp_path / 'result'
    folder.mkdir()
    (folder / 'precious').write_text('x')
    with pytest.raises(UserError, match='a folder is there'):
        files.write_json(str(folder), {})
    assert (folder / 'precious').read_text() == 'x'
    with files.atomic_path(str(folder), replace_folder=True) as tmp:
        os.makedirs(tmp)
    assert os.listdir(folder) == []


def test_output_folder_removes_only_the_empty_folders_it_made(tmp_path):
    with files.output_folder(str(tmp_path / 'a' / 'b')):
        pass
    assert os.listdir(tmp_path) == []
    with files.output_folder(str(tmp_path / 'a' / 'b')):
        (tmp_path / 'a' / 'b' / 'x').write_text('x')
    assert (tmp_path / 'a' / 'b' / 'x').exists()
    with files.output_folder(str(tmp_path)):  # there before: stays, empty or not
        pass
    assert tmp_path.is_dir()


# ----------------------------------------------------------------------------------------------
# The commands
# ----------------------------------------------------------------------------------------------

def test_plot_never_writes_over_a_folder_or_its_own_inputs(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / 'run')
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for output in ('.', run, os.path.join(run, 'metrics.json')):
        assert cli.main_guard(plot.main, [run, '--output', output]) == 2
        assert snapshot(tmp_path) == before
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and 'a folder is there' in err[0] and 'input of this command' in err[2]


def test_predict_refuses_an_output_folder_at_an_overlays_name(tmp_path, capsys):
    image = write_image(tmp_path / 'x.png')
    (tmp_path / 'out' / 'x.png').mkdir(parents=True)
    (tmp_path / 'out' / 'x.png' / 'keep').write_text('keep')
    before = snapshot(tmp_path)
    assert predict_guarded(image, '--output-dir', tmp_path / 'out') == 2
    assert 'a folder is there' in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_predict_refuses_two_outputs_of_one_name_before_making_its_folder(tmp_path, capsys):
    images = [write_image(tmp_path / name, seed) for seed, name in enumerate(('x.png',
                                                                             'x_mask.png'))]
    assert predict_guarded(*images, '--mask', '--overlay', '--output-dir', tmp_path / 'out') == 2
    assert 'would both be' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()  # nothing written: no empty folder left behind


def test_predict_refuses_a_video_whose_frames_take_an_images_name(tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    iio2.mimwrite(tmp_path / 'v.mp4', list(frames), fps=5, macro_block_size=1)
    image = write_image(tmp_path / 'v_000001.png')
    assert predict_guarded(tmp_path / 'v.mp4', image, '--overlay',
                           '--output-dir', tmp_path / 'out') == 2
    assert 'frame 1 of' in capsys.readouterr().err


def test_predict_never_writes_over_an_input_linked_into_its_output_folder(tmp_path, capsys):
    (tmp_path / 'out').mkdir()
    write_image(tmp_path / 'out' / 'x.png')
    (tmp_path / 'in').mkdir()
    os.symlink(tmp_path / 'out' / 'x.png', tmp_path / 'in' / 'x.png')
    before = snapshot(tmp_path)
    assert predict_guarded(tmp_path / 'in' / 'x.png', '--output-dir', tmp_path / 'out') == 2
    assert 'input of this command' in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_predict_that_reads_nothing_leaves_no_output_folder(tmp_path):
    (tmp_path / 'broken.png').write_bytes(b'not an image')
    assert predict_guarded(tmp_path / 'broken.png', '--output-dir', tmp_path / 'a' / 'out') == 1
    assert not (tmp_path / 'a').exists()


# ----------------------------------------------------------------------------------------------
# The property: whatever stands at the output paths, nothing the command did not make changes
# ----------------------------------------------------------------------------------------------

KINDS = ('absent', 'file', 'folder', 'link to a file', 'link to a folder', 'link to an input',
         'dangling link', 'fifo')


def plant(path, kind, outside, inputs):
    """Put an entry of `kind` at `path`; outside: a folder beyond the output folder."""
    if kind == 'file':
        path.write_bytes(b'old ' + path.name.encode())
    elif kind == 'folder':
        path.mkdir()
        (path / 'inside').write_text('keep')
    elif kind == 'link to a file':
        target = outside / ('t-' + path.name)
        target.write_text('outside')
        os.symlink(target, path)
    elif kind == 'link to a folder':
        os.symlink(outside, path)
    elif kind == 'link to an input':
        os.symlink(inputs[0], path)
    elif kind == 'dangling link':
        os.symlink(outside / 'missing', path)
    elif kind == 'fifo':
        os.mkfifo(path)


def unchanged_but_replaced_files(before, after, replaceable):
    """Every entry of `before` is in `after` as it was, but regular files at `replaceable`
    names, which the command may write over."""
    for name, entry in before.items():
        if entry[0] == 'file' and name in replaceable:
            assert after.get(name, ('file',))[0] == 'file', name
        else:
            assert after.get(name) == entry, name


@settings(max_examples=30, deadline=None)
@given(st.fixed_dictionaries({name: st.sampled_from(('absent', 'file')) | st.sampled_from(KINDS)
                              for name in ('a.png', 'a_mask.png', 'b.png', 'b_mask.png')}),
       st.sampled_from(('absent', 'folder')) | st.sampled_from(KINDS), st.booleans())
@example({'a.png': 'file', 'a_mask.png': 'folder', 'b.png': 'absent', 'b_mask.png': 'file'},
         'folder', False)  # a run that writes, beside a folder it must leave
def test_predict_leaves_whatever_stands_at_its_output_paths(tmp_path_factory, planted, out_kind,
                                                            mask):
    root = tmp_path_factory.mktemp('tree')
    inputs = [write_image(root / name, seed) for seed, name in enumerate(('a.png', 'b.png'))]
    outside = root / 'outside'
    outside.mkdir()
    out = root / 'out'
    plant(out, out_kind, outside, inputs)
    if out.is_dir() and not out.is_symlink():
        for name, kind in planted.items():
            plant(out / name, kind, outside, inputs)
    before = snapshot(root)
    status = predict_guarded(*inputs, '--output-dir', out, *(['--mask'] if mask else []))
    assert status in (0, 2)
    after = snapshot(root)
    written = {os.path.relpath(os.path.realpath(out / (stem + ('_mask.png' if mask else '.png'))),
                               root) for stem in 'ab'}
    unchanged_but_replaced_files(before, after, written if status == 0 else set())
    if status == 0:
        assert all(after[name][0] == 'file' for name in written)
    else:
        assert before == after


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(KINDS), st.sampled_from(['curve.png', 'run', 'run/metrics.json', '.']))
def test_plot_leaves_whatever_stands_at_its_output_path(tmp_path_factory, kind, output):
    root = tmp_path_factory.mktemp('tree')
    run = write_run(root / 'run')
    outside = root / 'outside'
    outside.mkdir()
    if output == 'curve.png':
        plant(root / output, kind, outside, [os.path.join(run, 'metrics.json')])
    before = snapshot(root)
    status = cli.main_guard(plot.main, [run, '--output', str(root / output)])
    after = snapshot(root)
    assert status in (0, 2)
    unchanged_but_replaced_files(before, after, {'curve.png'} if status == 0 else set())
    if status == 2:
        assert before == after
    shutil.rmtree(root)


def test_a_skipped_input_whose_name_holds_a_newline_is_one_line(tmp_path, capsys):
    broken = tmp_path / 'two\nlines.png'
    broken.write_bytes(b'not an image')
    assert predict_guarded(broken, '--output-dir', tmp_path / 'out') == 1
    skipped = [line for line in capsys.readouterr().err.splitlines() if 'lines.png' in line]
    assert len(skipped) == 1 and skipped[0].startswith('skipped ') and 'two\\nlines' in skipped[0]
