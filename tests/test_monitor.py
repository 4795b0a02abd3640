import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import small_spec
from trainlab.cli import main
from trainlab.monitor import collect
from trainlab.monitor.server import make_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def blob_study_spec(root: Path, steps: int) -> Path:
    spec = {"name": "live", "seed": 0,
            "task": {"name": "denoise-2layer", "dim": 16, "hidden": 8, "samples_per_epoch": 640, "n_val": 100},
            "arms": [{"optimizer": "adam", "lr": 0.02}, {"optimizer": "sgd", "lr": 0.1}],
            "plan": {"steps": steps, "batch_size": 64, "eval_every": 10},
            "probes": [{"kind": "blobs", "every": 10, "pairs": 100, "min_samples": 5}],
            "output": {"root": str(root)}}
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def server_for():
    servers = []

    def start(folder, interval=1.0):
        server = make_server(folder, port=0, interval=interval)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def render(url: str, profile: Path) -> str:
    """The page's DOM after its script ran, from a real headless Chromium."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=2000", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout


def points(dom: str) -> int:
    return int(re.search(r'id="points">(\d+)<', dom).group(1))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_live_page_shows_new_points_while_a_study_trains(tmp_path, server_for):
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "run", str(blob_study_spec(tmp_path, 60000)), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not list(tmp_path.glob("live-*/trials/trial_0000/metrics.jsonl")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
            time.sleep(0.1)
        study = next(tmp_path.glob("live-*"))
        url = server_for(study)
        time.sleep(1.0)
        first = render(url, tmp_path / "profile1")
        time.sleep(2.0)
        second = render(url, tmp_path / "profile2")
        assert proc.poll() is None, "the study ended before the page was checked twice"
        assert points(second) > points(first) > 0
        for dom in (first, second):
            assert 'class="live">live<' in dom
            for metric in ("silhouette", "clusters", "correlation", "loss"):
                assert f'data-metric="{metric}"' in dom
        assert second.count('class="series"') >= 6  # two arms x (probe panels + train/held-out loss)
    finally:
        proc.kill()
        proc.wait()


def test_collect_reads_a_study_tolerates_torn_lines_and_reports_status(tmp_path):
    study_root = tmp_path / "runs"
    spec = small_spec(probes=[{"kind": "norms", "every": 5}], arms=[{"name": "wild", "optimizer": "sgd", "lr": 1e300},
                                                                    {"name": "calm", "optimizer": "sgd", "lr": 0.1}])
    spec["output"] = {"root": str(study_root)}
    from trainlab import run_study

    study = run_study(spec, quiet=True)
    metrics = study / "trials" / "trial_0000" / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('{"kind": "train", "arm": "calm", "st\n\x00\xff garbage\n')
    data = collect(study, ["loss", "accuracy"])
    status = {run["name"]: run["status"] for run in data["runs"]}
    assert status == {"wild": "diverged", "calm": "finished"}
    calm = next(run for run in data["runs"] if run["name"] == "calm")
    assert set(calm["series"]["loss"]) == {"train", "held-out"} and len(calm["series"]["loss"]["train"]) == 20


def test_static_plot_writes_four_panels(tmp_path):
    spec_path = blob_study_spec(tmp_path, 40)
    assert main(["run", str(spec_path), "--quiet"]) == 0
    study = next(tmp_path.glob("live-*"))
    out = tmp_path / "plot.png"
    assert main(["monitor", str(study), "--static", "--output", str(out)]) == 0
    assert out.stat().st_size > 30_000
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 1000 and height > 600  # a 2 x 2 grid of panels


def test_the_server_serves_only_its_two_pages(tmp_path, server_for):
    spec_path = blob_study_spec(tmp_path, 20)
    assert main(["run", str(spec_path), "--quiet"]) == 0
    study = next(tmp_path.glob("live-*"))
    url = server_for(study)
    assert urllib.request.urlopen(url).status == 200
    assert urllib.request.urlopen(url + "data.json").status == 200
    for bad in ("../spec.yaml", "study.json", "trials/trial_0000/metrics.jsonl", "%2e%2e/spec.yaml", "..%2fspec.yaml"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + bad)
        assert info.value.code == 404
    assert url.startswith("http://127.0.0.1:")


def test_monitor_errors_are_one_line(tmp_path, capsys):
    assert main(["monitor", str(tmp_path)]) == 2
    assert "neither a study directory" in capsys.readouterr().err
