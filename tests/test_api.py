"""The Python API (roadseg.load, Segmenter): the README's example as written, images in every
form at their own size, the batch form, one-line refusals, and no TensorFlow for a .tflite or
a .onnx."""
import os
import re
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

import roadseg
from roadseg import inference, zoo
from tests.conftest import ROOT, write_tiny_onnx

STREET = np.tile(np.linspace(40, 220, 200, dtype=np.uint8)[None, :, None], (120, 1, 3))


@pytest.fixture(scope='module')
def road():
    with roadseg.load('camvid-road') as model:
        yield model


def test_the_readmes_example_runs_as_written(monkeypatch):
    readme = open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()
    example = re.search(r'## Use it from Python\n\n```python\n(.*?)```', readme, re.S).group(1)
    monkeypatch.chdir(ROOT)  # from a clean clone: examples/street.jpg is tracked
    names = {}
    exec(example, names)
    assert names['classes'].shape == (188, 621) and names['classes'].dtype == np.uint8
    assert 0.2 < (names['classes'] == 1).mean() < 0.6  # the street's road: about a third
    names['road'].close()


def test_an_image_in_every_form_is_segmented_at_its_own_size(road, tmp_path):
    iio.imwrite(tmp_path / 'street.png', STREET)
    forms = [STREET, Image.fromarray(STREET), str(tmp_path / 'street.png'),
             tmp_path / 'street.png']
    maps = [road.segment(form) for form in forms]
    assert all(m.shape == (120, 200) and m.dtype == np.uint8 for m in maps)
    assert all(np.array_equal(m, maps[0]) for m in maps)
    probabilities = road.probabilities(STREET)
    assert probabilities.shape == (120, 200, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-2)
    # the same path as predict.py and serve.py: inference.segment with predict's threshold
    (expected,) = inference.segment(road.model, [STREET])
    assert np.array_equal(maps[0], inference.classes_of(expected, 0.5))
    small = STREET[:40, :90]
    batch = road.segment_batch([STREET, small])
    assert [m.shape for m in batch] == [(120, 200), (40, 90)]
    assert np.array_equal(batch[1], road.segment(small))


def test_what_the_model_is(road):
    assert road.classes == ['other', 'road'] and road.input_size == (352, 480)
    assert road.colors[1] == (128, 64, 128) and 'camvid-road' in repr(road)


@pytest.mark.parametrize('image, message', [
    (np.zeros((4, 5)), r'an image array is HxWx3 uint8 RGB, not float64 \[4, 5\]'),
    (np.zeros((4, 5, 3), np.float32), 'not float32'),
    (np.zeros((4, 5, 4), np.uint8), r'\[4, 5, 4\]'),
])
def test_an_array_that_is_not_an_rgb_image_is_refused(road, image, message):
    with pytest.raises(ValueError, match=message):
        road.segment(image)


def test_a_model_that_is_not_there_is_one_line_without_the_commands_words(tmp_path):
    with pytest.raises(ValueError, match=r'^\S*nowhere.tflite: no such file or folder$'):
        roadseg.load(tmp_path / 'nowhere.tflite')
    assert roadseg.load(None).name == zoo.DEFAULT


def with_tensorflow_blocked(tmp_path, code, *args):
    """The lines `code` prints in a fresh Python process in which `import tensorflow` fails."""
    (tmp_path / 'tensorflow').mkdir(parents=True)
    (tmp_path / 'tensorflow' / '__init__.py').write_text('raise ImportError("loaded")')
    done = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}'))
    assert done.returncode == 0, done.stderr[-1000:]
    return done.stdout.splitlines()


def test_the_api_runs_a_tflite_model_with_tensorflow_blocked(tmp_path):
    code = ('import sys, numpy, roadseg\n'
            'road = roadseg.load("camvid-road")\n'
            'print(road.segment(numpy.zeros((30, 40, 3), numpy.uint8)).shape)\n'
            'print("onnxruntime" in sys.modules)')  # imported for a .onnx only
    assert with_tensorflow_blocked(tmp_path, code) == ['(30, 40)', 'False']


def test_the_api_runs_an_onnx_model_with_tensorflow_blocked(tmp_path):
    pytest.importorskip('onnxruntime')
    path = write_tiny_onnx(tmp_path / 'model')
    code = ('import sys, numpy, roadseg\n'
            'road = roadseg.load(sys.argv[1])\n'
            'street = numpy.zeros((30, 40, 3), numpy.uint8)\n'
            'street[20:, :, 0] = 250  # the tiny model\'s road: red\n'
            'classes = road.segment(street)\n'
            'print(classes.shape, classes[:20].max(), classes[20:].min(), road.model.kind)')
    assert with_tensorflow_blocked(tmp_path / 'blocked', code, path) == ['(30, 40) 0 1 onnx']
