"""``soundtag predict``, ``ensemble``, ``submit``, ``tag`` and ``export``: using trained runs."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from soundtag.commands import DataOpt, LayoutOpt, console, err_console, escape, rerun_note
from soundtag.stopping import on_stop


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


def predict(
    run: Path = typer.Argument(..., help="a finished run directory"),
    data: str = DataOpt,
    layout: Optional[str] = LayoutOpt,
    split: Optional[str] = typer.Option(
        None, "--split", help="for datasets with splits (fsdkaggle2018): train or test"
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="predictions CSV (default: RUN/predictions/<dataset>.csv)"),
    tta: Optional[int] = typer.Option(
        None, "--tta", help="test-time augmentation: shifted copies of every crop (default: the recipe's training.tta)"
    ),
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
    with on_stop(rerun_note(lambda: "no predictions were written; the features computed so far are cached")):
        result = predict_dataset(run, manifest, out=out, cache_dir=cache, tta=tta, progress=progress)
    for f in result.failures[:10]:
        console.print(f"[yellow]not predicted[/]: {escape(f.message)}")
    console.print(
        f"predicted {len(result.predictions.ids)} clips of {manifest.name}"
        + (f", {len(result.failures)} could not be decoded" if result.failures else "")
    )
    if result.metrics:
        m = result.metrics
        console.print(f"MAP@3 {m['map@3']:.4f}  top-1 {m['top1']:.4f}  log loss {m['log_loss']:.4f}")
    console.print(f"wrote {result.path}", soft_wrap=True)


def ensemble(
    runs: List[Path] = typer.Argument(..., help="two or more finished runs of the same dataset"),
    out: Path = typer.Option(..., "--out", help="ensemble directory to write"),
    partial: bool = typer.Option(
        False,
        "--partial",
        help="blend runs trained with --fold on the clips of their finished folds (the same folds in every run)",
    ),
):
    """Blend runs (LH with X, and more) with weights fitted on out-of-fold predictions.

    Writes ENSEMBLE/ensemble.json, the blended oof.csv, and blended predictions/<name>.csv for
    every prediction file all the runs have.

    Example:

      soundtag ensemble runs/esc10-lh runs/esc10-x --out runs/esc10-lh+x

      soundtag ensemble runs/f1-lh runs/f1-x --partial --out runs/f1-lh+x   # runs of --fold 0
    """
    from soundtag.prediction import ensemble_runs
    from soundtag.reports import ensemble_table

    result = ensemble_runs(runs, out, partial=partial)
    console.print(ensemble_table(result))
    console.print(
        f"wrote {escape(str(out))}: the weights, the blended out-of-fold predictions"
        + "".join(f", {escape(str(p))}" for p in result.predictions),
        soft_wrap=True,
    )


def submit(
    predictions: Path = typer.Argument(..., help="a predictions CSV (soundtag predict or ensemble)"),
    fmt: Optional[SubmitFormat] = typer.Option(
        None,
        "--format",
        help="kaggle (top-3 labels) or kaggle-multilabel (a probability per label); default from the predictions",
    ),
    sample: Optional[Path] = typer.Option(
        None,
        "--sample-submission",
        help="the competition's sample_submission.csv: its order, and every clip must be predicted",
    ),
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


ArchOpt = typer.Option(
    None,
    "--arch",
    help="MODEL is a released pretrained checkpoint of this model: panns-cnn14, "
    "panns-cnn14-16k, panns-cnn14-dlm, efficientat-mn04, efficientat-mn10, efficientat-mn40",
)


def tag(
    model: Path = typer.Argument(
        ..., help="a run or ensemble directory, a fold .ckpt, an exported .onnx, or a pretrained checkpoint with --arch"
    ),
    paths: List[Path] = typer.Argument(..., help="audio files or folders (searched recursively)"),
    top: int = typer.Option(3, "--top", "-k", help="labels shown per file"),
    fmt: TagFormat = typer.Option(TagFormat.table, "--format", help="table, json or csv"),
    out: Optional[Path] = typer.Option(None, "--out", help="write JSON/CSV here instead of printing it"),
    timeline: bool = typer.Option(
        False,
        "--timeline",
        help="tags per window over time, for long recordings (panns-cnn14-dlm: its own 0.32 s segments)",
    ),
    hop: Optional[float] = typer.Option(
        None, "--hop", help="--timeline: seconds between windows (default: the view's overlap, 90% of a window)"
    ),
    threshold: Optional[float] = typer.Option(
        None,
        "--threshold",
        min=0,
        max=1,
        help="csv: one row per label at "
        "or above this probability (file,start,end,label,probability), "
        "neighbouring windows of a label merged into one event",
    ),
    arch: Optional[str] = ArchOpt,
    engine: Optional[Engine] = typer.Option(None, "--engine", help="torch or onnx (default: onnx for .onnx files)"),
    tta: Optional[int] = typer.Option(
        None, "--tta", help="shifted copies of every crop (default: the recipe's training.tta)"
    ),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model"),
):
    """Tag audio files of any format, rate, channel count and length.

    A missing or unreadable file is reported and the others are tagged; the exit status is 1
    when any file failed.

    Examples:

      soundtag tag runs/esc10-lh dog.ogg recordings/

      soundtag tag model.onnx --engine onnx field.wav --timeline --format csv --out field.csv

      soundtag tag Cnn14_DecisionLevelMax_mAP=0.385.pth --arch panns-cnn14-dlm park.wav --timeline \
          --format csv --threshold 0.3
    """
    from soundtag.prediction import render_tags
    from soundtag.prediction.tagger import load_tagger, tag_files

    tagger = load_tagger(model, engine=engine.value if engine else None, threads=threads, arch=arch)
    err = err_console

    def report(item):
        if not hasattr(item, "probs"):  # file names may hold brackets: never read them as markup
            err.print(f"[yellow]not tagged[/]: {escape(item.message)}", highlight=False)

    results, failures = tag_files(tagger, paths, timeline=timeline, tta=tta, hop=hop, on_result=report)
    if fmt is TagFormat.table:
        if results:
            console.print(render_tags.table(results, tagger.labels, top, timeline))
    else:
        if fmt is TagFormat.json:
            text = render_tags.to_json(results, tagger.labels, top, timeline)
        elif threshold is not None:
            text = render_tags.to_events_csv(results, tagger.labels, threshold, timeline)
        else:
            text = render_tags.to_csv(results, tagger.labels, top, timeline)
        if out:
            from soundtag._io import atomic_write_text

            atomic_write_text(out, text)
            console.print(f"wrote {out}")
        else:
            sys.stdout.write(text)
    if failures:
        err.print(f"{len(failures)} of {len(results) + len(failures)} file(s) could not be tagged")
        raise typer.Exit(1)


def export(
    run: Path = typer.Argument(..., help="a finished run directory, or a pretrained checkpoint with --arch"),
    fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx"),
    out: Optional[Path] = typer.Option(
        None, "--out", help="file to write (default: RUN/model.onnx, or the checkpoint's name with .onnx)"
    ),
    arch: Optional[str] = ArchOpt,
    quantize: Optional[str] = typer.Option(
        None,
        "--quantize",
        help="int8: an int8 model, about a third of the size, checked against the float one (faster only where "
        "the CPU has fast int8 kernels: see the benchmarks)",
    ),
    int8_mode: Optional[str] = typer.Option(
        None,
        "--int8-mode",
        help="static (activation ranges calibrated on clips; the default where clips are at hand) or dynamic",
    ),
    calibrate: list[Path] = typer.Option(
        [], "--calibrate", help="audio files or folders to calibrate on (default: the run's own training clips)"
    ),
    calibration_clips: int = typer.Option(300, "--calibration-clips", min=1, help="clips to calibrate on"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Export a run's fold ensemble as one self-contained ONNX model (labels and features inside).

    Example:

      soundtag export runs/esc10-lh --format onnx --out esc10-lh.onnx
      soundtag tag esc10-lh.onnx dog.ogg

      soundtag export runs/esc10-lh --quantize int8 --out esc10-lh.int8.onnx

      soundtag export Cnn14_mAP=0.431.pth --arch panns-cnn14 --out cnn14.onnx
      soundtag export Cnn14_mAP=0.431.pth --arch panns-cnn14 --quantize int8 --calibrate clips/ --out cnn14.int8.onnx
    """
    from soundtag.errors import ParameterError
    from soundtag.prediction import export_onnx

    if quantize is None and (int8_mode or calibrate):
        raise ParameterError("--int8-mode and --calibrate choose how to quantize: add --quantize int8")
    if quantize is not None:
        from soundtag.prediction.quantize import QuantizationReport
        from soundtag.prediction.tagger import read_onnx_metadata

        path = export_onnx(
            run,
            out,
            arch=arch,
            quantize=quantize,
            int8_mode=int8_mode,
            calibrate=calibrate,
            calibration_clips=calibration_clips,
            progress=progress,
        )
        files = sorted(path.glob("*.onnx")) if path.is_dir() else [path]
        for f in files:
            info = read_onnx_metadata(f)["quantization"]
            fields = {k: info[k] for k in QuantizationReport.__dataclass_fields__ if k in info}
            report = QuantizationReport(**(fields | {"int8_bytes": f.stat().st_size}))
            console.print(f"wrote {escape(str(f))}: {report.summary()}", soft_wrap=True)
        if path.is_dir():
            console.print(f"tag with: soundtag tag {escape(str(path))} CLIP")
        return
    path = export_onnx(run, out, arch=arch)
    if path.is_dir():  # a blend of views: one model file a run
        files = sorted(path.glob("*.onnx")) or sorted(path.glob("*/model.onnx"))
        listed = ", ".join(f"{escape(str(f))} ({f.stat().st_size / 1e6:.1f} MB)" for f in files)
        console.print(f"wrote {listed}; each checked against PyTorch to 1e-4", soft_wrap=True)
        console.print(f"tag with: soundtag tag {escape(str(path))} CLIP" + ("" if out else " --engine onnx"))
    else:
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); checked against PyTorch to 1e-4")


