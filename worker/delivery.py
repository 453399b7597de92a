"""Delivery of a defaced series to the research archive: a folder or a DICOM C-STORE SCP.

Delivery is idempotent: output UIDs are deterministic, so sending a series again
writes the same files or stores the same SOP instances (which archives treat as
an overwrite, not a duplicate). It also resumes: each acknowledged instance is
reported to ``record`` (the job's ledger) and instances in ``already`` are not
sent again, so an interrupted send continues where it stopped. Any failure
raises :class:`DeliveryError`, which the task retries with backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from common.errors import DeliveryError
from common.files import atomic_write
from common.logs import get_logger
from config.sections import DestinationKind, DestinationSettings
from spool.manifest import is_valid_uid

log = get_logger("pediface.worker.delivery")

#: Warnings of PS3.4 B.2.3 that still mean "stored".
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


Record = Callable[[str], None]


def _ignore(_sop_uid: str) -> None:
    pass


def deliver(
    files: Sequence[Path],
    destination: DestinationSettings,
    archive_folder: Path,
    *,
    already: Collection[str] = (),
    record: Record = _ignore,
) -> int:
    """Deliver ``files`` (one defaced series, named ``<SOPInstanceUID>.dcm``).

    Files whose SOP Instance UID is in ``already`` are skipped; ``record`` is called with the
    SOP Instance UID of each instance the destination acknowledged. Returns the number of
    instances the destination now holds (skipped ones included).
    """
    todo = [path for path in files if path.stem not in already]
    if len(todo) < len(files):
        log.info(
            "delivery_resumed", destination=destination.name, skipped=len(files) - len(todo), left=len(todo)
        )
    if todo:
        if destination.kind == DestinationKind.folder:
            _to_folder(todo, archive_folder, record)
        else:
            _to_scp(todo, destination, record)
    return len(files)


def _to_folder(files: Sequence[Path], archive: Path, record: Record) -> int:
    """``<archive>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, each written atomically."""
    try:
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            uids = [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
            if not all(is_valid_uid(u) for u in uids):
                raise DeliveryError(f"{path.name} has an invalid UID; not written to the archive")
            target = archive / uids[0] / uids[1]
            target.mkdir(parents=True, exist_ok=True)
            atomic_write(target / f"{uids[2]}.dcm", path.read_bytes())
            record(uids[2])
    except OSError as exc:
        raise DeliveryError(f"cannot write to the archive folder {archive}: {exc.strerror or exc}") from exc
    return len(files)


#: What every Storage SCP must accept (PS3.4 B.4.1 / PS3.5 10.1), proposed with each file's own syntax.
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _accepted(assoc: object) -> dict[str, set[str]]:
    """Transfer syntaxes the destination accepted, by SOP class."""
    accepted: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:  # type: ignore[attr-defined]
        accepted.setdefault(str(context.abstract_syntax), set()).update(
            str(t) for t in context.transfer_syntax
        )
    return accepted


def fit_transfer_syntax(ds: Dataset, accepted: set[str]) -> Dataset:
    """``ds`` in a transfer syntax the destination accepted: its own, else uncompressed little endian.

    Decompression is lossless (the files are written losslessly); the SOP Instance UID is kept,
    since the pixel values are the same.
    """
    ts = ds.file_meta.TransferSyntaxUID
    if str(ts) in accepted:
        return ds
    target = next((UID(t) for t in _UNCOMPRESSED if t in accepted), None)
    if target is None:
        raise DeliveryError(
            f"the destination accepts neither {ts.name} nor uncompressed little endian "
            f"for {ds.SOPClassUID.name}"
        )
    if ts.is_compressed:
        ds.decompress(generate_instance_uid=False)
    # Decode every element with the encoding it was read in, then declare the new one:
    # relabelling alone would leave raw elements to be parsed, or written, in the wrong VR mode.
    for _ in ds.iterall():
        pass
    ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian)
    ds.file_meta.TransferSyntaxUID = target
    log.info("transcoded_for_destination", source=ts.name, target=target.name)
    return ds


def _to_scp(files: Sequence[Path], destination: DestinationSettings, record: Record) -> int:
    headers = [dcmread(path, stop_before_pixels=True) for path in files]
    contexts: dict[str, set[str]] = {}
    for ds in headers:
        contexts.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    ae = AE(ae_title=destination.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout_s
    for sop_class, syntaxes in sorted(contexts.items()):
        # One context per proposed syntax, so the destination can accept some and reject others.
        for syntax in sorted(syntaxes - set(_UNCOMPRESSED)):
            ae.add_requested_context(sop_class, [syntax])
        # Explicit and implicit VR in contexts of their own: the destination may accept both,
        # and explicit-VR files then travel as they are.
        for syntax in _UNCOMPRESSED:
            ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if not assoc.is_established:
        raise DeliveryError(f"no association with {where} (refused, aborted or unreachable)")
    sent = 0
    accepted = _accepted(assoc)
    try:
        for path in files:
            ds = dcmread(path)
            status = assoc.send_c_store(fit_transfer_syntax(ds, accepted.get(str(ds.SOPClassUID), set())))
            code = getattr(status, "Status", None)
            if code is None:
                raise DeliveryError(f"{where} did not answer a C-STORE (connection lost or timed out)")
            if code not in _STORED:
                raise DeliveryError(f"{where} refused an instance with status 0x{code:04X}")
            record(str(ds.SOPInstanceUID))
            sent += 1
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("series_sent", destination=destination.name, peer=where, instances=sent)
    return sent
