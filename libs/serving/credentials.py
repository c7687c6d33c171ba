"""What a client needs to reach a server started with --auth_token_file and
--tls_cert/--tls_key (see server.py): the bearer token and the CA that
signed the server's certificate, read from files named by flags.

The secrets live in files, never in specs or checkpoints: a RunSpec (which
every checkpoint records) names only addresses.
"""

from __future__ import annotations

import dataclasses


class CredentialsError(ValueError):
    """A credentials file is missing, unreadable or empty; names the flag."""


@dataclasses.dataclass(frozen=True)
class ClientCredentials:
    """Bearer token (None: send none) and CA certificates in PEM (None: plaintext)."""

    token: str | None = None
    root_certificates: bytes | None = None


def load(
    token_file: str | None,
    tls_ca_file: str | None,
    *,
    token_flag: str = "auth_token_file",
    ca_flag: str = "tls_ca",
) -> ClientCredentials:
    """Reads the files; raises CredentialsError naming the flag at fault."""
    token = None
    if token_file:
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise CredentialsError(f"--{token_flag}: cannot read {token_file}: {e.strerror}")
        if not token:
            raise CredentialsError(f"--{token_flag}: {token_file} is empty")
    roots = None
    if tls_ca_file:
        try:
            with open(tls_ca_file, "rb") as f:
                roots = f.read()
        except OSError as e:
            raise CredentialsError(f"--{ca_flag}: cannot read {tls_ca_file}: {e.strerror}")
        if b"BEGIN CERTIFICATE" not in roots:
            raise CredentialsError(f"--{ca_flag}: {tls_ca_file} holds no PEM certificate")
    return ClientCredentials(token=token, root_certificates=roots)
