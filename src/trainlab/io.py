"""Files that must never be seen half-written, and the readers that tolerate torn ones.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target, so a reader sees the old file or the new one, never a part; a kill at any moment
leaves at most a stray `.tmp`. Metrics streams are JSON lines; a torn or garbled line (a
writer killed mid-append, a reader racing a writer) is skipped."""

import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in `path`'s directory, with the mode an ordinary file gets (mkstemp
    makes it 0600, which the rename would carry over to the final file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~UMASK)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics stream; torn, garbled or non-object lines are skipped."""
    records = []
    try:
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except FileNotFoundError:
        pass
    return records
