"""Which failed calls are sent again, and when: the policy of the Rust client
(`client/src/retry.rs`, `client/src/replicas.rs`).

A call that never reached a server (its connection could not be made) goes to the next
replica at once, whatever the policy, each replica once per call. A call that may have
reached one is sent again only when it failed with UNAVAILABLE (unreachable, loading,
draining), up to ``RetryPolicy.attempts`` calls in all, waiting ``initial_backoff`` before
the first retry and twice as long (at most ``max_backoff``) before each later one. Sending
again is safe for Compress (content-addressed: the same document is stored under the same
key) and for GenerateOnce and a Generate stream before its first message (generation
changes nothing); a stream that has shown tokens is never started again. Nothing else is
retried: a refused request fails the same way again.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

__all__ = ["RetryPolicy", "Failure", "Step", "classify", "next_step", "Replicas", "Attempts"]

#: How long a replica that could not be reached or serve is left out of the rotation.
LEFT_OUT_SECONDS = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `attempts` calls in all (1: no retry of a call a server may have seen), each
    on the next replica, with exponential backoff between them."""

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoffs must be >= 0 and the multiplier >= 1")

    @classmethod
    def none(cls) -> RetryPolicy:
        """One attempt: a server's error is raised as it comes (a call that never reached a
        server still goes to another replica, when there is one)."""
        return cls(attempts=1)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        return min(self.initial_backoff * self.multiplier ** (retry - 1), self.max_backoff)


class Failure(enum.Enum):
    """What a failed call allows."""

    #: No server saw it: safe to send anywhere, for any call.
    NEVER_SENT = "never_sent"
    #: A server may have seen it; sending again is the policy's decision.
    RETRYABLE = "retryable"
    #: The answer: sending again would fail the same way.
    FINAL = "final"


# grpc-core's words for a call that failed before any connection was up.
_UNSENT_MARKERS = ("failed to connect", "connection refused", "connect failed")


def classify(code: grpc.StatusCode, message: str = "", debug: str | None = None) -> Failure:
    """The :class:`Failure` of a call that ended with `code` and `message`."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return Failure.FINAL
    text = f"{message}\n{debug or ''}".lower()
    if any(marker in text for marker in _UNSENT_MARKERS):
        return Failure.NEVER_SENT
    return Failure.RETRYABLE


class Step(enum.Enum):
    """What to do after a failed attempt."""

    #: Send it to the next replica now (it never reached a server).
    NEXT_REPLICA = "next_replica"
    #: Wait the policy's backoff, then send it to the next replica.
    BACKOFF = "backoff"
    #: Raise the error.
    GIVE_UP = "give_up"


def next_step(
    failure: Failure, *, attempt: int, unsent: int, replicas: int, policy: RetryPolicy
) -> Step:
    """The decision after attempt number `attempt` (from 1) failed with `failure`, when
    `unsent` earlier attempts of this call never reached a server, out of `replicas`."""
    if failure is Failure.NEVER_SENT and unsent + 1 < replicas:
        return Step.NEXT_REPLICA
    if failure is not Failure.FINAL and attempt < policy.attempts:
        return Step.BACKOFF
    return Step.GIVE_UP


T = TypeVar("T")


class Replicas(Generic[T]):
    """Clients of several replicas of one service, used in turn (round robin); a replica
    that could not be reached or answered UNAVAILABLE is left out for a second."""

    def __init__(self, clients: Sequence[T]):
        if not clients:
            raise ValueError("at least one replica address is needed")
        self.clients = list(clients)
        self._next = 0
        self._left_out_until = [0.0] * len(self.clients)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.clients)

    def first(self) -> int:
        """The replica a new call starts on."""
        with self._lock:
            start = self._next % len(self.clients)
            self._next += 1
        return self.after(start, include=True)

    def after(self, replica: int, *, include: bool = False) -> int:
        """The first replica in the rotation after `replica` (or `replica` itself with
        `include`) that is not left out; all left out: the rotation's own."""
        now = time.monotonic()
        n = len(self.clients)
        start = replica if include else (replica + 1) % n
        with self._lock:
            for step in range(n):
                candidate = (start + step) % n
                if self._left_out_until[candidate] <= now:
                    return candidate
        return start

    def leave_out(self, replica: int) -> None:
        with self._lock:
            self._left_out_until[replica] = time.monotonic() + LEFT_OUT_SECONDS


class Attempts(Generic[T]):
    """The attempts of one call: which replica each goes to, how long it may take (the
    call's deadline covers all of them) and, after a failure, whether and when to retry.

    Used by the sync and the async client alike::

        attempts = Attempts(replicas, policy, timeout)
        while True:
            try:
                return call(attempts.client, attempts.remaining())
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            sleep(attempts.failed(error))  # raises `error` when the call is given up
    """

    def __init__(self, replicas: Replicas[T], policy: RetryPolicy, timeout: float | None):
        self.replicas = replicas
        self.policy = policy
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.replica = replicas.first()
        self.attempt = 1
        self.unsent = 0

    @property
    def client(self) -> T:
        return self.replicas.clients[self.replica]

    def remaining(self) -> float | None:
        """Seconds left for this attempt (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.001)

    def failed(self, error: BaseException) -> float:
        """Record a failed attempt: the seconds to wait before the next one (then
        :attr:`client` is its replica), or raise `error` when the call is given up."""
        code = getattr(error, "code", grpc.StatusCode.UNKNOWN)
        failure = classify(code, getattr(error, "message", ""), getattr(error, "debug", None))
        if failure is not Failure.FINAL:
            self.replicas.leave_out(self.replica)
        step = next_step(
            failure,
            attempt=self.attempt,
            unsent=self.unsent,
            replicas=len(self.replicas),
            policy=self.policy,
        )
        delay = 0.0
        if step is Step.NEXT_REPLICA:
            self.unsent += 1
        elif step is Step.BACKOFF:
            delay = self.policy.backoff(self.attempt)
            if self.deadline is not None and time.monotonic() + delay >= self.deadline:
                raise error
            self.attempt += 1
        else:
            raise error
        self.replica = self.replicas.after(self.replica)
        return delay
