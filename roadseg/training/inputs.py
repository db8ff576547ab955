"""What a training run reads (RunData): the downloads it lacks, its data split (held-out
groups, the final model's every labelled image, or a resumed run's split.json), its batches,
class weights, the images its averaged weights calibrate on, and --val-bev's images."""
import dataclasses
import os

from roadseg import bev, files, images
from roadseg.data import balancing, downloads, groups, reading, splits
from roadseg.data.pipeline import CACHE_BYTES, TrainingData, check_pairs
from roadseg.data.transforms import Augment
from roadseg.errors import UserError
from roadseg.model import vgg


@dataclasses.dataclass
class RunData:
    """A run's inputs: the data set; its split, the (train, validation, in-group) pairs, the
    in-group ones being images of the training groups that do not train (data_split); the
    training batches (pipeline.TrainingData); the validation and in-group samples (the chief's
    alone: it validates); --val-bev's validation paths; the class weights and the images the
    averaged weights calibrate on (or None)."""
    dataset: object
    split: tuple
    batches: TrainingData
    val_samples: list
    in_group_samples: list
    bev_paths: list
    class_weights: object
    calibration: object


def read_data(config, setup, resume=None):
    """The RunData of the RunConfig `config` for this worker (`setup`), or of the run folder
    `resume` (its split.json)."""
    dataset, *split = data_split(config.data, resume)
    train, val, in_group = split
    batches = training_data(config, dataset, train, setup)
    val_samples, in_group_samples = ([samples(pairs, dataset.read_label)
                                      for pairs in (val, in_group)]
                                     if setup.is_chief else ([], []))
    return RunData(
        dataset, tuple(split), batches, val_samples, in_group_samples,
        setup.is_chief and bev_paths(config, val, dataset.classes.num_classes),
        class_weights(config.training, batches), calibration_images(config, train))


def fetch_downloads(config):
    """Download what the run needs and lacks (KITTI or CamVid, Udacity's VGG16, Keras's ImageNet
    weights) before anything else; when that fails (offline), one error names every missing
    file, how to place it by hand, and how to train without it."""
    data, weights, fetches = config.data, config.network.encoder_weights, []
    if data.dataset == 'kitti' and os.path.isdir(data.data_dir):
        fetches.append(lambda: downloads.maybe_download_kitti(data.data_dir, downloads.KITTI_URL))
    if data.dataset == 'camvid':
        fetches.append(lambda: downloads.maybe_download_camvid(data.data_dir, downloads.CAMVID_URL))
    if weights == 'udacity' and os.path.isdir(data.data_dir):
        fetches.append(lambda: vgg.maybe_download_pretrained_vgg(data.data_dir, vgg.VGG_URL))
    if weights == 'imagenet':
        fetches.append(lambda: config.network.keras_file(fetch=True))
    problems = []
    for fetch in fetches:
        try:
            fetch()
        except UserError as e:
            problems.append(str(e))
    if problems:
        instead = ['--data-dir naming a copy of the data set you have']
        if weights == 'udacity':
            instead.insert(0, '--encoder-weights none to train VGG16 from scratch without vgg.zip')
        raise UserError(f'{len(problems)} download(s) failed: ' + '. Also '.join(problems)
                        + '. Or train without them: ' + '; '.join(instead))


def bev_paths(config, val_pairs, num_classes):
    """The validation images --val-bev scores in the bird's-eye view (None without it), after
    checking that some have calibration."""
    if not config.run.val_bev:
        return None
    paths = [image for image, _ in val_pairs]
    if not paths:
        raise UserError('--val-bev: there are no validation images; raise --val-fraction')
    bev.evaluation_for(paths, num_classes, config.data.label, '--val-bev', 'validation images')
    return paths


