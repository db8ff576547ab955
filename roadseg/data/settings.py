"""A run's data, typed and checked in one place: the data set and its classes, the paired
augmentation, and how the labelled images split into training and validation (a seeded
fraction, held-out groups, or every image for a final model). The network's configuration is
model.settings.NetworkConfig, the schedule's training.settings.TrainingConfig."""
import dataclasses
import math

from roadseg.data import classes as class_files
from roadseg.data import datasets, groups, transforms
from roadseg.settings import Settings

LABELS = ('road', 'lane')


# (the rule a configuration keeps, what to say when it does not), in the order they are checked
RULES = (
    (lambda d: d.dataset in datasets.READERS,
     lambda d: f'--dataset {d.dataset}: use one of {", ".join(sorted(datasets.READERS))}'),
    (lambda d: d.label in LABELS,
     lambda d: f'--label {d.label}: use one of {", ".join(LABELS)}'),
    (lambda d: math.isfinite(d.val_fraction) and 0 <= d.val_fraction < 1,
     lambda d: f'--val-fraction {d.val_fraction}: must be at least 0 and below 1'),
    (lambda d: d.cache in ('auto', 'memory', 'none'),
     lambda d: f'--cache {d.cache}: use one of auto, memory, none'),
    (lambda d: d.seed >= 0,
     lambda d: f'argument --seed: {d.seed} must be a whole number from 0 up'),
)
# What the options name outside the code, read once so that a bad one stops the run before it
# starts, rather than hours in or never; each stops with its own one-line UserError.
READS = (
    lambda d: d.classes and class_files.load_class_file(d.classes),
    lambda d: d.group_by and groups.grouper(d.dataset, d.group_by),
    lambda d: transforms.parse_options(d.augment),
)


@dataclasses.dataclass(frozen=True)
class DataConfig(Settings):
    """The data set `dataset` in `data_dir` (KITTI's `label`: road or lane), its class file
    replaced by `classes` and merged by `remap`; the `augment` text; and the split: with
    `val_groups` (a comma-separated list, grouped by `group_by` or the data set's rule) those
    groups validate, else the data set's validation set or a `val_fraction` drawn with `seed`.
    `all_labelled` pools train/ and val/; without `val_groups` it is the final model's: every
    labelled image trains and none validates. `cache`: the decoded training pairs kept in
    memory (pipeline.py's rule). Checked against RULES, and its files and texts
    read (READS), when made, whether or not this split uses the option."""
    dataset: str = 'kitti'
    data_dir: str = './data'
    label: str = 'road'
    classes: str = None
    remap: str = None
    augment: str = 'flip=0.5'
    val_fraction: float = 0.166
    val_groups: str = None
    group_by: str = None
    all_labelled: bool = False
    cache: str = 'auto'
    seed: int = 0
    RULES = RULES

    def __post_init__(self):
        super().__post_init__()
        for read in READS:
            read(self)

    @property
    def final(self):
        """Whether every labelled image trains and nothing validates (a final model)."""
        return self.all_labelled and not self.val_groups

    @property
    def held_out(self):
        """The --val-groups names, in order (empty without)."""
        return [group.strip() for group in (self.val_groups or '').split(',') if group.strip()]

    def open(self):
        """The data set (datasets.open_dataset)."""
        return datasets.open_dataset(self.dataset, self.data_dir, self.label, self.classes,
                                     self.remap)

    def grouper(self):
        """A function from an image path to its group."""
        return groups.grouper(self.dataset, self.group_by)
