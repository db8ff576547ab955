"""How the service refuses a request: RequestFailed, answered with its status and
{"error": message}. A module of its own so that the HTTP limits, the protocol's parsing and the
service raise it without importing one another.
"""


class RequestFailed(Exception):
    """A request the service answers with `status` and {"error": message}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def first_line(error):
    """An exception's message, first line only (TensorFlow's run over many)."""
    return (str(error).strip().splitlines() or [''])[0]
