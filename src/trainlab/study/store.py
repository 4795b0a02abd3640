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
file in the same directory, are fsynced, then renamed over the target.
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
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, read_jsonl
from ..plugin import Registries, registries
from .sweep import TrialPlan

log = logging.getLogger(__name__)

__all__ = ["MetricsWriter", "StudyStore", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "read_json",
           "read_jsonl"]


def open_inside(path: Path, flags: int, what: str) -> int:
    """os.open that never follows a symlink at the last step: a link planted in the study (to a
    file elsewhere) is refused, not written through."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link: trainlab writes {what} only as a plain file inside the "
                            "study; remove the link") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise UserError(f"{path} is not a plain file ({what}); remove it") from None
        raise


class MetricsWriter:
    """Appends records to metrics.jsonl; `flush` pushes them to the OS so readers see them."""

    def __init__(self, path: Path):
        fd = open_inside(Path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "a metrics stream")
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
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

    @property
    def spec(self) -> dict:
        return self.meta["spec"]

    def registries(self) -> Registries:
        """This process's registries with the study's plugins loaded (as when it was created)."""
        return registries(self.spec.get("plugins", []), self.spec.get("plugin_path"))

    @classmethod
    def create(cls, spec: dict, plans: list[TrialPlan]) -> "StudyStore":
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
        meta = {"created": dt.datetime.now().isoformat(timespec="seconds"), **environment(), "spec": spec,
                "trials": [plan.describe() for plan in plans]}
        try:
            atomic_write_json(root / "study.json", meta)
        except OSError as exc:  # a full disk, a quota: leave nothing behind
            root.rmdir()
            raise UserError(f"output.root: cannot write the study in {str(parent)!r}: {exc.strerror or exc}") from None
        return cls(root, meta)

    @classmethod
    def open(cls, root: str | Path) -> "StudyStore":
        root = Path(root)
        if not (root / "study.json").is_file():
            raise UserError(f"{str(root)!r} is not a study directory (no study.json)")
        try:
            meta = read_json(root / "study.json")
        except (ValueError, OSError) as exc:
            raise UserError(f"{str(root / 'study.json')!r} cannot be read: {exc}") from None
        if not (isinstance(meta, dict) and isinstance(meta.get("spec"), dict) and isinstance(meta.get("trials"), list)
                and all(isinstance(t, dict) and isinstance(t.get("index"), int) for t in meta["trials"])):
            raise UserError(f"{str(root / 'study.json')!r} is not a study description (it needs a spec and a list of "
                            "trials); was it edited?")
        return cls(root, meta)

    @contextlib.contextmanager
    def lock(self):
        """Hold the study for one process: a second `run`/`resume` of the same study while this one
        trains would train trials twice and race on their files. The lock is the OS's (flock, or
        LockFileEx on Windows, through filelock), released when its holder dies, even by SIGKILL,
        so a killed study never stays locked. Where the platform has no file locks, the study
        runs unlocked, with a warning."""
        path = self.root / ".lock"
        fd = open_inside(path, os.O_RDWR | os.O_CREAT, "its lock")
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
        folder = self.trial_dir(plan.index)
        self.check_inside(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").unlink(missing_ok=True)
        (folder / "failure.json").unlink(missing_ok=True)
        atomic_write_json(folder / "config.json", {**plan.describe(), "spec": plan.spec})
        return MetricsWriter(folder / "metrics.jsonl")

    def add_trials(self, plans: list[TrialPlan]) -> None:
        """Append trials to study.json (an adaptive search adds them as it proposes them)."""
        self.meta["trials"] = self.meta.get("trials", []) + [plan.describe() for plan in plans]
        atomic_write_json(self.root / "study.json", self.meta)

    def adopt_trial(self, plan: TrialPlan, files: dict[str, bytes], summary: dict | None) -> None:
        """Store a trial that ran elsewhere (a Ray worker): its files, then its summary last
        (None for a trial that failed: its failure.json is among the files)."""
        folder = self.trial_dir(plan.index)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").unlink(missing_ok=True)
        (folder / "failure.json").unlink(missing_ok=True)
        for name, data in files.items():
            target = (folder / name).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise UserError(f"trial {plan.index}: a worker returned a file outside its folder: {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        if summary is not None:
            self.finish_trial(plan, summary)

    def fail_trial(self, plan: TrialPlan, reason: str, attempts: int = 1, details: str | None = None) -> None:
        """Record why a trial could not finish (an error, or a worker that kept dying); `resume`
        tries it again. `details` is the traceback, when there is one."""
        folder = self.trial_dir(plan.index)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"index": plan.index, "key": plan.key, "reason": reason, "attempts": attempts}
        if details:
            record["traceback"] = details
        atomic_write_json(folder / "failure.json", record)

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
        atomic_write_json(self.trial_dir(plan.index) / "summary.json", {"index": plan.index, "key": plan.key, **summary})

    def summaries(self) -> list[dict]:
        return [summary for index, _ in self.trial_dirs() if (summary := self.summary_of(index)) is not None]

    def check_inside(self, folder: Path) -> None:
        """A trial folder (or a folder between it and the study) that is a symlink would take its
        files out of the study: refused."""
        part = folder
        while part != self.root and self.root in part.parents:
            if part.is_symlink():
                raise UserError(f"{part} is a symbolic link: a trial's files stay inside its study; remove the link")
            part = part.parent
