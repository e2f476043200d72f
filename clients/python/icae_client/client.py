"""The synchronous client: :class:`IcaeClient` and its :class:`GenerateStream`."""

from __future__ import annotations

import datetime
import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, TypeVar

import grpc

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
from .errors import InvalidArgument, from_rpc_error
from .retry import Attempts, Replicas, RetryPolicy
from .values import GenerateResult, SlotHandle, TokenDelta

__all__ = ["IcaeClient", "GenerateStream"]

S = TypeVar("S")
R = TypeVar("R")


def retry_policy(retries: int | RetryPolicy) -> RetryPolicy:
    """An int is the number of retries (0: none); a :class:`RetryPolicy` is used as it is."""
    if isinstance(retries, RetryPolicy):
        return retries
    if retries < 0:
        raise ValueError("retries must be >= 0")
    return RetryPolicy(attempts=retries + 1)


class IcaeClient:
    """A client of encoder-svc and decoder-svc.

    Args:
        encoder: address of encoder-svc, ``"host:port"`` (``https://host:port`` turns TLS
            on), or a list of replica addresses used in turn. Needed for :meth:`compress`.
        decoder: the same for decoder-svc. Needed for :meth:`generate` and
            :meth:`generate_once`.
        tls: False/None: plaintext; True: TLS with the system's roots; a :class:`Tls` for a
            private CA, a client certificate (mTLS) or a server name override.
        token: bearer token, sent as ``authorization: Bearer <token>`` with every call
            (in clear text unless TLS is on).
        timeout: default deadline of each call in seconds, retries included (None: none);
            every method takes its own ``timeout`` too.
        retries: how many times a call that failed with UNAVAILABLE is sent again (an int),
            or a :class:`RetryPolicy` (attempts and exponential backoff). Default: 4 retries,
            0.1 s backoff doubling up to 1 s.
        metadata: extra gRPC metadata sent with every call.
        max_receive_bytes: the largest response accepted (slot values returned inline with
            ``return_slots`` can be large).

    Use it as a context manager, or call :meth:`close`, to close its channels.
    """

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
        self._channels: list[grpc.Channel] = []
        self._encoders = self._replicas(encoder, tls, max_receive_bytes, pb_grpc.EncoderServiceStub)
        self._decoders = self._replicas(decoder, tls, max_receive_bytes, pb_grpc.DecoderServiceStub)

    def _replicas(
        self,
        value: str | Sequence[str] | None,
        tls: bool | Tls | None,
        max_receive_bytes: int,
        stub: Callable[[grpc.Channel], S],
    ) -> Replicas[S] | None:
        urls = addresses(value)
        if not urls:
            return None
        stubs = []
        for url in urls:
            target, settings = split_address(url, tls)
            channel = open_channel(grpc, target, settings, max_receive_bytes)
            self._channels.append(channel)
            stubs.append(stub(channel))
        return Replicas(stubs)

    # ------------------------------------------------------------------ plumbing

    def _call(
        self,
        replicas: Replicas[S] | None,
        service: str,
        call: Callable[[S, float | None], R],
        timeout: float | None | Literal["default"],
    ) -> R:
        if replicas is None:
            raise InvalidArgument(f"no {service} address was given to IcaeClient")
        attempts = Attempts(replicas, self.policy, self._deadline(timeout))
        while True:
            try:
                return call(attempts.client, attempts.remaining())
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            delay = attempts.failed(error)
            if delay:
                time.sleep(delay)

    def _deadline(self, timeout: float | None | Literal["default"]) -> float | None:
        return self.timeout if timeout == "default" else timeout

    def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> IcaeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ encoder

    def compress(
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
        timeout: float | None | Literal["default"] = "default",
    ) -> list[SlotHandle]:
        """Compress documents into memory slots stored by the encoder.

        Args:
            documents: one text, or a list of documents, each a text or a list of token ids
                of the base vocabulary.
            ttl_seconds: time to live of the stored slots in whole seconds (0: the server's
                default, ``Info.limits.default_ttl``); at most 30 days.
            ttl: the same as a :class:`datetime.timedelta` (whole seconds), instead of
                ``ttl_seconds``. The server refuses a fraction of a second, zero, a negative
                or a longer TTL with :class:`~icae_client.InvalidArgument`.
            namespace: optional tenant namespace prefixed to the keys.
            return_slots: also return each slot value (safetensors bytes) in
                :attr:`SlotHandle.slots`.
            refine_steps: test-time refinement steps (0: plain ICAE).
            target_loss: stop refining a document once its reconstruction loss is this low.
            reconstruction_loss: also measure the reconstruction loss of plain slots.
            slots_per_segment: fewer slots per segment than the adapter's (0: the adapter's).
            timeout: deadline in seconds (None: none); by default the client's.

        Returns:
            One :class:`SlotHandle` per document, in order. Retried on UNAVAILABLE
            (Compress is content-addressed, so sending it again is safe).

        Raises:
            IcaeError: e.g. :class:`~icae_client.InvalidArgument` for an empty document.
        """
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
        response: pb.CompressResponse = self._call(
            self._encoders,
            "encoder",
            lambda stub, t: stub.Compress(request, timeout=t, metadata=self._metadata),
            timeout,
        )
        return [
            SlotHandle.from_proto(doc.handle, doc.slots if return_slots else None)
            for doc in response.documents
        ]

    def encoder_info(
        self, *, timeout: float | None | Literal["default"] = "default"
    ) -> pb.InfoResponse:
        """The encoder's model, adapter, fingerprint and limits (the proto message)."""
        return self._call(
            self._encoders,
            "encoder",
            lambda stub, t: stub.Info(pb.InfoRequest(), timeout=t, metadata=self._metadata),
            timeout,
        )

    # ------------------------------------------------------------------ decoder

    def decoder_info(
        self, *, timeout: float | None | Literal["default"] = "default"
    ) -> pb.InfoResponse:
        """The decoder's model, adapter, limits and active sequences (the proto message)."""
        return self._call(
            self._decoders,
            "decoder",
            lambda stub, t: stub.Info(pb.InfoRequest(), timeout=t, metadata=self._metadata),
            timeout,
        )

    def info(
        self,
        service: Literal["encoder", "decoder"],
        *,
        timeout: float | None | Literal["default"] = "default",
    ) -> pb.InfoResponse:
        """:meth:`encoder_info` or :meth:`decoder_info`."""
        if service == "encoder":
            return self.encoder_info(timeout=timeout)
        if service == "decoder":
            return self.decoder_info(timeout=timeout)
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
        timeout: float | None | Literal["default"] = "default",
    ) -> GenerateStream:
        """Generate text from stored slots, streamed.

        Args:
            slots: what the model reads: a :class:`SlotHandle` from :meth:`compress`, its
                key, or a slot value (bytes), or a list of them (concatenated in order).
            mode: ``"answer"`` (needs `prompt`), ``"autoencode"`` or ``"continue"`` (or a
                :class:`~icae_client.Mode`).
            prompt: the instruction or question (``"answer"``).
            baseline_text: the uncompressed document instead of `slots` (a baseline).
            max_new_tokens: tokens to generate (0: the server's default).
            greedy: True: greedy decoding (the default when no temperature is given);
                False: sampling at `temperature` (default 1.0).
            temperature, top_k, top_p, seed, stop: the proto's ``Sampling`` fields.
            timeout: deadline of the whole stream in seconds (None: none).

        Returns:
            A :class:`GenerateStream`: iterate it for the text deltas (str); then
            :attr:`GenerateStream.final` holds the finish reason and token counts, or call
            :meth:`GenerateStream.result` for everything at once. The call is made when
            iteration starts, and is retried on UNAVAILABLE only until its first message.
        """
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
        if self._decoders is None:
            raise InvalidArgument("no decoder address was given to IcaeClient")
        return GenerateStream(self, request, self._deadline(timeout))

    def generate_once(
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
        timeout: float | None | Literal["default"] = "default",
    ) -> GenerateResult:
        """The same as :meth:`generate`, answered once at the end: a
        :class:`GenerateResult` with ``.text``, ``.token_ids`` and ``.finish_reason``.
        Retried on UNAVAILABLE."""
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
        response: pb.GenerateOnceResponse = self._call(
            self._decoders,
            "decoder",
            lambda stub, t: stub.GenerateOnce(request, timeout=t, metadata=self._metadata),
            timeout,
        )
        return GenerateResult.from_proto(response)


