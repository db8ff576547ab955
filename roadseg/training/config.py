"""A run's configuration, typed: `RunConfig`, four sections (`data`, `network`, `training`,
`run`), every option in exactly one of them with its one default. Recipes and a run's
config.json are its JSON form (one flat object of options); main.py's flags are generated from
its fields (training.options), and `train(config)` takes it."""
import dataclasses
import math
import os
import typing

from roadseg import cli, configs, files, settings
from roadseg.data import layouts
from roadseg.data.config import DataConfig
from roadseg.errors import UserError
from roadseg.model.config import NetworkConfig
from roadseg.settings import SHAPE, Settings, option
from roadseg.training import crossval

DISTRIBUTE = ('auto', 'none', 'mirrored', 'multi-worker')
PRECISIONS = ('float32', 'bfloat16', 'float16')
SCHEDULES = ('constant', 'poly')
# What a run's config.json records beside its options (run.save_config), dropped when read back
DERIVED = ('versions', 'class_weight_values', 'command', 'commit')
# Options removed after they measured no gain (docs/experiments.md), at their no-op values:
# dropped when read from an older run's config.json, so it still resumes.
RETIRED = {'lovasz_weight': 0.0, 'hard_pixels': 1.0}


def train_crop_arg(text):
    """Parse `HxW` as cli.image_shape_arg does, or `none` for whole images."""
    return None if text.lower() == 'none' else cli.image_shape_arg(text)


def _fits(crop, shape):
    return crop is None or shape is None or all(c <= n for c, n in zip(crop, shape))


TRAINING_RULES = (
    (lambda t: t.epochs >= 1, lambda t: 'argument --epochs: must be at least 1'),
    (lambda t: t.batch_size >= 1, lambda t: 'argument --batch-size: must be at least 1'),
    (lambda t: math.isfinite(t.learning_rate) and t.learning_rate > 0,
     lambda t: f'argument --learning-rate: {t.learning_rate} must be a number above 0'),
    (lambda t: 0 < t.keep_prob <= 1,
     lambda t: f'argument --keep-prob: {t.keep_prob} must be above 0 and at most 1'),
    (lambda t: 0 <= t.plain_epochs <= t.epochs,
     lambda t: f'argument --plain-epochs: {t.plain_epochs} must be from 0 to --epochs '
               f'({t.epochs})'),
    (lambda t: _fits(t.train_crop, t.image_shape),
     lambda t: 'argument --train-crop: {}x{} is larger than --image-shape {}x{}'.format(
         *t.train_crop, *t.image_shape)),
    (lambda t: math.isfinite(t.step_timeout) and t.step_timeout > 0,
     lambda t: f'argument --step-timeout: {t.step_timeout} must be a number above 0'),
)


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Settings):
    """How the network trains: the schedule (`epochs` of `batch_size`, the global batch, at
    `learning_rate`, constant or poly-decayed), dropout, the loss's class weights, the last
    `plain_epochs` on flips only, the training size `image_shape` (None: the data set's,
    settled by RunConfig) and its random `train_crop` (None: whole images), and where it runs:
    `distribute`, `precision`, `xla` and the multi-worker `step_timeout` in seconds."""
    epochs: int = option(40, '(default: %(default)s)', on_resume=True)
    batch_size: int = option(8, '(default: %(default)s)')
    learning_rate: float = option(1e-4, 'Adam (default: %(default)s)')
    lr_schedule: str = option(
        'constant', 'constant, or poly: decayed as (1 - step/steps)^0.9 to 0 '
                    '(default: %(default)s)', choices=SCHEDULES)
    keep_prob: float = option(0.5, 'dropout keep probability in fc6/fc7 (default: %(default)s)')
    class_weights: str = option(
        'none', 'weight the loss by median-frequency balancing of the training labels '
                '(default: %(default)s)', choices=('none', 'median'))
    plain_epochs: int = option(
        0, 'train the last N epochs on flips only (and --train-crop): no zoom or colour '
           'jitter, so the last, low-rate steps fit the images as inference sees them '
           '(default: %(default)s)', metavar='N')
    image_shape: typing.Optional[SHAPE] = option(
        None, "training size HxW, multiples of 32 (default: the data set's: KITTI 160x576, "
              "CamVid 352x480, a folder's first image rounded to multiples of 32)",
        parse=cli.image_shape_arg)
    train_crop: typing.Optional[SHAPE] = option(
        None, 'train on random HxW windows of the --image-shape images, multiples of 32 '
              '(validation and inference see whole images); cheaper steps, so more of them in '
              'the same time; none: whole images (default: %(default)s)',
        parse=train_crop_arg, metavar='HxW')
    distribute: str = option(
        'auto', 'auto: every visible GPU (mirrored) when there are two or more, else one '
                'device; mirrored: the GPUs of this machine; multi-worker: the machines of '
                'TF_CONFIG, each with its GPUs. --batch-size stays the global batch '
                '(default: %(default)s)', choices=DISTRIBUTE, on_resume=True)
    precision: str = option(
        'float32', 'mixed precision, weights kept in float32: bfloat16 on CPUs with AMX '
                   '(without it, slower than float32), float16 on GPUs with dynamic loss '
                   'scaling (default: %(default)s)', choices=PRECISIONS, on_resume=True)
    xla: bool = option(False, 'compile the graph with XLA, on GPUs (refused on CPUs, where it '
                              'measured no gain)', on_resume=True)
    step_timeout: float = option(
        600.0, "multi-worker: how long a step waits for the other workers before the run stops "
               "(a worker has died); covers the chief's validation and export at each epoch's "
               "end (default: %(default)s)", metavar='SECONDS', on_resume=True)
    RULES = TRAINING_RULES


