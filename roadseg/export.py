"""Exports of a trained model for deployment, each checked against the original.

Formats (FILES): a TensorFlow Serving SavedModel that takes uint8 images of any size, a frozen
inference GraphDef, TFLite float32, float16 and full-integer int8 models whose transposed
convolutions are rewritten as sub-pixel convolutions, and the frozen graph in ONNX (tf2onnx, the
onnx extra, imported only for it). Each export is loaded back with
inference.load_model and scored next to the original (check): the IoU difference, the largest
probability difference and the share of pixels whose class agrees, against TOLERANCES.
"""
import collections
import os
import warnings

import numpy as np

from roadseg import evaluation, files, images, inference, media
from roadseg.data import layouts, reading
from roadseg.errors import UserError
from roadseg.graph_mode import import_tensorflow, quiet_stderr

tf = import_tensorflow()
tf1 = tf.compat.v1

FILES = inference.EXPORT_FILES

# (largest probability difference, largest IoU difference) each export may show: float32 exports
# differ from TensorFlow's own kernels by rounding only (LiteRT's and onnxruntime's sum in other
# orders); float16 weights keep ~3 digits; int8 moves probabilities by many 1/256 steps near
# class boundaries, so only the IoU is bounded
TOLERANCES = {'savedmodel': (1e-4, 1e-3), 'frozen': (1e-4, 1e-3), 'tflite32': (1e-3, 1e-3),
              'tflite16': (2e-2, 5e-3), 'int8': (None, 2e-2), 'onnx': (1e-3, 1e-3)}
ONNX_OPSET = 17  # fixed, so that an export does not change with the tf2onnx installed
ONNX_INPUT_BYTES = 32 << 20  # constants this large pass the conversion as inputs (onnx_model)
ONNX_PACKAGES = ('tf2onnx', 'onnxruntime')  # to convert, and to check the result
SERVING_VERSION = '1'  # the serving SavedModel's version folder, as TensorFlow Serving expects
RANDOM_OPS = ('RandomUniform', 'RandomStandardNormal', 'TruncatedNormal')


# ----------------------------------------------------------------------------------------------
# The frozen inference graph
# ----------------------------------------------------------------------------------------------

def frozen_graph(folder, info):
    """main.py's SavedModel in `folder` as an inference-only GraphDef: variables folded to
    constants, keep_prob fixed at 1.0 and dropout removed. Input `image` (float32 RGB 0..255,
    [N, H, W, 3] at the training size), output `probabilities`."""
    with tf.Graph().as_default() as graph, tf1.Session() as sess:
        signature = tf1.saved_model.loader.load(sess, ['serve'], folder) \
            .signature_def['serving_default']
        names = {key: value.name for key, value in signature.inputs.items()}
        output = signature.outputs['probabilities'].name
        constants = tf1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [output.split(':')[0]])
    with tf.Graph().as_default() as graph:
        image = tf1.placeholder(tf.float32, [None, *info.image_shape, 3], 'image')
        inputs = {names['image']: image}
        used = {node.name for node in constants.node}
        if 'keep_prob' in names and _producer(names['keep_prob']) in used:  # VGG's dropout
            inputs[names['keep_prob']] = tf.constant(1.0, name='keep_prob_1')
        (probabilities,) = tf.graph_util.import_graph_def(constants, inputs, [output], name='fcn')
        tf.identity(probabilities, 'probabilities')
    graph_def = tf1.graph_util.extract_sub_graph(graph.as_graph_def(), ['probabilities'])
    return tf1.graph_util.extract_sub_graph(strip_dropout(graph_def, folder), ['probabilities'])


def _producer(name):
    """The node that produces the tensor `name` (`node:1`, `^node` -> `node`)."""
    return name.lstrip('^').split(':')[0]


