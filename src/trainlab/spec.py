"""The study spec: pydantic models, file loading and `--set path=value` overrides.

A spec is validated in two passes. The first checks the fixed shape (plan, sweep, output).
The second hands the open parts (task options, optimizer hyperparameters, events, probes,
mitigations) to the plugin they name, which validates them with its own options model. The
plugins come from the `Registries` handed to `resolve` (by default this process's, with the
spec's own `plugins:` modules loaded). The result is a plain dict with every default filled
in: the *resolved* spec stored in study.json.
"""

import copy
import importlib.util
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .data.samplers import SAMPLERS
from .errors import SpecError, UserError, spec_error_from_pydantic
from .options import Open, Strict, validate_options
from .plugin import Registries, module_roots, registries as process_registries
from .privacy import CLIPPING, MODES

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class TaskSpec(Open):
    name: str = "mnist-mlp"


class ScheduleSpec(Strict):
    kind: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(100, gt=0, description="step: decay every step_size steps")
    gamma: float = Field(0.1, gt=0, le=1, description="step: decay factor")
    min_factor: float = Field(0.0, ge=0, le=1, description="cosine: final lr / lr")


class MitigationSpec(Open):
    kind: str


def one_of(name: str, allowed) -> str:
    """A choice from a list kept elsewhere (the samplers, the DP modes), worded as pydantic words a Literal."""
    if name not in allowed:
        quoted = [repr(a) for a in allowed]
        raise ValueError(f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else
                         f"Input should be {quoted[0]}")
    return name


class PrivacySpec(Strict):
    mode: str = Field("bk", description=f"DP mode: {', '.join(MODES)}")
    max_grad_norm: float = Field(1.0, gt=0, description="C: each sample's gradient is clipped to this norm")
    noise_multiplier: float | None = Field(None, ge=0, description="sigma: noise std is sigma * C")
    target_epsilon: float | None = Field(None, gt=0, description="calibrate sigma to reach this epsilon at the end")
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: Literal["rdp", "prv"] = "rdp"
    clipping: str = Field("flat", description=f"{' or '.join(CLIPPING)}")

    @field_validator("mode")
    @classmethod
    def _mode(cls, value):
        return one_of(value, MODES)

    @field_validator("clipping")
    @classmethod
    def _clipping(cls, value):
        return one_of(value, CLIPPING)

    @model_validator(mode="after")
    def _noise(self):
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("give either noise_multiplier or target_epsilon")
        return self


class ArmSpec(Open):
    name: str | None = Field(None, pattern=NAME_PATTERN)
    optimizer: str
    lr: float = Field(gt=0)
    schedule: ScheduleSpec = ScheduleSpec()
    mitigations: list[MitigationSpec] = Field(default_factory=list)
    privacy: PrivacySpec | None = Field(None, description="train this arm with DP-SGD")


class PlanSpec(Strict):
    steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(64, gt=0)
    sampler: str = Field("shuffle", description=f"{', '.join(SAMPLERS)}")
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"
    eval_every: int = Field(50, gt=0)
    eval_batch_size: int = Field(512, gt=0, description="held-out samples per forward pass during evaluation")
    grad_accumulation: int = Field(1, gt=0, description="micro-batches per step (the loss is weighted so the "
                                                        "gradient equals the whole batch's)")
    loader_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes for a task whose training "
                                                           "data is a Dataset (0: load in the training process)")
    init_from: str | None = None

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, value):
        return one_of(value, SAMPLERS)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", value):
            raise ValueError("must be 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return value

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give plan.steps or plan.epochs, not both")
        if self.steps is None and self.epochs is None:
            self.steps = 100
        if self.grad_accumulation > self.batch_size:
            raise ValueError("grad_accumulation cannot exceed batch_size")
        return self


class EventSpec(Open):
    kind: str


class ProbeSpec(Open):
    kind: str
    every: int | Literal["epoch"] = Field(50, description="run the probe every N steps, or every epoch")

    @field_validator("every")
    @classmethod
    def _positive(cls, value):
        if value != "epoch" and value <= 0:
            raise ValueError("must be a positive number of steps or 'epoch'")
        return value


class RandomParam(Strict):
    values: list[Any] | None = Field(None, min_length=1, description="draw one of these")
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="draw log-uniformly between low and high")
    integer: bool = Field(False, description="round the draw to an integer")

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.values is None) == (self.low is None or self.high is None):
            raise ValueError("give either values, or low and high")
        if self.low is not None and (self.low > self.high or (self.log and self.low <= 0)):
            raise ValueError("need low <= high (and low > 0 for log)")
        return self


