"""FC-DenseNet, "the one hundred layers Tiramisu" (Jégou et al. 2017), as the paper builds it:
an encoder-decoder of its own, trained from scratch, in the project's graph style.

- a 3x3 convolution to 48 feature maps;
- down path: dense blocks (each layer BN-ReLU-3x3 convolution-dropout, its `growth` new maps
  concatenated to its input), each block's output kept as a skip, then a transition down
  (BN-ReLU-1x1 convolution-dropout-2x2 max pool);
- a bottleneck dense block;
- up path: a transition up (3x3 transposed convolution, stride 2, of the previous block's new
  maps only) concatenated with the skip, then a dense block; only a block's new maps go upward,
  so the width stays bounded;
- a 1x1 convolution of the last block's whole stack to class scores, at the input's size.

Five poolings: the input's height and width must be multiples of 32. Dropout (rate
1 - keep_prob, the paper's 0.2 with --keep-prob 0.8) is in the training tower only; batch norm
is ops.batch_norm, on the moving statistics in the inference tower.
"""
from roadseg.model import ops
from roadseg.model.entries.tiramisu import DEPTHS

tf, tf1 = ops.tf, ops.tf1

FIRST_CHANNELS = 48
BN_MOMENTUM = 0.9  # as MobileNetV2's: from scratch, a few thousand steps (mobilenet.py)


def conv(x, filters, size, name, weight_decay):
    """A `size` x `size` convolution with a bias (He-initialised, as the paper's)."""
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [size, size, x.shape[-1], filters],
                            tf1.initializers.he_uniform(), weight_decay)
        bias = tf1.get_variable('bias', [filters], initializer=tf1.zeros_initializer())
        return tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, 'SAME'), bias)


def bn_relu_conv(x, filters, size, training, keep_prob, name, weight_decay):
    """BN, ReLU, convolution, and dropout in the training tower."""
    with tf1.variable_scope(name):
        y = conv(tf.nn.relu(ops.batch_norm(x, training, BN_MOMENTUM)), filters, size, 'conv',
                 weight_decay)
        return tf.nn.dropout(y, rate=1 - keep_prob) if training else y


def dense_block(x, layers, growth, training, keep_prob, name, weight_decay):
    """`layers` layers, each seeing the concatenation of the block's input and every earlier
    layer's maps: (the input with every new map, the new maps alone)."""
    new = []
    with tf1.variable_scope(name):
        for i in range(layers):
            y = bn_relu_conv(x, growth, 3, training, keep_prob, f'layer{i + 1}', weight_decay)
            new.append(y)
            x = tf.concat([x, y], -1)
    return x, tf.concat(new, -1)


def transition_down(x, training, keep_prob, name, weight_decay):
    """BN-ReLU-1x1 convolution (as many maps)-dropout, then a 2x2 max pool."""
    y = bn_relu_conv(x, x.shape[-1], 1, training, keep_prob, name, weight_decay)
    return tf.nn.max_pool2d(y, 2, 2, 'VALID')


def transition_up(x, skip, name, weight_decay):
    """A 3x3 transposed convolution with stride 2 (as many maps as `x`) to the skip's size,
    concatenated with the skip."""
    channels = x.shape[-1]
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [3, 3, channels, channels],
                            tf1.initializers.he_uniform(), weight_decay)
        bias = tf1.get_variable('bias', [channels], initializer=tf1.zeros_initializer())
        shape = tf.concat([tf.shape(x)[:1], tf.shape(skip)[1:3], [channels]], 0)
        y = tf.nn.bias_add(tf.nn.conv2d_transpose(x, kernel, shape, 2, 'SAME'), bias)
        y.set_shape(skip.shape[:3].concatenate([channels]))
        return tf.concat([y, skip], -1)


def fc_densenet(image_input, training, depth, num_classes, keep_prob, weight_decay):
    """FC-DenseNet-`depth` (56, 67 or 103) on RGB 0..255 images (scaled to -1..1 inside).
    :return: [batch, height, width, num_classes] logits, the tensor `fcn_out`
    """
    growth, layers = DEPTHS[depth]
    pools = len(layers) // 2
    with tf1.variable_scope(f'tiramisu{depth}'):
        x = conv(image_input / 127.5 - 1, FIRST_CHANNELS, 3, 'first_conv', weight_decay)
        skips = []
        for i in range(pools):
            x, _ = dense_block(x, layers[i], growth, training, keep_prob, f'down{i + 1}',
                               weight_decay)
            skips.append(x)
            x = transition_down(x, training, keep_prob, f'transition_down{i + 1}',
                                weight_decay)
        _, new = dense_block(x, layers[pools], growth, training, keep_prob, 'bottleneck',
                             weight_decay)
        for i in range(pools):
            x = transition_up(new, skips[-1 - i], f'transition_up{i + 1}', weight_decay)
            x, new = dense_block(x, layers[pools + 1 + i], growth, training, keep_prob,
                                 f'up{i + 1}', weight_decay)
        return tf.identity(conv(x, num_classes, 1, 'score', weight_decay), 'fcn_out')


def tower(head, images, training):
    """build_network's tower of --encoder tiramisu: FC-DenseNet at `head.config.depth`."""
    config = head.config
    return fc_densenet(images, training, config.depth, head.num_classes, head.keep_prob,
                       config.weight_decay)
