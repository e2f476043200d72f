"""Channels: addresses, TLS credentials, channel options and call metadata."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["Tls", "PemSource"]

#: PEM data, or the path of a file holding it.
PemSource = str | os.PathLike[str] | bytes

#: Largest message received by default (slot values returned inline can be large).
DEFAULT_MAX_RECEIVE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Tls:
    """TLS settings of a client.

    Args:
        ca: PEM CA certificate(s) that sign the servers' certificates (a path or the PEM
            bytes); None: the system's roots.
        cert: PEM client certificate chain, for servers that require client certificates
            (mTLS); give `key` with it.
        key: PEM private key of `cert`.
        server_name: the name to check the server's certificate against, when it is not
            the host of the address (e.g. ``"localhost"`` when dialling ``127.0.0.1``).
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("Tls: give cert and key together (mTLS) or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca),
            private_key=_pem(self.key),
            certificate_chain=_pem(self.cert),
        )


def _pem(source: PemSource | None) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    return Path(source).read_bytes()


def split_address(address: str, tls: bool | Tls | None) -> tuple[str, Tls | None]:
    """``host:port`` (an ``http://`` or ``https://`` prefix is accepted: the latter turns
    TLS on with the system roots when `tls` is not given) and the TLS settings."""
    if address.startswith("https://"):
        address = address[len("https://") :]
        if tls is None:
            tls = True
    elif address.startswith("http://"):
        address = address[len("http://") :]
    address = address.rstrip("/")
    if tls is True:
        return address, Tls()
    if not tls:
        return address, None
    return address, tls


def channel_options(tls: Tls | None, max_receive_bytes: int) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", -1),
        # Retries are the client's own (icae_client.retry), not the channel's.
        ("grpc.enable_retries", 0),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def open_channel(grpc_module: Any, target: str, tls: Tls | None, max_receive_bytes: int) -> Any:
    """A channel to `target` from `grpc` or `grpc.aio` (they take the same arguments)."""
    options = channel_options(tls, max_receive_bytes)
    if tls is None:
        return grpc_module.insecure_channel(target, options=options)
    return grpc_module.secure_channel(target, tls.credentials(), options=options)


def call_metadata(
    token: str | None, extra: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer <token>` (serving/src/security/auth.rs) and any extra metadata."""
    metadata = list(extra)
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    return tuple(metadata)


def addresses(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)
