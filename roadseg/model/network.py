"""The whole network: the encoder and decoder the configuration names, looked up in the
registry, and the two towers (training and inference) that share their weights, with the
optional weight averages."""
import collections

from roadseg.errors import UserError
from roadseg.model import decoders, ops, registry, vgg
from roadseg.model.entries import load

tf, tf1 = ops.tf, ops.tf1


# --input-norm image maps each image's channels to this mean and deviation (0..255 scale), about
# those of a daylight street scene, before the encoder's own preprocessing
NORMAL_MEAN, NORMAL_STD = 127.5, 64.0


def normalised(images):
    """Each image's channels shifted and scaled to NORMAL_MEAN and NORMAL_STD: a grey-world white
    balance and contrast stretch in the graph, so that dusk, glare and tint reach the encoder
    alike (--input-norm image)."""
    mean, variance = tf.nn.moments(images, axes=[1, 2], keepdims=True)
    return (images - mean) * (NORMAL_STD * tf.math.rsqrt(variance + 1.0)) + NORMAL_MEAN


def probabilities(logits):
    """The per-pixel class probabilities of the logits, named `probabilities` for export."""
    return tf.nn.softmax(logits, name='probabilities')


Network = collections.namedtuple('Network', 'input_image keep_prob train_output output initialise '
                                            'averaged calibrate')
# What a decoder's builder is given beside the images: the encoder's features(images, training)
# (None when the decoder is the whole network), their strides and FCN skip scales, and the rest
Head = collections.namedtuple('Head', 'features strides skip_scales num_classes keep_prob config')


def encoder_weights(config, data_dir):
    """What build_network needs of `config`'s encoder weights, read from disk beforehand: the
    folder of Udacity's VGG16 SavedModel in `data_dir` (both fetched by
    training.inputs.fetch_downloads), the arrays of a Keras VGG16 or MobileNetV2 file
    (keras-h5:PATH or imagenet), or None."""
    if config.encoder_weights == 'udacity':
        return vgg.vgg_dir(data_dir)
    if config.keras_file():
        return load(registry.ENCODERS[config.encoder].read_keras)(config.keras_file())
    return None


def build_network(sess, config, num_classes, input_shape=(None, None, None), weights=None,
                  train_images=None):
    """The network of `config` (a config.NetworkConfig): its encoder with its decoder on it,
    or FC-DenseNet (its own decoder), as a training and an inference tower that share their
    weights. `weights` is encoder_weights(config, ...): no file is read or fetched here.

    Udacity's VGG16 is a frozen graph loaded as it is: its one tower serves both, dropout set by
    keep_prob. The in-graph encoders are built twice: the inference tower without dropout and
    with batch norm on its moving statistics, so validation, export and prediction run exactly
    the graph that is deployed. `initialise()` initialises every variable not restored from a
    SavedModel, then loads Keras weights when given. `input_shape` (batch, height, width) fixes
    the input's shape for in-graph encoders (the benchmark counts FLOPs on static shapes).
    `train_images` (float32, from a data pipeline) is what the training tower trains on, else
    it trains on what is fed to `image_input`; Udacity's one tower takes them as the default of
    its input, so that feeding an image still runs inference.

    With `config.ema_decay`, the inference tower reads an exponential moving average of the
    trainable weights instead of the weights: `averaged(train_op)` is the training op that also
    updates the averages after each step. Batch norm statistics gathered under the training
    weights do not fit their average (as for stochastic weight averaging), so the inference
    tower's statistics are measured anew for the averaged weights: `calibrate(images)` sets
    them to the statistics of a batch of images run through the averaged weights, and does
    nothing without --ema-decay.
    """
    if config.encoder_weights == 'udacity':
        return frozen_network(sess, config, num_classes, weights, train_images)
    image_input = tf1.placeholder(tf.float32, [*input_shape, 3], 'image_input')
    keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
    keras = weights if config.keras_file() else None
    tower = make_tower(config, num_classes, keep_prob, keras)
    train_output = ops.for_each_replica(
        lambda: tower(ops.replica_share(image_input if train_images is None
                                        else train_images), True))
    averages = Averages(config.ema_decay)
    output = averages.inference_tower(tower, image_input)
    encoder = registry.ENCODERS[config.encoder]
    assign_keras = (lambda: load(encoder.assign_keras)(sess, keras)) if keras else None
    return finished(sess, image_input, keep_prob, train_output, output, set(), averages,
                    assign_keras)


