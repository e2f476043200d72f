"""icae_client over TLS with a bearer token: the encoder serves TLS and checks tokens, the
decoder also requires client certificates (mTLS), as scripts configure them in production
(docs/security.md). Certificates are made by `openssl` at test time (tests/security)."""

import asyncio

import grpc
import pytest
from security.test_tls_python import credentials, pki  # noqa: F401 (pki is a fixture)

import icae_client
from conftest import Service, running_services
from icae_client import IcaeClient, Tls
from icae_client import aio as icae_aio

TOKEN = "0123456789abcdef-alice-token"


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_dir, pki):  # noqa: F811
    work = tmp_path_factory.mktemp("services")
    tokens = work / "tokens"
    tokens.write_text(f"# token tenant\n{TOKEN} alice\n")
    tls = ["--tls-cert", pki["server"][0], "--tls-key", pki["server"][1]]
    layout = {
        "encoder": Service(
            "encoder-svc",
            "icae.v1.EncoderService",
            [*tls, "--auth-tokens-file", tokens],
            credentials(pki),
        ),
        "decoder": Service(
            "decoder-svc",
            "icae.v1.DecoderService",
            [*tls, "--tls-client-ca", pki["ca"], "--auth-tokens-file", tokens],
            credentials(pki, pki["alice"]),
        ),
    }
    with running_services(work, model_dir, layout) as addresses:
        yield addresses


def tls_settings(pki, client=True):  # noqa: F811
    """The test CA (a path or PEM bytes: both work), alice's certificate for mTLS, and the
    name the server certificate holds (the tests dial 127.0.0.1)."""
    if client:
        return Tls(ca=pki["ca"], cert=pki["alice"][0], key=pki["alice"][1], server_name="localhost")
    return Tls(ca=pki["ca"].read_bytes(), server_name="localhost")


def test_tls_mtls_and_a_token(services, pki):  # noqa: F811
    with IcaeClient(
        encoder=services["encoder"],
        decoder=services["decoder"],
        tls=tls_settings(pki),
        token=TOKEN,
    ) as client:
        handle = client.compress("Secrets travel encrypted.")[0]
        # The token's tenant is part of the key.
        assert handle.key.startswith("tenant/alice:icae:v1:")
        stream = client.generate(handle, mode="autoencode", max_new_tokens=3)
        text = "".join(stream)
        assert stream.final is not None and 1 <= stream.final.generated_tokens <= 3
        once = client.generate_once(handle.key, mode="autoencode", max_new_tokens=3)
        assert once.text == text
        assert client.decoder_info().model_fingerprint == handle.model_fingerprint


def test_without_a_known_token_the_call_is_unauthenticated(services, pki):  # noqa: F811
    tls = tls_settings(pki, client=False)
    for token in (None, "not-a-token-of-this-server"):
        with IcaeClient(encoder=services["encoder"], tls=tls, token=token) as c:
            with pytest.raises(icae_client.Unauthenticated) as error:
                c.compress("Who are you?")
            assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "token" in error.value.message.lower()
            assert token is None or token not in error.value.message


def test_the_server_certificate_is_checked(services, pki, tmp_path):  # noqa: F811
    # A plaintext client cannot talk to the TLS port; one that trusts another CA neither.
    # Neither is retried for long: UNAVAILABLE, after the policy's attempts.
    policy = icae_client.RetryPolicy(attempts=2, initial_backoff=0.01)
    with IcaeClient(encoder=services["encoder"], token=TOKEN, retries=policy) as client:
        with pytest.raises(icae_client.Unavailable):
            client.encoder_info(timeout=10)
    with IcaeClient(
        encoder=services["encoder"], tls=Tls(server_name="localhost"), token=TOKEN, retries=policy
    ) as client:
        with pytest.raises(icae_client.Unavailable):
            client.encoder_info(timeout=10)
    # The decoder refuses a client without a certificate (mTLS), token or not.
    with IcaeClient(
        decoder=services["decoder"], tls=tls_settings(pki, False), token=TOKEN, retries=policy
    ) as client:
        with pytest.raises(icae_client.Unavailable):
            client.decoder_info(timeout=10)


def test_the_asyncio_client_over_tls_with_a_token(services, pki):  # noqa: F811
    async def main():
        async with icae_aio.IcaeClient(
            encoder=services["encoder"],
            decoder=services["decoder"],
            tls=tls_settings(pki),
            token=TOKEN,
        ) as client:
            handle = (await client.compress(["Async secrets."]))[0]
            assert handle.key.startswith("tenant/alice:")
            deltas = [d async for d in client.generate(handle, mode="continue", max_new_tokens=2)]
            once = await client.generate_once(handle, mode="continue", max_new_tokens=2)
            assert once.text == "".join(deltas)
        async with icae_aio.IcaeClient(
            encoder=services["encoder"], tls=tls_settings(pki, False)
        ) as client:
            with pytest.raises(icae_client.Unauthenticated):
                await client.compress(["No token."])

    asyncio.run(main())
