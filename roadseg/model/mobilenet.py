"""The MobileNetV2 encoder (Sandler et al. 2018) in the project's graph style: a fast backbone
that trains on a CPU, from scratch or from Keras's ImageNet weights (read_keras_h5).

Inverted residual blocks (1x1 expansion, 3x3 depthwise, linear 1x1 projection, a residual where
shapes allow), batch normalisation and ReLU6, channel counts scaled by the width multiplier
`alpha`. Four decoders:
- 'fcn8s': the FCN decoder (`decoders.fcn`) on the features at strides 8, 16 and 32, as on VGG16's
  pool3, pool4 and fc7;
- 'fcn4s': the same and the stride-4 features, for sharper boundaries;
- 'dilated': the stride-16 and stride-32 stages dilated instead of strided (output stride 8),
  with skips at strides 8 and 4;
- 'fpn': the features at strides 4 to 32 merged as features, not as class scores
  (`decoders.pyramid`), then scored and upsampled once.
Images come in as RGB 0..255 and are scaled to -1..1 inside, as MobileNetV2 expects.
"""
from roadseg.errors import UserError
from roadseg.model import keras_weights, ops
from roadseg.model.entries.mobilenetv2 import STRIDES

tf, tf1 = ops.tf, ops.tf1

# (expansion, output channels, blocks, stride of the first block), from the paper's Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
LAST_CHANNELS = 1280
WEIGHT_DECAY = 4e-5  # the paper's L2 on the encoder's kernels
# Moving-average decay of batch norm. Keras's 0.999 needs thousands of steps to forget the
# initial statistics; from scratch, with a few thousand steps in all, its inference-mode model
# was useless (road IoU 0.30 in the reference run) while 0.9 tracked the weights.
BN_MOMENTUM = 0.9
KERAS_FILE = "Keras's mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
BN_PARTS = ('gamma', 'beta', 'moving_mean', 'moving_variance')  # Keras's order


def make_divisible(value, divisor=8):
    """Channels rounded to a multiple of 8 without losing more than 10 %, as the paper does."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(x, filters, size, stride, training, name, relu6=True):
    """Convolution (no bias: batch norm follows), batch norm, optionally ReLU6."""
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [size, size, x.shape[-1], filters],
                            tf1.initializers.he_normal(), WEIGHT_DECAY)
        y = ops.batch_norm(tf.nn.conv2d(x, kernel, stride, 'SAME'), training, BN_MOMENTUM)
        return tf.nn.relu6(y) if relu6 else y


def depthwise_bn(x, stride, rate, training, name):
    """3x3 depthwise convolution (dilated by `rate`), batch norm, ReLU6."""
    with tf1.variable_scope(name):
        kernel = ops.weight('kernel', [3, 3, x.shape[-1], 1], tf1.initializers.he_normal())
        y = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], 'SAME',
                                   dilations=[rate, rate])
        return tf.nn.relu6(ops.batch_norm(y, training, BN_MOMENTUM))


def inverted_residual(x, expansion, channels, stride, rate, training, name):
    """Expand, filter depthwise, project linearly; add the input when the shapes match."""
    with tf1.variable_scope(name):
        y = x
        if expansion != 1:
            y = conv_bn(y, x.shape[-1] * expansion, 1, 1, training, 'expand')
        y = depthwise_bn(y, stride, rate, training, 'depthwise')
        y = conv_bn(y, channels, 1, 1, training, 'project', relu6=False)
        return x + y if stride == 1 and x.shape[-1] == channels else y


def build_encoder(image_input, training, alpha=1.0, decoder='fcn8s'):
    """MobileNetV2 on `image_input`; returns the features for the decoder `decoder`, at its
    STRIDES (the last, layer 7, is the encoder's output)."""
    dilate_from = STRIDES[decoder][-1]  # beyond this stride, dilate instead of striding
    with tf1.variable_scope('mobilenetv2'):
        x = conv_bn(image_input / 127.5 - 1, make_divisible(32 * alpha), 3, 2, training, 'conv1')
        stride, rate, skips = 2, 1, {}
        for s, (expansion, channels, blocks, first_stride) in enumerate(STAGES, 1):
            if first_stride > 1:
                skips.setdefault(stride, x)  # the last features before the resolution drops
            for b in range(blocks):
                block_stride = first_stride if b == 0 else 1
                if block_stride > 1 and stride >= dilate_from:
                    block_stride, rate = 1, rate * 2
                stride *= block_stride
                x = inverted_residual(x, expansion, make_divisible(channels * alpha),
                                      block_stride, rate, training, f'stage{s}_block{b + 1}')
        last = LAST_CHANNELS if alpha <= 1 else make_divisible(LAST_CHANNELS * alpha)
        x = conv_bn(x, last, 1, 1, training, 'conv_last')
    return (*(skips[stride] for stride in STRIDES[decoder][:-1]), x)


def features(config, keep_prob, keras):
    """build_network's MobileNetV2 of `config`: features(images, training) for its decoder."""
    return lambda images, training: build_encoder(images, training, config.alpha, config.decoder)


def keras_layers():
    """{Keras MobileNetV2 layer: this encoder's variable scope}, in the network's order: Conv1,
    then expanded_conv (the first block, with no expansion), block_1 .. block_16, Conv_1."""
    blocks = [f'stage{s}_block{b}' for s, (_, _, count, _) in enumerate(STAGES, 1)
              for b in range(1, count + 1)]
    layers = {'Conv1': 'conv1', 'bn_Conv1': 'conv1/bn'}
    for index, block in enumerate(blocks):
        keras = f'block_{index}' if index else 'expanded_conv'
        for part in ('expand', 'depthwise', 'project')[0 if index else 1:]:
            layers[f'{keras}_{part}'] = f'{block}/{part}'
            layers[f'{keras}_{part}_BN'] = f'{block}/{part}/bn'
    layers.update({'Conv_1': 'conv_last', 'Conv_1_bn': 'conv_last/bn'})
    return layers


def read_keras_h5(path):
    """Keras's MobileNetV2 ImageNet weights (alpha 1.0, no top) as {variable name: array} of
    this encoder (width 1.0), for keras_weights.assign."""
    weights = keras_weights.read(path, KERAS_FILE)
    values = {}
    for layer, scope in keras_layers().items():
        arrays = weights.get(layer)
        bn = scope.endswith('/bn')
        if arrays is None or len(arrays) != (4 if bn else 1):
            raise UserError(f'{path}: no weights for layer {layer}; expected {KERAS_FILE}')
        parts = BN_PARTS if bn else ('kernel',)
        values.update({f'mobilenetv2/{scope}/{part}': array
                       for part, array in zip(parts, arrays)})
    if values['mobilenetv2/conv1/kernel'].shape != (3, 3, 3, 32):
        raise UserError(f'{path}: a MobileNetV2 of another width; expected {KERAS_FILE} '
                        f'(alpha 1.0)')
    return values
