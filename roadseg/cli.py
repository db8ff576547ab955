"""What every command-line script shares: an argument parser that reports a bad flag as one
line, the guard that turns errors into one line and an exit status, and the size and crop
arguments."""
import argparse
import errno
import importlib.util
import os
import sys

from roadseg.errors import PartlyFailed, UserError


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad flag as one line (a UserError), like every other bad input."""

    def error(self, message):
        raise UserError(f'{message} (see --help)')


def main_guard(fn, *args):
    """Run `fn`, turning a UserError, or an OSError from the file system (a folder that cannot
    be written, a full disk), into one line on stderr (one_line) and exit status 2 (a
    PartlyFailed: exit status 1, an interruption: 130). Files are written atomically, so nothing
    is left half-written."""
    try:
        fn(*args)
    except UserError as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        advice = ('the disk is full: free space on it and run again' if e.errno == errno.ENOSPC
                  else 'check that the folder exists and is writable and that the disk has '
                       'space')
        print(one_line(f'error: {where}{e.strerror or e}; {advice}'), file=sys.stderr)
        return 2
    except PartlyFailed as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except ModuleNotFoundError as e:
        if e.name not in EXTRAS:
            raise
        print(f'error: {missing_extra(e.name)}', file=sys.stderr)
        return 2
    return 0


# The optional packages, by the extra of pyproject.toml that installs them: the base install
# predicts, evaluates and serves .tflite models without them.
EXTRAS = {'tensorflow': ('TensorFlow', 'train'), 'h5py': ('h5py', 'train'),
          'matplotlib': ('matplotlib', 'train'), 'onnxruntime': ('onnxruntime', 'onnx'),
          'tf2onnx': ('tf2onnx', 'onnx'), 'onnx': ('tf2onnx', 'onnx')}  # onnx comes with it


def require(*modules):
    """Stop, before any work, when one of `modules` (of EXTRAS) is not installed: the
    ModuleNotFoundError that main_guard words as the extra to install."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f'No module named {module!r}', name=module)


def missing_extra(module, needing=None):
    """One line naming the extra that installs `module`, for `needing` (by default the command
    being run)."""
    package, extra = EXTRAS[module]
    return (f'{needing or os.path.basename(sys.argv[0]) or "this"} needs {package} here, which '
            f"is not installed: pip install 'roadseg[{extra}]' (in a clone: pip install "
            f"'.[{extra}]')")


LINE_BREAKS = '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'  # where str.splitlines splits


def one_line(message):
    """`message` with its line breaks escaped (`\\n`): a path or a value it quotes as it is
    cannot split the one line of an error."""
    return str(message).translate({ord(c): repr(c)[1:-1] for c in LINE_BREAKS})


def image_shape_arg(text):
    """Parse `HxW`, both multiples of 32 (the encoder's total stride)."""
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not HxW, e.g. 160x576') from None
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f'{text!r}: height and width must be positive '
                                         f'multiples of 32, e.g. 160x576')
    return height, width


def shapes_arg(text, flag):
    """Comma-separated HxW sizes, multiples of 32; a bad one is a UserError naming `flag`."""
    try:
        return [image_shape_arg(s.strip()) for s in text.split(',')]
    except argparse.ArgumentTypeError as e:
        raise UserError(f'{flag} {e}') from None


def crop_arg(text):
    """Parse TOP,BOTTOM: the rows the model sees, as a Python slice (a negative BOTTOM counts
    from the bottom edge, e.g. 120,-40)."""
    try:
        top, bottom = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not TOP,BOTTOM, e.g. 120,-40') \
            from None
    if top < 0 or 0 <= bottom <= top:
        raise argparse.ArgumentTypeError(
            f'{text!r}: TOP must be 0 or more and BOTTOM below it (or negative: from the bottom)')
    return top, bottom


def aligned(header, rows, left=0):
    """A table's lines: the `header` (None: none) and `rows` (sequences of text) in columns,
    the first `left` aligned left (names), the others right (figures)."""
    table = ([header] if header else []) + list(rows)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ['  '.join(f'{value:<{width}}' if i < left else f'{value:>{width}}'
                      for i, (value, width) in enumerate(zip(row, widths))).rstrip()
            for row in table]
