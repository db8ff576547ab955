"""main.py's options: roadseg/configs/kitti_road.json, then what a --config file sets, then the
flags; or, with --resume RUN_DIR, the options that run was started with."""
import argparse
import json
import os
import shlex
import sys

from roadseg import cli, configs, files
from roadseg.data import datasets, transforms
from roadseg.data import settings as data_settings
from roadseg.errors import UserError
from roadseg.model import DECODERS, TIRAMISU_DEPTHS, settings
from roadseg.training import crossval
from roadseg.training import settings as training_settings

DESCRIPTION = ('FCN road segmentation: train on KITTI Road, CamVid or a folder of images and '
               'masks, validate, checkpoint, and write the model and overlays to a run folder.')
# Options that may stay unset
OPTIONAL = {'resume', 'classes', 'remap', 'train_crop', 'image_shape', 'val_groups', 'group_by',
            'crossval', 'decoder'}
DEFAULT_CONFIG = configs.path('kitti_road.json')
# What a run's config.json records beside its options (run.save_config), dropped when read back
DERIVED = ('versions', 'class_weight_values', 'command', 'commit')
# Options removed after they measured no gain (docs/experiments.md), at their no-op values:
# dropped when read from an older run's config.json, so it still resumes.
RETIRED = {'lovasz_weight': 0.0, 'hard_pixels': 1.0}


def train_crop_arg(text):
    """Parse `HxW` as image_shape_arg does, or `none` for whole images."""
    return None if text.lower() == 'none' else cli.image_shape_arg(text)


def encoder_weights_arg(text):
    """Parse `udacity`, `imagenet`, `none` or `keras-h5:PATH`."""
    if text in ('udacity', 'imagenet', 'none'):
        return text
    if text.startswith('keras-h5:'):
        if not os.path.isfile(text[len('keras-h5:'):]):
            raise argparse.ArgumentTypeError(f'{text[len("keras-h5:"):]}: file not found')
        return text
    raise argparse.ArgumentTypeError(f'{text!r}: use udacity, imagenet, none or keras-h5:PATH')


def load_config(path):
    """The option defaults from a JSON config file (a run's config.json works too)."""
    config = files.read_json(path, 'give a JSON file of options to --config')
    if not isinstance(config, dict):
        raise UserError(f'{path}: a config file holds one JSON object of options, '
                        f'{{"option": value, ...}}, not a {type(config).__name__}')
    for derived in DERIVED:
        config.pop(derived, None)
    for name, no_op in RETIRED.items():  # run folders written before these options went
        if config.get(name, no_op) == no_op:
            config.pop(name, None)
    if isinstance(config.get('crossval'), str) and not os.path.isabs(config['crossval']):
        # a recipe's record of its cross-validation travels with it: relative to the file
        config['crossval'] = os.path.normpath(os.path.join(os.path.dirname(path),
                                                           config['crossval']))
    return config


