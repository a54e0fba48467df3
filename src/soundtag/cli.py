"""The ``soundtag`` command line: a few lines per command over the library API.

The commands of the first stages (features, training, evaluation) are here; those of the
later ones live beside them in :mod:`soundtag.commands`, one module a stage.
"""

from __future__ import annotations

import inspect
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from soundtag.commands import (
    DEFAULT_CACHE,
    DataOpt,
    LayoutOpt,
    OverrideOpt,
    console,
    err_console,
    escape,
    load_recipes,
    rerun_note,
)
from soundtag.commands import cleaning as cleaning_commands
from soundtag.commands import data as data_commands
from soundtag.commands import prediction as prediction_commands
from soundtag.errors import SoundtagError
from soundtag.planning import MIN_EPOCHS_PER_VIEW
from soundtag.stopping import on_stop

app = typer.Typer(
    help="Train, clean, evaluate and ensemble audio taggers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ViewsChoice(str, Enum):
    lh = "lh"
    x = "x"
    both = "lh+x"


class Strategy(str, Enum):
    auto = "auto"
    ddp = "ddp"


@app.command()
def features(
    data: str = DataOpt,
    recipe: List[str] = typer.Option(
        ["auto", "auto-x"],
        "--recipe",
        "-r",
        help="built-in recipe name, YAML file, or auto / auto-x (chosen from the data); repeatable "
        "[default: auto and auto-x, both views]",
        show_default=False,
    ),
    cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="folder of the feature stores"),
    layout: Optional[str] = LayoutOpt,
    workers: int = typer.Option(2, help="decoding processes"),
    batch_size: int = typer.Option(32, help="clips per log-mel batch"),
    device: str = typer.Option("cpu", help="where the log-mel runs: cpu or cuda"),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        help="i/n: compute only every n-th clip from the "
        "i-th (0-based), so n jobs share the work; 'all': every clip (under "
        "torchrun or srun the default is each process's rank/world size)",
    ),
    override: List[str] = OverrideOpt,
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Compute and cache log-mel views for every clip of a dataset, then print a summary.

    Examples:

      soundtag features --data ../shared/data/esc50 --recipe esc50-lh --recipe esc50-x

      soundtag features --data esc10 -r fsd2018-lh -o audio.trim_db=null

      soundtag features --data fsd50k -r fsd2018-x --shard $SLURM_ARRAY_TASK_ID/8
    """
    from soundtag.distributed import parse_shard
    from soundtag.errors import ParameterError
    from soundtag.features import extract_features
    from soundtag.manifest import open_dataset
    from soundtag.reports import features_table

    try:  # None: the library takes the launcher's rank/world size under torchrun or srun
        shard_of = parse_shard(shard) if shard else None
    except ParameterError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None
    manifest = open_dataset(data, layout)
    summaries = []
    for r in load_recipes(recipe, override, manifest=manifest):
        with on_stop(
            rerun_note(
                lambda: (
                    f"the clips computed so far are kept in the feature store under {cache}, "
                    "and only the others are computed again"
                )
            )
        ):
            _, summary = extract_features(
                manifest,
                r,
                cache_dir=cache,
                workers=workers,
                batch_size=batch_size,
                device=device,
                progress=progress,
                shard=shard_of,
            )
        summaries.append(summary)
        for f in summary.failures[:10]:
            console.print(f"[yellow]failed[/]: {escape(f.message)}")
        if len(summary.failures) > 10:
            console.print(f"[yellow]... {len(summary.failures) - 10} more in {summary.failures_csv}[/]")
        if summary.notes:
            console.print(
                f"{r.name}: "
                + ", ".join(f"{n} {k}" for k, n in sorted(summary.notes.items()))
                + f" (listed in {summary.notes_csv})"
            )
    console.print(features_table(manifest.name, len(manifest), summaries))
    for summary in summaries:
        console.print(f"store: {summary.store}", soft_wrap=True)
    failed = {f.clip_id for summary in summaries for f in summary.failures}  # a bad file fails once per recipe
    if failed:
        console.print(
            f"[yellow]{len(failed)} clip(s) could not be decoded; they are listed in each store's "
            f"{summaries[-1].failures_csv.name} and left out.[/]"
        )


@app.command()
def show(
    clip: Path = typer.Argument(..., help="an audio file"),
    recipe: List[str] = typer.Option(
        ["auto"],
        "--recipe",
        "-r",
        help="recipe(s); a built-in LH/X recipe brings its sibling view, auto (chosen from this clip) auto-x",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: CLIP name + .png)"),
    override: List[str] = OverrideOpt,
):
    """Write a PNG of a clip's waveform and its LH and X view spectrograms.

    Examples:

      soundtag show dog.ogg --out dog.png

      soundtag show dog.ogg --recipe fsd2018-lh --out dog.png
    """
    from soundtag.manifest import Clip, Manifest
    from soundtag.plots import show_clip
    from soundtag.recipe import with_sibling_views

    out = out or Path(clip.name).with_suffix(".png")
    # auto is chosen from the data: here, this one clip
    one_clip = Manifest.build([Clip(clip.name, str(clip))], name=clip.stem)
    show_clip(clip, load_recipes(with_sibling_views(recipe), override, manifest=one_clip), out)
    console.print(f"wrote {out}")


@app.command()
def train(
    data: Optional[str] = typer.Option(None, "--data", "-d", help="dataset folder, CSV, manifest or registered name"),
    recipe: str = typer.Option(
        "auto",
        "--recipe",
        "-r",
        help="auto (the default): chosen from the data and this machine (see `soundtag recipes auto --data D`), "
        f"LH alone, or the LH and X views blended when --time gives each {MIN_EPOCHS_PER_VIEW} epochs; or a built-in "
        "recipe name or YAML file",
    ),
    time_budget: Optional[str] = typer.Option(
        None,
        "--time",
        help="the whole command's time budget (30m, 1h30m, 90s; a bare number is minutes): a few real steps "
        "are timed here first and the epochs set to fit. Default for auto: 1.4x the time of 30 epochs of the "
        "LH view (the plain-CNN baseline's schedule)",
    ),
    views: Optional[ViewsChoice] = typer.Option(
        None,
        "--views",
        help="auto's views: lh, x, or lh+x (default: lh+x when the clips hold two X chunks and the budget gives "
        f"each view {MIN_EPOCHS_PER_VIEW} epochs; else lh)",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: runs/<recipe>-<time>)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run: finished folds are skipped"),
    folds: Optional[int] = typer.Option(
        None, "--folds", help="number of folds (datasets with their own folds keep them)"
    ),
    fold: List[int] = typer.Option(
        [],
        "--fold",
        help="train only this fold, counted from 0 in the order of "
        "the dataset's folds (ESC-50 fold 1 is 0); repeatable",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="a registered model (alexnet-kernel, vgg, seresnet-kernel, plain-cnn, ...) or timm:<name>"
    ),
    init: Optional[Path] = typer.Option(
        None,
        "--init",
        help="start from these weights (training.checkpoint): a "
        "soundtag checkpoint, or a released PANNs / EfficientAT file for the "
        "panns-cnn14-ft / efficientat-mn10-ft recipes; a new head for the labels",
    ),
    blacklist: Optional[Path] = typer.Option(None, "--blacklist", help="CSV of clips to leave out of training"),
    relabel: Optional[Path] = typer.Option(
        None, "--relabel", help="CSV of clip_id,label corrections (e.g. relabel.csv from `soundtag review`)"
    ),
    cache: Path = typer.Option(DEFAULT_CACHE, "--cache", help="folder of the feature stores"),
    layout: Optional[str] = LayoutOpt,
    override: List[str] = OverrideOpt,
    devices: str = typer.Option("1", "--devices", help="devices (GPUs, or CPU processes) per node, or 'auto'"),
    num_nodes: int = typer.Option(1, "--num-nodes", help="machines taking part (torchrun or SLURM starts them)"),
    strategy: Strategy = typer.Option(Strategy.auto, "--strategy", help="auto, or ddp for DistributedDataParallel"),
    progress: bool = typer.Option(True, help="show progress bars"),
):
    """Train one model per fold; write checkpoints, out-of-fold predictions, metrics and plots.

    Examples:

      soundtag train --data my_clips/ --out runs/mine

      soundtag train --data my_clips/ --time 30m --out runs/mine

      soundtag train --data esc10 --recipe esc50-cpu-lh

      soundtag train --data ../shared/data/esc50 -r esc50-lh --model timm:resnet18 -o training.epochs=80

      soundtag train --resume runs/esc50-cpu-lh-20261124-101500

      soundtag train --data esc50 --recipe panns-cnn14-ft --init Cnn14_mAP=0.431.pth

      torchrun --nproc-per-node 4 -m soundtag.cli train --data fsd50k --out runs/big --devices 4 --strategy ddp

    With no --recipe, the recipe auto chooses the sample rate, window, mel resolution and model
    from the data and the machine and prints its reasons. Before training it times a few real
    steps of each view here and sets the epochs that fit --time, prints the plan, corrects the
    epochs from the first fold's real ones, and at the end prints the minutes it took; --resume
    keeps the plan. When the budget gives each view at least 60
    epochs it trains the LH view and the X view and blends them out of fold into one run
    directory (RUN/lh, RUN/x and the blend), which evaluate, suspects, review, predict, tag and
    export take as any run; a shorter budget, the default included, goes to LH alone, which
    scores at least as high as two views trained that little. -o still wins.
    """
    import time

    started = time.perf_counter()  # before the imports: they are part of the command a budget times

    from soundtag.distributed import is_primary_process
    from soundtag.hardware import Hardware
    from soundtag.manifest import open_dataset
    from soundtag.planning import parse_duration
    from soundtag.recipe import AUTO_VIEWS
    from soundtag.resolve import resolve_views
    from soundtag.train_views import is_planned_run, resume_views, train_views
    from soundtag.training import resume as resume_run
    from soundtag.training import train as train_run
    from soundtag.training.run import default_run_dir

    hardware = Hardware(devices=devices, num_nodes=num_nodes, strategy=strategy.value)
    quiet = not is_primary_process()

    def echo(line: str) -> None:
        if not quiet:
            console.print(escape(line), highlight=False, soft_wrap=True)

    if resume is not None:
        if time_budget is not None or views is not None:
            raise typer.BadParameter("--resume keeps the run's plan: leave out --time and --views")
        with on_stop(lambda: _train_stop_note(resume)):
            if is_planned_run(resume):
                result = resume_views(resume, progress=progress, hardware=hardware, started=started, echo=echo)
            else:
                result = resume_run(resume, progress=progress, hardware=hardware)
    else:
        if data is None:
            raise typer.BadParameter("give --data DATASET (or --resume RUN)")
        budget = parse_duration(time_budget) if time_budget is not None else None
        manifest = open_dataset(data, layout)
        resolved = resolve_views(
            recipe,
            override,
            manifest=manifest,
            views=views.value.split("+") if views else None,
            folds=folds,
            model=model,
            blacklist=blacklist,
            relabel=relabel,
            init=init,
        )
        for line in resolved.reasons:
            echo(f"{recipe} recipe: {line}")
        first = next(iter(resolved.recipes.values()))
        run_dir = out or default_run_dir(first)
        with on_stop(lambda: _train_stop_note(run_dir)):
            if str(recipe) in AUTO_VIEWS or budget is not None:
                # auto plans its epochs from timed steps; a named recipe does when given --time
                result = train_views(
                    manifest,
                    resolved.recipes,
                    run_dir,
                    cache_dir=cache,
                    budget_s=budget,
                    epochs_given=any(o.replace(" ", "").startswith("training.epochs=") for o in override),
                    folds=fold or None,
                    progress=progress,
                    data_source=data,
                    hardware=hardware,
                    started=started,
                    echo=echo,
                    views_asked=views is not None,
                )
            else:
                result = train_run(
                    manifest,
                    first,
                    run_dir,
                    cache_dir=cache,
                    folds=fold or None,
                    progress=progress,
                    data_source=data,
                    hardware=hardware,
                )
    if quiet:
        return  # the first process reports
    if result.folds_skipped:
        console.print(f"skipped finished fold(s) {result.folds_skipped}")
    if getattr(result, "blend", None) is not None:
        from soundtag.reports import ensemble_table

        console.print(ensemble_table(result.blend))
    if result.metrics:
        _print_metrics(result.run_dir, result.metrics)


def _train_stop_note(run_dir: Path) -> str:
    """What a stopped ``train`` kept, and the command that resumes it."""
    from soundtag.runs import RunDir

    run = RunDir(run_dir)
    if not run.is_run():
        return f"nothing was written to {run_dir} yet; run the same command again"
    done = run.finished_folds()
    kept = (
        f"fold(s) {', '.join(map(str, done))} of {run_dir} are finished and kept"
        if done
        else f"no fold of {run_dir} was finished"
    )
    return (
        f"{kept}, an unfinished fold goes on from its last saved epoch, the features computed so far are "
        f"cached; resume with `soundtag train --resume {run_dir}`"
    )


def _resolve(name, overrides: List[str], *, manifest=None, quiet: bool = False, comment: bool = False, **options):
    """The recipe ``name`` resolved (:func:`soundtag.resolve.resolve_recipe`); when the data chose
    it (``auto``), the reasons printed first (as YAML comments when ``comment``)."""
    from soundtag.resolve import resolve_recipe

    resolved = resolve_recipe(name, overrides, manifest=manifest, **options)
    for line in resolved.reasons if not quiet else ():
        console.print(
            f"# {line}" if comment else f"{name} recipe: {escape(line)}",
            markup=not comment,
            highlight=False,
            soft_wrap=True,
        )
    return resolved.recipe


def _print_metrics(run_dir: Path, metrics: dict, written: str = "the metrics and plots") -> None:
    from soundtag.reports import metrics_table

    console.print(metrics_table(run_dir, metrics))
    if not metrics.get("complete", True):
        console.print(
            f"[yellow]the other folds are not trained: these clips are {metrics['all']['clips']} of the "
            f"dataset; train the rest with `soundtag train --resume {escape(str(run_dir))}`[/]",
            soft_wrap=True,
        )
    console.print(f"wrote {written} to {escape(str(run_dir))}", soft_wrap=True)


@app.command("merge-folds")
def merge_folds_cmd(
    jobs: List[Path] = typer.Argument(..., help="run directories of fold jobs (soundtag train --fold K)"),
    out: Path = typer.Option(..., "--out", help="the merged run directory"),
):
    """Merge folds trained as independent jobs into one run, then evaluate it when complete.

    Example:

      for k in 0 1 2 3 4; do sbatch --wrap "soundtag train --data esc50 --fold $k --out runs/job-$k"; done

      soundtag merge-folds runs/job-* --out runs/esc50
    """
    from soundtag.runs import RunDir
    from soundtag.training import evaluate_run
    from soundtag.training.merge import merge_folds

    run, source = merge_folds(jobs, out)
    for k, job in sorted(source.items()):
        console.print(f"fold {k}: {job}")
    missing = RunDir(run).unfinished_folds()
    if missing:
        console.print(f"[yellow]fold(s) {missing} are not finished in any job; merge again when they are[/]")
    else:
        _print_metrics(run, evaluate_run(run))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="a run directory"),
    tta: Optional[int] = typer.Option(
        None,
        "--tta",
        help="predict out of fold again from the kept fold models with this many shifted copies of every chunk",
    ),
):
    """Evaluate a run's out-of-fold predictions: metrics, confusion matrix, learning curves.

    With --tta N the fold models predict their held-out clips again with N time-shifted copies
    of every chunk, and the metrics go to metrics-ttaN.json: whether test-time augmentation
    helps a run, measured without training it again (predict and tag take the same --tta).

    Examples:

      soundtag evaluate runs/esc50-cpu-lh-20261124-101500

      soundtag evaluate runs/esc50-cpu-lh-20261124-101500 --tta 4
    """
    from soundtag.training import evaluate_run

    metrics = evaluate_run(run, tta=tta)
    if tta is None:
        _print_metrics(run, metrics)
    else:
        _print_metrics(
            run, metrics, written=f"metrics-tta{tta}.json (out of fold, {tta} shifted copies of every chunk)"
        )


for command in prediction_commands.COMMANDS:
    app.command()(command)


@app.command("recipes")
def recipes_cmd(
    name: Optional[str] = typer.Argument(None, help="print this recipe, resolved"),
    override: List[str] = OverrideOpt,
    data: Optional[str] = typer.Option(None, "--data", "-d", help="the dataset the auto recipe is chosen from"),
    layout: Optional[str] = LayoutOpt,
):
    """List the built-in recipes, or print one with overrides applied.

    The recipe auto (LH) or auto-x (X) is chosen from a dataset given with --data: it prints
    the reasons for each choice as YAML comments, then the recipe, so the output can be saved
    and edited as a recipe file of its own.

    Examples:

      soundtag recipes

      soundtag recipes fsd2018-x -o view.overlap=0.5

      soundtag recipes auto --data my_clips.csv > my_recipe.yaml
    """
    from soundtag.recipe import AUTO_VIEWS, list_recipes, load_recipe

    if name in AUTO_VIEWS:
        if data is None:
            raise typer.BadParameter(
                f"the {name} recipe is chosen from a dataset: pass --data DATASET "
                f"(a folder, CSV, manifest or registered name)",
                param_hint="--data",
            )
        from soundtag.manifest import open_dataset

        r = _resolve(name, override, manifest=open_dataset(data, layout), comment=True)
        console.print(r.to_yaml(), markup=False, highlight=False, soft_wrap=True)
        return
    if name:
        console.print(_resolve(name, override).to_yaml(), markup=False)
        return
    for n in list_recipes():
        r = load_recipe(n)
        console.print(f"[bold]{n}[/]: {r.description}")
    console.print(
        "[bold]auto[/], [bold]auto-x[/]: chosen from the data and the machine "
        "(`soundtag recipes auto --data D` shows it and says why)"
    )


app.add_typer(data_commands.app, name="data")
for command in cleaning_commands.COMMANDS:
    app.command()(command)


def unwrap_prose(doc: str) -> str:
    """A command's help with the lines of each prose paragraph joined.

    Typer keeps the line breaks of every paragraph after the first, which suits the indented
    examples but cuts sentences short in a terminal of another width.

    >>> unwrap_prose("Title.\\n\\n    Some prose\\n    on two lines.\\n\\n    Examples:\\n\\n      soundtag a")
    'Title.\\n\\nSome prose on two lines.\\n\\nExamples:\\n\\n  soundtag a'
    """
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.splitlines()) for p in paragraphs
    )


for _typer in (app, data_commands.app):
    for _info in _typer.registered_commands:
        if _info.help is None and _info.callback is not None and _info.callback.__doc__:
            _info.help = unwrap_prose(_info.callback.__doc__)


def main() -> None:
    from soundtag.stopping import Stopped, stop_on_signals

    try:
        with stop_on_signals():
            app()
    except SoundtagError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(2)
    except Stopped as stop:  # SIGTERM, Ctrl-C, SIGHUP: not a success, whatever was kept
        err_console.print(f"[bold yellow]{escape(stop.report())}[/]", highlight=False, soft_wrap=True)
        sys.exit(stop.exit_status)


if __name__ == "__main__":
    main()
