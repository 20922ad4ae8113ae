"""The case list of a cohort run, its shards, and the summary CSV (``vmambax segment --cases``).

A cohort is a CSV (columns ``id``, ``ct``, ``pet``, optional ``label``, ``pet_units``,
``weight_kg``, ``dose_mbq``, ``uptake_minutes``; paths relative to the CSV's folder) or a folder
of volume case folders (``<case>/ct.nii.gz`` + ``pet.nii.gz`` [+ ``label.nii.gz``], or
``<case>/dicom/ct`` + ``dicom/pet``). Missing files are not a list error: that case fails with
its own error and the others go on; they are found for the whole list when it is read, so the
run names them before its first case. Case ids name the output folders, so they must not be a
name the cohort writes itself (``summary.csv``, the shard summaries, the locks).

Sharding is deterministic: case ``i`` (0-based, list order) belongs to shard ``i % N``. Shard
``K`` of ``N`` writes ``summary-shard-K-of-N.csv``; the merge puts the shards back in list order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from pathlib import Path

from vmambax.errors import ConfigError, InputError
from vmambax.utils import atomic_path

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("id", "status", "lesions", "total_mtv_ml", "total_tlg", "suv_max", "dice",
                   "seconds", "error")
# Final states; "pending" rows are cases not finished yet (an interrupted run keeps them listed).
OK, SKIPPED, FAILED, PENDING = "ok", "skipped", "failed", "pending"
PET_UNITS = ("auto", "suv", "bqml")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # an output folder name, never a path
_SHARD_FILE = re.compile(r"^summary-shard-(\d+)-of-(\d+)\.csv$")
#: Names the cohort itself writes into DIR (summaries, locks): a case folder of such a name would
#: collide with them (case-insensitive: macOS and Windows file systems are).
_RESERVED = re.compile(r"^(summary\.csv|summary-shard-\d+-of-\d+\.csv|cohort\.lock|"
                       r"cohort-shard-\d+-of-\d+\.lock)$", re.IGNORECASE)
#: The CSV's columns: the required ones, then the optional ones (``vmambax segment --help``).
CSV_COLUMNS = ("id", "ct", "pet")
CSV_OPTIONAL_COLUMNS = ("label", "pet_units", "weight_kg", "dose_mbq", "uptake_minutes")


@dataclasses.dataclass
class CohortCase:
    """One study of a cohort: where its images are, and per-case PET options (None: the run's)."""

    id: str
    ct: Path | None
    pet: Path | None
    label: Path | None = None
    pet_units: str | None = None
    weight_kg: float | None = None
    dose_mbq: float | None = None
    uptake_minutes: float | None = None
    problem: str | None = None  # why the case cannot run (e.g. a case folder without a PET)


# ------------------------------------------------------------------------------ reading lists
def read_cases(source, *, exclude: Path | None = None) -> list[CohortCase]:
    """The cases of a CSV file or of a folder of case folders (``exclude``: the output folder)."""
    source = Path(source).expanduser().absolute()  # reports record absolute input paths
    if source.is_dir():
        cases = _folder_cases(source, exclude)
    elif source.is_file():
        cases = _csv_cases(source)
    else:
        raise InputError(f"--cases {source} does not exist; give a CSV file (columns id, ct, pet, "
                         f"optional label) or a folder of case folders")
    if not cases:
        raise InputError(f"--cases {source} lists no case; add rows to the CSV, or case folders "
                         f"(<case>/ct.nii.gz and pet.nii.gz) to the folder")
    return cases


def _check_id(case_id: str, where: str) -> str:
    if not _ID.match(case_id):
        raise InputError(f"{where}: case id {case_id!r} cannot name an output folder; use letters, "
                         f"digits, '.', '_' and '-' only (starting with a letter or digit)")
    if _RESERVED.match(case_id):
        raise InputError(f"{where}: case id {case_id!r} is a name the cohort writes itself into the "
                         f"output folder (summaries, locks); rename the case")
    return case_id


def _missing_files(case: CohortCase, where: str) -> str | None:
    """Why a case cannot run because its CT or PET is not there (checked for the whole list
    before the first case, so the user hears of it at once, not when its turn comes)."""
    for column, path in (("ct", case.ct), ("pet", case.pet)):
        if path is not None and not path.exists():
            return f"{where}: the {column} {path} does not exist; correct the path or remove the case"
    return None


def _number(value: str, column: str, where: str) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{where}: column {column} is {value!r}, not a number; write e.g. 70.5 "
                         f"or leave it empty") from None
    if not number > 0:
        raise InputError(f"{where}: column {column} must be positive, got {value}")
    return number


