"""``vmambax segment --cases LIST --out-dir DIR``: segment a cohort (see vmambax.infer.cohort).

Exit status: 0 every case ok or skipped; 3 one or more cases failed (listed at the end, each
with its error; the others were segmented); 2 a problem of the whole run (bad option or list,
model file, devices, incomplete shards for --merge); 130 interrupted (the summary keeps the
finished cases, rerun to resume).
"""

from __future__ import annotations

import argparse
import sys

from vmambax.utils import plural

EXIT_SOME_FAILED = 3


def add_cohort_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "cohort", "segment many cases: --cases LIST --out-dir DIR (instead of --ct/--pet/-o); "
                  "exit status 0 all ok, 3 some cases failed, 2 bad usage")
    from vmambax.infer.cohort_list import CSV_COLUMNS, CSV_OPTIONAL_COLUMNS

    g.add_argument("--cases", metavar="LIST",
                   help=f"CSV (columns {', '.join(CSV_COLUMNS)}, optional "
                        f"{', '.join(CSV_OPTIONAL_COLUMNS)}; paths relative to the CSV) or a folder "
                        "of case folders (<case>/ct.nii.gz + pet.nii.gz [+ label.nii.gz], or "
                        "<case>/dicom/ct + dicom/pet)")
    g.add_argument("--out-dir", metavar="DIR",
                   help="DIR/<id>/label.nii.gz + report.json per case, DIR/summary.csv")
    g.add_argument("--devices", metavar="LIST",
                   help="one worker process per device: cuda:0,cuda:1, a GPU count (2), or cpu,cpu "
                        "(default: --device)")
    g.add_argument("--shard", metavar="K/N",
                   help="segment only cases i with i %% N == K (default: from SLURM_ARRAY_TASK_ID "
                        "or torchrun's RANK/WORLD_SIZE); writes DIR/summary-shard-K-of-N.csv; "
                        "0/1: the whole list, e.g. in an array job that splits the work itself")
    g.add_argument("--merge", action="store_true",
                   help="merge the shard summaries into DIR/summary.csv and stop (the last shard "
                        "to finish also does this)")
    g.add_argument("--previews", action="store_true", help="also write DIR/<id>/preview.png")
    g.add_argument("--case-timeout", type=float, metavar="MINUTES",
                   help="a case not finished within this time (a hung file read, a stuck "
                        "device) is a failed row and the run goes on (default 60; 0: no limit)")


def check_single_case_arguments(args) -> None:
    from vmambax.errors import ConfigError

    missing = [flag for flag, value in (("--ct", args.ct), ("--pet", args.pet),
                                        ("-o/--output", args.output)) if not value]
    if missing:
        raise ConfigError(f"segment needs {', '.join(missing)} for one case, or --cases LIST "
                          f"--out-dir DIR for a cohort")
    extra = [flag for flag, value in (("--devices", args.devices), ("--shard", args.shard),
                                      ("--previews", args.previews),
                                      ("--case-timeout", args.case_timeout is not None)) if value]
    if extra:
        raise ConfigError(f"{', '.join(extra)} apply to cohorts; add --cases LIST --out-dir DIR")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _warning_lines(p) -> list[str]:
    """The ``warning: ...`` lines of one progress event (each said once: see _Tracker.news)."""
    prefix = f"{p.case_id}: " if p.case_id else ""
    return [f"warning: {prefix}{w}" for w in p.warnings]


def progress_display(quiet: bool):
    """A bar over cases on a terminal, else one stderr line per finished case (batch logs); the
    warnings of each case when it finishes, the model's notices at the start."""
    if quiet:
        def warn_only(p) -> None:
            for text in _warning_lines(p):
                print(text, file=sys.stderr, flush=True)

        return warn_only, lambda: None
    if sys.stderr.isatty():
        import shutil

        from tqdm import tqdm

        width = shutil.get_terminal_size((100, 24)).columns or 100  # 0 on some pseudo-terminals
        bar = None

        def update(p) -> None:
            nonlocal bar
            for text in _warning_lines(p):
                (tqdm.write(text, file=sys.stderr) if bar is not None else
                 print(text, file=sys.stderr, flush=True))
            if bar is None:
                bar = tqdm(total=p.total, unit="case", file=sys.stderr, ncols=min(width, 120),
                           bar_format="{n_fmt}/{total_fmt} cases |{bar}| {desc}")
            bar.set_description_str(f"ETA {_clock(p.eta_s)}  {p.message[:48]:<48}", refresh=False)
            bar.update(p.done - bar.n)
            bar.refresh()

        return update, lambda: bar.close() if bar is not None else None

    def line(p) -> None:
        if p.status is not None:
            print(f"[{p.done}/{p.total}] {p.message}  elapsed {_clock(p.elapsed_s)}  "
                  f"ETA {_clock(p.eta_s)}", file=sys.stderr, flush=True)
        for text in _warning_lines(p):
            print(text, file=sys.stderr, flush=True)

    return line, lambda: None


