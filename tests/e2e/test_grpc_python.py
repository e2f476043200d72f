"""Cross-language: a Python grpcio client generated from proto/ at test time completes a
compress -> generate round trip against the real services (real redis-server, loopback)."""

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ROOT, icae_bin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    from grpc_tools import protoc

    rc = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
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
    work = tmp_path_factory.mktemp("services")
    redis_port = free_port()
    pidfile = work / "redis.pid"
    # fmt: off
    subprocess.run(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work), "--daemonize", "yes", "--pidfile", str(pidfile)],
        check=True, stdout=subprocess.DEVNULL,
    )
    # fmt: on
    adapter = os.environ.get(
        "ICAE_UNTRAINED_ADAPTER", str(Path.home() / ".cache/icae/adapters/untrained-m32")
    )
    bin_dir = Path(icae_bin()).parent
    procs = {}
    ports = {}
    try:
        for name in ("encoder", "decoder"):
            ports[name] = free_port()
            log = open(work / f"{name}.log", "w")
            # fmt: off
            procs[name] = subprocess.Popen(
                [str(bin_dir / f"{name}-svc"), "--model", str(model_dir), "--adapter", adapter,
                 "--device", "cpu", "--redis-url", f"redis://127.0.0.1:{redis_port}",
                 "--port", str(ports[name])],
                stdout=subprocess.DEVNULL, stderr=log,
            )
            # fmt: on
        for name, service in (("encoder", "icae.v1.Encoder"), ("decoder", "icae.v1.Decoder")):
            wait_ready(f"127.0.0.1:{ports[name]}", service, procs[name])
        yield {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=60)
        if pidfile.exists():
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def wait_ready(address, service, proc, timeout=120):
    deadline = time.time() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline:
            assert proc.poll() is None, f"{service} exited early"
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"{service} at {address} did not become ready")


def test_python_client_round_trip(stubs, services):
    import safetensors.torch

    pb, rpc = stubs
    text = (
        "Benoit Quennedey, president of the Franco-Korean Friendship Association, "
        "was arrested in Paris."
    )
    with grpc.insecure_channel(services["encoder"]) as channel:
        encoder = rpc.EncoderStub(channel)
        request = pb.CompressRequest(
            documents=[pb.Document(text=text)],
            options=pb.CompressOptions(ttl_seconds=600, return_slots=True),
        )
        response = encoder.Compress(request, timeout=120)
        handle = response.documents[0].handle
        assert handle.key.startswith("icae:v1:") and handle.num_slots == 32 and not handle.cache_hit
        # The stored value is a plain safetensors blob any Python user can load.
        slots = safetensors.torch.load(response.documents[0].slots)["slots"]
        assert tuple(slots.shape) == (32, 576)
        info = encoder.Info(pb.InfoRequest(), timeout=10)
        assert info.model_fingerprint == handle.model_fingerprint

    with grpc.insecure_channel(services["decoder"]) as channel:
        decoder = rpc.DecoderStub(channel)
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