class RandomSweep(Strict):
    n: int = Field(gt=0, le=1_000_000, description="number of draws")
    params: dict[str, RandomParam] = Field(min_length=1)


class OptunaSweep(Strict):
    n_trials: int = Field(gt=0, le=1_000_000, description="stop after this many finished Optuna trials")
    params: dict[str, RandomParam] = Field(min_length=1, description="search space: values, or low/high (log, integer)")
    sampler: Literal["tpe", "random", "qmc"] = "tpe"
    metric: str = Field("final_test_loss", pattern=r"^[A-Za-z0-9_]+$", description="a per-arm summary field")
    direction: Literal["minimize", "maximize"] = "minimize"
    arm: str | None = Field(None, description="the arm whose metric is optimised (default: the first)")
    batch: int = Field(4, gt=0, le=1024, description="trials proposed together; fixed so every executor proposes the same trials")
    storage: str | None = Field(None, description="Optuna storage URL (default: sqlite optuna.db in the study directory)")


class SweepSpec(Strict):
    repeats: int = Field(1, gt=0, le=100_000)
    seeds: list[int] | None = Field(None, min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    points: list[dict[str, Any]] = Field(default_factory=list, description="explicit list of override sets")
    random: RandomSweep | None = Field(None, description="override sets drawn from distributions")
    max_trials: int | None = Field(None, gt=0, description="a seeded random subset of this many override sets")
    subset_seed: int | None = Field(None, description="seed of random draws and subsets (default: the spec seed)")
    optuna: OptunaSweep | None = Field(None, description="an adaptive search: trials proposed by an Optuna sampler")

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid):
        for path, values in grid.items():
            if not values:
                raise ValueError(f"grid entry {path!r} has no values")
        return grid

    @model_validator(mode="after")
    def _optuna_alone(self):
        if self.optuna is not None and (self.grid or self.points or self.random or self.max_trials):
            raise ValueError("optuna proposes every trial itself: it cannot be combined with grid, points, random "
                             "or max_trials (repeats and seeds are allowed)")
        return self


class LoggerSpec(Open):
    kind: str


