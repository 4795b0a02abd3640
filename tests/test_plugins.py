"""A researcher's own model, data, optimizer and hooks, as a new user would bring them: a
plugin module beside the spec, named in `plugins:`, run by every executor, from the CLI and
from `python -c`, then resumed, reported and replayed with no flag."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from trainlab import Hook, load, run_study
from trainlab.cli import main
from trainlab.study import read_jsonl

from conftest import strip_times

PLUGIN = '''
"""A small ResNet-style model on CIFAR-shaped tensors, and a task class for the same."""
import torch
from pydantic import Field
from torch import nn

import trainlab


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, width=8, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = Block(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def make_model(width=8):
    return TinyResNet(width)


def make_data(n=192, seed=0, fail=False):
    if fail:
        raise ValueError("my data is not there yet")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = x.mean((2, 3)).argmax(1)  # the brightest channel
    cut = n * 3 // 4
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class TinyOptions(trainlab.Options):
    width: int = Field(8, gt=0)
    explode_at_step: int | None = None


@trainlab.register_task("tiny-resnet")
class TinyTask(trainlab.Task):
    Options = TinyOptions
    doc = "a tiny ResNet on the brightest-channel problem"

    def load(self, opts, seed=0):
        (x, y), (xt, yt) = make_data()
        return trainlab.TaskData(x, y, xt, yt, source="random CIFAR-shaped tensors")

    def make_model(self, opts, data):
        return TinyResNet(opts.width)

    def loss(self, output, target, reduction="mean", opts=None):
        if opts is not None and opts.explode_at_step is not None and torch.is_grad_enabled():
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls >= opts.explode_at_step:
                raise RuntimeError("my loss exploded on purpose")
        return super().loss(output, target, reduction)
'''

SPEC = {
    "name": "mine",
    "plugins": ["my_plugin"],
    "task": {"name": "python", "model": "my_plugin:make_model", "model_args": {"width": 6},
             "data": "my_plugin:make_data", "data_args": {"n": 160}},
    "arms": [{"name": "sgd", "optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
             {"name": "nadam", "optimizer": "torch.optim.NAdam", "lr": 0.01, "momentum_decay": 0.004}],
    "plan": {"steps": 6, "batch_size": 24, "eval_every": 3, "dtype": "float64"},
    "sweep": {"repeats": 2},
}


@pytest.fixture
def project(tmp_path):
    """An empty folder with the user's plugin module and spec, as docs/plugins.md builds it."""
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    return tmp_path


def metrics(study: Path) -> list:
    return [strip_times(read_jsonl(path)) for path in sorted(study.glob("trials/*/metrics.jsonl"))]


