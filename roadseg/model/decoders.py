"""The decoders grafted onto an encoder's features: FCN's class-score skips with transposed-
convolution upsampling ('fcn8s', 'fcn4s', 'dilated'), and a feature pyramid scored once ('fpn').

Both end at the input's size with the tensor `fcn_out` ([batch, height, width, classes] logits)
and work for unknown spatial sizes; L2 weight decay goes to REGULARIZATION_LOSSES.
"""
import numpy as np

from roadseg.model import mobilenet, ops
from roadseg.model.entries import mobilenetv2, vgg16

tf, tf1 = ops.tf, ops.tf1

PYRAMID_CHANNELS = 64  # of the 'fpn' decoder's merged features


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


def score(x, num_classes, name, weight_decay):
    """A 1x1 class-scoring convolution, zero-initialised as in the FCN paper."""
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [1, 1, x.shape[-1], num_classes], tf1.zeros_initializer(),
                            weight_decay)
        bias = tf1.get_variable('bias', [num_classes], initializer=tf1.zeros_initializer())
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, 'SAME'), bias)


def upsample(x, factor, name, weight_decay, like=None):
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


def fcn(layer3, layer4, layer7, num_classes, weight_decay=1e-3, strides=vgg16.STRIDES,
        skip_scales=vgg16.SKIP_SCALES, finer=()):
    """The FCN-8s decoder ("at-once" variant): score layer 7, 4 and 3 with 1x1 convolutions
    (layers 3 and 4 scaled by `skip_scales` first), upsample with bilinear-initialised transposed
    convolutions from stride to stride, adding the skip scores on the way, to the input's size.

    `strides` are the inputs' strides, finest first: VGG16's (8, 16, 32) upsample 2x, 2x and 8x;
    a dilated encoder's (4, 8, 8) adds layers 7 and 4 as they are, then upsamples 2x and 4x.
    `finer` are features finer than layer 3, finest first, scored and added the same way (FCN-4s:
    a stride-4 skip, `strides` (4, 8, 16, 32)), for sharper boundaries.
    :return: [batch, height, width, num_classes] logits at the input's size
    """
    skips = [x if scale == 1 else x * scale for x, scale in
             zip((layer4, layer3), skip_scales[::-1])] + list(finer[::-1])
    skip_strides = strides[-2::-1]
    with tf1.variable_scope('fcn8s'):
        fused, stride = score(layer7, num_classes, 'score_fr', weight_decay), strides[-1]
        for level, (skip, skip_stride) in enumerate(zip(skips, skip_strides)):
            skip_score = score(skip, num_classes, f'score_pool{4 - level}', weight_decay)
            name = 'upscore2' if level == 0 else f'upscore_pool{5 - level}'
            fused = upsample(fused, stride // skip_stride, name, weight_decay,
                             like=skip_score) + skip_score
            stride = skip_stride
        return tf.identity(upsample(fused, stride, f'upscore{stride}', weight_decay), 'fcn_out')


def fpn(features, num_classes, training, weight_decay=1e-3,
        strides=mobilenetv2.STRIDES['fpn']):
    """The 'fpn' decoder: the features merged top-down (`pyramid`), scored by a 1x1 convolution
    at the finest stride and upsampled from there to the input's size by a bilinear-initialised
    transposed convolution, as `fcn` ends.
    :return: [batch, height, width, num_classes] logits at the input's size
    """
    with tf1.variable_scope('fpn'):
        merged = pyramid(features, strides, training)
        scores = score(merged, num_classes, 'score', weight_decay)
        return tf.identity(upsample(scores, strides[0], f'upscore{strides[0]}', weight_decay),
                           'fcn_out')


def fcn_tower(head, images, training):
    """The FCN decoders' tower (fcn8s, fcn4s, dilated): `fcn` on the encoder's features of
    `images` (network.Head), and in a training tower the auxiliary loss with --aux-loss."""
    config = head.config
    *finer, layer3, layer4, layer7 = head.features(images, training)
    logits = fcn(layer3, layer4, layer7, head.num_classes, config.weight_decay, head.strides,
                 head.skip_scales, finer)
    if training and config.aux_loss:
        auxiliary(layer4, logits, head.num_classes, config.aux_loss, config.weight_decay)
    return logits


def fpn_tower(head, images, training):
    """The 'fpn' decoder's tower: `fpn` on the encoder's features of `images`."""
    return fpn(head.features(images, training), head.num_classes, training,
               head.config.weight_decay, head.strides)


def auxiliary(features, like, num_classes, weight, weight_decay):
    """Deep supervision (PSPNet's auxiliary loss, --aux-loss W): in a training tower, a 1x1
    class score of the decoder's layer-4 `features` (stride 16) resized bilinearly to the size
    of `like` (the logits), put with its loss weight W in the replica's AUXILIARY_LOGITS,
    which `loss.optimize` adds. The encoder's middle learns the classes directly, not only through
    the decoder. The inference tower does not build it, so validation and exports are
    unchanged."""
    if not ops.first_use():
        return
    with tf1.variable_scope('auxiliary'):
        logits = tf.image.resize(score(features, num_classes, 'score', weight_decay),
                                 tf.shape(like)[1:3])
    tf1.add_to_collection(ops.replica_collection(ops.AUXILIARY_LOGITS), (logits, weight))


def pyramid(features, strides, training, channels=PYRAMID_CHANNELS):
    """The top-down path of Lin et al.'s feature pyramid (FPN, 2017) in MobileNetV2's blocks:
    layer 7 reduced to `channels` by a 1x1 convolution, then at each finer skip upsampled,
    added to the skip's own 1x1 reduction and mixed by a 3x3 depthwise-separable convolution.
    An FCN skip adds a linear 1x1 class score of each skip; here the fine features meet the
    coarse ones before anything is scored, so boundaries are placed by a non-linear look at
    both. Upsampling repeats pixels (nearest neighbour, as FPN does): its gradient is a sum,
    where a bilinear resize's gradient made a training step a third slower on this CPU.
    `features` and `strides` are finest first; returns the features at the finest stride."""
    *skips, top = features
    with tf1.variable_scope('pyramid'):
        x = mobilenet.conv_bn(top, channels, 1, 1, training, f'lateral{strides[-1]}')
        for skip, stride, coarser in zip(skips[::-1], strides[-2::-1], strides[::-1]):
            x = tf.repeat(tf.repeat(x, coarser // stride, axis=1), coarser // stride, axis=2)
            x = x + mobilenet.conv_bn(skip, channels, 1, 1, training, f'lateral{stride}')
            x = mobilenet.depthwise_bn(x, 1, 1, training, f'merge{stride}_depthwise')
            x = mobilenet.conv_bn(x, channels, 1, 1, training, f'merge{stride}_pointwise')
    return x
