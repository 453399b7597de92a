"""Clean Descriptors, word by word: take out what identifies, keep what names the scan.

Under the Clean Descriptors option (PS3.15 E.3.5) Table E.1-1 marks descriptions and comments
C: keep them, but clean them of identifying information. Replacing them with a dummy is the
safe way to do so, and what the engine still does for prose about the patient (comments,
histories, diagnoses, reasons for the study, occupations): no cleaner can vouch for free text.
Descriptors that name an acquisition are another matter: ``t1_fl2d_sag`` or
``ep2d_bold_rest`` says what the series is, BIDS converters name runs after them, and the dummy
destroys exactly that. The descriptors listed in ``tables/descriptors.tsv`` are therefore
cleaned word by word (:func:`clean_descriptor`); what goes:

* the instance's own identifiers, in any case and any order: every word of its person names
  (patient, physicians, operators, any PN attribute), of its place (institution, department,
  address, station) and the whole values of its IDs, accession number, study ID, serial number
  and dates (:class:`Identifiers`);
* anything that looks like a date (``2024-01-02``, ``02.01.2024``, ``20240102``,
  ``2 Jan 2024``), a phone number, or an identifying number (six digits or more);
* words that a person-name list knows: the first names and surnames of the US Census 1990
  (the ``names`` package), three letters or longer, except the words of imaging and of the DICOM
  dictionary (:func:`vocabulary`: ``head``, ``long``, ``bold``, ``flair``, ``test`` are
  surnames too);
* the words on either side of a caret: ``Family^Given`` is how DICOM writes a person's name, and
  a Siemens exam tree writes ``Region^Exam``, often with a person's name in it
  (``Rorden^Rorden_Prisma``).

What is left keeps its order and separators (a separator next to a removed word goes with it).
Residual risk, documented in docs/research-profile.md: a name that is on no list and in no
attribute of the instance (a nickname, a colleague's name) stays.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from dataclasses import dataclass
from importlib import resources

from pydicom.datadict import DicomDictionary, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from worker.deid.options import DeidOption
from worker.deid.table import profile_table

DESCRIPTORS_FILE = "descriptors.tsv"

#: VRs a cleaned descriptor may have: text.
DESCRIPTOR_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})

#: Attributes whose every word identifies (besides every PN attribute of the instance): places.
IDENTIFYING_WORDS = (
    "PatientAddress",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianAddress",
    "RequestingService",
)

#: Attributes whose whole values identify, wherever they appear: the places, and IDs and numbers.
IDENTIFYING_VALUES = (
    *IDENTIFYING_WORDS,
    "PatientID",
    "OtherPatientIDs",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "DeviceSerialNumber",
    "MedicalRecordLocator",
    "PatientTelephoneNumbers",
    "ReferringPhysicianTelephoneNumbers",
)

MR_TERMS = frozenset(
    """
    t1 t2 pd fl fl2d fl3d tfl tse fse frfse gre spgr fspgr epi ep2d ep3d bold rest resting task fmri dwi dti
    diff diffusion adc trace fa swi swan tof pc angio mra flair stir mprage mp2rage space vibe haste blade
    propeller cube bravo fiesta ssfp trufi medic dixon water fat inphase outphase opp mag magnitude phase
    map fieldmap field topup sbref ref localizer localiser scout survey loc aahead aascout head neck brain
    spine orbit orbits pituitary iac sag cor tra ax axial sagittal coronal transverse oblique iso isotropic
    mm ms hz mb sms cmrr grappa sense asset caipi caipirinha ipat accel asl pcasl pasl casl tgse perfusion
    dsc dce gd post pre contrast gad cs ai dl deep learning norm normalized nd dis2d dis3d moco mosaic
    prisma trio skyra verio vida aera avanto sola espree biograph achieva ingenia elition signa discovery
    premier architect umr uih siemens philips ge toshiba canon hitachi research test testing qa qc phantom
    sequence protocol series study exam scan run echo multi single shot mosaic long short fast slow high
    low dynamic static repeat repeated part partial first second third left right anterior posterior
    superior inferior asc desc ascending descending interleaved sl slice slices slab thick thin volume vol
    anat func fmap dwi perf meg pet ct mr mri nmr child children ped peds paediatric pediatric neonatal
    neonate infant baby adult sedated awake motion corrected hires lowres highres research clinical
    standard fast ir inv inversion sat spoiled gradient spin turbo bandwidth matrix fov average averages
    """.split()
)
"""Words of MR protocols that the name list would otherwise take (many are surnames too)."""

_LETTERS = re.compile(r"[A-Za-z]+")
_WORD_SPLIT = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
_CARET = re.compile(r"([A-Za-z0-9-]*)\^([A-Za-z0-9-]*)")
_SEPARATORS = " _-^.,;:/+()[]"
_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec|january|february|march|april|june|july|"
_MONTHS += "august|september|october|november|december"
_PATTERNS = (
    # dates: 20240102, 2024-01-02, 2024/1/2, 02.01.2024, 1/2/24, 2 Jan 2024, Jan 2, 2024
    re.compile(r"(?<!\d)(19|20)\d{2}[-./]?(0?[1-9]|1[0-2])[-./]?(0?[1-9]|[12]\d|3[01])(?!\d)"),
    re.compile(r"(?<!\d)\d{1,2}[-./]\d{1,2}[-./](\d{4}|\d{2})(?!\d)"),
    re.compile(rf"(?i)(?<![a-z])\d{{1,2}}[ .-]?({_MONTHS})[ .,-]*\d{{2,4}}(?!\d)"),
    re.compile(rf"(?i)(?<![a-z])({_MONTHS})[ .-]?\d{{1,2}}(st|nd|rd|th)?,?[ .-]*\d{{2,4}}(?!\d)"),
    # phone numbers: seven digits or more with the usual separators
    re.compile(r"(?<![A-Za-z0-9.])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,4}\)?){2,4}(?![A-Za-z0-9.])"),
    # identifying numbers: six digits or more
    re.compile(r"\d{6,}"),
)


@dataclass(frozen=True)
class Identifiers:
    """What identifies the instance in its own header: words of names and places, whole values."""

    words: frozenset[str]
    values: tuple[str, ...]

    @functools.cached_property
    def _values_pattern(self) -> re.Pattern[str] | None:
        """Every value, longest first, at every position: a zero-width lookahead finds overlapping
        occurrences too, and at one position the first alternative that matches is the longest, whose
        span holds every shorter one that matches there."""
        if not self.values:
            return None
        return re.compile("(?=(" + "|".join(re.escape(value) for value in self.values) + "))")

    def value_spans(self, lower: str) -> list[tuple[int, int]]:
        """Where the whole values occur in `lower` (the text in lower case), overlapping ones included."""
        pattern = self._values_pattern
        if pattern is None:
            return []
        return [(match.start(), match.start() + len(match[1])) for match in pattern.finditer(lower)]

    @classmethod
    def of(cls, ds: Dataset) -> Identifiers:
        """The identifiers at the top level of `ds` (every PN attribute, and those listed above)."""
        words: set[str] = set()
        values: set[str] = set()
        for tag in ds.keys():
            if tag.group % 2 == 1 or not _may_identify(tag, ds.get_item(tag).VR):
                continue  # not decoded: most of an instance's attributes are neither names nor IDs
            elem = ds[tag]
            if elem.VR == "SQ" or elem.is_empty:
                continue
            keyword = elem.keyword
            texts = _texts(elem.value)
            if elem.VR == "PN" or keyword in IDENTIFYING_WORDS:
                words.update(w.lower() for text in texts for w in _LETTERS.findall(text) if len(w) >= 2)
            if elem.VR == "PN":  # each name component whole too: 'Doe7^Jane' holds 'doe7' and 'jane'
                texts = [*texts, *(part for text in texts for part in re.split(r"[\^=]", text))]
            if elem.VR in ("PN", "DA", "DT") or keyword in IDENTIFYING_VALUES:
                values.update(text.strip().lower() for text in texts if len(text.strip()) >= 3)
        # longest first, so that a value containing another is removed whole
        return cls(frozenset(words), tuple(sorted(values, key=lambda v: (-len(v), v))))


_IDENTIFIER_KEYWORDS = frozenset(IDENTIFYING_VALUES)
_IDENTIFIER_VRS = frozenset({"PN", "DA", "DT"})


def _identifying_tag(tag: int) -> bool:
    """Whether the dictionary names `tag` among the identifiers or gives it a name or date VR."""
    entry = DicomDictionary.get(tag)
    return entry is not None and (entry[0] in _IDENTIFIER_VRS or entry[4] in _IDENTIFIER_KEYWORDS)


def _may_identify(tag: int, vr: str | None) -> bool:
    """Whether an element of `tag` stored with `vr` can count in :meth:`Identifiers.of`: its VR once
    decoded is the stored one or the dictionary's (unknown, UN and ambiguous VRs), so both are asked."""
    return vr in _IDENTIFIER_VRS or _identifying_tag(int(tag))


