"""The documentation's walk-throughs run as written: the files a page shows (```python
file=NAME blocks) are written into an empty folder, then its `trainlab` command blocks run
there, in a fresh process each."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
BLOCK = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)


def blocks(page: Path):
    for language, info, body in BLOCK.findall(page.read_text()):
        name = re.search(r"file=(\S+)", info)
        yield language, name.group(1) if name else None, body


def run_page(page: Path, folder: Path) -> list[subprocess.CompletedProcess]:
    results = []
    for language, name, body in blocks(page):
        if name:
            (folder / name).write_text(body)
        elif language == "bash":
            for line in body.strip().splitlines():
                argv = shlex.split(line)
                assert argv[0] == "trainlab", line
                results.append(subprocess.run([sys.executable, "-m", "trainlab", *argv[1:], "--quiet"], cwd=folder,
                                              capture_output=True, text=True, timeout=900))
    return results


def test_the_plugins_page_runs_as_written(tmp_path):
    results = run_page(DOCS / "plugins.md", tmp_path)
    assert len(results) == 2
    for result in results:
        assert result.returncode == 0, result.args + [result.stderr]
    study, faults = (tmp_path / r.stdout.strip().splitlines()[-1] for r in results)
    report = (study / "report.md").read_text()
    assert "`nadam` (torch.optim.NAdam" in report and "my images" in report
    assert (faults / "final_report.md").exists()
    code_lines = sum(len(body.strip().splitlines()) for _, name, body in blocks(DOCS / "plugins.md") if name)
    assert code_lines < 60, code_lines  # the page's promise: under 60 lines of user code