def downstream(graph_def, start, ops=None):
    """The names of `start` and of every node that depends on it, nearest first; with `ops`,
    only through nodes of those ops."""
    consumers = {}
    for node in graph_def.node:
        for name in node.input:
            if ops is None or node.op in ops:
                consumers.setdefault(_producer(name), []).append(node.name)
    seen, queue = {start: None}, collections.deque([start])
    while queue:
        for name in consumers.get(queue.popleft(), []):
            if name not in seen:
                seen[name] = None
                queue.append(name)
    return list(seen)


def strip_dropout(graph_def, path):
    """Replace each dropout mask (keep_prob being 1) by the tensor it masks, in place.

    Dropout multiplies (TF1: `x / keep_prob * floor(keep_prob + noise)`) or selects (TF2:
    `where(noise >= rate, x / (1 - rate), 0)`) the image's features by a mask drawn from random
    noise; the op doing that is the nearest one downstream of the noise with an input computed
    from the image but not from the noise. It becomes an Identity of that input, and the noise
    is left unused. Any other random op is an error: the graph would not be deterministic.
    """
    from_image = set(downstream(graph_def, 'image'))
    nodes = {node.name: node for node in graph_def.node}
    for noise_op in [node.name for node in graph_def.node if node.op in RANDOM_OPS]:
        noise = downstream(graph_def, noise_op)
        after_noise = set(noise)
        masks = [(nodes[name], data) for name in noise
                 if nodes[name].op in ('Mul', 'SelectV2', 'Select')
                 for data in nodes[name].input
                 if _producer(data) in from_image and _producer(data) not in after_noise]
        if not masks:
            raise UserError(f'{path}: the random op {noise_op} is not a dropout mask; '
                            f'cannot make the graph deterministic')
        mask, data = masks[0]
        _rewrite_node(mask, 'Identity', data)
    return graph_def


def _rewrite_node(node, op, data):
    """Turn `node` into the one-input `op` on `data`, in place: its name, and so every
    consumer, stays; its attributes are reset to its type `T`, which the caller extends."""
    dtype = node.attr['T'].type
    node.op = op
    node.ClearField('input')
    node.ClearField('attr')
    node.input.append(data)
    node.attr['T'].type = dtype


def subpixel_kernel(kernel, stride):
    """The 3x3 convolution kernel that, followed by depth_to_space(stride), computes what a
    SAME-padded transposed convolution with stride `stride` does: the FCN decoder's 2s x 2s
    filters and FC-DenseNet's 3x3 with stride 2.

    `kernel` is conv2d_transpose's [k, k, out, in] filter; SAME pads (k - s) // 2 = p before.
    Output pixel s*q + r (in each axis) sums input q + d times the filter tap t = r + p - s*d
    for the taps inside the filter; a filter whose taps all have d in -1, 0, 1 fits a 3x3
    window. The result is [3, 3, in, s*s*out], its output channels ordered (row phase, column
    phase, class) as depth_to_space expects.
    """
    size, _, out_channels, in_channels = kernel.shape
    taps = np.zeros((3, stride), np.int64)  # filter tap of (offset d + 1, phase r), -1: none
    for d in (-1, 0, 1):
        t = np.arange(stride) + (size - stride) // 2 - stride * d
        taps[d + 1] = np.where((t >= 0) & (t < size), t, -1)
    if kernel.shape[1] != size or size < stride or \
            sorted(taps[taps >= 0].tolist()) != list(range(size)):
        raise ValueError(f'a {kernel.shape[:2]} filter with stride {stride} does not fit 3x3')
    result = np.zeros((3, 3, in_channels, stride, stride, out_channels), kernel.dtype)
    for a, b in np.ndindex(3, 3):
        for rh, rw in np.ndindex(stride, stride):
            th, tw = taps[a, rh], taps[b, rw]
            if th >= 0 and tw >= 0:
                result[a, b, :, rh, rw, :] = kernel[th, tw].T
    return result.reshape(3, 3, in_channels, stride * stride * out_channels)