def _csv_cases(path: Path) -> list[CohortCase]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the case list {path}: {exc}; give a UTF-8 CSV file") from None
    reader = csv.DictReader(io.StringIO(text))
    header = {(name or "").strip().lower(): name for name in (reader.fieldnames or [])}
    aliases = {"weight": "weight_kg", "dose": "dose_mbq"}
    header.update({aliases[k]: v for k, v in list(header.items()) if k in aliases})
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise InputError(f"case list {path} has no column {', '.join(missing)} (its header is "
                         f"{', '.join(reader.fieldnames or []) or 'empty'}); the first line must "
                         f"name the columns: {','.join(CSV_COLUMNS)}[,{','.join(CSV_OPTIONAL_COLUMNS)}]")
    base = path.parent

    def resolve(value: str) -> Path | None:
        if not value:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    cases, seen = [], {}
    for line, row in enumerate(reader, start=2):
        get = {k: (row.get(v) or "").strip() for k, v in header.items()}
        if not any(get.values()):
            continue  # blank line
        where = f"{path.name} line {line}"
        case_id = _check_id(get["id"], where)
        if case_id in seen:
            raise InputError(f"{where}: case id {case_id!r} is also on line {seen[case_id]}; "
                             f"ids name the output folders and must be unique")
        seen[case_id] = line
        units = get.get("pet_units", "").lower() or None
        if units is not None and units not in PET_UNITS:
            raise InputError(f"{where}: pet_units {units!r} is not one of {', '.join(PET_UNITS)}")
        case = CohortCase(
            id=case_id, ct=resolve(get["ct"]), pet=resolve(get["pet"]),
            label=resolve(get.get("label", "")), pet_units=units,
            weight_kg=_number(get.get("weight_kg", ""), "weight_kg", where),
            dose_mbq=_number(get.get("dose_mbq", ""), "dose_mbq", where),
            uptake_minutes=_number(get.get("uptake_minutes", ""), "uptake_minutes", where),
            problem=None if get["ct"] and get["pet"] else
            f"{where} has no {'ct' if not get['ct'] else 'pet'} path; fill in the column")
        case.problem = case.problem or _missing_files(case, where)
        cases.append(case)
    return cases


def _folder_cases(root: Path, exclude: Path | None) -> list[CohortCase]:
    # The same file names as the training/export case folders (one list of accepted names).
    from vmambax.data.pclt_export import CT_NAMES, LABEL_NAMES, PET_NAMES

    def first(folder: Path, names) -> Path | None:
        return next((folder / n for n in names if (folder / n).exists()), None)

    def case(folder: Path) -> CohortCase:
        ct, pet = first(folder, CT_NAMES), first(folder, PET_NAMES)
        return CohortCase(id=_check_id(folder.name, str(folder)), ct=ct, pet=pet,
                          label=first(folder, LABEL_NAMES), problem=_folder_problem(folder, ct, pet))

    if first(root, CT_NAMES) or first(root, PET_NAMES):
        return [case(root)]  # the folder is itself one case
    excluded = exclude.resolve() if exclude is not None else None
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if excluded is not None and folder.resolve() == excluded:
            continue
        if first(folder, CT_NAMES) is None and first(folder, PET_NAMES) is None:
            continue  # not a case folder (e.g. notes, an output folder)
        cases.append(case(folder))
    return cases


def _folder_problem(folder: Path, ct, pet) -> str | None:
    if ct is None:
        return f"case folder {folder} has no CT (ct.nii.gz or dicom/ct); add it or remove the folder"
    if pet is None:
        return f"case folder {folder} has no PET (pet.nii.gz or dicom/pet); add it or remove the folder"
    return None


