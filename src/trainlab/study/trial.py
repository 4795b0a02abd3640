"""One trial of a study, run in this process and written into the study directory.

An error inside a trial (the task's own code, data that fails during training, a probe) does
not stop the study: the trial is recorded as failed in its failure.json (one-line reason and
the traceback), the other trials go on, and the study ends by saying so (runner.py). A full
disk is not a trial's failure: it stops the study, which resumes once space is back; nor is a
path of the study that trainlab refuses to write through (a planted link, a FIFO): it stops
the study in one line, and the study resumes once the path is removed."""

import errno
import sys
import traceback
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ..engine import Trial
from ..errors import one_line
from ..io import UnsafePath
from ..plugin import registries
from . import loggers
from .store import StudyStore
from .sweep import TrialPlan


@dataclass
class Extras:
    """What a Python caller adds to every trial: Hooks (run inside the training process, so
    they must pickle for pool and Ray workers) and sinks (anything with log(record) and
    flush(); they get every record with its trial index, in the calling process)."""

    hooks: list = field(default_factory=list)
    sinks: list = field(default_factory=list)
    log: bool = True  # the study's loggers log where the trial runs (the Ray executor replays them instead)


@dataclass
class JobContext:
    """What a job sees: its trial's folder, the folders of the trials it runs after, a sink for
    its records (the trial's metrics stream), progress on/off, the trial's progress bar (None
    when quiet): a job sets its total and updates it as it goes; and `place`, the trial's
    folder as an Anchor: a job writes its files through it (`context.place / "run.json"`),
    so nothing planted in the study takes them elsewhere."""

    index: int
    folder: object  # Path of this trial's folder (to read from)
    inputs: dict  # trial index -> Path of that trial's folder (the job's `after`)
    sink: object
    quiet: bool = True
    progress: object = None
    place: object = None  # io.Anchor of this trial's folder (to write in)


class Tee:
    """A trial's records to the study's metrics stream and to the caller's sinks."""

    def __init__(self, writer, sinks: list, index: int):
        self.writer, self.sinks, self.index = writer, sinks, index

    def log(self, record: dict) -> None:
        self.writer.log(record)
        for sink in self.sinks:
            sink.log({"trial": self.index, **record})

    def flush(self) -> None:
        self.writer.flush()
        for sink in self.sinks:
            sink.flush()


def run_trial(store: StudyStore, plan: TrialPlan, total: int, quiet: bool, extras: Extras | None = None) -> dict | None:
    """Train one trial into the store; its summary, or None when it failed (recorded). A
    logger that fails (a tracking server down) fails the trial the same way."""
    extras = extras or Extras()
    writer = store.start_trial(plan)
    bar = None if quiet else tqdm(desc=f"trial {plan.index + 1}/{total}", unit="step", leave=False,
                                  file=sys.stderr, dynamic_ncols=True)
    logs = []
    try:
        logs = loggers.open_trial(loggers.loggers_of(store), store, plan) if extras.log else []
        sink = Tee(writer, [*extras.sinks, *logs], plan.index) if extras.sinks or logs else writer
        if plan.spec.get("job"):
            summary = run_job(store, plan, sink, quiet, bar)
        else:
            trial = Trial(plan.spec, sink=sink, artifact_dir=store.trial_place(plan.index), progress=bar,
                          hooks=extras.hooks, study_root=store.inputs_root)
            if bar is not None:
                bar.total = trial.total_steps
            summary = trial.run()
        for trial_log in logs:
            trial_log.close(summary)
    except Exception as exc:
        if isinstance(exc, UnsafePath) or isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # the study stops; nothing of this trial is lost that a resume would not redo
        close_quietly(logs)
        store.fail_trial(plan, one_line(exc), details=traceback.format_exc())
        return None
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    store.finish_trial(plan, summary)
    return summary


def close_quietly(logs: list) -> None:
    """End a failed trial's runs as failed; the trial's own error is what gets reported."""
    for trial_log in logs:
        try:
            trial_log.close(None)
        except Exception:
            pass


def job_of(spec: dict):
    """The job plugin a trial's spec names."""
    found = registries(spec.get("plugins", []), spec.get("plugin_path"))
    return found.jobs.get(spec["job"]["kind"], "job.kind").target


def run_job(store: StudyStore, plan: TrialPlan, sink, quiet: bool, bar=None) -> dict:
    place = store.trial_place(plan.index).mkdir()
    inputs = {i: store.input_dir(i) for i in plan.spec["job"]["after"]}
    return job_of(plan.spec).run(plan.spec, JobContext(plan.index, place.path, inputs, sink, quiet, bar, place))
