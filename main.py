"""FCN-8s road segmentation on KITTI Road, in TensorFlow 1.x graph style on TensorFlow 2.x.

Loads the VGG16 encoder, grafts the FCN-8s decoder onto it, trains with Adam on flipped KITTI
batches and writes the trained model and overlaid inference images to a new run folder:

    python main.py --data-dir ./data --epochs 40 --batch-size 8
"""
import argparse
import collections
import json
import os
import platform
import sys
import time

import numpy as np
from tqdm import tqdm

import helper

tf = helper.import_tensorflow()
tf1 = tf.compat.v1

import checkpoints  # noqa: E402  (after TensorFlow is set to graph mode)
import datasets  # noqa: E402
import evaluate  # noqa: E402
import mobilenet  # noqa: E402
import ops  # noqa: E402
import predict  # noqa: E402
import transforms  # noqa: E402
import vgg  # noqa: E402

NUM_CLASSES = 2  # KITTI: not road, road; other data sets size the head from their classes
OPTIONAL = {'resume', 'classes', 'remap', 'train_crop'}  # options that may stay unset
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs',
                              'kitti_road.json')
VGG_TENSORS = ('image_input:0', 'keep_prob:0', 'layer3_out:0', 'layer4_out:0', 'layer7_out:0')
VGG_STRIDES = (8, 16, 32)  # of pool3, pool4 and fc7
VGG_SKIP_SCALES = (1e-4, 1e-2)  # pool3's and pool4's, the FCN paper's at-once FCN-8s


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


def _score(x, num_classes, name, weight_decay):
    """A 1x1 class-scoring convolution, zero-initialised as in the FCN paper."""
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [1, 1, x.shape[-1], num_classes], tf1.zeros_initializer(),
                            weight_decay)
        bias = tf1.get_variable('bias', [num_classes], initializer=tf1.zeros_initializer())
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, 'SAME'), bias)


def _upsample(x, factor, name, weight_decay, like=None):
    """A bilinear-initialised 2*factor x 2*factor transposed convolution with stride `factor`, to
    the spatial size of `like`, or to `factor` times that of `x` when `like` is None."""
    if factor == 1:
        return x
    channels = x.shape[-1]
    if like is None:
        size_hw = tf.shape(x)[1:3] * factor
        static_hw = [d and d * factor for d in x.shape.as_list()[1:3]]
    else:
        size_hw, static_hw = tf.shape(like)[1:3], like.shape.as_list()[1:3]
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [2 * factor, 2 * factor, channels, channels],
                            tf1.constant_initializer(bilinear_kernel(2 * factor, channels)),
                            weight_decay)
        output_shape = tf.concat([tf.shape(x)[:1], size_hw, [channels]], 0)
        out = tf.nn.conv2d_transpose(x, kernel, output_shape, factor, 'SAME')
        out.set_shape([x.shape[0]] + static_hw + [channels])
        return out


