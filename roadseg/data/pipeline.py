"""The training batches as a tf.data pipeline in the Session graph: files read on demand by
every core, augmented by TensorFlow ops, handed to the network by the iterator's get_next().

Per epoch the order is a permutation seeded by (seed, epoch), cut into global batches; under
--distribute each batch is cut to a multiple of the replicas (the short last one loses up to
replicas - 1 images, different ones each epoch) and each worker takes its contiguous share, so
a worker lists and reads only its own files. An image's randomness comes from (seed, epoch,
image index) through stateless ops (transforms.py): runs repeat exactly, a resumed run sees the
batches the uninterrupted run would have, and a worker transforms its images exactly as one
process would.

Reading is OpenCV and Pillow through tf.numpy_function (both release the GIL, so the parallel map
scales over the cores): the same reader, EXIF turn, class-file decoding, resizing and one-line
errors as inference and evaluation, so training sees images as they do. Everything after it is
TensorFlow ops, batches stay uint8 until the graph casts them, and VOID labels become all-zero
one-hot rows in the graph.

The cache rule: the decoded, resized pairs are kept in memory when they take at most CACHE_BYTES
(1 GiB: 1,700 CamVid pairs at 352x480), else every epoch reads the files again, and memory does
not grow with the data set (`cache`: 'auto', 'memory' or 'none').
"""
import numpy as np
from tqdm import tqdm

from roadseg.data.reading import load_pair
from roadseg.errors import UserError
from roadseg.graph_mode import import_tensorflow
from roadseg.images import displayed_size, resize_image, resize_label

tf = import_tensorflow()
tf1 = tf.compat.v1

CACHE_BYTES = 2 ** 30


def one_hot(classes, num_classes):
    """Class indices to float one-hot; VOID (or any index >= num_classes) gives an all-zero row."""
    return (classes[..., None] == np.arange(num_classes)).astype(np.float32)


