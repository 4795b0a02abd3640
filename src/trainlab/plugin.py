"""Plugins: every extension point of trainlab is a registry of the same kind of entry.

A plugin is a name, an options model (validated, with defaults, by `trainlab validate`,
`--set` and the one-line errors, exactly as for built-ins), the thing it provides, a doc line
and kind-specific traits:

    task         a Task (data, model, loss, metrics)
    optimizer    build(model, lr, options, example_inputs) -> optimizer; trait full_batch
    event        make(options) -> Hook, scheduled at steps (checkpoint, fault); trait step_fields
                 (the option fields holding explicit steps, checked against the plan's length)
    probe        make(options) -> Hook, a measurement with a cadence; trait step_fields (as events)
    mitigation   make(options) -> Guard, deciding each optimizer step of an arm
    fault_model  a FaultModel: what a fault does to the elements it hits, and how it is drawn
    report       build(study_dir) -> report path; trait on_trial_end
    dp_rule      a per-sample gradient rule, keyed by the module class it covers
    command      a `trainlab` subcommand (its flags and its run)
    job          a trial that is not lock-step training (a recipe's stage): check(spec), run(spec, context)
    logger       an experiment tracker: Logger(study_root, spec, options) (loggers/base.py); trait
                 requires {module: extra}

Every process (the driver and each worker alike) fills its registries the same way, by
importing modules that register what they define with the `register_*` functions below:
trainlab's own modules (BUILTINS), then the `trainlab.plugins` entry-point group of
installed packages, then the modules a study names (`plugins:` in the spec, `--plugin`).
Nothing else fills a registry, and nothing looks one up by importing it: whoever resolves a
spec or runs a trial is handed the `Registries`."""

import importlib
import importlib.metadata
import importlib.util
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from .errors import SpecError, UserError
from .options import NoOptions

KINDS = ("task", "optimizer", "event", "probe", "mitigation", "fault_model", "report", "dp_rule", "command", "job", "logger")
BUILTINS = ("trainlab.tasks", "trainlab.loggers", "trainlab.optim.optimizers", "trainlab.engine.events", "trainlab.privacy.rules",
            "trainlab.faults", "trainlab.probes", "trainlab.report", "trainlab.recipes")
ENTRY_POINTS = "trainlab.plugins"


@dataclass(frozen=True)
class Plugin:
    kind: str
    name: str
    target: Any  # what the plugin provides (see the module docstring)
    Options: type[BaseModel] = NoOptions
    doc: str = ""
    traits: dict = field(default_factory=dict)

    def trait(self, key: str, default=None):
        return self.traits.get(key, default)


def origin(target) -> str:
    """Where a plugin's target was defined (module.qualname), to tell a re-import from a clash."""
    obj = target if hasattr(target, "__qualname__") else type(target)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


class Registry:
    """name -> Plugin for one kind. `resolver(name, path)` may supply a plugin for a name that is
    not registered (an optimizer class given by import path), or return None."""

    def __init__(self, kind: str):
        self.kind = kind
        self.items: dict[str, Plugin] = {}
        self.resolver: Callable[[str, str], Plugin | None] | None = None

    def add(self, plugin: Plugin) -> Plugin:
        old = self.items.get(plugin.name)
        if old is not None and origin(old.target) != origin(plugin.target):
            raise UserError(f"{self.kind} {plugin.name!r} is registered twice: by {origin(old.target)} and by "
                            f"{origin(plugin.target)}; give one of them another name")
        self.items[plugin.name] = plugin  # the same definition imported again replaces itself
        return plugin

    def get(self, name: str, path: str = "") -> Plugin:
        if name not in self.items and self.resolver is not None and isinstance(name, str):
            found = self.resolver(name, path)
            if found is not None:
                self.items[name] = found
        if name not in self.items:
            withheld = f"; perhaps a plugin module defines it, but {next(iter(WITHHELD.values()))}" if WITHHELD else ""
            raise SpecError(path, f"unknown {self.kind} {name!r} (allowed: {', '.join(self.names())}){withheld}")
        return self.items[name]

    def names(self) -> list[str]:
        return sorted(self.items)

    def values(self) -> list[Plugin]:
        return [self.items[name] for name in self.names()]

    def __contains__(self, name) -> bool:
        return name in self.items


class Registries:
    """One registry per kind: `registries.tasks`, `.optimizers`, `.events`, `.probes`,
    `.mitigations`, `.fault_models`, `.reports`, `.dp_rules`, `.commands`, `.jobs`, `.loggers`."""

    def __init__(self):
        self.by_kind = {kind: Registry(kind) for kind in KINDS}
        self.loaded: list[str] = []  # modules imported into these registries, in order

    def __getattr__(self, name: str) -> Registry:
        kind = {"tasks": "task", "optimizers": "optimizer", "events": "event", "probes": "probe",
                "mitigations": "mitigation", "fault_models": "fault_model", "reports": "report",
                "dp_rules": "dp_rule", "commands": "command", "jobs": "job",
                "loggers": "logger"}.get(name)
        if kind is None:
            raise AttributeError(name)
        return self.by_kind[kind]

    def add(self, plugin: Plugin) -> Plugin:
        if plugin.kind not in self.by_kind:
            raise ValueError(f"unknown plugin kind {plugin.kind!r} (kinds: {', '.join(KINDS)})")
        return self.by_kind[plugin.kind].add(plugin)

    def load(self, modules, where: str = "plugins") -> "Registries":
        """Import each module (its register_* calls fill these registries); every failure is
        a one-line UserError naming the module."""
        for name in modules:
            if name in self.loaded:
                continue
            import_module(name, where)
            self.loaded.append(name)
        return self


