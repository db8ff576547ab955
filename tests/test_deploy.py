"""Deployment: predict.py on images, folders, globs and videos at the inputs' own sizes;
export.py's formats round-tripping through inference.load_model and agreeing with the original;
bad models, files and flags.

One tiny FCN-8s (the tiny VGG encoder of project_tests, with dropout on keep_prob) is trained
for a few Adam steps on road-coded images (red 250 on road, 10 elsewhere) at 32x64, so its
probabilities are far from uniform and exports have something to disagree about.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import imageio.v2 as iio2
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import roadseg
from roadseg import cli, drawing, inference, media
from roadseg import export as formats
from roadseg.commands import evaluate, export, plot, predict
from roadseg.errors import PartlyFailed, UserError
from roadseg.images import read_rgb, resize_image, resize_probabilities
from roadseg.model.ops import tf
from roadseg.model_info import ModelInfo
from roadseg.training import outputs
from tests.conftest import (
    COLORS,
    ROOT,
    SHAPE,
    make_kitti,
    road_scene,
    save_partial_model,
    save_tiny_model,
    write_tiny_onnx,
)

tf1 = tf.compat.v1
TWO_CLASSES = ModelInfo(SHAPE, 2, ('not road', 'road'), COLORS[:2])  # a frozen graph's size


# ----------------------------------------------------------------------------------------------
# Fixtures: a trained tiny model in a run folder, its exports, input images and videos
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A run folder: model/, config.json naming a KITTI-layout data_dir, split.json."""
    root = tmp_path_factory.mktemp('deploy')
    stems = [f'um_{i:06d}' for i in range(6)]
    make_kitti(root / 'data', stems=stems, size=(45, 77))
    run = root / 'run'
    save_tiny_model(str(run / 'model'), steps=250)
    (run / 'config.json').write_text(json.dumps({'data_dir': str(root / 'data')}))
    (run / 'split.json').write_text(json.dumps({'train': [s + '.png' for s in stems[:4]],
                                                'val': [s + '.png' for s in stems[4:]]}))
    return run


@pytest.fixture(scope='module')
def run_data(run_dir):
    """The data folder the run's config.json names."""
    return json.loads((run_dir / 'config.json').read_text())['data_dir']


@pytest.fixture(scope='module')
def original(run_dir):
    with inference.load_model(str(run_dir)) as model:
        yield model


@pytest.fixture(scope='module')
def exports(run_dir):
    """export.py's every format, checked on the run's validation images."""
    export.main(['--model', str(run_dir), '--calibration-images', '4'])
    return run_dir / 'export'


def write_video(path, frames=5, fps=7.5, size=(45, 77)):
    """An H.264 MP4 of road scenes (yuv444p: odd sizes allowed); returns its frames as read."""
    rng = np.random.default_rng(2)
    writer = media.open_video(str(path), fps, size)
    for _ in range(frames):
        writer.append_data(road_scene(rng, *size)[0])
    writer.close()
    return read_video(path)


def read_video(path):
    """A video's frames (the reader's len() is infinite: no list())."""
    with iio2.get_reader(str(path), 'ffmpeg') as reader:
        return [frame for frame in reader]


def expected(model, image, rows=None, threshold=0.5):
    """The road probability and road mask at the image's size, from the model run directly on
    its rows `rows` (all by default); zero outside them."""
    top, bottom = rows or (0, image.shape[0])
    probability = np.zeros(image.shape[:2], np.float32)
    small = model(resize_image(image[top:bottom], SHAPE)[None])[0]
    probability[top:bottom] = resize_probabilities(small, (bottom - top, image.shape[1]))[..., 1]
    return probability, (probability >= threshold).astype(np.uint8)


def run_predict(*args):
    """predict.main in this process; returns its exit status as the command line would."""
    return cli.main_guard(predict.main, [str(a) for a in args])


# ----------------------------------------------------------------------------------------------
# predict.py: inputs and outputs
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_images_give_every_output_at_their_own_size(run_dir, original, inputs, tmp_path,
                                                    capsys):
    out = tmp_path / 'out'
    assert run_predict('--model', run_dir, inputs, '--output-dir', out, '--overlay', '--mask',
                       '--probability', '--batch-size', 2) == 0
    assert sorted(os.listdir(out)) == ['street.png', 'street_mask.png', 'street_prob.png',
                                       'um_000007.png', 'um_000007_mask.png',
                                       'um_road_000007.png']
    for name, stem, probability_png in (('um_000007.png', 'um_000007', 'um_road_000007.png'),
                                        ('street.jpg', 'street', 'street_prob.png')):
        image = read_rgb(inputs / name)
        probability, mask = expected(original, image)
        assert 0.1 < mask.mean() < 0.9  # the trained model finds road, and not everywhere
        assert np.array_equal(iio.imread(out / f'{stem}_mask.png'), mask)
        assert np.array_equal(iio.imread(out / f'{stem}.png'), drawing.overlay(image, mask))
        written = iio.imread(out / probability_png)
        assert written.shape == image.shape[:2] and written.dtype == np.uint8
        assert np.abs(written.astype(int) - probability * 255).max() <= 0.5 + 1e-3
    assert '2 frames in' in capsys.readouterr().out


def test_default_output_is_overlays_and_summary_names_the_model(run_dir, inputs, tmp_path,
                                                                capsys):
    assert run_predict('--model', run_dir, inputs / 'street.jpg', '--output-dir', tmp_path) == 0
    assert os.listdir(tmp_path) == ['street.png']
    assert iio.imread(tmp_path / 'street.png').shape == (50, 90, 3)
    assert 'frames/s (model savedmodel)' in capsys.readouterr().out


