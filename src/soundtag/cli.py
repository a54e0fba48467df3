"""The ``soundtag`` command line: a few lines per command over the library API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from soundtag.errors import SoundtagError

app = typer.Typer(help="Train, clean, evaluate and ensemble audio taggers.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Get, list and check datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

DEFAULT_CACHE = Path(".cache/soundtag/features")
DataOpt = typer.Option(..., "--data", "-d", help="dataset folder, CSV, manifest .jsonl, or a registered "
                       "name (esc50, esc10, fsdkaggle2018)")
LayoutOpt = typer.Option(None, "--layout", help="dataset layout; detected when omitted")
OverrideOpt = typer.Option([], "--set", "-o", help="override a recipe field: section.key=value "
                           "(e.g. features.hop_length=441); repeatable")


def _recipes(names: List[str], overrides: List[str]):
    from soundtag.features import load_recipe

    return [load_recipe(name, overrides) for name in names]


@app.command()
def features(
    data: str = DataOpt,
    recipe: List[str] = typer.Option(["fsd2018-lh", "fsd2018-x"], "--recipe", "-r",
                                     help="built-in recipe name or YAML file; repeatable"),
    cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="folder of the feature stores"),
    layout: Optional[str] = LayoutOpt,
    workers: int = typer.Option(2, help="decoding processes"),
    batch_size: int = typer.Option(32, help="clips per log-mel batch"),
    device: str = typer.Option("cpu", help="where the log-mel runs: cpu or cuda"),
    override: List[str] = OverrideOpt,
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Compute and cache log-mel views for every clip of a dataset, then print a summary.

    Examples:

      soundtag features --data ../shared/data/esc50 --recipe esc50-lh --recipe esc50-x

      soundtag features --data esc10 -r fsd2018-lh -o audio.trim_db=null
    """
    from soundtag.features import extract_features
    from soundtag.manifest import open_dataset

    manifest = open_dataset(data, layout)
    table = Table(title=f"features: {manifest.name} ({len(manifest)} clips)")
    for col in ("recipe", "clips", "computed", "cached", "failed", "hours", "clips/s"):
        table.add_column(col, justify="left" if col == "recipe" else "right", no_wrap=True)
    failures = 0
    stores = []
    for r in _recipes(recipe, override):
        _, summary = extract_features(manifest, r, cache_dir=cache, workers=workers,
                                      batch_size=batch_size, device=device, progress=progress)
        failures += len(summary.failures)
        table.add_row(r.name, str(summary.clips), str(summary.computed), str(summary.cached),
                      str(len(summary.failures)), f"{summary.hours:.2f}", f"{summary.clips_per_second:.0f}")
        stores.append(summary.store)
        for f in summary.failures[:10]:
            console.print(f"[yellow]failed[/]: {f.message}")
        if len(summary.failures) > 10:
            console.print(f"[yellow]... {len(summary.failures) - 10} more in {summary.failures_csv}[/]")
        if summary.notes:
            console.print(f"{r.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(summary.notes.items()))
                          + f" (listed in {summary.notes_csv})")
    console.print(table)
    for store in stores:
        console.print(f"store: {store}", soft_wrap=True)
    if failures:
        console.print(f"[yellow]{failures} clip(s) could not be decoded; they are listed in each store's "
                      "failures.csv and left out.[/]")


@app.command()
def show(
    clip: Path = typer.Argument(..., help="an audio file"),
    recipe: List[str] = typer.Option(["fsd2018-lh"], "--recipe", "-r",
                                     help="recipe(s); a built-in LH/X recipe brings its sibling view"),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: CLIP name + .png)"),
    override: List[str] = OverrideOpt,
):
    """Write a PNG of a clip's waveform and its LH and X view spectrograms.

    Example:

      soundtag show dog.ogg --recipe fsd2018-lh --out dog.png
    """
    from soundtag.features import list_recipes
    from soundtag.plots import show_clip

    names = list(recipe)
    builtin = set(list_recipes())
    for name in recipe:
        for a, b in (("-lh", "-x"), ("-x", "-lh")):
            sibling = name[: -len(a)] + b if name.endswith(a) else None
            if sibling in builtin and sibling not in names:
                names.append(sibling)
    out = out or Path(clip.name).with_suffix(".png")
    show_clip(clip, _recipes(names, override), out)
    console.print(f"wrote {out}")


