"""What a training run reads: the downloads it lacks, its data split (held-out groups, the
final model's every labelled image, or a resumed run's split.json), its batches in the learned
classes, class weights, the images its averaged weights calibrate on, and --val-bev's images."""
import functools
import os

from roadseg import bev, files, images
from roadseg.data import classes as class_files
from roadseg.data import datasets, groups
from roadseg.data.batches import BatchGenerator
from roadseg.data.transforms import Augment
from roadseg.errors import UserError
from roadseg.model import vgg


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
