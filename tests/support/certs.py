"""Certificates made in the test, with `cryptography`: a client CA, client
certificates it signed (good or expired), one from another CA, and a server
certificate for the TLS listener. Everything is written as PEM files under a
directory the test owns; nothing is fetched or shared between runs."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Validity around "now": a few minutes back so a clock a little behind still
# accepts it; a day ahead is longer than any test runs.
SKEW = datetime.timedelta(minutes=5)
LIFETIME = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate file, and what signs with it."""

    name: str
    cert_path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def make_ca(directory: Path, name: str = "Test Client CA") -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{_file_name(name)}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(name, path, cert, key)


def issue(
    ca: Authority,
    directory: Path,
    cn: str | None,
    *,
    server: bool = False,
    expired: bool = False,
    file_name: str | None = None,
) -> Issued:
    """A certificate signed by `ca`: a client certificate with subject CN `cn`
    (None: a subject with no CN, only an O), or, with `server`, one for
    localhost / 127.0.0.1 / ::1; `expired` ended an hour ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge tests")]
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        start, end = now - LIFETIME, now - datetime.timedelta(hours=1)
    else:
        start, end = now - SKEW, now + LIFETIME
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if server:
        alt_names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    stem = file_name or _file_name(f"{cn or 'no-cn'}{'-expired' if expired else ''}")
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Issued(cert_path, key_path)


@dataclass(frozen=True)
class ClientCerts:
    """Everything an mTLS test needs: the listener's certificate (signed by
    `server_ca`, which clients trust), the client CA the edge trusts, and
    client certificates: good (CN alice, CN svc-a), without a CN, expired,
    and one signed by another CA with the same CN as a good one."""

    server_ca: Authority
    server: Issued
    client_ca: Authority
    alice: Issued
    machine: Issued
    no_cn: Issued
    expired: Issued
    other_ca: Issued


def client_certs(directory: Path) -> ClientCerts:
    directory.mkdir(parents=True, exist_ok=True)
    server_ca = make_ca(directory, "Test Server CA")
    client_ca = make_ca(directory, "Test Client CA")
    stranger = make_ca(directory, "Another CA")
    return ClientCerts(
        server_ca=server_ca,
        server=issue(server_ca, directory, "localhost", server=True, file_name="server"),
        client_ca=client_ca,
        alice=issue(client_ca, directory, "alice"),
        machine=issue(client_ca, directory, "svc-a"),
        no_cn=issue(client_ca, directory, None),
        expired=issue(client_ca, directory, "alice", expired=True),
        # Same CN as a good one: only the chain tells them apart.
        other_ca=issue(stranger, directory, "alice", file_name="alice-other-ca"),
    )


def _file_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text.lower())
