import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
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


def seeded_study(tmp_path: Path) -> Path:
    """Two arms x three seeds; then, as a probe would write them, a silhouette with a gap (one
    cluster: None) and a loss spike of 1e15 in one seed."""
    from trainlab import run_study

    spec = small_spec(sweep={"repeats": 3}, plan__steps=20, plan__eval_every=5)
    spec["output"] = {"root": str(tmp_path / "runs")}
    study = run_study(spec, quiet=True)
    for index in range(3):
        with open(study / "trials" / f"trial_{index:04d}" / "metrics.jsonl", "a") as fh:
            for step, value in [(5, 0.4), (10, None), (15, 0.6 + index / 100), (20, 0.7)]:
                fh.write(json.dumps({"kind": "probe", "probe": "blobs", "arm": "sgd", "step": step,
                                     "silhouette": value}) + "\n")
    with open(study / "trials" / "trial_0000" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": "eval", "arm": "adam", "step": 20, "loss": 1e15, "accuracy": 0.1}) + "\n")
    return study


def test_seed_bands_gaps_one_step_range_and_log_axes(tmp_path):
    from trainlab import load

    study = seeded_study(tmp_path)
    data = collect(study, ["loss", "silhouette"])
    assert data["x_range"] == [0, 20] and data["scales"] == {"loss": "log", "silhouette": "linear"}
    assert {run["group"] for run in data["runs"]} == {"sgd", "adam"}
    bands = {(b["name"], b["line"]): b for b in data["bands"]["loss"]}
    assert set(bands) == {(arm, line) for arm in ("sgd", "adam") for line in ("train", "held-out")}
    frame = load(study)
    train = frame[(frame.kind == "train") & (frame.arm == "sgd")].groupby("step")["loss"]
    for step, mean, std in bands[("sgd", "train")]["points"]:  # mean and std over the three seeds, step by step
        assert bands[("sgd", "train")]["seeds"] == 3
        assert np.isclose(mean, train.mean()[step]) and np.isclose(std, train.std()[step])
    silhouette = next(b for b in data["bands"]["silhouette"] if b["name"] == "sgd")
    assert [p[0] for p in silhouette["points"]] == [5, 10, 15, 20] and silhouette["points"][1] == [10, None, None]
    series = next(r for r in data["runs"] if r["name"] == "trial 0 / sgd")["series"]["silhouette"]["blobs"]
    assert [10, None] in series  # a gap, not a line from 0.4 to 0.6
    out = tmp_path / "plot.png"
    assert main(["monitor", str(study), "--static", "--output", str(out), "--metrics", "loss", "silhouette"]) == 0
    assert out.stat().st_size > 20_000


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_the_page_draws_bands_gaps_ticks_and_distinct_colours(tmp_path, server_for):
    study = seeded_study(tmp_path)
    dom = render(server_for(study) + "?", tmp_path / "profile")
    assert dom.count('class="band"') >= 4 + 1  # loss: 2 arms x train/held-out; silhouette: sgd
    assert "loss (log axis)" in dom and dom.count('class="xtick"') >= 2 * 4
    assert re.search(r'class="ytick">1e\+1[0-5]<', dom)  # the log axis reaches the spike, with round ticks
    silhouette = dom.split('data-metric="silhouette"')[1].split('class="panel"')[0]
    assert silhouette.count('class="series"') == 2  # the band's mean, broken at the gap into two segments
    from trainlab import run_study

    spec = small_spec(arms=[{"name": f"a{i}", "optimizer": "sgd", "lr": 0.01 * (i + 1)} for i in range(13)],
                      plan__steps=2)
    spec["output"] = {"root": str(tmp_path / "many")}
    many = run_study(spec, quiet=True)
    dom = render(server_for(many), tmp_path / "profile2")
    legend = dom.split('data-metric="loss"')[1].split('class="legend"')[1].split("</div>")[0]
    colours = re.findall(r'style="color:([^"]+)"', legend)
    assert len(colours) == 26 and len(set(colours)) == 13  # 13 arms (train and held-out each), 13 colours
