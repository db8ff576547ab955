"""How a run trains, typed and checked in one place: the schedule (epochs, batch, learning
rate), the sizes it trains at, and where it runs (devices, precision, the multi-worker step
deadline). The network's own configuration is model.settings.NetworkConfig."""
import dataclasses
import math

from roadseg.settings import Settings

DISTRIBUTE = ('auto', 'none', 'mirrored', 'multi-worker')
PRECISIONS = ('float32', 'bfloat16', 'float16')
SCHEDULES = ('constant', 'poly')


def _fits(crop, shape):
    return crop is None or all(c <= n for c, n in zip(crop, shape))


# (the rule a configuration keeps, what to say when it does not), in the order they are checked
RULES = (
    (lambda t: t.epochs >= 1, lambda t: 'argument --epochs: must be at least 1'),
    (lambda t: t.batch_size >= 1, lambda t: 'argument --batch-size: must be at least 1'),
    (lambda t: math.isfinite(t.learning_rate) and t.learning_rate > 0,
     lambda t: f'argument --learning-rate: {t.learning_rate} must be a number above 0'),
    (lambda t: t.lr_schedule in SCHEDULES,
     lambda t: f'--lr-schedule {t.lr_schedule}: use one of {", ".join(SCHEDULES)}'),
    (lambda t: _fits(t.train_crop, t.image_shape),
     lambda t: 'argument --train-crop: {}x{} is larger than --image-shape {}x{}'.format(
         *t.train_crop, *t.image_shape)),
    (lambda t: t.distribute in DISTRIBUTE,
     lambda t: f'--distribute {t.distribute}: use one of {", ".join(DISTRIBUTE)}'),
    (lambda t: t.precision in PRECISIONS,
     lambda t: f'--precision {t.precision}: use one of {", ".join(PRECISIONS)}'),
    (lambda t: math.isfinite(t.step_timeout) and t.step_timeout > 0,
     lambda t: f'argument --step-timeout: {t.step_timeout} must be a number above 0'),
)


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Settings):
    """The schedule (`epochs` of `batch_size`, the global batch, at `learning_rate`, constant
    or poly-decayed), the training size `image_shape` (height, width) and its random
    `train_crop` (None: whole images), and where it runs: `distribute`, `precision`, `xla` and
    the multi-worker `step_timeout` in seconds. Checked against RULES when made."""
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 1e-4
    lr_schedule: str = 'constant'
    image_shape: tuple = (160, 576)
    train_crop: tuple = None
    distribute: str = 'none'
    precision: str = 'float32'
    xla: bool = False
    step_timeout: float = 600.0
    RULES = RULES