class OutputSpec(Strict):
    root: str = "runs"
    loggers: list[LoggerSpec] = Field(default_factory=list, description="experiment trackers the trials log to as "
                                      "they run: tensorboard, mlflow, wandb (a name, or {kind: ..., options})")
    report: str = Field("standard", description="report builder: standard, none, or a recipe's")
    trial_dir: str = Field("trials/trial_{index:04d}", pattern=r"^[A-Za-z0-9_{}:./-]*\{index(:0?\d+d)?\}[A-Za-z0-9_{}:./-]*$",
                           description="trial folder inside the study, a pattern with {index}")

    @field_validator("loggers", mode="before")
    @classmethod
    def _names(cls, value):
        if isinstance(value, str):
            value = [value]
        return [{"kind": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) else value

    @field_validator("trial_dir")
    @classmethod
    def _inside(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError("must stay inside the study directory")
        try:
            formatted = value.format(index=0)
        except (KeyError, ValueError, IndexError, AttributeError):
            raise ValueError("must be a folder pattern with {index} (e.g. trials/trial_{index:04d})") from None
        if any(part in ("", ".") for part in formatted.split("/")) or len(formatted) > 200:
            raise ValueError("must name a folder inside the study, e.g. trials/trial_{index:04d}")
        return value


class JobSpec(Open):
    """A trial that runs a job plugin instead of the lock-step trainer (a recipe's stage)."""

    kind: str
    after: list[int] = Field(default_factory=list, description="trial indices that must finish first (their "
                                                              "outputs are this job's inputs)")


class StudySpec(Strict):
    name: str = Field("study", pattern=NAME_PATTERN)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    plugins: list[str] = Field(default_factory=list, description="modules that register tasks, optimizers, probes, "
                               "... (importable from the spec's folder or PYTHONPATH)")
    task: TaskSpec = TaskSpec()
    arms: list[ArmSpec] = Field(default_factory=list, description="required, unless the trials are jobs")
    job: JobSpec | None = Field(None, description="each trial runs this job plugin instead of training arms")
    plan: PlanSpec = PlanSpec()
    events: list[EventSpec] = Field(default_factory=list)
    probes: list[ProbeSpec] = Field(default_factory=list)
    sweep: SweepSpec = SweepSpec()
    output: OutputSpec = OutputSpec()
    recipe: dict = Field(default_factory=dict, description="settings of the recipe that made the study, for its "
                         "report and its preparation (not part of any trial)")

    @model_validator(mode="after")
    def _arms(self):
        if not self.arms and self.job is None:
            raise ValueError("give at least one arm (arms: [{optimizer: ..., lr: ...}])")
        return self


# ---------------------------------------------------------------- loading


class SpecLoader(yaml.SafeLoader):
    """Safe YAML, but `1e-3` is a float as in YAML 1.2 (YAML 1.1 reads it as a string), and a
    key given twice in one mapping is an error (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def unique_keys(pairs: list) -> dict:
    """json.loads object hook: a key given twice in one object is an error, not last-wins."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


PRESETS = Path(__file__).parent / "presets"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def read_spec_file(path: str | Path) -> dict:
    """Read a YAML or JSON spec file (or a preset shipped with trainlab, by name) into a dict;
    every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file() and str(path) in presets():
        path = PRESETS / f"{path}.yaml"
    problem = not_a_file(path)
    if problem:
        raise UserError(f"spec file {str(path)!r} {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"spec file {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"spec file {str(path)!r} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        data = json.loads(text, object_pairs_hook=unique_keys) if path.suffix == ".json" else parse_yaml(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON in {str(path)!r}: line {exc.lineno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where else ""
        raise UserError(f"malformed YAML in {str(path)!r}: {line}{getattr(exc, 'problem', None) or exc}") from None
    except (ValueError, RecursionError) as exc:  # a duplicate JSON key, a number of thousands of digits, deep nesting
        raise UserError(f"spec file {str(path)!r} refused: {' '.join(str(exc).split())[:200] or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise UserError(f"spec file {str(path)!r} must hold a mapping of fields (task, arms, plan, ...)")
    return data


def not_a_file(path: Path) -> str | None:
    """Why `path` is no spec file to read, or None for a regular file. Only stat, never open:
    opening a named pipe would wait for a writer forever."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the path
        return f"not found (presets: {', '.join(presets())})"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a spec file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a spec file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a spec file"
    return "is a socket, not a spec file" if stat.S_ISSOCK(mode) else "is not a regular file"


def parse_set(assignment: str) -> tuple[str, Any]:
    """'plan.steps=20' -> ('plan.steps', 20). Values are YAML scalars or flow lists/maps."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected path.to.field=value")
    path, raw = assignment.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", path):
        raise UserError(f"--set {assignment!r}: field path must be dotted names or list indices")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError) as exc:
        raise UserError(f"--set {path}: value refused ({' '.join(str(exc).split())[:120] or type(exc).__name__})") from None
    return path, value


def set_path(data: dict, path: str, value: Any) -> None:
    """Set a dotted path in nested dicts/lists. A list element is named by index or by `name`."""
    keys = path.split(".")
    node = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        here = ".".join(keys[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, key, here)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if not isinstance(node.get(key), (dict, list)):
                    node[key] = {}
                node = node[key]
        else:
            raise SpecError(here, f"cannot set a field inside a {type(node).__name__}")


def _list_index(items: list, key: str, path: str) -> int:
    if key.lstrip("-").isdigit():
        index = int(key)
        if not -len(items) <= index < len(items):
            raise SpecError(path, f"index {index} out of range (the list has {len(items)} items)")
        return index
    for i, item in enumerate(items):
        if isinstance(item, dict) and key in (item.get("name"), item.get("kind"), item.get("optimizer")):
            return i
    raise SpecError(path, f"no list item named {key!r}")


def load_spec(source: str | Path | dict, overrides: list[str] | dict | None = None, plugins: list[str] | None = None,
              registries: Registries | None = None) -> dict:
    """Read, override and validate a spec. Returns the resolved spec as a plain dict.
    `plugins` are modules added to the spec's own `plugins:` (the --plugin flag)."""
    data = copy.deepcopy(source) if isinstance(source, dict) else read_spec_file(source)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_set, overrides or [])
    for path, value in items:
        set_path(data, path, value)
    if plugins:
        data["plugins"] = [*(data.get("plugins") or []), *(p for p in plugins if p not in (data.get("plugins") or []))]
    folder = None if isinstance(source, dict) else spec_folder(source)
    return resolve(data, registries, folder)


def spec_folder(path: str | Path) -> str | None:
    """The folder of a spec file (its plugin modules are looked for there), None for presets."""
    path = Path(path)
    return str(path.resolve().parent) if path.is_file() else None


def plugins_of(data: dict) -> list[str]:
    """The spec's plugin modules, checked before any of them is imported."""
    modules = data.get("plugins") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) and re.fullmatch(MODULE_PATTERN, m) for m in modules):
        raise SpecError("plugins", "must be a list of module names, e.g. [my_package.my_module]")
    return modules


