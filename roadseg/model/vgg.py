"""The VGG16 FCN encoder, for when Udacity's vgg.zip cannot be had.

Builds the encoder that Udacity's SavedModel holds (13 convolutions, fc6 as a 7x7 convolution,
fc7 as a 1x1 convolution, dropout through `keep_prob`) with the same tensor names, initialised at
random or from Keras's ImageNet file `vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`, and
saves it as a SavedModel with Udacity's tag, so `load_vgg` reads either; and downloads and loads
Udacity's own.

Every variant takes RGB images in 0..255 at `image_input:0` and does its own preprocessing:
Keras weights were trained on Caffe-style input (BGR, ImageNet mean subtracted), random weights
get per-channel standardisation.

make_vgg.py writes it:

    python make_vgg.py data/vgg                    # random initialisation
    python make_vgg.py data/vgg --keras-h5 vgg16_weights_tf_dim_ordering_tf_kernels.h5
"""
import os

from roadseg import downloads, files
from roadseg.errors import UserError
from roadseg.model import keras_weights
from roadseg.model.ops import tf, tf1

VGG_URL = 'https://s3-us-west-1.amazonaws.com/udacity-selfdrivingcar/vgg.zip'
TAG = 'vgg16'
TENSORS = ('image_input:0', 'keep_prob:0', 'layer3_out:0', 'layer4_out:0', 'layer7_out:0')
BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
FC_WIDTH = 4096
KERAS_FILE = "Keras's vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5"
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
IMAGENET_STD_RGB = (58.393, 57.12, 57.375)


def preprocess(image_input, mode):
    """RGB 0..255 to the encoder's input: 'caffe' (BGR minus mean) or 'standardize'."""
    x = image_input - IMAGENET_MEAN_RGB
    if mode == 'caffe':
        return x[..., ::-1]
    return x / IMAGENET_STD_RGB


def conv_relu(x, filters, size, name, as_matmul=False):
    """A SAME-padded convolution with bias and ReLU; variables `name/kernel`, `name/bias`;
    computed by conv_as_matmul with `as_matmul`."""
    with tf1.variable_scope(name):
        kernel = tf1.get_variable('kernel', [size, size, x.shape[-1], filters],
                                  initializer=tf1.initializers.he_normal())
        bias = tf1.get_variable('bias', [filters], initializer=tf1.zeros_initializer())
        conv = conv_as_matmul(x, kernel) if as_matmul else tf.nn.conv2d(x, kernel, 1, 'SAME')
        return tf.nn.relu(tf.nn.bias_add(conv, bias))


def conv_as_matmul(x, kernel):
    """The SAME-padded, stride-1 convolution of `x` with an odd-sized `kernel`, as one matrix
    product: every tap's shifted input side by side, times the kernel as a matrix. The same
    numbers; for fc6 (7x7 over 512 channels, 4096 filters, on a map of a few rows) and fc7,
    oneDNN's convolution ran at half the rate of its matrix product here, forward and backward
    (docs/benchmarks.md, "VGG16's fully connected layers")."""
    size, _, channels, filters = kernel.shape.as_list()
    pad = size // 2
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) if pad else x
    taps = tf.concat([padded[:, i:i + height, j:j + width]
                      for i in range(size) for j in range(size)], -1) if pad else x
    product = tf.matmul(tf.reshape(taps, [-1, size * size * channels]),
                        tf.reshape(kernel, [size * size * channels, filters]))
    out = tf.reshape(product, tf.concat([tf.shape(x)[:3], [filters]], 0))
    out.set_shape(x.shape[:3].concatenate([filters]))
    return out


def build_encoder(image_input, keep_prob, blocks=BLOCKS, fc_width=FC_WIDTH,
                  preprocessing='standardize', training=True):
    """Build the encoder on `image_input`; returns the pool3, pool4 and fc7 tensors, named
    `layer3_out`, `layer4_out`, `layer7_out` as in Udacity's model. Dropout with `keep_prob`
    after fc6 and fc7 only when `training`: the inference tower has none."""
    x = preprocess(image_input, preprocessing)
    outputs = []
    for b, widths in enumerate(blocks, 1):
        for c, width in enumerate(widths, 1):
            x = conv_relu(x, width, 3, f'block{b}_conv{c}')
        x = tf.nn.max_pool2d(x, 2, 2, 'SAME', name=f'block{b}_pool')
        outputs.append(x)
    for name, size in (('fc6', 7), ('fc7', 1)):
        x = conv_relu(x, fc_width, size, name, as_matmul=True)
        if training:
            x = tf.nn.dropout(x, rate=1 - keep_prob)
    return (tf.identity(outputs[2], 'layer3_out'), tf.identity(outputs[3], 'layer4_out'),
            tf.identity(x, 'layer7_out'))


