"""The training batches: shuffled, augmented, one-hot, prepared ahead by background threads."""
import collections
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from roadseg.data.datasets import load_training_pairs


def one_hot(classes, num_classes):
    """Class indices to float one-hot; VOID (or any index >= num_classes) gives an all-zero row."""
    return (classes[..., None] == np.arange(num_classes)).astype(np.float32)


class BatchGenerator:
    """`get_batches_fn`: called with a batch size, yields one epoch of shuffled, augmented
    (float32 images, one-hot labels) batches, prepared ahead by background threads.

    All pairs are read and checked once, at construction, so bad files are reported before any
    training starts; `len()` is the number of pairs. Every image of a batch draws its
    randomness from its own generator seeded by (seed, epoch, batch, place in the batch), so
    results do not depend on thread timing and a resumed run that sets `epoch` sees the batches
    the uninterrupted run would have. From epoch `plain_from` on, `augment` is cut down to its
    flips and crop (--plain-epochs).

    For training on `replicas` replicas over `shard[1]` workers, the batch size is the global
    batch's: each batch is cut to a multiple of `replicas` (the short last one loses up to
    replicas - 1 images, different ones each epoch), and worker `shard[0]` gets its contiguous
    share, transformed exactly as a single process transforms those images.
    """

    def __init__(self, pairs, image_shape, read_label, num_classes, augment=None, seed=None,
                 workers=2, prefetch=4, plain_from=None, replicas=1, shard=(0, 1)):
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.augment = augment
        self.plain_from = plain_from
        self.seed = seed
        self.epoch = 0
        self.workers, self.prefetch = workers, prefetch
        self.replicas, self.shard = replicas, shard
        self.images, self.labels = load_training_pairs(pairs, image_shape, read_label)

    def __len__(self):
        return len(self.images)

    def steps(self, batch_size):
        """The batches an epoch yields: a short last batch cut to nothing is not one."""
        last = len(self) % batch_size
        return len(self) // batch_size + (last - last % self.replicas > 0)

    def __call__(self, batch_size):
        self.epoch += 1
        epoch_seed = np.random.SeedSequence([self.seed or 0, self.epoch])
        order = np.random.default_rng(epoch_seed).permutation(len(self))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        augment = self.augment_for(self.epoch)
        with ThreadPoolExecutor(self.workers) as pool:
            pending = collections.deque()
            for indexes, seed in zip(batches, epoch_seed.spawn(len(batches))):
                seeds = seed.spawn(len(indexes))
                size = len(indexes) - len(indexes) % self.replicas
                share = size // self.shard[1]
                mine = slice(self.shard[0] * share, (self.shard[0] + 1) * share)
                if not share:
                    continue
                pending.append(pool.submit(self.make_batch, indexes[mine], seeds[mine],
                                           augment))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def augment_for(self, epoch):
        """The transforms of `epoch` (1-based), or None."""
        if self.augment and self.plain_from and epoch >= self.plain_from:
            return self.augment.flips_only()
        return self.augment

    def make_batch(self, indexes, seeds, augment):
        """The examples `indexes`, transformed by `augment` (if any) with the generators of
        `seeds`, one each, as network inputs."""
        pairs = [augment(self.images[i], self.labels[i], np.random.default_rng(seed)) if augment
                 else (self.images[i], self.labels[i]) for i, seed in zip(indexes, seeds)]
        images, labels = zip(*pairs)
        return np.stack(images).astype(np.float32), one_hot(np.stack(labels), self.num_classes)
