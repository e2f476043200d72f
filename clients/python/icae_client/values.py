"""The values `icae_client` returns: small frozen dataclasses, not protobuf messages, so
that they compare, print and pickle like plain data. ``from_proto`` builds each from its
message; :meth:`SlotHandle.to_proto` goes back."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each stage of a request (0 for stages it did not have)."""

    queue_seconds: float = 0.0
    tokenize_seconds: float = 0.0
    store_seconds: float = 0.0
    model_seconds: float = 0.0
    time_to_first_token_seconds: float = 0.0
    total_seconds: float = 0.0

    @classmethod
    def from_proto(cls, message: pb.Timings) -> Timings:
        return cls(
            queue_seconds=message.queue_seconds,
            tokenize_seconds=message.tokenize_seconds,
            store_seconds=message.store_seconds,
            model_seconds=message.model_seconds,
            time_to_first_token_seconds=message.time_to_first_token_seconds,
            total_seconds=message.total_seconds,
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
    #: Unix time (seconds) at which the key expires.
    expires_at_unix: int = 0
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
            expires_at_unix=message.expires_at_unix,
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
            expires_at_unix=self.expires_at_unix,
            cache_hit=self.cache_hit,
            refine_steps=self.refine_steps,
        )
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
