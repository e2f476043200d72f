"""Building the protobuf requests from the client's arguments (shared by the sync and
async clients)."""

from __future__ import annotations

import datetime
import operator
from collections.abc import Iterable, Sequence

from google.protobuf import duration_pb2

from ._proto.icae.v1 import icae_pb2 as pb
from .errors import InvalidArgument
from .values import Mode, SlotHandle

#: One document: text, or token ids of the base vocabulary.
Document = str | Sequence[int]
#: Slots to read: a handle from ``compress``, its key, or a slot value (bytes) inline.
SlotSource = SlotHandle | pb.SlotHandle | str | bytes
ModeLike = Mode | str | int


def compress_request(
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
) -> pb.CompressRequest:
    if isinstance(documents, str):
        documents = [documents]
    docs = []
    for document in documents:
        if isinstance(document, str):
            docs.append(pb.Document(text=document))
        elif isinstance(document, (bytes, bytearray)):
            raise InvalidArgument("a document is text (str) or token ids, not bytes")
        else:
            try:
                ids = [int(token) for token in document]
            except (TypeError, ValueError) as error:
                raise InvalidArgument(
                    f"a document is text (str) or a sequence of token ids, not {document!r}"
                ) from error
            docs.append(pb.Document(token_ids=pb.TokenIds(ids=ids)))
    options = pb.CompressOptions(
        namespace=namespace,
        return_slots=return_slots,
        refine_steps=refine_steps,
        reconstruction_loss=reconstruction_loss,
        slots_per_segment=slots_per_segment,
    )
    if target_loss is not None:
        options.target_loss = target_loss
    requested_ttl = slot_ttl(ttl_seconds, ttl)
    if requested_ttl is not None:
        options.ttl.CopyFrom(requested_ttl)
    return pb.CompressRequest(documents=docs, options=options)


def slot_ttl(ttl_seconds: int, ttl: datetime.timedelta | None) -> duration_pb2.Duration | None:
    """``CompressOptions.ttl`` from either keyword; None (the server's default) for neither
    or ``ttl_seconds=0``. The server checks the value (whole seconds, 1 s to 30 days)."""
    if ttl is not None:
        if ttl_seconds:
            raise InvalidArgument("give ttl or ttl_seconds, not both")
        if not isinstance(ttl, datetime.timedelta):
            raise InvalidArgument(f"ttl is a datetime.timedelta, not {ttl!r}")
        duration = duration_pb2.Duration()
        duration.FromTimedelta(ttl)
        return duration
    try:
        seconds = operator.index(ttl_seconds)
    except TypeError:
        raise InvalidArgument(
            f"ttl_seconds is a whole number of seconds (int), not {ttl_seconds!r}; "
            "give ttl=datetime.timedelta(...) instead"
        ) from None
    if seconds == 0:
        return None
    duration = duration_pb2.Duration()
    duration.seconds = seconds
    return duration


def slot_ref(source: SlotSource) -> pb.SlotRef:
    if isinstance(source, str):
        return pb.SlotRef(key=source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return pb.SlotRef(inline_slots=bytes(source))
    if isinstance(source, (SlotHandle, pb.SlotHandle)):
        return pb.SlotRef(key=source.key)
    raise InvalidArgument(
        f"slots are named by a SlotHandle, a key (str) or a slot value (bytes), not {source!r}"
    )


def mode_value(mode: ModeLike) -> pb.Mode.ValueType:
    if isinstance(mode, Mode):
        return mode.to_proto()
    if isinstance(mode, str):
        try:
            return Mode(mode.lower()).to_proto()
        except ValueError:
            raise InvalidArgument(
                f"unknown mode {mode!r}: expected 'answer', 'autoencode' or 'continue'"
            ) from None
    if isinstance(mode, int):
        return mode  # a pb.Mode value, sent as given
    raise InvalidArgument(f"unknown mode {mode!r}")


def generate_request(
    slots: SlotSource | Iterable[SlotSource] | None,
    *,
    mode: ModeLike,
    prompt: str = "",
    baseline_text: str | None = None,
    max_new_tokens: int = 0,
    greedy: bool | None = None,
    temperature: float | None = None,
    top_k: int = 0,
    top_p: float = 0.0,
    seed: int = 0,
    stop: Iterable[str] = (),
) -> pb.GenerateRequest:
    if isinstance(stop, str):
        stop = [stop]
    if greedy and temperature:
        raise InvalidArgument("greedy=True and a temperature above 0 contradict each other")
    if temperature is None:
        temperature = 1.0 if greedy is False else 0.0
    sampling = pb.Sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=list(stop),
    )
    request = pb.GenerateRequest(mode=mode_value(mode), prompt=prompt, sampling=sampling)
    if baseline_text is not None:
        if slots is not None:
            raise InvalidArgument("give slots or baseline_text, not both")
        request.baseline_text = baseline_text
        return request
    if slots is None:
        raise InvalidArgument("generate needs slots (handles or keys) or baseline_text")
    if isinstance(slots, (SlotHandle, pb.SlotHandle, str, bytes, bytearray, memoryview)):
        slots = [slots]
    request.slots.CopyFrom(pb.SlotList(items=[slot_ref(source) for source in slots]))
    return request
