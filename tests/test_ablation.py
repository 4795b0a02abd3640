import json
from collections import Counter

import pytest

from conftest import needs_shakespeare
from trainlab.cli import main
from trainlab.errors import SpecError
from trainlab.recipes.ablation import LEGACY_GRID, PATHS, build_spec
from trainlab.spec import load_spec
from trainlab.study import expand


def test_the_legacy_grid_and_a_seeded_subset_that_reaches_every_value():
    spec = load_spec(build_spec(max_experiments=20))
    assert spec["plan"]["steps"] == 50 and spec["plan"]["batch_size"] == 16 and spec["plan"]["eval_every"] == 5
    assert len(expand(load_spec(build_spec()))) == 6 * 5 * 3 * 3
    plans = expand(spec)
    assert len(plans) == 20 and len({p.seed for p in plans}) == 1  # the same seed for every trial
    assert len({tuple(sorted(p.overrides.items())) for p in plans}) == 20  # distinct configurations
    for name, values in LEGACY_GRID.items():  # balanced: every value at least twice, none more than once over
        counts = Counter(p.overrides[PATHS[name]] for p in plans)
        assert set(counts) == set(values) and min(counts.values()) >= 2, (name, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (name, counts)
    assert build_spec(quick=True, steps=7)["plan"]["steps"] == 7 and build_spec(quick=True)["plan"]["steps"] == 20


def test_a_huge_grid_is_subset_without_listing_it_and_refused_whole():
    grid = {f"arms.0.lr": [0.1 * (i + 1) for i in range(10)], **{f"task.hidden.{j}": list(range(1, 11)) for j in range(7)}}
    spec = {"task": {"name": "mnist-mlp", "source": "offline", "hidden": [4] * 7},
            "arms": [{"optimizer": "sgd", "lr": 0.1}], "sweep": {"grid": grid, "max_trials": 30}}
    plans = expand(load_spec(spec))  # 10^8 grid points, 30 drawn
    assert len(plans) == 30
    with pytest.raises(SpecError, match="100,000,000 override set.* is more than 20,000 trials"):
        expand(load_spec({**spec, "sweep": {"grid": grid}}))


@needs_shakespeare
def test_quick_ablation_writes_the_report_and_analyze_only_rebuilds_it(tmp_path, capsys):
    assert main(["ablation", "--quick", "--quiet", "--output-root", str(tmp_path)]) == 0
    study = next(tmp_path.iterdir())
    for name in ("report.md", "analysis.json", "final_results.json", "comprehensive_report.json", "config.json",
                 "figures/ablation.png", "figures/effects.png", "figures/curves.png", "figures/configurations.png"):
        assert (study / name).exists(), name
    results = json.loads((study / "final_results.json").read_text())
    assert len(results) == 4 and {"muon_lr", "adamw_lr_ratio", "final_test_loss", "final_train_accuracy",
                                  "final_test_perplexity", "train_time_s", "threads"} <= set(results[0])
    import math
    assert all(math.isclose(r["final_test_perplexity"], math.exp(r["final_test_loss"]), rel_tol=1e-9) for r in results)
    report = (study / "report.md").read_text()
    assert "adjusted mean" in report and "| arms.muon.lr | 0.01 | 2 |" in report  # n per value
    assert "Highest mean held-out accuracy" not in report  # one arm: nothing to rank
    analysis = json.loads((study / "analysis.json").read_text())
    assert analysis["metric"] == "final_test_loss" and analysis["higher_is_better"] is False
    metrics_before = (study / "trials" / "trial_0000" / "metrics.jsonl").stat().st_mtime_ns
    (study / "report.md").unlink()
    assert main(["ablation", "--analyze-only", "--results-dir", str(study)]) == 0
    assert (study / "report.md").exists() and "## Hyperparameters" in (study / "report.md").read_text()
    assert (study / "trials" / "trial_0000" / "metrics.jsonl").stat().st_mtime_ns == metrics_before  # no training
    assert main(["ablation", "--analyze-only", "--results-dir", str(tmp_path / "nope")]) == 2
    assert "not a study directory" in capsys.readouterr().err


@needs_shakespeare
def test_rerunning_into_a_killed_study_finishes_only_the_missing_trials(tmp_path):
    assert main(["ablation", "--quick", "--quiet", "--output-root", str(tmp_path)]) == 0
    study = next(tmp_path.iterdir())
    kept = (study / "trials" / "trial_0001" / "summary.json").stat().st_mtime_ns
    (study / "trials" / "trial_0002" / "summary.json").unlink()  # as if killed during trial 2
    assert main(["ablation", "--results-dir", str(study), "--quiet"]) == 0
    assert (study / "trials" / "trial_0002" / "summary.json").exists()
    assert (study / "trials" / "trial_0001" / "summary.json").stat().st_mtime_ns == kept
    assert "Interaction of the two most important fields" in (study / "report.md").read_text()
