"""FCN-8s road segmentation on KITTI Road, in TensorFlow 1.x graph style on TensorFlow 2.x.

Loads the VGG16 encoder, grafts the FCN-8s decoder onto it, trains with Adam on flipped KITTI
batches and writes the trained model and overlaid inference images to a new run folder:

    python main.py --data-dir ./data --epochs 40 --batch-size 8
    python main.py --config configs/camvid_road_mobilenetv2.json

The five functions of the classic project are here; the library behind them is roadseg/.
"""
import os
import sys

from roadseg import cli
from roadseg.training import config

if __name__ == '__main__':  # answer --help and a bad option at once, before TensorFlow loads
    status = cli.main_guard(config.options, sys.argv[1:])
    if status:
        sys.exit(status)

from roadseg import files, inference  # noqa: E402  (these load TensorFlow, seconds)
from roadseg.model import decoders, network, vgg  # noqa: E402
from roadseg.model.ops import tf, tf1  # noqa: E402
from roadseg.model.settings import NetworkConfig  # noqa: E402
from roadseg.training import distribute, graph, inputs, loop, loss, monitoring, outputs  # noqa: E402
from roadseg.training import run as runs  # noqa: E402
from roadseg.training.settings import TrainingConfig  # noqa: E402

NUM_CLASSES = 2  # KITTI: not road, road; other data sets size the head from their classes


def load_vgg(sess, vgg_path):
    """Load the VGG16 SavedModel (tag `vgg16`) into `sess`.

    :return: (image_input, keep_prob, layer3_out, layer4_out, layer7_out) tensors
    """
    return vgg.load_vgg(sess, vgg_path)


def layers(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes, weight_decay=1e-3):
    """The FCN-8s decoder: 1x1 class scores of layers 7, 4 and 3, upsampled by transposed
    convolutions with the pool4 and pool3 skips added on the way, to the input's size.

    :return: the last layer, [batch, height, width, num_classes] logits
    """
    return decoders.fcn(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes,
                        weight_decay)


def optimize(nn_last_layer, correct_label, learning_rate, num_classes, class_weights=None,
             loss_scale=False):
    """Softmax cross-entropy over the non-void pixels plus weight decay, minimised with Adam
    (with dynamic loss scaling for float16 when `loss_scale`).

    :return: (logits [pixels, num_classes], train_op, cross_entropy_loss)
    """
    return loss.optimize(nn_last_layer, correct_label, learning_rate, num_classes,
                         class_weights, loss_scale)


def train_nn(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss, input_image,
             correct_label, keep_prob, learning_rate, keep_prob_value=0.5,
             learning_rate_value=1e-4, log=print, start_epoch=1, on_step=None,
             on_epoch_end=None):
    """Train epochs `start_epoch`..`epochs` with a progress bar, reporting each epoch's mean loss
    through `log`; `learning_rate_value` is a number or a function of the global step;
    `on_step(loss)` and `on_epoch_end(epoch, mean_loss)` hang validation and checkpoints on;
    a loss that is not finite stops training (a UserError).

    :return: the list of mean losses, one per epoch trained
    """
    return loop.train(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss,
                      input_image, correct_label, keep_prob, learning_rate, keep_prob_value,
                      learning_rate_value, log, start_epoch, on_step, on_epoch_end)


def run(argv=None):
    """Everything `python main.py` does: read and check the data, build the FCN on the devices
    of --distribute, train with validation and checkpoints (or resume), export the best model
    and write overlays. Under multi-worker, the chief alone writes; the others train beside it."""
    args = config.options(argv)
    net_config, training = NetworkConfig.of(args), TrainingConfig.of(args)
    setup = distribute.setup(training, frozen_encoder=net_config.encoder_weights == 'udacity')
    runs_dir, flag = (args.resume, '--resume') if args.resume else (args.runs_dir, '--runs-dir')
    if setup.is_chief:  # the one that writes: stop now, not once the data and graph are ready
        files.check_writable(runs_dir, flag)
    inputs.fetch_downloads(args)
    dataset, train_pairs, val_pairs, seen_pairs = inputs.data_split(args)
    classes = dataset.classes
    data = inputs.training_data(args, dataset, train_pairs, setup)
    val_samples, seen_samples = ([inputs.samples(pairs, dataset.read_label)
                                  for pairs in (val_pairs, seen_pairs)]
                                 if setup.is_chief else ([], []))
    bev_paths = setup.is_chief and inputs.bev_paths(args, val_pairs, dataset.classes.num_classes)
    class_weights = inputs.class_weights(args, data)
    weights = network.encoder_weights(net_config, args.data_dir)  # read before the graph
    with tf.Graph().as_default(), setup.scope(), setup.session() as sess, \
            distribute.failures(training, setup), files.full_disk(runs_dir, flag):
        tf1.set_random_seed(args.seed)
        get_batches_fn = data.bind(args.batch_size)  # the pipeline the network trains on
        built = graph.build(sess, net_config, classes.num_classes, weights, class_weights,
                            args.precision == 'float16',
                            batch=(get_batches_fn.images, get_batches_fn.labels))
        net, probabilities = built.net, built.probabilities
        saver = tf1.train.Saver(max_to_keep=None)
        net.initialise()

        split = train_pairs, val_pairs, seen_pairs
        run_dir, start_epoch, records = runs.start_run(sess, saver, args, split, class_weights,
                                                       setup.is_chief)
        distribute.check_same_epoch(sess, setup, start_epoch)
        data.epoch = start_epoch - 1
        log = runs.RunLog(run_dir and os.path.join(run_dir, 'train.log'))
        log(setup.describe())
        log(runs.describe(run_dir, args, classes, split, start_epoch))
        info = runs.model_info(args, classes)
        model = inference.session_model(sess, net.input_image, probabilities, info,
                                        {net.keep_prob: 1.0})

        def export(epoch, key_metric=None):
            outputs.save_model(sess, os.path.join(run_dir, 'model'), net.input_image, net.keep_prob,
                            probabilities, {**info, 'epoch': epoch, 'val_iou': key_metric})

        batches = loop.steps_per_epoch(data, args.batch_size)
        monitor = setup.is_chief and monitoring.RunMonitor(
            run_dir, sess, saver, model, export, val_samples, args, log, records,
            (start_epoch - 1) * batches, classes, bev_paths, seen_samples)
        calibration = inputs.calibration_images(args, train_pairs)

        def epoch_end(epoch, mean_loss):
            if monitoring.validates(args, epoch):
                net.calibrate(calibration)  # on every worker, so that all stay alike
            if monitor:
                monitor.epoch_end(epoch, mean_loss)
        train_nn(sess, args.epochs, args.batch_size, get_batches_fn, built.train_op, built.loss,
                 net.input_image, built.label, net.keep_prob, built.learning_rate, args.keep_prob,
                 loop.learning_rate_schedule(training, batches), log, start_epoch,
                 monitor and monitor.step, epoch_end)
        if not monitor:
            return None
        monitor.finish()
    colors = inference.overlay_colors(classes.colors)
    if dataset.test_note:
        print(dataset.test_note)
    # the overlays show the model shipped
    with inference.load_model(run_dir) as exported, files.full_disk(runs_dir, flag):
        for message in outputs.write_overlays(exported, dataset.test_images, run_dir, colors):
            print(cli.one_line(f'skipped {message}'), file=sys.stderr)
        inference.write_legend(os.path.join(run_dir, 'legend.png'), classes.names, colors)
    log(f'model and overlays written to {run_dir}')
    return run_dir


if __name__ == '__main__':
    sys.exit(cli.main_guard(run))