def _texts(value: object) -> list[str]:
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(item) for item in items if item is not None]


def clean_descriptor(text: str, identifiers: Identifiers) -> str:
    """`text` without what identifies (see the module docstring); unchanged when nothing does."""
    lower = text.lower()
    remove = [False] * len(text)

    def mark(start: int, end: int) -> None:
        remove[start:end] = [True] * (end - start)

    for start, end in identifiers.value_spans(lower):
        mark(start, end)
    for pattern in _PATTERNS:
        for match in pattern.finditer(text):
            mark(match.start(), match.end())
    names, words = name_list(), identifiers.words
    for match in _LETTERS.finditer(text):
        word = match[0].lower()
        if word in words or (len(word) >= 3 and word in names):
            mark(match.start(), match.end())
    for match in _CARET.finditer(text):
        mark(match.start(1), match.end(1))
        mark(match.start(2), match.end(2))
    if not any(remove):
        return text
    return _joined(text, remove)


def _joined(text: str, remove: list[bool]) -> str:
    """The kept runs of `text`, a separator beside a removed run removed with it."""
    pieces: list[str] = []
    start = None
    for index, gone in enumerate([*remove, True]):
        if not gone and start is None:
            start = index
        elif gone and start is not None:
            pieces.append(text[start:index])
            start = None
    joiner = next((c for piece in pieces for c in piece[-1:] + piece[:1] if c in _SEPARATORS), "_")
    kept = [piece.strip(_SEPARATORS) for piece in pieces]
    return joiner.join(piece for piece in kept if piece)


