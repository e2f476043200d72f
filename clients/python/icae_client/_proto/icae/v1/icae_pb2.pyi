import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_AUTOENCODE: _ClassVar[Mode]
    MODE_CONTINUE: _ClassVar[Mode]
    MODE_ANSWER: _ClassVar[Mode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
MODE_UNSPECIFIED: Mode
MODE_AUTOENCODE: Mode
MODE_CONTINUE: Mode
MODE_ANSWER: Mode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP: FinishReason

class CompressRequest(_message.Message):
    __slots__ = ("documents", "options")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    options: CompressOptions
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., options: _Optional[_Union[CompressOptions, _Mapping]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("text", "token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: TokenIds
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class CompressOptions(_message.Message):
    __slots__ = ("ttl", "namespace", "return_slots", "refine_steps", "target_loss", "reconstruction_loss", "slots_per_segment")
    TTL_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RETURN_SLOTS_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    TARGET_LOSS_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_PER_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    ttl: _duration_pb2.Duration
    namespace: str
    return_slots: bool
    refine_steps: int
    target_loss: float
    reconstruction_loss: bool
    slots_per_segment: int
    def __init__(self, ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., namespace: _Optional[str] = ..., return_slots: _Optional[bool] = ..., refine_steps: _Optional[int] = ..., target_loss: _Optional[float] = ..., reconstruction_loss: _Optional[bool] = ..., slots_per_segment: _Optional[int] = ...) -> None: ...

class SlotHandle(_message.Message):
    __slots__ = ("key", "num_slots", "num_tokens", "num_segments", "model_fingerprint", "expire_time", "cache_hit", "reconstruction_loss", "refine_steps")
    KEY_FIELD_NUMBER: _ClassVar[int]
    NUM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_LOSS_FIELD_NUMBER: _ClassVar[int]
    REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    key: str
    num_slots: int
    num_tokens: int
    num_segments: int
    model_fingerprint: str
    expire_time: _timestamp_pb2.Timestamp
    cache_hit: bool
    reconstruction_loss: float
    refine_steps: int
    def __init__(self, key: _Optional[str] = ..., num_slots: _Optional[int] = ..., num_tokens: _Optional[int] = ..., num_segments: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cache_hit: _Optional[bool] = ..., reconstruction_loss: _Optional[float] = ..., refine_steps: _Optional[int] = ...) -> None: ...

class CompressedDocument(_message.Message):
    __slots__ = ("handle", "slots")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    handle: SlotHandle
    slots: bytes
    def __init__(self, handle: _Optional[_Union[SlotHandle, _Mapping]] = ..., slots: _Optional[bytes] = ...) -> None: ...

class CompressResponse(_message.Message):
    __slots__ = ("documents", "timings")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[CompressedDocument]
    timings: Timings
    def __init__(self, documents: _Optional[_Iterable[_Union[CompressedDocument, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("slots", "baseline_text", "mode", "prompt", "sampling")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_TEXT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    slots: SlotList
    baseline_text: str
    mode: Mode
    prompt: str
    sampling: Sampling
    def __init__(self, slots: _Optional[_Union[SlotList, _Mapping]] = ..., baseline_text: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ...) -> None: ...

class SlotList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SlotRef]
    def __init__(self, items: _Optional[_Iterable[_Union[SlotRef, _Mapping]]] = ...) -> None: ...

class SlotRef(_message.Message):
    __slots__ = ("key", "inline_slots")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INLINE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    inline_slots: bytes
    def __init__(self, key: _Optional[str] = ..., inline_slots: _Optional[bytes] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "final")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    delta: TokenDelta
    final: GenerateFinal
    def __init__(self, delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., final: _Optional[_Union[GenerateFinal, _Mapping]] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("token_ids", "text")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateFinal(_message.Message):
    __slots__ = ("finish_reason", "prompt_positions", "generated_tokens", "timings")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    prompt_positions: int
    generated_tokens: int
    timings: Timings
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_positions: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class GenerateOnceResponse(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "prompt_positions", "timings")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: FinishReason
    prompt_positions: int
    timings: Timings
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_positions: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_duration", "tokenize_duration", "store_duration", "model_duration", "time_to_first_token", "total_duration")
    QUEUE_DURATION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZE_DURATION_FIELD_NUMBER: _ClassVar[int]
    STORE_DURATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DURATION_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    queue_duration: _duration_pb2.Duration
    tokenize_duration: _duration_pb2.Duration
    store_duration: _duration_pb2.Duration
    model_duration: _duration_pb2.Duration
    time_to_first_token: _duration_pb2.Duration
    total_duration: _duration_pb2.Duration
    def __init__(self, queue_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tokenize_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., store_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., model_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_to_first_token: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("service", "version", "model", "adapter", "adapter_trained", "model_fingerprint", "hidden_size", "mem_size", "compression_rate", "device", "dtype", "limits", "active_sequences", "queue_size", "kv_bytes_per_position", "slot_dtype")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_TRAINED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEM_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_RATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_POSITION_FIELD_NUMBER: _ClassVar[int]
    SLOT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    service: str
    version: str
    model: str
    adapter: str
    adapter_trained: bool
    model_fingerprint: str
    hidden_size: int
    mem_size: int
    compression_rate: int
    device: str
    dtype: str
    limits: Limits
    active_sequences: int
    queue_size: int
    kv_bytes_per_position: int
    slot_dtype: str
    def __init__(self, service: _Optional[str] = ..., version: _Optional[str] = ..., model: _Optional[str] = ..., adapter: _Optional[str] = ..., adapter_trained: _Optional[bool] = ..., model_fingerprint: _Optional[str] = ..., hidden_size: _Optional[int] = ..., mem_size: _Optional[int] = ..., compression_rate: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., active_sequences: _Optional[int] = ..., queue_size: _Optional[int] = ..., kv_bytes_per_position: _Optional[int] = ..., slot_dtype: _Optional[str] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_input_tokens", "max_new_tokens", "max_concurrent_requests", "max_message_bytes", "max_documents_per_request", "max_spans", "default_new_tokens", "max_prompt_tokens", "max_namespace_bytes", "max_stop_strings", "max_stop_string_bytes", "max_request_tokens", "max_input_bytes", "max_prompt_bytes", "max_key_bytes", "max_refine_steps", "max_refine_tokens", "max_slot_read_bytes", "max_request_bytes", "default_ttl", "max_ttl")
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_SPANS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NAMESPACE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_STRINGS_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_STRING_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_KEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_REFINE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOT_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_TTL_FIELD_NUMBER: _ClassVar[int]
    max_input_tokens: int
    max_new_tokens: int
    max_concurrent_requests: int
    max_message_bytes: int
    max_documents_per_request: int
    max_spans: int
    default_new_tokens: int
    max_prompt_tokens: int
    max_namespace_bytes: int
    max_stop_strings: int
    max_stop_string_bytes: int
    max_request_tokens: int
    max_input_bytes: int
    max_prompt_bytes: int
    max_key_bytes: int
    max_refine_steps: int
    max_refine_tokens: int
    max_slot_read_bytes: int
    max_request_bytes: int
    default_ttl: _duration_pb2.Duration
    max_ttl: _duration_pb2.Duration
    def __init__(self, max_input_tokens: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_documents_per_request: _Optional[int] = ..., max_spans: _Optional[int] = ..., default_new_tokens: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_namespace_bytes: _Optional[int] = ..., max_stop_strings: _Optional[int] = ..., max_stop_string_bytes: _Optional[int] = ..., max_request_tokens: _Optional[int] = ..., max_input_bytes: _Optional[int] = ..., max_prompt_bytes: _Optional[int] = ..., max_key_bytes: _Optional[int] = ..., max_refine_steps: _Optional[int] = ..., max_refine_tokens: _Optional[int] = ..., max_slot_read_bytes: _Optional[int] = ..., max_request_bytes: _Optional[int] = ..., default_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
