"""Throw-away certificates for the TLS tests, made with the ``openssl`` command line tool.

``make_pki(directory)`` writes a CA, a server certificate for 127.0.0.1 / localhost signed by it, a
client certificate signed by it, and a second, unrelated CA (for the "wrong CA" cases). EC P-256 keys:
fast to generate. The extensions are spelled out (CA basicConstraints and keyUsage, subjectAltName,
key identifiers), so the chain also passes OpenSSL's strict X.509 checks that newer Pythons enable.
"""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"

_CA_EXT = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

_CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass
class Pki:
    ca: Path             # CA certificate: what clients verify the server with (ssl_ca_certs)
    server_cert: Path
    server_key: Path
    client_cert: Path    # signed by ``ca``: passes --tls-auth-clients yes
    client_key: Path
    other_ca: Path       # an unrelated CA: verifying the server with it must fail
    other_client_cert: Path  # signed by ``other_ca``: the server must refuse it
    other_client_key: Path


def openssl_binary():
    found = shutil.which("openssl")
    if not found:
        raise RuntimeError("the TLS tests need the openssl command line tool on PATH")
    return found


def _run(*args, cwd):
    done = subprocess.run([openssl_binary(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def _key(path, cwd):
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=cwd)


def _ca(directory, name, cn):
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.ext"
    _key(key, directory)
    ext.write_text(_CA_EXT)
    csr = directory / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr), cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-signkey", str(key), "-days", DAYS, "-sha256",
         "-extfile", str(ext), "-out", str(cert), cwd=directory)
    return cert, key


def _leaf(directory, name, cn, extensions, ca_cert, ca_key):
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.ext"
    _key(key, directory)
    ext.write_text(extensions)
    csr = directory / f"{name}.csr"
    _run("req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-out", str(csr), cwd=directory)
    _run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", DAYS, "-sha256", "-extfile", str(ext), "-out", str(cert), cwd=directory)
    return cert, key


def make_pki(directory):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca(directory, "ca", "geventsched test CA")
    server_cert, server_key = _leaf(directory, "server", "127.0.0.1", _SERVER_EXT, ca, ca_key)
    client_cert, client_key = _leaf(directory, "client", "geventsched test client", _CLIENT_EXT, ca, ca_key)
    other_ca, other_key = _ca(directory, "other-ca", "unrelated test CA")
    other_client_cert, other_client_key = _leaf(directory, "other-client", "stranger", _CLIENT_EXT,
                                                other_ca, other_key)
    return Pki(ca, server_cert, server_key, client_cert, client_key, other_ca, other_client_cert, other_client_key)
