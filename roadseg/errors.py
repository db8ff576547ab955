"""The two kinds of failure a user sees as one line instead of a traceback (cli.main_guard)."""


class UserError(Exception):
    """A bad input, file or flag: reported as one line naming it and what to do, no traceback."""


class PartlyFailed(Exception):
    """Part of the work failed after the rest was done and the failures were listed (inputs
    that could not be read, exports that disagree): reported as one line, exit status 1."""