# ------------------------------------------------------------------------------------ shards
def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (K = 0..N-1) -> ``(K, N)``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or not int(match.group(2)) >= 1 or int(match.group(1)) >= int(match.group(2)):
        raise ConfigError(f"--shard {text!r} must be K/N with 0 <= K < N, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


def shard_from_env(environ=None) -> tuple[int, int] | None:
    """``(index, count)`` of this process's shard from SLURM array or torchrun variables.

    SLURM: the task's position in the array, ``(SLURM_ARRAY_TASK_ID - MIN) / STEP``, of
    ``SLURM_ARRAY_TASK_COUNT`` (else ``(MAX - MIN) / STEP + 1``) tasks, so ``--array=1-4`` and
    ``--array=0-3`` both give shards 0..3 of 4. torchrun: ``RANK`` of ``WORLD_SIZE``. None when
    neither is set (or there is a single task).
    """
    env = os.environ if environ is None else environ

    def integer(name: str) -> int | None:
        value = (env.get(name) or "").strip()
        if not value:
            return None
        if not re.fullmatch(r"-?\d+", value):
            raise ConfigError(f"environment variable {name}={value!r} is not an integer; unset it "
                              f"or pass --shard K/N")
        return int(value)

    task = integer("SLURM_ARRAY_TASK_ID")
    if task is not None:
        low = integer("SLURM_ARRAY_TASK_MIN") or 0
        step = integer("SLURM_ARRAY_TASK_STEP") or 1
        count = integer("SLURM_ARRAY_TASK_COUNT")
        high = integer("SLURM_ARRAY_TASK_MAX")
        if count is None and high is not None:
            count = (high - low) // step + 1
        if count is None:
            raise ConfigError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                              "SLURM_ARRAY_TASK_MAX is; run inside an sbatch --array job or pass "
                              "--shard K/N")
        index = (task - low) // step
        if not 0 <= index < count:
            raise ConfigError(f"SLURM array task {task} lies outside the array {low}..{high} "
                              f"({count} tasks); pass --shard K/N")
        return (index, count) if count > 1 else None
    rank, world = integer("RANK"), integer("WORLD_SIZE")
    if rank is not None and world is not None and world > 1:
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; pass --shard K/N")
        return rank, world
    return None


def shard_cases(cases: list, index: int, count: int) -> list:
    """Case ``i`` belongs to shard ``i % count``: deterministic, balanced to one case."""
    return [c for i, c in enumerate(cases) if i % count == index]


def summary_name(shard: tuple[int, int] | None) -> str:
    return SUMMARY_NAME if shard is None else f"summary-shard-{shard[0]}-of-{shard[1]}.csv"


# ----------------------------------------------------------------------------- summary CSV
def pending_row(case_id: str) -> dict:
    return {"id": case_id, "status": PENDING}


def write_summary(path: Path, rows: list[dict]) -> None:
    """Write the summary atomically (a reader never sees a half-written file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in SUMMARY_COLUMNS})


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else ""
    return " ".join(str(value).split())  # one line per case, even for multi-line errors


def read_summary(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "id" not in reader.fieldnames:
                raise InputError(f"{path} is not a cohort summary (no id column); delete it and "
                                 f"rerun that shard")
            return list(reader)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def shard_files(out_dir: Path) -> dict[int, dict[int, Path]]:
    """``{N: {K: path}}`` of the shard summaries in ``out_dir``."""
    found: dict[int, dict[int, Path]] = {}
    for p in Path(out_dir).glob("summary-shard-*-of-*.csv"):
        m = _SHARD_FILE.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    return found


def merge_shards(out_dir, cases: list[CohortCase], *, count: int | None = None,
                 require_complete: bool = True) -> list[dict] | None:
    """Merge ``summary-shard-K-of-N.csv`` into ``summary.csv`` in list order; returns the rows.

    ``require_complete``: raise ``InputError`` naming the missing shards or unfinished cases;
    otherwise return None when the shards are not all done (the automatic merge by the last shard).
    """
    out_dir = Path(out_dir)
    groups = shard_files(out_dir)
    if count is None:
        if not groups:
            raise InputError(f"no shard summaries (summary-shard-K-of-N.csv) in {out_dir}; run the "
                             f"shards first (SLURM array, torchrun or --shard K/N)")
        if len(groups) > 1:
            raise InputError(f"{out_dir} holds shard summaries of several shard counts "
                             f"({', '.join(f'of-{n}' for n in sorted(groups))}); delete the stale ones")
        count = next(iter(groups))
    files = groups.get(count, {})
    missing = [k for k in range(count) if k not in files]
    if missing:
        if not require_complete:
            return None
        raise InputError(f"shard(s) {', '.join(map(str, missing))} of {count} have no summary in "
                         f"{out_dir} (summary-shard-K-of-{count}.csv); run them, then merge again")
    rows = {}
    for k in range(count):
        for row in read_summary(files[k]):
            rows[row["id"]] = row
    unfinished = [c.id for c in cases if rows.get(c.id, {}).get("status", PENDING) == PENDING]
    if unfinished:
        if not require_complete:
            return None
        raise InputError(f"{len(unfinished)} case(s) are not finished in the shard summaries (e.g. "
                         f"{', '.join(unfinished[:3])}); rerun their shards (finished cases are "
                         f"skipped), then merge again")
    merged = [rows[c.id] for c in cases]
    write_summary(out_dir / SUMMARY_NAME, merged)
    return merged
