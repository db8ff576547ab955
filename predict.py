"""Segment images, folders, globs and videos with a trained model, and load any model the project
writes through one function.

    python predict.py --model runs/20261121-143000 drive.mp4 'frames/*.png' --output-dir out \\
        --overlay --mask --crop 120,-40

Every frame is resized to the model's training size, segmented, and the result resized back to
the frame's own size. Outputs, by flag (none given: overlays for images, an overlaid video for
videos): `--overlay` `<name>.png` (road in translucent green; with more classes every class in
its colour), `--mask` `<name>_mask.png` (class numbers), `--probability` 8-bit road probability
PNGs (KITTI's submission format, `um_000001` -> `um_road_000001.png`, else `<name>_prob.png`),
`--video` `<stem>_overlay.mp4` at the video's frame rate, `--gif` `<stem>_overlay.gif`. A video's
frames are named `<stem>_<frame number>`. Unreadable inputs are skipped and listed at the end.

`load_model(path)` opens a run folder, main.py's SavedModel, export.py's serving SavedModel, a
frozen graph (.pb) or a TFLite model (.tflite); each needs the fcn.json that main.py and
export.py write beside it (in the SavedModel folder, or in the folder holding the file).
TensorFlow is imported only to open a SavedModel or a frozen graph: a TFLite model runs on LiteRT
alone, without TensorFlow's 600 MB and seconds of start-up.
"""
import argparse
import collections
import contextlib
import dataclasses
import glob
import json
import os
import re
import sys
import time

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from tqdm import tqdm

import datasets
import helper
import metrics

MODEL_INFO = 'fcn.json'  # the model's training size, classes and data set, beside the model
REQUIRED_INFO = ('image_shape', 'num_classes', 'class_names', 'class_colors')
IMAGE_EXTENSIONS = datasets.IMAGE_EXTENSIONS
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov')
KITTI_NAME = re.compile(r'([a-z]+)_(\d+)')  # um_000001: category and number


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

class Model:
    """A loaded model: `model(images)` maps RGB images at the training size ([N, H, W, 3], uint8
    or float in 0..255) to float32 class probabilities [N, H, W, C].

    `kind` is savedmodel (main.py's), serving (export.py's uint8 SavedModel), frozen,
    tflite-float32, tflite-float16 or tflite-int8; `info` is its fcn.json. With `flip` set, each
    image is also segmented mirrored and the two predictions averaged (test-time augmentation:
    steadier edges for twice the inference time).
    """

    def __init__(self, path, kind, info, run, close):
        self.path, self.kind, self.info = path, kind, info
        self.image_shape = tuple(info['image_shape'])
        self.num_classes = info['num_classes']
        self.flip = False
        self._run, self._close = run, close

    def __call__(self, images):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (*self.image_shape, 3):
            raise ValueError(f'{self.path} takes images [N, {self.image_shape[0]}, '
                             f'{self.image_shape[1]}, 3], not {list(images.shape)}')
        probabilities = self._run(images)
        if self.flip:
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
    """The SavedModel folder of a run folder (its model/) or of a SavedModel path itself."""
    for folder in (os.path.join(path, 'model'), path):
        if os.path.isfile(os.path.join(folder, 'saved_model.pb')):
            return folder
    raise helper.UserError(f'--model {path}: neither a run folder with model/ nor a SavedModel')


def read_info(folder, model_path):
    """The fcn.json in `folder`: the training size, classes and data set of the model."""
    path = os.path.join(folder, MODEL_INFO)
    try:
        with open(path) as f:
            info = json.load(f)
    except OSError:
        raise helper.UserError(f'--model {model_path}: no {MODEL_INFO} beside it; keep the '
                               f'{MODEL_INFO} that main.py or export.py wrote with the model') \
            from None
    except ValueError as e:
        raise helper.UserError(f'{path}: not valid JSON ({e})') from None
    missing = [key for key in REQUIRED_INFO if key not in info]
    if missing:
        raise helper.UserError(f'{path}: no {missing[0]!r}; not the {MODEL_INFO} of a model')
    return info


def load_model(path, flip=False):
    """The model at `path`: a run folder (its model/), a SavedModel folder (main.py's, or
    export.py's serving model), a frozen graph `.pb` or a TFLite `.tflite` file, as a Model
    (averaging each prediction with its mirror image's with `flip`)."""
    model = _load(path)
    model.flip = flip
    return model


