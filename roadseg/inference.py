"""The one inference path: load any model the project writes and segment images at their own
size with it. main.py's samples, evaluate.py, predict.py and export.py's checks all run models
through `segment`; drawing the result is roadseg.drawing's.

`load_model(path)` opens a run folder, main.py's SavedModel, export.py's serving SavedModel, a
frozen graph (.pb), a TFLite model (.tflite) or an ONNX model (.onnx); each needs the fcn.json
that main.py and export.py write beside it (in the SavedModel folder, or in the folder holding
the file). TensorFlow is imported only to open a SavedModel or a frozen graph: a TFLite model
runs on LiteRT alone, and an ONNX model on onnxruntime alone (imported only then: the onnx
extra), without TensorFlow's 600 MB and seconds of start-up. `session_model` wraps a graph in a
live session (training) the same way.
"""
import os
import re

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from roadseg import files, metrics, streams
from roadseg.errors import UserError
from roadseg.graph_mode import import_tensorflow, quiet_stderr
from roadseg.images import resize_image, resize_probabilities
from roadseg.model_info import MODEL_INFO, ModelInfo

# The file each export format is written to (roadseg.export writes them, load_model reads them)
EXPORT_FILES = {'savedmodel': 'savedmodel', 'frozen': 'model.pb',
                'tflite32': 'model_float32.tflite', 'tflite16': 'model_float16.tflite',
                'int8': 'model_int8.tflite', 'onnx': 'model.onnx'}


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

class Model:
    """A loaded model: `model(images)` maps RGB images at the training size ([N, H, W, 3], uint8
    or float in 0..255) to float32 class probabilities [N, H, W, C].

    `kind` is savedmodel (main.py's), serving (export.py's uint8 SavedModel), frozen,
    tflite-float32, tflite-float16, tflite-int8, onnx or session (a graph being trained); `info` is
    its fcn.json, a roadseg.model_info.ModelInfo. With `flip` set, each image is also segmented
    mirrored and the two predictions averaged (test-time augmentation: steadier edges for twice
    the inference time).
    With `refine` set, `refine(image, probabilities)` post-processes each image's probabilities
    at its own size (the dense CRF of --crf, roadseg.crf).
    """

    def __init__(self, path, kind, info, run, close=lambda: None):
        self.path, self.kind, self.info = path, kind, info
        self.image_shape, self.num_classes = info.image_shape, info.num_classes
        self.flip, self.refine = False, None
        self._run, self._close = run, close

    def __call__(self, images, flip=None):
        """Probabilities for `images`; `flip` (default: the model's own setting) averages them
        with the mirrored images' for this call."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (*self.image_shape, 3):
            raise ValueError(f'{self.path} takes images [N, {self.image_shape[0]}, '
                             f'{self.image_shape[1]}, 3], not {list(images.shape)}')
        probabilities = self._run(images)
        if self.flip if flip is None else flip:
            mirrored = self._run(np.ascontiguousarray(images[:, :, ::-1]))
            probabilities = (probabilities + mirrored[:, :, ::-1]) / 2
        return probabilities

    def close(self):
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def model_folder(path):
    """The SavedModel folder of a run folder (its model/), of a SavedModel path itself, or of
    TensorFlow Serving's model base path (its highest numbered version, as export.py writes)."""
    for folder in (os.path.join(path, 'model'), path):
        if os.path.isfile(os.path.join(folder, 'saved_model.pb')):
            return folder
    versions = [int(name) for name in os.listdir(path) if name.isdigit() and os.path.isfile(
        os.path.join(path, name, 'saved_model.pb'))] if os.path.isdir(path) else []
    if versions:
        return os.path.join(path, str(max(versions)))
    raise UserError(f'--model {path}: neither a run folder with model/ nor a SavedModel')


def load_model(path, flip=False, refine=None):
    """The model at `path`: a run folder (its model/), a SavedModel folder (main.py's, or
    export.py's serving model), a frozen graph `.pb`, a TFLite `.tflite` or an ONNX `.onnx`
    file, as a Model (averaging each prediction with its mirror image's with `flip`,
    post-processed by `refine`)."""
    model = _load(path)
    model.flip, model.refine = flip, refine
    return model


