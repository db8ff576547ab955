"""A run's data, typed and checked in one place: the data set and its classes, the paired
augmentation, and how the labelled images split into training and validation (a seeded
fraction, held-out groups, or every image for a final model). The network's configuration is
model.config.NetworkConfig, the schedule's training.config.TrainingConfig."""
import dataclasses
import math
import typing

from roadseg.data import classes as class_files
from roadseg.data import groups, layouts, transforms
from roadseg.settings import Settings, option

LABELS = layouts.LABELS
CACHE = ('auto', 'memory', 'none')


# (the rule a configuration keeps, what to say when it does not), in the order they are checked;
# the choices of a field are checked before them (Settings)
RULES = (
    (lambda d: math.isfinite(d.val_fraction) and 0 <= d.val_fraction < 1,
     lambda d: f'--val-fraction {d.val_fraction}: must be at least 0 and below 1'),
    (lambda d: d.seed >= 0,
     lambda d: f'argument --seed: {d.seed} must be a whole number from 0 up'),
)
# What the options name outside the code, read once, when the configuration is made, and kept:
# a bad one stops the run before it starts, rather than hours in or never, each with its own
# one-line UserError; {attribute: read(config)}
READS = {
    '_class_file': lambda d: class_files.load_class_file(d.classes) if d.classes else None,
    '_group_of': lambda d: groups.grouper(d.dataset, d.group_by) if d.group_by else None,
    '_augment': lambda d: transforms.parse_options(d.augment),
}


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """The data set `dataset` in `data_dir` (KITTI's `label`: road or lane), its class file
    replaced by `classes` and merged by `remap`; the `augment` text; and the split: with
    `val_groups` (a comma-separated list, grouped by `group_by` or the data set's rule) those
    groups validate, else the data set's validation set or a `val_fraction` drawn with `seed`.
    `all_labelled` pools train/ and val/; without `val_groups` it is the final model's: every
    labelled image trains and none validates. `cache`: the decoded training pairs kept in
    memory (pipeline.py's rule). `seed` seeds the split, the batches' order and augmentation,
    and the weights. Checked against RULES, and its files and texts read (READS), when made,
    whether or not this split uses the option."""
    dataset: str = option(
        'kitti', 'the data set layout in --data-dir (default: %(default)s)',
        choices=tuple(sorted(layouts.READERS)))
    data_dir: str = option(
        './data', 'the data set folder (KITTI: the folder holding data_road/ and vgg/; '
                  'default: %(default)s)', on_resume=True)
    label: str = option('road', 'KITTI ground truth to train on (default: %(default)s)',
                        choices=LABELS)
    classes: typing.Optional[str] = option(
        None, "a JSON class file replacing the data set's own", metavar='FILE')
    remap: typing.Optional[str] = option(
        None, 'merge classes, e.g. road=3: road against everything else',
        metavar='NAME=I[+I..][,..]')
    augment: str = option(
        'flip=0.5,scale=0.25,brightness=0.1,contrast=0.2,saturation=0.2',
        'training augmentation over the defaults '
        f'{",".join(f"{k}={v:g}" for k, v in transforms.DEFAULTS.items())}'
        '; "none,flip=0.5" for flips only (default: %(default)s)', metavar='KEY=VALUE,..')
    val_fraction: float = option(
        0.166, 'share of the labelled images held out for validation after every epoch, split '
               'with --seed (default: %(default)s)')
    val_groups: typing.Optional[str] = option(
        None, 'hold out every image of these groups (CamVid: drives such as 0001TP; KITTI: um, '
              'umm, uu) for validation, which picks the best model; the training groups\' own '
              'unseen images are scored beside it (docs/generalisation.md)',
        metavar='GROUP[,GROUP..]')
    group_by: typing.Optional[str] = option(
        None, "what an image's group is: a regular expression over its file stem (the first "
              "capture group), or a JSON file of {stem: group} (default: CamVid's drive "
              "prefix, KITTI's category)", metavar='REGEX|FILE.json')
    all_labelled: bool = option(
        False, "pool the data set's train/ and val/ images: with --val-groups, every image "
               "outside the held-out groups trains (crossval.py's folds); without, every "
               "labelled image trains and nothing validates: the final model, its last epoch "
               "exported")
    cache: str = option(
        'auto', 'keep the decoded, resized training pairs in memory after their first read: '
                'memory; none: read the files every epoch, memory independent of the data '
                'set; auto: memory when they take at most 1 GiB (default: %(default)s)',
        choices=CACHE)
    seed: int = option(0, '(default: %(default)s)')
    RULES = RULES

    def __post_init__(self):
        super().__post_init__()
        for name, read in READS.items():
            object.__setattr__(self, name, read(self))

    @property
    def final(self):
        """Whether every labelled image trains and nothing validates (a final model)."""
        return self.all_labelled and not self.val_groups

    @property
    def held_out(self):
        """The --val-groups names, in order (empty without)."""
        return [group.strip() for group in (self.val_groups or '').split(',') if group.strip()]

    def open(self):
        """The data set (layouts.open_dataset), with the class file read when this was made."""
        return layouts.open_dataset(self.dataset, self.data_dir, self.label, self._class_file,
                                    self.remap)

    def grouper(self):
        """A function from an image path to its group: --group-by's, made when this was
        made, or the data set's own rule, made once."""
        if self._group_of is None:
            object.__setattr__(self, '_group_of', groups.grouper(self.dataset))
        return self._group_of