def data_split(data, resume=None):
    """The data set of the DataConfig `data` and its (train, validation, in-group) pairs; read
    back from the split.json of the run folder `resume`.

    Validation picks the best model. It is the data set's own validation set, else a seeded
    --val-fraction split; with --val-groups, every labelled image of those groups, none of
    which trains. Then the in-group pairs, images of the training groups that do not train either
    (the data set's validation images outside the held-out groups, else a --val-fraction split
    of the training groups), are scored beside it: the in-group figure next to the cross-group
    one. Without --val-groups there are none.

    --all-labelled pools train/ and val/: every image outside the held-out groups trains, and
    without --val-groups every labelled image trains and none validates (the final model)."""
    dataset = data.open()
    if resume:
        return (dataset,) + resumed_split(resume, dataset, data.data_dir)
    if data.final:
        return dataset, dataset.train + (dataset.val or []), [], []
    if data.val_groups:
        return (dataset,) + group_split(data, dataset)
    if dataset.val is not None:
        return dataset, dataset.train, dataset.val, []
    train, val = splits.split_pairs(dataset.train, data.val_fraction, data.seed)
    if not train:
        raise UserError(f'--val-fraction {data.val_fraction} holds out all {len(val)} '
                        f'labelled images of {data.data_dir}; nothing is left to train on')
    return dataset, train, val, []


def group_split(data, dataset):
    """(train, validation, in-group) pairs with `data`'s --val-groups held out (data_split)."""
    group_of = data.grouper()
    labelled = dataset.train + (dataset.val or [])
    groups.check_groups(data.held_out, groups.count(labelled, group_of))
    train, val = groups.hold_out(labelled if data.all_labelled else dataset.train,
                                 data.held_out, group_of)
    if data.all_labelled:
        in_group = []
    elif dataset.val is not None:
        in_group, held = groups.hold_out(dataset.val, data.held_out, group_of)
        val += held
    else:
        train, in_group = splits.split_pairs(train, data.val_fraction, data.seed)
    if not train:
        raise UserError(f'--val-groups {data.val_groups} holds out every training image of '
                        f'{data.data_dir}; leave at least one group to train on')
    return train, val, in_group


def resumed_split(run_dir, dataset, data_dir):
    """The (train, validation, in-group) pairs of the run in `run_dir` (--resume), from its
    split.json ('seen' holds the in-group ones), found among `dataset`'s images in
    `data_dir`."""
    split = files.read_json(os.path.join(run_dir, 'split.json'), 'not a run folder?', 'split')
    by_name = {os.path.basename(image): (image, label)
               for image, label in dataset.train + (dataset.val or [])}
    names = {key: split.get(key, []) for key in ('train', 'val', 'seen')}
    missing = [name for listed in names.values() for name in listed if name not in by_name]
    if missing:
        raise UserError(f'--resume {run_dir}: {missing[0]} of its split is not in '
                        f'{data_dir} any more')
    return tuple([by_name[n] for n in names[key]] for key in ('train', 'val', 'seen'))


def training_data(config, dataset, train_pairs, setup):
    """The training batches of the RunConfig (pipeline.TrainingData): augmented, the last
    --plain-epochs on flips only, this worker's share of every global batch under --distribute
    (`setup`), kept in memory as --cache says."""
    data, training = config.data, config.training
    return TrainingData(
        train_pairs, training.image_shape, dataset.read_label, dataset.classes.num_classes,
        Augment(data.augment, training.train_crop), data.seed,
        plain_from=training.epochs - training.plain_epochs + 1 if training.plain_epochs
        else None, replicas=setup.replicas, shard=(setup.worker, setup.workers),
        cache=data.cache)


def samples(pairs, read_label):
    """Validation images (reading.Samples), their headers checked now; kept in memory after
    the first validation when they fit in pipeline.CACHE_BYTES, else read at each one."""
    decoded = sum(4 * height * width for height, width in check_pairs(pairs))
    return reading.load_samples(pairs, read_label, keep=decoded <= CACHE_BYTES)


def class_weights(training, data):
    """The loss's class weights (TrainingConfig `training`): median-frequency balancing of the
    training labels of `data` (a TrainingData, read once more for it), or None."""
    if training.class_weights == 'median':
        return balancing.median_frequency_weights(data.label_maps(), data.num_classes)
    return None


def calibration_images(config, train_pairs):
    """With --ema-decay, the training images whose statistics the averaged weights' batch norm
    takes before each validation (network.build_network's calibrate); else None."""
    if not config.network.ema_decay:
        return None
    return images.calibration_images([image for image, _ in train_pairs],
                                     config.training.image_shape)