def embed(
    model: Path = typer.Argument(..., help="a run directory, a fold .ckpt, or a pretrained checkpoint with --arch"),
    data: str = typer.Argument(..., help="a dataset (folder, CSV, manifest, registered name) or a folder of audio"),
    out: Path = typer.Option(..., "--out", help="embeddings .npy; the clip ids go to the .csv beside it"),
    arch: Optional[str] = ArchOpt,
    fold: int = typer.Option(0, "--fold", help="the fold whose model embeds (each fold has its own space)"),
    layout: Optional[str] = LayoutOpt,
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model"),
):
    """Pre-logit embeddings per clip, for linear probes and for cleanlab's Datalab.

    Example:

      soundtag embed mn10_as_mAP_471.pt --arch efficientat-mn10 ../shared/data/esc50 --out esc50-mn10.npy
    """
    from soundtag.prediction.embed import embed_clips, write_embeddings

    clips = _clips_of(data, layout)
    result = embed_clips(model, clips, arch=arch, fold=fold, threads=threads)
    npy, index = write_embeddings(result, out)
    for _, message in result.failures:
        err_console.print(f"[yellow]not embedded[/]: {escape(message)}", highlight=False)
    console.print(f"wrote {npy} ({result.vectors.shape[0]} clips x {result.vectors.shape[1]}) and {index}")
    if result.failures:
        raise typer.Exit(1)


