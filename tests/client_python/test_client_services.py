"""icae_client against the real services (redis-server, encoder-svc, decoder-svc on
loopback, started once for the module): compress (text and token ids), streamed and unary
generate in the three modes, errors and their codes, cancellation of a stream, replicas
that are down, and the asyncio client."""

import asyncio
import datetime
import time

import grpc
import pytest

import icae_client
from conftest import Service, free_port, running_services
from icae_client import FinishReason, IcaeClient, IcaeError, Mode, RetryPolicy, SlotHandle
from icae_client import aio as icae_aio

TEXT = (
    "Benoit Quennedey, president of the Franco-Korean Friendship Association, "
    "was arrested in Paris."
)


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_dir):
    layout = {
        "encoder": Service("encoder-svc", "icae.v1.EncoderService"),
        "decoder": Service("decoder-svc", "icae.v1.DecoderService"),
    }
    with running_services(tmp_path_factory.mktemp("services"), model_dir, layout) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def client(services):
    with IcaeClient(encoder=services["encoder"], decoder=services["decoder"], timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def handle(client) -> SlotHandle:
    before = datetime.datetime.now(datetime.timezone.utc)
    handle = client.compress([TEXT], ttl_seconds=600)[0]
    after = datetime.datetime.now(datetime.timezone.utc)
    # expire_time is an aware datetime: when the slots were stored plus the TTL.
    ttl = datetime.timedelta(seconds=600)
    assert handle.expire_time.tzinfo is not None
    assert before + ttl <= handle.expire_time <= after + ttl, (before, handle, after)
    return handle


def wait_idle(client, timeout=15.0):
    """Poll the decoder until no sequence is active; the last count seen."""
    deadline = time.monotonic() + timeout
    while True:
        active = client.decoder_info().active_sequences
        if active == 0 or time.monotonic() > deadline:
            return active
        time.sleep(0.1)


def test_compress_text_and_token_ids(client, handle):
    assert isinstance(handle, SlotHandle)
    assert handle.key.startswith("icae:v1:") and handle.num_slots == 32
    assert handle.num_tokens > 0 and handle.expire_time.timestamp() > time.time()
    assert handle.reconstruction_loss is None and handle.slots is None
    info = client.encoder_info()
    assert info.model_fingerprint == handle.model_fingerprint
    assert client.info("encoder").service == info.service

    # The same document again is a cache hit under the same key; token ids work too, and
    # several documents come back in order.
    again, by_ids = client.compress([TEXT, [1, 2, 3, 4, 5, 6, 7, 8]], return_slots=True)
    assert again.key == handle.key and again.cache_hit
    assert again.slots and again.slots[:8]  # safetensors bytes, inline
    assert by_ids.key != handle.key and by_ids.num_tokens == 8
    # A single text is one document.
    assert client.compress(TEXT)[0].key == handle.key


def test_streamed_and_unary_generate_agree(client, handle):
    stream = client.generate(handle, mode="answer", prompt="Who was arrested?", max_new_tokens=4)
    deltas = list(stream)
    assert all(isinstance(delta, str) and delta for delta in deltas)
    final = stream.final
    assert final is not None and final.generated_tokens == len(stream.token_ids)
    assert final.finish_reason in (FinishReason.EOS, FinishReason.LENGTH)
    assert final.prompt_positions > handle.num_slots

    # Handles, keys and proto handles name the same slots; greedy decoding is deterministic.
    once = client.generate_once(
        handle.key, mode=Mode.ANSWER, prompt="Who was arrested?", max_new_tokens=4, greedy=True
    )
    assert once.text == "".join(deltas) == stream.text
    assert list(once.token_ids) == stream.token_ids
    assert once.finish_reason == final.finish_reason
    assert once.finish_reason in ("eos", "length")  # a str enum
    assert once.generated_tokens == final.generated_tokens

    result = client.generate(
        [handle.to_proto()], prompt="Who was arrested?", max_new_tokens=4
    ).result()
    assert result.text == once.text and result.token_ids == once.token_ids


@pytest.mark.parametrize("mode", ["autoencode", "continue", "answer"])
def test_each_mode_generates(client, handle, mode):
    prompt = "Where was he arrested?" if mode == "answer" else ""
    result = client.generate_once(handle, mode=mode, prompt=prompt, max_new_tokens=3)
    assert 1 <= result.generated_tokens <= 3
    if result.finish_reason == "length":
        assert result.generated_tokens == 3
    stream = client.generate([handle, handle.key], mode=mode, prompt=prompt, max_new_tokens=2)
    ids = [t for delta in stream.deltas() for t in delta.token_ids]
    assert 1 <= len(ids) <= 2 and stream.final is not None


def test_sampling_options_and_inline_slots(client):
    inline = client.compress([TEXT], return_slots=True)[0]
    sampled = dict(mode="continue", max_new_tokens=3, temperature=0.8, top_k=20, top_p=0.9)
    first = client.generate_once(inline.slots, seed=7, **sampled)
    again = client.generate_once(inline.slots, seed=7, **sampled)
    assert first.token_ids == again.token_ids  # deterministic for a seed
    stopped = client.generate_once(inline, mode="autoencode", max_new_tokens=6, stop=[first.text])
    assert stopped.finish_reason in ("stop", "eos", "length")
    baseline = client.generate_once(
        baseline_text=TEXT, mode="answer", prompt="Who?", max_new_tokens=1
    )
    assert baseline.generated_tokens >= 1


def test_the_ttl_is_a_timedelta_or_whole_seconds(client, handle):
    # ttl= takes a timedelta; a cache hit refreshes the TTL and reports the new expiry.
    day = datetime.timedelta(days=1)
    refreshed = client.compress(TEXT, ttl=day)[0]
    assert refreshed.key == handle.key and refreshed.cache_hit
    now = datetime.datetime.now(datetime.timezone.utc)
    assert now + day - datetime.timedelta(seconds=60) <= refreshed.expire_time <= now + day
    limits = client.encoder_info().limits
    assert limits.max_ttl.ToTimedelta() == datetime.timedelta(days=30)
    assert limits.default_ttl.ToSeconds() == 3600
    # The server refuses what is not whole seconds from 1 s to 30 days, naming the field,
    # the value and the limit.
    for kwargs, fragments in [
        (dict(ttl=datetime.timedelta(days=30, seconds=1)), ["ttl is 2592001s", "2592000s"]),
        (dict(ttl_seconds=-5), ["ttl is -5s", "at least 1s", "2592000s"]),
        (dict(ttl=datetime.timedelta(seconds=1.5)), ["ttl is 1.5s", "whole seconds"]),
        (dict(ttl=datetime.timedelta(0)), ["ttl is 0s", "at least 1s"]),
    ]:
        with pytest.raises(icae_client.InvalidArgument) as error:
            client.compress(TEXT, **kwargs)
        assert all(fragment in error.value.message for fragment in fragments), error.value
    # The client's own checks send nothing.
    with pytest.raises(icae_client.InvalidArgument, match="not both"):
        client.compress(TEXT, ttl_seconds=60, ttl=day)
    with pytest.raises(icae_client.InvalidArgument, match="whole number"):
        client.compress(TEXT, ttl_seconds=1.5)


def test_timings_are_timedeltas(client, handle):
    timings = client.generate_once(handle, mode="continue", max_new_tokens=2).timings
    assert timings.time_to_first_token > datetime.timedelta(0)
    assert timings.total_duration >= timings.time_to_first_token
    assert timings.tokenize_duration is None  # the decoder does not report it
    stream = client.generate(handle, mode="continue", max_new_tokens=2)
    stream.result()
    assert stream.final.timings.total_duration > datetime.timedelta(0)


def test_errors_carry_their_code_and_the_servers_message(client, handle):
    with pytest.raises(icae_client.InvalidArgument) as error:
        client.compress([""])
    assert isinstance(error.value, IcaeError)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and error.value.message
    assert str(error.value).startswith("INVALID_ARGUMENT: ")

    missing = handle.key[:-64] + "0" * 64
    with pytest.raises(icae_client.NotFound) as error:
        client.generate_once(missing, mode="continue", max_new_tokens=2)
    assert error.value.code == grpc.StatusCode.NOT_FOUND and missing in error.value.message
    # A stream raises on iteration, with the same error.
    with pytest.raises(icae_client.NotFound):
        list(client.generate(missing, mode="continue", max_new_tokens=2))

    with pytest.raises(icae_client.InvalidArgument) as error:
        client.generate_once(handle, mode="answer", max_new_tokens=2)  # no prompt
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(icae_client.InvalidArgument):
        client.generate_once(handle, mode="continue", temperature=1000.0, max_new_tokens=2)
    with pytest.raises(icae_client.InvalidArgument):
        client.generate_once("user:42", mode="continue")

    # The client's own checks are IcaeErrors too, and send nothing.
    with pytest.raises(icae_client.InvalidArgument, match="unknown mode"):
        client.generate(handle, mode="summarise")
    with pytest.raises(icae_client.InvalidArgument):
        client.generate_once(handle, mode="continue", greedy=True, temperature=0.5)
    with pytest.raises(icae_client.InvalidArgument, match="no encoder address"):
        IcaeClient(decoder="127.0.0.1:1").compress("text")

    with pytest.raises(icae_client.DeadlineExceeded) as error:
        client.generate_once(handle, mode="continue", max_new_tokens=20, timeout=0.01)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_cancelled_stream_frees_its_sequence(client, handle):
    assert wait_idle(client) == 0
    with client.generate(handle, mode="continue", max_new_tokens=400) as stream:
        first = next(stream.deltas())
        assert first.token_ids
        assert client.decoder_info().active_sequences == 1
    # Leaving the block early cancelled the call; the decoder sees it and frees the sequence.
    assert stream.final is None and list(stream) == []
    assert wait_idle(client) == 0

    # cancel() mid-iteration ends the iteration quietly.
    stream = client.generate(handle, mode="continue", max_new_tokens=400)
    received = []
    for delta in stream:
        received.append(delta)
        stream.cancel()
    assert len(received) == 1 and stream.final is None
    with pytest.raises(icae_client.Cancelled):
        stream.result()
    assert wait_idle(client) == 0


def test_a_replica_that_is_down_is_skipped(services):
    dead = f"127.0.0.1:{free_port()}"
    # A call that never reached a server goes to the next replica at once, even without
    # retries; Compress and a Generate stream before its first message alike.
    with IcaeClient(
        encoder=[dead, services["encoder"]],
        decoder=[dead, services["decoder"]],
        retries=0,
    ) as client:
        for _ in range(2):
            assert client.compress(TEXT)[0].key.startswith("icae:v1:")
        key = client.compress(TEXT)[0].key
        # The decoders' first call starts on the dead replica too.
        stream = client.generate(key, mode="continue", max_new_tokens=2)
        assert stream.result().generated_tokens == len(stream.token_ids) >= 1
        assert client.generate_once(key, mode="continue", max_new_tokens=2).generated_tokens
    with IcaeClient(encoder=dead, retries=RetryPolicy(attempts=2, initial_backoff=0.01)) as c:
        with pytest.raises(icae_client.Unavailable):
            c.encoder_info()


def test_the_asyncio_client(services, handle):
    async def main():
        async with icae_aio.IcaeClient(
            encoder=services["encoder"], decoder=services["decoder"], timeout=120
        ) as client:
            handles = await client.compress([TEXT, [5, 6, 7]])
            assert handles[0].key == handle.key and handles[0].cache_hit
            info = await client.decoder_info()
            assert info.model_fingerprint == handle.model_fingerprint
            assert (await client.info("encoder")).model_fingerprint == info.model_fingerprint

            stream = client.generate(handles[0], mode="autoencode", max_new_tokens=4)
            deltas = [delta async for delta in stream]
            once = await client.generate_once(handles[0].key, mode="autoencode", max_new_tokens=4)
            assert "".join(deltas) == once.text and stream.token_ids == list(once.token_ids)
            assert stream.final.finish_reason == once.finish_reason
            result = await client.generate(handles[0], mode="continue", max_new_tokens=2).result()
            assert 1 <= result.generated_tokens <= 2

            with pytest.raises(icae_client.InvalidArgument) as error:
                await client.compress([""])
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(icae_client.NotFound):
                async for _ in client.generate(handle.key[:-64] + "1" * 64, mode="continue"):
                    pass

            # Cancelling a stream frees its sequence on the decoder.
            async with client.generate(handles[0], mode="continue", max_new_tokens=400) as s:
                async for delta in s.deltas():
                    assert delta.token_ids
                    break
                assert (await client.decoder_info()).active_sequences == 1
            assert s.final is None
            for _ in range(150):
                if (await client.decoder_info()).active_sequences == 0:
                    break
                await asyncio.sleep(0.1)
            assert (await client.decoder_info()).active_sequences == 0

            stream = client.generate(handles[0], mode="continue", max_new_tokens=400)
            seen = []
            async for delta in stream:
                seen.append(delta)
                stream.cancel()
            assert len(seen) == 1 and stream.final is None

    asyncio.run(main())
