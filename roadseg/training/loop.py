"""The training loop and the learning-rate schedule."""
import math
import time

from tqdm import tqdm

from roadseg.errors import UserError


def train(sess, epochs, batch_size, batches, train_op, cross_entropy_loss, input_image,
          correct_label, keep_prob, learning_rate, keep_prob_value=0.5, learning_rate_value=1e-4,
          log=print, start_epoch=1, on_step=None, on_epoch_end=None):
    """Train epochs `start_epoch`..`epochs`, showing a progress bar with the running loss and
    reporting each epoch's mean loss through `log`.

    `batches` is the classic generator function of fed numpy batches, or a data pipeline
    (pipeline.Pipeline) the graph trains on: then nothing is fed but `keep_prob` and
    `learning_rate`. `learning_rate_value` is a number or a function of the global step
    (0-based, counted from the start of epoch 1). `on_step(loss)` is called after every step and
    `on_epoch_end(epoch, mean_loss)` after every epoch (validation, checkpoints and summaries
    hang there). A loss that is not finite stops training with a UserError before the epoch
    ends, so nothing computed from the diverged weights is checkpointed or exported.
    :return: the list of mean losses, one per epoch trained
    """
    in_graph = hasattr(batches, 'start_epoch')
    per_epoch = steps_per_epoch(batches.data if in_graph else batches, batch_size)
    rate = learning_rate_value if callable(learning_rate_value) else lambda _: learning_rate_value
    step = (start_epoch - 1) * (per_epoch or 0)
    history = []
    for epoch in range(start_epoch, epochs + 1):
        start, total, seen, waited = time.time(), 0.0, 0, [0.0]
        if in_graph:
            batches.start_epoch(sess)
            steps, fetches = range(per_epoch), [train_op, cross_entropy_loss, batches.size]
        else:
            steps, fetches = timed(batches(batch_size), waited), [train_op,
                                                                         cross_entropy_loss]
        with tqdm(steps, total=per_epoch, desc=f'Epoch {epoch}/{epochs}', leave=False,
                  disable=None) as bar:
            for batch in bar:
                feeds = {keep_prob: keep_prob_value, learning_rate: rate(step)}
                if in_graph:
                    _, loss, size = batches.run(sess, fetches, feeds)
                else:
                    feeds.update({input_image: batch[0], correct_label: batch[1]})
                    (_, loss), size = sess.run(fetches, feeds), len(batch[0])
                step += 1
                if not math.isfinite(loss):
                    raise UserError(
                        f'epoch {epoch}, step {step}: the training loss is {loss}; training '
                        f'diverged and stopped, keeping the checkpoints of the epochs before. '
                        f'Lower --learning-rate and start again, or --resume the run')
                total += loss * size
                seen += size
                bar.set_postfix(loss=f'{total / seen:.4f}')
                if on_step:
                    on_step(float(loss))
        history.append(float(total / seen))
        took = time.time() - start
        waiting = '' if in_graph else f', {100 * waited[0] / took:.1f}% of it waiting for data'
        log(f'epoch {epoch}/{epochs}: mean loss {history[-1]:.4f} ({took:.0f} s, {seen} images'
            f'{waiting})')
        if on_epoch_end:
            on_epoch_end(epoch, history[-1])
    return history


def steps_per_epoch(batches, batch_size):
    """The steps of an epoch of `batches` (None where it cannot tell)."""
    if hasattr(batches, 'steps'):
        return batches.steps(batch_size)
    return -(-len(batches) // batch_size) if hasattr(batches, '__len__') else None


def timed(iterable, waited):
    """Yield from `iterable`, adding the seconds spent waiting for each item to waited[0]."""
    iterator = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - start
        yield item


def learning_rate_schedule(training, steps_per_epoch):
    """The learning rate of a config.TrainingConfig at each global step (0-based): constant,
    or DeepLab's 'poly' decay (1 - step / steps) ** 0.9 from its learning rate towards 0 at the
    last step."""
    rate = training.learning_rate
    if training.lr_schedule == 'constant':
        return lambda step: rate
    steps = training.epochs * steps_per_epoch
    return lambda step: rate * max(0.0, 1 - step / steps) ** 0.9
