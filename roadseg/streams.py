"""Iterators for pipelines: `batched` groups items, `threaded` runs an iterator on a thread of
its own behind a bounded queue, so that its work (decoding a video, running a model) overlaps
with the consumer's. Items keep their order; an exception in the thread is raised in the
consumer; a consumer that stops early stops the thread."""
import queue
import threading

_END = object()


class _Raised:
    """An exception of the producer thread, carried to the consumer."""

    def __init__(self, error):
        self.error = error


def batched(items, size):
    """Lists of up to `size` consecutive items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def threaded(iterable, depth=2):
    """Yield the items of `iterable`, produced on a thread of its own at most `depth` items
    ahead of the consumer."""
    items, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(item):
        """Queue `item`; False when the consumer has gone."""
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        iterator = iter(iterable)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: B036 (carried to the consumer and raised there)
            put(_Raised(e))
        finally:
            close = getattr(iterator, 'close', None)
            if close:  # a generator's own cleanup (e.g. a nested threaded) runs on its thread
                close()

    thread = threading.Thread(target=produce, name='threaded', daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
