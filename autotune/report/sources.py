"""Where a report's study comes from: `autotune report STUDY_OR_PROFILE` names a profile (or a profile set), a
study's SQLite file or journal file, or a storage URL; this module finds the study, the profile and the saved images."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from autotune.exceptions import ReportError
from autotune.files import check_report_source
from autotune.measure.quality import images_path, load_images
from autotune.profile import Profile, load_profile, profile_from_dict, read_yaml
from autotune.tuner.study import open_storage, redact

_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class ReportSource:
    """What `report_source` found: the study, the profile and images when there are some, and where to write."""

    study: optuna.Study
    profile: Profile | None
    images: dict[str, np.ndarray] | None
    default_output: Path


def report_source(
    arg: str | os.PathLike, study_name: str | None = None, storage: str | None = None
) -> ReportSource:
    """Resolve `autotune report STUDY_OR_PROFILE`: a profile YAML, a study's SQLite or journal file, or a storage URL.

    A profile names its study and storage (`provenance`); `storage` overrides the recorded one (needed when the
    recorded URL hides its password). A recorded journal path that is relative is looked up here, then next to the
    profile. A storage with several studies needs `study_name`.
    """
    text = str(arg)
    check_report_source(text)
    path = Path(text)
    if path.is_file():
        with path.open("rb") as file:
            is_sqlite = file.read(16) == _SQLITE_MAGIC
        if is_sqlite or _is_journal(path):
            url = f"sqlite:///{path.resolve()}" if is_sqlite else str(path)
            study = _load_study(storage or url, study_name)
            return ReportSource(study, None, _sidecar(path), path.with_suffix(".html"))
        profile = _load_profile_or_set(path)
        provenance = profile.provenance
        url = storage or (provenance.storage if provenance else None)
        if not url:
            raise ReportError(f"{path}: the profile records no study storage; give it with --storage URL")
        if "***" in url:
            raise ReportError(f"{path}: the recorded storage {url} hides its password; give the URL with --storage")
        if not storage and "://" not in url and not Path(url).exists():
            # A search records the journal path it was given, relative to where it ran: often the profile's folder.
            beside = path.parent / url
            url = str(beside) if beside.exists() else url
        study = _load_study(url, study_name or (provenance.study if provenance else None))
        return ReportSource(study, profile, _sidecar(path), path.with_suffix(".html"))
    study = _load_study(storage or text, study_name)  # a URL: check_report_source refused any other text
    return ReportSource(study, None, None, Path(f"{study.study_name}.html"))


def _is_journal(path: Path) -> bool:
    # Optuna's journal file is JSON lines, each an operation with an op_code; a profile is YAML, never such a line.
    if path.suffix == ".journal":
        return True
    with path.open("rb") as file:
        first = file.readline(1 << 16)
    try:
        return isinstance(record := json.loads(first), dict) and "op_code" in record
    except ValueError:
        return False


def _load_profile_or_set(path: Path) -> Profile:
    # A profile set (Pareto results) holds several profiles; they share one study, so the first one's provenance does.
    data = read_yaml(path)  # bounded, and its error names the problem
    if isinstance(data, dict) and "provenance" not in data and isinstance(data.get("profiles"), list):
        if not data["profiles"]:
            raise ReportError(f"{path}: the profile set has no profiles")
        return profile_from_dict(data["profiles"][0], f"{path}: profiles[0]")
    return load_profile(path)


def _sidecar(path: Path) -> dict[str, np.ndarray] | None:
    sidecar = images_path(path)
    return load_images(sidecar) if sidecar.is_file() else None


def _load_study(url: str, name: str | None) -> optuna.Study:
    shown = redact(url)
    journal = "://" not in url  # a plain path is a journal file, as for the search (`study.open_storage`)
    # Optuna would create an empty database or journal there; a typo should not leave files behind.
    if url.startswith("sqlite:///"):
        check_report_source(url)
    if journal and not Path(url).is_file():
        raise ReportError(f"{shown}: no such journal file")
    try:
        storage = open_storage(url) if journal else url
        names = optuna.get_all_study_names(storage=storage)
    except Exception as error:  # a driver missing, a server unreachable, a file that is not a study database
        raise ReportError(f"cannot open the storage {shown}: {str(error).splitlines()[0]}") from None
    if name is None:
        if len(names) != 1:
            raise ReportError(f"{shown} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                              "name one with --study")
        name = names[0]
    if name not in names:
        raise ReportError(f"no study {name!r} in {shown}; it holds: {', '.join(names) or 'no study'}")
    return optuna.load_study(study_name=name, storage=storage)
