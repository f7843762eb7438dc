"""The federation listener's certificate: a configured one, or a self-signed one made on first
start so a new server answers over TLS with no set-up."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl

logger = logging.getLogger(__name__)


def ensure_certificate(cert_path: str, key_path: str, server_name: str) -> None:
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert and have_key:
        return
    if have_cert != have_key:
        missing = key_path if have_cert else cert_path
        raise FileNotFoundError(f"TLS file {missing} is missing (its pair exists)")
    host = server_name.rsplit(":", 1)[0] if not server_name.endswith("]") else server_name
    host = host.strip("[]")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.insert(0, x509.DNSName(host))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(os.path.dirname(os.path.abspath(cert_path)), exist_ok=True)
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    logger.info("generated a self-signed TLS certificate for %s at %s", host, cert_path)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def server_context(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    with open(cert_path, "rb") as f:
        cert_pem = f.read()
    with open(key_path, "rb") as f:
        key_pem = f.read()
    # The file may hold a chain: the first certificate is ours, the rest intermediates.
    pem_certs = [
        b"-----BEGIN CERTIFICATE-----" + part
        for part in cert_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    leaf = ssl.PrivateCertificate.loadPEM(pem_certs[0] + b"\n" + key_pem)
    chain = [ssl.Certificate.loadPEM(p).original.to_cryptography() for p in pem_certs[1:]]
    return ssl.CertificateOptions(
        privateKey=leaf.privateKey.original.to_cryptography_key(),
        certificate=leaf.original.to_cryptography(),
        extraCertChain=chain or None,
    )
