"""The lock-step trainer: every arm of a trial starts from the same weights and sees the same
batches, so any difference between arms is the optimizer's (or its option's) doing.

One Trial = task x arms x plan x events x probes with one seed. It writes records through a
`sink` (anything with log(dict) and flush()) and returns a summary dict.
"""

import copy
import hashlib
import json
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.batches import rows, split, to_device
from ..data.samplers import FixedIndices, GeneratedStream, IndexStream
from ..errors import SpecError, UserError, user_code
from ..io import Anchor, anchor_at
from ..optim import build_optimizer, lr_factor, set_lr_factor
from ..models.outputs import forward
from ..plugin import Registries, registries as process_registries
from ..tasks import IGNORE, perplexity
from ..tasks.loading import DatasetBatches, materialise
from .hooks import ROLLBACK, SKIP, STEP, Steps
from .private import PrivateArm

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def derive_seed(seed: int, *parts) -> int:
    """A 63-bit seed for one purpose ('init', 'data', ...) derived from the trial seed."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def load_weights(path: str | Path) -> dict:
    """A state_dict from a checkpoint file, never executing code from it."""
    if Path(path).exists() and not Path(path).is_file():  # a folder, a FIFO (which would block), a device
        raise UserError(f"checkpoint {str(path)!r} is not a regular file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {str(path)!r} not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {str(path)!r} refused: not a weights-only torch file ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(path)!r} holds no state_dict")
    return state


class MemorySink:
    """Keeps a trial's records in a list (replays, tests, runs whose store lives elsewhere)."""

    def __init__(self):
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass


@dataclass
class ArmState:
    name: str
    spec: dict
    model: nn.Module
    optimizer: object
    full_batch: bool
    diverged_step: int | None = None
    diverged_reason: str | None = None
    time_s: float = 0.0
    last_train: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    best_eval_accuracy: float = -math.inf
    batch: tuple | None = None  # (inputs, targets) of the current step; hooks may read or replace it
    guards: list = field(default_factory=list)  # mitigations, in spec order
    attempt: int = 0  # 1 while a step is executed again after a rollback
    history: list = field(default_factory=list)  # this arm's eval records
    private: object = None  # a PrivateArm when the arm trains with DP-SGD

    @property
    def alive(self) -> bool:
        return self.diverged_step is None


@dataclass
class Inspection:
    model: nn.Module  # the initial model every arm would start from
    batch: tuple  # the first training batch (inputs, targets), on the trial's device
    n_train: int
    steps_per_epoch: int
    total_steps: int
    parameter_shapes: dict


def planned_steps(plan: dict, steps_per_epoch: int) -> int:
    """The number of updates a plan makes: plan.steps, or its epochs rounded up to whole steps."""
    return plan["steps"] or math.ceil(plan["epochs"] * steps_per_epoch)