def test_glob_and_folder_with_bad_files(run_dir, inputs, tmp_path, capsys):
    folder = tmp_path / 'in'
    shutil.copytree(inputs, folder)
    (folder / 'broken.png').write_bytes(b'not a png')
    (folder / 'notes.txt').write_text('not an image: folders skip it')
    out = tmp_path / 'out'
    assert run_predict('--model', run_dir, folder, '--output-dir', out) == 1
    assert sorted(os.listdir(out)) == ['street.png', 'um_000007.png']
    err = capsys.readouterr().err
    assert 'skipped' in err and 'broken.png: cannot read image' in err
    assert err.strip().splitlines()[-1] == ('error: 1 input(s) failed (listed above); the '
                                            'others were processed')
    out = tmp_path / 'glob'
    assert run_predict('--model', run_dir, folder / '*.jpg', folder / 'nothing*.png',
                       '--output-dir', out) == 1
    assert os.listdir(out) == ['street.png']
    assert 'nothing*.png: no image or video matches this pattern' in capsys.readouterr().err


def test_explicit_unsupported_or_missing_file_is_listed(run_dir, tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('hello')
    assert run_predict('--model', run_dir, tmp_path / 'notes.txt', tmp_path / 'gone.png',
                       '--output-dir', tmp_path / 'out') == 1
    err = capsys.readouterr().err
    assert 'notes.txt: unsupported file type' in err
    assert 'gone.png: no such file or folder' in err


def test_crop_feeds_only_its_rows_and_counts_the_rest_as_not_road(run_dir, original, inputs,
                                                                   tmp_path):
    image = read_rgb(inputs / 'um_000007.png')
    assert run_predict('--model', run_dir, inputs / 'um_000007.png', '--output-dir', tmp_path,
                       '--mask', '--probability', '--crop', '10,-8') == 0
    mask = iio.imread(tmp_path / 'um_000007_mask.png')
    probability = iio.imread(tmp_path / 'um_road_000007.png')
    assert mask.shape == probability.shape == (45, 77)
    assert not mask[:10].any() and not mask[37:].any()
    assert not probability[:10].any() and not probability[37:].any()
    cropped_probability, cropped_mask = expected(original, image, rows=(10, 37))
    assert np.array_equal(mask, cropped_mask)
    assert np.abs(probability - cropped_probability * 255).max() <= 0.5 + 1e-3
    # the model saw only rows 10..36: inside the band the result differs from a whole-image run
    whole_probability, _ = expected(original, image)
    assert np.abs(whole_probability[10:37] - cropped_probability[10:37]).max() > 0.05


def test_threshold(run_dir, original, inputs, tmp_path):
    image = read_rgb(inputs / 'um_000007.png')
    assert run_predict('--model', run_dir, inputs / 'um_000007.png', '--output-dir', tmp_path,
                       '--mask', '--threshold', '0.9') == 0
    mask = iio.imread(tmp_path / 'um_000007_mask.png')
    probability, default_mask = expected(original, image)
    assert np.array_equal(mask, probability >= 0.9)
    assert 0 < mask.sum() < default_mask.sum()


def test_video_gives_overlaid_video_and_gif_at_its_frame_rate_and_size(run_dir, original,
                                                                       tmp_path):
    frames = write_video(tmp_path / 'drive.mp4')
    out = tmp_path / 'out'
    assert run_predict('--model', run_dir, tmp_path / 'drive.mp4', '--output-dir', out,
                       '--video', '--gif', '--mask', '--batch-size', 2) == 0
    assert sorted(os.listdir(out)) == ['drive_00000{}_mask.png'.format(i) for i in range(5)] + [
        'drive_overlay.gif', 'drive_overlay.mp4']
    assert iio.immeta(out / 'drive_overlay.mp4', plugin='FFMPEG')['fps'] == 7.5
    video = read_video(out / 'drive_overlay.mp4')
    assert len(video) == 5 and video[0].shape == (45, 77, 3)
    gif = iio.imread(out / 'drive_overlay.gif', index=None)
    assert gif.shape[:3] == (5, 45, 77)
    assert abs(iio.immeta(out / 'drive_overlay.gif')['duration'] - 1000 / 7.5) <= 10
    for index, (frame, written) in enumerate(zip(frames, video)):
        mask = expected(original, frame)[1]
        assert np.array_equal(iio.imread(out / f'drive_{index:06d}_mask.png'), mask)
        drawn = drawing.overlay(frame, mask).astype(int)
        assert np.abs(written - drawn).mean() < 8  # H.264 is lossy, the noise costly
        assert written[..., 1][mask == 1].mean() > written[..., 1][mask == 0].mean() + 40  # green


def blended(image, classes, colors):
    """The overlay as predict.py drew it before it looked blends up in a table: each drawn
    class's pixels mixed half and half with its colour, rounded half to even."""
    out = image.copy()
    for index, color in enumerate(colors):
        if color is not None:
            mask = classes == index
            out[mask] = (0.5 * image[mask].astype(np.float32) + 0.5 * np.array(color, np.float32)
                         ).round()
    return out


@pytest.mark.slow
def test_the_pipelined_video_is_the_in_series_output_frame_for_frame(run_dir, original,
                                                                      tmp_path):
    write_video(tmp_path / 'drive.mp4', frames=11)
    out = tmp_path / 'out'
    assert run_predict('--model', run_dir, tmp_path / 'drive.mp4', '--output-dir', out,
                       '--video', '--overlay', '--batch-size', 4) == 0  # batches of 4, 4, 3
    frames = read_video(tmp_path / 'drive.mp4')
    reference = tmp_path / 'reference.mp4'
    with media.open_video(str(reference), 7.5, frames[0].shape[:2]) as writer:
        for index, frame in enumerate(frames):  # one frame at a time, on this thread
            probabilities = inference.segment(original, [frame])[0]
            drawn = blended(frame, probabilities[..., 1] >= 0.5, (None, drawing.OVERLAY_RGB))
            assert np.array_equal(iio.imread(out / f'drive_{index:06d}.png'), drawn), index
            writer.append_data(drawn)
    assert (out / 'drive_overlay.mp4').read_bytes() == reference.read_bytes()


def test_default_for_a_video_is_the_overlaid_video_with_an_even_size(run_dir, tmp_path):
    write_video(tmp_path / 'even.mov', frames=3, fps=10, size=(46, 78))
    assert run_predict('--model', run_dir, tmp_path / 'even.mov', '--output-dir',
                       tmp_path / 'out') == 0
    assert os.listdir(tmp_path / 'out') == ['even_overlay.mp4']
    meta = iio.immeta(tmp_path / 'out' / 'even_overlay.mp4', plugin='FFMPEG')
    assert meta['fps'] == 10 and meta['size'] == (78, 46) and 'yuv420p' in meta['pix_fmt']
    assert len(read_video(tmp_path / 'out' / 'even_overlay.mp4')) == 3


def test_video_without_frames_is_listed_and_leaves_no_video(run_dir, tmp_path, capsys):
    silent = tmp_path / 'silent.mp4'  # an MP4 with an audio stream only
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-loglevel', 'error', '-f', 'lavfi', '-i',
                    'anullsrc=r=8000:cl=mono', '-t', '0.2', str(silent)], check=True)
    (tmp_path / 'empty.avi').write_bytes(b'')
    out = tmp_path / 'out'
    assert run_predict('--model', run_dir, silent, tmp_path / 'empty.avi', '--output-dir',
                       out) == 1
    assert not out.exists()  # no half-written video, no temporary or empty folder
    err = capsys.readouterr().err
    assert 'silent.mp4: cannot read video frames' in err and 'empty.avi: cannot read' in err


