"""A stack over TLS (and mutual TLS), with a CA made for the test: the CLI and the client
generate an image through it; plaintext callers, strangers and unsigned clients get nothing."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from darkroom.v1 import job_pb2, jobs_service_pb2
from darkroom_client.errors import Unavailable
from darkroom_client.retry import RetryPolicy
from tests.clients.conftest import StackFactory


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(folder: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(folder / name, key, cert)
    return key, cert


def _leaf(
    folder: Path,
    name: str,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    usage: x509.ObjectIdentifier,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(ca[0], hashes.SHA256())
    )
    _write(folder / name, key, cert)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "darkroom-test-ca")
    _leaf(folder, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH)
    _leaf(folder, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    _ca(folder, "stranger-ca")
    return Pki(
        ca=folder / "darkroom-test-ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        stranger_ca=folder / "stranger-ca.pem",
    )


async def test_the_cli_generates_an_image_over_tls(
    make_stack: StackFactory, pki: Pki, tmp_path: Path
) -> None:
    stack = await make_stack(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key))
    assert stack.jobs.running.tls
    assert stack.events.running.tls
    out = tmp_path / "tls.png"
    code, stdout, stderr = await stack.cli(
        "generate", "over tls", "--width", "64", "--height", "64", "--steps", "2",
        "-o", str(out), env={"DARKROOM_TLS_CA_FILE": str(pki.ca)},
    )  # fmt: skip
    assert code == 0, stderr
    assert str(out) in stdout
    assert out.stat().st_size > 0
    # A plaintext caller gets no answer from a TLS port, only UNAVAILABLE.
    code, _, stderr = await stack.cli("list", "--timeout", "2")
    assert code == 4, stderr
    # Nor does a caller that trusts another CA: the server's certificate does not verify.
    code, _, stderr = await stack.cli(
        "list", "--timeout", "2", env={"DARKROOM_TLS_CA_FILE": str(pki.stranger_ca)}
    )
    assert code == 4, stderr


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(
    make_stack: StackFactory, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = await make_stack(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
        jobs_health_address="127.0.0.1:0",
    )
    monkeypatch.setenv("DARKROOM_TLS_CA_FILE", str(pki.ca))
    without_certificate = stack.client(timeout=2, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(Unavailable):
        await without_certificate.list()

    monkeypatch.setenv("DARKROOM_TLS_CLIENT_CERT_FILE", str(pki.client_cert))
    monkeypatch.setenv("DARKROOM_TLS_CLIENT_KEY_FILE", str(pki.client_key))
    client = stack.client()
    job = await client.submit("mutual", width=64, height=64, steps=2)
    async with asyncio.timeout(60):
        finished = await client.wait(job.id)
    assert finished.state == job_pb2.JOB_STATE_SUCCEEDED

    # The probes' port answers health in plaintext, and nothing else.
    port = stack.jobs.running.health_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="darkroom.v1.JobsService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        get = channel.unary_unary(
            "/darkroom.v1.JobsService/GetJob",
            request_serializer=jobs_service_pb2.GetJobRequest.SerializeToString,
            response_deserializer=jobs_service_pb2.GetJobResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get(jobs_service_pb2.GetJobRequest(job_id=job.id), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
