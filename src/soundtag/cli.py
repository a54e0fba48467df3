"""The ``soundtag`` command line: a few lines per command over the library API."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages name files, and file names may hold [brackets]
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


class Strategy(str, Enum):
    auto = "auto"
    ddp = "ddp"


class TagFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class Engine(str, Enum):
    torch = "torch"
    onnx = "onnx"


class SubmitFormat(str, Enum):
    kaggle = "kaggle"
    kaggle_multilabel = "kaggle-multilabel"


class ExportFormat(str, Enum):
    onnx = "onnx"


def _recipes(names: List[str], overrides: List[str]):
    from soundtag.recipe import load_recipe

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
    shard: Optional[str] = typer.Option(None, "--shard", help="i/n: compute only every n-th clip from the "
                                        "i-th (0-based), so n jobs share the work; 'all': every clip (under "
                                        "torchrun or srun the default is each process's rank/world size)"),
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

    try:  # None: the library takes the launcher's rank/world size under torchrun or srun
        shard_of = parse_shard(shard) if shard else None
    except ParameterError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None
    manifest = open_dataset(data, layout)
    table = Table(title=f"features: {manifest.name} ({len(manifest)} clips)")
    for col in ("recipe", "clips", "computed", "cached", "failed", "hours", "clips/s"):
        table.add_column(col, justify="left" if col == "recipe" else "right", no_wrap=True)
    failed: set[str] = set()  # clip ids: a bad file fails once per recipe but is one clip
    stores = []
    for r in _recipes(recipe, override):
        _, summary = extract_features(manifest, r, cache_dir=cache, workers=workers, batch_size=batch_size,
                                      device=device, progress=progress, shard=shard_of)
        failed.update(f.clip_id for f in summary.failures)
        table.add_row(r.name, str(summary.clips), str(summary.computed), str(summary.cached),
                      str(len(summary.failures)), f"{summary.hours:.2f}", f"{summary.clips_per_second:.0f}")
        stores.append(summary.store)
        for f in summary.failures[:10]:
            console.print(f"[yellow]failed[/]: {escape(f.message)}")
        if len(summary.failures) > 10:
            console.print(f"[yellow]... {len(summary.failures) - 10} more in {summary.failures_csv}[/]")
        if summary.notes:
            console.print(f"{r.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(summary.notes.items()))
                          + f" (listed in {summary.notes_csv})")
    console.print(table)
    for store in stores:
        console.print(f"store: {store}", soft_wrap=True)
    if failed:
        console.print(f"[yellow]{len(failed)} clip(s) could not be decoded; they are listed in each store's "
                      f"{summary.failures_csv.name} and left out.[/]")


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
    from soundtag.plots import show_clip
    from soundtag.recipe import with_sibling_views

    out = out or Path(clip.name).with_suffix(".png")
    show_clip(clip, _recipes(with_sibling_views(recipe), override), out)
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
    relabel: Optional[Path] = typer.Option(None, "--relabel", help="CSV of clip_id,label corrections "
                                           "(e.g. relabel.csv from `soundtag review`)"),
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

      soundtag train --data esc10 --recipe esc50-cpu-lh

      soundtag train --data ../shared/data/esc50 -r esc50-lh --model timm:resnet18 -o training.epochs=80

      soundtag train --resume runs/esc50-cpu-lh-20261124-101500

      torchrun --nproc-per-node 4 -m soundtag.cli train --data fsd50k --out runs/big --devices 4 --strategy ddp
    """
    from soundtag.manifest import open_dataset
    from soundtag.training import resume as resume_run
    from soundtag.training import train as train_run
    from soundtag.training.run import Hardware, default_run_dir, is_primary_process, training_recipe

    hardware = Hardware(devices=devices, num_nodes=num_nodes, strategy=strategy.value)
    if resume is not None:
        result = resume_run(resume, progress=progress, hardware=hardware)
    else:
        if data is None:
            raise typer.BadParameter("give --data DATASET (or --resume RUN)")
        r = training_recipe(recipe, override, folds=folds, model=model, blacklist=blacklist, relabel=relabel)
        result = train_run(open_dataset(data, layout), r, out or default_run_dir(r), cache_dir=cache,
                           folds=fold or None, progress=progress, data_source=data, hardware=hardware)
    if not is_primary_process():
        return  # the first process reports
    if result.folds_skipped:
        console.print(f"skipped finished fold(s) {result.folds_skipped}")
    if result.metrics:
        _print_metrics(result.run_dir, result.metrics)


