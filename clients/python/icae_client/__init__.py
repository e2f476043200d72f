"""Python client of the ICAE services (encoder-svc, decoder-svc), API ``icae.v1``.

::

    from icae_client import IcaeClient

    with IcaeClient(encoder="host:50051", decoder="host:50052") as client:
        handles = client.compress(["long document ..."], ttl_seconds=600)
        for delta in client.generate(handles, mode="answer", prompt="Who?", max_new_tokens=64):
            print(delta, end="")
        result = client.generate_once(handles, mode="autoencode", max_new_tokens=200)
        print(result.text, result.finish_reason)

Every failed call raises an :class:`IcaeError` (a subclass per status code) with ``.code``
(a :class:`grpc.StatusCode`) and ``.message``. :mod:`icae_client.aio` has the same client
for asyncio. The generated protobuf modules are :mod:`icae_client.icae_pb2` and
:mod:`icae_client.icae_pb2_grpc`.
"""

from ._connect import Tls
from ._proto.icae.v1 import icae_pb2, icae_pb2_grpc
from .client import GenerateStream, IcaeClient
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    IcaeError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from .retry import RetryPolicy
from .values import (
    FinishReason,
    GenerateFinal,
    GenerateResult,
    Mode,
    SlotHandle,
    Timings,
    TokenDelta,
)

__version__ = "0.1.0"

__all__ = [
    "IcaeClient",
    "GenerateStream",
    "Tls",
    "RetryPolicy",
    "SlotHandle",
    "GenerateResult",
    "GenerateFinal",
    "TokenDelta",
    "Timings",
    "Mode",
    "FinishReason",
    "IcaeError",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "icae_pb2",
    "icae_pb2_grpc",
    "__version__",
]
