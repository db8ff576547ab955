"""The loss and its optimiser."""
from roadseg.model.ops import tf, tf1


def optimize(nn_last_layer, correct_label, learning_rate, num_classes, class_weights=None):
    """Softmax cross-entropy over non-void pixels (label rows of all zeros are ignored), plus the
    collected weight decay, minimised with Adam; batch-norm updates run with each step.

    With `class_weights`, each pixel's cross-entropy is weighted by its class's weight and the
    sum divided by the summed weights (a weighted mean).
    :return: (logits [pixels, num_classes], train_op, loss): the loss without weight decay
    """
    logits = tf.reshape(nn_last_layer, (-1, num_classes), name='logits')
    labels = tf.reshape(correct_label, (-1, num_classes))
    per_pixel = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    weights = tf.reduce_sum(labels * (1.0 if class_weights is None else
                                      tf.constant(class_weights, tf.float32)), axis=1)
    loss = tf.math.divide(tf.reduce_sum(weights * per_pixel),
                          tf.maximum(tf.reduce_sum(weights), 1e-6), name='cross_entropy_loss')
    total_loss = loss + tf1.losses.get_regularization_loss()
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        train_op = tf1.train.AdamOptimizer(learning_rate).minimize(total_loss)
    return logits, train_op, loss