def parse_args(argv=None):
    """Options: roadseg/configs/kitti_road.json, then what a --config file sets, then the flags."""
    pre = cli.ArgumentParser(add_help=False)
    pre.add_argument('--config', default=DEFAULT_CONFIG,
                     help='JSON file of options over those of %(default)s')
    config_path = pre.parse_known_args(argv)[0].config
    parser = cli.ArgumentParser(description=DESCRIPTION, parents=[pre], prog='main.py')
    parser.add_argument('--data-dir', help='the data set folder (KITTI: the folder holding '
                                           'data_road/ and vgg/; default: %(default)s)')
    parser.add_argument('--runs-dir', help='where run folders are made (default: %(default)s)')
    parser.add_argument('--epochs', type=int, help='(default: %(default)s)')
    parser.add_argument('--batch-size', type=int, help='(default: %(default)s)')
    parser.add_argument('--learning-rate', type=float, help='Adam (default: %(default)s)')
    parser.add_argument('--keep-prob', type=float, help='dropout keep probability in fc6/fc7 '
                                                        '(default: %(default)s)')
    parser.add_argument('--weight-decay', type=float, help='L2 on the decoder weights '
                                                           '(default: %(default)s)')
    parser.add_argument('--image-shape', type=cli.image_shape_arg,
                        help="training size HxW, multiples of 32 (default: the data set's: "
                             "KITTI 160x576, CamVid 352x480, a folder's first image rounded to "
                             "multiples of 32)")
    parser.add_argument('--dataset', choices=sorted(datasets.READERS),
                        help='the data set layout in --data-dir (default: %(default)s)')
    parser.add_argument('--label', choices=('road', 'lane'), help='KITTI ground truth to train '
                                                                  'on (default: %(default)s)')
    parser.add_argument('--classes', metavar='FILE',
                        help="a JSON class file replacing the data set's own")
    parser.add_argument('--remap', metavar='NAME=I[+I..][,..]',
                        help='merge classes, e.g. road=3: road against everything else')
    parser.add_argument('--augment', metavar='KEY=VALUE,..',
                        help='training augmentation over the defaults '
                             f'{",".join(f"{k}={v:g}" for k, v in transforms.DEFAULTS.items())}'
                             '; "none,flip=0.5" for flips only (default: %(default)s)')
    parser.add_argument('--plain-epochs', type=int, metavar='N',
                        help='train the last N epochs on flips only (and --train-crop): no zoom '
                             'or colour jitter, so the last, low-rate steps fit the images as '
                             'inference sees them (default: %(default)s)')
    parser.add_argument('--train-crop', type=train_crop_arg, metavar='HxW',
                        help='train on random HxW windows of the --image-shape images, '
                             'multiples of 32 (validation and inference see whole images); '
                             'cheaper steps, so more of them in the same time; none: whole '
                             'images (default: %(default)s)')
    parser.add_argument('--cache', choices=('auto', 'memory', 'none'),
                        help='keep the decoded, resized training pairs in memory after their '
                             'first read: memory; none: read the files every epoch, memory '
                             'independent of the data set; auto: memory when they take at most '
                             '1 GiB (default: %(default)s)')
    parser.add_argument('--class-weights', choices=('none', 'median'),
                        help='weight the loss by median-frequency balancing of the training '
                             'labels (default: %(default)s)')
    parser.add_argument('--encoder', choices=('vgg16', 'mobilenetv2', 'tiramisu'),
                        help='the backbone; tiramisu: FC-DenseNet, an encoder-decoder of its '
                             'own, trained from scratch (default: %(default)s)')
    parser.add_argument('--decoder', choices=sorted(DECODERS) + ['tiramisu'],
                        help="mobilenetv2's decoder: fcn8s, the FCN decoder on strides "
                             "8/16/32; fcn4s adds a stride-4 skip; dilated: stride-16/32 stages "
                             "dilated with skips at 8/4; fpn: strides 4-32 merged as features "
                             "(a feature pyramid), scored once; tiramisu: FC-DenseNet's own up "
                             "path (default: the encoder's own: fcn8s, tiramisu for tiramisu)")
    parser.add_argument('--aux-loss', type=float, metavar='W',
                        help="deep supervision for mobilenetv2's FCN decoders: add W times the "
                             "cross-entropy of a 1x1 class score of the decoder's layer-4 "
                             "features (stride 16) to the loss, in training only (PSPNet uses "
                             "0.4); 0: none (default: %(default)s)")
    parser.add_argument('--depth', type=int, choices=sorted(TIRAMISU_DEPTHS),
                        help="FC-DenseNet's depth, as the paper's 56, 67 and 103 "
                             "(default: %(default)s)")
    parser.add_argument('--alpha', type=float,
                        help="mobilenetv2's width multiplier (default: %(default)s)")
    parser.add_argument('--lr-schedule', choices=('constant', 'poly'),
                        help="constant, or poly: decayed as (1 - step/steps)^0.9 to 0 "
                             "(default: %(default)s)")
    parser.add_argument('--ema-decay', type=float,
                        help='validate, export and deploy an exponential moving average of the '
                             'weights with this decay per step, e.g. 0.9995, its batch-norm '
                             'statistics measured on 32 training images before every validation; '
                             '0: the weights themselves (default: %(default)s)')
    parser.add_argument('--input-norm', choices=('fixed', 'image'),
                        help="fixed: the encoder's own scaling of 0..255 values; image: first "
                             "each image's channels to one mean and deviation, in the graph, "
                             "for other light (in-graph encoders) (default: %(default)s)")
    parser.add_argument('--encoder-weights', type=encoder_weights_arg,
                        help="udacity (data-dir/vgg, downloaded if absent), imagenet (Keras's "
                             "ImageNet file of the encoder, downloaded into data/ if absent), "
                             "keras-h5:PATH (Keras's VGG16 or, for --encoder mobilenetv2, "
                             "MobileNetV2 ImageNet file) or none (from scratch) "
                             "(default: %(default)s)")
    parser.add_argument('--seed', type=int, help='(default: %(default)s)')
    parser.add_argument('--val-fraction', type=float,
                        help='share of the labelled images held out for validation after every '
                             'epoch, split with --seed (default: %(default)s)')
    parser.add_argument('--val-groups', metavar='GROUP[,GROUP..]',
                        help='hold out every image of these groups (CamVid: drives such as '
                             '0001TP; KITTI: um, umm, uu) for validation, which picks the best '
                             'model; the training groups\' own unseen images are scored beside '
                             'it (docs/generalisation.md)')
    parser.add_argument('--group-by', metavar='REGEX|FILE.json',
                        help="what an image's group is: a regular expression over its file "
                             "stem (the first capture group), or a JSON file of {stem: group} "
                             "(default: CamVid's drive prefix, KITTI's category)")
    parser.add_argument('--all-labelled', action='store_true', default=None,
                        help="pool the data set's train/ and val/ images: with --val-groups, "
                             "every image outside the held-out groups trains (crossval.py's "
                             "folds); without, every labelled image trains and nothing "
                             "validates: the final model, its last epoch exported")
    parser.add_argument('--crossval', metavar='CROSSVAL.json', type=lambda text: text or None,
                        help="with --all-labelled: the crossval.json of the cross-validation "
                             "that chose this recipe; its figures at --epochs go into the run "
                             "folder and log, as what to expect on a new street ('' for none)")
    parser.add_argument('--val-every', type=int, metavar='N',
                        help='validate every N epochs and after the last (with --ema-decay, '
                             'measuring the averaged weights\' batch-norm statistics then too); '
                             'the best model is chosen among those epochs (default: %(default)s)')
    parser.add_argument('--val-bev', action='store_true', default=None,
                        help="also validate in KITTI's bird's-eye view, as its server ranks "
                             "(the validation images that have calib/ files; two classes)")
    parser.add_argument('--tb-images-every', type=int,
                        help='log validation overlays to TensorBoard every N epochs '
                             '(default: %(default)s)')
    parser.add_argument('--distribute', choices=('auto', 'none', 'mirrored', 'multi-worker'),
                        help='auto: every visible GPU (mirrored) when there are two or more, '
                             'else one device; mirrored: the GPUs of this machine; '
                             'multi-worker: the machines of TF_CONFIG, each with its GPUs. '
                             '--batch-size stays the global batch (default: %(default)s)')
    parser.add_argument('--precision', choices=('float32', 'bfloat16', 'float16'),
                        help='mixed precision, weights kept in float32: bfloat16 on CPUs with '
                             'AMX (without it, slower than float32), float16 on GPUs with '
                             'dynamic loss scaling (default: %(default)s)')
    parser.add_argument('--xla', action=argparse.BooleanOptionalAction, default=None,
                        help='compile the graph with XLA, on GPUs (refused on CPUs, where it '
                             'measured no gain)')
    parser.add_argument('--step-timeout', type=float, metavar='SECONDS',
                        help='multi-worker: how long a step waits for the other workers before '
                             'the run stops (a worker has died); covers the chief\'s validation '
                             'and export at each epoch\'s end (default: %(default)s)')
    parser.add_argument('--resume', metavar='RUN_DIR', default=None,
                        help='continue an interrupted run from its last checkpoint, with its '
                             'options and split')
    user_config = load_config(config_path) if config_path != DEFAULT_CONFIG else {}
    config = {**load_config(DEFAULT_CONFIG), **user_config}
    unknown = sorted(set(config) - {a.dest for a in parser._actions})
    if unknown:
        raise UserError(f'{config_path}: unknown option {unknown[0]!r}')
    check_config(parser, config, config_path)
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    missing = [a.dest for a in parser._actions
               if getattr(args, a.dest, 0) is None and a.dest not in OPTIONAL]
    if missing:
        raise UserError(f'{config_path}: no value for option {missing[0]!r}')
    if args.image_shape is None:
        args.image_shape = datasets.default_image_shape(args.dataset, args.data_dir)
    for flag in ('val_every', 'tb_images_every'):
        if getattr(args, flag) < 1:
            parser.error(f'argument --{flag.replace("_", "-")}: must be at least 1')
    if not 0 <= args.plain_epochs <= args.epochs:
        parser.error(f'argument --plain-epochs: {args.plain_epochs} must be from 0 to --epochs '
                     f'({args.epochs})')
    if not 0 < args.keep_prob <= 1:
        parser.error(f'argument --keep-prob: {args.keep_prob} must be above 0 and at most 1')
    data_settings.DataConfig.of(args)  # its own RULES; its files' errors name the file
    try:  # the network's and the training's options, each checked by its own RULES
        training_settings.TrainingConfig.of(args)
        args.decoder = settings.NetworkConfig.of(args).decoder  # None: the encoder's own
    except UserError as e:
        parser.error(str(e))
    final = args.all_labelled and not args.val_groups
    if args.val_bev and final:
        parser.error('--val-bev: with --all-labelled and no --val-groups nothing validates')
    if args.crossval and not final:
        parser.error('--crossval records the cross-validation behind a final model: give it '
                     'with --all-labelled and without --val-groups')
    if args.crossval:  # read now: a bad record stops the run before it starts
        crossval.read_summary(args.crossval)
    return args


