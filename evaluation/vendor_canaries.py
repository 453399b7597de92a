"""Canaries where a Siemens instance hides text, for the research profile's proof.

The research profile (docs/research-profile.md) keeps vendor private data and cleans descriptors word
by word; :func:`plant_vendor_canaries` puts unique values exactly there, with the markers of
:mod:`evaluation.canary`, so a test can show that none of them reaches the output.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from evaluation.canary import CanaryValues

#: Descriptors planted with identifiers under the research profile: what names the scan must stay.
DESCRIPTOR_KEEPS = {"SeriesDescription": "t1_mprage_sag", "ProtocolName": "ep2d_bold_rest"}


def plant_vendor_canaries(ds: Dataset) -> list[tuple[str, bytes]]:
    """Plant canaries where a Siemens instance (`ds`, changed in place) hides text: for the research profile.

    The instance's names and IDs become canaries; then the same canaries, a date, a phone number and
    a name from the name list go where the research profile keeps content: the descriptors it
    cleans word by word (beside words that must stay, :data:`DESCRIPTOR_KEEPS`), the XProtocol
    wrapper and free-text keys of the CSA series header's protocol, a string where a number is
    expected, a CSA tag whose pattern the value fails, the bytes after a CSA tag name, and a
    vendor attribute whose check the value fails. Returns ``(where, marker)`` of each canary;
    none may be in the de-identified output.
    """
    from worker import csa

    values = CanaryValues()
    name, given, patient_id = values.text(), "Canary", values.text()
    ds.PatientName = f"{name}^{given}"
    ds.PatientID = patient_id
    ds.StudyDate = "20240102"
    planted: list[tuple[str, bytes]] = [("PatientName", name.encode()), ("PatientID", patient_id.encode())]
    ds.SeriesDescription = f"{DESCRIPTOR_KEEPS['SeriesDescription']} {name} {given.upper()} 2024-01-02"
    ds.ProtocolName = f"{DESCRIPTOR_KEEPS['ProtocolName']}_{patient_id}_+1 555 0100_Smith"
    ds.StudyDescription = f"Doe^Jane_{given}"
    planted += [("descriptor date", b"2024-01-02"), ("descriptor phone", b"555 0100")]
    planted += [
        ("descriptor name list", b"Smith"),
        ("descriptor caret", b"Doe^Jane"),
        ("given name", b"Canary"),
    ]

    block = ds.private_block(0x0029, "SIEMENS CSA HEADER")
    series = csa.parse(bytes(block[0x20].value))
    protocol = series.tag("MrPhoenixProtocol")
    text = protocol.items[0].value.split(b"\0", 1)[0]
    marks = {
        key: values.text().encode() for key in ("wrapper", "protocol", "wip", "number", "unknown", "tag")
    }
    begin = text.index(b"\n", text.index(b"### ASCCONV BEGIN")) + 1
    injected = (
        b'tProtocolName\t = \t""' + marks["protocol"] + b'""\n'
        b'sWipMemBlock.tFree\t = \t""' + marks["wip"] + b' 1970-01-01""\n'
        b'sKSpace.lBaseResolution\t = \t""' + marks["number"] + b'""\n'
        b'sPatient.tName\t = \t""' + marks["unknown"] + b'""\n'
    )
    text = (
        text[:begin].replace(b"<XProtocol>", b"<XProtocol> " + marks["wrapper"] + b" ", 1)
        + injected
        + text[begin:]
    )
    protocol.items[0] = csa.make_item(text)
    series.tags[0].name_field = series.tags[0].name.encode().ljust(40, b"\0") + marks["tag"].ljust(24, b"\0")
    block[0x20].value = csa.write(series)
    image = csa.parse(bytes(block[0x10].value))
    ice, coil = values.text().encode(), values.text()
    image.tag("ICE_Dims").items = [csa.make_item(ice)]
    block[0x10].value = csa.write(image, canonical=True)
    ds.private_block(0x0051, "SIEMENS MR HEADER")[0x0F].value = coil
    planted += [(f"CSA {key}", marker) for key, marker in marks.items()]
    planted += [("CSA ICE_Dims", ice), ("CoilString", coil.encode())]
    return planted
