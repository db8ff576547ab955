"""Reading labelled samples from their files: an image and its class map, checked to be of one
size, and a sequence of them read on demand (evaluation, validation, export's checks)."""
import collections.abc
import os

from roadseg.errors import UserError
from roadseg.images import read_rgb


def load_pair(image_path, label_path, read_label):
    """Read one image and its label (a class map from `read_label`), checked to be of one size."""
    image, classes = read_rgb(image_path), read_label(label_path)
    if image.shape[:2] != classes.shape:
        raise UserError(f'{label_path}: size {classes.shape[1]}x{classes.shape[0]} differs from '
                        f'its image {image_path} ({image.shape[1]}x{image.shape[0]})')
    return image, classes


class Samples(collections.abc.Sequence):
    """(name, RGB image, class map) at the original size for each (image, label) path pair,
    each read when asked for, so memory does not grow with the set. With `keep`, each pair is
    kept after its first read (validation, which reads them every time it runs, of a set that
    fits in memory)."""

    def __init__(self, pairs, read_label, keep=False):
        self.pairs, self.read_label = list(pairs), read_label
        self.kept = {} if keep else None

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if self.kept is not None and index in self.kept:
            return self.kept[index]
        image_path, label_path = self.pairs[index]
        sample = (os.path.basename(image_path),) + load_pair(image_path, label_path,
                                                             self.read_label)
        if self.kept is not None:
            self.kept[index] = sample
        return sample


def load_samples(pairs, read_label, keep=False):
    """The Samples of the (image, label) path pairs."""
    return Samples(pairs, read_label, keep)
