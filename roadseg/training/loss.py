"""The loss and its optimiser."""
from roadseg.model import ops
from roadseg.model.ops import tf, tf1


def optimize(nn_last_layer, correct_label, learning_rate, num_classes, class_weights=None,
             loss_scale=False):
    """Softmax cross-entropy over non-void pixels (label rows of all zeros are ignored), plus the
    collected weight decay, minimised with Adam; batch-norm updates run with each step.

    With `class_weights`, each pixel's cross-entropy is weighted by its class's weight and the
    sum divided by the summed weights (a weighted mean).

    Built per replica under a tf.distribute strategy, each replica's loss is its share of the
    global batch's: its pixels' sum over the summed weights of every replica's pixels, plus
    1/replicas of the weight decay. The optimiser sums the replicas' gradients, which makes
    the step that of one device on the global batch.

    The network's auxiliary logits (--aux-loss) add their own cross-entropy, times their
    weight, to what is minimised; the loss returned is the main output's.

    `loss_scale` (--precision float16) scales the loss dynamically before the gradients, so that
    small float16 gradients do not underflow, and skips a step whose gradients overflow.
    :return: (logits [pixels, num_classes], train_op, loss): the loss without weight decay
    """
    logits = tf.reshape(nn_last_layer, (-1, num_classes), name='logits')
    labels = tf.reshape(correct_label, (-1, num_classes))
    weights = tf.reduce_sum(labels * (1.0 if class_weights is None else
                                      tf.constant(class_weights, tf.float32)), axis=1)
    total_weight = tf.maximum(ops.cross_replica_sum(tf.reduce_sum(weights)), 1e-6)

    def cross_entropy(pixel_logits, name=None):
        per_pixel = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=pixel_logits)
        return tf.math.divide(tf.reduce_sum(weights * per_pixel), total_weight, name=name)
    loss = cross_entropy(logits, 'cross_entropy_loss')
    decay = tf1.get_collection(ops.replica_collection(tf1.GraphKeys.REGULARIZATION_LOSSES))
    total_loss = loss + (tf.add_n(decay, 'total_regularization_loss') / ops.replicas()
                         if decay else 0.0)
    for auxiliary, weight in tf1.get_collection(ops.replica_collection(ops.AUXILIARY_LOGITS)):
        total_loss += weight * cross_entropy(tf.reshape(auxiliary, (-1, num_classes)))
    with tf.control_dependencies(tf1.get_collection(
            ops.replica_collection(tf1.GraphKeys.UPDATE_OPS))):
        optimizer = tf1.train.AdamOptimizer(learning_rate)
        if loss_scale:
            optimizer = tf1.mixed_precision.MixedPrecisionLossScaleOptimizer(optimizer,
                                                                             'dynamic')
        train_op = optimizer.minimize(total_loss)
    return logits, train_op, loss
