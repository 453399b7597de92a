"""A full spool disk: Out of Resources (0xA700), never Success, and nothing half-written."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from config.settings import load_settings
from gateway.server import Gateway
from tests.conftest import UIH, free_port, need_shared, need_tool


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (needs root; skipped, saying so, without it)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_full_spool_answers_out_of_resources_and_keeps_whole_files(small_disk: Path) -> None:
    need_shared(UIH)
    settings = load_settings(None, data_dir=small_disk, dicom={"port": free_port()}, metrics={"port": 0})
    gw = Gateway(settings)
    gw.start()
    try:
        files = sorted(UIH.glob("*.dcm"))[:20]  # ~9.8 MB into 4 MB
        argv = [need_tool("storescu"), "-v", "-nh", "-aec", "PEDIFACE", "127.0.0.1", str(settings.dicom.port)]
        result = subprocess.run([*argv, *map(str, files)], capture_output=True, text=True, timeout=120)
        accepted = result.stderr.count("Received Store Response (Success)")
        refused = result.stderr.count("Received Store Response (Refused: OutOfResources)")
        assert accepted >= 1 and refused >= 1 and accepted + refused == len(files), result.stderr[-2000:]
        stored = sorted(gw.spool.incoming.glob("*/*.dcm"))
        assert len(stored) == accepted, "a refused instance was kept, or an accepted one lost"
        originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
        for path in stored:  # every kept file is whole, byte for byte
            assert pydicom.dcmread(path).PixelData == pydicom.dcmread(originals[path.stem]).PixelData
        assert not list(gw.spool.tmp.iterdir()), "half-written temp files left behind"
        echo = subprocess.run(
            [need_tool("echoscu"), "-aec", "PEDIFACE", "127.0.0.1", str(settings.dicom.port)], timeout=60
        )
        assert echo.returncode == 0, "the gateway stopped serving"
    finally:
        gw.stop()
