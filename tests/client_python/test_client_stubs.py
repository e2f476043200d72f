"""The icae-client package (clients/python): its committed stubs are those proto/ generates
now, it depends on grpcio and protobuf only, ships its type information, and the installed
package is this checkout's (scripts/setup.sh installs it)."""

import importlib.util
from pathlib import Path

import tomllib

import icae_client
from conftest import ROOT

PACKAGE = ROOT / "clients" / "python"


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_stubs", PACKAGE / "generate_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_stubs_are_what_proto_generates(tmp_path):
    generator = load_generator()
    diffs = generator.differences()
    assert diffs == [], (
        "clients/python/icae_client/_proto is stale: run "
        "`python clients/python/generate_stubs.py`\n" + "".join(diffs)
    )
    # The check itself sees a change: a proto with one more field differs.
    proto = tmp_path / "proto"
    (proto / "icae/v1").mkdir(parents=True)
    text = (ROOT / "proto/icae/v1/icae.proto").read_text()
    changed = text.replace("message InfoRequest {}", "message InfoRequest { string extra = 1; }")
    assert changed != text
    (proto / "icae/v1/icae.proto").write_text(changed)
    generator.generate(tmp_path / "out", proto_root=proto)
    fresh = (tmp_path / "out/icae/v1/icae_pb2.py").read_text()
    committed = (PACKAGE / "icae_client/_proto/icae/v1/icae_pb2.py").read_text()
    assert generator.normalise(fresh) != generator.normalise(committed)


def test_the_version_lines_of_the_generators_are_ignored():
    generator = load_generator()
    committed = (PACKAGE / "icae_client/_proto/icae/v1/icae_pb2.py").read_text()
    other = committed.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 9")
    assert other != committed
    assert generator.normalise(other) == generator.normalise(committed)
    assert "ValidateProtobufRuntimeVersion" not in generator.normalise(committed)


def test_the_stubs_are_self_contained():
    grpc_stubs = (PACKAGE / "icae_client/_proto/icae/v1/icae_pb2_grpc.py").read_text()
    assert "from icae.v1 import" not in grpc_stubs
    assert "from . import icae_pb2" in grpc_stubs
    assert icae_client.icae_pb2_grpc.icae_dot_v1_dot_icae__pb2 is icae_client.icae_pb2
    # The descriptor keeps the proto's file name: other stubs of the same proto (such as
    # tests/e2e's) load into the same process.
    assert icae_client.icae_pb2.DESCRIPTOR.name == "icae/v1/icae.proto"


def test_the_package_metadata():
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "icae-client"
    names = sorted(dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"])
    assert names == ["grpcio", "protobuf"]
    assert (PACKAGE / "icae_client/py.typed").exists()
    assert (PACKAGE / "README.md").exists()
    # The installed package is this checkout's (scripts/setup.sh installs it editable).
    assert Path(icae_client.__file__).resolve().parent == (PACKAGE / "icae_client").resolve()


def test_the_declared_runtimes_cover_the_generated_code():
    import google.protobuf
    import grpc

    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    deps = dict(dep.split(">=", 1) for dep in project["dependencies"])
    pb2 = (PACKAGE / "icae_client/_proto/icae/v1/icae_pb2.py").read_text()
    gencode = pb2.split("# Protobuf Python Version: ")[1].split("\n")[0].strip()
    assert deps["protobuf"].split(",")[0] == gencode, (deps, gencode)
    grpc_stubs = (PACKAGE / "icae_client/_proto/icae/v1/icae_pb2_grpc.py").read_text()
    generated = grpc_stubs.split("GRPC_GENERATED_VERSION = '")[1].split("'")[0]
    assert deps["grpcio"] == generated, (deps, generated)

    def version(text):
        return tuple(int(part) for part in text.split(".")[:3])

    assert version(google.protobuf.__version__) >= version(gencode)
    assert version(grpc.__version__) >= version(generated)