def _print_metrics(run_dir: Path, metrics: dict) -> None:
    from soundtag.reports import metrics_table

    console.print(metrics_table(run_dir, metrics))
    if not metrics.get("complete", True):
        console.print(f"[yellow]the other folds are not trained: these clips are {metrics['all']['clips']} of the "
                      f"dataset; train the rest with `soundtag train --resume {escape(str(run_dir))}`[/]", soft_wrap=True)
    console.print(f"wrote the metrics and plots to {escape(str(run_dir))}", soft_wrap=True)


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
def evaluate(run: Path = typer.Argument(..., help="a run directory")):
    """Evaluate a run's out-of-fold predictions: metrics, confusion matrix, learning curves.

    Example:

      soundtag evaluate runs/esc50-cpu-lh-20261124-101500
    """
    from soundtag.training import evaluate_run

    _print_metrics(run, evaluate_run(run))


@app.command()
def predict(
    run: Path = typer.Argument(..., help="a finished run directory"),
    data: str = DataOpt,
    layout: Optional[str] = LayoutOpt,
    split: Optional[str] = typer.Option(None, "--split", help="for datasets with splits (fsdkaggle2018): train or test"),
    out: Optional[Path] = typer.Option(None, "--out", help="predictions CSV (default: RUN/predictions/<dataset>.csv)"),
    tta: int = typer.Option(0, "--tta", help="test-time augmentation: shifted copies of every crop"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="feature store folder (default: the run's)"),
    progress: bool = typer.Option(True, help="show progress bars"),
):
    """Predict every clip of a dataset with every fold model of a run.

    LH runs see the head crop, X runs every chunk (averaged per clip); fold models are combined
    by their geometric mean.

    Examples:

      soundtag predict runs/esc10-lh --data esc10

      soundtag predict runs/fsd-lh --data ~/data/fsdkaggle2018 --split test --tta 4
    """
    from soundtag.manifest import open_dataset
    from soundtag.prediction import predict_dataset

    manifest = open_dataset(data, layout, **({"split": split} if split else {}))
    result = predict_dataset(run, manifest, out=out, cache_dir=cache, tta=tta, progress=progress)
    for f in result.failures[:10]:
        console.print(f"[yellow]not predicted[/]: {escape(f.message)}")
    console.print(f"predicted {len(result.predictions.ids)} clips of {manifest.name}"
                  + (f", {len(result.failures)} could not be decoded" if result.failures else ""))
    if result.metrics:
        m = result.metrics
        console.print(f"MAP@3 {m['map@3']:.4f}  top-1 {m['top1']:.4f}  log loss {m['log_loss']:.4f}")
    console.print(f"wrote {result.path}", soft_wrap=True)


@app.command()
def ensemble(
    runs: List[Path] = typer.Argument(..., help="two or more finished runs of the same dataset"),
    out: Path = typer.Option(..., "--out", help="ensemble directory to write"),
):
    """Blend runs (LH with X, and more) with weights fitted on out-of-fold predictions.

    Writes ENSEMBLE/ensemble.json, the blended oof.csv, and blended predictions/<name>.csv for
    every prediction file all the runs have.

    Example:

      soundtag ensemble runs/esc10-lh runs/esc10-x --out runs/esc10-lh+x
    """
    from soundtag.prediction import ensemble_runs
    from soundtag.reports import ensemble_table

    result = ensemble_runs(runs, out)
    console.print(ensemble_table(result))
    console.print(f"wrote {escape(str(out))}: the weights, the blended out-of-fold predictions"
                  + "".join(f", {escape(str(p))}" for p in result.predictions), soft_wrap=True)


