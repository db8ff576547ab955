"""What every command-line script shares: an argument parser that reports a bad flag as one
line, the guard that turns errors into one line and an exit status, and the size and crop
arguments."""
import argparse
import sys

from roadseg.errors import PartlyFailed, UserError


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad flag as one line (a UserError), like every other bad input."""

    def error(self, message):
        raise UserError(f'{message} (see --help)')


def main_guard(fn, *args):
    """Run `fn`, turning a UserError, or an OSError from the file system (a folder that cannot
    be written, a full disk), into one line on stderr and exit status 2 (a PartlyFailed: exit
    status 1, an interruption: 130). Files are written atomically, so nothing is left
    half-written."""
    try:
        fn(*args)
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        where = f'{e.filename}: ' if e.filename else ''
        print(f'error: {where}{e.strerror or e}; check that the folder exists and is writable '
              f'and that the disk has space', file=sys.stderr)
        return 2
    except PartlyFailed as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    return 0


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
