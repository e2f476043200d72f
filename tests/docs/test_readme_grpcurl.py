"""The README's grpcurl calls name RPCs the API has, and their JSON bodies are valid requests
in the protobuf JSON mapping grpcurl uses (grpcurl itself is not installable from the
package registries these tests may use, so the calls are checked against the API instead of
run)."""

import re

from google.protobuf import json_format, message_factory

from conftest import ROOT
from icae_client._proto.icae.v1 import icae_pb2

CALL = re.compile(
    r"grpcurl\s+-plaintext\s+(?:-d\s+'(?P<body>[^']*)'\s+)?"
    r"(?P<address>[\w.:\[\]]+)\s+(?P<method>icae\.v1\.\w+/\w+)"
)


def readme_calls() -> list[re.Match]:
    return list(CALL.finditer((ROOT / "README.md").read_text()))


def request_type(method: str):
    service_name, rpc_name = method.split("/")
    service = icae_pb2.DESCRIPTOR.services_by_name[service_name.removeprefix("icae.v1.")]
    rpc = service.methods_by_name[rpc_name]
    return message_factory.GetMessageClass(rpc.input_type)


def test_every_rpc_has_a_documented_grpcurl_call():
    documented = {call["method"] for call in readme_calls()}
    rpcs = {
        f"icae.v1.{service.name}/{rpc.name}"
        for service in icae_pb2.DESCRIPTOR.services_by_name.values()
        for rpc in service.methods
    }
    assert rpcs <= documented, f"no grpcurl call in the README for {sorted(rpcs - documented)}"


def test_the_documented_calls_are_valid_requests():
    parsed = 0
    for call in readme_calls():
        assert call["address"].startswith("127.0.0.1:"), call[0]
        message = request_type(call["method"])()
        body = call["body"]
        if body is None or "..." in body:  # no body, or a placeholder for another call's
            continue
        json_format.Parse(body, message)  # raises on an unknown field or a wrong type
        parsed += 1
    assert parsed >= 2, "the Compress and GenerateOnce examples carry complete bodies"
