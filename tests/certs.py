"""
Certificates made at run time for the TLS tests: a CA, certificates it signs
for given names and addresses, written as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca_certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
                    issuer_key: ec.EllipticCurvePrivateKey, path_length: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@dataclass
class CA:
    """A certificate authority that signs server certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str) -> "CA":
        """A self-signed root CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(name, key, _ca_certificate(name, key, _name(name), key, path_length=1))

    def intermediate(self, name: str) -> "CA":
        """A CA that this one signs, which signs server certificates itself."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _ca_certificate(name, key, self.certificate.subject, self.key,
                                      path_length=0)
        return CA(name, key, certificate)

    def write(self, folder: str) -> str:
        """Write the CA certificate as ``<folder>/<name>.pem``; its path."""
        path = os.path.join(folder, f"{self.name}.pem")
        with open(path, "wb") as f:
            f.write(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, folder: str, stem: str, dns_names: list[str],
              ip_addresses: list[str]) -> tuple[str, str]:
        """
        A server certificate for those names and addresses (in its
        subjectAltName), as ``(key_path, cert_path)`` under ``folder``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name((dns_names or ip_addresses)[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_path = os.path.join(folder, f"{stem}.key.pem")
        cert_path = os.path.join(folder, f"{stem}.cert.pem")
        with open(key_path, "wb") as f:
            f.write(_key_pem(key))
        with open(cert_path, "wb") as f:
            f.write(certificate.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path


def ssl_endpoint(key_path: str, cert_path: str, chain_path: Optional[str] = None) -> str:
    """A daemon ``--listen`` string for TLS on a free port of 127.0.0.1."""
    chain = f":extraCertChain={_escape(chain_path)}" if chain_path else ""
    return (f"ssl:0:privateKey={_escape(key_path)}:certKey={_escape(cert_path)}{chain}"
            ":interface=127.0.0.1")


def _escape(path: str) -> str:
    # Endpoint strings split on ':' and '='; a backslash quotes them.
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
