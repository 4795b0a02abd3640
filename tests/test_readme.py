"""Every command the README shows runs as written: each `trainlab` line of its bash blocks, its
error example (the same one line), its spec (validated) and its Python snippet, in an empty
folder holding a copy of `examples/`. Placeholders the README has to use (a study directory
with its time stamp, `SPEC`) are filled with the studies the earlier commands made; the
`make` lines are the set-up this suite itself runs under."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import needs_mnist

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall((ROOT / "README.md").read_text()) if lang == language]


def commands() -> list[list[str]]:
    lines = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("trainlab "):
                lines.append(shlex.split(line))
    return lines


def latest(folder: Path, prefix: str) -> str:
    return str(sorted(folder.glob(f"runs/{prefix}-*"))[-1].relative_to(folder))


def fill(argv: list[str], folder: Path, data: str) -> list[str]:
    out = []
    for arg in argv:
        arg = arg.replace("../shared/data", data)
        if arg == "SPEC":
            arg = "examples/demo.yaml"
        elif re.fullmatch(r"runs/demo-\d{8}_\d{6}", arg):
            arg = latest(folder, "demo")
        elif "<stamp>" in arg:
            name, rest = arg.split("-<stamp>", 1)
            arg = latest(folder, name.removeprefix("runs/")) + rest
        out.append(arg)
    return out


def run(argv: list[str], folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainlab", *argv[1:]], cwd=folder, capture_output=True, text=True,
                          timeout=900)


@needs_mnist
def test_every_readme_command_runs_as_written(tmp_path):
    import os

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    data = os.environ["TRAINLAB_DATA"].split(os.pathsep)[0]
    ran = 0
    for argv in commands():
        result = run(fill(argv, tmp_path, data), tmp_path)
        assert result.returncode == 0, f"{' '.join(argv)}\n{result.stderr[-2000:]}"
        ran += 1
    assert ran >= 12
    # the error example: its one line, as printed
    example = next(body for lang, body in BLOCK.findall((ROOT / "README.md").read_text())
                   if lang == "" and body.startswith("$ trainlab"))
    command, expected = example.strip().splitlines()
    result = run(shlex.split(command.removeprefix("$ ")), tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == expected


def test_the_readme_spec_validates_and_its_python_runs(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    spec = next(body for body in blocks("yaml") if body.startswith("name: demo"))
    (tmp_path / "spec.yaml").write_text(spec)
    result = run(["trainlab", "validate", "spec.yaml"], tmp_path)
    assert result.returncode == 0 and "# 4 trial(s)" in result.stdout, result.stderr
    code = blocks("python")[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "adam" in result.stdout and "muon" in result.stdout