def resolve(data: dict, registries: Registries | None = None, folder: str | None = None) -> dict:
    """Validate both passes and return the spec with every default filled in. Without
    `registries`, this process's are used with the spec's plugins loaded (from `folder`, the
    spec file's, first, then the current folder and PYTHONPATH); where they were found is
    recorded as `plugin_path`, so every later process (workers, resume, report) finds them."""
    check_values(data)
    if not isinstance(data, dict):
        raise SpecError("", "a spec is a mapping of fields (task, arms, plan, ...)")
    stored = data.get("plugin_path") or []
    if not isinstance(stored, list) or not all(isinstance(p, str) for p in stored):
        raise SpecError("plugin_path", "must be a list of folders")
    # a stored spec (it has plugin_path) finds its modules where they were found; only a new one
    # searches the current folder, so opening a study never imports what lies beside the user
    search = [*([folder] if folder else []), *stored, *([] if "plugin_path" in data else [os.getcwd()])]
    data = {k: v for k, v in data.items() if k != "plugin_path"}
    registries = registries or process_registries(plugins_of(data), search)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise spec_error_from_pydantic(err, model=StudySpec) from None
    _name_arms(spec.arms)
    resolved = spec.model_dump(mode="json")
    if spec.plugins:
        resolved["plugin_path"] = module_roots(spec.plugins)
    context = {"registries": registries}
    task = registries.tasks.get(spec.task.name, "task.name")
    resolved["task"] = {"name": spec.task.name, **validate_options(task.Options, spec.task.model_extra, "task", context)}
    for i, arm in enumerate(spec.arms):
        optimizer = registries.optimizers.get(arm.optimizer, f"arms.{i}.optimizer")
        hparams = validate_options(optimizer.Options, arm.model_extra, f"arms.{i}", context)
        resolved["arms"][i] = {**arm.model_dump(mode="json", exclude=set(arm.model_extra)), **hparams}
        resolved["arms"][i]["mitigations"] = resolve_plugins(arm.mitigations, registries.mitigations,
                                                             f"arms.{i}.mitigations", context)
    if spec.job is not None:
        job = registries.jobs.get(spec.job.kind, "job.kind")
        fixed = spec.job.model_dump(mode="json", exclude=set(spec.job.model_extra))
        resolved["job"] = {**fixed, **validate_options(job.Options, spec.job.model_extra, "job", context)}
    resolved["events"] = resolve_plugins(spec.events, registries.events, "events", context)
    resolved["probes"] = resolve_plugins(spec.probes, registries.probes, "probes", context)
    swept = [*spec.sweep.grid, *(p for point in spec.sweep.points for p in point),
             *(spec.sweep.random.params if spec.sweep.random else []), *(spec.sweep.optuna.params if spec.sweep.optuna else [])]
    if not any(changes_schedule(path) for path in swept):  # else each trial is checked as plans_for resolves it
        check_step_bounds(resolved, resolved["plan"]["steps"], registries)
    registries.reports.get(spec.output.report, "output.report")
    resolved["output"]["loggers"] = resolve_plugins(spec.output.loggers, registries.loggers, "output.loggers", context)
    for i, item in enumerate(resolved["output"]["loggers"]):
        check_installed(registries.loggers.get(item["kind"]), f"output.loggers.{i}")
    for path in swept:
        _check_sweep_path(resolved, path)
    if spec.sweep.optuna and spec.sweep.optuna.arm and spec.sweep.optuna.arm not in [a["name"] for a in resolved["arms"]]:
        raise SpecError("sweep.optuna.arm", f"no arm named {spec.sweep.optuna.arm!r}; "
                        f"arms: {', '.join(a['name'] for a in resolved['arms'])}")
    return resolved


