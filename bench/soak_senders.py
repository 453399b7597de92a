"""The senders of a soak: copies of the shared series under fresh UIDs, sent with dcmtk's storescu.

Each send is a new study and series (as a PACS forwarding new sessions would), so that every SOP Instance
UID acknowledged with Success can be followed to the archive. A send that breaks off (the gateway killed
mid-association) is sent again whole, as a PACS does; what was acknowledged the first time counts too.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import RLELossless, generate_uid

from bench.soak_stack import DCMTK_ENV

SHARED_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"

SERIES = {
    "3d": "dcm_qa_uih/uih_t1_gre_fsp_3d_sag",
    "enhanced": "dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced",
    "2d": "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS",
    # compressed: the prone 2D series, RLE-compressed here (a copy under the soak folder, never in git)
    "compressed": "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFP",
    "jpeg-ls": "pydicom-data/emri_small_enhanced_mr_5_transfer_syntaxes/emri_small_jpeg_ls_lossless.dcm",
}
"""The kinds of series in the mix, from ../shared/data/dicom (README there)."""

_UID_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


@dataclass
class Send:
    """One series sent: what was acknowledged, and when the last Success came."""

    sender: str
    kind: str
    study_uid: str
    series_uid: str
    sops: list[str]
    status: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> last status text
    acknowledged: set[str] = field(default_factory=set)  # got Success at least once
    started: float = 0.0
    last_success: float = 0.0  # time.time() of the last Success
    attempts: int = 0


def prepare_templates(folder: Path, kinds: list[str]) -> dict[str, list[Path]]:
    """The files of each kind; the compressed kind is written once, RLE Lossless, under ``folder``."""
    templates: dict[str, list[Path]] = {}
    for kind in kinds:
        source = SHARED_DICOM / SERIES[kind]
        files = [source] if source.is_file() else sorted(source.glob("*.dcm"))
        if kind == "compressed":
            target = folder / "compressed-template"
            target.mkdir(parents=True, exist_ok=True)
            converted = []
            for path in files:
                out = target / path.name
                if not out.exists():
                    ds = pydicom.dcmread(path)
                    ds.compress(RLELossless)
                    ds.save_as(out, enforce_file_format=True)
                converted.append(out)
            files = converted
        templates[kind] = files
    return templates


def mint(files: list[Path], folder: Path) -> tuple[str, str, list[Path]]:
    """A copy of a series under new Study, Series, Frame of Reference and SOP Instance UIDs."""
    folder.mkdir(parents=True)
    new = {name: generate_uid() for name in _UID_ATTRIBUTES}
    out = []
    for path in files:
        ds = pydicom.dcmread(path)
        for name, uid in new.items():
            if name in ds:
                setattr(ds, name, uid)
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        target = folder / f"{sop}.dcm"
        ds.save_as(target, enforce_file_format=True)
        out.append(target)
    return new["StudyInstanceUID"], new["SeriesInstanceUID"], out


_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def storescu(aet: str, port: int, files: list[Path], on_line: Callable[[str], None]) -> int:
    """Send with dcmtk's storescu, calling ``on_line`` with each line of its verbose output as it comes."""
    argv = ["storescu", "-v", "-aet", aet, "-aec", "PEDIFACE", "-to", "60", "127.0.0.1", str(port),
            *map(str, files)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    assert proc.stdout is not None
    for line in proc.stdout:
        on_line(line)
    return proc.wait()


class Sender(threading.Thread):
    """Sends series of the mix one after another until stopped; ``sends`` is its ledger."""

    def __init__(
        self,
        name: str,
        port: Callable[[], int],
        templates: dict[str, list[Path]],
        work: Path,
        stop: threading.Event,
        may_send: Callable[[], bool],
        seed: int,
        in_association: dict[str, float] | None = None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.port, self.templates, self.work, self.stop = port, templates, work, stop
        self.may_send = may_send
        self.random = random.Random(seed)
        self.sends: list[Send] = []
        self.in_association = in_association if in_association is not None else {}
        self.errors: list[str] = []

    def run(self) -> None:
        count = 0
        while not self.stop.is_set():
            if not self.may_send():  # back-pressure: the workers are behind
                time.sleep(0.5)
                continue
            kind = self.random.choice(sorted(self.templates))
            count += 1
            folder = self.work / f"{self.name}-{count:05d}"
            study, series, files = mint(self.templates[kind], folder)
            send = Send(self.name, kind, study, series, [p.stem for p in files], started=time.time())
            self.sends.append(send)
            try:
                self._send_until_acknowledged(send, files)
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    def _send_until_acknowledged(self, send: Send, files: list[Path]) -> None:
        """Send the series; if any instance was not acknowledged, send it all again (up to 20 times)."""
        for _ in range(20):
            send.attempts += 1
            current: list[str] = [""]

            def on_line(line: str, send: Send = send, current: list[str] = current) -> None:
                if match := _SENDING.search(line):
                    current[0] = Path(match.group(1)).stem
                    self.in_association[self.name] = time.time()
                elif (match := _RESPONSE.search(line)) and current[0]:
                    send.status[current[0]] = match.group(1)
                    if match.group(1) == "Success":
                        send.acknowledged.add(current[0])
                        send.last_success = time.time()

            try:
                storescu(self.name, self.port(), files, on_line)
            except OSError as exc:
                self.errors.append(str(exc))
            finally:
                self.in_association.pop(self.name, None)
            if len(send.acknowledged) == len(files) or self.stop.is_set():
                return
            time.sleep(3)  # the gateway is restarting: a PACS retries the series a little later
