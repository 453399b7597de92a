"""The options of the Basic Application Level Confidentiality Profile and the policy that selects them.

Option names are the standard's (PS3.15 Annex E, Table E.1-1 column headings), and the codes are
those of CID 7050 "De-identification Method" (PS3.16), which record in each de-identified instance
what was done to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from worker.deid.lookup import PatientIdLookup

if TYPE_CHECKING:
    from config.sections import DeidSettings


class DeidOption(StrEnum):
    """An option of the Basic Application Level Confidentiality Profile (PS3.15 E.3)."""

    RETAIN_SAFE_PRIVATE = "Retain Safe Private"
    RETAIN_UIDS = "Retain UIDs"
    RETAIN_DEVICE_IDENTITY = "Retain Device Identity"
    RETAIN_INSTITUTION_IDENTITY = "Retain Institution Identity"
    RETAIN_PATIENT_CHARACTERISTICS = "Retain Patient Characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "Retain Longitudinal Temporal Information with Full Dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "Retain Longitudinal Temporal Information with Modified Dates"
    CLEAN_DESCRIPTORS = "Clean Descriptors"
    CLEAN_STRUCTURED_CONTENT = "Clean Structured Content"
    CLEAN_GRAPHICS = "Clean Graphics"
    CLEAN_PIXEL_DATA = "Clean Pixel Data"


class DeidProfile(StrEnum):
    """What the engine does besides the selected options (``deid.profile``).

    ``basic`` is PS3.15's Basic Application Level Confidentiality Profile with the options the
    site selects. ``research`` is the Basic profile with :data:`RESEARCH_OPTIONS` and, beyond
    Table E.3.10-1, the vendors' private acquisition physics (:mod:`worker.deid.private`): what a
    research archive converting to NIfTI and BIDS needs, see docs/research-profile.md.
    """

    BASIC = "basic"
    RESEARCH = "research"


@dataclass(frozen=True)
class MethodCode:
    """A coded entry of CID 7050 (coding scheme ``DCM``)."""

    value: str
    meaning: str


BASIC_PROFILE_CODE = MethodCode("113100", "Basic Application Confidentiality Profile")
CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE = MethodCode("113102", "Clean Recognizable Visual Features Option")

#: CID 7050 codes of the options, checked against pydicom 3.0.2's copy of CID 7050.
OPTION_CODES: dict[DeidOption, MethodCode] = {
    DeidOption.RETAIN_SAFE_PRIVATE: MethodCode("113111", "Retain Safe Private Option"),
    DeidOption.RETAIN_UIDS: MethodCode("113110", "Retain UIDs Option"),
    DeidOption.RETAIN_DEVICE_IDENTITY: MethodCode("113109", "Retain Device Identity Option"),
    DeidOption.RETAIN_INSTITUTION_IDENTITY: MethodCode("113112", "Retain Institution Identity Option"),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: MethodCode("113108", "Retain Patient Characteristics Option"),
    DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: MethodCode(
        "113106", "Retain Longitudinal Temporal Information Full Dates Option"
    ),
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: MethodCode(
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"
    ),
    DeidOption.CLEAN_DESCRIPTORS: MethodCode("113105", "Clean Descriptors Option"),
    DeidOption.CLEAN_STRUCTURED_CONTENT: MethodCode("113104", "Clean Structured Content Option"),
    DeidOption.CLEAN_GRAPHICS: MethodCode("113103", "Clean Graphics Option"),
    DeidOption.CLEAN_PIXEL_DATA: MethodCode("113101", "Clean Pixel Data Option"),
}

#: Options that are refused rather than ignored: selecting an option promises the recipient
#: something, so accepting one the engine does not carry out would be a privacy defect.
#:
#: Clean Structured Content and Clean Graphics are carried out (:mod:`worker.deid.clean`): the
#: table covers only some content item attributes (Text Value, for one, is not a row), so their
#: items are cleaned against allow-lists of item content rather than by the table alone; overlay
#: bitmaps and curves, which only pixel-level work could clean, are removed.
UNSUPPORTED_OPTIONS: dict[DeidOption, str] = {
    # Finding and removing text burned into the pixels (OCR); until then, images that may carry
    # it (BurnedInAnnotation YES, secondary capture, screen saves) are refused, not forwarded.
    DeidOption.CLEAN_PIXEL_DATA: "removing identifying text burned into the pixel data",
}

#: The options the research profile selects, and why (docs/research-profile.md says more):
RESEARCH_OPTIONS: dict[DeidOption, str] = {
    DeidOption.RETAIN_SAFE_PRIVATE: "the vendor attributes that analysis reads (slice timing, b-values, "
    "echo spacing, mosaic layout); the research profile extends it to the acquisition physics",
    DeidOption.CLEAN_DESCRIPTORS: "series, study and protocol descriptions name the scan (t1_mprage_sag, "
    "ep2d_bold): BIDS converters name runs after them, so they are cleaned of what identifies, not blanked",
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: "dates shifted by a keyed per-patient offset: the "
    "intervals between sessions of a longitudinal study stay, the calendar dates go",
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: "age, sex, size and weight: age at scan is the key "
    "covariate of paediatric neuroimaging, and weight and size enter SAR and normative models",
}

_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_]{1,16}")


def _normalise_option_name(name: str) -> str:
    folded = " ".join(name.replace("_", " ").split()).casefold()
    return folded.removesuffix(" option")


_OPTIONS_BY_NAME: dict[str, DeidOption] = {
    **{_normalise_option_name(option.value): option for option in DeidOption},
    **{_normalise_option_name(option.name): option for option in DeidOption},
}


def parse_option(name: str | DeidOption) -> DeidOption:
    """The option named `name`.

    Parameters
    ----------
    name : str | DeidOption
        The standard's name of the option (``"Retain UIDs"``), case-insensitive and with or
        without a trailing ``" Option"``, or the enum member's name (``"RETAIN_UIDS"``).

    Returns
    -------
    DeidOption
        The option.

    Raises
    ------
    ValueError
        If `name` names no option of the profile.
    """
    if isinstance(name, DeidOption):
        return name
    option = _OPTIONS_BY_NAME.get(_normalise_option_name(str(name)))
    if option is None:
        known = ", ".join(repr(option.value) for option in DeidOption)
        raise ValueError(f"unknown de-identification option {name!r}; known options: {known}")
    return option


@dataclass(frozen=True)
class DeidPolicy:
    """What the de-identification engine does: the Basic profile plus the selected options.

    Parameters
    ----------
    options : frozenset[DeidOption]
        Options of the Basic Application Level Confidentiality Profile to apply on top of it.
        Strings are accepted and normalised through :func:`parse_option`.
    patient_id_prefix : str
        Prefix of the patient pseudonyms written into PatientID and PatientName: 1 to 16 ASCII
        letters, digits or underscores, so that the pseudonym is a valid LO and PN value.
    patient_id_lookup : PatientIdLookup | None
        Site-supplied research IDs by original PatientID. A patient found there gets its research
        ID in PatientID and PatientName instead of the keyed pseudonym.
    require_lookup : bool
        Refuse (quarantine) an instance whose PatientID is not in `patient_id_lookup`, instead of
        falling back to the keyed pseudonym.
    profile : DeidProfile
        ``basic``, or ``research``: :data:`RESEARCH_OPTIONS` are added to `options`, and the
        vendors' private acquisition physics is kept (:mod:`worker.deid.private`).

    Raises
    ------
    ValueError
        If an option is unknown or not supported yet, if the two Retain Longitudinal Temporal
        Information options are selected together, if `patient_id_prefix` is not valid, or if
        `require_lookup` is set without a `patient_id_lookup`.
    TypeError
        If `patient_id_lookup` is not a :class:`PatientIdLookup`.
    """

    options: frozenset[DeidOption] = frozenset()
    patient_id_prefix: str = "PF"
    patient_id_lookup: PatientIdLookup | None = None
    require_lookup: bool = False
    profile: DeidProfile = DeidProfile.BASIC

    def __post_init__(self) -> None:
        # Normalise through the enums at once so that the object is valid when built.
        try:
            profile = DeidProfile(str(self.profile).strip().lower())
        except ValueError:
            known = ", ".join(repr(p.value) for p in DeidProfile)
            raise ValueError(
                f"unknown de-identification profile {self.profile!r}; known profiles: {known}"
            ) from None
        object.__setattr__(self, "profile", profile)
        options = frozenset(parse_option(option) for option in self.options)
        if profile is DeidProfile.RESEARCH:
            options = options | frozenset(RESEARCH_OPTIONS)
        object.__setattr__(self, "options", options)
        unsupported = [option for option in DeidOption if option in options & UNSUPPORTED_OPTIONS.keys()]
        if unsupported:
            raise ValueError(
                f"de-identification option {unsupported[0].value!r} is not supported yet "
                f"({UNSUPPORTED_OPTIONS[unsupported[0]]})"
            )
        dates = {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES, DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES}
        if dates <= options:
            raise ValueError(
                f"options {DeidOption.RETAIN_LONGITUDINAL_FULL_DATES.value!r} and "
                f"{DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES.value!r} exclude each other"
            )
        if not isinstance(self.patient_id_prefix, str) or not _PREFIX_PATTERN.fullmatch(
            self.patient_id_prefix
        ):
            raise ValueError(
                f"patient_id_prefix must be 1 to 16 ASCII letters, digits or underscores, "
                f"got {self.patient_id_prefix!r}"
            )
        if self.patient_id_lookup is not None and not isinstance(self.patient_id_lookup, PatientIdLookup):
            raise TypeError(
                f"patient_id_lookup must be a PatientIdLookup, got {type(self.patient_id_lookup).__name__}"
            )
        if not isinstance(self.require_lookup, bool):
            raise TypeError(f"require_lookup must be a bool, got {type(self.require_lookup).__name__}")
        if self.require_lookup and self.patient_id_lookup is None:
            raise ValueError("require_lookup needs a patient_id_lookup")

    @classmethod
    def from_names(cls, names: Iterable[str], patient_id_prefix: str = "PF") -> DeidPolicy:
        """A policy from option names, as they appear in configuration files.

        Parameters
        ----------
        names : Iterable[str]
            Option names, see :func:`parse_option`.
        patient_id_prefix : str
            See :class:`DeidPolicy`.

        Returns
        -------
        DeidPolicy
            The policy.

        Raises
        ------
        ValueError
            Naming the first unknown or unsupported option, see :class:`DeidPolicy`.
        """
        if isinstance(names, str):
            raise TypeError(f"names must be an iterable of option names, not a single string {names!r}")
        return cls(
            options=frozenset(parse_option(name) for name in names), patient_id_prefix=patient_id_prefix
        )

    @property
    def research(self) -> bool:
        """Whether the research profile keeps the vendors' private acquisition physics."""
        return self.profile is DeidProfile.RESEARCH

    @classmethod
    def from_settings(
        cls, deid: DeidSettings, *, options: Iterable[str] | None = None, profile: str | None = None
    ) -> DeidPolicy:
        """The policy the ``deid`` settings section describes, reading its lookup table if any.

        Parameters
        ----------
        deid : DeidSettings
            The ``deid`` section of the settings.
        options, profile
            A destination's own options and profile, replacing ``deid.options`` and
            ``deid.profile`` when given.

        Returns
        -------
        DeidPolicy
            The policy.

        Raises
        ------
        ValueError
            If an option is unknown or unsupported, or the lookup table cannot be read or has a
            bad row (the message never quotes a patient ID).
        """
        names = deid.options if options is None else options
        if isinstance(names, str):
            raise TypeError(f"deid.options must be a list of option names, not a single string {names!r}")
        lookup = PatientIdLookup.from_csv(deid.patient_id_lookup) if deid.patient_id_lookup else None
        return cls(
            options=frozenset(parse_option(name) for name in names),
            patient_id_prefix=deid.patient_id_prefix,
            patient_id_lookup=lookup,
            require_lookup=deid.require_lookup,
            profile=DeidProfile(profile or deid.profile),
        )

    def ordered_options(self) -> tuple[DeidOption, ...]:
        """The selected options in the standard's column order (for stable output)."""
        return tuple(option for option in DeidOption if option in self.options)