class Trial:
    def __init__(self, spec: dict, sink=None, artifact_dir: Anchor | Path | None = None, progress=None, hooks=(),
                 registries: Registries | None = None, study_root: Path | None = None):
        """`spec` is resolved (load_spec); `hooks` are Hooks added after the spec's events and
        probes; `registries` default to this process's, with the spec's plugins loaded;
        `study_root` resolves a `plan.init_from` of the form `study:<path in the study>`.
        `artifact_dir` is where hooks write (checkpoints, a fault's record): a study gives its
        trial's folder as an io.Anchor, checked from the study root at every write; a plain
        folder is anchored at itself. Hooks write through `trial.artifacts`."""
        self.study_root = study_root
        self.stop_requested = False  # a hook may end training after this step (it is evaluated, then the trial ends)
        self.setup(spec, registries)
        plugins = self.registries
        self.sink = sink
        self.artifacts = None if artifact_dir is None else anchor_at(artifact_dir)
        self.artifact_dir = None if self.artifacts is None else self.artifacts.path  # to read from
        self.progress = progress
        initial = self.initial_model()
        self.arms = [self._make_arm(arm, initial) for arm in spec["arms"]]
        self.hooks = [plugins.events.get(e["kind"]).target(e) for e in spec["events"]]
        self.hooks += [plugins.probes.get(p["kind"]).target(p) for p in spec["probes"]] + list(hooks)
        self.step = 0
        self.indices: torch.Tensor | None = None  # sample indices of the current step, shared by all arms
        self.forward_seed = derive_seed(self.seed, "forward", 0)
        self.step_batch: tuple | None = None
        self.last_probes: dict[str, dict] = {}
        self.eval_steps = Steps()  # extra evaluations hooks ask for (e.g. around a fault); ranges stay lazy
        self.notes: list[str] = list(self.data.notes)  # substitutions the report states in its first lines
        for arm in self.arms:
            for note in (getattr(arm.optimizer, "split", None) or {}).get("notes", []):
                self.note(f"arm {arm.name}: {note}")

    @classmethod
    def inspect(cls, spec: dict, registries: Registries | None = None) -> "Inspection":
        """What a trial of `spec` would train on, without arms, optimizers or hooks: the
        initial model, the first training batch, the data's size and the number of steps."""
        trial = cls.__new__(cls)
        trial.setup(spec, registries)
        model = trial.initial_model()
        indices, batch = trial.next_batch()
        return Inspection(model, batch, trial.data.n_train, trial.stream.steps_per_epoch, trial.total_steps,
                          {name: tuple(p.shape) for name, p in model.named_parameters()})

    def setup(self, spec: dict, registries: Registries | None) -> None:
        """The task, its data and the index stream: everything but the arms."""
        self.registries = registries or process_registries(spec.get("plugins", []), spec.get("plugin_path"))
        plugins = self.registries
        self.spec = spec
        self.seed = spec["seed"]
        self.plan = spec["plan"]
        self.task = plugins.tasks.get(spec["task"]["name"], "task.name").target
        self.options = self.task.Options(**{k: v for k, v in spec["task"].items() if k != "name"})
        self.device = self._device(self.plan["device"])
        self.dtype = DTYPES[self.plan["dtype"]]
        with user_code("task", f"task {self.task.name!r} loading its data"):
            self.data = self.task.load(self.options, seed=derive_seed(self.seed, "task-data"))
        self.generated = self.data.sample is not None
        self.x_train = self.y_train = None  # in memory unless the samples are generated or come from a Dataset
        self.loader = None  # the batches of a Dataset, started with the run (trial.run)
        if self.generated:  # fresh samples every step
            self.stream = GeneratedStream(self.data.sample, self.data.samples_per_epoch, self.plan["batch_size"],
                                          derive_seed(self.seed, "data"))
        else:
            if self.data.train_set is None:
                self.x_train, self.y_train = self._to_device(self.data.x_train, self.data.y_train)
            try:
                self.stream = IndexStream(self.data.n_train, self.plan["batch_size"], self.plan["sampler"],
                                          derive_seed(self.seed, "data"))
            except ValueError as exc:
                raise SpecError("plan.batch_size", str(exc)) from None
        self.x_test, self.y_test = self._to_device(self.data.x_test, self.data.y_test)
        self.total_steps = planned_steps(self.plan, self.stream.steps_per_epoch)

    # ------------------------------------------------------------ set-up

    @staticmethod
    def _device(name: str) -> torch.device:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise SpecError("plan.device", f"{name!r} requested but this torch sees no CUDA device; use 'cpu'")
        if name == "mps" and not torch.backends.mps.is_available():
            raise SpecError("plan.device", "'mps' requested but it is not available; use 'cpu'")
        return torch.device(name)

    def _to_device(self, x, y: torch.Tensor):
        return to_device(x, self.device, self.dtype), to_device(y, self.device, self.dtype)

    def initial_model(self, seed: int | None = None) -> nn.Module:
        """The model every arm starts from: built from the 'init' seed of `seed` (the trial's by
        default) in float32 and cast, or loaded from plan.init_from."""
        with torch.random.fork_rng(devices=[]):  # models are built on the CPU: seed only its generator
            torch.default_generator.manual_seed(derive_seed(self.seed if seed is None else seed, "init"))
            with user_code("task", f"task {self.task.name!r} building its model"):
                model = self.task.make_model(self.options, self.data)
        model = model.to(device=self.device, dtype=self.dtype)  # cast before loading: no rounding
        source = self.plan["init_from"]
        if source and source.startswith("study:"):  # a file inside the study (made when it was created)
            if getattr(self, "study_root", None) is None:
                return model  # checking a spec before its study exists: the shapes are what matters
            source = str(Path(self.study_root) / source.removeprefix("study:"))
        if source:
            try:
                model.load_state_dict(load_weights(source))
            except RuntimeError as exc:
                raise SpecError("plan.init_from", f"checkpoint does not fit the model: {str(exc).splitlines()[0]}") from None
        return model

    def _make_arm(self, arm: dict, initial: nn.Module) -> ArmState:
        model = copy.deepcopy(initial)
        model.train()
        full_batch = self.registries.optimizers.get(arm["optimizer"]).trait("full_batch", False)
        if full_batch and self.generated:
            raise SpecError(f"arms.{arm['name']}.optimizer", f"{arm['optimizer']!r} needs a fixed training set, "
                                                          f"but task {self.task.name!r} generates fresh samples")
        guards = [self.registries.mitigations.get(m["kind"]).target(m) for m in arm["mitigations"]]
        try:
            optimizer = build_optimizer(arm, model, self.example_inputs(), self.registries)
        except SpecError as err:
            raise SpecError(f"arms.{arm['name']}.{err.path}" if err.path else f"arms.{arm['name']}", err.message) from None
        state = ArmState(arm["name"], arm, model, optimizer, full_batch, guards=guards)
        if arm.get("privacy"):
            state.private = PrivateArm(self, arm, model)
        return state

    def example_inputs(self, count: int = 2):
        """A couple of training inputs (a forward pass of them tells what each parameter does)."""
        if self.generated:
            inputs, _ = self.data.sample(count, torch.Generator().manual_seed(derive_seed(self.seed, "example")))
            return self._to_device(inputs, inputs[:0])[0]
        if self.x_train is None:  # a Dataset
            return self._to_device(self.example_batch(count)[0], torch.zeros(0))[0]
        return rows(self.x_train, slice(0, count))

    def example_batch(self, count: int):
        _, x, y = DatasetBatches(self.data.train_set, FixedIndices(range(count)), 1, self.seed).next()
        return x, y

    # ------------------------------------------------------------ records

    def note(self, text: str) -> None:
        """Record something this trial substituted or could not do as asked (each once)."""
        if text not in self.notes:
            self.notes.append(text)

    def seed_for(self, purpose: str) -> int:
        """A seed for one purpose of this trial (a probe's sample, ...)."""
        return derive_seed(self.seed, purpose)

    def log(self, record: dict) -> None:
        if record.get("kind") == "probe":  # the latest values of each probe go into the summary
            self.last_probes.setdefault(record["arm"], {})[record["probe"]] = {
                k: v for k, v in record.items() if k not in ("kind", "probe", "arm")}
        if self.sink is not None:
            self.sink.log(record)

    def _hooks(self, point: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    # ------------------------------------------------------------ training

    def run(self) -> dict:
        self._hooks("on_start")
        self.evaluate(0)
        for step in range(1, self.total_steps + 1):
            self.step = step
            self.indices, self.step_batch = self.next_batch()  # one draw per step, shared by every arm
            self.forward_seed = derive_seed(self.seed, "forward", step)
            for arm in self.arms:
                if arm.alive:
                    self.train_step(arm, step)
            self._hooks("on_step_end", step)
            last = step == self.total_steps or self.stop_requested  # the state training ends at is evaluated
            if step % self.plan["eval_every"] == 0 or last or step in self.eval_steps:
                self.evaluate(step)
            if self.sink is not None:
                self.sink.flush()
            if self.progress is not None:
                self.progress.update(1)
                if step % 10 == 0 or step == self.total_steps:
                    self.progress.set_postfix_str(self._progress_text(), refresh=False)
            if not any(arm.alive for arm in self.arms) or self.stop_requested:
                break
        self._hooks("on_end")
        if self.sink is not None:
            self.sink.flush()
        return self.summary()

    def next_batch(self):
        """(sample indices or None for generated data, (inputs, targets) on the trial's device)."""
        if self.generated:
            return None, self._to_device(*self.stream.next_batch())
        if self.data.train_set is not None:  # a Dataset: this step's batch, loaded once for every arm
            if self.loader is None:
                self.loader = DatasetBatches(self.data.train_set, self.stream, self.total_steps,
                                             derive_seed(self.seed, "augment"), self.plan["loader_workers"])
            indices, x, y = self.loader.next()
            return indices, self._to_device(x, y)
        indices = self.stream.next_batch()
        return indices, self.gather(indices)

    def gather(self, indices: torch.Tensor) -> tuple:
        indices = indices.to(self.device)
        return rows(self.x_train, indices), self.y_train[indices]

    def whole_training_set(self) -> tuple:
        """Every training sample (gradient descent arms); a Dataset is loaded once for it."""
        if self.x_train is None and self.data.train_set is not None:
            self.x_train, self.y_train = self._to_device(*materialise(self.data.train_set, "task.data", "training",
                                                                      derive_seed(self.seed, "augment")))
        return self.x_train, self.y_train

    def train_step(self, arm: ArmState, step: int) -> None:
        started = time.perf_counter()
        set_lr_factor(arm.optimizer, lr_factor(arm.spec["schedule"], step - 1, self.total_steps))
        for attempt in (0, 1):  # a rollback mitigation executes the step once more
            arm.attempt = attempt
            loss_value, output = self.forward_backward(arm, step)
            verdict = self.verdict(arm, step, loss_value)
            if verdict != ROLLBACK:
                break
            self.log({"kind": "event", "event": "rollback", "arm": arm.name, "step": step, "loss": loss_value})
        arm.attempt = 0
        if verdict == SKIP:
            self.log({"kind": "event", "event": "skipped", "arm": arm.name, "step": step, "loss": loss_value})
            return
        if not math.isfinite(loss_value):
            self.mark_diverged(arm, step, f"training loss is {loss_value}")
            return
        arm.optimizer.step()
        self._hooks("after_step", arm, step)
        correct, count = self.task.count_correct(output.detach(), arm.batch[1], opts=self.options)
        arm.last_train = {"loss": loss_value, "accuracy": correct.item() / count if count else math.nan}
        arm.time_s += time.perf_counter() - started
        self.log({"kind": "train", "arm": arm.name, "step": step, **arm.last_train,
                  "lr": arm.optimizer.param_groups[0]["lr"]})
        if not self.weights_finite(arm):
            self.mark_diverged(arm, step, "weights became non-finite")
            return
        for guard in arm.guards:
            guard.after_step(arm, step)

    def forward_backward(self, arm: ArmState, step: int) -> tuple[float, torch.Tensor]:
        # the batch tensors are shared by all arms: a hook may replace arm.batch, never edit it in place
        arm.batch = self.whole_training_set() if arm.full_batch else self.step_batch
        self._hooks("before_step", arm, step)
        x, y = arm.batch
        self.seed_forward()
        arm.optimizer.zero_grad(set_to_none=True)
        if arm.private is not None:
            loss, output = arm.private.backward(x, y)
            self._hooks("after_backward", arm, step)
            return loss, output
        total = self.task.loss_items(y, opts=self.options)
        outputs, loss = [], 0.0
        parts = self.plan["grad_accumulation"]
        for xs, ys in zip(split(x, parts), y.tensor_split(parts)):
            output = forward(arm.model, xs)
            share = self.task.loss_items(ys, opts=self.options) / total  # a micro-batch's mean counts by its share
            part = self.task.loss(output, ys, opts=self.options) * share
            penalty = self.task.penalty(self.options, arm.model)
            (part if penalty is None else part + penalty * share).backward()
            outputs.append(output.detach())
            loss += part.detach()
        self._hooks("after_backward", arm, step)
        return float(loss), outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    @staticmethod
    def verdict(arm: ArmState, step: int, loss: float) -> str:
        """The first guard that does not say STEP decides (a rollback is tried only once)."""
        for guard in arm.guards:
            verdict = guard.verdict(arm, step, loss)
            if verdict == ROLLBACK and arm.attempt > 0:
                verdict = STEP
            if verdict != STEP:
                return verdict
        return STEP

    def seed_forward(self) -> None:
        """Stochastic layers (dropout) draw the same numbers in every arm at a given step.
        Only the trial device's generator is reseeded: torch.manual_seed would also queue a
        lazy CUDA call that captures a stack trace, which costs more than a tiny model's step."""
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index or 0].manual_seed(self.forward_seed)
        else:
            torch.default_generator.manual_seed(self.forward_seed)

    @staticmethod
    def weights_finite(arm: ArmState) -> bool:
        with torch.no_grad():  # max-abs per tensor: NaN propagates, and unlike a 2-norm it cannot overflow
            largest = torch._foreach_norm(list(arm.model.parameters()), float("inf"))
            return bool(torch.stack(largest).isfinite().all())

    def mark_diverged(self, arm: ArmState, step: int, reason: str) -> None:
        arm.diverged_step, arm.diverged_reason = step, reason
        self.log({"kind": "event", "event": "diverged", "arm": arm.name, "step": step, "reason": reason})

    # ------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, step: int) -> None:
        for arm in self.arms:
            if arm.alive:
                arm.last_eval = self.evaluate_model(arm.model)
                arm.best_eval_accuracy = max(arm.best_eval_accuracy, arm.last_eval["accuracy"])
                record = {"kind": "eval", "arm": arm.name, "step": step, **arm.last_eval}
                if arm.private is not None:
                    record["epsilon"] = arm.private.epsilon(step)
                arm.history.append(record)
                self.log(record)
                if not math.isfinite(arm.last_eval["loss"]):  # broken, whatever the guards let through
                    self.mark_diverged(arm, step, f"held-out loss is {arm.last_eval['loss']}")
        self._hooks("on_eval", step)

    @torch.no_grad()
    def evaluate_model(self, model: nn.Module) -> dict:
        """Loss and accuracy on the held-out split (model in eval mode, restored afterwards)."""
        was_training = model.training
        model.eval()
        total_loss, correct, count, items = 0.0, 0, 0, 0
        size = self.plan["eval_batch_size"]
        for start in range(0, len(self.y_test), size):
            x, y = rows(self.x_test, slice(start, start + size)), self.y_test[start:start + size]
            output = forward(model, x)
            total_loss += self.task.loss(output, y, reduction="sum", opts=self.options).item()
            hits, n = self.task.count_correct(output, y, opts=self.options)
            correct, count, items = correct + hits.item(), count + n, items + self.task.loss_items(y, opts=self.options)
        model.train(was_training)
        loss = total_loss / items if items else math.nan
        result = {"loss": loss, "accuracy": correct / count if count else math.nan}
        if self.task.is_language_model(self.options):
            result["perplexity"] = perplexity(loss)
        return result

    # ------------------------------------------------------------ summary

    def summary(self) -> dict:
        arms = {}
        for arm in self.arms:
            arms[arm.name] = {
                "optimizer": arm.spec["optimizer"],
                "final_train_loss": arm.last_train.get("loss"),
                "final_train_accuracy": arm.last_train.get("accuracy"),
                "final_test_loss": arm.last_eval.get("loss"),
                "final_test_accuracy": arm.last_eval.get("accuracy"),
                "best_test_accuracy": arm.best_eval_accuracy if arm.best_eval_accuracy > -math.inf else None,
                "diverged": not arm.alive,
                "diverged_step": arm.diverged_step,
                "diverged_reason": arm.diverged_reason,
                "time_s": round(arm.time_s, 4),
            }
            if arm.name in self.last_probes:
                arms[arm.name]["probes"] = self.last_probes[arm.name]
            if getattr(arm.optimizer, "split", None):
                arms[arm.name]["param_groups"] = arm.optimizer.split
            if arm.private is not None:
                arms[arm.name]["privacy"] = arm.private.summary(self.step)
            if arm.alive:
                text = self.task.sample(self.options, self.data, arm.model, derive_seed(self.seed, "sample"))
                if text is not None:
                    arms[arm.name]["sample"] = text
        return {"seed": self.seed, "steps": self.step, "total_steps": self.total_steps,
                "steps_per_epoch": self.stream.steps_per_epoch,
                "data_source": self.data.source, "chance_accuracy": self.chance_accuracy(), "notes": self.notes,
                "threads": torch.get_num_threads(),  # train times are comparable only at the same count
                "arms": arms}

    def chance_accuracy(self) -> float | None:
        """Held-out accuracy of always guessing the most frequent class (None without class targets):
        the line an arm must clear before its accuracy means it learned anything."""
        y = self.y_test
        if y.is_floating_point() or y.numel() == 0:
            return None
        valid = y[y != IGNORE].flatten()
        if valid.numel() == 0 or valid.min() < 0:
            return None
        return float(torch.bincount(valid).max()) / valid.numel()

    def _progress_text(self) -> str:
        return " ".join(f"{a.name}={a.last_train.get('loss', float('nan')):.3g}" if a.alive else f"{a.name}=diverged"
                        for a in self.arms)