def frozen_network(sess, config, num_classes, vgg_path, train_images):
    """Udacity's VGG16 (--encoder-weights udacity) under FCN-8s: a frozen graph loaded as it
    is, its one tower training and inferring, dropout set by keep_prob."""
    try:
        image_input, keep_prob, *features = vgg.load_vgg(sess, vgg_path, train_images)
    except UserError as e:
        raise UserError(f'{e}; or train from scratch with --encoder-weights none') from None
    restored = {v.name for v in tf1.global_variables()}
    output = decoders.fcn(*features, num_classes, config.weight_decay)
    return finished(sess, image_input, keep_prob, output, output, restored, Averages(0))


def make_tower(config, num_classes, keep_prob, keras):
    """tower(images, training): the encoder and decoder that `config` names, looked up in the
    registry, on `images` (first normalised with --input-norm image); `keras`, the encoder's
    Keras weights, or None."""
    encoder = registry.ENCODERS[config.encoder]
    features = load(encoder.builder)(config, keep_prob, keras) if encoder.builder else None
    head = Head(features, encoder.strides[config.decoder], encoder.skip_scales, num_classes,
                keep_prob, config)
    decode = load(registry.DECODERS[config.decoder].builder)

    def tower(images, training):
        if config.input_norm == 'image':
            images = normalised(images)
        return decode(head, images, training)
    return tower


def finished(sess, image_input, keep_prob, train_output, output, restored, averages,
             assign_keras=None):
    """The Network of these towers. Its initialise() initialises every variable not
    `restored` (from a SavedModel), then loads Keras weights (assign_keras()) and starts the
    averages at the weights."""
    def initialise():
        sess.run(tf1.variables_initializer([v for v in tf1.global_variables()
                                            if v.name not in restored]))
        if assign_keras:
            assign_keras()
        averages.start(sess)

    def calibrate(images):
        averages.calibrate(sess, {image_input: images, keep_prob: 1.0})
    return Network(image_input, keep_prob, train_output, output, initialise, averages.averaged,
                   calibrate)


class Averages:
    """--ema-decay's exponential moving averages of the network's weights so far, which the
    inference tower reads instead of the weights; none with a decay of 0."""

    def __init__(self, decay):
        self.decay, self.variables, self.count, self.calibration = decay, {}, None, []
        if decay:
            self.variables = {v.ref(): tf1.get_variable(v.op.name + '/average', v.shape,
                                                        v.dtype, tf1.zeros_initializer(),
                                                        trainable=False)
                              for v in tf1.global_variables()}
            self.count = tf1.get_variable('average_count', [], tf.float32,
                                          tf1.zeros_initializer(), trainable=False)

    def getter(self, getter, *a, **kw):
        """A custom getter that gives a weight's average in place of the weight."""
        variable = getter(*a, **kw)
        return self.variables.get(variable.ref(), variable)

    def inference_tower(self, tower, images):
        """The inference tower of `images` on the averages; with averages, also a training-mode
        tower on them, whose batch statistics `calibrate` sets the moving ones to."""
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True, custom_getter=self.getter):
            output = tower(images, False)
            if self.variables:
                known = len(tf1.get_collection(ops.BATCH_STATISTICS))
                tower(images, True)
                self.calibration = [moving.assign(batch) for moving, batch
                                    in tf1.get_collection(ops.BATCH_STATISTICS)[known:]]
        return output

    def start(self, sess):
        """Set each average to its weight."""
        sess.run([average.assign(v.deref()) for v, average in self.variables.items()])

    def averaged(self, train_op):
        """After each step, average <- d * average + (1 - d) * weight, where d ramps up as
        min(ema_decay, (1 + n) / (10 + n)) at the n-th step, so early averages follow the
        weights instead of remembering their random start."""
        if not self.variables:
            return train_op
        with tf.control_dependencies([train_op]):
            n = self.count.assign_add(1.0)
            decay = tf.minimum(float(self.decay), (1 + n) / (10 + n))
            return tf.group([average.assign(decay * average + (1 - decay) * v.deref())
                             for v, average in self.variables.items() if v.deref().trainable],
                            name='train_and_average')

    def calibrate(self, sess, feed):
        """Set the inference tower's batch norm statistics to those of the averaged weights on
        a batch (`feed`); nothing without averages."""
        if self.calibration:
            sess.run(self.calibration, feed)
