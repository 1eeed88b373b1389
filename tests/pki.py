"""A small PKI for the TLS tests, made with the ``openssl`` command line: a CA, a server
certificate for 127.0.0.1 and localhost, two client certificates and a CA that signed none of
them. The file names are the shipped configurations' (ca.crt, server.crt, server.key)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    daemon_cert: Path  # CN=treadguard
    daemon_key: Path
    tablet_cert: Path  # CN=tablet
    tablet_key: Path
    other_ca: Path  # a CA that signed nothing here

    def tls_lines(self) -> str:
        return f"cafile {self.ca}\ncertfile {self.server_cert}\nkeyfile {self.server_key}\n"


_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
)
_SERVER_EXT = _LEAF + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
_CLIENT_EXT = _LEAF + "extendedKeyUsage=clientAuth\n"


def _openssl(cwd: Path, *args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl(
        d, "req", "-x509", *_EC_KEY, "-keyout", str(key), "-out", str(crt), "-days", "2",
        "-subj", f"/CN=treadguard test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return crt, key


def _issue(d: Path, ca: tuple[Path, Path], name: str, cn: str, ext: str) -> tuple[Path, Path]:
    crt, key, csr, extfile = (d / f"{name}.{x}" for x in ("crt", "key", "csr", "ext"))
    extfile.write_text(ext)
    _openssl(d, "req", *_EC_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    _openssl(
        d, "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(extfile),
    )  # fmt: skip
    return crt, key


def make_pki(d: Path) -> Pki:
    """The PKI, in the new folder ``d``."""
    d.mkdir()
    ca = _ca(d, "ca")
    server = _issue(d, ca, "server", "localhost", _SERVER_EXT)
    daemon = _issue(d, ca, "treadguard-client", "treadguard", _CLIENT_EXT)
    tab = _issue(d, ca, "tablet-client", "tablet", _CLIENT_EXT)
    other_ca, _ = _ca(d, "other-ca")
    return Pki(ca[0], *server, *daemon, *tab, other_ca)