def _load(path):
    """load_model's loader for each kind of model."""
    if not os.path.exists(path):
        raise helper.UserError(f'--model {path}: no such file or folder')
    if os.path.isdir(path):
        folder = model_folder(path)
        return _saved_model(folder, read_info(folder, path))
    loaders = {'.pb': _frozen_graph, '.tflite': _tflite}
    loader = loaders.get(os.path.splitext(path)[1].lower())
    if loader is None:
        raise helper.UserError(f'--model {path}: not a model; expected a run folder, a '
                               f'SavedModel folder, a frozen graph (.pb) or a TFLite file (.tflite)')
    return loader(path, read_info(os.path.dirname(path) or '.', path))


def _check(path, info, input_shape, output_shape):
    """Stop when the model's static input size or class count contradicts its fcn.json."""
    height, width = info['image_shape']
    if list(input_shape[1:3]) not in ([height, width], [None, None]):
        raise helper.UserError(f'--model {path}: takes {input_shape[1]}x{input_shape[2]} images '
                               f'but its {MODEL_INFO} says {height}x{width}; that {MODEL_INFO} '
                               f'belongs to another model')
    if output_shape[-1] not in (info['num_classes'], None):
        raise helper.UserError(f'--model {path}: predicts {output_shape[-1]} classes but its '
                               f'{MODEL_INFO} says {info["num_classes"]}; that {MODEL_INFO} '
                               f'belongs to another model')


def _session_model(path, kind, info, sess, image, probabilities, feeds=None):
    """A Model running `probabilities` from `image` (uint8 or float32) in `sess`, which it
    closes when closed."""
    try:
        _check(path, info, _dims(image, 4), _dims(probabilities, 4))
    except helper.UserError:
        sess.close()
        raise
    dtype = image.dtype.as_numpy_dtype

    def run(images):
        return sess.run(probabilities, {image: _as_dtype(images, dtype), **(feeds or {})})
    return Model(path, kind, info, run, sess.close)


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
    tf1 = helper.import_tensorflow().compat.v1
    sess = tf1.Session(graph=tf1.Graph())
    try:
        meta = tf1.saved_model.loader.load(sess, ['serve'], folder)
        signature = meta.signature_def['serving_default']
        image = sess.graph.get_tensor_by_name(signature.inputs['image'].name)
        probabilities = sess.graph.get_tensor_by_name(signature.outputs['probabilities'].name)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        sess.close()
        raise helper.UserError(f'{folder}: not a model written by main.py or export.py '
                               f'({str(e).splitlines()[0]})') from None
    keep_prob = signature.inputs.get('keep_prob')
    return _session_model(folder, 'serving' if image.dtype == tf1.uint8 else 'savedmodel', info,
                          sess, image, probabilities,
                          {keep_prob.name: 1.0} if keep_prob is not None else None)


def _frozen_graph(path, info):
    """export.py's frozen GraphDef: `image` (float32) in, `probabilities` out."""
    from google.protobuf.message import DecodeError
    tf1 = helper.import_tensorflow().compat.v1
    graph = tf1.Graph()
    try:
        graph_def = tf1.GraphDef()
        with open(path, 'rb') as f:
            graph_def.ParseFromString(f.read())
        with graph.as_default():
            tf1.import_graph_def(graph_def, name='')
        image = graph.get_tensor_by_name('image:0')
        probabilities = graph.get_tensor_by_name('probabilities:0')
    except (OSError, DecodeError, ValueError, KeyError) as e:
        raise helper.UserError(f'--model {path}: not a frozen graph written by export.py '
                               f'({str(e).splitlines()[0]})') from None
    return _session_model(path, 'frozen', info, tf1.Session(graph=graph), image, probabilities)


