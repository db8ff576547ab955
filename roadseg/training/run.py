"""The run folder (KittiSeg's idea: everything a run made, in one place) and the bookkeeping
around training: config.json, split.json, train.log, metrics.json, checkpoints/, the model/
SavedModel with its fcn.json, TensorBoard events, and the overlays and legend at the end.
"""
import functools
import os
import platform
import time

import numpy as np
from tqdm import tqdm

from roadseg import bev, evaluation, files, images, inference
from roadseg.data import classes as class_files
from roadseg.data import datasets, groups
from roadseg.data.batches import BatchGenerator
from roadseg.data.transforms import Augment
from roadseg.errors import UserError
from roadseg.model import vgg
from roadseg.model.ops import tf, tf1
from roadseg.training import checkpoints, crossval


class RunLog:
    """Prints each message and appends it to a run's log file (none: prints only, as a worker
    that is not the chief does)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, message):
        print(message)
        if self.path:
            with open(self.path, 'a') as f:
                f.write(message + '\n')


def new_run_dir(runs_dir):
    """Create and return a fresh `runs_dir/<YYYYmmdd-HHMMSS>[-N]` folder."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    for n in range(1000):
        path = os.path.join(runs_dir, stamp if n == 0 else f'{stamp}-{n}')
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'{runs_dir}: could not create a new run folder')


# ----------------------------------------------------------------------------------------------
# Data of a run
# ----------------------------------------------------------------------------------------------

def fetch_downloads(args):
    """Download what the run needs and lacks (KITTI or CamVid, Udacity's VGG16) before anything
    else; when that fails (offline), one error names every missing file, how to place it by
    hand, and how to train without it."""
    fetches = []
    if args.dataset == 'kitti' and os.path.isdir(args.data_dir):
        fetches.append(lambda: datasets.maybe_download_kitti(args.data_dir, datasets.KITTI_URL))
    if args.dataset == 'camvid':
        fetches.append(lambda: datasets.maybe_download_camvid(args.data_dir, datasets.CAMVID_URL))
    if args.encoder_weights == 'udacity' and os.path.isdir(args.data_dir):
        fetches.append(lambda: vgg.maybe_download_pretrained_vgg(args.data_dir, vgg.VGG_URL))
    problems = []
    for fetch in fetches:
        try:
            fetch()
        except UserError as e:
            problems.append(str(e))
    if problems:
        instead = ['--data-dir naming a copy of the data set you have']
        if args.encoder_weights == 'udacity':
            instead.insert(0, '--encoder-weights none to train VGG16 from scratch without vgg.zip')
        raise UserError(f'{len(problems)} download(s) failed: ' + '. Also '.join(problems)
                        + '. Or train without them: ' + '; '.join(instead))


def bev_paths(args, val_pairs, num_classes):
    """The validation images --val-bev scores in the bird's-eye view (None without it), after
    checking that some have calibration."""
    if not args.val_bev:
        return None
    paths = [image for image, _ in val_pairs]
    if not paths:
        raise UserError('--val-bev: there are no validation images; raise --val-fraction')
    bev.evaluation_for(paths, num_classes, args.label, '--val-bev', 'validation images')
    return paths


def data_split(args):
    """The data set and its (train pairs, validation pairs, seen pairs); read back from
    split.json when resuming.

    Validation picks the best model. It is the data set's own validation set, else a seeded
    --val-fraction split; with --val-groups, every labelled image of those groups, none of
    which trains. Then the seen pairs, images of the training groups that do not train either
    (the data set's validation images outside the held-out groups, else a --val-fraction split
    of the training groups), are scored beside it: the in-group figure next to the cross-group
    one. Without --val-groups there are none.

    --all-labelled pools train/ and val/: every image outside the held-out groups trains, and
    without --val-groups every labelled image trains and none validates (the final model)."""
    dataset = datasets.open_dataset(args.dataset, args.data_dir, args.label, args.classes,
                                    args.remap)
    if args.resume:
        return (dataset,) + resumed_split(args, dataset)
    if args.all_labelled and not args.val_groups:
        return dataset, dataset.train + (dataset.val or []), [], []
    if args.val_groups:
        return (dataset,) + group_split(args, dataset)
    if dataset.val is not None:
        return dataset, dataset.train, dataset.val, []
    train, val = datasets.split_pairs(dataset.train, args.val_fraction, args.seed)
    if not train:
        raise UserError(f'--val-fraction {args.val_fraction} holds out all {len(val)} '
                        f'labelled images of {args.data_dir}; nothing is left to train on')
    return dataset, train, val, []