@app.command()
def submit(
    predictions: Path = typer.Argument(..., help="a predictions CSV (soundtag predict or ensemble)"),
    fmt: Optional[SubmitFormat] = typer.Option(None, "--format", help="kaggle (top-3 labels) or kaggle-multilabel "
                                               "(a probability per label); default from the predictions"),
    sample: Optional[Path] = typer.Option(None, "--sample-submission", help="the competition's "
                                          "sample_submission.csv: its order, and every clip must be predicted"),
    out: Path = typer.Option(Path("submission.csv"), "--out", help="file to write"),
):
    """Write a competition submission from predictions.

    Example:

      soundtag submit runs/fsd-lh+x/predictions/fsdkaggle2018-test.csv --format kaggle \\
        --sample-submission ~/data/fsdkaggle2018/sample_submission.csv --out submission.csv
    """
    from soundtag.prediction import read_predictions, submission_format, write_submission

    preds = read_predictions(predictions)
    chosen = submission_format(preds, fmt.value if fmt else None)
    write_submission(preds, out, fmt=chosen, sample_submission=sample)
    console.print(f"wrote {out} ({len(preds.ids) if sample is None else 'sample order'}; {chosen} format)")


@app.command()
def tag(
    model: Path = typer.Argument(..., help="a run or ensemble directory, a fold .ckpt, or an exported .onnx"),
    paths: List[Path] = typer.Argument(..., help="audio files or folders (searched recursively)"),
    top: int = typer.Option(3, "--top", "-k", help="labels shown per file"),
    fmt: TagFormat = typer.Option(TagFormat.table, "--format", help="table, json or csv"),
    out: Optional[Path] = typer.Option(None, "--out", help="write JSON/CSV here instead of printing it"),
    timeline: bool = typer.Option(False, "--timeline", help="tags per window over time, for long recordings"),
    engine: Optional[Engine] = typer.Option(None, "--engine", help="torch or onnx (default: onnx for .onnx files)"),
    tta: int = typer.Option(0, "--tta", help="shifted copies of every crop"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model"),
):
    """Tag audio files of any format, rate, channel count and length.

    A missing or unreadable file is reported and the others are tagged; the exit status is 1
    when any file failed.

    Examples:

      soundtag tag runs/esc10-lh dog.ogg recordings/

      soundtag tag model.onnx --engine onnx field.wav --timeline --format csv --out field.csv
    """
    from soundtag.prediction import render_tags
    from soundtag.prediction.tagger import load_tagger, tag_files

    tagger = load_tagger(model, engine=engine.value if engine else None, threads=threads)
    err = Console(stderr=True)

    def report(item):
        if not hasattr(item, "probs"):  # file names may hold brackets: never read them as markup
            err.print(f"[yellow]not tagged[/]: {escape(item.message)}", highlight=False)

    results, failures = tag_files(tagger, paths, timeline=timeline, tta=tta, on_result=report)
    if fmt is TagFormat.table:
        if results:
            console.print(render_tags.table(results, tagger.labels, top, timeline))
    else:
        text = (render_tags.to_json if fmt is TagFormat.json else render_tags.to_csv)(results, tagger.labels, top, timeline)
        if out:
            from soundtag._io import atomic_write_text

            atomic_write_text(out, text)
            console.print(f"wrote {out}")
        else:
            sys.stdout.write(text)
    if failures:
        err.print(f"{len(failures)} of {len(results) + len(failures)} file(s) could not be tagged")
        raise typer.Exit(1)


@app.command()
def export(
    run: Path = typer.Argument(..., help="a finished run directory"),
    fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx"),
    out: Optional[Path] = typer.Option(None, "--out", help="file to write (default: RUN/model.onnx)"),
):
    """Export a run's fold ensemble as one self-contained ONNX model (labels and features inside).

    Example:

      soundtag export runs/esc10-lh --format onnx --out esc10-lh.onnx
      soundtag tag esc10-lh.onnx dog.ogg
    """
    from soundtag.prediction import export_onnx

    path = export_onnx(run, out)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); checked against PyTorch to 1e-4")


