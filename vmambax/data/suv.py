"""Body-weight SUV (SUVbw) from DICOM PET tags or from values entered by hand.

SUVbw = activity concentration [Bq/mL] x body weight [g] / injected activity [Bq], with the
injected activity decayed to the time the image activity refers to. The factor returned here is
what a rescaled pixel value (RescaleSlope/Intercept already applied) is multiplied by.

This follows the vendor-neutral QIBA / ACR pseudo-code:

* ``Units``: ``BQML`` -> compute the factor; ``GML`` -> already SUVbw (factor 1); ``CNTS`` ->
  Philips private ``SUVScaleFactor`` (7053,1000), or ``ActivityConcentrationScaleFactor``
  (7053,1009) to Bq/mL and then as BQML. Anything else is refused.
* ``DecayCorrection``: ``START`` -> the image is decay-corrected to the scan start, so the dose is
  decayed from injection to scan start; ``ADMIN`` -> corrected to the injection, no decay;
  ``NONE`` -> not decay-corrected, so the dose is decayed to the image's own acquisition time
  (the series reader applies this per slice).
* Scan start: ``SeriesDate/Time`` unless it is later than the acquisition (a post-processed
  series), then GE's private scan date-time (0009,100d) or the earliest ``AcquisitionDate/Time``.
* Injection: ``RadiopharmaceuticalStartDateTime``, else ``RadiopharmaceuticalStartTime`` on the
  scan's date (a negative difference without dates is taken as a midnight crossing).
* ``CorrectedImage`` without ``ATTN`` (a non-attenuation-corrected reconstruction) is refused:
  its SUVs are meaningless.

Tags come as a plain mapping (``suv_factor_from_tags``) so that files, pydicom datasets and
3D Slicer's DICOM database (string values, keys like ``"0054,1001"``) all work. Values entered by
hand (``weight_kg``, ``dose_mbq``, ``uptake_minutes``) override the tags; without a half-life tag
hand-entered timing assumes fluorine-18 (FDG), the tracer of lung tumour PET/CT.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from vmambax.errors import InputError

F18_HALF_LIFE_S = 6586.2  # 109.77 min
MAX_WEIGHT_KG = 350.0
MIN_DOSE_BQ = 1.0e6  # 1 MBq: smaller values are almost surely entered in MBq or mCi
MAX_UPTAKE_S = 24 * 3600.0
MAX_WRAPPED_UPTAKE_S = 12 * 3600.0  # a midnight crossing is only assumed for uptakes below this

# keyword -> DICOM tag (group, element); private tags get descriptive keywords.
TAGS = {
    "Units": (0x0054, 0x1001),
    "DecayCorrection": (0x0054, 0x1102),
    "CorrectedImage": (0x0028, 0x0051),
    "PatientWeight": (0x0010, 0x1030),
    "RadionuclideTotalDose": (0x0018, 0x1074),
    "RadionuclideHalfLife": (0x0018, 0x1075),
    "RadiopharmaceuticalStartTime": (0x0018, 0x1072),
    "RadiopharmaceuticalStartDateTime": (0x0018, 0x1078),
    "SeriesDate": (0x0008, 0x0021),
    "SeriesTime": (0x0008, 0x0031),
    "AcquisitionDate": (0x0008, 0x0022),
    "AcquisitionTime": (0x0008, 0x0032),
    "AcquisitionDateTime": (0x0008, 0x002A),
    "StudyDate": (0x0008, 0x0020),
    "Manufacturer": (0x0008, 0x0070),
    "SUVScaleFactor": (0x7053, 0x1000),  # Philips private
    "ActivityConcentrationScaleFactor": (0x7053, 0x1009),  # Philips private
    "GEPrivateScanDateTime": (0x0009, 0x100D),  # GE private (GEMS_PETD_01)
}

_HAND_HINT = ("pass the patient weight and the injected activity by hand (command line: "
              "--weight-kg and --dose-mbq, plus --uptake-minutes if the injection time is "
              "missing too; Python: weight_kg=, dose_mbq=, uptake_minutes=), or give a PET that "
              "is already in SUV (--pet-units suv)")


@dataclasses.dataclass(frozen=True)
class SuvFactor:
    """How rescaled PET pixel values become SUVbw: ``suv = value * factor``."""

    factor: float
    method: str  # human-readable provenance, shown in reports
    units: str = "BQML"
    weight_kg: float | None = None
    dose_bq: float | None = None
    elapsed_s: float | None = None  # injection -> activity reference time
    half_life_s: float | None = None
    decay_correction: str | None = None
    notes: tuple[str, ...] = ()


def _key_variants(keyword: str) -> list[Any]:
    keys: list[Any] = [keyword]
    tag = TAGS.get(keyword)
    if tag:
        g, e = tag
        keys += [f"{g:04X},{e:04X}", f"{g:04x},{e:04x}", f"({g:04X},{e:04X})",
                 f"({g:04x},{e:04x})", f"{g:04X}{e:04X}", f"{g:04x}{e:04x}", (g << 16) | e, (g, e)]
    return keys


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bytes):
        return not value.strip(b"\0 ")
    if isinstance(value, str):
        return not value.strip("\0 ")
    return False


def _raw(tags: Mapping, keyword: str) -> Any:
    for key in _key_variants(keyword):
        try:
            value = tags[key]
        except (KeyError, TypeError):
            continue
        value = getattr(value, "value", value)  # a pydicom DataElement
        if not _is_blank(value):
            return value
    return None


def _text(tags: Mapping, keyword: str) -> str | None:
    value = _raw(tags, keyword)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip("\0 ").strip()


def _number(tags: Mapping, keyword: str) -> float | None:
    value = _raw(tags, keyword)
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
        if value is None:
            return None
    if isinstance(value, bytes):  # private tags read with an unknown VR
        text = value.decode("ascii", "ignore").strip("\0 ")
        try:
            return float(text.split("\\")[0])
        except ValueError:
            if len(value) == 8:
                return struct.unpack("<d", value)[0]
            if len(value) == 4:
                return struct.unpack("<f", value)[0]
            raise InputError(f"PET DICOM tag {keyword} has an unreadable value {value!r}; "
                             f"{_HAND_HINT}.") from None
    try:
        return float(str(value).split("\\")[0])
    except ValueError:
        raise InputError(f"PET DICOM tag {keyword} = {value!r} is not a number; "
                         f"{_HAND_HINT}.") from None


def _parse_time(text: str) -> _dt.time:
    """DICOM TM (``HHMMSS.FFFFFF``, also the old ``HH:MM:SS``) -> time."""
    t = text.replace(":", "").strip()
    try:
        hh = int(t[0:2])
        mm = int(t[2:4]) if len(t) >= 4 else 0
        seconds = float(t[4:]) if len(t) > 4 else 0.0
        ss = int(seconds)
        us = int(round((seconds - ss) * 1e6))
        if us == 1_000_000:
            ss, us = ss + 1, 0
        return _dt.time(hh, mm, min(ss, 59), min(us, 999_999))
    except (ValueError, IndexError):
        raise InputError(f"Cannot read the DICOM time {text!r}; {_HAND_HINT}.") from None


def _parse_date(text: str) -> _dt.date:
    d = text.replace(".", "").replace("-", "").strip()
    try:
        return _dt.date(int(d[0:4]), int(d[4:6]), int(d[6:8]))
    except (ValueError, IndexError):
        raise InputError(f"Cannot read the DICOM date {text!r}; {_HAND_HINT}.") from None


def _parse_datetime(text: str) -> _dt.datetime:
    """DICOM DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``); the UTC offset is dropped (all times local)."""
    s = text.strip()
    for sign in "+-":
        if sign in s[8:]:
            s = s[: 8 + s[8:].index(sign)]
    date = _parse_date(s[:8])
    time = _parse_time(s[8:]) if len(s) > 8 else _dt.time(0, 0)
    return _dt.datetime.combine(date, time)


def _when(tags: Mapping, date_kw: str | tuple[str, ...], time_kw: str) -> tuple[Any, bool]:
    """(datetime or seconds-of-day, has_date) from a date tag (first present) and a time tag."""
    time_text = _text(tags, time_kw)
    if time_text is None:
        return None, False
    t = _parse_time(time_text)
    for kw in (date_kw,) if isinstance(date_kw, str) else date_kw:
        date_text = _text(tags, kw)
        if date_text:
            return _dt.datetime.combine(_parse_date(date_text), t), True
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6, False


def _seconds_of_day(value: Any) -> float:
    if isinstance(value, _dt.datetime):
        return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6
    return float(value)


def _elapsed_seconds(start: tuple[Any, bool], end: tuple[Any, bool]) -> tuple[float, list[str]]:
    (a, a_dated), (b, b_dated) = start, end
    notes: list[str] = []
    if a_dated and b_dated:
        return (b - a).total_seconds(), notes
    elapsed = _seconds_of_day(b) - _seconds_of_day(a)
    if elapsed < 0:  # no dates to tell: the scan may be after midnight of the injection day
        if elapsed + 86400.0 > MAX_WRAPPED_UPTAKE_S:
            raise InputError(
                f"The injection time is {-elapsed / 60:.0f} min after the scan time (no dates to "
                "tell otherwise); check RadiopharmaceuticalStartTime or pass --uptake-minutes / "
                "uptake_minutes=.")
        elapsed += 86400.0
        notes.append("injection time after scan time without dates: assumed a midnight crossing")
    return elapsed, notes


def _scan_start(tags: Mapping, decay_correction: str) -> tuple[Any, bool] | None:
    """The time the image activity refers to for START / NONE decay correction."""
    acq_dt_text = _text(tags, "AcquisitionDateTime")
    acq = ((_parse_datetime(acq_dt_text), True) if acq_dt_text
           else _when(tags, ("AcquisitionDate", "SeriesDate", "StudyDate"), "AcquisitionTime"))
    if decay_correction == "NONE":
        return acq if acq[0] is not None else None
    series = _when(tags, ("SeriesDate", "AcquisitionDate", "StudyDate"), "SeriesTime")
    if series[0] is None:
        return acq if acq[0] is not None else None
    if acq[0] is None:
        return series
    if series[1] and acq[1]:
        later = series[0] > acq[0]
    else:  # times of day only: compare them directly (no midnight assumption here)
        later = _seconds_of_day(series[0]) > _seconds_of_day(acq[0])
    if not later:
        return series
    # Series date/time after the acquisition: a post-processed series (QIBA); GE keeps the true
    # scan start in a private tag, otherwise use the (earliest) acquisition time.
    ge_text = _text(tags, "GEPrivateScanDateTime")
    if ge_text:
        return _parse_datetime(ge_text), True
    return acq


def suv_factor_manual(weight_kg: float, dose_mbq: float, uptake_minutes: float | None = None,
                      half_life_s: float = F18_HALF_LIFE_S) -> SuvFactor:
    """SUVbw factor from values entered by hand, for a PET already in Bq/mL.

    Without ``uptake_minutes`` the image is taken as decay-corrected to the injection time
    (activity and dose refer to the same moment). With it, the image is taken as corrected to
    the scan start, ``uptake_minutes`` after injection, and the dose is decayed by the
    ``half_life_s`` (fluorine-18 unless given).
    """
    weight_kg = _check_weight(weight_kg, "by hand")
    dose_bq = _check_dose(float(dose_mbq) * 1e6, "by hand")
    elapsed = None
    decay = 1.0
    if uptake_minutes is not None:
        elapsed = _check_elapsed(float(uptake_minutes) * 60.0, "by hand")
        decay = 2.0 ** (-elapsed / half_life_s)
    factor = weight_kg * 1000.0 / (dose_bq * decay)
    method = (f"SUVbw by hand: weight {weight_kg:g} kg, dose {dose_bq / 1e6:g} MBq"
              + (f", decayed over {elapsed / 60:.1f} min" if elapsed is not None else
                 ", image decay-corrected to injection"))
    return SuvFactor(factor, method, "BQML", weight_kg, dose_bq, elapsed,
                     half_life_s if elapsed is not None else None,
                     "START" if elapsed is not None else "ADMIN")


def _check_weight(w: float, source: str) -> float:
    if not (w > 0):
        raise InputError(f"Patient weight {w} kg ({source}) is not positive; {_HAND_HINT}.")
    if w > MAX_WEIGHT_KG:
        raise InputError(f"Patient weight {w:g} kg ({source}) is implausible (is it in grams?); "
                         "give the weight in kilograms with --weight-kg / weight_kg=.")
    return float(w)


def _check_dose(dose_bq: float, source: str) -> float:
    if not (dose_bq >= MIN_DOSE_BQ):
        raise InputError(f"Injected activity {dose_bq:g} Bq ({source}) is implausibly small "
                         "(entered in MBq or mCi instead of Bq?); give the activity in MBq with "
                         "--dose-mbq / dose_mbq=.")
    return float(dose_bq)


def _check_elapsed(elapsed: float, source: str) -> float:
    if elapsed < 0 or elapsed > MAX_UPTAKE_S:
        raise InputError(f"Time from injection to scan = {elapsed / 60:.1f} min ({source}) is "
                         "impossible (injection after the scan, or over a day before it); check "
                         "the dates/times or pass --uptake-minutes / uptake_minutes=.")
    return elapsed


def suv_factor_from_tags(tags: Mapping, *, weight_kg: float | None = None,
                         dose_mbq: float | None = None,
                         uptake_minutes: float | None = None) -> SuvFactor:
    """SUVbw factor from a mapping of DICOM PET tag values (see the module docstring).

    ``tags`` keys are DICOM keywords (``"Units"``, ``"PatientWeight"``, ``"RadionuclideTotalDose"``,
    ``"RadionuclideHalfLife"``, ``"RadiopharmaceuticalStartTime"`` / ``...StartDateTime``,
    ``"SeriesDate"``, ``"SeriesTime"``, ``"AcquisitionDate"``, ``"AcquisitionTime"``,
    ``"DecayCorrection"``, ``"CorrectedImage"``, ``"SUVScaleFactor"``...) or tag strings such as
    ``"0054,1001"``; the radiopharmaceutical sequence item is expected flattened into the mapping
    (``tags_from_dataset`` does that). A pydicom ``Dataset`` is accepted as well.
    Hand-entered values override the tags. Raises ``InputError`` naming the missing tags.
    """
    if type(tags).__name__ in ("Dataset", "FileDataset"):
        from vmambax.data.dicom import tags_from_dataset

        tags = tags_from_dataset(tags)  # type: ignore[arg-type]
    units = (_text(tags, "Units") or "").upper()
    corrected = _text(tags, "CorrectedImage")
    if corrected is not None:
        corrections = {c.strip().upper() for c in corrected.split("\\")}
        if "ATTN" not in corrections:
            raise InputError(
                f"The PET is not attenuation-corrected (CorrectedImage = {corrected!r}), so its "
                "SUVs would be meaningless; load the attenuation-corrected (AC) PET series.")
    if not units:
        if weight_kg is None or dose_mbq is None:
            raise InputError(f"The PET has no Units tag (0054,1001), so its values cannot be turned "
                             f"into SUV; {_HAND_HINT}.")
        units = "BQML"  # weight and dose given by hand: the values are activity concentrations
    if units == "GML":
        return SuvFactor(1.0, "already SUVbw (Units GML)", units)
    activity_scale = 1.0
    notes: list[str] = []
    if units == "CNTS":
        suv_scale = _number(tags, "SUVScaleFactor")
        if suv_scale and suv_scale > 0 and weight_kg is None and dose_mbq is None:
            return SuvFactor(suv_scale, "Philips SUVScaleFactor (7053,1000)", units)
        acsf = _number(tags, "ActivityConcentrationScaleFactor")
        if not (acsf and acsf > 0):
            raise InputError(
                "The PET is in counts (Units CNTS) without a Philips SUV or activity-concentration "
                "scale factor (7053,1000 / 7053,1009), so it cannot be converted to SUV; export "
                "the PET in Bq/mL (BQML) or in SUV and pass --pet-units suv.")
        activity_scale = acsf
        notes.append(f"CNTS -> Bq/mL with Philips scale factor {acsf:g}")
    elif units != "BQML":
        raise InputError(f"PET units {units!r} cannot be converted to SUVbw (supported: BQML, "
                         "GML, Philips CNTS); export the PET in Bq/mL or in SUV "
                         "(then pass --pet-units suv).")

    missing: list[str] = []
    weight = weight_kg if weight_kg is not None else _number(tags, "PatientWeight")
    if weight is None or weight == 0:  # 0 is how many scanners store "unknown"
        missing.append("PatientWeight (0010,1030)")
    dose = dose_mbq * 1e6 if dose_mbq is not None else _number(tags, "RadionuclideTotalDose")
    if dose is None or dose == 0:
        missing.append("RadionuclideTotalDose (0018,1074)")
    decay_correction = (_text(tags, "DecayCorrection") or "").upper()
    if not decay_correction:
        if uptake_minutes is None:
            missing.append("DecayCorrection (0054,1102)")
        decay_correction = "START"
    if decay_correction not in ("START", "ADMIN", "NONE"):
        raise InputError(f"PET DecayCorrection {decay_correction!r} is not a DICOM value (START, "
                         f"ADMIN, NONE); {_HAND_HINT}.")
    half_life = _number(tags, "RadionuclideHalfLife")
    elapsed = None
    if decay_correction != "ADMIN":
        if half_life is None:
            if weight_kg is not None and dose_mbq is not None:
                half_life = F18_HALF_LIFE_S
                notes.append("no RadionuclideHalfLife tag: assumed fluorine-18")
            else:
                missing.append("RadionuclideHalfLife (0018,1075)")
        if uptake_minutes is not None:
            elapsed = float(uptake_minutes) * 60.0
        else:
            inj_text = _text(tags, "RadiopharmaceuticalStartDateTime")
            # A bare start time has no date of its own: compare times of day (a later
            # injection time means the day before), rather than borrowing the scan's date.
            injection = ((_parse_datetime(inj_text), True) if inj_text else
                         _when(tags, (), "RadiopharmaceuticalStartTime"))
            scan = _scan_start(tags, decay_correction)
            if injection[0] is None:
                missing.append("RadiopharmaceuticalStartTime (0018,1072)")
            if scan is None:
                missing.append("SeriesTime (0008,0031)" if decay_correction == "START"
                               else "AcquisitionTime (0008,0032)")
            if injection[0] is not None and scan is not None:
                elapsed, more = _elapsed_seconds(injection, scan)
                notes += more
    if missing:
        raise InputError(f"The PET DICOM lacks the tags needed for SUV: {', '.join(missing)}; "
                         f"{_HAND_HINT}.")
    source = "by hand" if weight_kg is not None else "PatientWeight tag"
    weight = _check_weight(float(weight), source)
    dose = _check_dose(float(dose), "by hand" if dose_mbq is not None else
                       "RadionuclideTotalDose tag")
    decay = 1.0
    if elapsed is not None:
        elapsed = _check_elapsed(elapsed, "from the DICOM times" if uptake_minutes is None
                                 else "by hand")
        if not (half_life and half_life > 0):
            raise InputError(f"RadionuclideHalfLife {half_life} s is not positive; {_HAND_HINT}.")
        decay = 2.0 ** (-elapsed / half_life)
    factor = activity_scale * weight * 1000.0 / (dose * decay)
    when = {"START": "decay-corrected to scan start", "ADMIN": "decay-corrected to injection",
            "NONE": "not decay-corrected"}[decay_correction]
    method = (f"SUVbw from {units} ({when}): weight {weight:g} kg, dose {dose / 1e6:.4g} MBq"
              + (f", {elapsed / 60:.1f} min after injection" if elapsed is not None else ""))
    return SuvFactor(factor, method, units, weight, dose, elapsed,
                     half_life if elapsed is not None else None, decay_correction, tuple(notes))


MIN_SUV_P999 = 0.05  # the hottest 0.1% of a body PET (brain, heart, bladder, tumour) is SUV > 1


def check_suv_plausible(suv: np.ndarray, *, what: str = "The PET",
                        hint: str | None = None, low_hint: str | None = None) -> None:
    """Refuse values that cannot be SUVs of a body PET.

    Too high: activity in Bq/mL taken as SUV, wrong tags (real SUVs stay below a few hundred
    even in the bladder; Bq/mL values are thousands). Too low: a PET already in SUV converted
    again with the DICOM SUV factor (about weight / dose, ~1e-3), which turns an SUVmax of 16
    into 0.008: the 99.9th percentile of a body PET in SUV is well above ``MIN_SUV_P999``.
    An all-zero image is left to the callers (nothing was converted twice).
    """
    flat = np.asarray(suv).ravel()
    sample = flat[:: max(1, flat.size // 2_000_000)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return
    p999 = float(np.percentile(sample, 99.9))
    vmax = float(np.nanmax(flat))
    if p999 > 100 or vmax > 1000:
        raise InputError(
            f"{what} values (99.9th percentile {p999:.4g}, max {vmax:.4g}) are far too high for "
            "SUV; it is probably activity in Bq/mL. " + (hint or
                                                         "Pass --pet-units bqml together with "
                                                         "--weight-kg and --dose-mbq (Python: "
                                                         "units='bqml', weight_kg=, dose_mbq=)."))
    if vmax > 0 and p999 < MIN_SUV_P999:
        raise InputError(
            f"{what} values (99.9th percentile {p999:.3g}, max {vmax:.3g}) are far too low for "
            f"the SUV of a body PET (its hottest 0.1% is above {MIN_SUV_P999:g}): the PET was "
            "probably converted to SUV twice (values already in SUV multiplied by the DICOM SUV "
            "factor again). " + (low_hint or "Use the values as they are: pass --pet-units suv "
                                             "(Python: units='suv')."))
