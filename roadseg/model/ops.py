"""Graph building blocks shared by the encoders and the decoder, from `tf.nn` ops and
`tf.compat.v1.get_variable` (Keras 3 has no `tf.compat.v1.layers`).

The network is built twice in one graph, a training tower and an inference tower sharing their
variables (the second under `reuse=True`): batch normalisation and dropout differ between the two,
and the inference tower stays free of control flow, so it freezes and converts as it is.

Under a tf.distribute strategy (--distribute) the training tower, its loss and its optimiser are
built once per replica (`for_each_replica`), each on its share of the fed batch
(`replica_share`); what each replica adds to a collection goes to its own
(`replica_collection`), and batch norm averages its statistics over every replica
(`cross_replica_mean`), so replicas stay identical and N replicas at batch B step as one device
at batch B does. Without a strategy these are the identity and the graph is unchanged.
"""
from roadseg.graph_mode import import_tensorflow

tf = import_tensorflow()
tf1 = tf.compat.v1
from tensorflow.python.training import moving_averages  # noqa: E402  (no public name in 2.21)


def replicas():
    """The number of replicas in sync under the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_index():
    """This replica's index (0..replicas-1), or None outside a replica (cross-replica context,
    where the inference tower is built)."""
    if not tf.distribute.has_strategy():
        return 0
    context = tf.distribute.get_replica_context()
    if context is None:
        return None
    return int(tf.get_static_value(context.replica_id_in_sync_group))


def replica_collection(key):
    """The collection `key` of the current replica: `key` itself for the first replica (and
    without a strategy), `key/replica_N` for the others."""
    index = replica_index()
    return key if not index else f'{key}/replica_{index}'


def for_each_replica(fn, *args):
    """fn(*args) once per replica of the current strategy, its per-replica arguments unwrapped
    (a plain call without a strategy): the replicas' results, per replica."""
    return tf.distribute.get_strategy().extended.call_for_each_replica(
        tf.autograph.experimental.do_not_convert(fn), args=args)


def first_use():
    """Whether the tower being built is the first to use its variables in this replica: false
    in a later tower that reuses them, true in every replica's training tower (MirroredStrategy
    builds the replicas after the first under reuse)."""
    return not tf1.get_variable_scope().reuse or (replica_index() or 0) > 0


def replica_share(batch):
    """This replica's equal, contiguous share of a batch fed to this worker (the whole batch
    without a strategy); each worker is fed its own share of the global batch."""
    if not tf.distribute.has_strategy():
        return batch
    local = len(tf.distribute.get_strategy().extended.worker_devices)
    if local == 1:
        return batch
    index = tf.math.floormod(tf.distribute.get_replica_context().replica_id_in_sync_group, local)
    size = tf.shape(batch)[0] // local
    return batch[index * size:(index + 1) * size]


def _all_reduce(value, reduce_op):
    """The all-reduce of `value` over the replicas, without a gradient."""
    return tf.distribute.get_replica_context().merge_call(
        lambda strategy, v: strategy.extended.batch_reduce_to(reduce_op, [(v, v)])[0],
        args=(tf.stop_gradient(value),))


def synchronising():
    """Whether the graph being built is one of several replicas' (in a replica context of a
    strategy with more than one), where batch statistics and normalisers are all-reduced."""
    return replicas() > 1 and replica_index() is not None


def cross_replica_sum(value):
    """The sum of `value` over the replicas, as a constant of the gradient (e.g. a loss's
    normaliser); `value` itself with one replica."""
    if not synchronising():
        return value
    return _all_reduce(value, tf.distribute.ReduceOp.SUM)


@tf.RegisterGradient('RoadsegCrossReplicaMean')
def _cross_replica_mean_gradient(_, gradient):
    return _all_reduce(gradient, tf.distribute.ReduceOp.MEAN)


def cross_replica_mean(value):
    """The mean of `value` over the replicas, differentiable: its gradient is the mean of the
    replicas' gradients, as for one tensor computed from the whole batch. (The replica
    context's own all_reduce cannot take the gradient of a MirroredStrategy graph in graph
    mode: it looks the other replicas' variables up by name and fails.)"""
    if not synchronising():
        return value
    with tf1.get_default_graph().gradient_override_map({'Identity': 'RoadsegCrossReplicaMean'}):
        local = tf.identity(value)
    return local + tf.stop_gradient(_all_reduce(value, tf.distribute.ReduceOp.MEAN) - local)


def weight(name, shape, initializer, weight_decay=0.0):
    """A variable whose L2 penalty (times `weight_decay`) goes to the replica's
    REGULARIZATION_LOSSES, once per replica: not again when a later tower reuses it."""
    variable = tf1.get_variable(name, shape, initializer=initializer)
    if weight_decay and first_use():
        tf1.add_to_collection(replica_collection(tf1.GraphKeys.REGULARIZATION_LOSSES),
                              weight_decay * tf.nn.l2_loss(variable))
    return variable


BATCH_STATISTICS = 'batch_statistics'  # (moving statistic, the batch's) pairs
AUXILIARY_LOGITS = 'auxiliary_logits'  # (logits at the input's size, loss weight) pairs


def batch_norm(x, training, momentum, epsilon=1e-3, name='bn'):
    """Batch normalisation over the last axis.

    Training: normalise with the batch's statistics, put each (moving statistic, batch
    statistic) pair in BATCH_STATISTICS and the moving-average updates in the replica's
    UPDATE_OPS (`optimize` runs them with each step), once: not again when a later
    training-mode tower reuses the variables (network.build_network's calibration tower).
    Inference: normalise with the moving statistics, which nothing changes. `momentum` is the
    moving averages' decay per step.

    With several replicas the batch is the global one (synchronised batch norm): the mean and
    the mean of squares are averaged over the replicas, and the moving averages updated with
    the result on every replica alike (assign_moving_average averages an update over replicas;
    a plain assign would change one replica's copy only).
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
        if synchronising():
            y, mean, variance = synchronised_batch_norm(x, gamma, beta, epsilon)
        else:
            y, mean, variance = tf1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon)
        for moving, batch in ((moving_mean, mean), (moving_variance, variance)):
            tf1.add_to_collection(BATCH_STATISTICS, (moving, batch))
            if first_use():
                tf1.add_to_collection(replica_collection(tf1.GraphKeys.UPDATE_OPS),
                                      moving_averages.assign_moving_average(
                                          moving, batch, momentum, zero_debias=False))
        return y


def synchronised_batch_norm(x, gamma, beta, epsilon):
    """Batch norm of `x` with the statistics of every replica's batch (equal shares): (y, mean,
    variance), the variance unbiased over the global batch, as fused_batch_norm returns it.
    Two all-reduces, the mean's and then the squared deviations' (E[x^2] - E[x]^2 in one
    would lose float32 digits where the mean is large against the spread)."""
    axes = list(range(len(x.shape) - 1))
    mean = cross_replica_mean(tf.reduce_mean(x, axes))
    variance = cross_replica_mean(tf.reduce_mean(tf.square(x - mean), axes))
    y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, epsilon)
    total = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]) * replicas(), tf.float32)
    return y, mean, variance * total / tf.maximum(total - 1, 1.0)
