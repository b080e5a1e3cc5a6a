"""Every error the service answers, in one shape: {"error": {"status", "field", "message"}}.

A user mistake is a 4xx naming the field as this API spells it (models.API_NAMES) and the fix; the runtime's
errors map by type (`STATUS`); an error that crossed from a Ray replica carries its status (ServiceError).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from svdedit.runtime.errors import (
    AttributeFileError,
    BusyError,
    ImageTooLargeError,
    InvalidRequestError,
    NonFiniteLatentError,
    NotFoundError,
    SvdeditError,
)
from svdedit.serve.models import API_NAMES


class RequestTimeout(SvdeditError):
    """A request ran past the service's request timeout."""


class UnsupportedMediaType(SvdeditError):
    """A body of a media type the route does not take (415)."""

    field = "content-type"


class ServiceError(SvdeditError):
    """An error that crossed a process boundary (a Ray replica's), with the status it is answered with."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.field, self.retry_after_s = status, field, retry_after_s


STATUS = [(InvalidRequestError, 422), (NonFiniteLatentError, 422), (ImageTooLargeError, 413), (NotFoundError, 404),
          (AttributeFileError, 409), (BusyError, 503), (RequestTimeout, 504), (UnsupportedMediaType, 415), (SvdeditError, 400)]


def status_of(exc: SvdeditError) -> int:
    """The HTTP status a user-facing error is answered with."""
    return exc.status if isinstance(exc, ServiceError) else next(code for kind, code in STATUS if isinstance(exc, kind))


def described(exc: SvdeditError) -> tuple[int, str, str | None]:
    """(status, message, field) of a user-facing error, its field named as this API names it."""
    if isinstance(exc, InvalidRequestError):
        field = API_NAMES.get(exc.field, exc.field)
        return status_of(exc), exc.spelt(field), field
    return status_of(exc), str(exc), getattr(exc, "field", None)


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "field": field, "message": message}}, status_code=status,
                        headers=headers)
