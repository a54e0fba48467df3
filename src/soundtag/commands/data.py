"""``soundtag data list``, ``get`` and ``check``: datasets before anything is computed."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from soundtag.commands import LayoutOpt, console

app = typer.Typer(help="Get, list and check datasets.", no_args_is_help=True)


@app.command("list")
def data_list():
    """List the datasets `soundtag data get` knows.

    Example:

      soundtag data list
    """
    from soundtag import datasets

    for name in datasets.list_datasets():
        spec = datasets.get_spec(name)
        console.print(f"[bold]{name}[/]: {spec.description}")


@app.command("get")
def data_get(
    name: str = typer.Argument(..., help="dataset name: see `soundtag data list`"),
    to: Optional[Path] = typer.Option(None, "--to", help="folder to put it in"),
):
    """Download a dataset (resumable, checksummed), or use the local copy in $SOUNDTAG_DATA.

    Examples:

      soundtag data get esc50 --to ~/data

      SOUNDTAG_DATA=../shared/data soundtag data get esc10
    """
    from soundtag import datasets

    console.print(f"{name}: {datasets.get(name, to)}")


@app.command("check")
def data_check(
    data: str = typer.Argument(..., help="dataset folder, CSV, manifest or registered name"),
    layout: Optional[str] = LayoutOpt,
    save: Optional[Path] = typer.Option(None, "--save", help="write the manifest as .jsonl"),
    probe: bool = typer.Option(
        False,
        help="read every file's header for duration and rate (fast, but "
        "a broken file with a good header passes: see --decode)",
    ),
    decode: bool = typer.Option(
        False,
        help="decode every file in full and report each one that fails, "
        "e.g. an empty or truncated file (slower; implies --probe)",
    ),
    files: bool = typer.Option(True, help="report clips whose audio file is missing (--no-files: metadata only)"),
    recipe: Optional[str] = typer.Option(
        None,
        "--recipe",
        "-r",
        help="with --probe: the recipe whose window the "
        "durations are compared with (default esc50-cpu-lh; implies --probe)",
    ),
):
    """Read a dataset, report every problem at once, and print what it holds.

    Exits with status 2 when the dataset has a problem: a cell that does not parse, a
    duplicated id, an empty or unknown label, a missing file, or with --decode a file that
    does not decode. Nothing is saved then.

    Examples:

      soundtag data check ../shared/data/esc10

      soundtag data check my_clips.csv --save clips.jsonl --decode

      soundtag data check fsdkaggle2018 --no-files

      soundtag data check my_clips.csv --probe -r auto
    """
    from soundtag.manifest import ManifestError, open_dataset

    manifest = open_dataset(data, layout, check_files=files)
    probe = probe or recipe is not None
    if probe or decode:
        manifest = manifest.with_probed_audio()
    if decode:
        failed = manifest.decode_problems(progress=console.is_terminal)
        if failed:  # every file named, not the first 20: this list is what the user came for
            raise ManifestError(manifest.meta.get("source", manifest.name), failed, limit=len(failed))
    folds = sorted({c.fold for c in manifest if c.fold is not None})
    console.print(
        f"{manifest.name}: {len(manifest)} clips, {len(manifest.labels)} labels, "
        f"{'multi' if manifest.multilabel else 'single'}-label, folds {folds or 'none'}"
        + (f", {manifest.total_duration / 3600:.2f} h" if probe or decode else "")
    )
    unprobed = sum(c.duration is None for c in manifest) if probe and not decode else 0
    if unprobed:
        console.print(f"{unprobed} file(s) have no readable header; --decode names them", style="yellow")
    if probe or decode:
        _print_durations(manifest, recipe)
    if save:
        manifest.to_jsonl(save)
        console.print(f"wrote {save}")


def _print_durations(manifest, recipe: Optional[str], default: str = "esc50-cpu-lh") -> None:
    """The probed duration distribution, and a warning when most clips do not fit ``recipe``'s window."""
    from soundtag.manifest.durations import duration_histogram, duration_summary, window_mismatch
    from soundtag.resolve import resolve_recipe

    durations = [c.duration for c in manifest if c.duration is not None]
    if not durations:
        return
    s = duration_summary(durations)
    console.print(
        "durations: " + ", ".join(f"{k} {s[k]:.2f} s" for k in ("min", "p10", "p50", "p90", "max")), highlight=False
    )
    rows = duration_histogram(durations)
    widest = max(n for _, n in rows)
    for label, n in rows:
        bar = "#" * (round(40 * n / widest) if n else 0)
        console.print(f"  {label:>10} {n:>7}  {bar}".rstrip(), markup=False, highlight=False)
    r = resolve_recipe(recipe or default, manifest=manifest).recipe
    what = "window" if r.view.kind == "lh" else "chunk"
    warning = window_mismatch(durations, r.view.duration, kind=r.view.kind)
    console.print(
        f"compared with {r.name}'s {r.view.duration:g} s {what}"
        + ("" if recipe else " (the default; --recipe NAME for another)")
        + ("" if warning else ": most clips fit it"),
        highlight=False,
    )
    if warning:
        console.print(
            f"warning: {warning}; `soundtag recipes auto --data DATASET` chooses a window from these durations",
            style="yellow",
            markup=False,
            highlight=False,
        )
