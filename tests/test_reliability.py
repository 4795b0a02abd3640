"""What an adversarial pass found, kept fixed: symlinks planted in a study, signals to a study
with workers, store files of the wrong shape, a full disk at the start, bounded spec parsing,
and the monitor's page, host check and concurrency."""

import errno
import html
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import small_spec
from trainlab import load
from trainlab.cli import main
from trainlab.study import run_study


def one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def finished_study(tmp_path: Path, **changes) -> Path:
    spec = small_spec(**{"plan.steps": 4, "sweep": {"repeats": 2}, **changes})
    spec["output"] = {"root": str(tmp_path / "runs")}
    return run_study(spec, quiet=True)


# ---------------------------------------------------------------- symlinks


def test_symlinks_planted_in_a_study_are_refused_and_nothing_outside_changes(tmp_path, capsys):
    study = finished_study(tmp_path)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (study / ".lock").unlink(missing_ok=True)
    (study / ".lock").symlink_to(outside)
    assert "is a symbolic link" in one_line_exit_2(["resume", str(study)], capsys)
    (study / ".lock").unlink()
    trial = study / "trials" / "trial_0001"
    (trial / "summary.json").unlink()  # unfinished: resume would rewrite its metrics
    (trial / "metrics.jsonl").unlink()
    (trial / "metrics.jsonl").symlink_to(outside)
    assert main(["resume", str(study), "--quiet"]) != 0
    assert outside.read_text() == "keep me"
    (trial / "metrics.jsonl").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for child in trial.iterdir():
        child.unlink()
    trial.rmdir()
    trial.symlink_to(elsewhere, target_is_directory=True)
    assert main(["resume", str(study), "--quiet"]) != 0
    assert not any(elsewhere.iterdir())
    assert "symbolic link" in capsys.readouterr().err