def _load(path):
    """load_model's loader for each kind of model."""
    if not os.path.exists(path):
        raise UserError(f'--model {path}: no such file or folder')
    if os.path.isdir(path):
        folder = model_folder(path)
        _verify(path, folder)
        return _saved_model(folder, ModelInfo.read(folder, path))
    loaders = {'.pb': _frozen_graph, '.tflite': _tflite, '.onnx': _onnx}
    loader = loaders.get(os.path.splitext(path)[1].lower())
    if loader is None:
        raise UserError(f'--model {path}: not a model; expected a run folder, a '
                        f'SavedModel folder, a frozen graph (.pb), a TFLite file (.tflite) or an '
                        f'ONNX file (.onnx)')
    files.regular_file(path, files.MAX_MODEL_BYTES, 'model', 'give --model a model file')
    folder = os.path.dirname(path) or '.'
    _verify(path, folder, [os.path.basename(path), MODEL_INFO])
    return loader(path, ModelInfo.read(folder, path))


def _verify(path, folder, names=None):
    """Stop when the model's files do not match the manifest.json written with them: every
    file the model folder's lists or, for a model file, the file and the fcn.json beside it,
    as the folder holding them lists them (export.py lists both)."""
    reason = files.manifest_problem(folder, names)
    if reason:
        raise UserError(f'--model {path}: {reason}; the model is damaged: copy or export it '
                        f'again')


def _check(path, info, input_shape, output_shape):
    """Stop when the model's static input size or class count contradicts its fcn.json."""
    height, width = info.image_shape
    if list(input_shape[1:3]) not in ([height, width], [None, None]):
        raise UserError(f'--model {path}: takes {input_shape[1]}x{input_shape[2]} images '
                        f'but its {MODEL_INFO} says {height}x{width}; that {MODEL_INFO} '
                        f'belongs to another model')
    if output_shape[-1] not in (info.num_classes, None):
        raise UserError(f'--model {path}: predicts {output_shape[-1]} classes but its '
                        f'{MODEL_INFO} says {info.num_classes}; that {MODEL_INFO} '
                        f'belongs to another model')


def session_model(sess, image, probabilities, info, feeds=None, path='the session',
                  kind='session', close=lambda: None):
    """A Model running `probabilities` from `image` (uint8 or float32) in `sess`; `close` is
    called when the model is closed (a loaded model's closes its session)."""
    _check(path, info, _dims(image, 4), _dims(probabilities, 4))
    dtype = image.dtype.as_numpy_dtype

    def run(images):
        return sess.run(probabilities, {image: _as_dtype(images, dtype), **(feeds or {})})
    return Model(path, kind, info, run, close)


def _session_model(path, kind, info, sess, image, probabilities, feeds=None):
    """session_model for a session of its own, which is closed with the model (or at once
    when the model does not fit its fcn.json)."""
    try:
        return session_model(sess, image, probabilities, info, feeds, path, kind, sess.close)
    except UserError:
        sess.close()
        raise


def _dims(tensor, rank):
    """A tensor's static shape as a list, None for unknown sizes."""
    return tensor.shape.as_list() if tensor.shape.rank is not None else [None] * rank


def _as_dtype(images, dtype):
    """Images in 0..255 as `dtype` (rounded and clipped for integer types)."""
    if np.issubdtype(dtype, np.integer) and images.dtype != dtype:
        return np.clip(np.round(images), 0, 255).astype(dtype)
    return images.astype(dtype, copy=False)


