"""The study directory.

    runs/<name>-<YYYYMMDD_HHMMSS>/
      study.json                resolved spec, versions, git revision, the trial list
      trials/trial_0000/
        config.json             the trial's resolved spec, key and seed
        metrics.jsonl           one JSON record per line, appended and flushed while training
        summary.json            written atomically when the trial ends: its presence = finished
        checkpoints/ ...        artifacts
      report.md, figures/

Writes that must never be seen half-done (JSON summaries, study.json) go to a temporary
file in the same directory, are fsynced, then renamed over the target. Every write below the
study root goes through the store's anchored places (`store.place`, trainlab/io.py Anchor):
no folder or file on the way may be a link, a FIFO or the wrong kind of thing, so nothing
planted in a study takes a write outside it.
"""

import contextlib
import datetime as dt
import errno
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
from pathlib import Path

import filelock
import torch

from ..errors import UserError
from ..io import (Anchor, UnsafePath, anchored, atomic_write_bytes, atomic_write_json, atomic_write_text, parse_json,
                  read_bytes, read_json, read_jsonl)
from ..plugin import WITHHELD, WITHHELD_FOLDERS, Registries, registries, withhold
from . import trust
from .sweep import TrialPlan

log = logging.getLogger(__name__)

__all__ = ["Anchor", "MetricsWriter", "StudyStore", "UnsafePath", "atomic_write_bytes", "atomic_write_json",
           "atomic_write_text", "read_json", "read_jsonl"]


class MetricsWriter:
    """Appends records to metrics.jsonl (emptied first); `flush` pushes them to the OS so
    readers see them. `target` is an Anchor in a study (a plain path is anchored at its own
    folder): a link, a FIFO or a folder there is refused at once, never written through or
    waited on."""

    def __init__(self, target: "Anchor | Path"):
        self.fh = os.fdopen(anchored(target).open_stream(truncate=True), "w", encoding="utf-8")
        self.pending: list[str] = []

    def log(self, record: dict) -> None:
        self.pending.append(json.dumps(record, allow_nan=True))

    def flush(self) -> None:
        if self.pending:
            self.fh.write("\n".join(self.pending) + "\n")
            self.pending.clear()
        self.fh.flush()

    def close(self) -> None:
        self.flush()
        self.fh.close()