def group_split(args, dataset):
    """(train, validation, seen) pairs with the --val-groups held out (data_split)."""
    group_of = groups.grouper(args.dataset, args.group_by)
    wanted = [group.strip() for group in args.val_groups.split(',') if group.strip()]
    labelled = dataset.train + (dataset.val or [])
    groups.check_groups(wanted, groups.count(labelled, group_of))
    train, val = groups.hold_out(labelled if args.all_labelled else dataset.train, wanted,
                                 group_of)
    if args.all_labelled:
        seen = []
    elif dataset.val is not None:
        seen, held = groups.hold_out(dataset.val, wanted, group_of)
        val += held
    else:
        train, seen = datasets.split_pairs(train, args.val_fraction, args.seed)
    if not train:
        raise UserError(f'--val-groups {args.val_groups} holds out every training image of '
                        f'{args.data_dir}; leave at least one group to train on')
    return train, val, seen


def resumed_split(args, dataset):
    """The (train, validation, seen) pairs of the run --resume names, from its split.json."""
    split = files.read_json(os.path.join(args.resume, 'split.json'), 'not a run folder?')
    by_name = {os.path.basename(image): (image, label)
               for image, label in dataset.train + (dataset.val or [])}
    names = {key: split.get(key, []) for key in ('train', 'val', 'seen')}
    missing = [name for listed in names.values() for name in listed if name not in by_name]
    if missing:
        raise UserError(f'--resume {args.resume}: {missing[0]} of its split is not in '
                        f'{args.data_dir} any more')
    return tuple([by_name[n] for n in names[key]] for key in ('train', 'val', 'seen'))


def learned_classes(args, classes):
    """The classes the network learns: the data set's own before --remap with --remap-at output
    (their probabilities summed into `classes` at the output), else `classes`."""
    return classes.base if args.remap_at == 'output' else classes


def batch_generator(args, dataset, train_pairs, setup):
    """The training batches of the options, labelled with the learned classes: augmented, the
    last --plain-epochs on flips only; this worker's share of every global batch under
    --distribute (`setup`)."""
    learned = learned_classes(args, dataset.classes)
    return BatchGenerator(
        train_pairs, args.image_shape, functools.partial(class_files.read_label, learned),
        learned.num_classes,
        Augment(args.augment, args.train_crop), args.seed,
        plain_from=args.epochs - args.plain_epochs + 1 if args.plain_epochs else None,
        replicas=setup.replicas, shard=(setup.worker, setup.workers))


def class_weights(args, label_maps, num_classes):
    """The loss's class weights: median-frequency balancing of the training labels, or None."""
    if args.class_weights == 'median':
        return datasets.median_frequency_weights(label_maps, num_classes)
    return None


def calibration_images(args, train_pairs):
    """With --ema-decay, the training images whose statistics the averaged weights' batch norm
    takes before each validation (network.build_network's calibrate); else None."""
    if not args.ema_decay:
        return None
    return images.calibration_images([image for image, _ in train_pairs], args.image_shape)


# ----------------------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------------------

def save_config(run_dir, args, weights):
    """Write every option and the library versions to run_dir/config.json."""
    config = {k: v for k, v in vars(args).items() if k not in ('config', 'resume')}
    config['data_dir'] = os.path.abspath(args.data_dir)  # so the run resumes from anywhere
    for shape in ('image_shape', 'train_crop'):
        if config[shape]:
            config[shape] = '{}x{}'.format(*config[shape])
    if weights is not None:
        config['class_weight_values'] = [round(float(w), 6) for w in weights]
    config['versions'] = {'tensorflow': tf.__version__, 'python': platform.python_version(),
                          'numpy': np.__version__}
    files.write_json(os.path.join(run_dir, 'config.json'), config)


