"""Making secrets the platform itself owns: the PII key of the local stack.

Reading secrets is settings' job (resources.settings.pii_key); this module only
creates them. In production the key comes from the secret manager as
PLATFORM_PII_KEY; `python -m resources.secrets` prints a new one for operators.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from resources import settings

PII_KEY_BYTES = 64


def generate_key() -> str:
    """A new PII key value: base64 of 64 random bytes (keep it in a secret manager, not in git)."""
    return base64.b64encode(secrets.token_bytes(PII_KEY_BYTES)).decode("ascii")


def ensure_local_pii_key(path: Path | None = None) -> str:
    """The local stack's PII key, made once (mode 0600) at settings.pii_key_file() or `path`.

    An existing file is never replaced: data already encrypted needs the same key.
    """
    path = path or settings.pii_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(generate_key())
        try:
            # link() fails if the key appeared meanwhile: the first writer's key is kept, complete.
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


if __name__ == "__main__":
    print(generate_key())