@app.command("recipes")
def recipes_cmd(name: Optional[str] = typer.Argument(None, help="print this recipe, resolved"),
                override: List[str] = OverrideOpt):
    """List the built-in recipes, or print one with overrides applied.

    Examples:

      soundtag recipes

      soundtag recipes fsd2018-x -o view.overlap=0.5
    """
    from soundtag.recipe import list_recipes, load_recipe

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
    probe: bool = typer.Option(False, help="read every file's header for duration and rate (fast, but "
                               "a broken file with a good header passes: see --decode)"),
    decode: bool = typer.Option(False, help="decode every file in full and report each one that fails, "
                                "e.g. an empty or truncated file (slower; implies --probe)"),
    files: bool = typer.Option(True, help="report clips whose audio file is missing (--no-files: metadata only)"),
):
    """Read a dataset, report every problem at once, and print what it holds.

    Exits with status 2 when the dataset has a problem: a cell that does not parse, a
    duplicated id, an empty or unknown label, a missing file, or with --decode a file that
    does not decode. Nothing is saved then.

    Examples:

      soundtag data check ../shared/data/esc10

      soundtag data check my_clips.csv --save clips.jsonl --decode

      soundtag data check fsdkaggle2018 --no-files
    """
    from soundtag.manifest import ManifestError, open_dataset

    manifest = open_dataset(data, layout, check_files=files)
    if probe or decode:
        manifest = manifest.with_probed_audio()
    if decode:
        failed = manifest.decode_problems(progress=console.is_terminal)
        if failed:  # every file named, not the first 20: this list is what the user came for
            raise ManifestError(manifest.meta.get("source", manifest.name), failed, limit=len(failed))
    folds = sorted({c.fold for c in manifest if c.fold is not None})
    console.print(f"{manifest.name}: {len(manifest)} clips, {len(manifest.labels)} labels, "
                  f"{'multi' if manifest.multilabel else 'single'}-label, folds {folds or 'none'}"
                  + (f", {manifest.total_duration / 3600:.2f} h" if probe or decode else ""))
    unprobed = sum(c.duration is None for c in manifest) if probe and not decode else 0
    if unprobed:
        console.print(f"{unprobed} file(s) have no readable header; --decode names them", style="yellow")
    if save:
        manifest.to_jsonl(save)
        console.print(f"wrote {save}")


ListsOpt = typer.Option(None, "--lists", help="folder of blacklist.csv, relabel.csv and decisions.csv "
                        "(default: cleaning/<dataset name>/ in the current folder)")


def _lists_dir(run: Path, lists: Optional[Path]) -> Path:
    from soundtag.cleaning import default_lists_dir
    from soundtag.cleaning.suspects import check_run

    check_run(run)
    if lists is not None:
        return lists
    folder = default_lists_dir(run)
    console.print(f"lists: {folder} (choose another folder with --lists DIR)", soft_wrap=True)
    return folder