def subpixel_upsampling(graph_def):
    """Replace each transposed convolution of the decoders (SAME, output s times its input, a
    filter subpixel_kernel fits in 3x3) by the equal 3x3 convolution and depth_to_space(s), in
    place.

    TFLite's XNNPACK delegate runs quantised CONV_2D and DEPTH_TO_SPACE but not quantised
    TRANSPOSE_CONV, which then takes longer than the whole int8 encoder. The graph must have a
    fixed input size that is a multiple of 32, so that every output is s times its input.
    """
    nodes = {node.name: node for node in graph_def.node}

    def constant(name):
        node = nodes[_producer(name)]
        while node.op == 'Identity':
            node = nodes[_producer(node.input[0])]
        if node.op != 'Const':
            raise ValueError(f'{name} is not a constant')
        return tf.make_ndarray(node.attr['value'].tensor)

    for node in [n for n in graph_def.node if n.op == 'Conv2DBackpropInput']:
        strides = list(node.attr['strides'].list.i)
        kernel, stride = constant(node.input[1]), strides[1]
        if (node.attr['padding'].s != b'SAME' or node.attr['data_format'].s not in (b'', b'NHWC')
                or strides[1] != strides[2]):
            continue  # not the decoders' kind of upsampling: left as it is
        try:
            subpixel = subpixel_kernel(kernel, stride)
        except ValueError:
            continue
        conv = tf1.NodeDef(name=node.name + '/subpixel', op='Conv2D',
                           input=[node.input[2], node.name + '/subpixel_kernel'])
        conv.attr['T'].CopyFrom(node.attr['T'])
        conv.attr['strides'].list.i.extend([1, 1, 1, 1])
        conv.attr['padding'].s = b'SAME'
        weights = tf1.NodeDef(name=node.name + '/subpixel_kernel', op='Const')
        weights.attr['dtype'].CopyFrom(node.attr['T'])
        weights.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(
            subpixel))
        _rewrite_node(node, 'DepthToSpace', conv.name)
        node.attr['block_size'].i = stride
        graph_def.node.extend([weights, conv])
    return graph_def


# ----------------------------------------------------------------------------------------------
# The formats
# ----------------------------------------------------------------------------------------------

def write_serving_model(path, graph_def, info):
    """A SavedModel for TensorFlow Serving around the frozen graph: uint8 RGB images of any size
    in, resized to the training size (bilinear, antialiased like PIL's, as inference resizes),
    probabilities resized back to the input's size, and their argmax as uint8 `classes`.
    `path` is the model's base path: the SavedModel goes into its version folder `1/`, the
    layout TensorFlow Serving's server loads (--model_base_path=path)."""
    with tf.Graph().as_default(), tf1.Session() as sess:
        image = tf1.placeholder(tf.uint8, [None, None, None, 3], 'image')
        small = tf.image.resize(tf.cast(image, tf.float32), info.image_shape, antialias=True)
        (probabilities,) = tf.graph_util.import_graph_def(graph_def, {'image:0': small},
                                                          ['probabilities:0'], name='fcn')
        probabilities = tf.identity(tf.image.resize(probabilities, tf.shape(image)[1:3],
                                                    antialias=True), 'probabilities')
        classes = tf.cast(tf.argmax(probabilities, -1), tf.uint8, name='classes')
        signature = tf1.saved_model.predict_signature_def(
            inputs={'image': image}, outputs={'probabilities': probabilities, 'classes': classes})
        with files.atomic_path(path, replace_folder=True) as tmp:  # export.py checks it first
            version = os.path.join(tmp, SERVING_VERSION)
            builder = tf1.saved_model.Builder(version)
            builder.add_meta_graph_and_variables(
                sess, [tf1.saved_model.tag_constants.SERVING],
                signature_def_map={'serving_default': signature}, strip_default_attrs=True)
            builder.save()
            info.write(version)
            files.write_manifest(version)


# The ops an encoder's input preprocessing and --input-norm image are made of: the int8 model's
# input cast, elementwise ops, the per-image moments, and VGG16's channel reversal
PREPROCESSING_OPS = {'Cast', 'Mean', 'SquaredDifference', 'StopGradient', 'Sub', 'Mul', 'RealDiv',
                     'Add', 'AddV2', 'Rsqrt', 'StridedSlice', 'Identity'}


