"""TensorFlow in TF1 graph mode (Session, placeholders), imported without its C++ notices.

Modules that build graphs call `import_tensorflow()` at import; the inference path calls it only
when it opens a SavedModel or a frozen graph, so TFLite models run without TensorFlow.
"""
import contextlib
import os
import sys


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C++ libraries' notices) inside the block; Python exceptions
    raised in it still reach the user after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, 'w') as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """TensorFlow in TF1 graph mode, without its C++ start-up notices about absent GPUs."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    with quiet_stderr():
        import tensorflow as tf
    tf.compat.v1.disable_eager_execution()
    tf.get_logger().setLevel('ERROR')  # TF1 API deprecation notices are expected here
    return tf