def test_video_failing_part_way_keeps_its_frames_but_leaves_no_video(run_dir, tmp_path,
                                                                     monkeypatch, capsys):
    frames = write_video(tmp_path / 'drive.mp4', frames=3)

    def fails_after_two_frames(source):
        source.fps = 7.5
        yield from frames[:2]
        raise UserError(f'{source.path}: damaged after frame 2')
    monkeypatch.setattr(media, 'read_video', fails_after_two_frames)
    out = tmp_path / 'out'
    assert run_predict('--model', run_dir, tmp_path / 'drive.mp4', '--output-dir', out, '--mask',
                       '--video', '--batch-size', 1) == 1
    assert sorted(os.listdir(out)) == ['drive_000000_mask.png', 'drive_000001_mask.png']
    assert 'drive.mp4: damaged after frame 2' in capsys.readouterr().err


def test_many_classes_draw_the_palette_and_refuse_road_only_flags(tmp_path, inputs):
    model = save_tiny_model(str(tmp_path / 'three'), num_classes=3)  # untrained: all class 0
    assert run_predict('--model', model, inputs / 'street.jpg', '--output-dir', tmp_path / 'out',
                       '--mask') == 0
    assert not iio.imread(tmp_path / 'out' / 'street_mask.png').any()
    image = read_rgb(inputs / 'street.jpg')
    assert run_predict('--model', model, inputs / 'street.jpg', '--output-dir',
                       tmp_path / 'out', '--overlay') == 0
    assert np.array_equal(iio.imread(tmp_path / 'out' / 'street.png'),
                          drawing.overlay(image, np.zeros((50, 90)), [tuple(c) for c in COLORS]))
    legend = iio.imread(tmp_path / 'out' / 'legend.png')  # a swatch of each class's colour
    assert [tuple(legend[12 + 20 * row, 20]) for row in range(3)] == [tuple(c) for c in COLORS]
    for flag in (['--probability'], ['--threshold', '0.7']):
        with pytest.raises(UserError, match=f'{flag[0]}: for two-class .* has 3 classes'):
            predict.main(['--model', model, str(inputs), '--output-dir', str(tmp_path), *flag])