def byte_input(graph_def):
    """`graph_def` with its float `image` input fed from a uint8 `image` through a Cast: the int8
    model takes image bytes, as they are, into its float preprocessing."""
    graph_def = subpixel_upsampling(graph_def)
    for node in graph_def.node:
        node.input[:] = ['image_float' if name == 'image' else name for name in node.input]
    cast = graph_def.node.add(name='image_float', op='Cast', input=['image'])
    cast.attr['SrcT'].type, cast.attr['DstT'].type = tf.uint8.as_datatype_enum, \
        tf.float32.as_datatype_enum
    next(node for node in graph_def.node if node.name == 'image').attr['dtype'].type = \
        tf.uint8.as_datatype_enum
    return graph_def


def input_preprocessing(graph_def):
    """The nodes between the `image` input and the first convolution (PREPROCESSING_OPS only):
    the encoder's input scaling and --input-norm image's per-image statistics. The int8 model
    keeps them in float: quantized op by op, their wide ranges round the image three times
    and cost a dusk drive 0.13 road IoU (docs/experiments.md). Each name is given twice, as it
    is and with the suffix 1 that TFLite gives an op it rewrites (a RealDiv by a constant
    becomes a MUL named `truediv1`)."""
    found = downstream(graph_def, 'image', PREPROCESSING_OPS)[1:]  # not the input itself
    return [name + suffix for name in found for suffix in ('', '1')]


def int8_model(converter, float_nodes, calibration):
    """The full-integer model of `converter` with the nodes `float_nodes` left in float, by
    TFLite's selective quantization (QuantizationDebugOptions' denylisted_nodes), its
    activations calibrated on `calibration`, and uint8 probabilities out."""
    from tensorflow.lite.python import util as tflite_util  # the converter's own I/O retyping
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([sample[None].astype(np.uint8)]
                                                for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]  # the float ops
    with warnings.catch_warnings():  # the debugger checks its model with tf.lite.Interpreter
        warnings.filterwarnings('ignore', r'\s*Warning: tf.lite.Interpreter is deprecated')
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=lambda: iter([calibration[0][None].astype(np.uint8)]),
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=float_nodes))
        model = debugger.get_nondebug_quantized_model()
    return tflite_util.modify_model_io_type(model, tf.float32, tf.uint8)  # input: left as is


def tflite_model(graph_def, info, fmt, calibration=()):
    """The frozen graph as a TFLite flatbuffer: 'tflite32', 'tflite16' (float16 weights) or
    'int8' (a full-integer network calibrated on `calibration`, RGB images at the training
    size; uint8 in and out: images are 8-bit anyway, and probabilities come out in 1/256 steps,
    the levels of KITTI's probability PNGs; the input's preprocessing stays in float,
    input_preprocessing). The transposed convolutions become sub-pixel convolutions
    (subpixel_upsampling), which XNNPACK runs in every format."""
    rewritten = tf1.GraphDef()
    rewritten.CopyFrom(graph_def)
    rewritten = byte_input(rewritten) if fmt == 'int8' else subpixel_upsampling(rewritten)
    with tf.Graph().as_default() as graph, tf1.Session() as sess:
        tf.graph_util.import_graph_def(rewritten, name='')
        image = graph.get_tensor_by_name('image:0')
        image.set_shape([1, *info.image_shape, 3])
        converter = tf1.lite.TFLiteConverter.from_session(
            sess, [image], [graph.get_tensor_by_name('probabilities:0')])
        if fmt == 'tflite16':
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        try:
            with quiet_stderr():  # the converter's MLIR notices
                if fmt == 'int8':
                    return int8_model(converter, input_preprocessing(rewritten), calibration)
                return converter.convert()
        except Exception as e:  # the converter raises ConverterError and others
            raise UserError(f'{fmt}: TFLite conversion failed '
                            f'({str(e).strip().splitlines()[0]})') from None


