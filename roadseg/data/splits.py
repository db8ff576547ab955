"""The seeded random train/validation split of a data set without a validation set of its own
(KITTI Road's training images). Holding out whole places instead is roadseg.data.groups'."""
import numpy as np

from roadseg.errors import UserError


def split_pairs(pairs, val_fraction, seed):
    """A seeded train/validation split: (train pairs, validation pairs), each sorted.

    round(n * val_fraction) pairs go to validation (48 of KITTI's 289 at the default 0.166).
    """
    if not 0 <= val_fraction < 1:
        raise UserError(f'--val-fraction {val_fraction}: must be at least 0 and below 1')
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = set(order[:round(len(pairs) * val_fraction)].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val],
            [p for i, p in enumerate(pairs) if i in val])
