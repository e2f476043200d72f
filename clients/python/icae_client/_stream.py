"""What a Generate stream keeps and how it reads each message, shared by the synchronous
and the asyncio stream so that both end, fail and count in the same way."""

from __future__ import annotations

from typing import Any

import grpc

from ._proto.icae.v1 import icae_pb2 as pb
from .errors import Cancelled, Unknown, from_rpc_error
from .values import FinishReason, GenerateFinal, GenerateResult, TokenDelta


class StreamState:
    """The received deltas, the final message, and whether the caller cancelled."""

    def __init__(self, request: pb.GenerateRequest, timeout: float | None):
        self._request = request
        self._timeout = timeout
        self._call: Any = None
        self._cancelled = False
        self._done = False
        self._token_ids: list[int] = []
        self._texts: list[str] = []
        #: The stream's last message, once it has ended.
        self.final: GenerateFinal | None = None

    def _receive(self, message: pb.GenerateResponse) -> TokenDelta | None:
        """Record one message: a delta is returned to yield; the final one is kept."""
        if message.HasField("delta"):
            delta = TokenDelta(tuple(message.delta.token_ids), message.delta.text)
            self._token_ids.extend(delta.token_ids)
            self._texts.append(delta.text)
            return delta
        if message.HasField("final"):
            self.final = GenerateFinal.from_proto(message.final)
        return None

    def _failed(self, rpc_error: grpc.RpcError) -> None:
        """The stream broke: quietly when the caller cancelled it, else as a typed error."""
        error = from_rpc_error(rpc_error)
        if self._cancelled and error.code == grpc.StatusCode.CANCELLED:
            return
        raise error from None

    def _ended(self) -> None:
        """The server closed the stream: it must have sent its final message."""
        if self.final is None and not self._cancelled:
            raise Unknown("the Generate stream ended without its final message")

    def _whole(self) -> GenerateResult:
        """Everything received, once the stream has been read to its end."""
        if self.final is None:
            raise Cancelled("the stream was cancelled")
        return GenerateResult(
            text=self.text,
            token_ids=tuple(self._token_ids),
            finish_reason=self.final.finish_reason,
            prompt_positions=self.final.prompt_positions,
            timings=self.final.timings,
        )

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._texts)

    @property
    def token_ids(self) -> list[int]:
        """The token ids received so far."""
        return list(self._token_ids)

    @property
    def finish_reason(self) -> FinishReason | None:
        """The finish reason, once the stream has ended."""
        return None if self.final is None else self.final.finish_reason

    def cancel(self) -> None:
        """Cancel the call (the decoder stops generating and frees the sequence)."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def _should_cancel_on_exit(self) -> bool:
        """Leaving a ``with`` block before the final message cancels the call."""
        return not self._done or self.final is None