# ---------------------------------------------------------------- signals


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_pool_workers_end_with_their_parent(tmp_path, sig):
    spec = small_spec(**{"plan.steps": 3000, "sweep": {"repeats": 4}})
    spec["output"] = {"root": str(tmp_path / "runs")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "run", str(tmp_path / "spec.yaml"), "--workers", "2",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("runs/*/trials/*/metrics.jsonl")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    workers = [c for c in children(proc.pid) if "spawn" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")
               or "multiprocessing" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
    assert workers, "the pool has workers"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    deadline = time.time() + 15
    while time.time() < deadline and any(alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(alive(w) for w in workers), "a worker outlived its parent"
    if sig == signal.SIGTERM:
        study = next(tmp_path.glob("runs/*"))
        assert proc.returncode == 143 and err.strip().splitlines() == [
            f"trainlab: stopped by SIGTERM; finished trials are kept, and `trainlab resume {study}` runs the rest"]


# ---------------------------------------------------------------- store files of the wrong shape


@pytest.mark.parametrize("broken", ["[]", "null", '{"index": 0}', '{"arms": []}'])
def test_a_malformed_summary_counts_as_unfinished(tmp_path, broken, capsys):
    study = finished_study(tmp_path)
    (study / "trials" / "trial_0000" / "summary.json").write_text(broken)
    assert main(["report", str(study)]) == 0
    assert len(load(study)) > 0
    assert main(["monitor", str(study), "--static", "--output", str(tmp_path / "m.png")]) == 0
    assert main(["resume", str(study), "--quiet"]) == 0  # the trial runs again
    assert json.loads((study / "trials" / "trial_0000" / "summary.json").read_text())["arms"]


@pytest.mark.parametrize("broken", ["[]", '{"trials": []}', '{"spec": {}, "trials": [1]}'])
def test_a_malformed_study_json_is_one_line(tmp_path, broken, capsys):
    study = finished_study(tmp_path)
    (study / "study.json").write_text(broken)
    for argv in (["resume", str(study)], ["report", str(study)]):
        assert "is not a study description" in one_line_exit_2(argv, capsys)


def test_garbled_metrics_records_do_not_break_readers(tmp_path):
    study = finished_study(tmp_path)
    with open(study / "trials" / "trial_0000" / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "eval", "arm": "sgd", "step": "seven", "loss": [1], "accuracy": null}\n[1, 2]\n"text"\n')
    assert len(load(study)) > 0
    assert main(["monitor", str(study), "--static", "--output", str(tmp_path / "m.png")]) == 0
    assert main(["report", str(study)]) == 0


def test_a_lock_that_is_a_folder_is_one_line(tmp_path, capsys):
    study = finished_study(tmp_path)
    (study / ".lock").unlink(missing_ok=True)
    (study / ".lock").mkdir()
    assert "is not a plain file" in one_line_exit_2(["resume", str(study)], capsys)


def test_a_full_disk_at_the_start_leaves_no_study(tmp_path, monkeypatch, capsys):
    import trainlab.study.store as store

    def full(self, relpath, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.StudyStore, "write_bytes", full)
    spec = small_spec()
    spec["output"] = {"root": str(tmp_path / "runs")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert "No space left on device" in one_line_exit_2(["run", str(tmp_path / "spec.yaml"), "--quiet"], capsys)
    assert not any((tmp_path / "runs").iterdir())


# ---------------------------------------------------------------- bounded parsing


ALIAS_BOMB = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("text, words", [
    (ALIAS_BOMB + "arms: [{optimizer: sgd, lr: 0.1}]\n", "more than 200,000 values"),
    ("a: &x [1, *x]\narms: [{optimizer: sgd, lr: 0.1}]\n", "refers to itself"),
    ("name: a\nname: b\narms: [{optimizer: sgd, lr: 0.1}]\n", "duplicate key 'name'"),
    ("seed: " + "9" * 5000 + "\n", "refused"),
    ("arms: [{optimizer: sgd, lr: 0.1}]\nplan: {steps: true}\n", "plan.steps: must be a number, not true"),
    ("arms: [{optimizer: sgd, lr: 0.1}]\noutput: {root: \"a\\0b\"}\n", "contains a NUL character"),
    ("arms: [{optimizer: sgd, lr: 0.1}]\noutput: {trial_dir: \"t/{index}{oops}\"}\n", "output.trial_dir"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "refused"),
])
def test_hostile_specs_are_one_line(tmp_path, capsys, text, words):
    (tmp_path / "spec.yaml").write_text(text)
    started = time.time()
    assert words in one_line_exit_2(["validate", str(tmp_path / "spec.yaml")], capsys)
    assert time.time() - started < 20


def test_a_duplicate_json_key_and_a_folder_checkpoint_are_one_line(tmp_path, capsys):
    (tmp_path / "spec.json").write_text('{"arms": [{"optimizer": "sgd", "lr": 0.1}], "seed": 1, "seed": 2}')
    assert "duplicate key 'seed'" in one_line_exit_2(["validate", str(tmp_path / "spec.json")], capsys)
    spec = small_spec(**{"plan.init_from": str(tmp_path)})
    spec["output"] = {"root": str(tmp_path / "runs")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert "is not a regular file" in one_line_exit_2(["run", str(tmp_path / "spec.yaml")], capsys)


def test_a_grid_of_a_hundred_million_points_is_refused_at_once(tmp_path, capsys):
    grid = {f"task.hidden.{j}": list(range(1, 11)) for j in range(8)}
    spec = small_spec(**{"task.hidden": [4] * 8, "sweep": {"grid": grid}})
    spec["output"] = {"root": str(tmp_path / "runs")}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert "is more than 20,000 trials" in one_line_exit_2(["run", str(tmp_path / "spec.yaml")], capsys)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the monitor


@pytest.fixture
def monitor(tmp_path):
    from trainlab.monitor.server import make_server

    evil = tmp_path / "<img src=x onerror=alert(1)>"
    evil.mkdir()
    study = finished_study(evil)
    server = make_server(study, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield study, server.server_address[1]
    server.shutdown()
    server.server_close()


def get(port: int, path: str = "/", host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def test_the_monitor_escapes_checks_the_host_and_serves_many(monitor):
    study, port = monitor
    status, page = get(port)
    assert status == 200 and "<img src=x" not in page and html.escape(study.name) in page
    assert get(port, host="evil.example.com")[0] == 403  # DNS rebinding
    assert get(port, host=f"localhost:{port}")[0] == 200
    results = []

    def fetch():
        results.append(get(port, "/data.json")[0])

    threads = [threading.Thread(target=fetch) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) == 200


def test_a_client_hanging_up_is_quiet(monitor, capfd):
    import socket

    _, port = monitor
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /data.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    time.sleep(0.5)
    assert "Traceback" not in capfd.readouterr().err


def test_figures_are_written_whole(tmp_path):
    from trainlab.report.plotting import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    path = save_figure(fig, tmp_path / "figures" / "f.png")
    plt.close(fig)
    assert path.read_bytes()[:4] == b"\x89PNG" and [p.name for p in path.parent.iterdir()] == ["f.png"]
