"""TensorBoard: one event-file run per trial and arm, inside the trial's folder.

`tensorboard --logdir runs/<study>` shows every run (named by its folder,
trials/trial_0000/tensorboard/adam), its scalars by step, and in the HParams tab each run's
hyperparameters beside its final numbers; the study's report figures and report.md are under
the run `tensorboard/report`. Writing inside the trial's folder means the files travel with
the trial in every executor, Ray included."""

from pathlib import Path

from ..plugin import register_logger
from .base import Logger, PerArm, figures_of


def writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (extra)
    return SummaryWriter(log_dir=str(folder), flush_secs=5)


class TensorBoardRun:
    def __init__(self, folder: Path, params: dict):
        self.writer, self.params = writer(folder), params

    def scalars(self, numbers: dict[str, float], step: int) -> None:
        for tag, value in numbers.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, final: dict[str, float], failed: bool) -> None:
        from torch.utils.tensorboard.summary import hparams
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, 0)
        params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self.params.items()}
        # written into this run's own file (SummaryWriter.add_hparams would start another run)
        for summary in hparams(params, final or {"final/failed": float(failed)}):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()


class TensorBoardLogger(Logger):
    def open_trial(self, index: int, folder: Path, arms: dict[str, dict]) -> PerArm:
        logs = self.place(folder) / "tensorboard"
        logs.remove_tree()  # a rerun replaces the trial's runs
        return PerArm(lambda arm, params: TensorBoardRun((logs / safe(arm)).mkdir().path, params), arms)

    def finish(self, files: list[Path]) -> None:
        import matplotlib.image
        folder = self.place("tensorboard/report")
        folder.remove_tree()
        with writer(folder.mkdir().path) as report:
            for figure in figures_of(files):
                image = matplotlib.image.imread(figure)[..., :3]
                report.add_image(figure.relative_to(self.root).as_posix(), image, 0, dataformats="HWC")
            for text in (f for f in files if f.suffix == ".md" and f.is_file()):
                report.add_text(text.name, text.read_text(encoding="utf-8"), 0)


def safe(arm: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in arm) or "_"


register_logger("tensorboard", TensorBoardLogger, requires={"tensorboard": "tensorboard"},
                doc="TensorBoard event files in each trial's folder (scalars, HParams) and the report's figures")
