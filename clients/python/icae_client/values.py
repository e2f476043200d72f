"""The values `icae_client` returns: small frozen dataclasses, not protobuf messages, so
that they compare, print and pickle like plain data. ``from_proto`` builds each from its
message; :meth:`SlotHandle.to_proto` goes back. Times are the standard library's: a
``google.protobuf.Timestamp`` is a timezone-aware :class:`~datetime.datetime` (UTC), a
``google.protobuf.Duration`` a :class:`~datetime.timedelta`."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass, field

from ._proto.icae.v1 import icae_pb2 as pb

__all__ = [
    "Mode",
    "FinishReason",
    "Timings",
    "SlotHandle",
    "TokenDelta",
    "GenerateFinal",
    "GenerateResult",
]


class Mode(str, enum.Enum):
    """What the decoder does with the slots (a ``str``: ``Mode.ANSWER == "answer"``)."""

    #: Reconstruct the original text.
    AUTOENCODE = "autoencode"
    #: Continue the text.
    CONTINUE = "continue"
    #: Answer the prompt about the text (needs a prompt).
    ANSWER = "answer"

    def to_proto(self) -> pb.Mode.ValueType:
        return {
            Mode.AUTOENCODE: pb.MODE_AUTOENCODE,
            Mode.CONTINUE: pb.MODE_CONTINUE,
            Mode.ANSWER: pb.MODE_ANSWER,
        }[self]


class FinishReason(str, enum.Enum):
    """Why generation stopped (a ``str``: ``FinishReason.LENGTH == "length"``)."""

    UNSPECIFIED = "unspecified"
    #: The model produced an end-of-sequence token.
    EOS = "eos"
    #: max_new_tokens was reached.
    LENGTH = "length"
    #: A stop string appeared (it is not part of the text).
    STOP = "stop"

    @classmethod
    def from_proto(cls, value: int) -> FinishReason:
        return {
            pb.FINISH_REASON_EOS: cls.EOS,
            pb.FINISH_REASON_LENGTH: cls.LENGTH,
            pb.FINISH_REASON_STOP: cls.STOP,
        }.get(value, cls.UNSPECIFIED)


def _timedelta(message: pb.Timings, name: str) -> datetime.timedelta | None:
    return getattr(message, name).ToTimedelta() if message.HasField(name) else None


@dataclass(frozen=True)
class Timings:
    """Time spent in each stage of a request, as the server measured it, as
    :class:`~datetime.timedelta` (``.total_seconds()`` for a float). ``None`` for a stage
    the service does not have: the encoder's ``time_to_first_token``, the decoder's
    ``tokenize_duration``."""

    #: Waiting for the model.
    queue_duration: datetime.timedelta | None = None
    #: Turning texts into token ids (encoder).
    tokenize_duration: datetime.timedelta | None = None
    #: Redis: looking slots up and storing them (encoder), reading them (decoder).
    store_duration: datetime.timedelta | None = None
    #: The model's work on the request.
    model_duration: datetime.timedelta | None = None
    #: From entering the model's queue to the first generated token (decoder).
    time_to_first_token: datetime.timedelta | None = None
    #: The whole call, as the server saw it.
    total_duration: datetime.timedelta | None = None

    @classmethod
    def from_proto(cls, message: pb.Timings) -> Timings:
        return cls(
            queue_duration=_timedelta(message, "queue_duration"),
            tokenize_duration=_timedelta(message, "tokenize_duration"),
            store_duration=_timedelta(message, "store_duration"),
            model_duration=_timedelta(message, "model_duration"),
            time_to_first_token=_timedelta(message, "time_to_first_token"),
            total_duration=_timedelta(message, "total_duration"),
        )


@dataclass(frozen=True)
class SlotHandle:
    """A reference to stored memory slots, as ``Encoder.Compress`` returns it.

    Pass it (or just its ``key``) to ``generate``/``generate_once``. ``slots`` holds the
    stored value itself (safetensors bytes) only when ``compress(return_slots=True)``.
    """

    #: Redis key of the slots: ``[namespace:]icae:v1:{fingerprint}:{sha256}[-s..][-r..]``.
    key: str
    num_slots: int = 0
    num_tokens: int = 0
    num_segments: int = 0
    model_fingerprint: str = ""
    #: When the key expires (timezone-aware, UTC): when the slots were stored, or
    #: refreshed by a cache hit, plus the TTL.
    expire_time: datetime.datetime | None = None
    #: True when the slots were already stored and not recomputed.
    cache_hit: bool = False
    #: Reconstruction loss (nats per token) of the stored slots, when measured.
    reconstruction_loss: float | None = None
    #: Refinement steps run on these slots.
    refine_steps: int = 0
    #: The slot value (safetensors bytes), only when asked for with ``return_slots``.
    slots: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_proto(cls, message: pb.SlotHandle, slots: bytes | None = None) -> SlotHandle:
        return cls(
            key=message.key,
            num_slots=message.num_slots,
            num_tokens=message.num_tokens,
            num_segments=message.num_segments,
            model_fingerprint=message.model_fingerprint,
            expire_time=(
                message.expire_time.ToDatetime(tzinfo=datetime.timezone.utc)
                if message.HasField("expire_time")
                else None
            ),
            cache_hit=message.cache_hit,
            reconstruction_loss=(
                message.reconstruction_loss if message.HasField("reconstruction_loss") else None
            ),
            refine_steps=message.refine_steps,
            slots=slots,
        )

    def to_proto(self) -> pb.SlotHandle:
        message = pb.SlotHandle(
            key=self.key,
            num_slots=self.num_slots,
            num_tokens=self.num_tokens,
            num_segments=self.num_segments,
            model_fingerprint=self.model_fingerprint,
            cache_hit=self.cache_hit,
            refine_steps=self.refine_steps,
        )
        if self.expire_time is not None:
            message.expire_time.FromDatetime(self.expire_time)
        if self.reconstruction_loss is not None:
            message.reconstruction_loss = self.reconstruction_loss
        return message


@dataclass(frozen=True)
class TokenDelta:
    """Newly generated tokens and the text they complete (text may be empty while it is
    held back: a possible stop string or an incomplete UTF-8 character)."""

    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class GenerateFinal:
    """The last message of a Generate stream."""

    finish_reason: FinishReason
    #: Positions the decoder read before generating (slots, special tokens, prompt).
    prompt_positions: int
    generated_tokens: int
    timings: Timings

    @classmethod
    def from_proto(cls, message: pb.GenerateFinal) -> GenerateFinal:
        return cls(
            finish_reason=FinishReason.from_proto(message.finish_reason),
            prompt_positions=message.prompt_positions,
            generated_tokens=message.generated_tokens,
            timings=Timings.from_proto(message.timings),
        )


@dataclass(frozen=True)
class GenerateResult:
    """A whole generation: what ``generate_once`` returns, and ``GenerateStream.result()``."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    prompt_positions: int
    timings: Timings

    @property
    def generated_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def from_proto(cls, message: pb.GenerateOnceResponse) -> GenerateResult:
        return cls(
            text=message.text,
            token_ids=tuple(message.token_ids),
            finish_reason=FinishReason.from_proto(message.finish_reason),
            prompt_positions=message.prompt_positions,
            timings=Timings.from_proto(message.timings),
        )
