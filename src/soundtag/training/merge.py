"""Merge folds trained as independent jobs (``soundtag train --fold K``) into one run.

Each job writes a whole run directory with only its own folds finished. Merging checks that
the jobs are parts of the same run (same recipe, clips and folds), then builds the run: the
shared files from the first job, and each finished ``fold-K/`` from the job that trained it,
hard-linked when the file system allows (no bytes copied) and copied otherwise. Evaluation
follows once every fold is there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from soundtag.errors import DataError, ParameterError
from soundtag.runs import RunDir


def merge_folds(jobs: list[str | Path], out: str | Path) -> tuple[Path, dict[int, Path]]:
    """Build run directory ``out`` from job run directories; returns it and ``{fold: job}``."""
    jobs = [Path(j) for j in jobs]
    out = Path(out)
    if not jobs:
        raise ParameterError("give the run directories of the fold jobs to merge")
    for job in jobs:
        RunDir(job).require()
    first = jobs[0]
    for job in jobs[1:]:
        for name in RunDir.MUST_AGREE:
            if (job / name).read_bytes() != (first / name).read_bytes():
                raise DataError(
                    f"{job / name} differs from {first / name}: these jobs are not folds of one run "
                    "(same data, recipe and fold plan needed)"
                )
    source: dict[int, Path] = {}
    for job in jobs:
        for k in RunDir(job).finished_folds():
            if k in source and source[k].resolve() != job.resolve():
                raise DataError(f"fold {k} is finished in both {source[k]} and {job}; keep one of them")
            source[k] = job
    if not source:
        raise DataError(f"none of {', '.join(map(str, jobs))} has a finished fold")
    merged = RunDir(out)
    clashes = [k for k, job in source.items() if merged.fold_dir(k).exists() and job.resolve() != out.resolve()]
    if clashes:
        raise DataError(f"{out} already holds fold(s) {sorted(clashes)}; merge into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    for name in RunDir.SHARED:
        if not (out / name).exists():
            _link_or_copy(first / name, out / name)
    for k, job in sorted(source.items()):
        if job.resolve() != out.resolve():
            _link_tree(RunDir(job).fold_dir(k), merged.fold_dir(k))
    return out, source


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.merge.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a fold folder; ``done.json`` last, so a half-merged fold is not finished."""
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.name == RunDir.FOLD_DONE)
    for f in files:
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(f, target)
