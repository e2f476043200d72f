"""The asyncio client (:mod:`grpc.aio`): :class:`IcaeClient` here has the same methods as
:class:`icae_client.IcaeClient`, as coroutines, and :meth:`IcaeClient.generate` returns an
:class:`AsyncGenerateStream` to iterate with ``async for``::

    from icae_client.aio import IcaeClient

    async with IcaeClient(encoder="host:50051", decoder="host:50052") as client:
        handles = await client.compress(["long document ..."])
        async for delta in client.generate(handles, prompt="Who?", max_new_tokens=64):
            print(delta, end="")

Channels are opened on the first call, in the running event loop; use one client per
event loop.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import grpc
import grpc.aio

from . import _requests
from ._connect import (
    DEFAULT_MAX_RECEIVE_BYTES,
    Tls,
    addresses,
    call_metadata,
    open_channel,
    split_address,
)
from ._proto.icae.v1 import icae_pb2 as pb
from ._proto.icae.v1 import icae_pb2_grpc as pb_grpc
from ._requests import Document, ModeLike, SlotSource
from ._stream import StreamState
from .client import retry_policy
from .errors import InvalidArgument, from_rpc_error
from .retry import Attempts, Replicas, RetryPolicy
from .values import GenerateResult, SlotHandle, TokenDelta

__all__ = ["IcaeClient", "AsyncIcaeClient", "AsyncGenerateStream"]

R = TypeVar("R")
Timeout = float | None | Literal["default"]


class IcaeClient:
    """An asyncio client of encoder-svc and decoder-svc; the arguments are those of
    :class:`icae_client.IcaeClient`. Use ``async with``, or ``await close()``."""

    def __init__(
        self,
        encoder: str | Sequence[str] | None = None,
        decoder: str | Sequence[str] | None = None,
        *,
        tls: bool | Tls | None = None,
        token: str | None = None,
        timeout: float | None = 120.0,
        retries: int | RetryPolicy = 4,
        metadata: Sequence[tuple[str, str]] = (),
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    ):
        self.timeout = timeout
        self.policy = retry_policy(retries)
        self._metadata = call_metadata(token, metadata)
        self._targets = {
            "encoder": [split_address(url, tls) for url in addresses(encoder)],
            "decoder": [split_address(url, tls) for url in addresses(decoder)],
        }
        self._max_receive_bytes = max_receive_bytes
        self._channels: list[grpc.aio.Channel] = []
        self._replicas: dict[str, Replicas[Any]] = {}

    def _stubs(self, service: str) -> Replicas[Any]:
        """The service's replicas, their channels opened on first use (in the running loop)."""
        if service not in self._replicas:
            targets = self._targets[service]
            if not targets:
                raise InvalidArgument(f"no {service} address was given to IcaeClient")
            make = (
                pb_grpc.EncoderServiceStub if service == "encoder" else pb_grpc.DecoderServiceStub
            )
            stubs = []
            for target, settings in targets:
                channel = open_channel(grpc.aio, target, settings, self._max_receive_bytes)
                self._channels.append(channel)
                stubs.append(make(channel))
            self._replicas[service] = Replicas(stubs)
        return self._replicas[service]

    async def _call(
        self,
        service: str,
        call: Callable[[Any, float | None], Awaitable[R]],
        timeout: Timeout,
    ) -> R:
        replicas = self._stubs(service)
        attempts = Attempts(replicas, self.policy, self._deadline(timeout))
        while True:
            try:
                return await call(attempts.client, attempts.remaining())
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            delay = attempts.failed(error)
            if delay:
                await asyncio.sleep(delay)

    def _deadline(self, timeout: float | None | Literal["default"]) -> float | None:
        return self.timeout if timeout == "default" else timeout

    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._replicas.clear()

    async def __aenter__(self) -> IcaeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def compress(
        self,
        documents: str | Iterable[Document],
        *,
        ttl_seconds: int = 0,
        ttl: datetime.timedelta | None = None,
        namespace: str = "",
        return_slots: bool = False,
        refine_steps: int = 0,
        target_loss: float | None = None,
        reconstruction_loss: bool = False,
        slots_per_segment: int = 0,
        timeout: Timeout = "default",
    ) -> list[SlotHandle]:
        """See :meth:`icae_client.IcaeClient.compress`."""
        request = _requests.compress_request(
            documents,
            ttl_seconds=ttl_seconds,
            ttl=ttl,
            namespace=namespace,
            return_slots=return_slots,
            refine_steps=refine_steps,
            target_loss=target_loss,
            reconstruction_loss=reconstruction_loss,
            slots_per_segment=slots_per_segment,
        )
        response: pb.CompressResponse = await self._call(
            "encoder",
            lambda stub, t: stub.Compress(request, timeout=t, metadata=self._metadata),
            timeout,
        )
        return [
            SlotHandle.from_proto(doc.handle, doc.slots if return_slots else None)
            for doc in response.documents
        ]

    async def encoder_info(self, *, timeout: Timeout = "default") -> pb.InfoResponse:
        """See :meth:`icae_client.IcaeClient.encoder_info`."""
        return await self._call(
            "encoder",
            lambda stub, t: stub.Info(pb.InfoRequest(), timeout=t, metadata=self._metadata),
            timeout,
        )

    async def decoder_info(self, *, timeout: Timeout = "default") -> pb.InfoResponse:
        """See :meth:`icae_client.IcaeClient.decoder_info`."""
        return await self._call(
            "decoder",
            lambda stub, t: stub.Info(pb.InfoRequest(), timeout=t, metadata=self._metadata),
            timeout,
        )

    async def info(
        self, service: Literal["encoder", "decoder"], *, timeout: Timeout = "default"
    ) -> pb.InfoResponse:
        """:meth:`encoder_info` or :meth:`decoder_info`."""
        if service == "encoder":
            return await self.encoder_info(timeout=timeout)
        if service == "decoder":
            return await self.decoder_info(timeout=timeout)
        raise InvalidArgument(f"unknown service {service!r}: 'encoder' or 'decoder'")

    def generate(
        self,
        slots: SlotSource | Iterable[SlotSource] | None = None,
        *,
        mode: ModeLike = "answer",
        prompt: str = "",
        baseline_text: str | None = None,
        max_new_tokens: int = 0,
        greedy: bool | None = None,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int = 0,
        stop: Iterable[str] = (),
        timeout: Timeout = "default",
    ) -> AsyncGenerateStream:
        """See :meth:`icae_client.IcaeClient.generate`; iterate the stream with
        ``async for`` (not a coroutine: no ``await`` before it)."""
        request = _requests.generate_request(
            slots,
            mode=mode,
            prompt=prompt,
            baseline_text=baseline_text,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        if not self._targets["decoder"]:
            raise InvalidArgument("no decoder address was given to IcaeClient")
        return AsyncGenerateStream(self, request, self._deadline(timeout))

    async def generate_once(
        self,
        slots: SlotSource | Iterable[SlotSource] | None = None,
        *,
        mode: ModeLike = "answer",
        prompt: str = "",
        baseline_text: str | None = None,
        max_new_tokens: int = 0,
        greedy: bool | None = None,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        seed: int = 0,
        stop: Iterable[str] = (),
        timeout: Timeout = "default",
    ) -> GenerateResult:
        """See :meth:`icae_client.IcaeClient.generate_once`."""
        request = _requests.generate_request(
            slots,
            mode=mode,
            prompt=prompt,
            baseline_text=baseline_text,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
        )
        response: pb.GenerateOnceResponse = await self._call(
            "decoder",
            lambda stub, t: stub.GenerateOnce(request, timeout=t, metadata=self._metadata),
            timeout,
        )
        return GenerateResult.from_proto(response)


#: The same class under a name that cannot be confused with the sync client.
AsyncIcaeClient = IcaeClient


class AsyncGenerateStream(StreamState):
    """An asyncio Generate call; as :class:`icae_client.GenerateStream`, with ``async
    for`` (text deltas), :meth:`deltas`, ``await`` :meth:`result`, :meth:`cancel` and
    ``async with``."""

    def __init__(self, client: IcaeClient, request: pb.GenerateRequest, timeout: float | None):
        super().__init__(request, timeout)
        self._client = client
        self._deltas = self._run()

    async def _open(self) -> tuple[Any, Any]:
        """Start the call and read its first message, retried until one arrives."""
        attempts = Attempts(self._client._stubs("decoder"), self._client.policy, self._timeout)
        while True:
            call = attempts.client.Generate(
                self._request, timeout=attempts.remaining(), metadata=self._client._metadata
            )
            self._call = call
            if self._cancelled:
                call.cancel()
            try:
                return call, await call.read()
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            except asyncio.CancelledError:
                if self._cancelled:
                    return None, grpc.aio.EOF
                raise
            if self._cancelled:
                return None, grpc.aio.EOF
            delay = attempts.failed(error)
            if delay:
                await asyncio.sleep(delay)

    async def _run(self) -> AsyncIterator[TokenDelta]:
        if self._cancelled:
            return
        try:
            call, message = await self._open()
            while message is not grpc.aio.EOF:
                delta = self._receive(message)
                if delta is not None:
                    yield delta
                message = await call.read()
        except grpc.RpcError as rpc_error:
            self._failed(rpc_error)
            return
        except asyncio.CancelledError:
            # grpc.aio raises this from read() once the call was cancelled.
            if self._cancelled:
                return
            raise
        finally:
            self._done = True
        self._ended()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._texts_only()

    async def _texts_only(self) -> AsyncIterator[str]:
        async for delta in self._deltas:
            if delta.text:
                yield delta.text

    def deltas(self) -> AsyncIterator[TokenDelta]:
        """The rest of the stream as :class:`~icae_client.TokenDelta` values."""
        return self._deltas

    async def result(self) -> GenerateResult:
        """Read the rest of the stream and return the whole generation."""
        async for _ in self._deltas:
            pass
        return self._whole()

    async def __aenter__(self) -> AsyncGenerateStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._should_cancel_on_exit():
            self.cancel()
        await self._deltas.aclose()
