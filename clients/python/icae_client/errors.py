"""Errors of `icae_client`: every failed call raises an :class:`IcaeError`.

The subclass names the kind (:class:`InvalidArgument`, :class:`NotFound`,
:class:`ResourceExhausted`, :class:`Unavailable`, ...); ``.code`` is the
:class:`grpc.StatusCode` and ``.message`` the server's message (or the client's own, for an
argument the client could not turn into a request).
"""

from __future__ import annotations

import grpc

__all__ = [
    "IcaeError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "error_for",
    "from_rpc_error",
]


class IcaeError(Exception):
    """A call that failed, with its gRPC status code and message.

    Attributes:
        code: the :class:`grpc.StatusCode` of the failure.
        message: the server's status message (never a token or a slot value).
        debug: gRPC's debug string (transport details), when there is one.
    """

    #: The status code of this kind of error (the base class: any).
    CODE: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, *, debug: str | None = None
    ):
        code = type(self).CODE if code is None else code
        super().__init__(message, code)
        self.code: grpc.StatusCode = code
        self.message: str = message
        self.debug: str | None = debug

    @property
    def retryable(self) -> bool:
        """Whether sending the call again may succeed (UNAVAILABLE: unreachable, loading or
        draining). Compress and GenerateOnce may always be sent again; a Generate stream
        only while none of its messages has arrived."""
        return self.code == grpc.StatusCode.UNAVAILABLE

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.code})"


class Cancelled(IcaeError):
    """The call was cancelled."""

    CODE = grpc.StatusCode.CANCELLED


class Unknown(IcaeError):
    """An error without a better code."""

    CODE = grpc.StatusCode.UNKNOWN


class DeadlineExceeded(IcaeError):
    """The call's deadline passed."""

    CODE = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(IcaeError):
    """A slot key is missing or has expired."""

    CODE = grpc.StatusCode.NOT_FOUND


class AlreadyExists(IcaeError):
    """ALREADY_EXISTS."""

    CODE = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(IcaeError):
    """The caller may not do this."""

    CODE = grpc.StatusCode.PERMISSION_DENIED


class Aborted(IcaeError):
    """ABORTED."""

    CODE = grpc.StatusCode.ABORTED


class OutOfRange(IcaeError):
    """OUT_OF_RANGE."""

    CODE = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(IcaeError):
    """The server does not serve this call."""

    CODE = grpc.StatusCode.UNIMPLEMENTED


class Internal(IcaeError):
    """An internal error of the server."""

    CODE = grpc.StatusCode.INTERNAL


class DataLoss(IcaeError):
    """A stored slot value is corrupt or another's."""

    CODE = grpc.StatusCode.DATA_LOSS


class InvalidArgument(IcaeError):
    """The request is invalid: an empty document, a bad mode or sampling value, too many
    tokens, a missing prompt... (also raised by the client for arguments it cannot send)."""

    CODE = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(IcaeError):
    """The server is at a limit (queue full, message too large): try later or send less."""

    CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(IcaeError):
    """The slots were made by another model or adapter than the decoder's."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(IcaeError):
    """The server is unreachable, loading or draining (retried by the client where safe)."""

    CODE = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(IcaeError):
    """No valid bearer token or client certificate."""

    CODE = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[IcaeError]] = {
    kind.CODE: kind
    for kind in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_for(code: grpc.StatusCode, message: str, *, debug: str | None = None) -> IcaeError:
    """The :class:`IcaeError` subclass of `code`, holding `message`."""
    return _BY_CODE.get(code, IcaeError)(message, code, debug=debug)


def from_rpc_error(error: grpc.RpcError) -> IcaeError:
    """Convert a grpcio error (sync or :mod:`grpc.aio`) into an :class:`IcaeError`."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = error.details() if hasattr(error, "details") else str(error)
    code = code or grpc.StatusCode.UNKNOWN
    debug = None
    # A call cancelled by this client never gets a debug string: grpcio would wait for it.
    if code != grpc.StatusCode.CANCELLED and hasattr(error, "debug_error_string"):
        debug = error.debug_error_string()
    return error_for(code, message or "", debug=debug)
