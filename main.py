"""FCN-8s road segmentation on KITTI Road, in TensorFlow 1.x graph style on TensorFlow 2.x.

Loads the VGG16 encoder, grafts the FCN-8s decoder onto it, trains with Adam on flipped KITTI
batches and writes the trained model and overlaid inference images to a new run folder:

    python main.py --data-dir ./data --epochs 40 --batch-size 8
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from tqdm import tqdm

import helper

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
with helper.quiet_stderr():  # TensorFlow's C++ start-up notices about absent GPUs
    import tensorflow as tf
import vgg  # noqa: E402

tf1 = tf.compat.v1
tf1.disable_eager_execution()
tf.get_logger().setLevel('ERROR')  # TF1 API deprecation notices are expected here

NUM_CLASSES = 2  # not road, road
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'kitti_road.json')
VGG_TENSORS = ('image_input:0', 'keep_prob:0', 'layer3_out:0', 'layer4_out:0', 'layer7_out:0')


def load_vgg(sess, vgg_path):
    """Load the VGG16 SavedModel (tag `vgg16`) into `sess`.

    :return: (image_input, keep_prob, layer3_out, layer4_out, layer7_out) tensors
    """
    try:
        tf1.saved_model.loader.load(sess, [vgg.TAG], vgg_path)
    except (OSError, RuntimeError, ValueError) as e:
        raise helper.UserError(f'{vgg_path}: cannot load a SavedModel tagged {vgg.TAG!r} '
                               f'({str(e).splitlines()[0]})') from None
    graph = sess.graph
    try:
        return tuple(graph.get_tensor_by_name(name) for name in VGG_TENSORS)
    except KeyError as e:
        raise helper.UserError(f'{vgg_path}: the SavedModel lacks a tensor the FCN needs ({e}); '
                               f'expected {", ".join(VGG_TENSORS)}') from None


def bilinear_kernel(size, channels):
    """A [size, size, channels, channels] transposed-convolution kernel that upsamples each
    channel bilinearly (FCN's initialisation) by a factor of size // 2."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - centre) / factor
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = np.outer(ramp, ramp)
    return kernel


def _weight(name, shape, initializer, weight_decay):
    """A variable whose L2 penalty goes to the REGULARIZATION_LOSSES collection."""
    variable = tf1.get_variable(name, shape, initializer=initializer)
    tf1.add_to_collection(tf1.GraphKeys.REGULARIZATION_LOSSES,
                          weight_decay * tf.nn.l2_loss(variable))
    return variable


def _score(x, num_classes, name, weight_decay):
    """A 1x1 class-scoring convolution, zero-initialised as in the FCN paper."""
    with tf1.variable_scope(name):
        kernel = _weight('kernel', [1, 1, x.shape[-1], num_classes], tf1.zeros_initializer(),
                         weight_decay)
        bias = tf1.get_variable('bias', [num_classes], initializer=tf1.zeros_initializer())
        return tf.nn.conv2d(x, kernel, 1, 'SAME') + bias


def _upsample(x, size, stride, name, weight_decay, like=None):
    """A bilinear-initialised transposed convolution to the spatial size of `like`, or to
    `stride` times that of `x` when `like` is None."""
    channels = x.shape[-1]
    if like is None:
        size_hw = tf.shape(x)[1:3] * stride
        static_hw = [d and d * stride for d in x.shape.as_list()[1:3]]
    else:
        size_hw, static_hw = tf.shape(like)[1:3], like.shape.as_list()[1:3]
    with tf1.variable_scope(name):
        kernel = _weight('kernel', [size, size, channels, channels],
                         tf1.constant_initializer(bilinear_kernel(size, channels)), weight_decay)
        output_shape = tf.concat([tf.shape(x)[:1], size_hw, [channels]], 0)
        out = tf.nn.conv2d_transpose(x, kernel, output_shape, stride, 'SAME')
        out.set_shape([x.shape[0]] + static_hw + [channels])
        return out


def layers(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes, weight_decay=1e-3):
    """The FCN-8s decoder ("at-once" variant): score fc7, pool4 and pool3 with 1x1 convolutions
    (pool4 and pool3 scaled by 0.01 and 0.0001 first), upsample 2x, 2x and 8x with bilinear-
    initialised transposed convolutions, adding the skip scores on the way.

    Works for unknown spatial sizes; L2 weight decay goes to REGULARIZATION_LOSSES.
    :return: the last layer, [batch, height, width, num_classes] logits at the input's size
    """
    with tf1.variable_scope('fcn8s'):
        score7 = _score(vgg_layer7_out, num_classes, 'score_fr', weight_decay)
        score4 = _score(vgg_layer4_out * 0.01, num_classes, 'score_pool4', weight_decay)
        score3 = _score(vgg_layer3_out * 0.0001, num_classes, 'score_pool3', weight_decay)
        fuse4 = _upsample(score7, 4, 2, 'upscore2', weight_decay, like=score4) + score4
        fuse3 = _upsample(fuse4, 4, 2, 'upscore_pool4', weight_decay, like=score3) + score3
        return tf.identity(_upsample(fuse3, 16, 8, 'upscore8', weight_decay), 'fcn_out')


def optimize(nn_last_layer, correct_label, learning_rate, num_classes):
    """Softmax cross-entropy over non-void pixels (label rows of all zeros are ignored), plus the
    collected weight decay, minimised with Adam.

    :return: (logits [pixels, num_classes], train_op, cross_entropy_loss)
    """
    logits = tf.reshape(nn_last_layer, (-1, num_classes), name='logits')
    labels = tf.reshape(correct_label, (-1, num_classes))
    per_pixel = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    valid = tf.reduce_sum(labels)
    cross_entropy_loss = tf.math.divide(tf.reduce_sum(per_pixel), tf.maximum(valid, 1.0),
                                        name='cross_entropy_loss')
    total_loss = cross_entropy_loss + tf1.losses.get_regularization_loss()
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        train_op = tf1.train.AdamOptimizer(learning_rate).minimize(total_loss)
    return logits, train_op, cross_entropy_loss


def train_nn(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss, input_image,
             correct_label, keep_prob, learning_rate, keep_prob_value=0.5,
             learning_rate_value=1e-4, log=print):
    """Train for `epochs`, showing a progress bar with the running loss and reporting the mean
    loss of each epoch through `log`.

    :return: the list of mean losses, one per epoch
    """
    batches = -(-len(get_batches_fn) // batch_size) if hasattr(get_batches_fn, '__len__') else None
    history = []
    for epoch in range(1, epochs + 1):
        start, total, seen = time.time(), 0.0, 0
        with tqdm(get_batches_fn(batch_size), total=batches, desc=f'Epoch {epoch}/{epochs}',
                  leave=False, disable=None) as bar:
            for images, labels in bar:
                _, loss = sess.run([train_op, cross_entropy_loss],
                                   {input_image: images, correct_label: labels,
                                    keep_prob: keep_prob_value,
                                    learning_rate: learning_rate_value})
                total += loss * len(images)
                seen += len(images)
                bar.set_postfix(loss=f'{total / seen:.4f}')
        history.append(total / seen)
        log(f'epoch {epoch}/{epochs}: mean loss {history[-1]:.4f} '
                 f'({time.time() - start:.0f} s, {seen} images)')
    return history


# ----------------------------------------------------------------------------------------------
# The steps of run()
# ----------------------------------------------------------------------------------------------

def image_shape_arg(text):
    """Parse `HxW`, both multiples of 32 (the encoder's total stride)."""
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not HxW, e.g. 160x576') from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f'{text!r}: height and width must be positive '
                                         f'multiples of 32, e.g. 160x576')
    return height, width


def encoder_weights_arg(text):
    """Parse `udacity`, `none` or `keras-h5:PATH`."""
    if text in ('udacity', 'none'):
        return text
    if text.startswith('keras-h5:'):
        if not os.path.isfile(text[len('keras-h5:'):]):
            raise argparse.ArgumentTypeError(f'{text[len("keras-h5:"):]}: file not found')
        return text
    raise argparse.ArgumentTypeError(f'{text!r}: use udacity, none or keras-h5:PATH')


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad flag as one line, like every other bad input."""

    def error(self, message):
        raise helper.UserError(f'{message} (see --help)')


def load_config(path):
    """The option defaults from a JSON config file (a run's config.json works too)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise helper.UserError(f'{path}: cannot read the config file ({e})') from None
    config.pop('versions', None)
    return config


def parse_args(argv=None):
    """Options: defaults from --config (configs/kitti_road.json), overridden by flags."""
    pre = OneLineErrorParser(add_help=False)
    pre.add_argument('--config', default=DEFAULT_CONFIG,
                     help='JSON file of option defaults (default: %(default)s)')
    config_path = pre.parse_known_args(argv)[0].config
    parser = OneLineErrorParser(description=__doc__.split('\n\n')[0], parents=[pre])
    parser.add_argument('--data-dir', help='folder holding data_road/ and vgg/ '
                                           '(default: %(default)s)')
    parser.add_argument('--runs-dir', help='where run folders are made (default: %(default)s)')
    parser.add_argument('--epochs', type=int, help='(default: %(default)s)')
    parser.add_argument('--batch-size', type=int, help='(default: %(default)s)')
    parser.add_argument('--learning-rate', type=float, help='Adam (default: %(default)s)')
    parser.add_argument('--keep-prob', type=float, help='dropout keep probability in fc6/fc7 '
                                                        '(default: %(default)s)')
    parser.add_argument('--weight-decay', type=float, help='L2 on the decoder weights '
                                                           '(default: %(default)s)')
    parser.add_argument('--image-shape', type=image_shape_arg,
                        help='training size HxW, multiples of 32 (default: %(default)s)')
    parser.add_argument('--label', choices=('road', 'lane'), help='KITTI ground truth to train '
                                                                  'on (default: %(default)s)')
    parser.add_argument('--encoder-weights', type=encoder_weights_arg,
                        help="udacity (data-dir/vgg, downloaded if absent), keras-h5:PATH "
                             "(Keras's VGG16 ImageNet file) or none (from scratch) "
                             "(default: %(default)s)")
    parser.add_argument('--seed', type=int, help='(default: %(default)s)')
    config = load_config(config_path)
    unknown = sorted(set(config) - {a.dest for a in parser._actions})
    if unknown:
        raise helper.UserError(f'{config_path}: unknown option {unknown[0]!r}')
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    missing = [a.dest for a in parser._actions if getattr(args, a.dest, 0) is None]
    if missing:
        raise helper.UserError(f'{config_path}: no value for option {missing[0]!r}')
    for flag in ('epochs', 'batch_size'):
        if getattr(args, flag) < 1:
            parser.error(f'argument --{flag.replace("_", "-")}: must be at least 1')
    return args


def kitti_training_dir(data_dir):
    """data_dir/data_road/training, downloading KITTI Road into data_dir when it is absent."""
    if not os.path.isdir(data_dir):
        raise helper.UserError(f'--data-dir {data_dir}: folder not found')
    helper.maybe_download_kitti(data_dir)
    return os.path.join(data_dir, 'data_road', 'training')


def build_encoder(sess, args):
    """The encoder chosen by --encoder-weights, and a function that initialises every variable
    not restored from a SavedModel (then loads Keras weights, when given)."""
    weights = None
    if args.encoder_weights == 'udacity':
        try:
            vgg_path = helper.maybe_download_pretrained_vgg(args.data_dir)
        except helper.UserError as e:
            raise helper.UserError(f'{e}; or train from scratch with --encoder-weights none') \
                from None
        tensors = load_vgg(sess, vgg_path)
        restored = {v.name for v in tf1.global_variables()}
    else:
        restored = set()
        if args.encoder_weights.startswith('keras-h5:'):
            weights = vgg.read_keras_h5(args.encoder_weights[len('keras-h5:'):])
        blocks, fc_width = vgg.encoder_shape(weights) if weights else (vgg.BLOCKS, vgg.FC_WIDTH)
        image_input = tf1.placeholder(tf.float32, [None, None, None, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        tensors = (image_input, keep_prob) + vgg.build_encoder(
            image_input, keep_prob, blocks, fc_width, 'caffe' if weights else 'standardize')

    def initialise():
        sess.run(tf1.variables_initializer([v for v in tf1.global_variables()
                                            if v.name not in restored]))
        if weights:
            vgg.assign_weights(sess, weights)
    return tensors, initialise


def save_config(run_dir, args):
    """Write every option and the library versions to run_dir/config.json."""
    config = {k: v for k, v in vars(args).items() if k != 'config'}
    config['image_shape'] = '{}x{}'.format(*args.image_shape)
    config['versions'] = {'tensorflow': tf.__version__, 'python': platform.python_version(),
                          'numpy': np.__version__}
    with helper.atomic_path(os.path.join(run_dir, 'config.json')) as tmp, open(tmp, 'w') as f:
        json.dump(config, f, indent=2)


def save_model(sess, export_dir, input_image, keep_prob, logits):
    """Save the trained network as a SavedModel (tag `serve`, signature `serving_default`:
    RGB 0..255 images at the training size in, per-pixel class probabilities out)."""
    probabilities = tf.reshape(tf.nn.softmax(logits),
                               tf.concat([tf.shape(input_image)[:3], [NUM_CLASSES]], 0))
    signature = tf1.saved_model.predict_signature_def(
        inputs={'image': input_image, 'keep_prob': keep_prob},
        outputs={'probabilities': probabilities})
    with helper.atomic_path(export_dir) as tmp:
        builder = tf1.saved_model.Builder(tmp)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={'serving_default': signature})
        builder.save()


def run(argv=None):
    """Everything `python main.py` does: check the data, build the FCN, train, save the model
    and the overlays to a new folder in --runs-dir."""
    args = parse_args(argv)
    get_batches_fn = helper.gen_batch_function(kitti_training_dir(args.data_dir),
                                               args.image_shape, args.label, args.seed)
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(args.seed)
        (input_image, keep_prob, layer3, layer4, layer7), initialise = build_encoder(sess, args)
        nn_last_layer = layers(layer3, layer4, layer7, NUM_CLASSES, args.weight_decay)
        correct_label = tf1.placeholder(tf.float32, [None, None, None, NUM_CLASSES], 'label')
        learning_rate = tf1.placeholder(tf.float32, [], 'learning_rate')
        logits, train_op, cross_entropy_loss = optimize(nn_last_layer, correct_label,
                                                        learning_rate, NUM_CLASSES)
        initialise()

        run_dir = helper.new_run_dir(args.runs_dir)
        save_config(run_dir, args)
        log = helper.RunLog(os.path.join(run_dir, 'train.log'))
        log(f'run {run_dir}: {len(get_batches_fn)} training images at '
            f'{args.image_shape[0]}x{args.image_shape[1]}, {args.epochs} epochs')
        train_nn(sess, args.epochs, args.batch_size, get_batches_fn, train_op, cross_entropy_loss,
                 input_image, correct_label, keep_prob, learning_rate, args.keep_prob,
                 args.learning_rate, log)
        save_model(sess, os.path.join(run_dir, 'model'), input_image, keep_prob, logits)
        helper.save_inference_samples(args.runs_dir, args.data_dir, sess, args.image_shape,
                                      logits, keep_prob, input_image, output_dir=run_dir)
        log(f'model and overlays written to {run_dir}')
    return run_dir


if __name__ == '__main__':
    sys.exit(helper.main_guard(run))
