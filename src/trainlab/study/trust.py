"""Which studies may run their own code here, as Jupyter decides which notebooks to trust.

A study names plugin modules (`plugins:` and the folders they came from, `plugin_path`) that
every later command imports: opening a study someone sent you would run whatever module it
ships. So every study.json this user writes is signed with a secret key kept in the user's
config folder (an HMAC-SHA256 of its exact bytes, stored beside it as `study.sig`). A study
whose signature does not match (made elsewhere, or edited by hand) imports none of its
plugin modules and never puts its folders on sys.path, unless the user passes `--trust`,
which signs it: from then on it is trusted here like the user's own studies.
"""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SIGNATURE = "study.sig"
SCHEME = "hmac-sha256"


def key_path() -> Path:
    """The per-user secret: $TRAINLAB_CONFIG, else $XDG_CONFIG_HOME/trainlab, else ~/.config/trainlab."""
    folder = os.environ.get("TRAINLAB_CONFIG") or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "trainlab"
    return Path(folder) / "study-key"


def user_key() -> bytes | None:
    """This user's key, made on first use (readable by the user alone); None where no config
    folder can be written, so that nothing counts as signed."""
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _read_key(path)
    except OSError:
        return None
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_hex(32).encode())
    return _read_key(path)


def _read_key(path: Path) -> bytes | None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        key = fh.read(256).strip()
    return key if len(key) >= 32 else None  # an empty or torn key signs nothing


def signature_of(data: bytes, key: bytes) -> str:
    return f"{SCHEME}:{hmac.new(key, data, hashlib.sha256).hexdigest()}"


def signature_for(data: bytes) -> bytes | None:
    """The bytes of study.sig for a study.json holding `data`; None without a key."""
    key = user_key()
    return None if key is None else (signature_of(data, key) + "\n").encode()


def is_signed(data: bytes, signature: bytes | None) -> bool:
    """Whether `signature` (study.sig's bytes) is this user's signature of study.json's `data`."""
    key = user_key()
    if key is None or signature is None:
        return False
    return hmac.compare_digest(signature.strip(), signature_of(data, key).encode())


ASKED = False  # the command was given --trust: studies it opens are trusted (and signed)


def trust_what_is_opened() -> None:
    global ASKED
    ASKED = True
