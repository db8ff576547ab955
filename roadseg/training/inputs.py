"""What a training run reads: the downloads it lacks, its data split (held-out groups, the
final model's every labelled image, or a resumed run's split.json), its batches, class
weights, the images its averaged weights calibrate on, and --val-bev's images."""
import os

from roadseg import bev, files, images
from roadseg.data import datasets, groups
from roadseg.data.pipeline import CACHE_BYTES, TrainingData, check_pairs
from roadseg.data.settings import DataConfig
from roadseg.data.transforms import Augment
from roadseg.errors import UserError
from roadseg.model import vgg
from roadseg.model.settings import NetworkConfig


def fetch_downloads(args):
    """Download what the run needs and lacks (KITTI or CamVid, Udacity's VGG16, Keras's ImageNet
    weights) before anything else; when that fails (offline), one error names every missing
    file, how to place it by hand, and how to train without it."""
    fetches = []
    if args.dataset == 'kitti' and os.path.isdir(args.data_dir):
        fetches.append(lambda: datasets.maybe_download_kitti(args.data_dir, datasets.KITTI_URL))
    if args.dataset == 'camvid':
        fetches.append(lambda: datasets.maybe_download_camvid(args.data_dir, datasets.CAMVID_URL))
    if args.encoder_weights == 'udacity' and os.path.isdir(args.data_dir):
        fetches.append(lambda: vgg.maybe_download_pretrained_vgg(args.data_dir, vgg.VGG_URL))
    if args.encoder_weights == 'imagenet':
        fetches.append(lambda: NetworkConfig.of(args).keras_file(fetch=True))
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
    """The data set and its (train pairs, validation pairs, seen pairs) for main.py's options;
    read back from the run's split.json when resuming.

    Validation picks the best model. It is the data set's own validation set, else a seeded
    --val-fraction split; with --val-groups, every labelled image of those groups, none of
    which trains. Then the seen pairs, images of the training groups that do not train either
    (the data set's validation images outside the held-out groups, else a --val-fraction split
    of the training groups), are scored beside it: the in-group figure next to the cross-group
    one. Without --val-groups there are none.

    --all-labelled pools train/ and val/: every image outside the held-out groups trains, and
    without --val-groups every labelled image trains and none validates (the final model)."""
    data = DataConfig.of(args)
    dataset = data.open()
    if args.resume:
        return (dataset,) + resumed_split(args.resume, dataset, data.data_dir)
    if data.final:
        return dataset, dataset.train + (dataset.val or []), [], []
    if data.val_groups:
        return (dataset,) + group_split(data, dataset)
    if dataset.val is not None:
        return dataset, dataset.train, dataset.val, []
    train, val = datasets.split_pairs(dataset.train, data.val_fraction, data.seed)
    if not train:
        raise UserError(f'--val-fraction {data.val_fraction} holds out all {len(val)} '
                        f'labelled images of {data.data_dir}; nothing is left to train on')
    return dataset, train, val, []


def group_split(data, dataset):
    """(train, validation, seen) pairs with `data`'s --val-groups held out (data_split)."""
    group_of = data.grouper()
    labelled = dataset.train + (dataset.val or [])
    groups.check_groups(data.held_out, groups.count(labelled, group_of))
    train, val = groups.hold_out(labelled if data.all_labelled else dataset.train,
                                 data.held_out, group_of)
    if data.all_labelled:
        seen = []
    elif dataset.val is not None:
        seen, held = groups.hold_out(dataset.val, data.held_out, group_of)
        val += held
    else:
        train, seen = datasets.split_pairs(train, data.val_fraction, data.seed)
    if not train:
        raise UserError(f'--val-groups {data.val_groups} holds out every training image of '
                        f'{data.data_dir}; leave at least one group to train on')
    return train, val, seen


def resumed_split(run_dir, dataset, data_dir):
    """The (train, validation, seen) pairs of the run in `run_dir` (--resume), from its
    split.json, found among `dataset`'s images in `data_dir`."""
    split = files.read_json(os.path.join(run_dir, 'split.json'), 'not a run folder?', 'split')
    by_name = {os.path.basename(image): (image, label)
               for image, label in dataset.train + (dataset.val or [])}
    names = {key: split.get(key, []) for key in ('train', 'val', 'seen')}
    missing = [name for listed in names.values() for name in listed if name not in by_name]
    if missing:
        raise UserError(f'--resume {run_dir}: {missing[0]} of its split is not in '
                        f'{data_dir} any more')
    return tuple([by_name[n] for n in names[key]] for key in ('train', 'val', 'seen'))


def training_data(args, dataset, train_pairs, setup):
    """The training batches of the options (pipeline.TrainingData): augmented, the last
    --plain-epochs on flips only, this worker's share of every global batch under --distribute
    (`setup`), kept in memory as --cache says."""
    return TrainingData(
        train_pairs, args.image_shape, dataset.read_label, dataset.classes.num_classes,
        Augment(args.augment, args.train_crop), args.seed,
        plain_from=args.epochs - args.plain_epochs + 1 if args.plain_epochs else None,
        replicas=setup.replicas, shard=(setup.worker, setup.workers), cache=args.cache)


def samples(pairs, read_label):
    """Validation images (datasets.Samples), their headers checked now; kept in memory after
    the first validation when they fit in pipeline.CACHE_BYTES, else read at each one."""
    decoded = sum(4 * height * width for height, width in check_pairs(pairs))
    return datasets.load_samples(pairs, read_label, keep=decoded <= CACHE_BYTES)


def class_weights(args, data):
    """The loss's class weights: median-frequency balancing of the training labels of `data`
    (a TrainingData, read once more for it), or None."""
    if args.class_weights == 'median':
        return datasets.median_frequency_weights(data.label_maps(), data.num_classes)
    return None


def calibration_images(args, train_pairs):
    """With --ema-decay, the training images whose statistics the averaged weights' batch norm
    takes before each validation (network.build_network's calibrate); else None."""
    if not args.ema_decay:
        return None
    return images.calibration_images([image for image, _ in train_pairs], args.image_shape)
