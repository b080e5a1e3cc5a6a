"""The one error type a user sees.

Every mistake a user can make (a wrong path, a corrupt file, an unsupported model) raises
``SvdeditError`` with a message that names what was wrong and how to fix it. The command line prints
that message without a traceback and exits with status 2; anything else is a bug and keeps its
traceback.
"""


class SvdeditError(Exception):
    """A user-facing error: the message says what was wrong and what to do instead."""


class SourceError(SvdeditError):
    """The model given to ``svdedit export`` cannot be used."""


class EngineDirError(SvdeditError):
    """An engine dir is missing, incomplete, corrupt, or of another format."""


class ExportError(SvdeditError):
    """The export ran but its result failed a check (parity, ONNX checker, I/O)."""
