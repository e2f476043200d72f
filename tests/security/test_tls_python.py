"""Cross-language TLS: a Python grpcio client completes a TLS round trip (Compress on the
encoder, Generate on the decoder) and an mTLS Compress against the real services, with
certificates made by `openssl` at test time; a client without a certificate is refused."""

import subprocess
from pathlib import Path

import grpc
import pytest
from e2e.test_grpc_python import stubs  # noqa: F401 (a fixture)

from conftest import TLS_TARGET_NAME as TARGET_NAME
from conftest import Service, running_services


def openssl(*args):
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def new_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-x509", "-subj", f"/CN={name}",
            "-keyout", key, "-out", cert)  # fmt: skip
    return cert, key


def signed(directory: Path, ca: tuple[Path, Path], name: str, ext: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    csr, ext_file = directory / f"{name}.csr", directory / f"{name}.ext"
    ext_file.write_text(ext + "\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key,
            "-out", csr)  # fmt: skip
    openssl("x509", "-req", "-days", "1", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
            "-CAcreateserial", "-extfile", ext_file, "-out", cert)  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = new_ca(directory, "icae-ca")
    return {
        "ca": ca[0],
        "server": signed(directory, ca, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        "alice": signed(
            directory, ca, "alice", "subjectAltName=DNS:alice\nextendedKeyUsage=clientAuth"
        ),
    }


def credentials(pki, client=None):
    chain, key = (
        (None, None) if client is None else (client[0].read_bytes(), client[1].read_bytes())
    )
    return grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(), private_key=key, certificate_chain=chain
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_dir, pki):
    """encoder + decoder with TLS, and a second encoder that requires client certificates."""
    tls = ["--tls-cert", pki["server"][0], "--tls-key", pki["server"][1]]
    layout = {
        "encoder": Service("encoder-svc", "icae.v1.EncoderService", tls, credentials(pki)),
        "decoder": Service("decoder-svc", "icae.v1.DecoderService", tls, credentials(pki)),
        "mtls_encoder": Service(
            "encoder-svc",
            "icae.v1.EncoderService",
            [*tls, "--tls-client-ca", pki["ca"]],
            credentials(pki, pki["alice"]),
        ),
    }
    with running_services(tmp_path_factory.mktemp("services"), model_dir, layout) as addresses:
        yield addresses


def test_tls_round_trip_from_python(stubs, services, pki):  # noqa: F811
    pb, rpc = stubs
    creds = credentials(pki)
    with grpc.secure_channel(services["encoder"], creds, options=TARGET_NAME) as channel:
        request = pb.CompressRequest(documents=[pb.Document(text="Secrets travel encrypted.")])
        handle = rpc.EncoderServiceStub(channel).Compress(request, timeout=120).documents[0].handle
        assert handle.key.startswith("icae:v1:")
    with grpc.secure_channel(services["decoder"], creds, options=TARGET_NAME) as channel:
        request = pb.GenerateRequest(
            slots=pb.SlotList(items=[pb.SlotRef(key=handle.key)]),
            mode=pb.MODE_AUTOENCODE,
            sampling=pb.Sampling(max_new_tokens=4),
        )
        once = rpc.DecoderServiceStub(channel).GenerateOnce(request, timeout=120)
        assert len(once.token_ids) >= 1
    # A plaintext client cannot talk to the TLS port.
    with grpc.insecure_channel(services["encoder"]) as channel:
        with pytest.raises(grpc.RpcError) as error:
            rpc.EncoderServiceStub(channel).Info(pb.InfoRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_round_trip_from_python(stubs, services, pki):  # noqa: F811
    pb, rpc = stubs
    address = services["mtls_encoder"]
    alice = credentials(pki, pki["alice"])
    with grpc.secure_channel(address, alice, options=TARGET_NAME) as channel:
        encoder = rpc.EncoderServiceStub(channel)
        request = pb.CompressRequest(documents=[pb.Document(text="Only alice may compress.")])
        handle = encoder.Compress(request, timeout=120).documents[0].handle
        assert handle.num_slots > 0
        assert (
            encoder.Info(pb.InfoRequest(), timeout=10).model_fingerprint == handle.model_fingerprint
        )
    # Without a client certificate the handshake is refused.
    with grpc.secure_channel(address, credentials(pki), options=TARGET_NAME) as channel:
        with pytest.raises(grpc.RpcError) as error:
            rpc.EncoderServiceStub(channel).Info(pb.InfoRequest(), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
