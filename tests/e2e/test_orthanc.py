"""Orthanc (Debian's package) as the source PACS and as the research archive.

The PACS Orthanc holds a study and forwards it to pediface with its REST API
(what a site's routing rule does); pediface defaces it and C-STOREs it to the
archive Orthanc, whose REST API the test reads back.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.conftest import UIH, Processes, free_port, need_shared, need_tool, wait_for_port, wait_until
from tests.e2e.checks import assert_defaced_deidentified
from tests.e2e.test_faults import config

pytestmark = pytest.mark.e2e


def orthanc(
    processes: Processes, tmp: Path, name: str, aet: str, modalities: dict | None = None
) -> tuple[int, str]:
    dicom_port, http_port = free_port(), free_port()
    settings = {
        "Name": name,
        "StorageDirectory": str(tmp / f"{name}-storage"),
        "IndexDirectory": str(tmp / f"{name}-index"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomModalities": modalities or {},
        "Plugins": [],
    }
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(settings))
    proc = processes.start(name, [need_tool("Orthanc"), str(path)])
    wait_for_port(http_port, proc=proc)
    wait_for_port(dicom_port, proc=proc)
    return dicom_port, f"http://127.0.0.1:{http_port}"


def rest(base: str, path: str, data: bytes | None = None, timeout: float = 60) -> object:
    request = urllib.request.Request(base + path, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body


@pytest.mark.slow(seconds=33)
def test_orthanc_pacs_to_pediface_to_orthanc_archive(tmp_path: Path, processes: Processes) -> None:
    need_shared(UIH)
    originals = sorted(UIH.glob("*.dcm"))
    archive_port, archive = orthanc(processes, tmp_path, "archive", "ARCHIVE")
    env, data_dir, gateway_port = config(
        tmp_path, destination={"kind": "dicom", "ae_title": "ARCHIVE", "port": archive_port}
    )
    run = processes.pediface("run", "run", env=env)
    wait_for_port(gateway_port, proc=run)
    _, pacs = orthanc(
        processes, tmp_path, "pacs", "PACS", modalities={"pediface": ["PEDIFACE", "127.0.0.1", gateway_port]}
    )
    for path in originals:
        rest(pacs, "/instances", path.read_bytes())
    (study,) = rest(pacs, "/studies")
    # The PACS forwards the study, as a routing rule would.
    job = rest(
        pacs, "/modalities/pediface/store", json.dumps({"Resources": [study], "Synchronous": True}).encode()
    )
    assert isinstance(job, dict)

    def archived() -> list[str]:
        series = rest(archive, "/series")
        if not series:
            return []
        instances = rest(archive, f"/series/{series[0]}/instances")
        return [i["ID"] for i in instances] if len(instances) == len(originals) else []

    ids = wait_until(archived, 600, "the defaced series in the archive Orthanc")
    out_dir = tmp_path / "from-archive"
    out_dir.mkdir()
    files = []
    for n, instance in enumerate(ids):
        target = out_dir / f"{n:04d}.dcm"
        target.write_bytes(rest(archive, f"/instances/{instance}/file"))  # type: ignore[arg-type]
        files.append(target)
    assert len(rest(archive, "/studies")) == 1
    figures = assert_defaced_deidentified(originals, files)
    pseudonym = pydicom.dcmread(files[0], stop_before_pixels=True).PatientID
    assert str(pseudonym).startswith("PF-")
    print(f"\northanc -> pediface -> orthanc: {len(ids)} instances; {figures}")
