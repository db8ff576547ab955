"""The training graph main.py trains and the benchmark times: the network's two towers, the
label and learning-rate inputs, one loss and optimiser per replica (under --distribute), the
weight averages' update, and the exported `probabilities`."""
import collections

from roadseg.model import network, ops
from roadseg.model.ops import tf, tf1
from roadseg.training import distribute, loss

TrainingGraph = collections.namedtuple('TrainingGraph', 'net label learning_rate train_op loss '
                                                        'probabilities')


def build(sess, config, num_classes, weights=None, class_weights=None, loss_scale=False,
          input_shape=(None, None, None), batch=None):
    """The training graph of the network `config` (a NetworkConfig, with the encoder `weights`
    read beforehand) for `num_classes` classes: the softmax cross-entropy over non-void pixels,
    weighted by `class_weights`, minimised with Adam (with dynamic loss scaling when
    `loss_scale`, for float16), one optimiser per replica. It trains on `batch`, the uint8
    (images, class maps) tensors of a data pipeline, or else on what is fed to the `image_input`
    and `label` placeholders. `input_shape` fixes the batch, height and width (the benchmark
    counts FLOPs on static shapes)."""
    images = None
    if batch is not None:  # VOID (255) and any index >= num_classes: an all-zero row
        images = tf.cast(batch[0], tf.float32)
        label = tf.one_hot(tf.cast(batch[1], tf.int32), num_classes)
    net = network.build_network(sess, config, num_classes, input_shape, weights, images)
    if batch is None:
        label = tf1.placeholder(tf.float32, [*input_shape, num_classes], 'label')
    learning_rate = tf1.placeholder(tf.float32, [], 'learning_rate')

    def replica_step(train_output):  # once per replica under --distribute
        _, train_op, replica_loss = loss.optimize(
            train_output, ops.replica_share(label), learning_rate, num_classes, class_weights,
            loss_scale)
        return train_op, replica_loss
    train_op, total = distribute.step_ops(ops.for_each_replica(replica_step, net.train_output))
    return TrainingGraph(net, label, learning_rate, net.averaged(train_op), total,
                         network.probabilities(net.output))
