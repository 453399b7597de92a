"""`pip install pediface` without the worker extra: the gateway's install, as the slim image has it.

A command that needs the pipeline (numpy, SimpleITK, torch, nnU-Net) must then say in one line which
extra to install, never end on a ModuleNotFoundError traceback. A throw-away venv gets the project with
its base dependencies only (about a minute: they come from PyPI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

EXTRA_LINE = (
    "pediface {command}: needs the worker extra (missing: numpy, SimpleITK, PIL, torch, nnunetv2); "
    "install it with: pip install 'pediface[worker]'"
)


PROJECT_FILES = ("pyproject.toml", "README.md", "constraints.txt")


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("base")
    # a copy of the project (the packages pyproject names): building in place would leave build/ in the tree
    source = work / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy(REPO / name, source / name)
    packages = re.findall(r'"(\w+)\*"', (REPO / "pyproject.toml").read_text().split("packages.find", 1)[1])
    for package in packages:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # --no-compile: pip's byte-compiling of every installed module is half of the install's CPU; the few
    # modules the commands below import are compiled when they are first imported.
    pip = subprocess.run(
        [
            *(str(venv / "bin" / "pip"), "install", "--quiet", "--no-compile"),
            *("-c", str(REPO / "constraints.txt"), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    missing = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
        capture_output=True,
        text=True,
    )
    assert missing.stdout.strip() == "None", "the base install must not bring torch"
    return venv / "bin" / "pediface"


@pytest.mark.parametrize(
    "args",
    [["worker"], ["deface", "in", "out"], ["model", "import", "weights.zip"], ["evaluate"], ["demo"]],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_worker_command_names_the_extra_to_install(
    base_install: Path, args: list[str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(base_install), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    command = "model import" if args[0] == "model" else args[0]
    assert done.returncode == 2
    assert done.stderr.splitlines() == [EXTRA_LINE.format(command=command)]
    assert done.stdout == ""


def test_the_gateway_commands_run_on_the_base_install(base_install: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(base_install), "config", "--defaults"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "deface:" in done.stdout, done.stderr
    done = subprocess.run([str(base_install), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "deface" in done.stdout and "model" in done.stdout