def _saved_model(folder, info):
    """main.py's SavedModel (float images and keep_prob in) or export.py's (uint8 images in)."""
    tf1 = import_tensorflow().compat.v1
    sess = tf1.Session(graph=tf1.Graph())
    try:
        meta = tf1.saved_model.loader.load(sess, ['serve'], folder)
        signature = meta.signature_def['serving_default']
        image = sess.graph.get_tensor_by_name(signature.inputs['image'].name)
        probabilities = sess.graph.get_tensor_by_name(signature.outputs['probabilities'].name)
    except (OSError, ValueError, RuntimeError, KeyError, tf1.errors.OpError) as e:
        sess.close()  # OpError: a damaged variables file (DataLossError) without a manifest
        raise UserError(f'{folder}: not a model written by main.py or export.py, or damaged '
                        f'({str(e).splitlines()[0]})') from None
    keep_prob = signature.inputs.get('keep_prob')
    return _session_model(folder, 'serving' if image.dtype == tf1.uint8 else 'savedmodel', info,
                          sess, image, probabilities,
                          {keep_prob.name: 1.0} if keep_prob is not None else None)


def _frozen_graph(path, info):
    """export.py's frozen GraphDef: `image` (float32) in, `probabilities` out."""
    from google.protobuf.message import DecodeError
    tf1 = import_tensorflow().compat.v1
    graph = tf1.Graph()
    try:
        graph_def = tf1.GraphDef()
        graph_def.ParseFromString(files.read_limited(path, files.MAX_MODEL_BYTES, 'model'))
        with graph.as_default():
            tf1.import_graph_def(graph_def, name='')
        image = graph.get_tensor_by_name('image:0')
        probabilities = graph.get_tensor_by_name('probabilities:0')
    except (OSError, DecodeError, ValueError, KeyError) as e:
        raise UserError(f'--model {path}: not a frozen graph written by export.py '
                        f'({str(e).splitlines()[0]})') from None
    return _session_model(path, 'frozen', info, tf1.Session(graph=graph), image, probabilities)


def _tflite(path, info):
    """export.py's TFLite model, run one image at a time (its tensors are sized for one image:
    the decoder's output shapes are folded to batch 1 at conversion). Integer models take and
    return tensors quantized with their own scale and zero point."""
    try:
        with quiet_stderr():  # without LiteRT's notice that XNNPACK runs the model
            interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
            interpreter.allocate_tensors()
        (image,), (probabilities,) = (interpreter.get_input_details(),
                                      interpreter.get_output_details())
    except (ValueError, RuntimeError) as e:
        raise UserError(f'--model {path}: not a TFLite model '
                        f'({str(e).splitlines()[0]})') from None
    _check(path, info, image['shape'].tolist(), probabilities['shape'].tolist())
    if np.issubdtype(image['dtype'], np.integer):
        kind = 'tflite-int8'
    elif any(t['dtype'] == np.float16 for t in interpreter.get_tensor_details()):
        kind = 'tflite-float16'
    else:
        kind = 'tflite-float32'

    def run(images):
        outputs = []
        for one in images:
            interpreter.set_tensor(image['index'], _quantize(one[None], image))
            interpreter.invoke()
            outputs.append(_dequantize(interpreter.get_tensor(probabilities['index']),
                                       probabilities))
        return np.concatenate(outputs)
    return Model(path, kind, info, run)


