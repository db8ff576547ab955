"""Where and how training runs: one device, every GPU of a box (MirroredStrategy), or several
machines (MultiWorkerMirroredStrategy, the cluster read from TF_CONFIG), in TF1 graph mode; in
float32, bfloat16 or float16, with or without XLA.

Graph mode needs a few things the strategies do not do themselves (measured on TF 2.21):
- Multi-worker: the strategy starts no server. Each worker starts `tf.distribute.Server` with
  the strategy's session config (without it the workers never learn the collective group's
  leader and hang at the first collective, the initializer's broadcast) and runs its Session on
  that server. Every worker runs the initializer (the chief's values win) and the same steps.
- A worker that dies leaves the others waiting in the next all-reduce: gRPC does not fail it.
  Every Session call of a multi-worker run therefore has a deadline (--step-timeout, the
  session's operation_timeout_in_ms); when it passes, the run stops, saying how to resume.
- The losses, the optimiser and batch norm under replication: see model/ops.py and loss.py.
"""
import contextlib
import json
import os

from roadseg import cpu
from roadseg.errors import UserError
from roadseg.model import ops
from roadseg.model.ops import tf, tf1

BF16_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo flags of CPUs oneDNN runs bf16 on
# ONEDNN_MAX_CPU_ISA values that leave oneDNN its bf16 kernels (AVX512_CORE_BF16 and above)
BF16_ISAS = ('AVX512_CORE_BF16', 'AVX512_CORE_FP16', 'AVX10_1_512', 'AVX512_CORE_AMX',
             'AVX10_1_512_AMX', 'AVX512_CORE_AMX_FP16', 'AVX10_1_512_AMX_FP16', 'ALL', 'DEFAULT')


class Setup:
    """The devices and session of a training run (`setup(training)` makes one); `worker` is this
    process's index among the `workers` of the cluster (the chief first), 0 of 1 alone."""

    def __init__(self, kind, strategy=None, server=None, worker=0, workers=1, config=None):
        self.kind, self.strategy, self.server = kind, strategy, server
        self.worker, self.workers = worker, workers
        self.config = config or tf1.ConfigProto()
        self.replicas = strategy.num_replicas_in_sync if strategy else 1
        self.devices = list(strategy.extended.worker_devices) if strategy else []

    @property
    def is_chief(self):
        """Whether this process writes the run: the only one, or worker 0 of a cluster."""
        return self.strategy is None or self.strategy.extended.should_checkpoint

    def scope(self):
        """The strategy's scope, under which the graph is built."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def session(self):
        """The training Session: on this worker's server for a cluster."""
        return tf1.Session(self.server.target if self.server else '', config=self.config)

    def describe(self):
        """The run log's first line: how many replicas on which devices."""
        if not self.strategy:
            return 'training on 1 device, ' + ('a GPU' if gpus() else 'the CPU')
        local = ', '.join(d.rsplit('device:', 1)[-1] for d in self.devices)
        if self.kind == 'multi-worker':
            role = 'the chief' if self.is_chief else 'not the chief: the chief writes the run'
            return (f'training on {self.replicas} replicas: {self.workers} workers (multi-worker '
                    f'from TF_CONFIG); this is worker {self.worker} ({role}), on {local}')
        return f'training on {self.replicas} replica(s) (mirrored): {local}'


def gpus():
    """The visible GPUs (CUDA_VISIBLE_DEVICES applies), with memory growth on, so that a run
    takes the memory it uses rather than all of every GPU's."""
    found = tf.config.list_physical_devices('GPU')
    for gpu in found:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process: it keeps its setting
            pass
    return found