def layers(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes, weight_decay=1e-3,
           strides=VGG_STRIDES, skip_scales=VGG_SKIP_SCALES, finer=()):
    """The FCN-8s decoder ("at-once" variant): score layer 7, 4 and 3 with 1x1 convolutions
    (layers 3 and 4 scaled by `skip_scales` first), upsample with bilinear-initialised transposed
    convolutions from stride to stride, adding the skip scores on the way, to the input's size.

    `strides` are the inputs' strides, finest first: VGG16's (8, 16, 32) upsample 2x, 2x and 8x;
    a dilated encoder's (4, 8, 8) adds layers 7 and 4 as they are, then upsamples 2x and 4x.
    `finer` are features finer than layer 3, finest first, scored and added the same way (FCN-4s:
    a stride-4 skip, `strides` (4, 8, 16, 32)), for sharper boundaries.
    Works for unknown spatial sizes; L2 weight decay goes to REGULARIZATION_LOSSES.
    :return: the last layer, [batch, height, width, num_classes] logits at the input's size
    """
    skips = [x if scale == 1 else x * scale for x, scale in
             zip((vgg_layer4_out, vgg_layer3_out), skip_scales[::-1])] + list(finer[::-1])
    skip_strides = strides[-2::-1]
    with tf1.variable_scope('fcn8s'):
        fused, stride = _score(vgg_layer7_out, num_classes, 'score_fr', weight_decay), strides[-1]
        for level, (skip, skip_stride) in enumerate(zip(skips, skip_strides)):
            score = _score(skip, num_classes, f'score_pool{4 - level}', weight_decay)
            name = 'upscore2' if level == 0 else f'upscore_pool{5 - level}'
            fused = _upsample(fused, stride // skip_stride, name, weight_decay, like=score) + score
            stride = skip_stride
        return tf.identity(_upsample(fused, stride, f'upscore{stride}', weight_decay), 'fcn_out')


def pyramid_layers(features, num_classes, training, weight_decay=1e-3,
                   strides=mobilenet.DECODERS['fpn']):
    """The 'fpn' decoder: MobileNetV2's features merged top-down (`mobilenet.pyramid`), scored
    by a 1x1 convolution at the finest stride and upsampled from there to the input's size by a
    bilinear-initialised transposed convolution, as `layers` ends.
    :return: [batch, height, width, num_classes] logits at the input's size
    """
    with tf1.variable_scope('fpn'):
        merged = mobilenet.pyramid(features, strides, training)
        score = _score(merged, num_classes, 'score', weight_decay)
        return tf.identity(_upsample(score, strides[0], f'upscore{strides[0]}', weight_decay),
                           'fcn_out')


def lovasz_softmax(probabilities, labels, max_pixels=2 ** 18):
    """Berman et al.'s Lovasz-softmax loss (CVPR 2018): the convex surrogate of 1 - IoU, over
    the non-void pixels of `probabilities` and one-hot `labels`, both [pixels, num_classes].

    Each class's pixel errors |label - probability| are sorted, largest first, and weighted by
    how much each adds to the class's Jaccard loss at that point of the order. Averaged over the
    classes present in the batch; with two classes only class 1 (road) counts, the IoU that is
    reported. The sorts cost most, so above `max_pixels` valid pixels a random sample of about
    that many is scored (a batch of 8 at 352x480 has 1.35 M).
    """
    valid = tf.reduce_sum(labels, axis=1) > 0
    share = max_pixels / tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
    valid &= tf.random.uniform(tf.shape(valid)) < share
    probabilities, labels = tf.boolean_mask(probabilities, valid), tf.boolean_mask(labels, valid)
    losses, present = [], []
    for c in [1] if labels.shape[-1] == 2 else range(labels.shape[-1]):
        errors = tf.abs(labels[:, c] - probabilities[:, c])
        errors, order = tf.nn.top_k(errors, tf.size(errors))
        truth = tf.gather(labels[:, c], order)
        total = tf.reduce_sum(truth)
        jaccard = 1.0 - (total - tf.cumsum(truth)) / tf.maximum(total + tf.cumsum(1.0 - truth),
                                                                1.0)
        steps = tf.concat([jaccard[:1], jaccard[1:] - jaccard[:-1]], 0)
        losses.append(tf.reduce_sum(errors * tf.stop_gradient(steps)))
        present.append(tf.cast(total > 0, tf.float32))
    return tf.math.divide(tf.add_n([l * p for l, p in zip(losses, present)]),
                          tf.maximum(tf.add_n(present), 1.0), name='lovasz_loss')


def optimize(nn_last_layer, correct_label, learning_rate, num_classes, class_weights=None,
             lovasz_weight=0.0, hard_pixels=1.0):
    """Softmax cross-entropy over non-void pixels (label rows of all zeros are ignored), plus
    `lovasz_weight` times the Lovasz-softmax loss, plus the collected weight decay, minimised
    with Adam.

    With `class_weights`, each pixel's cross-entropy is weighted by its class's weight and the
    sum divided by the summed weights (a weighted mean). With `hard_pixels` below 1, only that
    fraction of each batch's non-void pixels counts, those with the largest cross-entropy
    (online hard example mining): the easy pixels inside large regions stop diluting the
    gradient of the few near boundaries. The Lovasz term optimises the IoU
    itself: cross-entropy rewards confident pixels everywhere, the IoU counts boundary errors.
    :return: (logits [pixels, num_classes], train_op, loss): the loss without weight decay,
        the (hardest pixels') cross-entropy when lovasz_weight is 0
    """
    logits = tf.reshape(nn_last_layer, (-1, num_classes), name='logits')
    labels = tf.reshape(correct_label, (-1, num_classes))
    per_pixel = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    weights = tf.reduce_sum(labels * (1.0 if class_weights is None else
                                      tf.constant(class_weights, tf.float32)), axis=1)
    if hard_pixels < 1:  # void pixels have no loss and no weight, so they never count
        non_void = tf.reduce_sum(labels)  # one-hot rows
        _, hardest = tf.nn.top_k(per_pixel,
                                 tf.cast(tf.math.ceil(hard_pixels * non_void), tf.int32))
        weights = tf.scatter_nd(hardest[:, None], tf.gather(weights, hardest), tf.shape(weights))
    loss = tf.math.divide(tf.reduce_sum(weights * per_pixel),
                          tf.maximum(tf.reduce_sum(weights), 1e-6), name='cross_entropy_loss')
    if lovasz_weight:
        loss = tf.add(loss, lovasz_weight * lovasz_softmax(tf.nn.softmax(logits), labels),
                      name='loss')
    total_loss = loss + tf1.losses.get_regularization_loss()
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        train_op = tf1.train.AdamOptimizer(learning_rate).minimize(total_loss)
    return logits, train_op, loss


def train_nn(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss, input_image,
             correct_label, keep_prob, learning_rate, keep_prob_value=0.5,
             learning_rate_value=1e-4, log=print, start_epoch=1, on_step=None,
             on_epoch_end=None):
    """Train epochs `start_epoch`..`epochs`, showing a progress bar with the running loss and
    reporting each epoch's mean loss through `log`.

    `learning_rate_value` is a number or a function of the global step (0-based, counted from
    the start of epoch 1). `on_step(loss)` is called after every step and
    `on_epoch_end(epoch, mean_loss)` after every epoch (validation, checkpoints and summaries
    hang there).
    :return: the list of mean losses, one per epoch trained
    """
    batches = -(-len(get_batches_fn) // batch_size) if hasattr(get_batches_fn, '__len__') else None
    rate = learning_rate_value if callable(learning_rate_value) else lambda _: learning_rate_value
    step = (start_epoch - 1) * (batches or 0)
    history = []
    for epoch in range(start_epoch, epochs + 1):
        start, total, seen, waited = time.time(), 0.0, 0, [0.0]
        with tqdm(_timed(get_batches_fn(batch_size), waited), total=batches,
                  desc=f'Epoch {epoch}/{epochs}', leave=False, disable=None) as bar:
            for images, labels in bar:
                _, loss = sess.run([train_op, cross_entropy_loss],
                                   {input_image: images, correct_label: labels,
                                    keep_prob: keep_prob_value, learning_rate: rate(step)})
                step += 1
                total += loss * len(images)
                seen += len(images)
                bar.set_postfix(loss=f'{total / seen:.4f}')
                if on_step:
                    on_step(float(loss))
        history.append(float(total / seen))
        took = time.time() - start
        log(f'epoch {epoch}/{epochs}: mean loss {history[-1]:.4f} ({took:.0f} s, {seen} images, '
            f'{100 * waited[0] / took:.1f}% of it waiting for data)')
        if on_epoch_end:
            on_epoch_end(epoch, history[-1])
    return history


def _timed(iterable, waited):
    """Yield from `iterable`, adding the seconds spent waiting for each item to waited[0]."""
    iterator = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - start
        yield item


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


def train_crop_arg(text):
    """Parse `HxW` as image_shape_arg does, or `none` for whole images."""
    return None if text.lower() == 'none' else image_shape_arg(text)


def encoder_weights_arg(text):
    """Parse `udacity`, `none` or `keras-h5:PATH`."""
    if text in ('udacity', 'none'):
        return text
    if text.startswith('keras-h5:'):
        if not os.path.isfile(text[len('keras-h5:'):]):
            raise argparse.ArgumentTypeError(f'{text[len("keras-h5:"):]}: file not found')
        return text
    raise argparse.ArgumentTypeError(f'{text!r}: use udacity, none or keras-h5:PATH')


def load_config(path):
    """The option defaults from a JSON config file (a run's config.json works too)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise helper.UserError(f'{path}: cannot read the config file ({e})') from None
    for derived in ('versions', 'class_weight_values'):
        config.pop(derived, None)
    return config


def parse_args(argv=None):
    """Options: configs/kitti_road.json, then what a --config file sets, then the flags."""
    pre = helper.ArgumentParser(add_help=False)
    pre.add_argument('--config', default=DEFAULT_CONFIG,
                     help='JSON file of options over those of %(default)s')
    config_path = pre.parse_known_args(argv)[0].config
    parser = helper.ArgumentParser(description=__doc__.split('\n\n')[0], parents=[pre])
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
    parser.add_argument('--dataset', choices=sorted(datasets.READERS),
                        help='the data set layout in --data-dir (default: %(default)s)')
    parser.add_argument('--label', choices=('road', 'lane'), help='KITTI ground truth to train '
                                                                  'on (default: %(default)s)')
    parser.add_argument('--classes', metavar='FILE',
                        help="a JSON class file replacing the data set's own")
    parser.add_argument('--remap', metavar='NAME=I[+I..][,..]',
                        help='merge classes, e.g. road=3: road against everything else')
    parser.add_argument('--augment', metavar='KEY=VALUE,..',
                        help='training augmentation over the defaults '
                             f'{",".join(f"{k}={v:g}" for k, v in transforms.DEFAULTS.items())}'
                             '; "none,flip=0.5" for flips only (default: %(default)s)')
    parser.add_argument('--plain-epochs', type=int, metavar='N',
                        help='train the last N epochs on flips only (and --train-crop): no zoom '
                             'or colour jitter, so the last, low-rate steps fit the images as '
                             'inference sees them (default: %(default)s)')
    parser.add_argument('--train-crop', type=train_crop_arg, metavar='HxW',
                        help='train on random HxW windows of the --image-shape images, '
                             'multiples of 32 (validation and inference see whole images); '
                             'cheaper steps, so more of them in the same time; none: whole '
                             'images (default: %(default)s)')
    parser.add_argument('--class-weights', choices=('none', 'median'),
                        help='weight the loss by median-frequency balancing of the training '
                             'labels (default: %(default)s)')
    parser.add_argument('--lovasz-weight', type=float,
                        help='add this times the Lovasz-softmax loss, a surrogate of 1 - IoU, '
                             'to the cross-entropy (default: %(default)s)')
    parser.add_argument('--hard-pixels', type=float, metavar='FRACTION',
                        help="train on this fraction of each batch's non-void pixels, those "
                             'with the largest loss (online hard example mining; default: '
                             '%(default)s, all)')
    parser.add_argument('--encoder', choices=('vgg16', 'mobilenetv2'),
                        help='the backbone (default: %(default)s)')
    parser.add_argument('--decoder', choices=sorted(mobilenet.DECODERS),
                        help="mobilenetv2's decoder: fcn8s, the FCN decoder on strides "
                             "8/16/32; fcn4s adds a stride-4 skip; dilated: stride-16/32 stages "
                             "dilated with skips at 8/4; fpn: strides 4-32 merged as features "
                             "(a feature pyramid), scored once (default: %(default)s)")
    parser.add_argument('--alpha', type=float,
                        help="mobilenetv2's width multiplier (default: %(default)s)")
    parser.add_argument('--lr-schedule', choices=('constant', 'poly'),
                        help="constant, or poly: decayed as (1 - step/steps)^0.9 to 0 "
                             "(default: %(default)s)")
    parser.add_argument('--ema-decay', type=float,
                        help='validate, export and deploy an exponential moving average of the '
                             'weights with this decay per step, e.g. 0.9995, its batch-norm '
                             'statistics measured on 32 training images before every validation; '
                             '0: the weights themselves (default: %(default)s)')
    parser.add_argument('--encoder-weights', type=encoder_weights_arg,
                        help="udacity (data-dir/vgg, downloaded if absent), keras-h5:PATH "
                             "(Keras's VGG16 ImageNet file) or none (from scratch) "
                             "(default: %(default)s)")
    parser.add_argument('--seed', type=int, help='(default: %(default)s)')
    parser.add_argument('--val-fraction', type=float,
                        help='share of the labelled images held out for validation after every '
                             'epoch, split with --seed (default: %(default)s)')
    parser.add_argument('--val-every', type=int, metavar='N',
                        help='validate every N epochs and after the last (with --ema-decay, '
                             'measuring the averaged weights\' batch-norm statistics then too); '
                             'the best model is chosen among those epochs (default: %(default)s)')
    parser.add_argument('--tb-images-every', type=int,
                        help='log validation overlays to TensorBoard every N epochs '
                             '(default: %(default)s)')
    parser.add_argument('--resume', metavar='RUN_DIR', default=None,
                        help='continue an interrupted run from its last checkpoint, with its '
                             'options and split')
    config = {**load_config(DEFAULT_CONFIG), **load_config(config_path)}
    unknown = sorted(set(config) - {a.dest for a in parser._actions})
    if unknown:
        raise helper.UserError(f'{config_path}: unknown option {unknown[0]!r}')
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    missing = [a.dest for a in parser._actions
               if getattr(args, a.dest, 0) is None and a.dest not in OPTIONAL]
    if missing:
        raise helper.UserError(f'{config_path}: no value for option {missing[0]!r}')
    for flag in ('epochs', 'batch_size', 'val_every', 'tb_images_every'):
        if getattr(args, flag) < 1:
            parser.error(f'argument --{flag.replace("_", "-")}: must be at least 1')
    if not 0 <= args.plain_epochs <= args.epochs:
        parser.error(f'argument --plain-epochs: {args.plain_epochs} must be from 0 to --epochs '
                     f'({args.epochs})')
    crop = args.train_crop
    if crop and any(c > n for c, n in zip(crop, args.image_shape)):
        parser.error(f'argument --train-crop: {crop[0]}x{crop[1]} is larger than '
                     f'--image-shape {args.image_shape[0]}x{args.image_shape[1]}')
    if args.lovasz_weight < 0:
        parser.error(f'argument --lovasz-weight: {args.lovasz_weight} must not be negative')
    if not 0 < args.hard_pixels <= 1:
        parser.error(f'argument --hard-pixels: {args.hard_pixels} must be in (0, 1]')
    if not 0 <= args.ema_decay < 1:
        parser.error(f'argument --ema-decay: {args.ema_decay} must be in [0, 1)')
    if args.ema_decay and args.encoder_weights == 'udacity':
        parser.error('--ema-decay needs an encoder built in the graph (--encoder-weights none '
                     'or keras-h5:PATH); the frozen udacity VGG16 has a single tower')
    if args.alpha <= 0:
        parser.error(f'argument --alpha: {args.alpha} must be above 0')
    if args.encoder == 'mobilenetv2' and args.encoder_weights != 'none':
        parser.error(f'--encoder mobilenetv2 trains from scratch: give --encoder-weights none '
                     f'({args.encoder_weights} is a VGG16 encoder)')
    if args.encoder == 'vgg16' and args.decoder != 'fcn8s':
        parser.error(f'--decoder {args.decoder} is for mobilenetv2; VGG16 uses fcn8s')
    return args


Network = collections.namedtuple('Network', 'input_image keep_prob train_output output initialise '
                                            'averaged calibrate')


def build_network(sess, args, num_classes, input_shape=(None, None, None)):
    """The FCN: the encoder chosen by --encoder and --encoder-weights with the decoder `layers`
    on it, as a training and an inference tower that share their weights.

    Udacity's VGG16 is a frozen graph loaded as it is: its one tower serves both, dropout set by
    keep_prob. The in-graph encoders are built twice: the inference tower without dropout and
    with batch norm on its moving statistics, so validation, export and prediction run exactly
    the graph that is deployed. `initialise()` initialises every variable not restored from a
    SavedModel, then loads Keras weights when given. `input_shape` (batch, height, width) fixes
    the input's shape for in-graph encoders (the benchmark counts FLOPs on static shapes).

    With `args.ema_decay`, the inference tower reads an exponential moving average of the
    trainable weights instead of the weights: `averaged(train_op)` is the training op that also
    updates the averages after each step. Batch norm statistics gathered under the training
    weights do not fit their average (as for stochastic weight averaging), so the inference
    tower's statistics are measured anew for the averaged weights: `calibrate(images)` sets
    them to the statistics of a batch of images run through the averaged weights, and does
    nothing without --ema-decay.
    """
    restored, weights, averages, calibration = set(), None, {}, []
    if args.encoder_weights == 'udacity':
        try:
            vgg_path = helper.maybe_download_pretrained_vgg(args.data_dir)
        except helper.UserError as e:
            raise helper.UserError(f'{e}; or train from scratch with --encoder-weights none') \
                from None
        image_input, keep_prob, *features = load_vgg(sess, vgg_path)
        restored = {v.name for v in tf1.global_variables()}
        output = train_output = layers(*features, num_classes, args.weight_decay)
    else:
        image_input = tf1.placeholder(tf.float32, [*input_shape, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        if args.encoder == 'mobilenetv2':
            strides, skip_scales = mobilenet.DECODERS[args.decoder], (1, 1)

            def encoder(training):
                return mobilenet.build_encoder(image_input, training, args.alpha, args.decoder)
        else:
            if args.encoder_weights.startswith('keras-h5:'):
                weights = vgg.read_keras_h5(args.encoder_weights[len('keras-h5:'):])
            blocks, fc_width = vgg.encoder_shape(weights) if weights else (vgg.BLOCKS,
                                                                           vgg.FC_WIDTH)
            strides, skip_scales = VGG_STRIDES, VGG_SKIP_SCALES

            def encoder(training):
                return vgg.build_encoder(image_input, keep_prob, blocks, fc_width,
                                         'caffe' if weights else 'standardize', training)

        def tower(training):
            if args.decoder == 'fpn':
                return pyramid_layers(encoder(training), num_classes, training,
                                      args.weight_decay, strides)
            *finer, layer3, layer4, layer7 = encoder(training)
            return layers(layer3, layer4, layer7, num_classes, args.weight_decay, strides,
                          skip_scales, finer)
        train_output = tower(True)
        if args.ema_decay:
            averages = {v.ref(): tf1.get_variable(v.op.name + '/average', v.shape, v.dtype,
                                                  tf1.zeros_initializer(), trainable=False)
                        for v in tf1.global_variables()}  # the network's, so far
            count = tf1.get_variable('average_count', [], tf.float32, tf1.zeros_initializer(),
                                     trainable=False)

        def averaged_getter(getter, *a, **kw):
            variable = getter(*a, **kw)
            return averages.get(variable.ref(), variable)
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True,
                                custom_getter=averaged_getter):
            output = tower(False)
            if averages:  # a training-mode tower on the averages, for its batch statistics
                known = len(tf1.get_collection(ops.BATCH_STATISTICS))
                tower(True)
                calibration = [moving.assign(batch) for moving, batch
                               in tf1.get_collection(ops.BATCH_STATISTICS)[known:]]

    def initialise():
        sess.run(tf1.variables_initializer([v for v in tf1.global_variables()
                                            if v.name not in restored]))
        if weights:
            vgg.assign_weights(sess, weights)
        sess.run([average.assign(v.deref()) for v, average in averages.items()])

    def averaged(train_op):
        """After each step, average <- d * average + (1 - d) * weight, where d ramps up as
        min(ema_decay, (1 + n) / (10 + n)) at the n-th step, so early averages follow the
        weights instead of remembering their random start."""
        if not averages:
            return train_op
        with tf.control_dependencies([train_op]):
            n = count.assign_add(1.0)
            decay = tf.minimum(float(args.ema_decay), (1 + n) / (10 + n))
            return tf.group([average.assign(decay * average + (1 - decay) * v.deref())
                             for v, average in averages.items() if v.deref().trainable],
                            name='train_and_average')

    def calibrate(images):
        if calibration:
            sess.run(calibration, {image_input: images, keep_prob: 1.0})
    return Network(image_input, keep_prob, train_output, output, initialise, averaged, calibrate)


def learning_rate_schedule(args, steps_per_epoch):
    """The learning rate at each global step (0-based): constant, or DeepLab's 'poly' decay
    (1 - step / steps) ** 0.9 from --learning-rate towards 0 at the last step."""
    if args.lr_schedule == 'constant':
        return lambda step: args.learning_rate
    steps = args.epochs * steps_per_epoch
    return lambda step: args.learning_rate * max(0.0, 1 - step / steps) ** 0.9


def read_json(path, flag):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise helper.UserError(f'{flag}: cannot read {path} ({e})') from None


def save_config(run_dir, args, class_weights):
    """Write every option and the library versions to run_dir/config.json."""
    config = {k: v for k, v in vars(args).items() if k not in ('config', 'resume')}
    for shape in ('image_shape', 'train_crop'):
        if config[shape]:
            config[shape] = '{}x{}'.format(*config[shape])
    if class_weights is not None:
        config['class_weight_values'] = [round(float(w), 6) for w in class_weights]
    config['versions'] = {'tensorflow': tf.__version__, 'python': platform.python_version(),
                          'numpy': np.__version__}
    helper.write_json(os.path.join(run_dir, 'config.json'), config)


def save_model(sess, export_dir, input_image, keep_prob, probabilities, info):
    """Save the network as a SavedModel (tag `serve`, signature `serving_default`: RGB 0..255
    images at the training size in, per-pixel class probabilities out) with `info` as fcn.json."""
    signature = tf1.saved_model.predict_signature_def(
        inputs={'image': input_image, 'keep_prob': keep_prob},
        outputs={'probabilities': probabilities})
    with helper.atomic_path(export_dir) as tmp:
        builder = tf1.saved_model.Builder(tmp)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={'serving_default': signature})
        builder.save()
        helper.write_json(os.path.join(tmp, predict.MODEL_INFO), info)


def resume_options(run_dir):
    """The options an interrupted run was started with, from its config.json."""
    path = os.path.join(run_dir, 'config.json')
    if not os.path.isfile(path):
        raise helper.UserError(f'--resume {run_dir}: no config.json there; not a run folder')
    args = parse_args(['--config', path])
    args.resume = run_dir
    return args


def data_split(args):
    """The data set and its (train pairs, validation pairs): the data set's own validation set,
    else a seeded split of its labelled images; read back from split.json when resuming."""
    dataset = datasets.open_dataset(args.dataset, args.data_dir, args.label, args.classes,
                                    args.remap)
    if not args.resume:
        if dataset.val is not None:
            return dataset, dataset.train, dataset.val
        return (dataset,) + helper.split_pairs(dataset.train, args.val_fraction, args.seed)
    split = read_json(os.path.join(args.resume, 'split.json'), '--resume')
    by_name = {os.path.basename(image): (image, label)
               for image, label in dataset.train + (dataset.val or [])}
    missing = [name for name in split['train'] + split['val'] if name not in by_name]
    if missing:
        raise helper.UserError(f'--resume {args.resume}: {missing[0]} of its split is not in '
                               f'{args.data_dir} any more')
    return dataset, [by_name[n] for n in split['train']], [by_name[n] for n in split['val']]


def summary_line(results):
    """The validation figures of one epoch, in one line."""
    figures = [f'road IoU {results["iou"][1]:.4f}' if len(results['iou']) == 2 else '',
               f'mean IoU {results["mean_iou"]:.4f}',
               f'pixel accuracy {results["pixel_accuracy"]:.4f}']
    kitti = results.get('kitti_road')
    if kitti and kitti['max_f'] is not None:
        figures += [f'MaxF {kitti["max_f"]:.4f}', f'AP {kitti["average_precision"]:.4f}']
    return ', '.join(f for f in figures if f)


class RunMonitor:
    """The bookkeeping around training: TensorBoard summaries every step, and after every epoch
    metrics.json and the checkpoint, with validation and the export of the best model so far
    after every --val-every epochs and the last."""

    def __init__(self, run_dir, sess, saver, predict, export, val_samples, args, log, records,
                 step, classes):
        self.run_dir, self.sess, self.saver, self.classes = run_dir, sess, saver, classes
        self.predict, self.export, self.val_samples = predict, export, val_samples
        self.args, self.log, self.records, self.step_count = args, log, records, step
        self.writer = tf1.summary.FileWriter(run_dir)
        self.best = max((r for r in records if 'key_metric' in r),
                        key=lambda r: r['key_metric'], default=None) if val_samples else None
        self.clock = time.time()

    def scalars(self, values, step):
        self.writer.add_summary(tf1.Summary(value=[
            tf1.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()
            if value is not None]), step)

    def validates(self, epoch):
        """Whether `epoch` ends with validation: every --val-every epochs, and the last."""
        return epoch % self.args.val_every == 0 or epoch == self.args.epochs

    def step(self, loss):
        self.step_count += 1
        self.scalars({'train/loss': loss}, self.step_count)

    def overlays(self, epoch, count=3):
        """A few validation overlays, at the training size, as TensorBoard images."""
        import imageio.v3 as iio
        values = []
        for name, image, _ in self.val_samples[:count]:
            small = helper.resize_image(image, self.args.image_shape)
            classes = self.predict(small[None])[0].argmax(-1)
            drawn = helper.overlay(small, classes, helper.overlay_colors(self.classes.colors))
            png = iio.imwrite('<bytes>', drawn, extension='.png')
            values.append(tf1.Summary.Value(tag=f'val/overlay/{name}', image=tf1.Summary.Image(
                height=small.shape[0], width=small.shape[1], colorspace=3,
                encoded_image_string=png)))
        self.writer.add_summary(tf1.Summary(value=values), epoch)

    def epoch_end(self, epoch, mean_loss):
        now = time.time()
        record = {'epoch': epoch, 'train_loss': mean_loss, 'seconds': now - self.clock}
        self.clock = now
        validated = bool(self.val_samples) and self.validates(epoch)
        if validated:
            results = evaluate.evaluate(self.predict, self.val_samples, self.args.image_shape,
                                        self.classes.num_classes)
            record.update(val=results, key_metric=evaluate.key_metric(results))
            self.log(f'epoch {epoch}: validation {summary_line(results)}')
            kitti = results.get('kitti_road', {})
            self.scalars({'val/pixel_accuracy': results['pixel_accuracy'],
                          'val/mean_iou': results['mean_iou'],
                          'val/road_iou': results['iou'][1] if kitti else None,
                          'val/max_f': kitti.get('max_f'),
                          'val/average_precision': kitti.get('average_precision')}, epoch)
            if epoch % self.args.tb_images_every == 0 or epoch == self.args.epochs:
                self.overlays(epoch)
        keep = {self.best['epoch']} if self.best else set()
        checkpoints.save(self.sess, self.saver, os.path.join(self.run_dir, 'checkpoints'),
                         epoch, keep)
        if validated and (self.best is None or record['key_metric'] > self.best['key_metric']):
            self.best = record
            self.export(epoch, record['key_metric'])
            self.log(f'epoch {epoch}: new best validation IoU {record["key_metric"]:.4f}, '
                     f'model exported to {os.path.join(self.run_dir, "model")}')
        self.records.append(record)
        helper.write_json(os.path.join(self.run_dir, 'metrics.json'),
                          {'epochs': self.records, 'best_epoch': self.best and self.best['epoch']})
        self.writer.flush()


def run(argv=None):
    """Everything `python main.py` does: check the data, build the FCN, train with validation
    and checkpoints (or resume), export the best model and write overlays to the run folder."""
    args = parse_args(argv)
    if args.resume:
        args = resume_options(args.resume)
    dataset, train_pairs, val_pairs = data_split(args)
    classes = dataset.classes
    augment = transforms.Augment(args.augment, args.train_crop)
    get_batches_fn = helper.BatchGenerator(
        train_pairs, args.image_shape, dataset.read_label, classes.num_classes, augment,
        args.seed, plain_from=args.epochs - args.plain_epochs + 1 if args.plain_epochs else None)
    val_samples = evaluate.load_samples(val_pairs, dataset.read_label)
    class_weights = datasets.median_frequency_weights(get_batches_fn.labels, classes.num_classes) \
        if args.class_weights == 'median' else None
    colors = helper.overlay_colors(classes.colors)
    with tf.Graph().as_default(), tf1.Session() as sess:
        tf1.set_random_seed(args.seed)
        net = build_network(sess, args, classes.num_classes)
        input_image, keep_prob = net.input_image, net.keep_prob
        correct_label = tf1.placeholder(tf.float32, [None, None, None, classes.num_classes],
                                        'label')
        learning_rate = tf1.placeholder(tf.float32, [], 'learning_rate')
        _, train_op, cross_entropy_loss = optimize(net.train_output, correct_label, learning_rate,
                                                   classes.num_classes, class_weights,
                                                   args.lovasz_weight, args.hard_pixels)
        train_op = net.averaged(train_op)
        probabilities = tf.nn.softmax(net.output, name='probabilities')
        saver = tf1.train.Saver(max_to_keep=None)
        net.initialise()

        run_dir, start_epoch, records = start_run(sess, saver, args, train_pairs, val_pairs,
                                                  class_weights)
        get_batches_fn.epoch = start_epoch - 1
        log = helper.RunLog(os.path.join(run_dir, 'train.log'))
        crop = args.train_crop
        log(f'run {run_dir}: {args.dataset} with {classes.num_classes} classes, '
            f'{len(train_pairs)} training and {len(val_pairs)} validation images at '
            f'{args.image_shape[0]}x{args.image_shape[1]}'
            + (f' (training on {crop[0]}x{crop[1]} crops)' if crop else '')
            + f', epochs {start_epoch}..{args.epochs}'
            + (f' (the last {args.plain_epochs} on flips only)' if args.plain_epochs else ''))

        def predict(batch):
            return sess.run(probabilities, {input_image: batch, keep_prob: 1.0})

        def export(epoch, key_metric=None):
            save_model(sess, os.path.join(run_dir, 'model'), input_image, keep_prob,
                       probabilities, {'image_shape': list(args.image_shape),
                                       'num_classes': classes.num_classes,
                                       'class_names': classes.names,
                                       'class_colors': [list(c) for c in classes.colors],
                                       'encoder': args.encoder, 'decoder': args.decoder,
                                       'alpha': args.alpha,
                                       'dataset': args.dataset, 'label': args.label,
                                       'classes': args.classes, 'remap': args.remap,
                                       'epoch': epoch, 'val_iou': key_metric})

        batches = -(-len(get_batches_fn) // args.batch_size)
        monitor = RunMonitor(run_dir, sess, saver, predict, export, val_samples, args, log,
                             records, (start_epoch - 1) * batches, classes)
        calibration_images = helper.calibration_images(
            [image for image, _ in train_pairs], args.image_shape) if args.ema_decay else None

        def epoch_end(epoch, mean_loss):
            if monitor.validates(epoch):
                net.calibrate(calibration_images)
            monitor.epoch_end(epoch, mean_loss)
        train_nn(sess, args.epochs, args.batch_size, get_batches_fn, train_op, cross_entropy_loss,
                 input_image, correct_label, keep_prob, learning_rate, args.keep_prob,
                 learning_rate_schedule(args, batches), log, start_epoch, monitor.step,
                 epoch_end)
        if monitor.best:  # overlays from the model that was exported
            best = checkpoints.folder_for(os.path.join(run_dir, 'checkpoints'),
                                          monitor.best['epoch'])
            saver.restore(sess, os.path.join(best, checkpoints.PREFIX))
        else:
            export(args.epochs)
        helper.save_inference_samples(args.runs_dir, args.data_dir, sess, args.image_shape,
                                      net.output, keep_prob, input_image, run_dir,
                                      dataset.test_images, colors)
        helper.write_legend(os.path.join(run_dir, 'legend.png'), classes.names, colors)
        log(f'model and overlays written to {run_dir}')
    return run_dir


def start_run(sess, saver, args, train_pairs, val_pairs, class_weights):
    """A new run folder with config.json and split.json, or the resumed run's state restored
    from its newest sound checkpoint: (run folder, first epoch to train, earlier epoch records)."""
    if not args.resume:
        run_dir = helper.new_run_dir(args.runs_dir)
        save_config(run_dir, args, class_weights)
        helper.write_json(os.path.join(run_dir, 'split.json'),
                          {'train': [os.path.basename(i) for i, _ in train_pairs],
                           'val': [os.path.basename(i) for i, _ in val_pairs]})
        return run_dir, 1, []
    run_dir = args.resume
    log = helper.RunLog(os.path.join(run_dir, 'train.log'))
    done = checkpoints.restore_latest(sess, saver, os.path.join(run_dir, 'checkpoints'), log)
    log(f'resuming {run_dir} after epoch {done}' if done else
        f'resuming {run_dir}: no usable checkpoint, starting from epoch 1')
    path = os.path.join(run_dir, 'metrics.json')
    records = read_json(path, '--resume')['epochs'] if os.path.exists(path) else []
    return run_dir, done + 1, [r for r in records if r['epoch'] <= done]


if __name__ == '__main__':
    sys.exit(helper.main_guard(run))