def check_config(parser, config, path):
    """Stop on a config value of the wrong type or outside its choices, naming the file: the
    parser converts and checks only what comes from the command line."""
    for action in parser._actions:
        if action.dest not in config or action.dest == 'help':
            continue
        value, flag = config[action.dest], action.option_strings[-1]
        if value is None:
            continue  # an option left unset: reported below unless it may stay unset
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            if not isinstance(value, bool):
                raise UserError(f'{path}: {action.dest} is {json.dumps(value)}; {flag} is '
                                f'true or false')
        elif action.type in (int, float):
            wanted = (int,) if action.type is int else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise UserError(f'{path}: {action.dest} is {json.dumps(value)}; {flag} takes '
                                f'{"a whole number" if action.type is int else "a number"}')
        elif not isinstance(value, str):
            raise UserError(f'{path}: {action.dest} is {json.dumps(value)}; {flag} takes text, '
                            f'as on the command line')
        if action.choices and value not in action.choices:
            raise UserError(f'{path}: {action.dest} is {json.dumps(value)}; {flag} takes one of '
                            f'{", ".join(map(str, action.choices))}')


# What --resume may change: more epochs, moved data, and where and how fast it runs.
RESUME_FLAGS = ('--epochs', '--data-dir', '--distribute', '--precision', '--xla', '--no-xla',
                '--step-timeout')


def options(argv=None):
    """The options of a new run, or of the run that --resume names: its config.json, with
    `resume` set and the RESUME_FLAGS given: --epochs (to extend it), --data-dir (data that
    moved), and where and how it runs (--distribute, --precision, --[no-]xla, --step-timeout)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if not args.resume:
        args.command = shlex.join(['python', 'main.py', *argv])  # recorded in config.json
        return args
    path = os.path.join(args.resume, 'config.json')
    if not os.path.isfile(path):
        raise UserError(f'--resume {args.resume}: no config.json there; not a run folder')
    given = [item for item in argv if item.startswith('--')]
    refused = [item.split('=')[0] for item in given
               if item.split('=')[0] not in RESUME_FLAGS + ('--resume',)]
    if refused:
        raise UserError(f'--resume {args.resume} takes only {", ".join(RESUME_FLAGS)}; '
                        f'{refused[0]} would change the run: start a new run for that')
    kept = [item for index, item in enumerate(argv) if item.split('=')[0] in RESUME_FLAGS
            or index and argv[index - 1] in RESUME_FLAGS]
    resumed = parse_args(['--config', path] + kept)
    resumed.resume = args.resume
    return resumed