def _clips_of(data: str, layout: Optional[str]) -> list[tuple[str, Path]]:
    """``(clip_id, path)`` of a dataset, or of the audio files in a folder that is not one."""
    from soundtag.errors import DataError
    from soundtag.manifest import open_dataset
    from soundtag.prediction.tagger import audio_files

    try:
        return [(c.id, Path(c.path)) for c in open_dataset(data, layout)]
    except DataError:
        if not Path(data).is_dir():
            raise
        root = Path(data)
        return [(str(p.relative_to(root)), p) for p in audio_files([root])]


class InputFormat(str, Enum):
    auto = "auto"
    wav = "wav"
    s16le = "s16le"
    s32le = "s32le"
    f32le = "f32le"


class ListenOutput(str, Enum):
    jsonl = "jsonl"
    table = "table"


class _OutputClosed(Exception):
    """Whatever read our output went away (``| head``): stop listening."""


def listen(
    model: Path = typer.Argument(
        ..., help="a run directory, an exported .onnx, a fold .ckpt, or a checkpoint with --arch"
    ),
    stdin: bool = typer.Option(False, "--stdin", help="read sound from standard input instead of the microphone"),
    fmt: InputFormat = typer.Option(
        InputFormat.auto,
        "--format",
        help="--stdin: auto (WAV, FLAC, Ogg, MP3, AAC or any container ffmpeg decodes, told by its header), "
        "wav, or raw s16le, s32le or f32le (with --rate)",
    ),
    rate: Optional[int] = typer.Option(None, "--rate", help="--stdin raw: the stream's sample rate in Hz"),
    channels: int = typer.Option(1, "--channels", min=1, help="--stdin raw: interleaved channels (mixed to mono)"),
    hop: Optional[float] = typer.Option(None, "--hop", help="seconds between windows (default: half a window)"),
    threshold: float = typer.Option(0.5, "--threshold", min=0, max=1, help="an event: a label at or above this"),
    top: int = typer.Option(3, "--top", "-k", help="labels of each window (--windows, table)"),
    windows: bool = typer.Option(False, "--windows", help="jsonl: a line for every window too, not only events"),
    output: Optional[ListenOutput] = typer.Option(
        None, "--output", help="jsonl (one JSON object a line, flushed) or table (default: table on a terminal)"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="microphone: an input device's name or number"),
    stall: float = typer.Option(10.0, "--stall-seconds", min=0.1, help="say so when no sound came for this long"),
    arch: Optional[str] = ArchOpt,
    engine: Optional[Engine] = typer.Option(None, "--engine", help="torch or onnx (default: onnx for .onnx files)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for the model"),
):
    """Tag a live source: the microphone, or sound piped into standard input.

    The sound is cut into windows of the model's input length, every --hop seconds, as `soundtag
    tag --timeline` cuts a file; a label's neighbouring windows at or above --threshold make one
    event (start, end, label, highest probability), written as soon as it ends. Ctrl-C, or the end
    of the input, writes the events still open and exits 0. Times are seconds from the start.

    Examples:

      soundtag listen model.onnx                                  # the default microphone

      ffmpeg -i rtsp://camera/stream -f s16le -ac 1 -ar 16000 - | \
          soundtag listen model.onnx --stdin --format s16le --rate 16000

      curl -s https://radio.example/stream.mp3 | soundtag listen runs/mine --stdin --windows > events.jsonl
    """
    import json

    from soundtag.errors import ParameterError
    from soundtag.prediction.listen import check_rate, microphone_blocks, pipe_blocks
    from soundtag.prediction.listen import listen as listen_to
    from soundtag.prediction.stream import WindowGrid
    from soundtag.prediction.tagger import load_tagger, top_k

    tagger = load_tagger(model, engine=engine.value if engine else None, threads=threads, arch=arch)
    recipe = getattr(tagger, "recipe", None)
    if recipe is None:
        raise ParameterError(
            f"{model} blends several views, which cut time differently: listen with one of them (its run, or its "
            ".onnx file)"
        )
    width = recipe.view_samples / recipe.audio.sample_rate
    grid = WindowGrid.from_recipe(recipe, hop if hop is not None else width / 2)
    as_table = output is ListenOutput.table or (output is None and sys.stdout.isatty())
    err = err_console

    def note(text: str) -> None:
        err.print(f"[yellow]{escape(text)}[/]", highlight=False)

    def stalled(seconds: float) -> None:
        note(f"no sound from the source for {seconds:.0f} s; still listening (Ctrl-C to stop)")

    if stdin:
        source_rate, blocks = pipe_blocks(
            sys.stdin.buffer,
            fmt=fmt.value,
            rate=rate,
            channels=channels,
            stall_s=stall,
            on_stall=stalled,
            on_note=note,
        )
    else:
        source_rate = check_rate(rate) if rate else recipe.audio.sample_rate
        blocks = microphone_blocks(rate=source_rate, device=int(device) if device and device.isdigit() else device)

    def write(line: str) -> None:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            raise _OutputClosed from None

    def on_window(window) -> None:
        start, end, probs = window
        tags = top_k(probs, tagger.labels, top)
        if as_table:
            shown = "  ".join(f"{lab} {p:.2f}" for lab, p in tags)
            console.print(f"{start:8.2f}-{end:8.2f} s  {escape(shown)}", highlight=False)
        elif windows:
            item = {"type": "window", "start": round(start, 3), "end": round(end, 3)}
            write(json.dumps(item | {"tags": [{"label": lab, "score": round(p, 6)} for lab, p in tags]}))

    def on_event(event) -> None:
        if as_table:
            console.print(
                f"[bold]event[/] {event.start:8.2f}-{event.end:8.2f} s  {escape(event.label)} {event.probability:.2f}",
                highlight=False,
            )
        else:
            write(json.dumps({"type": "event"} | event.to_dict()))

    err.print(
        f"listening to {'standard input' if stdin else 'the microphone'} at {source_rate} Hz: windows of "
        f"{width:g} s every {grid.step / grid.sample_rate:g} s, events at {threshold:g}; Ctrl-C to stop",
        highlight=False,
    )
    try:
        summary = listen_to(
            tagger,
            blocks,
            source_rate=source_rate,
            grid=grid,
            threshold=threshold,
            on_window=on_window,
            on_event=on_event,
        )
    except _OutputClosed:
        # the reader is gone: nothing more can be said on stdout, and Python must not try at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        err.print("the output was closed: stopped listening", highlight=False)
        return
    err.print(
        f"{'stopped' if summary.interrupted else 'the input ended'} after {summary.seconds:.1f} s of sound: "
        f"{summary.windows} window(s), {summary.events} event(s)",
        highlight=False,
    )


COMMANDS = (predict, ensemble, submit, tag, export, embed, listen)