def changes_schedule(path: str) -> bool:
    """Whether a swept field changes the plan's length or the scheduled steps."""
    head = path.split(".")[:2]
    return head[0] in ("plan", "events", "probes") and (len(head) == 1 or head[0] != "plan" or head[1] in ("steps", "epochs"))


def check_step_bounds(spec: dict, total_steps: int | None, registries: Registries) -> None:
    """The explicit steps of events and probes (the option fields a plugin names in its
    `step_fields` trait) must lie in 0..total_steps: a step outside the plan would silently
    never happen. `total_steps` is None for a plan in epochs before its data is loaded (the
    run's preflight knows it): then only negative steps are refused."""
    span = f"0..{total_steps}" if total_steps is not None else "steps count from 0, the initial weights"
    for prefix, registry in (("events", registries.events), ("probes", registries.probes)):
        for i, item in enumerate(spec[prefix]):
            for name in registry.get(item["kind"]).trait("step_fields", ()):
                value = item.get(name)
                for step in value if isinstance(value, list) else [] if value is None else [value]:
                    if step < 0:
                        raise SpecError(f"{prefix}.{i}.{name}", f"step {step} is before the start of the plan ({span})")
                    if total_steps is not None and step > total_steps:
                        raise SpecError(f"{prefix}.{i}.{name}", f"step {step} is past the end of the plan ({span})")


def check_installed(plugin, path: str) -> None:
    """A plugin that needs an optional package says which extra brings it."""
    for module, extra in plugin.trait("requires", {}).items():
        if importlib.util.find_spec(module) is None:
            raise SpecError(path, f"{plugin.kind} {plugin.name!r} needs the {module} package: "
                                  f"pip install 'trainlab[{extra}]'")


def _name_arms(arms: list[ArmSpec]) -> None:
    """An arm without a name is named after its optimizer; names must be unique."""
    seen = set()
    for i, arm in enumerate(arms):
        arm.name = arm.name or arm.optimizer
        if arm.name in seen:
            raise SpecError(f"arms.{i}.name", f"duplicate arm name {arm.name!r}; give each arm a unique name")
        seen.add(arm.name)


def resolve_plugins(items: list[Open], registry, prefix: str, context: dict | None = None) -> list[dict]:
    """Validate each `{kind: ..., options}` item against the plugin it names."""
    resolved = []
    for i, item in enumerate(items):
        plugin = registry.get(item.kind, f"{prefix}.{i}.kind")
        fixed = item.model_dump(mode="json", exclude=set(item.model_extra))
        resolved.append({**fixed, **validate_options(plugin.Options, item.model_extra, f"{prefix}.{i}", context)})
    return resolved


MAX_VALUES, MAX_DEPTH, MAX_INT = 200_000, 64, 2**63  # a spec is small: bounds that stop hostile ones cold


def check_values(data: Any) -> None:
    """Refuse what no field accepts, before anything walks the spec again: NaN and infinity,
    NUL characters, integers beyond 64 bits, nesting deeper than 64 levels, self-referencing
    YAML aliases, and more than 200,000 values (aliases of aliases expand exponentially)."""
    count, stack = 0, [(data, "", 0, ())]
    while stack:
        node, path, depth, ancestors = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise SpecError("", f"the spec holds more than {MAX_VALUES:,} values (YAML aliases expanding?)")
        if depth > MAX_DEPTH:
            raise SpecError(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, float) and not math.isfinite(node):
            raise SpecError(path, f"must be a finite number, got {node}")
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) >= MAX_INT:
            raise SpecError(path, "integer too large (beyond 64 bits)")
        if isinstance(node, str) and "\x00" in node:
            raise SpecError(path, "contains a NUL character")
        if isinstance(node, (dict, list)):
            if id(node) in ancestors:
                raise SpecError(path, "refers to itself (a recursive YAML alias)")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(key, str) and "\x00" in key:
                    raise SpecError(path, "a key contains a NUL character")
                stack.append((value, f"{path}.{key}" if path else str(key), depth + 1, (*ancestors, id(node))))


def _check_sweep_path(resolved: dict, path: str) -> None:
    if path.split(".")[0] in ("sweep", "output", "name"):
        raise SpecError(f"sweep.grid.{path}", "sweep, output and name cannot be swept")
    probe = copy.deepcopy(resolved)
    try:
        set_path(probe, path, None)
    except SpecError as err:
        raise SpecError(f"sweep.grid.{path}", err.message) from None


def dump_yaml(spec: dict) -> str:
    return yaml.safe_dump(spec, sort_keys=False)