@pytest.mark.parametrize('flags, message', [
    (['--crop', '20'], r"--crop: .*'20' is not TOP,BOTTOM"),
    (['--crop', '30,10'], r"--crop: .*BOTTOM below it"),
    (['--threshold', '0'], r'--threshold: must be above 0'),
    (['--batch-size', '0'], r'--batch-size: must be at least 1'),
])
def test_bad_flags(run_dir, inputs, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        predict.main(['--model', str(run_dir), str(inputs), '--output-dir', str(tmp_path),
                      *flags])


def test_crop_leaving_no_rows_skips_that_image(run_dir, inputs, tmp_path, capsys):
    assert run_predict('--model', run_dir, inputs, '--output-dir', tmp_path, '--crop',
                       '46,100') == 1
    err = capsys.readouterr().err
    assert 'um_000007.png: --crop 46,100 leaves none of its 45 rows' in err
    assert os.listdir(tmp_path) == ['street.png']  # 50 rows: row 46 on is kept


def test_outputs_that_would_collide_or_replace_inputs_are_refused(run_dir, inputs, tmp_path):
    (tmp_path / 'other').mkdir()
    shutil.copy(inputs / 'street.jpg', tmp_path / 'other' / 'street.png')
    with pytest.raises(UserError, match='street.jpg and the overlay of .*street.png would '
                                        'both be'):
        predict.main(['--model', str(run_dir), str(inputs), str(tmp_path / 'other'),
                      '--output-dir', str(tmp_path / 'out')])
    with pytest.raises(UserError, match='um_000007.png .*it is an input of this command'):
        predict.main(['--model', str(run_dir), str(inputs / 'um_000007.png'), '--output-dir',
                      str(inputs)])


def test_overlay_blends_green_only_on_the_mask():
    image = np.full((2, 2, 3), 100, np.uint8)
    mask = np.array([[True, False], [False, False]])
    out = drawing.overlay(image, mask)
    assert out[0, 0].tolist() == [50, 178, 50]
    assert np.all(out[~mask] == 100)


@pytest.mark.parametrize('classes', [2, 3, 12])
def test_overlay_tables_blend_every_value_of_every_class_as_the_formula(classes):
    colors = [None] + [(71 * c % 256, 255 - c, 2 * c + 1) for c in range(1, classes)]
    image = np.tile(np.arange(256, dtype=np.uint8)[:, None, None], (1, classes, 3))
    image[..., 1] = image[::-1, :, 1]  # the channels apart
    grid = np.tile(np.arange(classes), (256, 1))
    assert np.array_equal(drawing.overlay(image, grid, colors), blended(image, grid, colors))


# ----------------------------------------------------------------------------------------------
# inference: load_model and overlay
# ----------------------------------------------------------------------------------------------

def test_load_model_run_folder_and_savedmodel_folder(run_dir, original):
    assert original.kind == 'savedmodel' and original.image_shape == SHAPE
    assert original.num_classes == 2 and original.info.encoder  # one predict.py does not know
    probabilities = original(np.zeros((3, *SHAPE, 3), np.uint8))
    assert probabilities.shape == (3, *SHAPE, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)
    with inference.load_model(str(run_dir / 'model')) as same:
        batch = np.random.default_rng(0).integers(0, 256, (2, *SHAPE, 3)).astype(np.float32)
        np.testing.assert_array_equal(same(batch), original(batch))
    with pytest.raises(ValueError, match=r'takes images \[N, 32, 64, 3\]'):
        original(np.zeros((1, 45, 77, 3)))


@pytest.mark.parametrize('name', ['model', 'export/model_float32.tflite'])
def test_flip_tta_averages_with_the_mirrored_images_prediction(run_dir, exports, original, name):
    batch = np.random.default_rng(3).integers(0, 256, (2, *SHAPE, 3)).astype(np.uint8)
    with inference.load_model(str(run_dir / name), flip=True) as flipped:
        averaged = flipped(batch)
    plain, mirrored = original(batch), original(batch[:, :, ::-1])[:, :, ::-1]
    assert np.abs(plain - mirrored).max() > 1e-3  # the model is not mirror-symmetric
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, atol=1e-5)


def test_predict_and_evaluate_flip_tta(run_dir, run_data, inputs, tmp_path, capsys):
    image = read_rgb(inputs / 'um_000007.png')
    assert run_predict('--model', run_dir, inputs / 'um_000007.png', '--output-dir', tmp_path,
                       '--mask', '--flip-tta') == 0
    with inference.load_model(str(run_dir), flip=True) as flipped:
        assert np.array_equal(iio.imread(tmp_path / 'um_000007_mask.png'),
                              expected(flipped, image)[1])
    evaluate.main(['--model', str(run_dir), '--data-dir', run_data, '--flip-tta'])
    assert 'each also mirrored (--flip-tta)' in capsys.readouterr().out
    results = json.loads((run_dir / 'eval-val-flip' / 'metrics.json').read_text())
    assert results['flip_tta'] is True and results['images'] == 2


def copy_model(run_dir, tmp_path, **info_changes):
    """A copy of the run's model with fcn.json changed, without a manifest (as written before
    models had one)."""
    folder = tmp_path / 'model'
    shutil.copytree(run_dir / 'model', folder)
    info = json.loads((folder / 'fcn.json').read_text())
    (folder / 'fcn.json').write_text(json.dumps({**info, **info_changes}))
    (folder / 'manifest.json').unlink()
    return folder


def truncated_variables(run_dir, tmp_path, manifest=True):
    """A copy of the run's model whose variables file lost its second half."""
    folder = tmp_path / 'model'
    shutil.copytree(run_dir / 'model', folder)
    (data,) = (folder / 'variables').glob('variables.data-*')
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
    if not manifest:
        (folder / 'manifest.json').unlink()
    return folder


def flipped_byte(exports, tmp_path, name='model_int8.tflite'):
    """A copy of the exports in which one byte of `name`'s weights is changed."""
    folder = tmp_path / 'export'
    shutil.copytree(exports, folder)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / name).write_bytes(bytes(data))
    return folder / name


