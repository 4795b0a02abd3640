"""An adaptive sweep: an Optuna sampler proposes the trials (spec `sweep.optuna`).

Proposals come in batches of `batch` trials; each batch is run by the study's executor and
its results told to Optuna before the next batch is asked for. The batch size is part of the
spec, not of the executor, and the sampler is re-seeded from (spec seed, trials so far)
before every proposal, so inline, pool and Ray runs propose the same trials, and a resumed
search proposes what the uninterrupted one would have.

The Optuna storage (default: sqlite `optuna.db` in the study directory) is the search's
memory. On resume, trials Optuna still holds as RUNNING (the process was killed) are run
again with the same parameters unless their trainlab trial finished; trials are keyed by
the hash of their resolved spec, so a proposal equal to a finished trial is not retrained.
"""

import json
import logging
import math
from dataclasses import replace

import numpy as np

from ..errors import UserError
from .sweep import plans_for

log = logging.getLogger(__name__)


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("sweep.optuna needs Optuna: pip install 'trainlab[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url(store, config: dict) -> str:
    return config["storage"] or f"sqlite:///{(store.root / 'optuna.db').resolve()}"


def distributions(optuna, params: dict) -> dict:
    out = {}
    for path, p in params.items():
        if p["values"] is not None:
            out[path] = optuna.distributions.CategoricalDistribution([choice(v) for v in p["values"]])
        elif p["integer"]:
            out[path] = optuna.distributions.IntDistribution(int(math.ceil(p["low"])), int(p["high"]), log=p["log"])
        else:
            out[path] = optuna.distributions.FloatDistribution(p["low"], p["high"], log=p["log"])
    return out


def choice(value):
    """Optuna's categorical choices are scalars: a list or mapping value is offered as its JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value, sort_keys=True)


def overrides_of(params: dict, proposed: dict) -> dict:
    out = {}
    for path, value in proposed.items():
        values = params[path]["values"]
        out[path] = next((v for v in values if choice(v) == value), value) if values is not None else value
    return out


def make_sampler(optuna, kind: str, seed: int):
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.TPESampler(seed=seed)


def check_storage(spec: dict) -> None:
    """A storage URL of the user's is opened before the study directory exists, so a wrong one
    leaves nothing behind (the default sqlite file lives in the study itself)."""
    config = spec["sweep"].get("optuna")
    if not config or not config["storage"]:
        return
    optuna = import_optuna()
    try:
        optuna.storages.get_storage(config["storage"])
    except Exception as exc:  # storage URLs fail in many library-specific ways
        raise UserError(f"sweep.optuna.storage: cannot open {config['storage']!r}: {' '.join(str(exc).split())[:200]}") from None


def search(store, executor, quiet: bool, run_plans) -> None:
    """Propose, run and report trials until `n_trials` Optuna trials have finished."""
    optuna = import_optuna()
    config = store.spec["sweep"]["optuna"]
    space = distributions(optuna, config["params"])
    try:
        study = optuna.create_study(study_name=store.spec["name"], storage=storage_url(store, config),
                                    direction=config["direction"], load_if_exists=True)
    except Exception as exc:  # storage URLs fail in many library-specific ways
        raise UserError(f"sweep.optuna.storage: cannot open {storage_url(store, config)!r}: {exc}") from None
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)

    def done() -> int:
        return sum(t.state in finished_states for t in study.get_trials(deepcopy=False))

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    if not quiet:
        log.info(f"study {store.root}: Optuna search ({config['sampler']}), {done()}/{config['n_trials']} trials done"
                 + (f", {len(stale)} interrupted" if stale else ""))
    if stale:
        run_batch(store, study, stale, config, run_plans)
    while done() < config["n_trials"]:
        proposals = []
        for _ in range(min(config["batch"], config["n_trials"] - done())):
            study.sampler = make_sampler(optuna, config["sampler"], seed_of(store.spec["seed"], len(study.trials), config))
            proposals.append(study.ask(space))
        run_batch(store, study, proposals, config, run_plans)


def seed_of(seed: int, count: int, config: dict) -> int:
    """A fresh seed per proposal, so a restarted search continues where it was; the QMC
    sequence instead keeps one scramble and takes its position from the storage."""
    if config["sampler"] == "qmc":
        return seed
    return int(np.random.SeedSequence([seed, count, 31337]).generate_state(1)[0])


def run_batch(store, study, proposals, config: dict, run_plans) -> None:
    """Turn proposals into trainlab trials (reusing finished ones), run them, tell Optuna."""
    optuna = import_optuna()
    known = {t["key"]: t["index"] for t in store.meta.get("trials", [])}
    per_proposal, new, todo = [], [], []
    for proposal in proposals:
        plans = []
        for plan in plans_for(store.spec, [overrides_of(config["params"], proposal.params)]):
            if plan.key not in known:
                known[plan.key] = len(known)
                new.append(replace(plan, index=known[plan.key]))
            plan = replace(plan, index=known[plan.key])
            if not store.finished(plan) and plan.key not in {p.key for p in todo}:
                todo.append(plan)
            plans.append(plan)
        per_proposal.append(plans)
    if new:
        store.add_trials(new)
    run_plans(todo)
    summaries = {s["key"]: s for s in store.summaries()}
    for proposal, plans in zip(proposals, per_proposal):
        values = [objective(summaries.get(plan.key), config, store.spec) for plan in plans]
        ok = all(math.isfinite(v) for v in values)
        if isinstance(proposal, optuna.trial.FrozenTrial):  # interrupted earlier: told by number
            proposal = proposal.number
        else:
            proposal.set_user_attr("trainlab_trials", [plan.index for plan in plans])
        study.tell(proposal, float(np.mean(values)) if ok else None,
                   state=None if ok else optuna.trial.TrialState.FAIL)


def objective(summary: dict | None, config: dict, spec: dict) -> float:
    """The metric of the chosen arm; a diverged or missing trial counts as failed (NaN)."""
    if summary is None:
        return math.nan
    arm = config["arm"] or spec["arms"][0]["name"]
    result = summary.get("arms", {}).get(arm, {})
    if config["metric"] not in result:
        allowed = ", ".join(k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise UserError(f"sweep.optuna.metric: trials report no {config['metric']!r}; available: {allowed}")
    value = result[config["metric"]]
    return float(value) if isinstance(value, (int, float)) and not result.get("diverged") else math.nan
