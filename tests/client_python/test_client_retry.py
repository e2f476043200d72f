"""The retry policy of icae_client (the Rust client's: client/src/retry.rs, replicas.rs):
which failures are sent again, to which replica, after which backoff; a Generate stream is
retried only before its first message. Fake stubs stand in for the servers here; the real
ones are in test_client_services.py."""

import time

import grpc
import pytest

import icae_client
from conftest import free_port
from icae_client import IcaeClient, RetryPolicy, icae_pb2
from icae_client.retry import Attempts, Failure, Replicas, Step, classify, next_step

POLICY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
REFUSED = "failed to connect to all addresses; last error: UNAVAILABLE: Connection refused"


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details="boom"):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def debug_error_string(self):
        return ""


def test_only_unavailable_is_retried_and_refused_connections_never_reached_a_server():
    assert classify(grpc.StatusCode.UNAVAILABLE, "the server is shutting down") == (
        Failure.RETRYABLE
    )
    assert classify(grpc.StatusCode.UNAVAILABLE, REFUSED) == Failure.NEVER_SENT
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
    ):
        assert classify(code, REFUSED) == Failure.FINAL


def test_the_decisions_follow_the_policy():
    def step(failure, attempt=1, unsent=0, replicas=1, policy=POLICY):
        return next_step(failure, attempt=attempt, unsent=unsent, replicas=replicas, policy=policy)

    assert step(Failure.FINAL, replicas=3) == Step.GIVE_UP
    assert step(Failure.RETRYABLE) == Step.BACKOFF
    assert step(Failure.RETRYABLE, attempt=3) == Step.GIVE_UP
    assert step(Failure.RETRYABLE, policy=RetryPolicy.none()) == Step.GIVE_UP
    # Unsent calls try each replica once at once, whatever the policy; then back off.
    assert step(Failure.NEVER_SENT, replicas=3, policy=RetryPolicy.none()) == Step.NEXT_REPLICA
    assert step(Failure.NEVER_SENT, unsent=1, replicas=3) == Step.NEXT_REPLICA
    assert step(Failure.NEVER_SENT, unsent=2, replicas=3) == Step.BACKOFF
    assert step(Failure.NEVER_SENT, unsent=2, replicas=3, policy=RetryPolicy.none()) == (
        Step.GIVE_UP
    )