@app.command()
def suspects(
    run: Path = typer.Argument(..., help="a finished run directory"),
    lists: Optional[Path] = ListsOpt,
    top: Optional[int] = typer.Option(None, "--top", min=1, help="keep only the N most suspect clips"),
    audio: bool = typer.Option(True, help="also decode every clip to flag silent, clipped, duplicate and short ones"),
):
    """Rank a run's training clips by how suspect their label or audio is; write RUN/suspects.csv.

    Misclassified clips (out of fold), cleanlab's label issues and audio problems (near-silent,
    clipped, duplicate audio, much shorter than the class) are listed, most suspect first.

    Examples:

      soundtag suspects runs/esc10

      soundtag suspects runs/esc10 --top 100 --no-audio
    """
    from soundtag.cleaning import DecisionBook, find_suspects, summarize, write_suspects
    from soundtag.reports import suspects_tables
    from soundtag.runs import RunDir

    folder = _lists_dir(run, lists)
    df = find_suspects(run, audio=audio)
    if top is not None:
        df = df.head(top)
    path = write_suspects(df, RunDir(run).suspects_csv)
    manifest = RunDir(run).manifest()
    decided = DecisionBook(folder).latest() if folder.is_dir() else {}
    by_class, head = suspects_tables(run, df, summarize(df, manifest.labels, manifest.label_counts(), decided=decided))
    console.print(by_class)
    console.print(head)
    console.print(f"wrote {path}: {len(df)} suspects of {len(manifest)} clips; listen to them with "
                  f"`soundtag review {run}`", soft_wrap=True)


@app.command()
def review(
    run: Path = typer.Argument(..., help="a finished run directory"),
    port: int = typer.Option(8765, "--port", help="port on 127.0.0.1 (0: any free port)"),
    lists: Optional[Path] = ListsOpt,
):
    """Review the suspects in a local web page: listen, then Blacklist, Keep or Relabel each.

    Every decision is written at once to the lists folder; stop with Ctrl-C and run the command
    again to go on where you stopped.

    Examples:

      soundtag review runs/esc10

      soundtag review runs/esc10 --port 8800 --lists cleaning/esc10
    """
    from soundtag.cleaning import retrain_command
    from soundtag.cleaning.review import HOST, check_port, create_app, serve

    from soundtag.runs import RunDir

    folder = _lists_dir(run, lists)
    port = check_port(port)
    if not RunDir(run).suspects_csv.is_file():
        console.print("no suspects.csv yet: finding the suspects first (as `soundtag suspects` does)")
    web = create_app(run, folder)
    data = web.state.review
    console.print(f"review {run}, round {data.round}: {data.progress()['reviewed']} of {len(data.suspects)} reviewed; "
                  f"decisions go to {folder}", soft_wrap=True)
    console.print(f"open http://{HOST}:{port}/ in a browser (Ctrl-C to stop)", soft_wrap=True)
    serve(web, port=port)
    console.print(f"then retrain: {retrain_command(run, folder)}", soft_wrap=True)


@app.command()
def clean(
    run: Path = typer.Argument(..., help="a finished run directory"),
    auto: bool = typer.Option(False, "--auto", help="apply cleanlab's findings without review"),
    max_fraction: float = typer.Option(0.05, "--max-fraction", help="decide at most this share of the clips"),
    relabel_above: Optional[float] = typer.Option(None, "--relabel-above", help="relabel to the top prediction "
                                                  "when its probability is at least this, instead of blacklisting"),
    lists: Optional[Path] = ListsOpt,
):
    """Blacklist the clips cleanlab flags, worst first, without listening (for those who trust it).

    Clips that already have a decision keep it. Writes the same files as `soundtag review`.

    Example:

      soundtag clean runs/esc10 --auto --max-fraction 0.05
    """
    from soundtag.cleaning import auto_clean, retrain_command
    from soundtag.reports import decisions_table

    if not auto:
        raise typer.BadParameter("clean needs --auto; to decide by ear, run `soundtag review RUN`")
    folder = _lists_dir(run, lists)
    taken = auto_clean(run, folder, max_fraction=max_fraction, relabel_above=relabel_above)
    console.print(decisions_table(f"clean --auto: {len(taken)} decision(s)", taken))
    console.print(f"wrote {folder / 'blacklist.csv'} and {folder / 'relabel.csv'}; retrain with:\n  "
                  f"{retrain_command(run, folder)}", soft_wrap=True)


def main() -> None:
    try:
        app()
    except SoundtagError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