def _onnx(path, info):
    """export.py's ONNX model, on onnxruntime's CPU provider with a thread per core, as LiteRT
    runs TFLite: `image` (float32 RGB 0..255, any batch) in, `probabilities` out. onnxruntime is
    imported here only; without it (the onnx extra) ModuleNotFoundError is raised as it is."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    options.log_severity_level = 3  # errors only: not its notices about unused initializers
    try:
        session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        (image,), (probabilities,) = session.get_inputs(), session.get_outputs()
        if image.type != 'tensor(float)':
            raise ValueError(f'its input is {image.type}, not tensor(float)')
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) are Exceptions
        reason = re.sub(r'^\[ONNXRuntimeError\] : \d+ : \w+ : ', '', str(e).splitlines()[0])
        raise UserError(f'--model {path}: not an ONNX model written by export.py '
                        f'({reason})') from None
    _check(path, info, *([n if isinstance(n, int) else None for n in tensor.shape]
                         for tensor in (image, probabilities)))

    def run(images):
        return session.run([probabilities.name], {image.name: _as_dtype(images, np.float32)})[0]
    return Model(path, 'onnx', info, run)


def _quantize(values, details):
    """Float values as the TFLite tensor described by `details` (quantized when integer)."""
    if not np.issubdtype(details['dtype'], np.integer):
        return values.astype(details['dtype'])
    scale, zero_point = details['quantization']
    if scale == 0:  # an integer input taken as it is (the int8 export's image bytes)
        scale, zero_point = 1, 0
    if values.dtype == details['dtype'] and (scale, zero_point) == (1, 0):
        return values  # uint8 images into a uint8 input: nothing to convert
    limits = np.iinfo(details['dtype'])
    return np.clip(np.round(values / scale + zero_point), limits.min, limits.max) \
        .astype(details['dtype'])


def _dequantize(values, details):
    """A TFLite output tensor as float32 values."""
    if not np.issubdtype(details['dtype'], np.integer):
        return values.astype(np.float32)
    scale, zero_point = details['quantization']
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------

def segment(model, images, rows=None, flip=None):
    """Class probabilities [height, width, classes] at each image's own size. The model sees
    each image (or only its `rows`, (top, bottom) per image) resized to its training size;
    rows outside are class 0 (probability 0 for every other class). `flip` as in Model."""
    rows = rows or [(0, image.shape[0]) for image in images]
    batch = np.stack([model_input(image, span, model.image_shape)
                      for image, span in zip(images, rows)])
    return [at_image_size(model, image, probabilities, span)
            for image, span, probabilities in zip(images, rows, model(batch, flip))]


def segment_stream(model, frames, batch_size, depth=2):
    """Yield (frame, probabilities) for each of `frames` (each with .image and .rows), in order,
    as `segment` gives them. Reading and resizing the frames, the model, and the consumer's
    work (with resizing back) run on three threads, `depth` batches of `batch_size` apart: on a
    video, decoding, the model and drawing and encoding overlap."""
    def inputs():
        for batch in streams.batched(frames, batch_size):
            yield batch, np.stack([model_input(frame.image, frame.rows, model.image_shape)
                                   for frame in batch])

    def outputs():
        for batch, images in streams.threaded(inputs(), depth):
            yield batch, model(images)

    for batch, probabilities in streams.threaded(outputs(), depth):
        for frame, one in zip(batch, probabilities):
            yield frame, at_image_size(model, frame.image, one, frame.rows)


def model_input(image, rows, shape):
    """What the model sees of `image`: its `rows` (top, bottom) resized to the training
    `shape`."""
    top, bottom = rows
    return resize_image(image[top:bottom], shape)


def at_image_size(model, image, probabilities, rows):
    """The model's `probabilities` for the `rows` of `image` at the image's own size
    (full_size), refined by the model's `refine` if it has one."""
    probabilities = full_size(probabilities, image.shape[:2], rows)
    return model.refine(image, probabilities) if model.refine else probabilities


def full_size(probabilities, size, rows):
    """The model's `probabilities` for the `rows` (top, bottom) of an image of `size`
    (height, width), resized back to those rows; rows outside are class 0."""
    top, bottom = rows
    if (top, bottom) == (0, size[0]):
        return resize_probabilities(probabilities, size)
    full = np.zeros((*size, probabilities.shape[-1]), np.float32)
    full[..., 0] = 1
    full[top:bottom] = resize_probabilities(probabilities, (bottom - top, size[1]))
    return full


def default_threshold(num_classes):
    """The road threshold every command and the API use by default: 0.5 for a two-class (road)
    model, None (the most probable class) for more classes."""
    return 0.5 if metrics.is_road_model(num_classes) else None


def classes_of(probabilities, threshold=None):
    """The class map: with a `threshold` (two classes), road where its probability is at least
    that; else the most probable class."""
    if threshold is not None and probabilities.shape[-1] == 2:
        return (probabilities[..., 1] >= threshold).astype(np.uint8)
    return probabilities.argmax(-1).astype(np.uint8)