@app.command()
def train(
    data: Optional[str] = typer.Option(None, "--data", "-d", help="dataset folder, CSV, manifest or registered name"),
    recipe: str = typer.Option("esc50-lh", "--recipe", "-r", help="built-in recipe name or YAML file"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: runs/<recipe>-<time>)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run: finished folds are skipped"),
    folds: Optional[int] = typer.Option(None, "--folds", help="number of folds (datasets with their own folds keep them)"),
    fold: List[int] = typer.Option([], "--fold", help="train only this fold, counted from 0 in the order of "
                                   "the dataset's folds (ESC-50 fold 1 is 0); repeatable"),
    model: Optional[str] = typer.Option(None, "--model", help="alexnet-kernel, vgg, seresnet-kernel or timm:<name>"),
    blacklist: Optional[Path] = typer.Option(None, "--blacklist", help="CSV of clips to leave out of training"),
    cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="folder of the feature stores"),
    layout: Optional[str] = LayoutOpt,
    override: List[str] = OverrideOpt,
    progress: bool = typer.Option(True, help="show progress bars"),
):
    """Train one model per fold; write checkpoints, out-of-fold predictions, metrics and plots.

    Examples:

      soundtag train --data esc10 --recipe esc50-cpu-lh

      soundtag train --data ../shared/data/esc50 -r esc50-lh --model timm:resnet18 -o training.epochs=80

      soundtag train --resume runs/esc50-cpu-lh-20261124-101500
    """
    import datetime as dt

    from soundtag.features import load_recipe
    from soundtag.manifest import open_dataset
    from soundtag.training import resume as resume_run
    from soundtag.training import train as train_run

    if resume is not None:
        result = resume_run(resume, progress=progress)
    else:
        if data is None:
            raise typer.BadParameter("give --data DATASET (or --resume RUN)")
        extra = list(override)
        if folds is not None:
            extra.append(f"training.folds={folds}")
        if model is not None:
            extra.append(f"training.model={model}")
        if blacklist is not None:
            extra.append(f"training.blacklist={blacklist.absolute()}")
        r = load_recipe(recipe, extra)
        out = out or Path("runs") / f"{r.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        result = train_run(open_dataset(data, layout), r, out, cache_dir=cache, folds=fold or None,
                           progress=progress, data_source=data)
    if result.folds_skipped:
        console.print(f"skipped finished fold(s) {result.folds_skipped}")
    if result.metrics:
        _print_metrics(result.run_dir, result.metrics)
    else:
        console.print(f"trained fold(s) {result.folds_trained}; evaluate once every fold is done")


def _print_metrics(run_dir: Path, metrics: dict) -> None:
    table = Table(title=f"out-of-fold metrics: {run_dir}")
    for col in ("subset", "clips", "MAP@3", "top-1", "log loss / lwlrap"):
        table.add_column(col, justify="left" if col == "subset" else "right")
    any_blacklisted = metrics.get("blacklisted", {}).get("clips", 0) > 0
    for name in ("all", "verified", "not_blacklisted", "blacklisted"):
        m = metrics.get(name, {})
        if not m.get("clips") or (name == "not_blacklisted" and not any_blacklisted):
            continue
        last = m.get("lwlrap", m.get("log_loss"))
        table.add_row(name, str(m["clips"]), f"{m['map@3']:.4f}", f"{m['top1']:.4f}", f"{last:.4f}")
    console.print(table)
    console.print(f"wrote {run_dir / 'metrics.json'}, oof.csv, confusion.png, learning_curves.png")


@app.command()
def evaluate(run: Path = typer.Argument(..., help="a run directory")):
    """Evaluate a run's out-of-fold predictions: metrics, confusion matrix, learning curves.

    Example:

      soundtag evaluate runs/esc50-cpu-lh-20261124-101500
    """
    from soundtag.training import evaluate_run

    _print_metrics(run, evaluate_run(run))


@app.command("recipes")
def recipes_cmd(name: Optional[str] = typer.Argument(None, help="print this recipe, resolved"),
                override: List[str] = OverrideOpt):
    """List the built-in recipes, or print one with overrides applied.

    Examples:

      soundtag recipes

      soundtag recipes fsd2018-x -o view.overlap=0.5
    """
    from soundtag.features import list_recipes, load_recipe

    if name:
        console.print(load_recipe(name, override).to_yaml(), markup=False)
        return
    for n in list_recipes():
        r = load_recipe(n)
        console.print(f"[bold]{n}[/]: {r.description}")


@data_app.command("list")
def data_list():
    """List the datasets `soundtag data get` knows.

    Example:

      soundtag data list
    """
    from soundtag import datasets

    for name in datasets.list_datasets():
        spec = datasets.get_spec(name)
        console.print(f"[bold]{name}[/]: {spec.description}")


@data_app.command("get")
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


@data_app.command("check")
def data_check(
    data: str = typer.Argument(..., help="dataset folder, CSV, manifest or registered name"),
    layout: Optional[str] = LayoutOpt,
    save: Optional[Path] = typer.Option(None, "--save", help="write the manifest as .jsonl"),
    probe: bool = typer.Option(False, help="read every file's header for duration and rate"),
    files: bool = typer.Option(True, help="report clips whose audio file is missing (--no-files: metadata only)"),
):
    """Read a dataset, report every problem at once, and print what it holds.

    Examples:

      soundtag data check ../shared/data/esc10

      soundtag data check my_clips.csv --save clips.jsonl --probe

      soundtag data check fsdkaggle2018 --no-files
    """
    from soundtag.manifest import open_dataset

    manifest = open_dataset(data, layout, check_files=files)
    if probe:
        manifest = manifest.with_probed_audio()
    folds = sorted({c.fold for c in manifest if c.fold is not None})
    console.print(f"{manifest.name}: {len(manifest)} clips, {len(manifest.labels)} labels, "
                  f"{'multi' if manifest.multilabel else 'single'}-label, folds {folds or 'none'}"
                  + (f", {manifest.total_duration / 3600:.2f} h" if probe else ""))
    if save:
        manifest.to_jsonl(save)
        console.print(f"wrote {save}")


def main() -> None:
    try:
        app()
    except SoundtagError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
