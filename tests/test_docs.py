"""Every ```python block in README.md and docs/*.md runs (each in a fresh namespace)."""

import re
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for f in files:
        for i, match in enumerate(BLOCK.finditer(f.read_text())):
            yield pytest.param(match.group(1), id=f"{f.name}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_doc_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})


def test_readme_has_the_two_quickstart_commands():
    text = (ROOT / "README.md").read_text()
    assert "<!-- quickstart-run -->" in text and "<!-- quickstart-test -->" in text
