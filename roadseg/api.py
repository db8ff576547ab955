"""The Python API: `roadseg.load(name_or_path)` gives a Segmenter, which segments an image (an
array, a PIL image or a file) at its own size, through the same inference path as predict.py
and serve.py. A shipped or exported .tflite model runs without TensorFlow, and so does an exported
.onnx model (on onnxruntime, the onnx extra).

    import roadseg
    road = roadseg.load('camvid-road')
    classes = road.segment('street.jpg')  # HxW class numbers: 1 is road
"""
from __future__ import annotations

import os
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import Image

from roadseg import cli, images, inference, zoo
from roadseg.errors import UserError

# What an image may be: HxWx3 uint8 RGB, a PIL image, or the path of an image file
ImageLike = Union[np.ndarray, Image.Image, str, 'os.PathLike[str]']


class Segmenter:
    """A loaded model: its `classes`, `colors` and `input_size`; `segment` and `probabilities`
    of one image at the image's own size, and their `_batch` forms for a list. Close it (or use
    it in a `with` block) to free the model."""

    def __init__(self, model: inference.Model, name: str) -> None:
        self.model, self.name = model, name
        self.threshold = inference.default_threshold(model.num_classes)

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the class numbers."""
        return list(self.model.info.class_names)

    @property
    def colors(self) -> list[Tuple[int, int, int]]:
        """Each class's RGB colour."""
        return [tuple(color) for color in self.model.info.class_colors]

    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) the model sees; any image is resized to it and back."""
        return tuple(self.model.image_shape)

    def probabilities(self, image: ImageLike) -> np.ndarray:
        """Class probabilities, float32 [height, width, classes] at the image's size."""
        return self.probabilities_batch([image])[0]

    def probabilities_batch(self, images_: Sequence[ImageLike]) -> list[np.ndarray]:
        """`probabilities` of each image of a list, in one model call."""
        return inference.segment(self.model, [as_rgb(image) for image in images_])

    def segment(self, image: ImageLike) -> np.ndarray:
        """The class map, uint8 [height, width] at the image's size: class numbers, as
        `classes` names them."""
        return self.segment_batch([image])[0]

    def segment_batch(self, images_: Sequence[ImageLike]) -> list[np.ndarray]:
        """`segment` of each image of a list, in one model call."""
        return [inference.classes_of(p, self.threshold)
                for p in self.probabilities_batch(images_)]

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f'Segmenter({self.name!r}: {len(self.classes)} classes, input '
                f'{self.input_size[0]}x{self.input_size[1]}, {self.model.kind})')


def load(name_or_path: Union[str, 'os.PathLike[str]', None] = None,
         flip: bool = False) -> Segmenter:
    """The model `name_or_path`: a shipped model's name (roadseg.zoo.SHIPPED; None: camvid-road),
    a run folder, a SavedModel folder, a frozen graph .pb, a .tflite or a .onnx file. With
    `flip`, each prediction is averaged with its mirror image's. A missing or unreadable model
    raises ValueError; a model whose runtime is not installed (TensorFlow for a SavedModel or a
    .pb, onnxruntime for a .onnx), ModuleNotFoundError naming the extra to install."""
    name = zoo.DEFAULT if name_or_path is None else os.fspath(name_or_path)
    try:
        return Segmenter(inference.load_model(zoo.resolve(name), flip=flip), name)
    except UserError as e:  # the commands' wording names their flag; a caller gave an argument
        raise ValueError(str(e).replace(f'--model {name}: ', f'{name}: ')) from None
    except ModuleNotFoundError as e:  # a SavedModel without TensorFlow, a .onnx without onnx
        if e.name not in cli.EXTRAS:
            raise
        raise ModuleNotFoundError(cli.missing_extra(e.name, f'roadseg.load({name!r})'),
                                  name=e.name) from None


def as_rgb(image: ImageLike) -> np.ndarray:
    """An image as HxWx3 uint8 RGB: an array as it is (checked), a PIL image upright and in
    RGB, a file read as every command reads it."""
    if isinstance(image, (str, os.PathLike)):
        return images.read_rgb(os.fspath(image))
    if isinstance(image, Image.Image):
        return np.asarray(images.upright(image).convert('RGB'))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f'an image array is HxWx3 uint8 RGB, not {array.dtype} '
                         f'{list(array.shape)}')
    return array