def read_keras_h5(path):
    """Read Keras's VGG16 ImageNet weights: {layer name: [kernel, bias]} in this encoder's terms.

    fc1/fc2 (present only in the full file) become the fc6/fc7 kernels, reshaped to 7x7 and 1x1.
    """
    weights = keras_weights.read(path, KERAS_FILE)
    convs = [f'block{b}_conv{c}' for b, widths in enumerate(BLOCKS, 1)
             for c in range(1, len(widths) + 1)]
    missing = [name for name in convs if name not in weights]
    if missing:
        raise UserError(f'{path}: no weights for layer {missing[0]}; expected {KERAS_FILE}')
    result = {name: weights[name] for name in convs}
    if 'fc1' in weights and 'fc2' in weights:
        fc1, fc2 = weights['fc1'], weights['fc2']
        channels = result['block5_conv3'][0].shape[-1]
        result['fc6'] = [fc1[0].reshape(7, 7, channels, -1), fc1[1]]
        result['fc7'] = [fc2[0].reshape(1, 1, *fc2[0].shape), fc2[1]]
    return result


def encoder_shape(weights):
    """(blocks, fc_width) of the encoder that `read_keras_h5`'s weights fit."""
    blocks = tuple(tuple(weights[f'block{b}_conv{c}'][0].shape[-1] for c in range(1, len(w) + 1))
                   for b, w in enumerate(BLOCKS, 1))
    fc_width = weights['fc6'][0].shape[-1] if 'fc6' in weights else FC_WIDTH
    return blocks, fc_width


def features(config, keep_prob, keras):
    """build_network's VGG16 built in the graph: features(images, training), pool3, pool4 and
    fc7; of the shape and preprocessing of Keras's weights `keras` when given."""
    blocks, fc_width = encoder_shape(keras) if keras else (BLOCKS, FC_WIDTH)
    preprocessing = 'caffe' if keras else 'standardize'
    return lambda images, training: build_encoder(images, keep_prob, blocks, fc_width,
                                                  preprocessing, training)


def assign_weights(sess, weights):
    """Load `read_keras_h5`'s weights into the encoder variables of the session's graph."""
    keras_weights.assign(sess, {f'{name}/{part}': value for name, pair in weights.items()
                                for part, value in zip(('kernel', 'bias'), pair)})


def save_vgg_saved_model(export_dir, keras_h5=None, blocks=BLOCKS, fc_width=FC_WIDTH, seed=0):
    """Write the encoder as a SavedModel with Udacity's tag and tensor names, atomically.

    With `keras_h5`, the weights (and the channel counts) come from that file; otherwise the
    encoder of `blocks`/`fc_width` is initialised at random.
    """
    weights = read_keras_h5(keras_h5) if keras_h5 else None
    if weights:
        blocks, fc_width = encoder_shape(weights)
    with tf.Graph().as_default() as graph, tf1.Session(graph=graph) as sess:
        tf1.set_random_seed(seed)
        image_input = tf1.placeholder(tf.float32, [None, None, None, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        build_encoder(image_input, keep_prob, blocks, fc_width,
                      'caffe' if weights else 'standardize')
        sess.run(tf1.global_variables_initializer())
        if weights:
            assign_weights(sess, weights)
        with files.atomic_path(export_dir) as tmp:
            builder = tf1.saved_model.Builder(tmp)
            builder.add_meta_graph_and_variables(sess, [TAG])
            builder.save()
            files.write_manifest(tmp)
    return export_dir


def vgg_dir(data_dir):
    """Where the VGG16 SavedModel of a data folder is: `data_dir/vgg`."""
    return os.path.join(data_dir, 'vgg')


def maybe_download_pretrained_vgg(data_dir, url=VGG_URL, sha256=None):
    """Make `data_dir/vgg` hold Udacity's VGG16 SavedModel, downloading vgg.zip if needed."""
    return downloads.maybe_download_and_extract(url, vgg_dir(data_dir), sha256=sha256)


def load_vgg(sess, vgg_path, images=None):
    """Load the VGG16 SavedModel (tag `vgg16`) into `sess`; with `images` (a tensor, a data
    pipeline's), its `image_input` is a placeholder that reads them unless fed.

    :return: (image_input, keep_prob, layer3_out, layer4_out, layer7_out) tensors
    """
    reason = files.manifest_problem(vgg_path) if os.path.isdir(vgg_path) else None
    if reason:  # Udacity's vgg.zip has no manifest; the SavedModels written here have one
        raise UserError(f'{vgg_path}: {reason}; the VGG16 SavedModel is damaged: write or '
                        f'download it again')
    try:
        inputs = None
        if images is not None:  # made first, it takes the name image_input
            inputs = {TENSORS[0]: tf1.placeholder_with_default(images, [None, None, None, 3],
                                                               TENSORS[0].split(':')[0])}
        tf1.saved_model.loader.load(sess, [TAG], vgg_path, input_map=inputs)
    except (OSError, RuntimeError, ValueError, tf1.errors.OpError) as e:
        raise UserError(f'{vgg_path}: cannot load a SavedModel tagged {TAG!r} '
                        f'({str(e).splitlines()[0]})') from None
    try:
        return tuple(sess.graph.get_tensor_by_name(name) for name in TENSORS)
    except KeyError as e:
        raise UserError(f'{vgg_path}: the SavedModel lacks a tensor the FCN needs ({e}); '
                        f'expected {", ".join(TENSORS)}') from None