def start_run(sess, saver, args, split, weights, writes=True):
    """A new run folder with config.json and split.json, or the resumed run's state restored
    from its newest sound checkpoint: (run folder, first epoch to train, earlier epoch records).
    `split` is the (train, validation, seen) pairs of data_split, recorded in split.json.

    The checkpoint is the commit point of an epoch: its manifest holds the records of every
    epoch up to it, so a run killed between writing the checkpoint and metrics.json, or during
    an export, resumes with its records whole; temporary folders a kill left are removed.
    A worker that is not the chief (`writes` false) makes no folder and only restores."""
    if not writes:
        done = (checkpoints.restore_latest(sess, saver, os.path.join(args.resume, 'checkpoints'),
                                           print) if args.resume else 0)
        return None, done + 1, []
    if not args.resume:
        run_dir = new_run_dir(args.runs_dir)
        save_config(run_dir, args, weights)
        record = {key: [os.path.basename(image) for image, _ in pairs]
                  for key, pairs in zip(('train', 'val', 'seen'), split)}
        if args.val_groups:
            group_of = groups.grouper(args.dataset, args.group_by)
            record['groups'] = {key: groups.count(pairs, group_of)
                                for key, pairs in zip(('train', 'val', 'seen'), split)}
        files.write_json(os.path.join(run_dir, 'split.json'), record)
        if args.crossval:
            files.write_json(os.path.join(run_dir, 'crossval.json'),
                             crossval.expected(args.crossval))
        return run_dir, 1, []
    run_dir = args.resume
    checkpoint_dir = os.path.join(run_dir, 'checkpoints')
    for folder in (run_dir, checkpoint_dir):
        files.remove_temporaries(folder)
    save_config(run_dir, args, weights)  # --epochs and --data-dir may have changed
    log = RunLog(os.path.join(run_dir, 'train.log'))
    done = checkpoints.restore_latest(sess, saver, checkpoint_dir, log)
    log(f'resuming {run_dir} after epoch {done}' if done else
        f'resuming {run_dir}: no usable checkpoint, starting from epoch 1')
    records = checkpoints.manifest(checkpoint_dir, done).get('records') if done else []
    if records is None:  # a checkpoint written before its manifest held the records
        path = os.path.join(run_dir, 'metrics.json')
        records = files.read_json(path)['epochs'] if os.path.exists(path) else []
    return run_dir, done + 1, [r for r in records if r['epoch'] <= done]


def describe(run_dir, args, classes, split, start_epoch):
    """The run log's line on data, sizes and epochs (a worker that is not the chief has no
    run folder); `split` is data_split's (train, validation, seen) pairs."""
    train, val, seen = split
    crop = args.train_crop
    where = run_dir or '(written by the chief)'
    held = f' (held-out groups {args.val_groups})' if args.val_groups else ''
    images = (f'every one of the {len(train)} labelled images trains; nothing validates '
              f'(a final model: its last epoch is exported)'
              if args.all_labelled and not args.val_groups else
              f'{len(train)} training and {len(val)} validation images{held}')
    learned = (f' (learning its {classes.base.num_classes} classes, summed into these at the '
               f'output)' if args.remap_at == 'output' else '')
    return (f'run {where}: {args.dataset} with {classes.num_classes} classes{learned}, {images}'
            + (f', {len(seen)} unseen images of the training groups scored beside'
               if seen else '')
            + f', at {args.image_shape[0]}x{args.image_shape[1]}'
            + (f' (training on {crop[0]}x{crop[1]} crops)' if crop else '')
            + f', epochs {start_epoch}..{args.epochs}'
            + (f' (the last {args.plain_epochs} on flips only)' if args.plain_epochs else '')
            + (f'\n{crossval.expectation_line(crossval.expected(args.crossval))}'
               if args.crossval else ''))


def model_info(args, classes):
    """The fcn.json of the run's model: what inference needs to use it."""
    return {'image_shape': list(args.image_shape), 'num_classes': classes.num_classes,
            'class_names': classes.names, 'class_colors': [list(c) for c in classes.colors],
            'encoder': args.encoder, 'decoder': args.decoder, 'alpha': args.alpha,
            'depth': args.depth, 'dataset': args.dataset, 'label': args.label,
            'classes': args.classes, 'remap': args.remap}


