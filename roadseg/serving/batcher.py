"""The Batcher: concurrent requests' images gathered into one model call, as TensorFlow Serving
batches, on a thread of its own so that the event loop never waits for the model.
"""
import asyncio
import concurrent.futures
import contextlib

import numpy as np


class Batcher:
    """Gathers images queued by concurrent requests into one model call: up to `max_batch`,
    or whatever arrived within `timeout_s` of the first, as TensorFlow Serving batches. The
    model runs on one thread of its own (a TFLite interpreter is not thread-safe); images that
    ask for flip test-time augmentation are batched apart from those that do not."""

    def __init__(self, model, max_batch, timeout_s, batch_sizes):
        self.model, self.max_batch, self.timeout_s = model, max_batch, timeout_s
        self.batch_sizes = batch_sizes  # a Prometheus histogram
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='model')
        self.queue, self.task, self.batch = None, None, []

    def start(self):
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self):
        """Stop batching; requests still waiting (none after a graceful shutdown) are
        cancelled."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        waiting = self.batch + [self.queue.get_nowait() for _ in range(self.queue.qsize())]
        for _, _, future in waiting:
            future.cancel()
        self.executor.shutdown(wait=True)

    async def __call__(self, image, flip):
        """The model's probabilities for one image at its training size."""
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((image, flip, future))
        return await future

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            self.batch = batch = [await self.queue.get()]
            deadline = loop.time() + self.timeout_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait() if not self.queue.empty() else
                                 await asyncio.wait_for(self.queue.get(),
                                                        deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            for flip in (False, True):
                group = [item for item in batch if item[1] == flip and not item[2].done()]
                if group:
                    await self._run(loop, group, flip)
            self.batch = []

    async def _run(self, loop, group, flip):
        try:
            self.batch_sizes.observe(len(group))
            inputs = np.stack([image for image, _, _ in group])
            outputs = await loop.run_in_executor(self.executor, self.model, inputs, flip)
        except Exception as e:  # the model failed: every request of the batch is told
            for _, _, future in group:
                if not future.done():
                    future.set_exception(e)
            return
        for (_, _, future), probabilities in zip(group, outputs):
            if not future.done():  # a client that went away has its future cancelled
                future.set_result(probabilities)
