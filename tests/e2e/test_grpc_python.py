"""Cross-language: a Python grpcio client generated from proto/ at test time completes a
compress -> generate round trip against the real services (real redis-server, loopback)."""

import importlib
import importlib.resources
import sys
import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

# free_port is imported from here by tests/security.
from conftest import ROOT, Service, free_port, running_services  # noqa: F401


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    from grpc_tools import protoc

    # The well-known types (google/protobuf/duration.proto, ...) the API imports.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "icae/v1/icae.proto",
        ]
    )
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    try:
        yield (
            importlib.import_module("icae.v1.icae_pb2"),
            importlib.import_module("icae.v1.icae_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_dir):
    layout = {
        "encoder": Service("encoder-svc", "icae.v1.EncoderService"),
        "decoder": Service("decoder-svc", "icae.v1.DecoderService"),
    }
    with running_services(tmp_path_factory.mktemp("services"), model_dir, layout) as addresses:
        yield addresses


def test_python_client_round_trip(stubs, services):
    import safetensors.torch

    pb, rpc = stubs
    text = (
        "Benoit Quennedey, president of the Franco-Korean Friendship Association, "
        "was arrested in Paris."
    )
    with grpc.insecure_channel(services["encoder"]) as channel:
        encoder = rpc.EncoderServiceStub(channel)
        request = pb.CompressRequest(
            documents=[pb.Document(text=text)],
            options=pb.CompressOptions(ttl=Duration(seconds=600), return_slots=True),
        )
        before = int(time.time())
        response = encoder.Compress(request, timeout=120)
        after = int(time.time())
        handle = response.documents[0].handle
        assert handle.key.startswith("icae:v1:") and handle.num_slots == 32 and not handle.cache_hit
        # google.protobuf.Timestamp and Duration, as every protobuf runtime knows them.
        assert before + 600 <= handle.expire_time.seconds <= after + 600
        assert response.timings.total_duration.ToNanoseconds() > 0
        assert not response.timings.HasField("time_to_first_token")
        # The stored value is a plain safetensors blob any Python user can load.
        slots = safetensors.torch.load(response.documents[0].slots)["slots"]
        assert tuple(slots.shape) == (32, 576)
        info = encoder.Info(pb.InfoRequest(), timeout=10)
        assert info.model_fingerprint == handle.model_fingerprint

    with grpc.insecure_channel(services["decoder"]) as channel:
        decoder = rpc.DecoderServiceStub(channel)
        request = pb.GenerateRequest(
            slots=pb.SlotList(items=[pb.SlotRef(key=handle.key)]),
            mode=pb.MODE_ANSWER,
            prompt="Who was arrested?",
            sampling=pb.Sampling(max_new_tokens=12),
        )
        deltas, final = [], None
        for message in decoder.Generate(request, timeout=120):
            if message.HasField("delta"):
                deltas.append(message.delta)
            else:
                final = message.final
        assert final is not None and final.generated_tokens == sum(len(d.token_ids) for d in deltas)
        assert final.finish_reason in (pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH)
        assert final.timings.time_to_first_token.ToNanoseconds() > 0
        once = decoder.GenerateOnce(request, timeout=120)
        assert list(once.token_ids) == [t for d in deltas for t in d.token_ids]
        assert once.text == "".join(d.text for d in deltas)

        missing = handle.key[:-64] + "0" * 64
        bad = pb.GenerateRequest(
            slots=pb.SlotList(items=[pb.SlotRef(key=missing)]), mode=pb.MODE_CONTINUE
        )
        with pytest.raises(grpc.RpcError) as error:
            decoder.GenerateOnce(bad, timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing in error.value.details()
        foreign = pb.GenerateRequest(
            slots=pb.SlotList(items=[pb.SlotRef(key="user:42")]), mode=pb.MODE_CONTINUE
        )
        with pytest.raises(grpc.RpcError) as error:
            decoder.GenerateOnce(foreign, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