def onnx_model(graph_def):
    """The frozen graph as a serialized ONNX model (tf2onnx, opset ONNX_OPSET): `image` (float32
    RGB 0..255, [N, H, W, 3] at the training size, any N) in, `probabilities` out. The
    transposed convolutions stay: onnxruntime runs ConvTranspose itself.

    tf2onnx's own steps, without the two of tf2onnx.convert.from_graph_def that copy the whole
    graph again and again (Grappler's constant folding, and a copy before each ONNX optimizer
    to fall back on): the graph is frozen already, and an optimizer that fails fails the
    export. Each ONNX optimizer still copies every constant (protobuf keeps the old copies
    until the model is freed), so the constants of ONNX_INPUT_BYTES or more (VGG16's fc6 and
    fc7, 0.45 GB) go through it as inputs and become initializers after: VGG16 converts in
    10 s and 4 GB, where from_graph_def passed 20 GB and was killed.
    """
    import onnx
    from tf2onnx import optimizer, tfonnx
    graph_def, weights = constants_as_inputs(graph_def, ONNX_INPUT_BYTES)
    try:
        with tf.Graph().as_default() as graph, quiet_stderr():  # TensorFlow's notices
            tf.graph_util.import_graph_def(graph_def, name='')
            converted = tfonnx.process_tf_graph(
                graph, opset=ONNX_OPSET, input_names=['image:0', *weights],
                output_names=['probabilities:0'],
                tensors_to_rename={'image:0': 'image', 'probabilities:0': 'probabilities'})
            model = optimizer.optimize_graph(converted, catch_errors=False).make_model('fcn')
        inputs = [tensor for tensor in model.graph.input if tensor.name not in weights]
        if len(inputs) != 1 or len(model.graph.input) != 1 + len(weights):
            raise ValueError(f'inputs {[tensor.name for tensor in model.graph.input]}')
        del model.graph.input[:]
        model.graph.input.extend(inputs)
        model.graph.initializer.extend(onnx.numpy_helper.from_array(value, name)
                                       for name, value in weights.items())
        onnx.checker.check_model(model)
    except Exception as e:  # tf2onnx raises ValueError, onnx ValidationError and others
        raise UserError(f'onnx: ONNX conversion failed '
                        f'({str(e).strip().splitlines()[0]})') from None
    return model.SerializeToString()


def constants_as_inputs(graph_def, min_bytes):
    """A copy of `graph_def` whose constants of `min_bytes` or more are placeholders instead,
    and {tensor name: value} of those."""
    graph_def = tf1.GraphDef.FromString(graph_def.SerializeToString())
    weights = {}
    for node in [node for node in graph_def.node if node.op == 'Const']:
        tensor = node.attr['value'].tensor  # (on another node, this would add the entry)
        if len(tensor.tensor_content) >= min_bytes:
            weights[node.name + ':0'] = tf.make_ndarray(tensor)
            node.op = 'Placeholder'
            node.attr['shape'].shape.CopyFrom(tensor.tensor_shape)
            del node.attr['value']
    return graph_def, weights


# ----------------------------------------------------------------------------------------------
# Data: calibration images and the labelled check set
# ----------------------------------------------------------------------------------------------

def run_data(run_dir, info, split, hint):
    """evaluation.evaluation_data on the run's own data set: the data_dir of its config.json."""
    data_dir = files.read_json(os.path.join(run_dir, 'config.json'), hint, 'config',
                               ('data_dir',))['data_dir']
    try:
        return evaluation.evaluation_data(run_dir, data_dir, info, split)
    except UserError as e:
        raise UserError(f'{e} (the data_dir of {run_dir}); {hint}') from None


def calibration_images(model, info, calibration_dir=None, count=images.CALIBRATION_IMAGES):
    """Up to `count` images of `calibration_dir` or, by default, of the training images of the
    run folder `model`: at the default count, those its averaged weights' batch norm was
    calibrated on."""
    if calibration_dir:
        source = f'--calibration-dir {calibration_dir}'
        paths = [path for path in media.input_files([calibration_dir], {})
                 if path.lower().endswith(layouts.IMAGE_EXTENSIONS)]
    else:
        source = f'the training images of {model}'
        hint = 'int8 calibrates on the run\'s training images, or pass --calibration-dir'
        names = set(files.read_json(os.path.join(model, 'split.json'), hint, 'split',
                                    ('train',))['train'])
        paths = [image for image, _ in run_data(model, info, 'all', hint)[1]
                 if os.path.basename(image) in names]
    if not paths:
        raise UserError(f'{source}: no images to calibrate the int8 model on')
    return images.calibration_images(paths, info.image_shape, count)


