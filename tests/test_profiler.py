import json

import pytest

from trainlab import profile_batch_sizes
from trainlab.cli import main
from trainlab.errors import UserError
from trainlab.recipes.batch_size import ProfileRecord, parse_size, recommend
from trainlab.spec import load_spec

SETS = ["task.dim=256", "task.hidden=128", "task.samples_per_epoch=24000", "task.n_val=500", "probes=[]"]


# Measured peaks of this spec on CPU: about 31, 39 and 49-61 MiB for batches 500-2000 and 300 MiB
# for 24000. The budget sits 2.5x above the largest fitting size and 2x below the OOM row, so the
# machine's load cannot move a size across it.
BUDGET_MIB = 150


def test_four_sizes_give_a_table_a_recommendation_and_an_oom_row(tmp_path, capsys):
    out = tmp_path / "profile.md"
    argv = ["profile-batch-size", "reference-3blob", "--batch-sizes", "500", "1000", "2000", "24000",
            "--epochs", "1", "--memory-budget", f"{BUDGET_MIB}MB", "--output", str(out), "--quiet"]
    for s in SETS:
        argv += ["--set", s]
    assert main(argv) == 0
    report = out.read_text()
    assert "| 24000 | oom |" in report and "exceeds the budget" in report
    for size in (500, 1000, 2000):
        assert f"| {size} | ok |" in report
    assert "**Recommendation:** batch" in report and "highest throughput within the budget" in report
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["batch_size"] for r in rows] == [500, 1000, 2000, 24000]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["samples_per_second"] > 0 and r["seconds_per_epoch"] > 0 and r["final_test_loss"] > 0 for r in ok)
    assert all(r["peak_memory_bytes"] < BUDGET_MIB * 2**20 for r in ok)


def test_python_api_returns_profile_records():
    spec = load_spec("reference-3blob", SETS)
    records = profile_batch_sizes(spec, [1000], epochs=0.5, memory_budget=10**9, quiet=True)
    assert len(records) == 1 and isinstance(records[0], ProfileRecord) and records[0].status == "ok"
    assert records[0].steps == 12  # half of 24 steps per epoch


def test_sizes_and_recommendation_logic():
    assert parse_size("512MB") == 512 * 2**20 and parse_size("1.5G") == int(1.5 * 2**30) and parse_size("800") == 800
    with pytest.raises(UserError, match="--memory-budget"):
        parse_size("lots")
    records = [ProfileRecord(10, "ok", 1.0, 100.0, 10, 1.0, 0.5), ProfileRecord(20, "ok", 0.5, 200.0, 20, 1.0, 0.7),
               ProfileRecord(40, "oom", message="peak over")]
    best, why = recommend(records, 2**30)
    assert best.batch_size == 20 and "excluded: batch 40 (oom" in why and "batch 10 reached a lower held-out loss" in why
    assert recommend([ProfileRecord(40, "oom")], 1)[0] is None
