"""Test set-up: real data from ../shared/data (never copied here), no downloads."""

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
os.environ.setdefault("TRAINLAB_DATA", str(SHARED))
os.environ["TRAINLAB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("XDG_CACHE_HOME", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "xdg"))
# the key that signs the studies tests make (study/trust.py): the tests' own, not the user's
os.environ.setdefault("TRAINLAB_CONFIG", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "config"))


def _has(*parts) -> bool:
    return any((Path(d) / Path(*parts)).exists() for d in os.environ["TRAINLAB_DATA"].split(os.pathsep) if d)


needs_mnist = pytest.mark.skipif(not _has("mnist", "train-images-idx3-ubyte.gz"),
                                 reason="MNIST IDX files not under $TRAINLAB_DATA")
needs_shakespeare = pytest.mark.skipif(not _has("tinyshakespeare", "input.txt"),
                                       reason="tiny-shakespeare not under $TRAINLAB_DATA")


def small_spec(**changes) -> dict:
    """A fast two-arm study on the offline digits; `changes` are --set style overrides."""
    spec = {
        "name": "t",
        "seed": 3,
        "task": {"name": "mnist-mlp", "source": "offline", "n_train": 512, "n_test": 256},
        "arms": [{"name": "sgd", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9},
                 {"name": "adam", "optimizer": "adam", "lr": 0.01}],
        "plan": {"steps": 20, "batch_size": 32, "dtype": "float64", "eval_every": 10},
    }
    from trainlab.spec import set_path

    for path, value in changes.items():
        set_path(spec, path.replace("__", "."), value)
    return spec


def strip_times(records: list[dict]) -> list[dict]:
    """Metric records without wall-clock times: what must be equal between two runs."""
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def run_spec_until_killed(spec: dict, folder: Path, ready) -> None:
    """Run `trainlab run` on `spec` in a subprocess and SIGKILL it once `ready()` holds
    (within 120 s; the test fails if the run ends first)."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", "run", str(path), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not ready():
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