@pytest.mark.parametrize('make, message', [
    (lambda run, tmp: tmp / 'nowhere', r'nowhere: no such file or folder'),
    (lambda run, tmp: tmp, r'neither a run folder with model/ nor a SavedModel'),
    (lambda run, tmp: save_partial_model(str(tmp / 'vgg'), ('serve',)),
     r'vgg: no fcn.json beside it'),
    (lambda run, tmp: write(tmp / 'model.h5', b'x'), r'model.h5: not a model; expected .* or an '
                                                     r'ONNX file \(.onnx\)'),
    (lambda run, tmp: write(tmp / 'model.pb', b'garbage', info=run), r'model.pb: not a frozen '
                                                                     r'graph written by export'),
    (lambda run, tmp: write(tmp / 'm.tflite', b'garbage', info=run), r'm.tflite: not a TFLite'),
    (lambda run, tmp: write(tmp / 'alone.tflite', b'garbage'), r'alone.tflite: no fcn.json'),
    (lambda run, tmp: copy_model(run, tmp, num_classes=3, class_names=['a', 'b', 'c'],
                                 class_colors=COLORS),
     r'predicts 2 classes but its fcn.json says 3'),
    (lambda run, tmp: truncated_variables(run, tmp),
     r'model: variables/variables.data-00000-of-00001 has \d+ bytes, expected \d+; the model is '
     r'damaged'),
    (lambda run, tmp: truncated_variables(run, tmp, manifest=False),
     r'model: not a model written by main.py or export.py, or damaged'),
    (lambda run, tmp: flipped_byte(run / 'export', tmp),
     r'model_int8.tflite: model_int8.tflite is corrupt \(SHA-256 mismatch\); the model is '
     r'damaged'),
])
def test_load_model_bad_models(run_dir, exports, tmp_path, make, message):
    path = str(make(run_dir, tmp_path))
    with pytest.raises(UserError, match=message):
        inference.load_model(path)


def write(path, data, info=None):
    path.write_bytes(data)
    if info:
        shutil.copy(info / 'model' / 'fcn.json', path.parent / 'fcn.json')
    return path


def test_export_with_other_training_size_in_fcn_json_is_refused(exports, tmp_path):
    shutil.copy(exports / 'model.pb', tmp_path / 'model.pb')
    info = json.loads((exports / 'fcn.json').read_text())
    (tmp_path / 'fcn.json').write_text(json.dumps({**info, 'image_shape': [64, 64]}))
    with pytest.raises(UserError, match=r'takes 32x64 images but its fcn.json says 64x64'):
        inference.load_model(str(tmp_path / 'model.pb'))


# ----------------------------------------------------------------------------------------------
# export.py
# ----------------------------------------------------------------------------------------------

# the largest probability difference each export may show on this tiny model: float32 exports
# run the same arithmetic (TFLite's kernels sum in another order); float16 rounds the weights to
# 11 significant bits (~5e-4 relative); int8 is bounded through the classes instead
ROUND_TRIP = {'savedmodel': ('serving', 1e-5), 'frozen': ('frozen', 1e-5),
              'tflite32': ('tflite-float32', 1e-5), 'tflite16': ('tflite-float16', 1e-2),
              'int8': ('tflite-int8', None)}


def test_every_export_round_trips_and_agrees_with_the_original(exports, original):
    assert sorted(os.listdir(exports)) == ['agreement.json', 'fcn.json', 'manifest.json',
                                           'model.pb', 'model_float16.tflite',
                                           'model_float32.tflite', 'model_int8.tflite',
                                           'savedmodel']
    listed = json.loads((exports / 'manifest.json').read_text())['files']
    assert sorted(listed) == ['fcn.json', 'model.pb', 'model_float16.tflite',
                              'model_float32.tflite', 'model_int8.tflite']
    # the SavedModel has its own, in the version folder TensorFlow Serving loads
    assert 'manifest.json' in os.listdir(exports / 'savedmodel' / '1')
    rng = np.random.default_rng(3)
    images = np.stack([road_scene(rng, *SHAPE)[0] for _ in range(4)])
    reference = original(images)
    for kind, (loaded_kind, tolerance) in ROUND_TRIP.items():
        with inference.load_model(str(exports / formats.FILES[kind])) as model:
            assert model.kind == loaded_kind and model.info == original.info
            got = model(images)
        assert got.shape == reference.shape and got.dtype == np.float32
        if tolerance:
            np.testing.assert_allclose(got, reference, atol=tolerance, err_msg=kind)
        else:
            # int8: 8-bit activations move probabilities by many 1/256 steps, but only pixels
            # near the road boundary change class; the model is sure elsewhere
            assert (got.argmax(-1) == reference.argmax(-1)).mean() >= 0.95
            assert np.abs(got - reference).mean() < 0.05


@pytest.mark.parametrize('stride, size, taps', [(2, (5, 7), 4), (8, (4, 6), 16), (3, (1, 2), 6),
                                                (2, (5, 7), 3)])  # FC-DenseNet's 3x3
def test_subpixel_upsampling_computes_the_transposed_convolution(stride, size, taps):
    rng = np.random.default_rng(stride)
    kernel = rng.normal(size=(taps, taps, 3, 2)).astype(np.float32)
    x = rng.normal(size=(2, *size, 2)).astype(np.float32)
    with tf.Graph().as_default() as graph, tf1.Session() as sess:
        inp = tf1.placeholder(tf.float32, [None, *size, 2], 'x')
        out = tf.nn.conv2d_transpose(inp, tf.constant(kernel), [2, size[0] * stride,
                                                                size[1] * stride, 3], stride,
                                     'SAME')
        tf.identity(out, 'y')
        reference = sess.run(out, {inp: x})
        graph_def = formats.subpixel_upsampling(graph.as_graph_def())
    assert 'Conv2DBackpropInput' not in {node.op for node in graph_def.node}
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf.graph_util.import_graph_def(graph_def, name='')
        np.testing.assert_allclose(sess.run('y:0', {'x:0': x}), reference, atol=1e-5)


def test_tflite_exports_upsample_without_transpose_conv(exports):
    for kind in ('tflite32', 'int8'):
        interpreter = Interpreter(str(exports / formats.FILES[kind]))
        ops = {op['op_name'] for op in interpreter._get_ops_details()}
        assert 'DEPTH_TO_SPACE' in ops and 'TRANSPOSE_CONV' not in ops, (kind, ops)


