"""The README's "Python API" section runs as written, on a small run at the path its code names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from runs import make_tiny_run

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## `` section of the README, in order."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_python_api_section_has_code() -> None:
    blocks = python_blocks("Python API")
    assert len(blocks) >= 3
    assert any("lca_cli.compute(" in b for b in blocks) and any(".summarize(" in b for b in blocks)


def test_python_api_blocks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")  # the last block writes a report
    make_tiny_run(tmp_path / "runs", name="exp1")  # the README's runs/exp1, relative to the working directory
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, block in enumerate(python_blocks("Python API")):
        exec(compile(block, f"README.md Python API block {i + 1}", "exec"), namespace)  # one session, in order
    out = capsys.readouterr().out
    assert "steps=5:2: the window is empty" in out
    assert (tmp_path / "runs" / "exp1" / "lca.zarr").is_dir() and (tmp_path / "exp1.html").is_file()