def git_revision() -> str | None:
    """The git revision of the trainlab source tree, when it is a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def version() -> str:
    try:
        return importlib.metadata.version("trainlab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def environment() -> dict:
    return {"trainlab": version(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "git_revision": git_revision()}


class StudyStore:
    def __init__(self, root: Path, meta: dict, inputs_root: Path | None = None):
        self.root = Path(root)
        self.meta = meta
        self.inputs_root = Path(inputs_root or root)  # where a job finds the trials it runs after (a Ray
        # task trains in a scratch folder, but reads its inputs from the study itself)
        self.trusted = True  # made here; a study opened from disk is checked (check_trust)

    @property
    def spec(self) -> dict:
        return self.meta["spec"]

    def registries(self) -> Registries:
        """This process's registries with the study's plugins loaded (as when it was created),
        but for those withheld because the study is not trusted here (study/trust.py)."""
        modules = [name for name in self.spec.get("plugins", []) if name not in WITHHELD]
        return registries(modules, self.spec.get("plugin_path"))

    @property
    def threads(self) -> int | None:
        """The torch threads the study's trials run with, chosen when it was made (None for a
        study made before trainlab recorded it: then what its finished trials ran with)."""
        threads = self.meta.get("threads")
        if isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= 1024:
            return threads
        counts = {s.get("threads") for s in self.summaries()} - {None}
        return counts.pop() if len(counts) == 1 and isinstance(next(iter(counts)), int) else None

    def save_meta(self, meta: dict | None = None) -> None:
        """Write study.json, signed by this user so that later commands trust its plugins. The
        signature file holds the old and the new signature while study.json is replaced, so a
        kill at any moment leaves the study trusted."""
        old = self.root / "study.json"
        previous = trust.signature_for(read_bytes(old)) if self.trusted and old.is_file() else None
        self.meta = self.meta if meta is None else meta
        data = (json.dumps(self.meta, indent=2, allow_nan=True) + "\n").encode()
        signature = trust.signature_for(data)
        if signature is not None:
            self.write_bytes(trust.SIGNATURE, (previous or b"") + signature)
        self.write_bytes("study.json", data)
        if signature is not None and previous:
            self.write_bytes(trust.SIGNATURE, signature)
        self.trusted = signature is not None

    @property
    def distrust(self) -> str:
        return (f"{self.root} was not made on this machine or was changed since (its study.json has no valid "
                "signature of yours); if you trust its code, run the command again with --trust")

    def require_trust(self, command: str) -> None:
        """`command` needs the study's plugin modules (it trains): refused for a study not trusted here."""
        if not self.trusted and (self.spec.get("plugins") or self.spec.get("plugin_path")):
            raise UserError(f"{command}: its plugin modules ({', '.join(map(str, self.spec.get('plugins') or []))}) "
                            f"were not imported: {self.distrust}")

    def check_trust(self, data: bytes) -> None:
        """Withhold the plugin modules of a study this user did not sign (made elsewhere, or
        edited), unless the user asked to trust it (--trust), which signs it."""
        signature = self.root / trust.SIGNATURE
        lines = read_bytes(signature).splitlines() if signature.is_file() and not signature.is_symlink() else []
        self.trusted = any(trust.is_signed(data, line) for line in lines)
        modules, folders = self.spec.get("plugins") or [], self.spec.get("plugin_path") or []
        if self.trusted or not (modules or folders) or str(self.root) in WITHHELD_FOLDERS:
            return  # trusted, nothing to withhold, or withheld (and said) already
        if trust.ASKED:
            log.warning("trusting %s as asked (--trust): its plugin modules (%s) will be imported", self.root,
                        ", ".join(map(str, modules)) or "none")
            self.trusted = True
            self.save_meta()
            return
        withhold(modules, [*folders, str(self.root)], self.distrust)
        log.warning("not importing the plugin module(s) %s named by %s: it was not made on this machine or was "
                    "changed since; pass --trust to import them", ", ".join(map(str, modules)) or "(none)", self.root)

    @classmethod
    def create(cls, spec: dict, plans: list[TrialPlan], threads: int | None = None) -> "StudyStore":
        stamp = dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        parent = Path(spec["output"]["root"])
        try:
            parent.mkdir(parents=True, exist_ok=True)
            root = parent / f"{spec['name']}-{stamp}"
            suffix = 1
            while True:
                try:
                    root.mkdir()
                    break
                except FileExistsError:
                    suffix += 1
                    root = parent / f"{spec['name']}-{stamp}-{suffix}"
        except OSError as exc:
            raise UserError(f"output.root: cannot create the study directory in {str(parent)!r}: {exc.strerror}") from None
        meta = {"created": dt.datetime.now().isoformat(timespec="seconds"), **environment(), "threads": threads,
                "spec": spec, "trials": [plan.describe() for plan in plans]}
        store = cls(root, meta)
        try:
            store.save_meta()
        except OSError as exc:  # a full disk, a quota: leave nothing behind
            for leftover in root.iterdir():
                leftover.unlink()
            root.rmdir()
            raise UserError(f"output.root: cannot write the study in {str(parent)!r}: {exc.strerror or exc}") from None
        return store

    @classmethod
    def open(cls, root: str | Path) -> "StudyStore":
        root = Path(root)
        if not (root / "study.json").is_file():
            raise UserError(f"{str(root)!r} is not a study directory (no study.json)")
        try:  # read once: the bytes checked against the signature are the bytes parsed
            data = read_bytes(root / "study.json")
            meta = parse_json(data)
        except (ValueError, OSError) as exc:
            raise UserError(f"{str(root / 'study.json')!r} cannot be read: {exc}") from None
        if not (isinstance(meta, dict) and isinstance(meta.get("spec"), dict) and isinstance(meta.get("trials"), list)
                and all(isinstance(t, dict) and isinstance(t.get("index"), int) for t in meta["trials"])):
            raise UserError(f"{str(root / 'study.json')!r} is not a study description (it needs a spec and a list of "
                            "trials); was it edited?")
        store = cls(root, meta)
        store.check_trust(data)
        return store

    @contextlib.contextmanager
    def lock(self):
        """Hold the study for one process: a second `run`/`resume` of the same study while this one
        trains would train trials twice and race on their files. The lock is the OS's (flock, or
        LockFileEx on Windows, through filelock), released when its holder dies, even by SIGKILL,
        so a killed study never stays locked. Where the platform has no file locks, the study
        runs unlocked, with a warning."""
        fd = self.place(".lock").open_lock()
        try:
            try:
                held = filelock.lock_descriptor(fd, blocking=False)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise
                log.warning("this platform has no file locks: nothing stops a second process from running %s at "
                            "the same time", self.root)
                held = True
            if not held:
                os.lseek(fd, 0, os.SEEK_SET)
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                raise UserError(f"{str(self.root)!r} is being run by another process (pid {holder}); wait for "
                                "it to end or stop it, then `trainlab resume` this study")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def trial_dir(self, index: int) -> Path:
        return self.root / self.spec["output"]["trial_dir"].format(index=index)

    # ------------------------------------------------------------ writes, all anchored at the root

    def place(self, relpath: str | Path = "") -> Anchor:
        """Where to write `relpath` (relative to the study root): every folder from the root to
        it is checked as it is written (no link, no file, no FIFO on the way)."""
        return Anchor(self.root) / relpath

    def trial_place(self, index: int) -> Anchor:
        """Trial `index`'s folder as a place to write in: what a trial, its hooks and its job get."""
        return self.place(self.spec["output"]["trial_dir"].format(index=index))

    def write_bytes(self, relpath: str | Path, data: bytes) -> Path:
        return self.place(relpath).write_bytes(data)

    def write_text(self, relpath: str | Path, text: str) -> Path:
        return self.place(relpath).write_text(text)

    def write_json(self, relpath: str | Path, obj) -> Path:
        return self.place(relpath).write_json(obj)

    def save_figure(self, relpath: str | Path, fig, dpi: int = 100) -> Path:
        return self.place(relpath).save_figure(fig, dpi)

    def open_stream(self, relpath: str | Path) -> MetricsWriter:
        """A new metrics stream at `relpath` (one already there is replaced)."""
        return MetricsWriter(self.place(relpath))

    def input_dir(self, index: int) -> Path:
        """The folder of trial `index` as an input of another trial (a job's `after`)."""
        return self.inputs_root / self.spec["output"]["trial_dir"].format(index=index)

    def trial_dirs(self) -> list[tuple[int, Path]]:
        return [(t["index"], self.trial_dir(t["index"])) for t in self.meta.get("trials", [])]

    def finished_index(self, index: int) -> bool:
        """Whether trial `index` of this study has its summary (whatever its plan)."""
        trial = next((t for t in self.meta.get("trials", []) if t["index"] == index), None)
        summary = self.summary_of(index) if trial is not None else None
        return summary is not None and summary.get("key") == trial.get("key")

    def finished(self, plan: TrialPlan) -> bool:
        summary = self.summary_of(plan.index)
        return summary is not None and summary.get("key") == plan.key

    def summary_of(self, index: int) -> dict | None:
        """A trial's summary.json, or None when it is missing, torn or of the wrong shape (a
        malformed summary counts as unfinished: the trial runs again), with a warning."""
        path = self.trial_dir(index) / "summary.json"
        try:
            summary = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s cannot be read (%s): the trial counts as unfinished", path, exc)
            return None
        # A job's summary is its own (no arms); a trial's arms must be records.
        arms = summary.get("arms", {}) if isinstance(summary, dict) else None
        if not (isinstance(arms, dict) and all(isinstance(a, dict) for a in arms.values())
                and isinstance(summary.get("index"), int) and isinstance(summary.get("key"), str)):
            log.warning("%s is not a trial summary: the trial counts as unfinished", path)
            return None
        return summary

    def start_trial(self, plan: TrialPlan) -> MetricsWriter:
        """(Re)start a trial from scratch: an unfinished trial's partial stream is replaced."""
        folder = self.trial_place(plan.index).mkdir()
        (folder / "summary.json").unlink()
        (folder / "failure.json").unlink()
        (folder / "config.json").write_json({**plan.describe(), "spec": plan.spec})
        return MetricsWriter(folder / "metrics.jsonl")

    def add_trials(self, plans: list[TrialPlan]) -> None:
        """Append trials to study.json (an adaptive search adds them as it proposes them)."""
        self.meta["trials"] = self.meta.get("trials", []) + [plan.describe() for plan in plans]
        self.save_meta()

    def adopt_trial(self, plan: TrialPlan, files: dict[str, bytes], summary: dict | None) -> None:
        """Store a trial that ran elsewhere (a Ray worker): its files, then its summary last
        (None for a trial that failed: its failure.json is among the files)."""
        folder = self.trial_place(plan.index).mkdir()
        (folder / "summary.json").unlink()
        (folder / "failure.json").unlink()
        for name, data in files.items():
            try:
                target = folder / name
            except UnsafePath:
                raise UserError(f"trial {plan.index}: a worker returned a file outside its folder: {name!r}") from None
            target.write_bytes(data)
        if summary is not None:
            self.finish_trial(plan, summary)

    def fail_trial(self, plan: TrialPlan, reason: str, attempts: int = 1, details: str | None = None) -> None:
        """Record why a trial could not finish (an error, or a worker that kept dying); `resume`
        tries it again. `details` is the traceback, when there is one."""
        record = {"index": plan.index, "key": plan.key, "reason": reason, "attempts": attempts}
        if details:
            record["traceback"] = details
        (self.trial_place(plan.index) / "failure.json").write_json(record)

    def failure(self, plan: TrialPlan) -> dict | None:
        try:
            failure = read_json(self.trial_dir(plan.index) / "failure.json")
        except (OSError, ValueError):
            return None
        return failure if isinstance(failure, dict) and failure.get("key") == plan.key else None

    def failures(self) -> list[dict]:
        out = []
        for _, folder in self.trial_dirs():
            try:
                failure = read_json(folder / "failure.json")
            except (OSError, ValueError):
                continue
            if isinstance(failure, dict) and "reason" in failure and not (folder / "summary.json").exists():
                out.append({"index": failure.get("index"), **failure})
        return out

    def finish_trial(self, plan: TrialPlan, summary: dict) -> None:
        (self.trial_place(plan.index) / "summary.json").write_json({"index": plan.index, "key": plan.key, **summary})

    def summaries(self) -> list[dict]:
        return [summary for index, _ in self.trial_dirs() if (summary := self.summary_of(index)) is not None]