def _tflite(path, info):
    """export.py's TFLite model, run one image at a time (its tensors are sized for one image:
    the decoder's output shapes are folded to batch 1 at conversion). Integer models take and
    return tensors quantized with their own scale and zero point."""
    try:
        with helper.quiet_stderr():  # without LiteRT's notice that XNNPACK runs the model
            interpreter = Interpreter(model_path=path, num_threads=os.cpu_count())
            interpreter.allocate_tensors()
        (image,), (probabilities,) = (interpreter.get_input_details(),
                                      interpreter.get_output_details())
    except (ValueError, RuntimeError) as e:
        raise helper.UserError(f'--model {path}: not a TFLite model '
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
    return Model(path, kind, info, run, lambda: None)


def _quantize(values, details):
    """Float values as the TFLite tensor described by `details` (quantized when integer)."""
    if not np.issubdtype(details['dtype'], np.integer):
        return values.astype(details['dtype'])
    scale, zero_point = details['quantization']
    if values.dtype == details['dtype'] and (scale, zero_point) == (1, 0):
        return values  # uint8 images into export.py's uint8 input: nothing to convert
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
# Inputs
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Source:
    """One input file: an image, or a video whose frame rate is known once it is opened."""
    path: str
    fps: float = None

    @property
    def stem(self):
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def video(self):
        return self.path.lower().endswith(VIDEO_EXTENSIONS)

    def frame_name(self, index):
        """What the outputs of frame `index` are named after: the image's stem, or the video's
        stem and the frame number."""
        return f'{self.stem}_{index:06d}' if self.video else self.stem


Frame = collections.namedtuple('Frame', 'source index image rows')  # rows: the crop, top..bottom


def _media(path):
    """Whether `path` is a file with an image or video extension."""
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def input_files(inputs, bad):
    """The files the INPUT arguments name: a file as given, a folder's images and videos
    (sorted), a glob's matching images and videos (sorted). An argument naming none of them is
    recorded in `bad` ({argument: message})."""
    paths = {}  # ordered, without repeats
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(filter(_media, glob.glob(os.path.join(glob.escape(item), '*'))))
            why = 'no images or videos in this folder'
        elif os.path.isfile(item):
            found, why = [item], None
        else:
            found = sorted(filter(_media, glob.glob(item)))
            why = 'no image or video matches this pattern' if glob.has_magic(item) else \
                'no such file or folder'
        if not found:
            bad[item] = f'{item}: {why}'
        paths.update(dict.fromkeys(found))
    return list(paths)


def read_source(source):
    """Yield the RGB frames of an image (one) or a video, read frame by frame."""
    if source.video:
        yield from read_video(source)
    elif source.path.lower().endswith(IMAGE_EXTENSIONS):
        yield helper.read_rgb(source.path)
    else:
        raise helper.UserError(f'{source.path}: unsupported file type; expected an image '
                               f'({" ".join(IMAGE_EXTENSIONS)}) or a video '
                               f'({" ".join(VIDEO_EXTENSIONS)})')


def read_video(source):
    """Yield a video's frames through imageio's ffmpeg plugin, setting `source.fps`."""
    def unreadable(e, after):
        return helper.UserError(f'{source.path}: cannot read video frames{after} '
                                f'({str(e).splitlines()[0]}); is it damaged or without video?')
    try:
        reader = iio2.get_reader(source.path, 'ffmpeg')
        source.fps = float(reader.get_meta_data().get('fps') or 25)
    except (OSError, RuntimeError, ValueError) as e:
        raise unreadable(e, '') from None
    count = 0
    with reader:
        try:
            for frame in reader:
                yield frame
                count += 1
        except (OSError, RuntimeError, ValueError) as e:
            raise unreadable(e, f' after frame {count}') from None
    if count == 0:
        raise helper.UserError(f'{source.path}: a video without frames')


def frame_estimate(source):
    """How many frames `source` will give, for the progress bar: a video's duration times its
    frame rate (0 when unreadable: that is reported when it is read), 1 for anything else."""
    if not source.video:
        return 1
    try:
        meta = iio.immeta(source.path, plugin='FFMPEG')
        return round(meta['duration'] * meta['fps'])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        return 0


def crop_rows(crop, height, path):
    """(top, bottom) rows of an image of `height` rows that --crop keeps (all without it)."""
    if crop is None:
        return 0, height
    top, bottom, _ = slice(*crop).indices(height)
    if bottom <= top:
        raise helper.UserError(f'{path}: --crop {crop[0]},{crop[1]} leaves none of its {height} '
                               f'rows')
    return top, bottom


def read_frames(sources, crop, bad):
    """Yield a Frame for every frame of every source; a source that cannot be read (or not to
    the end) is recorded in `bad` and the next one read."""
    for source in sources:
        try:
            for index, image in enumerate(read_source(source)):
                yield Frame(source, index, image, crop_rows(crop, image.shape[0], source.path))
        except helper.UserError as e:
            bad[source.path] = str(e)


def batched(items, size):
    """Lists of up to `size` consecutive items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------
# Segmentation and outputs
# ----------------------------------------------------------------------------------------------

def segment(model, frames):
    """Class probabilities [height, width, classes] at each frame's size. The model sees only
    the frame's crop rows, resized to its training size; rows outside are class 0 (probability
    0 for every other class)."""
    batch = np.stack([helper.resize_image(frame.image[slice(*frame.rows)], model.image_shape)
                      for frame in frames])
    results = []
    for frame, probabilities in zip(frames, model(batch)):
        full = np.zeros(frame.image.shape[:2] + (model.num_classes,), np.float32)
        full[..., 0] = 1
        top, bottom = frame.rows
        full[top:bottom] = helper.full_size(probabilities, (bottom - top, frame.image.shape[1]))
        results.append(full)
    return results


def classes_of(probabilities, threshold):
    """The class map: road where its probability is >= threshold for two classes, else the most
    probable class."""
    if probabilities.shape[-1] == 2:
        return (probabilities[..., 1] >= threshold).astype(np.uint8)
    return probabilities.argmax(-1).astype(np.uint8)


def probability_name(stem, label='road'):
    """The file name of an 8-bit road-probability PNG: KITTI's submission name for KITTI names
    (`um_000001` -> `um_road_000001.png`), else `<stem>_prob.png`."""
    match = KITTI_NAME.fullmatch(stem)
    return f'{match[1]}_{label}_{match[2]}.png' if match else f'{stem}_prob.png'


def open_video(path, fps, shape):
    """An H.264 MP4 writer. yuv420p, which every player plays, needs even sizes; odd-sized
    frames (KITTI's are 375 rows) are written as yuv444p, so the video keeps the frames' size.
    x264's veryfast preset: its default (medium) took 138 ms a KITTI frame here, more than the
    model, decoding and drawing together; veryfast takes 30 ms for a file no larger."""
    even = shape[0] % 2 == 0 and shape[1] % 2 == 0
    return iio2.get_writer(path, format='FFMPEG', fps=fps, codec='libx264',
                           pixelformat='yuv420p' if even else 'yuv444p', macro_block_size=1,
                           ffmpeg_log_level='error', output_params=['-preset', 'veryfast'])


def open_gif(path, fps):
    """A looping GIF writer (Pillow keeps the frames until it closes: for short clips)."""
    return iio2.get_writer(path, extension='.gif', mode='I', duration=1000 / fps, loop=0)


class VideoFailed(Exception):
    """Raised inside a video's writers to drop their half-written files."""


class Outputs:
    """Writes what the flags ask for at each frame's own size: overlays, masks and probability
    PNGs per frame; an overlaid MP4 and GIF per video. Every file is written under a temporary
    name and renamed when complete; a video that fails part-way leaves no video file."""

    def __init__(self, output_dir, args, info, bad):
        self.output_dir, self.args, self.bad = output_dir, args, bad
        self.colors = helper.overlay_colors(info['class_colors'])
        self.label = info.get('label') or 'road'
        self.source, self.writers, self.stack = None, [], None

    def write(self, frame, probabilities):
        if frame.source is not self.source:
            self.finish()
            self.source = frame.source
        classes = classes_of(probabilities, self.args.threshold)
        overlay = helper.overlay(frame.image, classes, self.colors)
        name, video = frame.source.frame_name(frame.index), frame.source.video
        if self.args.overlay or (self.args.default_outputs and not video):
            self.png(name + '.png', overlay)
        if self.args.mask:
            self.png(name + '_mask.png', classes)
        if self.args.probability:
            self.png(probability_name(name, self.label), metrics.quantize(probabilities[..., 1]))
        if video and (self.args.video or self.args.gif or self.args.default_outputs):
            if self.stack is None:
                self.open_writers(frame.source, overlay.shape)
            for writer in self.writers:
                writer.append_data(overlay)

    def png(self, name, pixels):
        with helper.atomic_path(os.path.join(self.output_dir, name)) as tmp:
            iio.imwrite(tmp, pixels, extension='.png')

    def open_writers(self, source, shape):
        self.stack, self.writers = contextlib.ExitStack(), []
        if self.args.video or self.args.default_outputs:
            self.add_writer(source.stem + '_overlay.mp4',
                            lambda path: open_video(path, source.fps, shape))
        if self.args.gif:
            self.add_writer(source.stem + '_overlay.gif', lambda path: open_gif(path, source.fps))

    def add_writer(self, name, opener):
        """A writer opened by `opener` on a temporary name, renamed to `name` by finish()."""
        tmp = self.stack.enter_context(helper.atomic_path(os.path.join(self.output_dir, name)))
        writer = opener(tmp)
        self.stack.callback(writer.close)
        self.writers.append(writer)

    def finish(self, failed=False):
        """Close the current video's writers: their files are renamed into place when the video
        was read to the end, dropped when it failed."""
        stack, self.stack, self.writers = self.stack, None, []
        if stack is None:
            return
        with contextlib.suppress(VideoFailed), stack:
            if failed or self.source.path in self.bad:
                raise VideoFailed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.finish(failed=exc_type is not None)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def crop_arg(text):
    """Parse TOP,BOTTOM: the rows the model sees, as a Python slice (a negative BOTTOM counts
    from the bottom edge, e.g. 120,-40)."""
    try:
        top, bottom = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not TOP,BOTTOM, e.g. 120,-40') \
            from None
    if top < 0 or 0 <= bottom <= top:
        raise argparse.ArgumentTypeError(
            f'{text!r}: TOP must be 0 or more and BOTTOM below it (or negative: from the bottom)')
    return top, bottom


def parse_args(argv=None):
    parser = helper.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image or video files (.mp4 .avi .mov), folders or globs')
    parser.add_argument('--model', required=True,
                        help='a run folder, a SavedModel folder, a frozen graph .pb or a .tflite')
    parser.add_argument('--output-dir', required=True, help='where the outputs are written')
    for flag, what in (('overlay', '<name>.png: the classes drawn over the image'),
                       ('mask', '<name>_mask.png: class numbers'),
                       ('probability', '8-bit road-probability PNGs, KITTI\'s submission format'),
                       ('video', '<stem>_overlay.mp4 for each video, at its frame rate'),
                       ('gif', '<stem>_overlay.gif for each video')):
        parser.add_argument('--' + flag, action='store_true', help=what)
    parser.add_argument('--crop', type=crop_arg, metavar='TOP,BOTTOM',
                        help='segment only these rows (e.g. 120,-40: without the sky and the '
                             'bonnet); the rest counts as not road')
    parser.add_argument('--threshold', type=float,
                        help='road where its probability is at least this (two-class models; '
                             'default 0.5)')
    parser.add_argument('--batch-size', type=int, default=8,
                        help='frames per model call (default: %(default)s)')
    parser.add_argument('--flip-tta', action='store_true',
                        help='average each prediction with that of the mirrored frame '
                             '(test-time augmentation, twice the inference time)')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error('argument --batch-size: must be at least 1')
    if args.threshold is not None and not 0 < args.threshold <= 1:
        parser.error('argument --threshold: must be above 0 and at most 1')
    args.default_outputs = not (args.overlay or args.mask or args.probability or args.video
                                or args.gif)  # then overlays for images, a video for videos
    return args


def check_options(args, model):
    """Options that need a two-class model."""
    if model.num_classes == 2:
        args.threshold = 0.5 if args.threshold is None else args.threshold
    elif args.probability or args.threshold is not None:
        flag = '--probability' if args.probability else '--threshold'
        raise helper.UserError(f'{flag}: for two-class (road) models; {args.model} has '
                               f'{model.num_classes} classes')


def check_names(sources, output_dir):
    """Stop before two inputs write outputs of the same name, or an overlay replaces its input."""
    stems = {}
    for source in sources:
        other = stems.setdefault(source.stem, source.path)
        if other != source.path:
            raise helper.UserError(f'{other} and {source.path} would write outputs of the same '
                                   f'name; rename one or run them separately')
        overlay = os.path.join(output_dir, source.stem + '.png')
        if os.path.abspath(overlay) == os.path.abspath(source.path):
            raise helper.UserError(f'--output-dir {output_dir} holds the input {source.path}, '
                                   f'which its overlay would replace; choose another folder')


def main(argv=None):
    args = parse_args(argv)
    bad = {}
    with load_model(args.model, flip=args.flip_tta) as model:
        check_options(args, model)
        sources = [Source(path) for path in input_files(args.inputs, bad)]
        check_names(sources, args.output_dir)
        os.makedirs(args.output_dir, exist_ok=True)
        start, count = time.perf_counter(), 0
        with Outputs(args.output_dir, args, model.info, bad) as outputs, \
                tqdm(total=sum(map(frame_estimate, sources)), unit='frame', desc='Segmenting',
                     disable=None) as bar:
            for frames in batched(read_frames(sources, args.crop, bad), args.batch_size):
                for frame, probabilities in zip(frames, segment(model, frames)):
                    outputs.write(frame, probabilities)
                count += len(frames)
                bar.update(len(frames))
        seconds = time.perf_counter() - start
    print(f'{count} frames in {seconds:.1f} s: {count / max(seconds, 1e-9):.1f} frames/s '
          f'(model {model.kind}); outputs in {args.output_dir}')
    for message in bad.values():
        print(f'skipped {message}', file=sys.stderr)
    if bad:
        raise helper.PartlyFailed(f'{len(bad)} input(s) failed (listed above); the others were '
                                  f'processed')


if __name__ == '__main__':
    sys.exit(helper.main_guard(main))
