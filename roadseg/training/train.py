"""`train(config) -> run_dir`: a whole training run as a library call, in named steps (read the
data, build the graph on the devices of --distribute, train with validation and checkpoints,
write overlays). main.py and crossval.py call it; so can a user:

    from roadseg.training import config, train
    run_dir = train.train(config.read('configs/camvid_road_mobilenetv2.json', epochs=2))
"""
import dataclasses
import os
import sys

from roadseg import cli, drawing, files, inference
from roadseg.model import network
from roadseg.model.ops import tf, tf1
from roadseg.training import distribute, graph, inputs, loop, monitoring, outputs
from roadseg.training import run as runs
from roadseg.training.config import read as read_config


def train(config, resume=None, command=None):
    """Train the RunConfig `config` into a new run folder under its runs_dir, or go on with the
    run folder `resume` (its own config.json's options, which `config` then is), and return the
    run folder. `command` is recorded in config.json as what started it. Under multi-worker
    the chief alone writes; the others train beside it and return None."""
    setup = distribute.setup(config.training,
                             frozen_encoder=config.network.encoder_weights == 'udacity')
    runs_dir, flag = (resume, '--resume') if resume else (config.run.runs_dir, '--runs-dir')
    if setup.is_chief:  # the one that writes: stop now, not once the data and graph are ready
        files.check_writable(runs_dir, flag)
    inputs.fetch_downloads(config)
    data = inputs.read_data(config, setup, resume)
    encoder_weights = network.encoder_weights(config.network, config.data.data_dir)
    with tf.Graph().as_default(), setup.scope(), setup.session() as sess, \
            distribute.failures(config.training, setup), files.full_disk(runs_dir, flag):
        run_dir = train_in_session(sess, config, data, setup, encoder_weights,
                                   (resume, command))
    if run_dir:
        with files.full_disk(runs_dir, flag):
            write_overlays(run_dir, data.dataset)
    return run_dir


def resume(run_dir, **changes):
    """Go on with the interrupted run in `run_dir` with its own options (its config.json), and
    `changes` ({option: value}: more epochs, moved data, other devices) over them."""
    return train(read_config(os.path.join(run_dir, 'config.json'), **changes), resume=run_dir)


def train_in_session(sess, config, data, setup, encoder_weights, started):
    """Build the training graph in `sess` on data.batches' pipeline, start or resume the run
    (`started`: the run folder to resume, the command) and train it; the run folder (None on a
    worker that is not the chief)."""
    tf1.set_random_seed(config.data.seed)
    pipeline = data.batches.bind(config.training.batch_size)
    num_classes = data.dataset.classes.num_classes
    built = graph.build(sess, config.network, num_classes, encoder_weights, data.class_weights,
                        config.training.precision == 'float16',
                        batch=(pipeline.images, pipeline.labels))
    saver = tf1.train.Saver(max_to_keep=None)
    built.net.initialise()
    run_dir, start_epoch, records = runs.start_run(sess, saver, config, data.split,
                                                   data.class_weights, setup.is_chief, *started)
    distribute.check_same_epoch(sess, setup, start_epoch)
    data.batches.epoch = start_epoch - 1
    log = runs.RunLog(run_dir and os.path.join(run_dir, 'train.log'))
    log(setup.describe())
    log(runs.describe(run_dir, config, data.dataset.classes, data.split, start_epoch))
    steps = loop.steps_per_epoch(data.batches, config.training.batch_size)
    monitor = setup.is_chief and monitoring.RunMonitor(
        run_dir, sess, saver, *inference_model(sess, built, config, data, run_dir), config,
        data, log, records, (start_epoch - 1) * steps)

    def epoch_end(epoch, mean_loss):
        if monitoring.validates(config, epoch):
            built.net.calibrate(data.calibration)  # on every worker, so that all stay alike
        if monitor:
            monitor.epoch_end(epoch, mean_loss)
    loop.train(sess, config.training.epochs, config.training.batch_size, pipeline,
               built.train_op, built.loss, built.net.input_image, built.label,
               built.net.keep_prob, built.learning_rate, config.training.keep_prob,
               loop.learning_rate_schedule(config.training, steps), log, start_epoch,
               monitor and monitor.step, epoch_end)
    if monitor:
        monitor.finish()
    return run_dir


def inference_model(sess, built, config, data, run_dir):
    """The inference tower: (an inference.Model, `export(epoch, key_metric)` writing it with
    the fcn.json it carries to run_dir/model)."""
    net, info = built.net, runs.model_info(config, data.dataset.classes)
    model = inference.session_model(sess, net.input_image, built.probabilities, info,
                                    {net.keep_prob: 1.0})

    def export(epoch, key_metric=None):
        exported = dataclasses.replace(info, epoch=epoch, val_iou=key_metric)
        outputs.save_model(sess, os.path.join(run_dir, 'model'), net.input_image, net.keep_prob,
                           built.probabilities, exported.to_json())
    return model, export


def write_overlays(run_dir, dataset):
    """The exported model's overlays of the data set's test images (or, without any, of its
    training images), and the colours' legend, into the run folder."""
    classes = dataset.classes
    colors = drawing.overlay_colors(classes.colors)
    if dataset.test_note:
        print(dataset.test_note)
    with inference.load_model(run_dir) as exported:  # the overlays show the model shipped
        for message in outputs.write_overlays(exported, dataset.test_images, run_dir, colors):
            print(cli.one_line(f'skipped {message}'), file=sys.stderr)
        drawing.write_legend(os.path.join(run_dir, 'legend.png'), classes.names, colors)
    runs.RunLog(os.path.join(run_dir, 'train.log'))(f'model and overlays written to {run_dir}')
