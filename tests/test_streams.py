"""roadseg.streams: batches, and iterators on threads of their own that keep order, carry
exceptions to the consumer and stop when it stops."""
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadseg import inference, streams
from roadseg.data import classes as class_files
from roadseg.model_info import ModelInfo


@given(st.integers(0, 40), st.integers(1, 9))
def test_batched_keeps_every_item_in_order_in_batches_of_size(count, size):
    batches = list(streams.batched(range(count), size))
    assert [item for batch in batches for item in batch] == list(range(count))
    assert all(len(batch) == size for batch in batches[:-1])
    assert not batches or 1 <= len(batches[-1]) <= size


def slow_counter(count, delays, seen):
    """0..count-1, each after delays[i % len] seconds, noting each as produced in `seen`."""
    for i in range(count):
        time.sleep(delays[i % len(delays)])
        seen.append(i)
        yield i


def test_threaded_keeps_order_and_runs_ahead_on_its_own_thread():
    seen, names = [], []

    def named():
        for item in slow_counter(30, [0, 0.002, 0.001], seen):
            names.append(threading.current_thread().name)
            yield item
    got = []
    for item in streams.threaded(streams.threaded(named(), 3), 2):
        got.append(item)
        time.sleep(0.001)
    assert got == list(range(30)) and seen == got
    assert set(names) == {'threaded'}


def test_threaded_raises_the_producers_exception_after_its_items():
    def failing():
        yield 1
        yield 2
        raise ValueError('frame 3 is damaged')
    got = []
    with pytest.raises(ValueError, match='frame 3 is damaged'):
        for item in streams.threaded(failing()):
            got.append(item)
    assert got == [1, 2]


def test_a_consumer_that_stops_early_stops_and_closes_every_thread():
    closed, before = [], threading.active_count()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)
    stream = streams.threaded(streams.threaded(endless(), 2), 2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert closed == [True]
    assert threading.active_count() == before


class Frame:
    def __init__(self, image, rows):
        self.image, self.rows = image, rows


def test_segment_stream_gives_what_segment_gives_for_each_frame_in_order():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 2)).astype(np.float32)

    def run(images):  # a per-pixel softmax of the colours: every pixel has its own answer
        logits = images.astype(np.float32) / 64 @ weights
        return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    info = ModelInfo.of_classes((8, 12), class_files.builtin('kitti_road'))
    model = inference.Model('fake', 'session', info, run)
    sizes = [(8, 12), (20, 30), (15, 11), (8, 12), (33, 17), (9, 40), (16, 24)]
    frames = [Frame(rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                    (2, size[0] - 1) if i % 3 == 1 else (0, size[0]))
              for i, size in enumerate(sizes)]
    streamed = list(inference.segment_stream(model, iter(frames), batch_size=3))
    assert [frame for frame, _ in streamed] == frames
    for frame, probabilities in streamed:
        alone = inference.segment(model, [frame.image], [frame.rows])[0]
        assert np.array_equal(probabilities, alone)
