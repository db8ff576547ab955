"""The whole network: the encoder chosen by the options, its decoder, and the two towers
(training and inference) that share their weights, with the optional weight averages."""
import collections

from roadseg.errors import UserError
from roadseg.model import DECODERS, decoders, keras_weights, mobilenet, ops, tiramisu, vgg

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


def encoder_weights(config, data_dir):
    """What build_network needs of `config`'s encoder weights, read from disk beforehand: the
    folder of Udacity's VGG16 SavedModel in `data_dir` (both fetched by
    training.inputs.fetch_downloads), the arrays of a Keras VGG16 or MobileNetV2 file
    (keras-h5:PATH or imagenet), or None."""
    if config.encoder_weights == 'udacity':
        return vgg.vgg_dir(data_dir)
    if config.keras_file():
        read = mobilenet.read_keras_h5 if config.encoder == 'mobilenetv2' else vgg.read_keras_h5
        return read(config.keras_file())
    return None


def build_network(sess, config, num_classes, input_shape=(None, None, None), weights=None,
                  train_images=None):
    """The network of `config` (a settings.NetworkConfig): its encoder with its decoder on it,
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
    restored, averages, calibration = set(), {}, []
    keras = weights if config.keras_file() else None
    if config.encoder_weights == 'udacity':
        try:
            image_input, keep_prob, *features = vgg.load_vgg(sess, weights, train_images)
        except UserError as e:
            raise UserError(f'{e}; or train from scratch with --encoder-weights none') \
                from None
        restored = {v.name for v in tf1.global_variables()}
        output = train_output = decoders.fcn(*features, num_classes, config.weight_decay)
    else:
        image_input = tf1.placeholder(tf.float32, [*input_shape, 3], 'image_input')
        keep_prob = tf1.placeholder(tf.float32, [], 'keep_prob')
        if config.encoder == 'mobilenetv2':
            strides, skip_scales = DECODERS[config.decoder], (1, 1)

            def encoder(images, training):
                return mobilenet.build_encoder(images, training, config.alpha, config.decoder)
        elif config.encoder == 'vgg16':  # tiramisu has no encoder apart from its decoder
            blocks, fc_width = vgg.encoder_shape(keras) if keras else (vgg.BLOCKS,
                                                                         vgg.FC_WIDTH)
            strides, skip_scales = decoders.VGG_STRIDES, decoders.VGG_SKIP_SCALES

            def encoder(images, training):
                return vgg.build_encoder(images, keep_prob, blocks, fc_width,
                                         'caffe' if keras else 'standardize', training)

        def tower(images, training):
            if config.input_norm == 'image':
                images = normalised(images)
            if config.decoder == 'tiramisu':
                return tiramisu.fc_densenet(images, training, config.depth, num_classes,
                                            keep_prob, config.weight_decay)
            if config.decoder == 'fpn':
                return decoders.fpn(encoder(images, training), num_classes, training,
                                    config.weight_decay, strides)
            *finer, layer3, layer4, layer7 = encoder(images, training)
            logits = decoders.fcn(layer3, layer4, layer7, num_classes, config.weight_decay,
                                  strides, skip_scales, finer)
            if training and config.aux_loss:
                decoders.auxiliary(layer4, logits, num_classes, config.aux_loss,
                                   config.weight_decay)
            return logits
        train_output = ops.for_each_replica(
            lambda: tower(ops.replica_share(image_input if train_images is None
                                            else train_images), True))
        if config.ema_decay:
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
            output = tower(image_input, False)
            if averages:  # a training-mode tower on the averages, for its batch statistics
                known = len(tf1.get_collection(ops.BATCH_STATISTICS))
                tower(image_input, True)
                calibration = [moving.assign(batch) for moving, batch
                               in tf1.get_collection(ops.BATCH_STATISTICS)[known:]]

    def initialise():
        sess.run(tf1.variables_initializer([v for v in tf1.global_variables()
                                            if v.name not in restored]))
        if keras and config.encoder == 'mobilenetv2':
            keras_weights.assign(sess, keras)
        elif keras:
            vgg.assign_weights(sess, keras)
        sess.run([average.assign(v.deref()) for v, average in averages.items()])

    def averaged(train_op):
        """After each step, average <- d * average + (1 - d) * weight, where d ramps up as
        min(ema_decay, (1 + n) / (10 + n)) at the n-th step, so early averages follow the
        weights instead of remembering their random start."""
        if not averages:
            return train_op
        with tf.control_dependencies([train_op]):
            n = count.assign_add(1.0)
            decay = tf.minimum(float(config.ema_decay), (1 + n) / (10 + n))
            return tf.group([average.assign(decay * average + (1 - decay) * v.deref())
                             for v, average in averages.items() if v.deref().trainable],
                            name='train_and_average')

    def calibrate(images):
        if calibration:
            sess.run(calibration, {image_input: images, keep_prob: 1.0})
    return Network(image_input, keep_prob, train_output, output, initialise, averaged, calibrate)