@functools.cache
def vocabulary() -> frozenset[str]:
    """Words never taken for a name: :data:`MR_TERMS` and the words of the DICOM dictionary's keywords."""
    words = {word.lower() for entry in DicomDictionary.values() for word in _WORD_SPLIT.findall(entry[4])}
    return frozenset(words | MR_TERMS)


@functools.cache
def name_list() -> frozenset[str]:
    """First names and surnames of the US Census 1990 (``names`` package), minus :func:`vocabulary`."""
    found: set[str] = set()
    package = resources.files("names")
    for name in ("dist.all.last", "dist.female.first", "dist.male.first"):
        for line in package.joinpath(name).read_text(encoding="ascii").splitlines():
            word = line.split(" ", 1)[0].strip().lower()
            if len(word) >= 3 and word.isalpha():
                found.add(word)
    return frozenset(found - vocabulary())


@functools.cache
def cleaned_descriptors() -> frozenset[int]:
    """Tags of the descriptors cleaned word by word (``tables/descriptors.tsv``), checked once.

    Raises
    ------
    ValueError
        If a row is not a text attribute that Table E.1-1's Clean Descriptors column marks C.
    """
    text = resources.files("worker.deid").joinpath("tables", DESCRIPTORS_FILE).read_text(encoding="utf-8")
    table = profile_table()
    tags: set[int] = set()
    for line, row in enumerate(csv.DictReader(io.StringIO(text), delimiter="\t"), start=2):
        where = f"{DESCRIPTORS_FILE} line {line}"
        match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row["tag"].strip())
        tag = int(match[1] + match[2], 16) if match else -1
        entry = table.exact.get(tag)
        if entry is None or entry.keyword != row["keyword"].strip() or not row["why"].strip():
            raise ValueError(f"{where}: not a row of Table E.1-1 with its keyword and a reason")
        if entry.option_codes.get(DeidOption.CLEAN_DESCRIPTORS) != "C":
            raise ValueError(f"{where}: {entry.keyword} is not cleaned (C) by Clean Descriptors")
        if dictionary_VR(tag) not in DESCRIPTOR_VRS:
            raise ValueError(f"{where}: {entry.keyword} is not a text attribute")
        tags.add(tag)
    return frozenset(tags)