def cli(*argv, cwd) -> subprocess.CompletedProcess:
    """`trainlab ...` in a fresh process, elsewhere than the spec's folder (nothing on PYTHONPATH)."""
    return subprocess.run([sys.executable, "-m", "trainlab", *argv], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_a_plugin_study_runs_alike_in_every_executor_then_resumes_reports_and_lists(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    studies = {}
    for label, flags in (("inline", ["--workers", "1", "--threads", "1"]), ("pool", ["--workers", "2", "--threads", "1"])):
        result = cli("run", str(project / "spec.yaml"), "--quiet", "--output-root", str(project / label), *flags,
                     cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        studies[label] = Path(result.stdout.strip())
    assert len(metrics(studies["inline"])) == 2 and metrics(studies["inline"]) == metrics(studies["pool"])
    summary = json.loads((studies["inline"] / "study.json").read_text())["spec"]
    assert summary["plugins"] == ["my_plugin"] and summary["plugin_path"] == [str(project)]
    assert load(studies["inline"])["arm"].unique().tolist() == ["sgd", "nadam"]  # NAdam trained
    # no flag needed afterwards, from another folder and a fresh process
    for trial in studies["inline"].glob("trials/trial_0001/summary.json"):
        trial.unlink()
    assert cli("resume", str(studies["inline"]), "--quiet", "--threads", "1", cwd=elsewhere).returncode == 0
    assert metrics(studies["inline"]) == metrics(studies["pool"])
    report = cli("report", str(studies["inline"]), cwd=elsewhere)
    assert report.returncode == 0, report.stderr
    assert "nadam" in (studies["inline"] / "report.md").read_text()
    listed = cli("tasks", "--plugin", "my_plugin", cwd=project)
    assert "tiny-resnet: a tiny ResNet on the brightest-channel problem" in listed.stdout and "    width = 8" in listed.stdout


def test_ray_and_python_c_give_the_same_numbers(project, tmp_path_factory):
    pytest.importorskip("ray")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    base = cli("run", str(project / "spec.yaml"), "--quiet", "--output-root", str(project / "base"), "--threads", "1",
               cwd=elsewhere)
    ray = cli("run", str(project / "spec.yaml"), "--quiet", "--output-root", str(project / "ray"), "--executor", "ray",
              "--workers", "2", "--threads", "1", cwd=elsewhere)
    assert ray.returncode == 0, ray.stderr
    code = ("import trainlab; from trainlab.study.executor import ExecutorOptions; "
            f"print(trainlab.run_study({str(project / 'spec.yaml')!r}, quiet=True, executor=ExecutorOptions(workers=2, "
            f"threads=1), overrides=['output.root={project / 'python-c'}']))")
    python_c = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=elsewhere, timeout=600)
    assert python_c.returncode == 0, python_c.stderr
    runs = [Path(out.stdout.strip().splitlines()[-1]) for out in (base, ray, python_c)]
    assert metrics(runs[0]) == metrics(runs[1]) == metrics(runs[2])


def test_fault_recovery_replays_a_plugin_task_with_activation_faults(project, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    result = cli("fault-recovery", "--plugin", "my_plugin", "--task", "tiny-resnet", "--target", "activations",
                 "--layer", "block.conv2", "--num-experiments", "2", "--steps-after-injection", "4",
                 "--injection-window", "3:5", "--optimizers", "adam", "sgd", "--batch-size", "16", "--quiet",
                 "--output-root", str(project / "faults"), cwd=project)
    assert result.returncode == 0, result.stderr
    study = Path(result.stdout.strip())
    experiment = next(study.glob("experiment_*"))
    assert json.loads((experiment / "injection_config.json").read_text())["tensor"] == "block.conv2"
    replay = cli("fault", "replay", str(experiment), cwd=elsewhere)  # no --plugin: study.json names it
    assert replay.returncode == 0 and "reproduces" in replay.stdout, replay.stdout + replay.stderr


def test_wrong_hyperparameters_of_an_imported_optimizer_are_one_line(project, capsys):
    spec = {**SPEC, "arms": [{"optimizer": "torch.optim.NAdam", "lr": 0.01, "momentum_decay": 0.004, "bettas": [0.9, 0.9]}]}
    (project / "bad.yaml").write_text(yaml.safe_dump(spec))
    assert main(["validate", str(project / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "arms.0.bettas: unknown field (allowed here: betas, capturable" in err
    spec["arms"] = [{"optimizer": "torch.optim.NotAThing", "lr": 0.01}]
    (project / "bad.yaml").write_text(yaml.safe_dump(spec))
    assert main(["validate", str(project / "bad.yaml")]) == 2
    assert "arms.0.optimizer: module 'torch.optim' has no 'NotAThing'" in capsys.readouterr().err
    spec["arms"] = [{"optimizer": "torch.nn.Linear", "lr": 0.01}]
    (project / "bad.yaml").write_text(yaml.safe_dump(spec))
    assert main(["validate", str(project / "bad.yaml")]) == 2
    assert "'torch.nn.Linear' is not a torch.optim.Optimizer subclass" in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["inline", "pool", "ray"])
def test_an_error_inside_a_task_is_one_line_and_a_failing_exit_code(project, tmp_path_factory, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    spec = {**SPEC, "task": {"name": "tiny-resnet", "explode_at_step": 3}, "arms": SPEC["arms"][:1]}
    (project / "explode.yaml").write_text(yaml.safe_dump(spec))
    flags = {"inline": [], "pool": ["--workers", "2"], "ray": ["--executor", "ray", "--workers", "2"]}[executor]
    result = cli("run", str(project / "explode.yaml"), "--quiet", "--output-root", str(project / "out"), *flags,
                 cwd=tmp_path_factory.mktemp("elsewhere"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RuntimeError: my loss exploded on purpose" in lines[0], result.stderr
    assert "2 trial(s)" in lines[0] and "failure.json" in lines[0]
    failure = json.loads(next((project / "out").glob("*/trials/trial_0000/failure.json")).read_text())
    assert "Traceback" in failure["traceback"] and "my loss exploded" in failure["reason"]


def test_an_error_in_the_user_data_is_refused_before_anything_is_written(project, capsys):
    spec = {**SPEC, "task": {**SPEC["task"], "data_args": {"fail": True}}, "output": {"root": str(project / "never")}}
    (project / "nodata.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(project / "nodata.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "my data is not there yet" in err
    assert not (project / "never").exists()


def test_hooks_and_sinks_from_python(project, monkeypatch):
    monkeypatch.syspath_prepend(str(project))

    class Counter(Hook):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, trial, step):
            self.steps += 1
            trial.log({"kind": "probe", "probe": "counter", "arm": "sgd", "step": step, "seen": self.steps})

    class ListSink:
        def __init__(self):
            self.records, self.flushes = [], 0

        def log(self, record):
            self.records.append(record)

        def flush(self):
            self.flushes += 1

    sink = ListSink()
    study = run_study(str(project / "spec.yaml"), [f"output.root={project / 'py'}"], quiet=True, hooks=[Counter()],
                      sinks=[sink])
    probes = [r for r in sink.records if r.get("probe") == "counter"]
    assert [r["trial"] for r in probes] == [0] * 6 + [1] * 6 and probes[-1]["seen"] == 12  # one hook, both trials
    stored = [r for path in sorted(study.glob("trials/*/metrics.jsonl")) for r in read_jsonl(path)]
    assert len(sink.records) == len(stored) and sink.flushes > 0


def test_a_dataset_with_augmentation_trains_the_same_with_loader_workers(project, monkeypatch):
    monkeypatch.chdir(project)  # a spec given as a dict: its plugin modules are looked for here
    (project / "augmented.py").write_text(textwrap.dedent('''
        import torch
        from torch.utils.data import Dataset

        class Noisy(Dataset):
            """Random-noise augmentation: drawn from torch's global generator, as transforms do."""
            def __init__(self, x, y):
                self.x, self.y = x, y
            def __len__(self):
                return len(self.y)
            def __getitem__(self, i):
                return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]

        def data(n=160):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, 5, generator=g)
            y = (x[:, 0] > 0).long()
            return Noisy(x[:120], y[:120]), Noisy(x[120:], y[120:])

        def model():
            return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    '''))
    spec = {"name": "ds", "plugins": ["augmented"], "task": {"name": "python", "model": "augmented:model",
                                                              "data": "augmented:data"},
            "arms": [{"optimizer": "sgd", "lr": 0.1}, {"optimizer": "gd", "lr": 0.1}],
            "plan": {"steps": 8, "batch_size": 16, "eval_every": 4, "dtype": "float64"},
            "output": {"root": str(project / "ds")}}
    runs = [run_study(spec, {"plan.loader_workers": workers}, quiet=True) for workers in (0, 2, 0)]
    assert metrics(runs[0]) == metrics(runs[1]) == metrics(runs[2])
    frame = load(runs[0])
    assert set(frame["arm"]) == {"sgd", "gd"} and frame["loss"].notna().all()
    source = json.loads(next(runs[0].glob("trials/*/summary.json")).read_text())["data_source"]
    assert "a Dataset of 120 training samples" in source


def test_hf_gpt2_on_a_local_text_file_trains_and_a_dp_arm_is_refused_naming_the_layer(project, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("datasets")
    corpus = project / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox jumps over the lazy dog" for i in range(200)))
    gpt2 = {"name": "hf-text", "path": str(corpus), "block_size": 32,
            "model": "transformers:GPT2LMHeadModel",
            "model_args": {"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32, "bos_token_id": 0,
                           "eos_token_id": 0}}
    spec = {"name": "gpt2", "task": gpt2, "arms": [{"optimizer": "adamw", "lr": 3e-3}],
            "plan": {"steps": 6, "batch_size": 8, "eval_every": 3}, "output": {"root": str(project / "gpt2")}}
    study = run_study(spec, quiet=True)
    evals = load(study).query("kind == 'eval'")
    assert evals["loss"].iloc[-1] < evals["loss"].iloc[0] and "perplexity" in evals
    dp = {**spec, "arms": [{"optimizer": "sgd", "lr": 0.1, "privacy": {"mode": "bk", "noise_multiplier": 1.0}}]}
    (project / "dp.yaml").write_text(yaml.safe_dump(dp))
    assert main(["run", str(project / "dp.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "transformer.wte.weight" in err and "tied" in err


def test_a_task_defined_in_python_c_is_refused_for_workers_with_a_clear_line(tmp_path):
    code = textwrap.dedent(f'''
        import torch, trainlab
        @trainlab.register_task("inline-only")
        class T(trainlab.Task):
            def load(self, opts, seed=0):
                x = torch.randn(40, 3); return trainlab.TaskData(x, (x[:, 0] > 0).long(), x[:8], (x[:8, 0] > 0).long(), source="-")
            def make_model(self, opts, data):
                return torch.nn.Linear(3, 2)
        spec = {{"task": {{"name": "inline-only"}}, "arms": [{{"optimizer": "sgd", "lr": 0.1}}], "plan": {{"steps": 2, "batch_size": 8}},
                "sweep": {{"repeats": 2}}, "output": {{"root": {str(tmp_path / 'runs')!r}}}}}
        print(trainlab.run_study(spec, quiet=True))          # one process: fine
        try:
            trainlab.run_study(spec, quiet=True, workers=2)
        except trainlab.UserError as err:
            print("refused:", err)
    ''')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "refused: task.name: task 'inline-only' is defined in __main__" in result.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written for the refused run


def cifar10_files(root: Path, per_batch: int = 16) -> None:
    """CIFAR-10's own python format: five training batches, a test batch and the metadata."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[:, :1024] = np.clip(data[:, :1024].astype(int) // 4 + 25 * labels[:, None], 0, 255)  # learnable
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels.tolist()}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


def test_torchvision_resnet18_on_cifar10_format_files(tmp_path):
    try:
        import torchvision  # noqa: F401  a torchvision built for another torch fails right here
    except Exception as exc:
        pytest.skip(f"torchvision does not import beside this torch: {exc}")
    cifar10_files(tmp_path / "cifar")
    task = {"name": "vision", "dataset": "CIFAR10", "root": str(tmp_path / "cifar"), "augment": True,
            "model": "torchvision.models:resnet18", "model_args": {"num_classes": 10}}
    spec = {"name": "cifar", "task": task, "arms": [{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
                                                    {"optimizer": "muon", "lr": 0.02}],
            "plan": {"steps": 4, "batch_size": 8, "eval_every": 2}, "output": {"root": str(tmp_path / "runs")}}
    study = run_study(spec, quiet=True)
    summary = json.loads(next(study.glob("trials/*/summary.json")).read_text())
    assert "a Dataset of 80 training samples" in summary["data_source"]
    assert summary["arms"]["muon"]["param_groups"]["muon"]["roles"]["conv"] > 10_000_000  # resnet18's filters
    assert any("augmented" in note for note in summary["notes"])


KINDS_PLUGIN = '''
"""One file: a fault model, a probe and a DP layer rule of the user's own."""
import torch
from torch import nn

import trainlab
from trainlab.privacy.rules import register_rule
from trainlab.probes import probe_every


@trainlab.register_fault_model("halve")
class Halve(trainlab.FaultModel):
    doc = "halve the hit elements"

    def apply(self, old, prepared):
        return old / 2


class NormOptions(trainlab.Options):
    squared: bool = False


class WeightNorm(trainlab.Hook):
    def __init__(self, options):
        self.every, self.squared = options["every"], options["squared"]

    def on_step_end(self, trial, step):
        if step % probe_every(trial, self.every) == 0:
            for arm in trial.arms:
                norm = sum(float(p.detach().pow(2).sum()) for p in arm.model.parameters())
                trial.log({"kind": "probe", "probe": "weight-norm", "arm": arm.name, "step": step,
                           "norm": norm if self.squared else norm ** 0.5})


trainlab.register_probe("weight-norm", WeightNorm, Options=NormOptions, doc="total weight norm")


class Gain(nn.Module):
    """y = x * g, one gain per feature."""

    def __init__(self, features):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return x * self.gain


@register_rule(Gain)
class GainRule:
    params = ("gain",)

    @staticmethod
    def check(module):
        pass

    @staticmethod
    def per_sample(x, g):
        return (x * g).reshape(len(x), -1, x.shape[-1]).sum(1)  # [B, features]

    @classmethod
    def norms_sq(cls, module, x, g, keys, method, tile, budget=None):
        grads = cls.per_sample(x, g)
        return {"gain": grads.pow(2).sum(1)}, {"gain": grads}

    @classmethod
    def clipped(cls, module, x, g, c, keys, cache=None):
        return {"gain": c @ (cache or {}).get("gain", cls.per_sample(x, g))}


def gained_model():
    return nn.Sequential(nn.Linear(5, 8), Gain(8), nn.Tanh(), nn.Linear(8, 2))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return (x[:160], y[:160]), (x[160:], y[160:])
'''


def test_a_fault_model_a_probe_and_a_dp_rule_are_each_one_file_of_the_users(tmp_path, monkeypatch):
    (tmp_path / "kinds.py").write_text(KINDS_PLUGIN)
    monkeypatch.chdir(tmp_path)
    task = {"name": "python", "model": "kinds:gained_model", "data": "kinds:data"}
    spec = {"name": "kinds", "plugins": ["kinds"], "task": task,
            "arms": [{"optimizer": "sgd", "lr": 0.1},
                     {"name": "dp", "optimizer": "sgd", "lr": 0.1,
                      "privacy": {"mode": "bk", "max_grad_norm": 0.5, "noise_multiplier": 0.0}}],
            "plan": {"steps": 6, "batch_size": 20, "eval_every": 3, "dtype": "float64"},
            "events": [{"kind": "fault", "step": 2, "tensor": "1.gain", "indices": [0, 3], "fault": "halve"}],
            "probes": [{"kind": "weight-norm", "every": 2, "squared": True}],
            "output": {"root": str(tmp_path / "runs")}}
    study = run_study(spec, quiet=True)
    frame = load(study)
    norms = frame[frame["probe"] == "weight-norm"]
    assert sorted(norms["step"].unique()) == [2, 4, 6] and (norms["norm"] > 0).all()
    injection = json.loads(next(study.glob("trials/*/injection_config.json")).read_text())
    for arm in ("sgd", "dp"):
        assert injection["arms"][arm]["new"] == [v / 2 for v in injection["arms"][arm]["old"]]
    # the user's DP rule gives the reference's (torch.func) clipped gradient
    from trainlab.privacy import DPEngine
    import kinds

    torch.manual_seed(0)
    model = kinds.gained_model().double()
    (x, y), _ = kinds.data()
    x = x.double()
    grads = {}
    for mode in ("per_sample", "bk", "ghost", "fused"):
        for p in model.parameters():
            p.grad = None
        DPEngine(model, mode, max_grad_norm=0.3).backward(x[:16], y[:16])
        grads[mode] = [p.grad.clone() for p in model.parameters()]
    for mode in ("bk", "ghost", "fused"):
        for a, b in zip(grads["per_sample"], grads[mode]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