class TrainingData:
    """The training pairs of a run and how they are batched (the module docstring).

    `bind(batch_size)` builds the pipeline in the current graph: its `images` and `labels` are
    what the network trains on, and `start_epoch(sess)` starts the next epoch. Called with a batch
    size, it is the classic `get_batches_fn`: it yields one epoch of (float32 images, one-hot
    labels) numpy batches, from the same pipeline in a graph of its own. From epoch `plain_from`
    on, `augment` is cut down to its flips and crop (--plain-epochs). `len()` is the number of
    pairs; the files are checked (present, readable headers, image and label of one size) when
    it is made, and their pixels when they are read.
    """

    def __init__(self, pairs, image_shape, read_label, num_classes, augment=None, seed=None,
                 plain_from=None, replicas=1, shard=(0, 1), cache='auto'):
        self.pairs = list(pairs)
        self.image_shape = tuple(image_shape)
        self.read_label, self.num_classes = read_label, num_classes
        self.augment, self.plain_from, self.seed = augment, plain_from, seed
        self.replicas, self.shard = replicas, shard
        self.epoch = 0  # the last epoch started; a resumed run sets it
        self.failure = None  # the UserError a read raised inside the pipeline
        height, width = self.image_shape
        self.cached = cache == 'memory' or (cache == 'auto' and
                                            len(self) * height * width * 4 <= CACHE_BYTES)
        self._store = [None] * len(self) if self.cached else None
        self._private = None
        check_pairs(self.pairs)

    def __len__(self):
        return len(self.pairs)

    def steps(self, batch_size):
        """The batches an epoch yields: a short last batch cut to nothing is not one."""
        last = len(self) % batch_size
        return len(self) // batch_size + (last - last % self.replicas > 0)

    def order(self, epoch, batch_size):
        """This worker's image indexes of `epoch`, batch after batch."""
        permutation = np.random.default_rng(
            np.random.SeedSequence([self.seed or 0, epoch])).permutation(len(self))
        worker, workers = self.shard
        mine = []
        for start in range(0, len(self), batch_size):
            batch = permutation[start:start + batch_size]
            share = (len(batch) - len(batch) % self.replicas) // workers
            mine.append(batch[worker * share:(worker + 1) * share])
        return np.concatenate(mine).astype(np.int64)

    def read(self, index):
        """The pair `index` at the training size (uint8 image, class map), from the cache when
        it is kept; a bad file is remembered in `failure`, for the one line that reports it."""
        index = int(index)
        if self._store is not None and self._store[index] is not None:
            return self._store[index]
        try:
            image, classes = load_pair(*self.pairs[index], self.read_label)
        except UserError as e:
            self.failure = self.failure or e
            raise
        pair = resize_image(image, self.image_shape), resize_label(classes, self.image_shape)
        if self._store is not None:
            self._store[index] = pair
        return pair

    def label_maps(self):
        """Every training label at the training size, one at a time (class weights)."""
        for image_path, label_path in tqdm(self.pairs, desc='Counting classes', leave=False,
                                           disable=None):
            yield resize_label(self.read_label(label_path), self.image_shape)

    def bind(self, batch_size):
        """The pipeline in the current graph, batches of this worker's share of `batch_size`
        (the global batch)."""
        return Pipeline(self, batch_size // self.shard[1])

    def reraise(self):
        """Raise the UserError of a bad file the pipeline met, if any."""
        if self.failure:
            raise self.failure

    def __call__(self, batch_size):
        if self._private is None or self._private[0] != batch_size:
            with tf.Graph().as_default() as graph:
                pipeline = self.bind(batch_size)
            self._private = batch_size, pipeline, tf1.Session(graph=graph)
        _, pipeline, sess = self._private
        for _ in pipeline.epoch(sess, self.steps(batch_size)):
            images, labels = pipeline.run(sess, [pipeline.images, pipeline.labels])
            yield images.astype(np.float32), one_hot(labels, self.num_classes)


class Pipeline:
    """A TrainingData's tf.data pipeline in one graph: `images` (uint8 [b, h, w, 3] or the
    crop's size) and `labels` (uint8 [b, h, w], VOID 255) of the next batch, `size` its images;
    `start_epoch(sess)` starts the data's next epoch."""

    def __init__(self, data, batch_size):
        self.data, self.batch_size = data, batch_size
        self.indexes = tf1.placeholder(tf.int64, [None], 'epoch_images')
        self.epoch_number = tf1.placeholder(tf.int64, [], 'epoch')
        self.plain = tf1.placeholder(tf.bool, [], 'plain_epoch')
        height, width = data.image_shape
        seed = tf.stack([tf.constant(data.seed or 0, tf.int64), self.epoch_number])

        def load(index):
            image, label = tf.numpy_function(data.read, [index], [tf.uint8, tf.uint8],
                                             stateful=False)
            return (index, tf.ensure_shape(image, [height, width, 3]),
                    tf.ensure_shape(label, [height, width]))

        def transform(index, image, label):
            own = tf.random.experimental.stateless_fold_in(seed, index)
            augment = data.augment
            if not augment:
                return image, label
            if not data.plain_from:
                return augment(image, label, own)
            return tf.cond(self.plain, lambda: augment.flips_only()(image, label, own),
                           lambda: augment(image, label, own))
        dataset = (tf.data.Dataset.from_tensor_slices(self.indexes)
                   .map(load, tf.data.AUTOTUNE)
                   .map(transform, tf.data.AUTOTUNE)
                   .batch(batch_size)
                   .prefetch(tf.data.AUTOTUNE))
        self.iterator = tf1.data.make_initializable_iterator(dataset)
        self.images, self.labels = self.iterator.get_next()
        self.size = tf.shape(self.labels)[0]

    def start_epoch(self, sess):
        """Start the data's next epoch (epoch numbers count from 1)."""
        data = self.data
        data.epoch += 1
        plain = bool(data.plain_from and data.epoch >= data.plain_from)
        self.run(sess, self.iterator.initializer,
                 {self.indexes: data.order(data.epoch, self.batch_size * data.shard[1]),
                  self.epoch_number: data.epoch, self.plain: plain})

    def epoch(self, sess, steps):
        """Start the next epoch and yield once per batch, for the caller to run."""
        self.start_epoch(sess)
        yield from range(steps)

    def run(self, sess, fetches, feeds=None):
        """sess.run, with a bad file the pipeline met reported as its own one line."""
        try:
            return sess.run(fetches, feeds)
        except tf.errors.OpError:
            self.data.reraise()
            raise


def check_pairs(pairs):
    """Stop with one line unless every image and label file exists with a readable header, the
    two of one size (as a viewer shows them): reading headers only, so a large set is checked
    in seconds and a bad file found before training starts. Returns each pair's (height,
    width)."""
    shapes = []
    for image_path, label_path in tqdm(pairs, desc='Checking files', leave=False, disable=None):
        sizes = []
        for path in (image_path, label_path):
            try:
                with open(path, 'rb') as f:
                    size = displayed_size(f)
            except OSError as e:
                raise UserError(f'{path}: cannot read image ({e.strerror}); replace or '
                                f'remove the pair') from None
            if size is None:
                raise UserError(f'{path}: cannot read image (not an image Pillow reads); '
                                f'replace or remove the pair')
            sizes.append(size)
        if sizes[0] != sizes[1]:
            raise UserError(f'{label_path}: size {sizes[1][1]}x{sizes[1][0]} differs from its '
                            f'image {image_path} ({sizes[0][1]}x{sizes[0][0]})')
        shapes.append(sizes[0])
    return shapes