class GenerateStream(StreamState, Iterator[str]):
    """A Generate call: iterate it for the text deltas.

    :meth:`deltas` iterates the same stream as :class:`~icae_client.TokenDelta` (token ids
    and text, including deltas whose text is held back). :attr:`final` is set when the
    stream ends; :meth:`result` reads the rest of it and returns a
    :class:`~icae_client.GenerateResult`. :meth:`cancel` (or leaving a ``with`` block
    early) cancels the call, which frees its sequence on the decoder; iteration then ends.
    """

    def __init__(self, client: IcaeClient, request: pb.GenerateRequest, timeout: float | None):
        super().__init__(request, timeout)
        self._client = client
        self._deltas = self._run()

    def _open(self) -> tuple[Iterator[pb.GenerateResponse], pb.GenerateResponse | None]:
        """Start the call and read its first message, retried until one arrives."""
        assert self._client._decoders is not None
        attempts = Attempts(self._client._decoders, self._client.policy, self._timeout)
        while True:
            call = attempts.client.Generate(
                self._request, timeout=attempts.remaining(), metadata=self._client._metadata
            )
            self._call = call
            if self._cancelled:
                call.cancel()
            try:
                return call, next(call, None)
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            if self._cancelled:
                return iter(()), None
            delay = attempts.failed(error)
            if delay:
                time.sleep(delay)

    def _run(self) -> Iterator[TokenDelta]:
        if self._cancelled:
            return
        call, first = self._open()
        messages = itertools.chain([first] if first is not None else [], call)
        try:
            for message in messages:
                delta = self._receive(message)
                if delta is not None:
                    yield delta
        except grpc.RpcError as rpc_error:
            self._failed(rpc_error)
            return
        finally:
            self._done = True
        self._ended()

    def __iter__(self) -> GenerateStream:
        return self

    def __next__(self) -> str:
        while True:
            delta = next(self._deltas)
            if delta.text:
                return delta.text

    def deltas(self) -> Iterator[TokenDelta]:
        """The rest of the stream as :class:`~icae_client.TokenDelta` values."""
        return self._deltas

    def result(self) -> GenerateResult:
        """Read the rest of the stream and return the whole generation."""
        for _ in self._deltas:
            pass
        return self._whole()

    def __enter__(self) -> GenerateStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._should_cancel_on_exit():
            self.cancel()
        self._deltas.close()