def test_backoff_doubles_up_to_its_maximum():
    policy = RetryPolicy(attempts=6, initial_backoff=0.1, max_backoff=1.0)
    assert [policy.backoff(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    assert RetryPolicy() == RetryPolicy(attempts=5, initial_backoff=0.1, max_backoff=1.0)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    # `retries=N` is N retries after the first attempt.
    assert IcaeClient(encoder="127.0.0.1:1", retries=0).policy.attempts == 1
    assert IcaeClient(encoder="127.0.0.1:1", retries=2).policy.attempts == 3


def test_calls_go_round_robin_and_an_unavailable_replica_is_left_out():
    replicas = Replicas(["a", "b", "c"])
    assert [replicas.first() for _ in range(4)] == [0, 1, 2, 0]
    replicas.leave_out(1)
    assert replicas.first() == 2  # 1's turn goes to the one after it
    assert replicas.after(0) == 2
    with pytest.raises(ValueError):
        Replicas([])


def test_attempts_retry_on_the_next_replica_then_give_up_with_the_last_error():
    attempts = Attempts(Replicas(["a", "b"]), POLICY, timeout=10)
    tried = [attempts.client]
    draining = icae_client.Unavailable("shutting down")
    assert attempts.failed(draining) == pytest.approx(0.01)
    tried.append(attempts.client)
    assert attempts.failed(draining) == pytest.approx(0.02)
    tried.append(attempts.client)
    with pytest.raises(icae_client.Unavailable):
        attempts.failed(draining)
    assert tried == ["a", "b", "a"]
    refused = Attempts(Replicas(["a", "b"]), POLICY, timeout=10)
    with pytest.raises(icae_client.InvalidArgument):
        refused.failed(icae_client.InvalidArgument("bad"))


def test_no_retry_outlives_the_deadline():
    attempts = Attempts(Replicas(["a"]), RetryPolicy(attempts=5, initial_backoff=5), timeout=1)
    with pytest.raises(icae_client.Unavailable):
        attempts.failed(icae_client.Unavailable("down"))


class FakeEncoder:
    def __init__(self, errors):
        self.errors, self.calls = list(errors), 0

    def Compress(self, request, timeout=None, metadata=None):  # noqa: N802 (the stub's name)
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        handle = icae_pb2.SlotHandle(key="icae:v1:f:k", num_slots=1)
        return icae_pb2.CompressResponse(documents=[icae_pb2.CompressedDocument(handle=handle)])


def test_compress_is_retried_on_unavailable_only():
    client = IcaeClient(encoder="127.0.0.1:1", retries=POLICY)
    flaky = FakeEncoder([FakeRpcError(grpc.StatusCode.UNAVAILABLE, "draining")] * 2)
    client._encoders = Replicas([flaky])
    assert client.compress("text")[0].key == "icae:v1:f:k"
    assert flaky.calls == 3
    refused = FakeEncoder([FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue is full")])
    client._encoders = Replicas([refused])
    with pytest.raises(icae_client.ResourceExhausted) as error:
        client.compress("text")
    assert refused.calls == 1 and error.value.message == "queue is full"
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


class FakeCall:
    """A Generate call: yields `messages`, then raises `error` (if any)."""

    def __init__(self, messages, error=None):
        self.messages, self.error, self.cancelled = iter(messages), error, False

    def __iter__(self):
        return self

    def __next__(self):
        for message in self.messages:
            return message
        if self.error is not None:
            raise self.error
        raise StopIteration

    def cancel(self):
        self.cancelled = True


class FakeDecoder:
    def __init__(self, calls):
        self.calls, self.started = list(calls), 0

    def Generate(self, request, timeout=None, metadata=None):  # noqa: N802 (the stub's name)
        self.started += 1
        return self.calls.pop(0)


def delta(text):
    return icae_pb2.GenerateResponse(delta=icae_pb2.TokenDelta(token_ids=[7], text=text))


FINAL = icae_pb2.GenerateResponse(
    final=icae_pb2.GenerateFinal(
        finish_reason=icae_pb2.FINISH_REASON_LENGTH, prompt_positions=40, generated_tokens=2
    )
)


def test_a_stream_is_retried_before_its_first_message_only():
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "draining")
    client = IcaeClient(decoder="127.0.0.1:1", retries=POLICY)
    decoder = FakeDecoder(
        [FakeCall([], unavailable), FakeCall([delta("Hello"), delta(" world"), FINAL])]
    )
    client._decoders = Replicas([decoder])
    stream = client.generate("icae:v1:f:k", mode="continue")
    assert list(stream) == ["Hello", " world"]
    assert decoder.started == 2
    assert stream.final.finish_reason == "length" and stream.final.generated_tokens == 2
    assert stream.token_ids == [7, 7]

    # Once a message has arrived, a failure ends the call: the text shown is not repeated.
    decoder = FakeDecoder([FakeCall([delta("Hel")], unavailable), FakeCall([delta("Hello")])])
    client._decoders = Replicas([decoder])
    stream = client.generate("icae:v1:f:k", mode="continue")
    assert next(stream) == "Hel"
    with pytest.raises(icae_client.Unavailable):
        next(stream)
    assert decoder.started == 1


def test_a_stream_must_end_with_its_final_message():
    """A stream the server closes before its final message is an error, not a short
    generation; what arrived stays readable."""
    client = IcaeClient(decoder="127.0.0.1:1", retries=POLICY)
    client._decoders = Replicas([FakeDecoder([FakeCall([delta("Hel"), delta("lo")])])])
    stream = client.generate("icae:v1:f:k", mode="continue")
    with pytest.raises(icae_client.Unknown, match="without its final message"):
        stream.result()
    assert stream.text == "Hello" and stream.final is None and stream.finish_reason is None

    client._decoders = Replicas([FakeDecoder([FakeCall([delta("Hi"), FINAL])])])
    result = client.generate("icae:v1:f:k", mode="continue").result()
    assert result.text == "Hi" and result.token_ids == (7,) and result.prompt_positions == 40


def test_a_dead_address_fails_as_unavailable_after_the_backoffs():
    dead = f"127.0.0.1:{free_port()}"
    policy = RetryPolicy(attempts=3, initial_backoff=0.05, max_backoff=0.1)
    with IcaeClient(encoder=dead, retries=policy, timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(icae_client.Unavailable) as error:
            client.compress("nobody listens")
        assert time.monotonic() - started >= 0.05 + 0.1
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert isinstance(error.value, icae_client.IcaeError)
