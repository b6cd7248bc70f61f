"""The README's two commands: scripts/quickstart.sh and scripts/test.sh, their shared set-up, and CI's use of them.

CI (.ci/run) runs both scripts on a clean clone, which proves the fresh and the warm set-up; these tests keep the
pieces consistent with each other and check the idempotence logic of the set-up without installing anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SETUP = (ROOT / "scripts" / "_setup.sh").read_text(encoding="utf-8")


def test_readme_install_command_is_the_setup_command() -> None:
    block = README[README.index("## Install") :]
    readme_cmd = re.search(r"^(python -m pip install .*)$", block, re.M)
    assert readme_cmd is not None
    setup_cmd = re.search(r"^\s*install=\((.*)\)$", SETUP, re.M)
    assert setup_cmd is not None
    # the set-up appends the extra its script needs: dev for scripts/test.sh, as the README's command
    assert readme_cmd.group(1).strip() == setup_cmd.group(1).strip() + ' ".[dev]"'
    assert re.search(r"^lca_setup dev$", (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8"), re.M)
    assert re.search(
        r"^lca_setup examples dev$", (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8"), re.M
    )


def test_readme_opens_with_the_two_commands_and_ci_runs_them() -> None:
    first = README.index("## ")
    assert README[first:].startswith("## From a fresh clone: two commands")
    section = README[first : README.index("## Install")]
    assert "scripts/quickstart.sh" in section and "scripts/test.sh" in section
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^scripts/test\.sh\s*$", ci, re.M)
    assert re.search(r"^scripts/quickstart\.sh ", ci, re.M)
    for script in ("quickstart.sh", "test.sh"):
        path = ROOT / "scripts" / script
        assert os.access(path, os.X_OK), f"{script} must be executable"
        assert "lca_setup" in path.read_text(encoding="utf-8")


def _run_setup(root: Path, env_extra: dict[str, str], extras: str = "dev") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV",)}
    env.update(env_extra)
    return subprocess.run(
        ["bash", "-c", f". scripts/_setup.sh && lca_setup {extras} && command -v python"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fake_project(tmp_path: Path) -> Path:
    """A copy of the set-up beside this pyproject.toml, with a .venv whose python runs this interpreter but whose
    pip only records what it was asked (nothing is installed anywhere)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "_setup.sh").write_text(SETUP, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"), encoding="utf-8")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python"
    python.write_text(
        '#!/bin/sh\nif [ "$1 $2" = "-m pip" ]; then\n'
        '  echo "pip $* ($PYTHONWARNINGS)" >> "$(dirname "$0")/pip.log"; exit 0\nfi\n'
        f'exec "{sys.executable}" "$@"\n',
        encoding="utf-8",
    )
    python.chmod(0o755)
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n', encoding="utf-8")
    (venv_bin / "lca").write_text("#!/bin/sh\n", encoding="utf-8")
    (venv_bin / "lca").chmod(0o755)
    return venv_bin


def test_setup_installs_once_then_skips_until_pyproject_changes(tmp_path: Path) -> None:
    venv_bin = _fake_project(tmp_path)
    log = venv_bin / "pip.log"
    first = _run_setup(tmp_path, {"LCA_PYTHON": sys.executable})
    assert first.returncode == 0, first.stderr
    assert "setup: installing" in first.stderr
    assert first.stdout.strip() == str(venv_bin / "python")  # the venv is active afterwards
    # errors only: pip -qq, and setuptools' expected "Editable installation" warning filtered
    assert "pip -m pip install torch==2.13.0 -e .[dev] -qq (ignore:Editable installation)" in log.read_text(
        encoding="utf-8"
    )
    installs = log.read_text(encoding="utf-8").count("install torch")
    second = _run_setup(tmp_path, {"LCA_PYTHON": sys.executable})
    assert second.returncode == 0, second.stderr
    assert "installing" not in second.stderr
    assert log.read_text(encoding="utf-8").count("install torch") == installs  # skipped: the stamp matched
    with open(tmp_path / "pyproject.toml", "a", encoding="utf-8") as f:
        f.write("\n# a new dependency\n")
    third = _run_setup(tmp_path, {"LCA_PYTHON": sys.executable})
    assert "setup: installing" in third.stderr
    assert log.read_text(encoding="utf-8").count("install torch") == installs + 1


def test_setup_refuses_an_old_python_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "python3.9"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python 3.9.1'; exit 0; fi\nexit 1\n")
    fake.chmod(0o755)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "_setup.sh").write_text(SETUP, encoding="utf-8")
    done = _run_setup(tmp_path, {"LCA_PYTHON": str(fake)})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "Error: Python 3.9.1 is too old; lca needs Python 3.11+ (set LCA_PYTHON)"
    ]


def test_quickstart_setup_installs_examples_only_and_takes_a_dev_install(tmp_path: Path) -> None:
    venv_bin = _fake_project(tmp_path)
    log = venv_bin / "pip.log"
    env = {"LCA_PYTHON": sys.executable}
    first = _run_setup(tmp_path, env, "examples dev")  # what scripts/quickstart.sh asks for on a fresh clone
    assert first.returncode == 0 and "setup: installing lca-cli[examples]" in first.stderr, first.stderr
    assert "-e .[examples] -qq" in log.read_text(encoding="utf-8")
    # scripts/test.sh next: examples is not enough for the suite
    assert "setup: installing lca-cli[dev]" in _run_setup(tmp_path, env, "dev").stderr
    installs = log.read_text(encoding="utf-8").count("install torch")
    # CI's order, test.sh then quickstart.sh: a dev install does for the quick start (no second install)
    again = _run_setup(tmp_path, env, "examples dev")
    assert again.returncode == 0 and "installing" not in again.stderr, again.stderr
    assert log.read_text(encoding="utf-8").count("install torch") == installs
