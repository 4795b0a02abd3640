"""Files that must never be seen half-written, and the readers that tolerate torn ones.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target, so a reader sees the old file or the new one, never a part; a kill at any moment
leaves at most a stray `.tmp` (its name random, created exclusively: nothing planted at a
temporary's name is ever opened). Metrics streams are JSON lines; a torn or garbled line (a
writer killed mid-append, a reader racing a writer) is skipped.

Inside a study every write goes through an Anchor: its path is walked from the study root one
folder at a time, each opened from the one above without following links, so a symbolic link,
a file or a FIFO planted anywhere in the study can never take a write elsewhere, and nothing
is checked first and used later (no race). The path-based atomic_write_* are for files
outside any study (a user's --output)."""

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


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


# ---------------------------------------------------------------- writes anchored at a root folder

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once (or fails) instead of waiting for a reader
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
FOLDER = os.O_RDONLY | DIRECTORY | NOFOLLOW | NONBLOCK | CLOEXEC


class UnsafePath(UserError):
    """A path in a study that trainlab will not write through: a symbolic link, a FIFO, a
    folder where a file goes, a file where a folder goes. It is the study's folder that needs
    fixing, not a trial, so this stops a study instead of failing one trial."""


def kind_of(mode: int) -> str:
    kinds = {stat.S_ISLNK: "a symbolic link", stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO",
             stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a plain file")


def link_refused(path) -> UnsafePath:
    return UnsafePath(f"{path} is a symbolic link: trainlab writes inside a study only, never through a link; "
                      "remove the link")


def refusal(path, exc: OSError) -> OSError:
    """The one line for an OSError that says `path` is not what trainlab writes there; other
    errors (a full disk, a permission) as they are."""
    if exc.errno == errno.ELOOP:
        return link_refused(path)
    if exc.errno == errno.ENOTDIR:
        return UnsafePath(f"{path} is not a folder, and trainlab writes into it; remove it")
    if exc.errno == errno.EISDIR:
        return UnsafePath(f"{path} is not a plain file (a folder), and trainlab writes a file there; remove it")
    if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket
        return UnsafePath(f"{path} is not a plain file (a FIFO or a socket); remove it")
    return exc


def relative_parts(relpath) -> tuple[str, ...]:
    """The names of a path below a root; one that could leave it (absolute, '..') is refused."""
    path = Path(relpath)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafePath(f"{str(relpath)!r} is not a path inside the study")
    return path.parts


def folder_refusal(parent: int, name: str, path: Path, exc: OSError) -> OSError:
    """Why the folder `name` did not open: Linux says ENOTDIR for a link as for a file."""
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                return link_refused(path)
    return refusal(path, exc)


def open_child(parent: int, name: str, create: bool, path: Path) -> int:
    """The folder `name` in the folder `parent`, never through a link (made when missing and `create`)."""
    try:
        return os.open(name, FOLDER, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        raise folder_refusal(parent, name, path, exc) from None
    with contextlib.suppress(FileExistsError):  # made meanwhile, or a dangling link: opening it says which
        os.mkdir(name, 0o777, dir_fd=parent)
    try:
        return os.open(name, FOLDER, dir_fd=parent)
    except OSError as exc:
        raise folder_refusal(parent, name, path, exc) from None


def open_regular(folder: int, name: str, flags: int, path: Path) -> int:
    """os.open of a file that must be a plain file: a link is refused, a FIFO never blocks (it
    opens without waiting, or fails), and anything but a plain file is refused once open."""
    try:
        fd = os.open(name, flags | NOFOLLOW | NONBLOCK | CLOEXEC, 0o666, dir_fd=folder)
    except OSError as exc:
        raise refusal(path, exc) from None
    def refuse(info):
        if not stat.S_ISREG(info.st_mode):
            return UnsafePath(f"{path} is not a plain file ({kind_of(info.st_mode)}); remove it")
        if info.st_nlink > 1:  # a hard link: the same file may sit outside the study, and would be emptied
            return UnsafePath(f"{path} has other hard links (it may be a file outside the study); remove it")
        return None
    return checked_descriptor(fd, refuse)


def checked_descriptor(fd: int, refuse) -> int:
    """`fd`, made blocking again, unless `refuse(fstat of fd)` names an error: then it is closed
    and that error raised. Checking the open descriptor itself leaves no gap between check and use."""
    try:
        error = refuse(os.fstat(fd))
        if error is not None:
            raise error
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_replaceable(folder: int, name: str, path: Path) -> None:
    """The file a write replaces is a plain file or nothing: a link, a folder or a FIFO there
    is refused, never replaced (it may hold what someone put there on purpose)."""
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise link_refused(path)
    if not stat.S_ISREG(mode):
        raise UnsafePath(f"{path} is not a plain file ({kind_of(mode)}), and trainlab writes a file there; remove it")


def temporary_in(folder: int, name: str):
    """A new temporary file beside `name`: a random name, created exclusively and never through
    a link, so nothing planted at any name is opened; mode 0666 less the umask (the kernel
    applies it), as an ordinary file gets. Its name and a read-write file object."""
    for _ in range(16):
        tmp = f".{name[:80]}.{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o666, dir_fd=folder)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "w+b")
    raise FileExistsError(errno.EEXIST, "no free temporary name", name)


@dataclass(frozen=True)
class Anchor:
    """A file or folder `parts` below the folder `root` (a study's), written only through
    `root`: every folder between them is opened from the one above it without following
    links (missing ones are made), so no component of the path can be a link or a
    non-folder. `anchor / "a/b.json"` is a place below this one; `path` is where it is.
    Plain data: it pickles to pool and Ray workers."""

    root: Path
    parts: tuple[str, ...] = ()

    def __truediv__(self, relpath) -> "Anchor":
        return Anchor(self.root, self.parts + relative_parts(relpath))

    def __str__(self) -> str:
        return str(self.path)

    @property
    def path(self) -> Path:
        return Path(self.root).joinpath(*self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def parent(self) -> "Anchor":
        return Anchor(self.root, self.parts[:-1])

    # ------------------------------------------------------------ folders

    def open_folder(self, create: bool = True) -> int:
        """A descriptor of this folder, reached from the root one folder at a time. The root
        itself is the caller's (it is opened as named, made when missing)."""
        root = Path(self.root)
        try:
            fd = os.open(root, os.O_RDONLY | DIRECTORY | CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | DIRECTORY | CLOEXEC)
        try:
            for depth, name in enumerate(self.parts, 1):
                child = open_child(fd, name, create, root.joinpath(*self.parts[:depth]))
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def mkdir(self) -> "Anchor":
        """This folder and the ones above it, made where missing; none may be a link or a file."""
        os.close(self.open_folder())
        return self

    def names(self) -> list[str]:
        """What this folder holds (nothing when it does not exist)."""
        try:
            fd = self.open_folder(create=False)
        except FileNotFoundError:
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _in_parent(self, create: bool = True):
        """The descriptor of the folder this file is in (None when it is missing and not `create`)."""
        try:
            folder = self.parent.open_folder(create)
        except FileNotFoundError:
            yield None
            return
        try:
            yield folder
        finally:
            os.close(folder)

    @contextlib.contextmanager
    def _entry(self):
        """The folder this name is in and what the name is there (its st_mode, never following
        a link); (None, None) when either is missing."""
        with self._in_parent(create=False) as folder:
            try:
                mode = None if folder is None else os.stat(self.name, dir_fd=folder, follow_symlinks=False).st_mode
            except FileNotFoundError:
                mode = None
            yield (folder, mode) if mode is not None else (None, None)

    def unlink(self) -> None:
        """This file gone (a link: the link itself, never what it points to); a folder is refused."""
        with self._entry() as (folder, mode):
            if mode is None:
                return
            if stat.S_ISDIR(mode):
                raise UnsafePath(f"{self.path} is not a plain file (a folder), and trainlab keeps a file there; "
                                 "remove it")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name, dir_fd=folder)

    def remove_tree(self) -> None:
        """This folder and everything in it gone (a file or a link: just it). Links inside are
        removed, never followed."""
        with self._entry() as (folder, mode):
            if mode is None:
                return
            if stat.S_ISDIR(mode):
                shutil.rmtree(self.name, dir_fd=folder)  # descriptor-based: never follows a link
            else:
                os.unlink(self.name, dir_fd=folder)

    def move_to(self, target: "Anchor") -> None:
        """Rename this file or folder to `target` (both below the same root; its folder made)."""
        with self._in_parent(create=False) as source, target._in_parent() as destination:
            if source is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(self.path))
            try:
                os.replace(self.name, target.name, src_dir_fd=source, dst_dir_fd=destination)
            except OSError as exc:
                raise refusal(target.path, exc) from None

    # ------------------------------------------------------------ files

    @contextlib.contextmanager
    def creating(self):
        """A file object (read-write, binary) that takes this file's place, whole, when the
        block ends: a temporary with a random name until then, fsynced, then renamed over it;
        removed if the block raises. What is there now must be a plain file, or nothing."""
        with self._in_parent() as folder:
            check_replaceable(folder, self.name, self.path)
            tmp, fh = temporary_in(folder, self.name)
            try:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
                try:
                    os.replace(tmp, self.name, src_dir_fd=folder, dst_dir_fd=folder)
                except OSError as exc:  # a folder put there since the check
                    raise refusal(self.path, exc) from None
            except BaseException:
                fh.close()
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
                raise

    def write_with(self, fill) -> Path:
        """`fill(file object)` writes this file's contents (torch.save, np.savez, ...)."""
        with self.creating() as fh:
            fill(fh)
        return self.path

    def write_bytes(self, data: bytes) -> Path:
        return self.write_with(lambda fh: fh.write(data))

    def write_text(self, text: str) -> Path:
        return self.write_bytes(text.encode("utf-8"))

    def write_json(self, obj) -> Path:
        return self.write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")

    def save_torch(self, obj) -> Path:
        import torch  # noqa: PLC0415 (io stays importable without torch; its callers have it loaded)

        return self.write_with(lambda fh: torch.save(obj, fh))

    def save_figure(self, fig, dpi: int = 100) -> Path:
        """A matplotlib figure as PNG."""
        return self.write_with(lambda fh: fig.savefig(fh, dpi=dpi, format="png"))

    def open_stream(self, truncate: bool = True) -> int:
        """A descriptor for appending to this file (emptied first when `truncate`): it must be a
        plain file or nothing; a link, a FIFO or a folder there is refused at once, never
        waited on."""
        with self._in_parent() as folder:
            fd = open_regular(folder, self.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self.path)
        if truncate:  # only now that it is known to be a plain file of the study's
            os.ftruncate(fd, 0)
        return fd

    def open_lock(self) -> int:
        """A read-write descriptor of this lock file (made when missing), a plain file only."""
        with self._in_parent() as folder:
            return open_regular(folder, self.name, os.O_RDWR | os.O_CREAT, self.path)


def anchor_at(folder) -> Anchor:
    """`folder` as an Anchor to write in: itself when it is one, else a plain folder anchored at
    itself (a caller's own folder, outside any study)."""
    return folder if isinstance(folder, Anchor) else Anchor(Path(folder))


def anchored(path) -> Anchor:
    """`path` as an Anchor: itself when it is one, else a plain path anchored at its own folder
    (the folders above it are its caller's, as with the path-based writes)."""
    if isinstance(path, Anchor):
        return path
    path = Path(path)
    return Anchor(path.parent) / path.name


MAX_DEPTH = 100  # nesting a store file may have; deeper JSON is damage (or an attack on the parser's recursion)


class NotAFile(UserError):
    """A store file that is not a plain file (a folder, a FIFO, a device), or that lies below a
    file where a folder should be. Not an OSError on purpose: a reader that takes a torn file
    for a missing one (a summary: the trial is unfinished) must not take a study whose folders
    are mixed up for one whose trials are unfinished; it is one line, exit 2."""


def open_plain(path) -> int:
    """A read-only descriptor of `path`, only if it is a plain file (a link is followed). The
    open never waits (a FIFO opens at once, writer or not) and what it opened is refused by
    what fstat says of the descriptor itself, so nothing is checked first and used later. A
    missing file is FileNotFoundError, as with open()."""
    try:
        fd = os.open(path, os.O_RDONLY | NONBLOCK | CLOEXEC)
    except NotADirectoryError:
        raise NotAFile(f"{file_above(path)} is a file where a folder should be; remove it") from None
    return checked_descriptor(fd, lambda info: None if stat.S_ISREG(info.st_mode) else
                              NotAFile(f"{path} is {kind_of(info.st_mode)}, not a plain file; remove it"))


def file_above(path) -> Path:
    """The first folder on the way to `path` that is not a folder (why its open said ENOTDIR)."""
    return next((p for p in reversed(Path(path).parents) if p.exists() and not p.is_dir()), Path(path))


def open_binary(path):
    """`path` as a binary file object for reading (np.load, torch.load), a plain file only."""
    return os.fdopen(open_plain(path), "rb")


def plain_file(path) -> Path:
    """`path`, once it is known to be a plain file: for readers that must open it by name
    (np.load with mmap_mode)."""
    os.close(open_plain(path))
    return Path(path)


def read_bytes(path: Path) -> bytes:
    """A file's bytes, only if it is a plain file: a FIFO is never waited on, a folder or a
    device is refused, in one line naming the path (see open_plain)."""
    with open_binary(path) as fh:
        return fh.read()


def read_text(path: Path) -> str:
    """A text file of the store (a report), a plain file only; bytes that are not UTF-8 show
    as replacement characters instead of failing the reader."""
    return read_bytes(path).decode("utf-8", errors="replace")


STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
BRACKETS = re.compile(rb"[\[\]{}]")


def too_deep(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON `text` nests deeper than `limit`; cheap for ordinary text (it only scans
    when there are more brackets than the limit at all, and then only the brackets outside
    strings)."""
    data = text.encode() if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for bracket in BRACKETS.findall(STRINGS.sub(b'""', data)):
        depth += 1 if bracket in (b"[", b"{") else -1
        if depth > limit:
            return True
    return False


def parse_json(data: str | bytes):
    """json.loads with the nesting bounded (a ValueError beyond MAX_DEPTH)."""
    if too_deep(data):
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return json.loads(data)


def read_json(path: Path):
    return parse_json(read_bytes(path))


def read_jsonl(path: Path) -> list[dict]:
    """Records of a metrics stream (none when it is missing); torn, garbled, too deeply nested
    or non-object lines are skipped. Anything but a plain file is refused (see open_plain)."""
    try:
        fd = open_plain(path)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as fh:
        return [record for line in fh if isinstance(record := parse_line(line), dict)]


def parse_line(line: bytes):
    """One JSON line, or None when it is torn or garbled; a line nested deeper than MAX_DEPTH
    is garbled too (the parser would recurse once per level). The depth scan costs a count
    of brackets per line, and more only on a line with over MAX_DEPTH of them."""
    if too_deep(line):
        return None
    try:
        return json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        return None