REGISTRIES = Registries()  # this process's registries; register_* decorators add to them
_started = False
WITHHELD: dict[str, str] = {}  # module -> why it is not imported here (a study that is not trusted)
WITHHELD_FOLDERS: set[str] = set()  # plugin folders of such studies: never put on sys.path


def withhold(modules, folders, why: str) -> None:
    """Never import `modules` nor search `folders` in this process (a received study's code:
    study/trust.py); `why` is the one line a refused import says."""
    for name in modules:
        WITHHELD.setdefault(name, why)
    WITHHELD_FOLDERS.update(str(folder) for folder in folders)


def registries(modules=(), search_path=None) -> Registries:
    """This process's registries with the built-ins, the installed entry points and `modules`
    loaded; `search_path` (a folder or a list of them: where a study found its plugin modules)
    is searched after the installed packages, so a plugin folder never shadows a library."""
    global _started
    if not _started:
        _started = True
        REGISTRIES.load(BUILTINS, "built-in plugins")
        REGISTRIES.load(entry_point_modules(), f"entry point group {ENTRY_POINTS!r}")
    folders = [search_path] if isinstance(search_path, (str, Path)) else list(search_path or [])
    for folder in folders:
        if str(folder) not in sys.path and str(folder) not in WITHHELD_FOLDERS:
            sys.path.append(str(folder))
    return REGISTRIES.load(modules)


def module_roots(modules) -> list[str]:
    """The folders the (imported) `modules` were found in, unless they are installed packages:
    stored with a study so that every later process finds them again."""
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages(),
                                              sysconfig.get_paths()["purelib"]]}
    roots = []
    for name in modules:
        spec = importlib.util.find_spec(name.split(".")[0])
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        where = Path(spec.origin).parent
        root = where.parent if spec.submodule_search_locations else where
        if not any(root.resolve().is_relative_to(folder) for folder in installed) and str(root) not in roots:
            roots.append(str(root))
    return roots


def entry_point_modules() -> list[str]:
    return [ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)]


def import_module(name: str, where: str = "plugins"):
    if name in WITHHELD:
        raise UserError(f"{where}: module {name!r} was not imported: {WITHHELD[name]}")
    try:
        return importlib.import_module(name)
    except UserError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise UserError(f"{where}: no module {name!r} (modules are looked for in the spec's folder and on "
                            "PYTHONPATH)") from None
        raise UserError(f"{where}: module {name!r} failed to import: {exc}") from None
    except SystemExit as exc:  # sys.exit() at import would otherwise end `trainlab run` quietly, exit 0
        raise UserError(f"{where}: module {name!r} called sys.exit({exc.code!r}) while being imported") from None
    except Exception as exc:  # a plugin's own bug: its message, on one line
        raise UserError(f"{where}: module {name!r} failed to import: {type(exc).__name__}: {exc}") from None


def import_object(path: str, where: str):
    """'pkg.mod:attr' or 'pkg.mod.attr' -> the object (torchtune-style dotted names)."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise SpecError(where, f"{path!r} is not an import path (expected package.module:name)")
    module = import_module(module_name, where)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(where, f"module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------- registration


def register(kind: str, name: str, target=None, *, Options: type[BaseModel] | None = None, doc: str = "",
             registries: Registries | None = None, **traits):
    """Register `target` as a `kind` plugin called `name`; without `target`, a decorator."""
    if target is None:
        return lambda obj: register(kind, name, obj, Options=Options, doc=doc, registries=registries, **traits) and obj
    plugin = Plugin(kind, name, target, Options or NoOptions, doc, traits)
    (registries or REGISTRIES).add(plugin)
    return plugin


def register_task(name_or_class=None, *, registries: Registries | None = None):
    """Class decorator for a Task subclass: `@register_task` (named by its `name` attribute)
    or `@register_task("my-task")`. One instance is registered; its `Options` and `doc` are the
    plugin's."""
    def add(cls, name=None):
        task = cls()
        name = name or getattr(cls, "name", None)
        if not name:
            raise ValueError(f"task {cls.__name__}: give it a name (register_task('my-task') or a `name` attribute)")
        task.name = name
        register("task", name, task, Options=getattr(cls, "Options", None), doc=getattr(cls, "doc", ""),
                 registries=registries)
        return cls
    if isinstance(name_or_class, type):
        return add(name_or_class)
    return lambda cls: add(cls, name_or_class)


def _registrar(kind: str, doc_of_kind: str):
    def registrar(name: str, target=None, *, Options: type[BaseModel] | None = None, doc: str = "",
                  registries: Registries | None = None, **traits):
        return register(kind, name, target, Options=Options, doc=doc, registries=registries, **traits)
    registrar.__name__ = f"register_{kind}"
    registrar.__doc__ = f"Register {doc_of_kind} under `name` (a decorator when `target` is omitted)."
    return registrar


register_optimizer = _registrar("optimizer", "build(model, lr, options, example) -> optimizer")
register_event = _registrar("event", "make(options) -> Hook (an event at chosen steps)")
register_probe = _registrar("probe", "make(options) -> Hook (a measurement with a cadence)")
register_mitigation = _registrar("mitigation", "make(options) -> Guard")
register_fault_model = _registrar("fault_model", "a FaultModel")
register_report = _registrar("report", "build(study_dir) -> path of the report")
register_command = _registrar("command", "a Command (a trainlab subcommand)")
register_job = _registrar("job", "a Job: check(spec) before anything runs, run(spec, context) -> summary")
register_logger = _registrar("logger", "a Logger class: Logger(study_root, spec, options) (trainlab.loggers.base)")
