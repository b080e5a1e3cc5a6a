"""Request bodies into the API's models (models.py): one reader for every route, refusing what is not a body.

    body = parse_json(raw, content_type, LearnBody)        # off the event loop: app.py runs it in the decode pool

A JSON route takes `application/json` (or `application/<something>+json`); anything else, or none, is a 415 naming
the type to send (`POST /v1/edits` also takes a multipart form with an image file). The text is parsed with two
guards Python's json module lacks: JSON nested deeper than MAX_DEPTH is a 422 (json.loads would raise
RecursionError), and a number with more than MAX_DIGITS digits is read as out of range rather than as "not JSON"
(Python refuses to convert integers of over 4300 digits). A body that parses but does not fit the model is a 422
naming the first field at fault, the same as the runtime's own checks (request.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from svdedit.runtime.errors import InvalidRequestError, shown
from svdedit.serve.errors import UnsupportedMediaType
from svdedit.serve.models import EditBody

#: deepest nesting of arrays and objects a body may have (the API's bodies need 3)
MAX_DEPTH = 32
#: digits of the longest number read as such; longer ones stand for "far out of range" (every bound has < 20)
MAX_DIGITS = 64
#: a number too long to be one: out of every range, with its sign (shown as such in the error)
OUT_OF_RANGE = 10**MAX_DIGITS
_TOO_DEEP = f"the body's JSON nests arrays or objects more than {MAX_DEPTH} deep; this API's bodies need 3 at most."


def is_json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def require_json(content_type: str, multipart_too: bool = False) -> None:
    if is_json(content_type):
        return
    sent = content_type.split(";")[0].strip()
    sent = f"sent as {shown(sent)}" if sent else "sent without a Content-Type"
    also = " (or as multipart/form-data with an image file)" if multipart_too else ""
    raise UnsupportedMediaType(f"the body was {sent}; send JSON with the header Content-Type: application/json{also}.")


def _number(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        return -OUT_OF_RANGE if text.startswith("-") else OUT_OF_RANGE
    return int(text)


def loads(raw: bytes) -> object:
    """The JSON of a request body; InvalidRequestError("body") if it is not JSON or nests too deeply."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("body", "the body is not UTF-8 text; send JSON (RFC 8259 requires UTF-8).") from None
    try:
        return json.loads(text, parse_int=_number)
    except RecursionError:
        raise InvalidRequestError("body", _TOO_DEEP) from None
    except ValueError as exc:
        raise InvalidRequestError("body", f"the body is not JSON ({str(exc)[:120]}); send application/json.") from None


def validated(raw: object, model: type[BaseModel]) -> BaseModel:
    """`raw` (parsed JSON, or a form's fields) as `model`; a 422 naming the first field at fault otherwise."""
    if _nesting(raw) > MAX_DEPTH:
        raise InvalidRequestError("body", _TOO_DEEP)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def _nesting(value, depth: int = 0) -> int:
    if depth > MAX_DEPTH:
        return depth
    if isinstance(value, dict):
        return max((_nesting(v, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list):
        return max((_nesting(v, depth + 1) for v in value), default=depth + 1)
    return depth


def parse_json(raw: bytes, content_type: str, model: type[BaseModel]) -> BaseModel:
    """A JSON body as `model`, every refusal a 4xx naming what was wrong."""
    require_json(content_type)
    return validated(loads(raw), model)


def edit_from_json(raw: bytes, content_type: str) -> tuple[EditBody, bytes | None]:
    """An edit's JSON body, and its image decoded from base64 (None for seeds)."""
    require_json(content_type, multipart_too=True)
    rest, encoded = _cut_image(raw)
    parsed = loads(rest)
    if encoded is not None and not (isinstance(parsed, dict) and parsed.get("image") == _PLACEHOLDER):
        parsed, encoded = loads(raw), None  # the cut was not the body's own image field: the plain way
    if encoded is not None:
        parsed["image"] = None
    body = validated(parsed, EditBody)
    if encoded is None and body.image is not None:
        encoded = body.image
    return body, base64_image(encoded) if encoded is not None else None


#: what stands for the image while the rest of the body is parsed (in the JSON text an escape, \u0000...)
_PLACEHOLDER = "\x00svdedit-image"
_VALUE_START = re.compile(rb'\s*:\s*"')


def _cut_image(raw: bytes) -> tuple[bytes, memoryview | None]:
    """The body without its base64 image, and the image's text: so that json.loads does not copy megabytes of it
    into a str while holding the GIL (~80 ms for 50 MB, during which /healthz waits). Only for a body without a
    backslash: then every quote delimits a string, and the placeholder cannot come from the client (it is an escape);
    edit_from_json checks that the cut was the top-level "image" field. Each scan here is a memchr, ~5 ms for 50 MB."""
    if raw.find(b"\\") >= 0:
        return raw, None
    at = raw.find(b'"image"')
    opened = _VALUE_START.match(raw, at + len(b'"image"')) if at >= 0 else None
    end = raw.find(b'"', opened.end()) if opened else -1
    if end < 0:
        return raw, None
    return raw[:opened.end()] + json.dumps(_PLACEHOLDER)[1:-1].encode() + raw[end:], memoryview(raw)[opened.end():end]


#: base64 characters decoded per call (a multiple of 4): each call holds the GIL ~5 ms, not the whole image's time
_CHUNK = 2**20


def base64_image(encoded: str | memoryview) -> bytes:
    """An image's bytes from its base64 text, decoded in chunks (the event loop's thread gets the GIL between them)."""
    try:
        if len(encoded) % 4:
            raise ValueError("incomplete base64")
        return b"".join(base64.b64decode(encoded[i:i + _CHUNK], validate=True) for i in range(0, len(encoded), _CHUNK))
    except (binascii.Error, ValueError):
        raise InvalidRequestError("image", "`image` is not valid base64; send the file's bytes base64-encoded "
                                           "(or upload it as multipart/form-data).") from None