def check_samples(model, info, check_dir=None):
    """The labelled (name, image, class map) samples the exports are checked on: every
    labelled image of `check_dir`, or the validation images of the run folder `model` (its
    training images when it held none out: the check measures agreement, not quality)."""
    if check_dir:
        dataset, pairs = evaluation.evaluation_data(model, check_dir, info, 'all')
    else:
        dataset, pairs = run_data(model, info, evaluation.default_split(model), 'or pass '
                                  '--check-dir, a labelled folder in the layout the model was '
                                  'trained on')
    if not pairs:
        raise UserError('no labelled images to check the exports on; pass --check-dir')
    return reading.load_samples(pairs, dataset.read_label)


# ----------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------

class Compared:
    """An export as a model for evaluation.evaluate that also runs the original on each batch,
    keeping the largest probability difference and the pixels whose classes agree."""

    def __init__(self, export, original):
        self.export, self.original = export, original
        self.image_shape, self.num_classes = export.image_shape, export.num_classes
        self.info, self.refine = export.info, None  # the networks compared, not a CRF
        self.max_difference, self.agreeing, self.pixels = 0.0, 0, 0

    def __call__(self, batch, flip=None):
        ours, theirs = self.export(batch, flip), self.original(batch, flip)
        self.max_difference = max(self.max_difference, float(np.abs(ours - theirs).max()))
        self.agreeing += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        self.pixels += theirs[..., 0].size
        return ours


def check(fmt, path, original, samples, reference):
    """How the export at `path` agrees with `original` on `samples`; `reference` is the
    original's own evaluation.evaluate key metric."""
    with inference.load_model(path) as model:
        compared = Compared(model, original)
        results = evaluation.evaluate(compared, samples)
    iou = evaluation.key_metric(results)
    max_probability, max_iou = TOLERANCES[fmt]
    return {'path': path, 'kind': model.kind, 'iou': iou, 'iou_difference': iou - reference,
            'max_probability_difference': compared.max_difference,
            'class_agreement': compared.agreeing / compared.pixels,
            'tolerance': {'max_probability_difference': max_probability,
                          'iou_difference': max_iou},
            'within_tolerance': abs(iou - reference) <= max_iou and (
                max_probability is None or compared.max_difference <= max_probability)}


def write_exports(folder, info, output_dir, formats, calibration=()):
    """Write main.py's SavedModel in `folder` in each of `formats` to `output_dir` (int8
    calibrated on the images `calibration`); returns {format: path}."""
    graph_def = frozen_graph(folder, info)
    paths = {fmt: os.path.join(output_dir, FILES[fmt]) for fmt in formats}
    with files.full_disk(output_dir):  # TensorFlow's writers call a full disk "exhausted"
        if set(formats) - {'savedmodel'}:
            info.write(output_dir)
        for fmt, path in paths.items():
            print(f'writing {path}')
            if fmt == 'savedmodel':
                write_serving_model(path, graph_def, info)
            elif fmt == 'frozen':
                files.write_bytes(path, graph_def.SerializeToString())
            elif fmt == 'onnx':
                files.write_bytes(path, onnx_model(graph_def))
            else:
                files.write_bytes(path, tflite_model(graph_def, info, fmt, calibration))
        if set(formats) - {'savedmodel'}:  # the file exports share one manifest and fcn.json
            files.write_manifest(output_dir, sorted(
                name for name in os.listdir(output_dir) if os.path.isfile(os.path.join(
                    output_dir, name)) and name not in (files.MANIFEST, 'agreement.json')))
    return paths