def save_model(sess, export_dir, input_image, keep_prob, probabilities, info):
    """Save the network as a SavedModel (tag `serve`, signature `serving_default`: RGB 0..255
    images at the training size in, per-pixel class probabilities out) with `info` as fcn.json
    and a manifest.json of the files' sizes and digests, which loading checks. Devices are
    cleared: a graph built for several GPUs or workers loads on any one machine."""
    signature = tf1.saved_model.predict_signature_def(
        inputs={'image': input_image, 'keep_prob': keep_prob},
        outputs={'probabilities': probabilities})
    with files.atomic_path(export_dir) as tmp:
        builder = tf1.saved_model.Builder(tmp)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={'serving_default': signature}, clear_devices=True)
        builder.save()
        files.write_json(os.path.join(tmp, inference.MODEL_INFO), info)
        files.write_manifest(tmp)


def write_overlays(model, image_paths, output_dir, colors):
    """Segment each image with `model` and write its overlay, at its original size and under
    its own name, to `output_dir`; unreadable images are skipped and their errors returned."""
    os.makedirs(output_dir, exist_ok=True)
    print(f'Writing {len(image_paths)} overlays to {output_dir}')
    bad = []
    for path in tqdm(image_paths, desc='Inference', disable=None):
        try:
            image = images.read_rgb(path)
        except UserError as e:
            bad.append(str(e))
            continue
        (probabilities,) = inference.segment(model, [image])
        name = os.path.splitext(os.path.basename(path))[0] + '.png'
        files.write_png(os.path.join(output_dir, name),
                        inference.overlay(image, inference.classes_of(probabilities), colors))
    return bad


# ----------------------------------------------------------------------------------------------
# The monitor
# ----------------------------------------------------------------------------------------------

def validates(args, epoch):
    """Whether `epoch` ends with validation: every --val-every epochs, and the last."""
    return epoch % args.val_every == 0 or epoch == args.epochs


