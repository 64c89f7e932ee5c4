"""Who may use the service: one access token, sent as a bearer token or kept in a cookie.

The token is `--token`, else $PULLSMITH_TOKEN, else a random one made on the first start and
kept in the data directory (`service-token`, mode 0600). Serving on an address other than
loopback is refused unless the token was configured explicitly: a token that only this machine's
file knows would be the only thing between the network and a shell in your repositories.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from pullsmith.errors import UserError

TOKEN_ENV = "PULLSMITH_TOKEN"
TOKEN_FILE = "service-token"
COOKIE = "pullsmith_token"
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Access:
    token: str
    source: str  # "--token", "$PULLSMITH_TOKEN" or the file's path
    path: Path | None = None

    @property
    def explicit(self) -> bool:
        return self.path is None


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    name = host.strip().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_file(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / TOKEN_FILE


def load_or_create_token(path: Path) -> str:
    """The token kept at `path`, made (random, mode 0600) when there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < MIN_TOKEN_LENGTH:
            raise UserError(
                f"the access token in {path} is empty or too short; delete the file and start "
                "again to make a new one."
            ) from None
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)  # it is a password: only its owner reads it
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def resolve_access(host: str, data_dir: Path, token: str | None = None) -> Access:
    """The token the service checks, refusing a non-loopback `host` without an explicit one."""
    explicit, source = (token, "--token") if token else (os.environ.get(TOKEN_ENV), f"${TOKEN_ENV}")
    if explicit:
        explicit = explicit.strip()
        if len(explicit) < MIN_TOKEN_LENGTH:
            raise UserError(
                f"the access token from {source} is shorter than {MIN_TOKEN_LENGTH} characters; "
                "use a long random one (e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)."
            )
        return Access(token=explicit, source=source)
    if not is_loopback(host):
        raise UserError(
            f"--host {host} is reachable from other machines, so the service refuses to start "
            f"without an access token you chose; pass --token or set ${TOKEN_ENV} (or serve on "
            "127.0.0.1)."
        )
    path = token_file(data_dir)
    return Access(token=load_or_create_token(path), source=str(path), path=path)


def token_matches(given: str | None, token: str) -> bool:
    return bool(given) and secrets.compare_digest(str(given).encode(), token.encode())