def bfloat16_problem():
    """Why bfloat16 cannot run here, or None. It runs on oneDNN's bf16 kernels: the CPU must
    have them (AVX512-BF16 or AMX), and oneDNN must be on (TF_ENABLE_ONEDNN_OPTS) and allowed
    to use them (ONEDNN_MAX_CPU_ISA), else its convolutions fail at the first step."""
    if not cpu.flags() & set(BF16_FLAGS):
        return (f'needs a CPU with AVX512-BF16 or AMX (flags {" or ".join(BF16_FLAGS)}), which '
                f'this one lacks')
    if os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1').strip() == '0':
        return 'runs on oneDNN, which TF_ENABLE_ONEDNN_OPTS=0 turns off'
    isa = os.environ.get('ONEDNN_MAX_CPU_ISA', 'ALL').strip().upper()
    if isa not in BF16_ISAS:
        return (f'runs on oneDNN\'s AVX512_CORE_BF16 kernels or later ones, which '
                f'ONEDNN_MAX_CPU_ISA={isa} keeps it from')
    return None


def session_config(precision='float32', xla=False):
    """The ConfigProto of the precision and XLA options, after checking the machine runs them:
    bfloat16 through oneDNN's automatic mixed-precision rewrite (CPUs with AVX512-BF16 or AMX),
    float16 through the CUDA one (GPUs). Variables stay float32 either way; only the ops that
    gain from it compute in the lower precision."""
    config = tf1.ConfigProto()
    config.gpu_options.allow_growth = True  # a Session given a config ignores set_memory_growth
    rewrites = config.graph_options.rewrite_options
    if precision == 'bfloat16':
        problem = bfloat16_problem()
        if problem:
            raise UserError(f'--precision bfloat16 {problem}; use --precision float32, or '
                            f'float16 on a GPU')
        rewrites.auto_mixed_precision_onednn_bfloat16 = rewrites.ON
    elif precision == 'float16':
        if not gpus():
            raise UserError('--precision float16 runs on GPUs and none is visible here; use '
                            '--precision float32' + (', or bfloat16: this CPU has it'
                                                     if not bfloat16_problem() else ''))
        rewrites.auto_mixed_precision = rewrites.ON
    if xla:
        config.graph_options.optimizer_options.global_jit_level = tf1.OptimizerOptions.ON_1
    return config


def read_tf_config():
    """TF_CONFIG's (cluster addresses, chief first; (task type, index); this task's index
    among all), checked, with one clear line on what is wrong."""
    text = os.environ.get('TF_CONFIG')
    if not text:
        raise UserError('--distribute multi-worker reads the cluster from the TF_CONFIG '
                        'environment variable, which is not set; see README.md, "GPU boxes '
                        'and clusters"')
    try:
        config = json.loads(text)
        workers = config['cluster'].get('chief', []) + config['cluster']['worker']
        kind, index = config['task']['type'], int(config['task']['index'])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError('TF_CONFIG is not {"cluster": {"worker": ["host:port", ...]}, "task": '
                        '{"type": "worker", "index": N}}: ' + text[:200]) from None
    if kind not in ('worker', 'chief') or not 0 <= index < len(config['cluster'].get(kind, [])):
        raise UserError(f'TF_CONFIG: task {kind} {index} is not in its cluster {text[:200]}')
    chiefs = len(config['cluster'].get('chief', []))
    return workers, (kind, index), index + (chiefs if kind == 'worker' else 0)


