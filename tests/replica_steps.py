"""Training steps of the real network, on one device or on replicas, for test_distribute.py:
run in a subprocess, since logical devices and a cluster must be set before TensorFlow starts.

    python -m tests.replica_steps SETUP ENCODER STEPS INIT OUT [H5]

SETUP is `single` (no strategy), `mirrored` (two logical CPU devices) or `multi-worker` (the
cluster of TF_CONFIG; each worker is fed its share). `single` initialises the weights and
saves them as the checkpoint INIT; the others restore INIT, so all start alike. Every setup
takes the same global batches of 4 road scenes, steps STEPS times with Adam at 1e-4, dropout
off, weight averages (--ema-decay) on, and writes to OUT (.npz): the losses; every variable
(the first replica's copy) after the first step (`step1:NAME`) and the last (`NAME`); the
first step's gradients of the cross-entropy, summed over the replicas as the optimiser applies
them (`gradient:NAME`); and the largest difference between a variable's copies on this worker's
replicas. ENCODER is vgg16 (the tiny VGG of the Keras file H5) or mobilenetv2[:DECODER], with
`+weighted` for class weights in the loss.
"""
import sys

import numpy as np

from roadseg.model.ops import tf, tf1
from tests.conftest import road_scene

GLOBAL_BATCH, SHAPE, RATE, CLASS_WEIGHTS = 4, (64, 128), 1e-4, [0.7, 1.6]


def batches(steps):
    """Road scenes, with a void band along the top of each label."""
    rng = np.random.default_rng(0)
    for _ in range(steps):
        images, classes = map(np.stack, zip(*(road_scene(rng, *SHAPE)
                                               for _ in range(GLOBAL_BATCH))))
        labels = (classes[..., None] == np.arange(2)).astype(np.float32)
        labels[:, :4] = 0
        yield images.astype(np.float32), labels


def main(kind, encoder, steps, init, out, h5=None):
    if kind == 'mirrored':
        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()]
                                                   * 2)
    from roadseg.model import network, ops
    from roadseg.model.config import NetworkConfig
    from roadseg.training import distribute, loss
    from roadseg.training.config import TrainingConfig
    encoder, weighted = encoder.split('+')[0], encoder.endswith('+weighted')
    encoder, _, decoder = encoder.partition(':')
    setup = distribute.setup(TrainingConfig(
        distribute='none' if kind == 'single' else kind, step_timeout=60.0,
        batch_size=GLOBAL_BATCH))
    # Grappler's rewrites take minutes on these graphs and change no figure here
    setup.config.graph_options.rewrite_options.disable_meta_optimizer = True
    with tf.Graph().as_default(), setup.scope(), setup.session() as sess:
        tf1.set_random_seed(0)
        config = NetworkConfig(encoder, decoder or None,
                               f'keras-h5:{h5}' if encoder == 'vgg16' else 'none', alpha=0.35,
                               ema_decay=0.5)
        net = network.build_network(sess, config, 2,
                                    weights=network.encoder_weights(config, None))
        label = tf1.placeholder(tf.float32, [None, None, None, 2])

        def step(output):
            _, train_op, replica_loss = loss.optimize(output, ops.replica_share(label), RATE, 2,
                                                      CLASS_WEIGHTS if weighted else None)
            gradients = [ops.cross_replica_sum(g)  # summed, as the optimiser applies them
                         for g in tf.gradients(replica_loss, tf1.trainable_variables())]
            return train_op, replica_loss, gradients
        train_op, total, gradients = ops.for_each_replica(step, net.train_output)
        trained = [v.op.name for v in tf1.trainable_variables()]
        train_op, total = distribute.step_ops((train_op, total))
        train_op = net.averaged(train_op)
        if setup.strategy:
            gradients = [setup.strategy.experimental_local_results(g)[0] for g in gradients]
        saver = tf1.train.Saver()
        net.initialise()
        if kind == 'single':  # scores away from their zero start, so gradients reach the encoder
            rng = np.random.default_rng(0)
            sess.run([v.assign(rng.normal(0, 0.01, v.shape).astype(np.float32))
                      for v in tf1.trainable_variables() if '/score' in v.op.name
                      and v.op.name.endswith('kernel')])
            saver.save(sess, init, write_meta_graph=False, write_state=False)
        else:
            saver.restore(sess, init)
        share = GLOBAL_BATCH // setup.workers
        mine = slice(setup.worker * share, (setup.worker + 1) * share)
        variables = tf1.global_variables()
        names = [v.op.name for v in variables]
        losses, first = [], {}
        for images, labels in batches(steps):
            _, value, grads = sess.run([train_op, total, gradients], {
                net.input_image: images[mine], label: labels[mine], net.keep_prob: 1.0})
            losses.append(value)
            if not first:  # the gradients at the common start, and every variable after it
                first = {f'gradient:{name}': g for name, g in zip(trained, grads)}
                first.update((f'step1:{n}', v) for n, v in zip(names, sess.run(variables)))
        values = dict(zip(names, sess.run(variables)))
        copies = sess.run([setup.strategy.experimental_local_results(v) for v in variables]
                          if setup.strategy else [[v] for v in variables])
    spread = max(float(np.abs(c - each[0]).max()) for each in copies for c in each)
    np.savez(out, losses=np.array(losses), copies_spread=spread, **values, **first)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