def test_tflite_models_run_without_importing_tensorflow(exports):
    code = ('import sys, numpy\nfrom roadseg.commands import predict\n'
            'with predict.inference.load_model(sys.argv[1]) as model:\n'
            '    out = model(numpy.zeros((1, *model.image_shape, 3), numpy.uint8))\n'
            'print(out.shape, "tensorflow" in sys.modules, "onnxruntime" in sys.modules)')
    for kind in ('tflite32', 'int8'):
        done = subprocess.run([sys.executable, '-c', code, str(exports / formats.FILES[kind])],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        assert done.stdout.splitlines()[-1] == f'(1, {SHAPE[0]}, {SHAPE[1]}, 2) False False', \
            kind


def test_agreement_json(exports, original):
    agreement = json.loads((exports / 'agreement.json').read_text())
    assert agreement['images'] == 2 and agreement['metric'] == 'road IoU'
    assert 0.5 < agreement['original_iou'] <= 1  # the trained model sees the halves of road
    assert set(agreement['exports']) == set(formats.FILES) - {'onnx'}  # onnx: when asked for
    for kind, result in agreement['exports'].items():
        assert result['within_tolerance'], (kind, result)
        assert abs(result['iou'] - agreement['original_iou'] - result['iou_difference']) < 1e-12
    assert agreement['exports']['frozen']['max_probability_difference'] < 1e-5
    assert agreement['exports']['tflite16']['max_probability_difference'] < 1e-2
    assert agreement['exports']['int8']['class_agreement'] >= 0.95
    assert agreement['exports']['int8']['max_probability_difference'] > 1e-3  # it is int8


def test_check_dir_calibration_dir_and_an_export_outside_its_tolerance(run_dir, run_data,
                                                                       tmp_path, monkeypatch):
    monkeypatch.setitem(formats.TOLERANCES, 'tflite16', (1e-9, 1e-3))
    rng = np.random.default_rng(4)
    for i in range(8):
        iio.imwrite(tmp_path / f'scene{i}.png', road_scene(rng, 60, 90)[0])
    out = tmp_path / 'out'
    with pytest.raises(PartlyFailed, match=r'^tflite16 disagree with the original'):
        export.main(['--model', str(run_dir), '--formats', 'tflite16,int8', '--check-dir',
                     run_data, '--calibration-dir', str(tmp_path), '--output-dir', str(out)])
    assert sorted(os.listdir(out)) == ['agreement.json', 'fcn.json', 'manifest.json',
                                       'model_float16.tflite', 'model_int8.tflite']
    agreement = json.loads((out / 'agreement.json').read_text())
    assert agreement['images'] == 6  # every labelled image of --check-dir
    assert not agreement['exports']['tflite16']['within_tolerance']
    assert agreement['exports']['int8']['within_tolerance']


def test_frozen_graph_is_inference_only(exports):
    graph_def = tf1.GraphDef()
    graph_def.ParseFromString((exports / 'model.pb').read_bytes())
    ops = {node.op for node in graph_def.node}
    assert 'RandomUniform' not in ops and 'VariableV2' not in ops and 'VarHandleOp' not in ops
    assert [node.name for node in graph_def.node if node.op == 'Placeholder'] == ['image']


def test_serving_savedmodel_takes_uint8_of_any_size(exports, original, inputs):
    image = read_rgb(inputs / 'street.jpg')
    with tf.Graph().as_default(), tf1.Session() as sess:
        signature = tf1.saved_model.loader.load(
            sess, ['serve'], str(exports / 'savedmodel' / '1')).signature_def['serving_default']
        assert signature.inputs['image'].dtype == tf.uint8.as_datatype_enum
        probabilities, classes = sess.run(
            [signature.outputs['probabilities'].name, signature.outputs['classes'].name],
            {signature.inputs['image'].name: np.stack([image, image[::-1]])})
    assert probabilities.shape == (2, 50, 90, 2) and classes.shape == (2, 50, 90)
    assert classes.dtype == np.uint8
    assert np.array_equal(classes, probabilities.argmax(-1))
    # resizing inside the graph is antialiased bilinear, like predict.py's PIL resizing
    np.testing.assert_allclose(probabilities[0, ..., 1], expected(original, image)[0], atol=5e-3)


@pytest.mark.slow
def test_serving_savedmodel_loads_in_a_fresh_eager_process(exports):
    code = ('import sys, numpy as np, tensorflow as tf\n'
            'f = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]\n'
            'out = f(image=tf.constant(np.zeros((1, 45, 77, 3), np.uint8)))\n'
            'print(tuple(out["probabilities"].shape), tuple(out["classes"].shape))\n')
    result = subprocess.run([sys.executable, '-c', code, str(exports / 'savedmodel' / '1')],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split('\n')[-2] == '(1, 45, 77, 2) (1, 45, 77)'


def test_predict_runs_on_an_export(exports, inputs, tmp_path, capsys):
    assert run_predict('--model', exports / 'model_int8.tflite', inputs, '--output-dir',
                       tmp_path, '--mask', '--batch-size', 2) == 0
    assert iio.imread(tmp_path / 'street_mask.png').shape == (50, 90)
    assert '(model tflite-int8)' in capsys.readouterr().out


def test_evaluate_scores_an_export(exports, run_data):
    evaluate.main(['--model', str(exports / 'model_float32.tflite'), '--data-dir', run_data,
                   '--split', 'all'])
    results = json.loads((exports / 'model_float32-eval-all' / 'metrics.json').read_text())
    assert results['images'] == 6 and results['iou'][1] > 0.5
    # By default the run's validation images: split.json is found in the run folder above.
    evaluate.main(['--model', str(exports / 'model_float32.tflite'), '--data-dir', run_data])
    results = json.loads((exports / 'model_float32-eval-val' / 'metrics.json').read_text())
    assert results['images'] == 2


# ----------------------------------------------------------------------------------------------
# ONNX: export.py --formats onnx, and inference's onnxruntime backend
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def onnx_exports(run_dir, tmp_path_factory):
    """export.py --formats frozen,onnx in a folder of its own, checked on the run's validation
    images."""
    for package in formats.ONNX_PACKAGES:
        pytest.importorskip(package)
    out = tmp_path_factory.mktemp('onnx') / 'export'
    export.main(['--model', str(run_dir), '--formats', 'frozen,onnx', '--output-dir', str(out)])
    return out


def test_the_onnx_export_agrees_with_the_frozen_graph(onnx_exports):
    assert sorted(os.listdir(onnx_exports)) == ['agreement.json', 'fcn.json', 'manifest.json',
                                                'model.onnx', 'model.pb']
    listed = json.loads((onnx_exports / 'manifest.json').read_text())['files']
    assert sorted(listed) == ['fcn.json', 'model.onnx', 'model.pb']  # it travels with fcn.json
    result = json.loads((onnx_exports / 'agreement.json').read_text())['exports']['onnx']
    assert result['kind'] == 'onnx' and result['within_tolerance']
    assert result['class_agreement'] == 1 and result['max_probability_difference'] < 1e-5
    images = np.stack([road_scene(np.random.default_rng(i), *SHAPE)[0] for i in range(4)])
    with inference.load_model(str(onnx_exports / 'model.onnx')) as onnx, \
            inference.load_model(str(onnx_exports / 'model.pb')) as frozen:
        assert onnx.kind == 'onnx' and onnx.info == frozen.info
        got = onnx(images)  # the whole batch in one call
        assert got.shape == (4, *SHAPE, 2) and got.dtype == np.float32
        np.testing.assert_allclose(got, frozen(images), atol=1e-5)


def test_large_constants_pass_the_onnx_conversion_as_inputs_and_end_as_weights(
        run_dir, original, tmp_path, monkeypatch):
    """VGG16's fc6 and fc7 take that path; here every kernel of 1 kB or more does."""
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('tf2onnx')
    monkeypatch.setattr(formats, 'ONNX_INPUT_BYTES', 1024)
    graph_def = formats.frozen_graph(str(run_dir / 'model'), original.info)
    lifted = formats.constants_as_inputs(graph_def, 1024)[1]
    assert 'fcn/fc6/kernel:0' in lifted and len(lifted) > 5
    model = onnx.load_from_string(formats.onnx_model(graph_def))
    assert [tensor.name for tensor in model.graph.input] == ['image']
    assert set(lifted) <= {tensor.name for tensor in model.graph.initializer}
    onnx.save(model, tmp_path / 'model.onnx')
    original.info.write(str(tmp_path))
    images = np.stack([road_scene(np.random.default_rng(i), *SHAPE)[0] for i in range(2)])
    with inference.load_model(str(tmp_path / 'model.onnx')) as converted:
        np.testing.assert_allclose(converted(images), original(images), atol=1e-5)


def test_an_onnx_model_segments_and_predicts_like_any_model(onnx_exports, original, inputs,
                                                           tmp_path, capsys):
    image = read_rgb(inputs / 'street.jpg')
    with inference.load_model(str(onnx_exports / 'model.onnx'), flip=True) as onnx:
        (got,) = inference.segment(onnx, [image])
    (reference,) = inference.segment(original, [image], flip=True)
    assert got.shape == (50, 90, 2)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert run_predict('--model', onnx_exports / 'model.onnx', inputs, '--output-dir', tmp_path,
                       '--mask') == 0
    assert '(model onnx)' in capsys.readouterr().out
    assert np.array_equal(iio.imread(tmp_path / 'street_mask.png'), expected(original, image)[1])


def bad_onnx(folder, cut=False, manifest=True, num_classes=2, info=None):
    """write_tiny_onnx's model in `folder`: cut to its first half with `cut`, of `num_classes`,
    with the fcn.json of the run `info` instead of its own."""
    path = pathlib.Path(write_tiny_onnx(folder, num_classes, manifest))
    if cut:
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    if info:
        shutil.copy(info / 'model' / 'fcn.json', folder / 'fcn.json')
    return path


@pytest.mark.parametrize('make, message', [
    (lambda run, tmp: write(tmp / 'm.onnx', b'garbage', info=run),
     r'm.onnx: not an ONNX model written by export.py \(.*[Pp]rotobuf parsing failed.*\)'),
    (lambda run, tmp: bad_onnx(tmp / 'cut', cut=True, manifest=False),
     r'cut/model.onnx: not an ONNX model written by export.py \(.+\)'),
    (lambda run, tmp: bad_onnx(tmp / 'cut', cut=True),
     r'cut/model.onnx: model.onnx has \d+ bytes, expected \d+; the model is damaged.*'),
    (lambda run, tmp: bad_onnx(tmp / 'three', manifest=False, num_classes=3, info=run),
     r'three/model.onnx: predicts 3 classes but its fcn.json says 2.*'),
])
def test_a_bad_onnx_file_is_one_line_naming_it(run_dir, inputs, tmp_path, capfd, make, message):
    pytest.importorskip('onnxruntime')
    path = make(run_dir, tmp_path)
    with pytest.raises(UserError, match=rf'^--model \S*{message}$'):
        inference.load_model(str(path))
    capfd.readouterr()
    assert run_predict('--model', path, inputs, '--output-dir', tmp_path / 'out') == 2
    err = capfd.readouterr().err
    (line,) = [line for line in err.splitlines() if line.strip()]
    assert re.fullmatch(rf'error: --model \S*{message}', line), err
    assert not (tmp_path / 'out').exists()


def test_without_onnxruntime_an_onnx_model_asks_for_the_onnx_extra(inputs, tmp_path, capfd,
                                                                   monkeypatch):
    path = write_tiny_onnx(tmp_path / 'model')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` fails
    with pytest.raises(ModuleNotFoundError) as raised:
        inference.load_model(path)
    assert raised.value.name == 'onnxruntime'  # as it is, for cli.main_guard to name the extra
    with pytest.raises(ModuleNotFoundError, match=r"^roadseg.load\('\S*model.onnx'\) needs "
                                                  r"onnxruntime here, .* 'roadseg\[onnx\]'"):
        roadseg.load(path)  # the Python API names the extra too
    capfd.readouterr()
    assert run_predict('--model', path, inputs, '--output-dir', tmp_path / 'out') == 2
    assert "roadseg[onnx]" in capfd.readouterr().err


def test_export_to_onnx_without_tf2onnx_stops_before_any_work(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tf2onnx', None)
    with pytest.raises(ModuleNotFoundError) as raised:
        export.main(['--model', str(run_dir), '--formats', 'frozen,onnx', '--output-dir',
                     str(tmp_path / 'out')])
    assert raised.value.name == 'tf2onnx' and os.listdir(tmp_path) == []


def test_tf1_dropout_is_removed_too(tmp_path):
    """Udacity's VGG graph drops out as x / keep_prob * floor(keep_prob + uniform noise)."""
    with tf.Graph().as_default(), tf1.Session() as sess:
        image = tf1.placeholder(tf.float32, [None, None, None, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        noise = tf1.random_uniform(tf.shape(image)) * 1.0 + 0.0
        dropped = image / keep_prob * tf.floor(keep_prob + noise)
        probabilities = tf.nn.softmax(tf.stack([dropped[..., 0], 255 - dropped[..., 0]], -1))
        outputs.save_model(sess, str(tmp_path / 'model'), image, keep_prob, probabilities,
                        {'image_shape': list(SHAPE), 'num_classes': 2})
    graph_def = formats.frozen_graph(str(tmp_path / 'model'), TWO_CLASSES)
    assert not {'RandomUniform', 'Floor'} & {node.op for node in graph_def.node}
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf.graph_util.import_graph_def(graph_def, name='')
        x = np.random.default_rng(0).uniform(0, 255, (1, *SHAPE, 3)).astype(np.float32)
        got = sess.run('probabilities:0', {'image:0': x})
    np.testing.assert_allclose(got[..., 0], 1 / (1 + np.exp(255 - 2 * x[..., 0].astype(float))),
                               rtol=1e-5, atol=1e-6)


def test_a_model_without_dropout_freezes_without_keep_prob(tmp_path):
    """MobileNetV2's inference tower ignores keep_prob: the frozen graph has nothing to map."""
    with tf.Graph().as_default(), tf1.Session() as sess:
        image = tf1.placeholder(tf.float32, [None, None, None, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        probabilities = tf.nn.softmax(image[..., :2] / 255)
        outputs.save_model(sess, str(tmp_path / 'model'), image, keep_prob, probabilities, {})
    graph_def = formats.frozen_graph(str(tmp_path / 'model'), TWO_CLASSES)
    assert [node.name for node in graph_def.node if node.op == 'Placeholder'] == ['image']


def test_export_refuses_exports_and_missing_data(exports, tmp_path):
    with pytest.raises(UserError, match=r'a tflite-float32 model; export from a run'):
        export.main(['--model', str(exports / 'model_float32.tflite')])
    bare = tmp_path / 'bare'
    shutil.copytree(exports.parent / 'model', bare)
    with pytest.raises(UserError, match=r'config.json: cannot read it .*--check-dir'):
        export.main(['--model', str(bare), '--formats', 'frozen'])
    with pytest.raises(UserError, match=r"--formats: .*'coreml' is not a format"):
        export.main(['--model', str(bare), '--formats', 'frozen,coreml'])
    assert not (tmp_path / 'export').exists()


@pytest.mark.parametrize('command', ['evaluate', 'predict', 'export', 'plot'])
def test_an_output_folder_that_cannot_be_written_is_one_line(run_dir, run_data, inputs, tmp_path,
                                                              capfd, command):
    """A folder under a file cannot be made, for root too (unlike a read-only folder)."""
    (tmp_path / 'file').write_text('not a folder')
    out = tmp_path / 'file' / 'out'
    runs = tmp_path / 'runs'
    (runs / 'run').mkdir(parents=True)
    (runs / 'run' / 'config.json').write_text('{"encoder": "vgg16", "image_shape": "32x64"}')
    (runs / 'run' / 'metrics.json').write_text('{"epochs": [{"epoch": 1, "train_loss": 1}]}')
    fn, argv = {
        'evaluate': (evaluate.main, ['--model', run_dir, '--data-dir', run_data,
                                     '--output-dir', out]),
        'predict': (predict.main, ['--model', run_dir, inputs, '--output-dir', out]),
        'export': (export.main, ['--model', run_dir, '--formats', 'frozen', '--output-dir', out]),
        'plot': (plot.main, [runs / 'run', '--output', out / 'curve.png'])}[command]
    assert cli.main_guard(fn, [str(a) for a in argv]) == 2
    (line,) = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert re.fullmatch(r'error: .*file.*: Not a directory; check that the folder exists and is '
                        r'writable and that the disk has space', line), line
    assert sorted(os.listdir(tmp_path)) == ['file', 'runs']  # no temporary file left behind
