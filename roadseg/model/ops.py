"""Graph building blocks shared by the encoders and the decoder, from `tf.nn` ops and
`tf.compat.v1.get_variable` (Keras 3 has no `tf.compat.v1.layers`).

The network is built twice in one graph, a training tower and an inference tower sharing their
variables (the second under `reuse=True`): batch normalisation and dropout differ between the two,
and the inference tower stays free of control flow, so it freezes and converts as it is.
"""
from roadseg.graph_mode import import_tensorflow

tf = import_tensorflow()
tf1 = tf.compat.v1


def weight(name, shape, initializer, weight_decay=0.0):
    """A variable whose L2 penalty (times `weight_decay`) goes to REGULARIZATION_LOSSES, once:
    not again when a second tower reuses it."""
    variable = tf1.get_variable(name, shape, initializer=initializer)
    if weight_decay and not tf1.get_variable_scope().reuse:
        tf1.add_to_collection(tf1.GraphKeys.REGULARIZATION_LOSSES,
                              weight_decay * tf.nn.l2_loss(variable))
    return variable


BATCH_STATISTICS = 'batch_statistics'  # (moving statistic, the batch's) pairs


def batch_norm(x, training, momentum, epsilon=1e-3, name='bn'):
    """Batch normalisation over the last axis.

    Training: normalise with the batch's statistics, put each (moving statistic, batch
    statistic) pair in BATCH_STATISTICS and the moving-average updates in UPDATE_OPS
    (`optimize` runs them with each step), once: not again when a later training-mode tower
    reuses the variables (network.build_network's calibration tower). Inference: normalise with
    the moving statistics, which nothing changes. `momentum` is the moving averages' decay per
    step.
    """
    channels = x.shape[-1]
    with tf1.variable_scope(name):
        gamma = tf1.get_variable('gamma', [channels], initializer=tf1.ones_initializer())
        beta = tf1.get_variable('beta', [channels], initializer=tf1.zeros_initializer())
        moving_mean = tf1.get_variable('moving_mean', [channels], trainable=False,
                                       initializer=tf1.zeros_initializer())
        moving_variance = tf1.get_variable('moving_variance', [channels], trainable=False,
                                           initializer=tf1.ones_initializer())
        if not training:
            return tf1.nn.fused_batch_norm(x, gamma, beta, moving_mean, moving_variance,
                                           epsilon, is_training=False)[0]
        y, mean, variance = tf1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon)
        for moving, batch in ((moving_mean, mean), (moving_variance, variance)):
            tf1.add_to_collection(BATCH_STATISTICS, (moving, batch))
            if not tf1.get_variable_scope().reuse:
                tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS,
                                      tf1.assign_sub(moving, (moving - batch) * (1 - momentum)))
        return y
