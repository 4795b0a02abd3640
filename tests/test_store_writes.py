"""Every write below a study root goes through the store (io.Anchor): a symbolic link, a FIFO, a
folder or a file planted anywhere in a study is refused in one line (exit 2, no traceback),
nothing outside the study is touched, and once the planted thing is removed the command works."""

import contextlib
import os
import shutil
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from conftest import small_spec
from trainlab.cli import main
from trainlab.io import UMASK, Anchor, UnsafePath
from trainlab.study import run_study

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX links, FIFOs and dir_fd writes")


class Hung(BaseException):
    """Raised by the alarm: not an Exception, so no handler on the way swallows it."""


@contextlib.contextmanager
def within(seconds: float):
    """Fail a command that does not return in time (a FIFO opened for writing blocks forever):
    the alarm interrupts the blocked call."""
    def alarm(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(argv, capsys, *words, seconds: float = 60) -> str:
    """`argv` ends with exit 2 and one line on stderr that holds `words`, without a traceback."""
    capsys.readouterr()
    started = time.monotonic()
    with within(seconds):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("trainlab: error: ") and "Traceback" not in err, err
    assert all(word in err for word in words), err
    assert time.monotonic() - started < seconds
    return err


def works(argv) -> None:
    assert main([*argv, "--quiet"] if argv[0] == "resume" else argv) == 0


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    spec = small_spec(**{"plan.steps": 4, "sweep": {"repeats": 2}, "events": [{"kind": "checkpoint", "steps": [0, 4]}]})
    spec["output"] = {"root": str(tmp_path_factory.mktemp("template") / "runs")}
    return run_study(spec, quiet=True)


@pytest.fixture
def study(template, tmp_path) -> Path:
    copy = tmp_path / "runs" / template.name
    shutil.copytree(template, copy)
    return copy


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder outside the study with a file in it: neither may change."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    return folder


def untouched(outside: Path) -> bool:
    return sorted(p.name for p in outside.iterdir()) == ["precious.txt"] and \
        (outside / "precious.txt").read_text() == "keep me"


def unfinish(study: Path, index: int = 1) -> Path:
    """Trial `index` unfinished: `resume` trains it again, writing its stream and checkpoints."""
    trial = study / "trials" / f"trial_{index:04d}"
    (trial / "summary.json").unlink()
    return trial


def into_link(folder: Path, target: Path) -> None:
    shutil.rmtree(folder)
    folder.symlink_to(target, target_is_directory=True)


# ---------------------------------------------------------------- the io primitives


def test_anchored_writes_never_leave_the_root(tmp_path, outside):
    root = tmp_path / "root"
    root.mkdir()
    anchor = Anchor(root)
    assert (anchor / "a/b/c.json").write_json({"x": 1}) == root / "a/b/c.json"
    mode = (root / "a/b/c.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~UMASK and stat.S_ISDIR((root / "a/b").stat().st_mode)

    (root / "link").symlink_to(outside, target_is_directory=True)  # a linked folder on the way
    (root / "file.txt").symlink_to(outside / "precious.txt")  # a linked final name
    (root / "plain").write_text("a file, not a folder")
    os.mkfifo(root / "fifo")
    (root / "folder.json").mkdir()
    cases = {"link/new/x.json": "is a symbolic link", "link/precious.txt": "is a symbolic link",
             "file.txt": "is a symbolic link", "plain/x.json": "is not a folder", "fifo": "a FIFO",
             "folder.json": "a folder", "../escape.json": "not a path inside the study"}
    for relpath, words in cases.items():
        with pytest.raises(UnsafePath, match=words):
            (anchor / relpath).write_text("bad")
    started = time.monotonic()
    for open_it in (lambda: (anchor / "fifo").open_stream(), lambda: (anchor / "fifo").open_lock(),
                    lambda: (anchor / "file.txt").open_stream(), lambda: (anchor / "folder.json").open_lock()):
        with pytest.raises(UnsafePath):
            open_it()
    assert time.monotonic() - started < 5  # a FIFO never blocks
    with pytest.raises(UnsafePath, match="a folder"):
        (anchor / "folder.json").unlink()
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        (anchor / "link/x").mkdir()
    assert untouched(outside) and (root / "folder.json").is_dir() and (root / "plain").read_text().startswith("a file")
    assert not [p for p in root.rglob("*.tmp")]


def test_a_link_at_any_temporary_name_is_never_opened(tmp_path, outside, monkeypatch):
    """Temporary names are random and created exclusively: a link planted at the name drawn is
    skipped (O_EXCL fails), never written through; the next name is used."""
    import trainlab.io as io

    root = tmp_path / "root"
    root.mkdir()
    drawn = iter(["planted", "fresh"])
    monkeypatch.setattr(io.secrets, "token_hex", lambda n: next(drawn))
    (root / ".sgd.pt.planted.tmp").symlink_to(outside / "precious.txt")
    (Anchor(root) / "sgd.pt").write_bytes(b"weights")
    assert (root / "sgd.pt").read_bytes() == b"weights" and untouched(outside)
    assert (root / ".sgd.pt.planted.tmp").is_symlink() and not (root / ".sgd.pt.fresh.tmp").exists()


def test_removals_and_moves_stay_inside(tmp_path, outside):
    root = tmp_path / "root"
    anchor = Anchor(root)
    (anchor / "stages/01/x.json").write_json({})
    (root / "stages/01/away").symlink_to(outside, target_is_directory=True)
    (anchor / "stages/01").move_to(anchor / ".respec/1")
    assert (root / ".respec/1/x.json").is_file() and not (root / "stages/01").exists()
    (anchor / ".respec").remove_tree()
    (anchor / "missing/deeper").remove_tree()  # nothing there: nothing to do
    assert not (root / ".respec").exists() and untouched(outside)


# ---------------------------------------------------------------- attacks on a real study


@pytest.mark.parametrize("planted", ["checkpoints", "checkpoints/step_000000"])
def test_a_linked_checkpoint_folder_is_refused_and_resume_works_once_removed(study, outside, planted, capsys):
    trial = unfinish(study)
    into_link(trial / planted, outside)
    refused(["resume", str(study), "--quiet"], capsys, str(trial / planted), "is a symbolic link")
    assert untouched(outside)
    (trial / planted).unlink()
    works(["resume", str(study)])
    assert (trial / "summary.json").is_file() and (trial / "checkpoints/step_000000/sgd.pt").is_file()
    assert not (trial / planted).is_symlink() and untouched(outside)


def test_a_link_at_the_old_fixed_temporary_name_is_never_written(study, outside):
    trial = unfinish(study)
    for step in ("step_000000", "step_000004"):
        for arm in ("sgd", "adam"):
            (trial / "checkpoints" / step / f".{arm}.pt.tmp").symlink_to(outside / "precious.txt")
    works(["resume", str(study)])
    assert untouched(outside) and (trial / "summary.json").is_file()
    assert not (trial / "checkpoints/step_000004/sgd.pt").is_symlink()


def test_a_linked_figures_folder_is_refused_and_report_works_once_removed(study, outside, capsys):
    into_link(study / "figures", outside)
    refused(["report", str(study)], capsys, str(study / "figures"), "is a symbolic link")
    assert untouched(outside)
    (study / "figures").unlink()
    works(["report", str(study)])
    assert (study / "figures" / "curves.png").is_file()


def test_a_metrics_stream_that_is_a_fifo_never_blocks_resume(study, capsys):
    trial = unfinish(study)
    (trial / "metrics.jsonl").unlink()
    os.mkfifo(trial / "metrics.jsonl")
    refused(["resume", str(study), "--quiet"], capsys, str(trial / "metrics.jsonl"), "FIFO", seconds=5)
    (trial / "metrics.jsonl").unlink()
    works(["resume", str(study)])
    assert (trial / "summary.json").is_file()


def test_a_lock_that_is_a_fifo_is_one_line(study, capsys):
    (study / ".lock").unlink(missing_ok=True)
    os.mkfifo(study / ".lock")
    refused(["resume", str(study), "--quiet"], capsys, str(study / ".lock"), "FIFO", seconds=5)
    (study / ".lock").unlink()
    works(["resume", str(study)])


def test_a_report_that_is_a_folder_and_figures_that_are_a_file_are_one_line(study, capsys):
    (study / "report.md").unlink()
    (study / "report.md").mkdir()
    (study / "report.md" / "notes.txt").write_text("mine")
    refused(["report", str(study)], capsys, str(study / "report.md"), "a folder")
    assert (study / "report.md" / "notes.txt").read_text() == "mine"
    shutil.rmtree(study / "report.md")
    shutil.rmtree(study / "figures")
    (study / "figures").write_text("not a folder")
    refused(["report", str(study)], capsys, str(study / "figures"), "is not a folder")
    assert (study / "figures").read_text() == "not a folder"
    (study / "figures").unlink()
    works(["report", str(study)])
    assert (study / "report.md").is_file() and (study / "figures" / "curves.png").is_file()


def test_a_worker_file_outside_its_trial_is_refused(study):
    from trainlab.errors import UserError
    from trainlab.study import StudyStore
    from trainlab.study.sweep import expand
    from trainlab.spec import load_spec

    store = StudyStore.open(study)
    plan = expand(load_spec(store.spec))[0]
    with pytest.raises(UserError, match="outside its folder"):
        store.adopt_trial(plan, {"../../escape.txt": b"x"}, None)
    assert not (study / "escape.txt").exists() and not (study.parent / "escape.txt").exists()


def test_fault_recovery_pretraining_writes_stay_inside(tmp_path, outside, capsys):
    """The pretrained weights had a fixed temporary name (.pretrained.pt.tmp) a link could sit at."""
    from test_fault_recovery import QUICK

    assert main([*QUICK, "--num-experiments", "1", "--optimizers", "adam", "--output-root", str(tmp_path / "fr")]) == 0
    (study,) = (tmp_path / "fr").iterdir()
    (study / "pretrained.pt").unlink()  # pretrained again by the next resume
    (study / ".pretrained.pt.tmp").symlink_to(outside / "precious.txt")
    into_link(study / "pretraining", outside)
    refused(["resume", str(study), "--quiet"], capsys, str(study / "pretraining"), "is a symbolic link")
    (study / "pretraining").unlink()
    works(["resume", str(study)])
    assert untouched(outside) and (study / "pretrained.pt").is_file() and not (study / "pretrained.pt").is_symlink()


def test_a_stream_hard_linked_to_a_file_outside_is_refused_not_emptied(tmp_path):
    from trainlab.io import Anchor, UnsafePath

    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (tmp_path / "study").mkdir()
    os.link(outside, tmp_path / "study" / "metrics.jsonl")
    with pytest.raises(UnsafePath, match="hard links"):
        (Anchor(tmp_path / "study") / "metrics.jsonl").open_stream()
    assert outside.read_text() == "keep me"