@dataclasses.dataclass(frozen=True)
class RunFolderConfig(Settings):
    """Where the run folder goes (`runs_dir`) and what it records: validation every
    `val_every` epochs (and in the bird's-eye view with `val_bev`), TensorBoard overlays every
    `tb_images_every`, and a final model's `crossval` record (what to expect of it)."""
    runs_dir: str = option('./runs', 'where run folders are made (default: %(default)s)')
    val_every: int = option(
        1, "validate every N epochs and after the last (with --ema-decay, measuring the "
           "averaged weights' batch-norm statistics then too); the best model is chosen among "
           "those epochs (default: %(default)s)", metavar='N')
    val_bev: bool = option(
        False, "also validate in KITTI's bird's-eye view, as its server ranks (the validation "
               "images that have calib/ files; two classes)")
    tb_images_every: int = option(
        5, 'log validation overlays to TensorBoard every N epochs (default: %(default)s)')
    crossval: typing.Optional[str] = option(
        None, "with --all-labelled: the crossval.json of the cross-validation that chose this "
              "recipe; its figures at --epochs go into the run folder and log, as what to "
              "expect on a new street ('' for none)",
        parse=lambda text: text or None, metavar='CROSSVAL.json')
    RULES = (
        (lambda r: r.val_every >= 1, lambda r: 'argument --val-every: must be at least 1'),
        (lambda r: r.tb_images_every >= 1,
         lambda r: 'argument --tb-images-every: must be at least 1'),
    )


RUN_RULES = (
    (lambda c: not (c.run.val_bev and c.data.final),
     lambda c: '--val-bev: with --all-labelled and no --val-groups nothing validates'),
    (lambda c: not c.run.crossval or c.data.final,
     lambda c: '--crossval records the cross-validation behind a final model: give it with '
               '--all-labelled and without --val-groups'),
)
SECTIONS = {'data': DataConfig, 'network': NetworkConfig, 'training': TrainingConfig,
            'run': RunFolderConfig}


@dataclasses.dataclass(frozen=True)
class RunConfig(Settings):
    """Everything a training run is given. When made, the training size not given is settled
    from the data (the data set's own, or a folder's first image), every section is checked
    (Settings), then the rules across sections, and a final model's crossval record is read."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    run: RunFolderConfig = dataclasses.field(default_factory=RunFolderConfig)
    RULES = RUN_RULES

    def __post_init__(self):
        if self.training.image_shape is None:
            shape = layouts.default_image_shape(self.data.dataset, self.data.data_dir)
            object.__setattr__(self, 'training',
                               dataclasses.replace(self.training, image_shape=shape))
        super().__post_init__()
        if self.run.crossval:  # read now: a bad record stops the run before it starts
            crossval.read_summary(self.run.crossval)

    @classmethod
    def from_values(cls, values):
        """The configuration of {option: Python value}; options not given take defaults."""
        unknown = sorted(set(values) - set(option_fields()))
        if unknown:
            raise UserError(f'unknown option {unknown[0]!r}')
        return cls(**{name: section(**{field.name: values[field.name]
                                       for field in dataclasses.fields(section)
                                       if field.name in values})
                      for name, section in SECTIONS.items()})

    def values(self):
        """{option: Python value} over every section."""
        return {name: value for section in SECTIONS for name, value in
                getattr(self, section).values().items()}

    def to_json(self):
        """The flat JSON object of every option: a recipe, the core of a run's config.json."""
        fields = option_fields()
        return {name: settings.to_json(fields[name], value)
                for name, value in self.values().items()}


def option_fields():
    """{option: its dataclass field}, in the sections' order."""
    return {field.name: field for section in SECTIONS.values()
            for field in dataclasses.fields(section)}


def read_values(path):
    """{option: Python value} of a JSON config file (a recipe, or a run's config.json, whose
    derived records are dropped) or of a recipe named (configs.recipe), each checked against
    its field; one line naming the file and the option otherwise."""
    path = configs.recipe(path)
    config = files.read_json(path, f'give --config a JSON file of options or a recipe\'s name '
                                   f'({", ".join(configs.recipes())})')
    if not isinstance(config, dict):
        raise UserError(f'{path}: a config file holds one JSON object of options, '
                        f'{{"option": value, ...}}, not a {type(config).__name__}')
    for derived in DERIVED:
        config.pop(derived, None)
    for name, no_op in RETIRED.items():  # run folders written before these options went
        if config.get(name, no_op) == no_op:
            config.pop(name, None)
    values = values_of(config, path)
    if isinstance(values.get('crossval'), str) and not os.path.isabs(values['crossval']):
        # a recipe's record of its cross-validation travels with it: relative to the file
        values['crossval'] = os.path.normpath(os.path.join(os.path.dirname(path),
                                                           values['crossval']))
    return values


def values_of(options, source):
    """{option: Python value} of a JSON object of options read from `source`, each checked
    against its field (settings.from_json)."""
    fields = option_fields()
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UserError(f'{source}: unknown option {unknown[0]!r}')
    return {name: settings.from_json(fields[name], value, source)
            for name, value in options.items()}


def read(path, **changes):
    """The RunConfig of a recipe or a run's config.json, with `changes` ({option: value})
    over it: the library's way in (`train(read('configs/x.json', epochs=2))`)."""
    return RunConfig.from_values({**read_values(path), **changes})
