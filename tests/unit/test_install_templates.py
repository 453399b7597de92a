"""The template images are installed beside their model cards, never from bytes that do not match.

models/install_templates.py copies them from ../shared/data/templates or takes pydeface's from its wheel
on the package index; the template masker names the installer when an image is missing.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, SHARED, need_shared
from worker.deface import load_masker

TEMPLATES = SHARED / "data" / "templates"
KEPT_IN_GIT = ("LICENSE", "MODEL_CARD.md", "SHA256SUMS")


def installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "install_templates", REPO / "models" / "install_templates.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bare_folder(tmp_path: Path, name: str) -> Path:
    """A model folder as a fresh clone has it: card, licence and sums, no images."""
    folder = tmp_path / name
    folder.mkdir()
    for file in KEPT_IN_GIT:
        shutil.copy(REPO / "models" / name / file, folder / file)
    return folder


def sums_check(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )


def test_the_images_are_not_in_git_and_the_installed_ones_match_their_sums() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "models/template-pydeface", "models/template-mridefacer"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked and not [name for name in tracked if name.endswith(".nii.gz")], tracked
    for name in ("template-pydeface", "template-mridefacer"):
        result = sums_check(REPO / "models" / name)  # make setup installed them
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["template-pydeface", "template-mridefacer"])
def test_images_are_copied_from_shared_and_checked(tmp_path: Path, name: str) -> None:
    need_shared(TEMPLATES)
    folder = bare_folder(tmp_path, name)
    module = installer()
    assert module.install(folder, TEMPLATES, use_index=False) == []
    result = sums_check(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert module.install(folder, TEMPLATES, use_index=False) == []  # again: nothing to do


def test_an_image_whose_bytes_differ_is_not_installed(tmp_path: Path) -> None:
    need_shared(TEMPLATES)
    folder = bare_folder(tmp_path, "template-pydeface")
    altered = tmp_path / "altered"
    shutil.copytree(TEMPLATES, altered)
    data = bytearray((altered / "pydeface_facemask.nii.gz").read_bytes())
    data[-10] ^= 0xFF
    (altered / "pydeface_facemask.nii.gz").write_bytes(bytes(data))
    left = installer().install(folder, altered, use_index=False)
    assert left == ["pydeface_facemask.nii.gz"]
    assert not (folder / "pydeface_facemask.nii.gz").exists()
    assert (folder / "pydeface_mean_reg2mean.nii.gz").exists()
    with pytest.raises(
        ValueError,
        match=r"pydeface_facemask.nii.gz listed in SHA256SUMS is missing "
        r"\(install the template images: make setup",
    ):
        load_masker("template", folder)


def test_without_shared_pydeface_images_come_from_its_wheel(tmp_path: Path) -> None:
    """The package index (reachable where pip installs) holds pydeface 2.1.0 with the same bytes."""
    folder = bare_folder(tmp_path, "template-pydeface")
    left = installer().install(folder, None, use_index=True)
    assert left == []
    result = sums_check(folder)
    assert result.returncode == 0, result.stdout + result.stderr
    masker = load_masker("template", folder)
    assert masker.name == "template-pydeface"


def test_the_command_fails_only_when_pydeface_images_are_missing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("template-pydeface", "template-mridefacer"):
        bare_folder(models, name)
    command = [
        sys.executable,
        str(REPO / "models" / "install_templates.py"),
        "--models",
        str(models),
        "--shared",
        str(tmp_path / "none"),
        "--no-index",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "template-pydeface: could not install" in lines[0]
    assert "the template masker and the demo need them" in lines[0]
    assert "template-mridefacer:" in lines[1] and "training and evaluation need them" in lines[1]

    # pydeface's images in place (as the wheel would give them): mridefacer's alone are a warning.
    for image in ("pydeface_facemask.nii.gz", "pydeface_mean_reg2mean.nii.gz"):
        shutil.copy(REPO / "models" / "template-pydeface" / image, models / "template-pydeface" / image)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "template-pydeface" not in result.stderr and "template-mridefacer:" in result.stderr
