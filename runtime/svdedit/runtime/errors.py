"""Every error a user can meet, in one place.

Every mistake a user can make (a wrong path, a corrupt file, an unsupported model, a bad option)
raises a ``SvdeditError`` subclass whose message names what was wrong and how to fix it. The command
line prints that message without a traceback and exits with status 2; anything else is a bug and keeps
its traceback. The kernels (the layer below the runtime) raise their own ``LatentShapeError``, a
``ValueError`` as NumPy's linalg errors are; ``USER_ERRORS`` lists both for the command line.
"""

import re

from svdedit.kernels import LatentShapeError


class SvdeditError(Exception):
    """A user-facing error: the message says what was wrong and what to do instead."""


class SourceError(SvdeditError):
    """The model given to ``svdedit export`` cannot be used."""


class ExportError(SvdeditError):
    """The export ran but its result failed a check (parity, ONNX checker, I/O)."""


class EngineDirError(SvdeditError):
    """An engine dir is missing, incomplete, corrupt, or of another format; or a call broke its contract."""


class ManifestFieldError(ValueError):
    """A field of a manifest is missing or of the wrong type. read_manifest turns it into an EngineDirError that
    names the file; the exporter, which checks the manifest it makes, into an ExportError."""


class TensorrtError(SvdeditError):
    """TensorRT is missing, or its plans do not fit this machine or this call."""


class RunnerError(SvdeditError):
    """A runner was used outside its lifecycle (not activated, or activated twice)."""


class NonFiniteLatentError(SvdeditError):
    """NaN or inf appeared in the latents during sampling or inversion."""


class ImageTooLargeError(SvdeditError):
    """An image has more pixels than the limit (refused from its header, before decoding)."""


class NotFoundError(SvdeditError):
    """Something asked for by its name or id (an attribute in a store) does not exist."""


class AttributeFileError(SvdeditError):
    """An attribute file is missing, corrupt, of another format version, or learned on another model."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder reads; its tail was dropped."""


class InvalidRequestError(SvdeditError):
    """A request (a command, a call to the service, a library call: runtime/editing/request.py) has a field with a
    value it cannot take. `field` names it as the runtime's request values do ("seeds", "knobs.t_edit"); the
    message says what is wrong and how to fix it, and may write the field as "{field}", so that each front end
    names it its own way (`spelt`: "--t-edit" on the command line, "knobs.t_edit" in the service's JSON)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.template = message
        super().__init__(self.spelt(field))

    def spelt(self, name: str) -> str:
        """The message with the field written as `name`."""
        return self.template.replace("{field}", name)


class BusyError(SvdeditError):
    """The service's queue is full: try again after `retry_after_s` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


#: what the command line reports as a clear message (exit status 2) instead of a traceback
USER_ERRORS = (SvdeditError, LatentShapeError)


def shown(value) -> str:
    """A value as an error message shows it: its repr, cut to 40 characters (a request may send megabytes)."""
    try:
        text = repr(value)
    except ValueError:  # an int of over 4300 digits has no repr
        return f"a number of {value.bit_length()} bits"
    return text if len(text) <= 40 else text[:37] + "..."


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def without_reprs(text: str) -> str:
    """A library's message without the reprs of Python objects it quotes ("cannot identify image file
    <_io.BytesIO object at 0x7f...>"): they mean nothing to the user and show addresses."""
    return _OBJECT_REPR.sub("", text)