def setup(training, frozen_encoder=False):
    """The Setup of a config.TrainingConfig's distribute, precision, xla and step_timeout;
    `frozen_encoder`: the network is Udacity's frozen VGG16, which cannot be replicated. Call it
    before any other TensorFlow work in the process: device settings apply only until
    TensorFlow starts."""
    visible = gpus()
    kind = training.distribute
    if kind == 'auto':
        kind = 'mirrored' if len(visible) > 1 and not frozen_encoder else 'none'
    if kind != 'none' and frozen_encoder:
        raise UserError(f'--distribute {kind}: --encoder-weights udacity is a frozen graph, '
                        'which tf.distribute cannot replicate; train the same VGG16 built in '
                        'the graph with --encoder-weights none, imagenet or keras-h5:PATH')
    if training.xla and not visible:
        raise UserError('--xla is for GPUs: on CPUs it measured no gain for VGG16 (1.04x '
                        'inference, 1.09x training) and a tenfold loss for MobileNetV2 (see '
                        'docs/benchmarks.md); train without it here')
    config = session_config(training.precision, training.xla)
    if kind == 'none':
        return Setup(kind, config=config)
    if kind == 'mirrored':
        devices = [d.name for d in tf.config.list_logical_devices('GPU')]
        if not devices:  # the CPU's logical devices, which a Session counts only when told
            devices = [d.name for d in tf.config.list_logical_devices('CPU')]
            config.device_count['CPU'] = len(devices)
        strategy = tf1.distribute.MirroredStrategy(devices)
        return check_batch(Setup(kind, strategy, config=config), training.batch_size)
    workers, task, worker = read_tf_config()
    strategy = tf1.distribute.experimental.MultiWorkerMirroredStrategy()
    config = strategy.update_config_proto(config)
    config.operation_timeout_in_ms = int(training.step_timeout * 1000)
    try:
        server = tf.distribute.Server(strategy.cluster_resolver.cluster_spec(),
                                      job_name=task[0], task_index=task[1], config=config,
                                      start=True)
    except (tf.errors.UnknownError, tf.errors.InvalidArgumentError) as e:
        raise UserError(f'TF_CONFIG: this worker cannot listen on {workers[worker]} '
                        f'({e.message.splitlines()[0]}); is the port in use?') from None
    return check_batch(Setup(kind, strategy, server, worker, len(workers), config),
                       training.batch_size)


def check_batch(setup_, batch_size):
    """The setup, after checking that --batch-size, the global batch, splits evenly."""
    if batch_size % setup_.replicas:
        raise UserError(f'--batch-size {batch_size} is the global batch and must split evenly '
                        f'among the {setup_.replicas} replicas; use a multiple of '
                        f'{setup_.replicas}')
    return setup_


def step_ops(per_replica):
    """The training op and the global batch's loss from the replicas' (train_op, loss)."""
    if not tf.distribute.has_strategy():
        return per_replica
    strategy = tf.distribute.get_strategy()
    train_op, loss = per_replica
    return (tf.group(strategy.experimental_local_results(train_op)),
            strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None))


def check_same_epoch(sess, setup_, epoch):
    """Stop unless every worker resumes at `epoch`: workers that restored different
    checkpoints (a run folder seen differently) would train apart, then hang. One all-reduce of
    the epoch and its square, equal to replicas x epoch and replicas x epoch^2 only when all
    agree."""
    if setup_.workers == 1:
        return
    value = tf1.placeholder(tf.float32, [])
    sums = ops.for_each_replica(lambda: ops.cross_replica_sum(tf.stack([value, value * value])))
    total, squares = sess.run(setup_.strategy.experimental_local_results(sums)[0],
                              {value: epoch})
    if total != setup_.replicas * epoch or squares != setup_.replicas * epoch ** 2:
        raise UserError(f'worker {setup_.worker} resumes at epoch {epoch} and the others do not; '
                        'start every worker with --resume and the same run folder, on storage '
                        'they all read')


@contextlib.contextmanager
def failures(training, setup_):
    """Turn running out of memory, and a multi-worker step that lost a worker (an error from the
    connection, or the --step-timeout deadline), into one line saying what to do."""
    try:
        yield
    except tf.errors.ResourceExhaustedError:
        height, width = training.image_shape
        raise UserError(f'out of memory: lower --batch-size (now {training.batch_size}) or '
                        f'--image-shape (now {height}x{width})'
                        + (' or --train-crop' if not training.train_crop else '')) from None
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
            tf.errors.AbortedError) as e:
        if setup_.workers == 1:
            raise
        raise UserError(f'worker {setup_.worker}: lost the other workers '
                        f'({e.message.splitlines()[0][:120] if e.message else type(e).__name__})'
                        f'; one has stopped (see its log), or a step waited more than '
                        f'--step-timeout {training.step_timeout:g} s. Start every worker again '
                        f'with --resume and the run folder the chief logged') from None
