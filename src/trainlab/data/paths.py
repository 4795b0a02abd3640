"""Where data lives: --data-dir, then $TRAINLAB_DATA, then the user cache; downloads verified."""

import hashlib
import os
import urllib.request
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write_bytes


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "trainlab"


def data_dirs() -> list[Path]:
    """Directories searched for data files, in order. --data-dir sets TRAINLAB_DATA."""
    dirs = [Path(p) for p in os.environ.get("TRAINLAB_DATA", "").split(os.pathsep) if p]
    return [*dirs, user_cache_dir()]


def find_data_file(names: list[str], subdirs: list[str]) -> Path | None:
    """First existing file named one of `names` in a data dir or one of its `subdirs`."""
    for base in data_dirs():
        for sub in ["", *subdirs]:
            for name in names:
                candidate = base / sub / name if sub else base / name
                if candidate.is_file():
                    return candidate
    return None


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_verified(url: str, dest: Path, check, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` atomically; `check(bytes)` must accept the content."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except OSError as exc:
        raise UserError(f"could not download {url}: {exc}") from None
    if not check(payload):
        raise UserError(f"downloaded {url} failed its checksum; nothing was saved")
    atomic_write_bytes(dest, payload)
    return dest


def network_allowed() -> bool:
    """Downloads are opt-out: TRAINLAB_OFFLINE=1 forbids them (tests and CI set it)."""
    return os.environ.get("TRAINLAB_OFFLINE", "") not in ("1", "true", "yes")