def _finish(rows, summary, seconds: float | None = None) -> int:
    """The closing lines: counts and the failures (the warnings were said as each case ended)."""
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("ok", "skipped", "failed")}
    took = f" in {_clock(seconds)}" if seconds is not None else ""
    print(f"{plural(len(rows), 'case')}{took}: {counts['ok']} ok, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; summary: {summary}")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        print(f"{plural(len(failed), 'case')} failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['id']}: {r.get('error') or 'no error recorded'}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0


def _header(cases, shard, source: str, devices: list[str], threads: int | None) -> str:
    """ "4 cases in the list (1 cannot run, see below); segmenting on cpu (2 threads)"."""
    from vmambax.infer.cohort import worker_threads
    from vmambax.infer.cohort_list import shard_cases
    from vmambax.infer.devices import default_cpu_threads, describe_device, resolve_device

    mine = shard_cases(cases, *shard) if shard else cases
    where = f"shard {shard[0]} of {shard[1]} (from {source}): {len(mine)} of " if shard else ""
    bad = sum(bool(c.problem) for c in mine)
    resolved = [resolve_device(spec) for spec in devices]
    per_cpu = worker_threads([d.type for d in resolved], threads) or default_cpu_threads()
    named = [f"cpu ({plural(per_cpu, 'thread')})" if d.type == "cpu" else describe_device(d)
             for d in resolved]
    note = f" ({bad} cannot run, see below)" if bad else ""
    return (f"{where}{plural(len(cases), 'case')} in the list{note}; segmenting on "
            f"{', '.join(named)}")


def run_cohort_command(args) -> int:
    from pathlib import Path

    from vmambax.errors import ConfigError
    from vmambax.infer.cohort import CohortOptions, parse_devices, run_cohort
    from vmambax.infer.cohort_list import (SUMMARY_NAME, merge_shards, parse_shard, read_cases,
                                           shard_cases, shard_from_env)

    if not (args.cases and args.out_dir):
        raise ConfigError("a cohort needs both --cases LIST and --out-dir DIR")
    single = [flag for flag, value in (("--ct", args.ct), ("--pet", args.pet), ("-o", args.output),
                                       ("--report", args.report), ("--preview", args.preview))
              if value]
    if single:
        raise ConfigError(f"{', '.join(single)} name one case's files; with --cases each case "
                          f"writes DIR/<id>/label.nii.gz and report.json (--previews adds PNGs)")
    per_series = [flag for flag, value in (("--ct-series", args.ct_series),
                                           ("--pet-series", args.pet_series)) if value]
    if per_series:
        raise ConfigError(f"{', '.join(per_series)} pick a series in one case's folder; for a "
                          f"cohort give each case a folder holding one CT and one PET series")
    out_dir = Path(args.out_dir).expanduser()
    cases = read_cases(args.cases, exclude=out_dir)
    if args.merge:
        rows = merge_shards(out_dir, cases)
        return _finish(rows, out_dir / SUMMARY_NAME)
    if args.shard:
        shard, source = parse_shard(args.shard), "--shard"
        shard = shard if shard[1] > 1 else None  # 0/1: the whole list, whatever the environment
    else:
        shard, source = shard_from_env(), "the SLURM array / torchrun environment"
    devices = parse_devices(args.devices or args.device)
    if args.case_timeout is not None and args.case_timeout < 0:
        raise ConfigError(f"--case-timeout must be >= 0 minutes (0: no limit), got {args.case_timeout:g}")
    options = CohortOptions(
        model=args.model, batch_size=args.batch, threads=args.threads,
        amp=False if args.no_amp else None, compile=args.compile, pet_units=args.pet_units,
        weight_kg=args.weight, dose_mbq=args.dose, uptake_minutes=args.uptake_minutes,
        previews=args.previews, overwrite=args.overwrite, all_slices=args.all_slices,
        allow_different_patients=args.allow_different_patients,
        **({} if args.case_timeout is None else {"case_timeout_s": args.case_timeout * 60.0 or None}))
    if not args.quiet:
        print(_header(cases, shard, source, devices, args.threads), file=sys.stderr)
    for case in shard_cases(cases, *shard) if shard else cases:  # the whole list, now
        if case.problem:
            print(f"warning: case {case.id} cannot run: {case.problem}", file=sys.stderr)
    update, close = progress_display(args.quiet)
    try:
        result = run_cohort(cases, out_dir, options=options, devices=devices, shard=shard,
                            progress=update)
    finally:
        close()
    status = _finish(result.rows, result.summary, result.seconds)
    if result.merged is not None:
        print(f"all {shard[1]} shards are done: merged into {result.merged}")
    return status