class RunMonitor:
    """The bookkeeping around training: TensorBoard summaries every step, and after every epoch
    metrics.json and the checkpoint, with validation and the export of the best model so far
    after every --val-every epochs and the last.

    `model` is the inference tower as an inference.Model; `export(epoch, key_metric)` writes it
    to model/; with `bev_paths` (the validation images' paths, --val-bev) validation scores in
    KITTI's bird's-eye view too. `seen_samples`, images of the training groups that do not
    train (data_split), are scored at each validation beside it but never pick the model."""

    def __init__(self, run_dir, sess, saver, model, export, val_samples, args, log, records,
                 step, classes, bev_paths=None, seen_samples=()):
        self.run_dir, self.sess, self.saver, self.classes = run_dir, sess, saver, classes
        self.bev_paths, self.seen_samples = bev_paths, seen_samples
        self.model, self.export, self.val_samples = model, export, val_samples
        self.args, self.log, self.records, self.step_count = args, log, records, step
        self.writer = tf1.summary.FileWriter(run_dir)
        self.best = max((r for r in records if 'key_metric' in r),
                        key=lambda r: r['key_metric'], default=None) if val_samples else None
        self.clock = time.time()

    def scalars(self, values, step):
        self.writer.add_summary(tf1.Summary(value=[
            tf1.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()
            if value is not None]), step)

    def validates(self, epoch):
        """Whether `epoch` ends with validation (run.validates)."""
        return validates(self.args, epoch)

    def step(self, loss):
        self.step_count += 1
        self.scalars({'train/loss': loss}, self.step_count)

    def overlays(self, epoch, count=3):
        """A few validation overlays, at the training size, as TensorBoard images."""
        import imageio.v3 as iio
        values = []
        for name, image, _ in self.val_samples[:count]:
            small = images.resize_image(image, self.args.image_shape)
            classes = inference.classes_of(self.model(small[None])[0])
            drawn = inference.overlay(small, classes,
                                      inference.overlay_colors(self.classes.colors))
            png = iio.imwrite('<bytes>', drawn, extension='.png')
            values.append(tf1.Summary.Value(tag=f'val/overlay/{name}', image=tf1.Summary.Image(
                height=small.shape[0], width=small.shape[1], colorspace=3,
                encoded_image_string=png)))
        self.writer.add_summary(tf1.Summary(value=values), epoch)

    def epoch_end(self, epoch, mean_loss):
        """Validate (every --val-every epochs), export a new best model, then commit the epoch:
        its checkpoint, whose manifest holds every record so far, then metrics.json."""
        now = time.time()
        record = {'epoch': epoch, 'train_loss': mean_loss, 'seconds': now - self.clock}
        self.clock = now
        validated = bool(self.val_samples) and self.validates(epoch)
        if validated:
            results = evaluation.evaluate(
                self.model, self.val_samples, bev_evaluation=bev.Evaluation(
                    self.bev_paths, self.args.label) if self.bev_paths else None)
            record.update(val=results, key_metric=evaluation.key_metric(results))
            self.log(f'epoch {epoch}: validation {evaluation.summary_line(results)}')
            kitti = results.get('kitti_road', {})
            self.scalars({'val/pixel_accuracy': results['pixel_accuracy'],
                          'val/mean_iou': results['mean_iou'],
                          'val/road_iou': results['iou'][1] if kitti else None,
                          'val/max_f': kitti.get('max_f'),
                          'val/average_precision': kitti.get('average_precision'),
                          'val/bev_max_f': (evaluation.bev_summary(results) or {})
                          .get('max_f')}, epoch)
            if self.seen_samples:
                record['seen'] = evaluation.evaluate(self.model, self.seen_samples)
                self.log(f'epoch {epoch}: training groups\' unseen images '
                         f'{evaluation.summary_line(record["seen"])}')
                self.scalars({'seen/mean_iou': record['seen']['mean_iou'],
                              'seen/key_metric': evaluation.key_metric(record['seen'])}, epoch)
            if epoch % self.args.tb_images_every == 0 or epoch == self.args.epochs:
                self.overlays(epoch)
        if validated and (self.best is None or record['key_metric'] > self.best['key_metric']):
            self.best = record
            self.export(epoch, record['key_metric'])
            self.log(f'epoch {epoch}: new best validation IoU {record["key_metric"]:.4f}, '
                     f'model exported to {os.path.join(self.run_dir, "model")}')
        self.records.append(record)
        checkpoints.save(self.sess, self.saver, os.path.join(self.run_dir, 'checkpoints'),
                         epoch, {self.best['epoch']} if self.best else set(),
                         extra={'records': self.records})
        self.write_metrics()
        self.writer.flush()

    def write_metrics(self):
        files.write_json(os.path.join(self.run_dir, 'metrics.json'),
                         {'epochs': self.records, 'best_epoch': self.best and self.best['epoch']})

    def headline(self):
        """The best epoch's figures in one line: validation (the held-out groups under
        --val-groups) and, beside it, the training groups' unseen images when there are any."""
        best, held = self.best, self.args.val_groups
        line = (f'best epoch {best["epoch"]}: '
                + (f'held-out groups {held}' if held else 'validation')
                + f' {evaluation.summary_line(best["val"])}')
        if 'seen' in best:
            line += f'; training groups\' unseen images {evaluation.summary_line(best["seen"])}'
        return line

    def finish(self):
        """Make model/ hold the best validated epoch (without validation, the last), which it
        may not after a kill between an export and its epoch's checkpoint: re-exported from
        that epoch's checkpoint, checked against its manifest first."""
        self.write_metrics()
        if self.best:
            self.log(self.headline())
        info = os.path.join(self.run_dir, 'model', inference.MODEL_INFO)
        exported = files.read_json(info).get('epoch') if os.path.isfile(info) else None
        if not self.best:
            if exported != self.args.epochs:
                self.export(self.args.epochs)
            return
        if exported == self.best['epoch']:
            return
        reason = checkpoints.restore(self.sess, self.saver,
                                     os.path.join(self.run_dir, 'checkpoints'),
                                     self.best['epoch'])
        if reason:
            raise UserError(f'{self.run_dir}: the best epoch\'s checkpoint is unusable ({reason})'
                            f' and model/ holds epoch {exported}; train a new run')
        self.export(self.best['epoch'], self.best['key_metric'])

