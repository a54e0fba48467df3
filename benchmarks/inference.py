"""Inference benchmark: tagging ESC-50 files with PyTorch eager and with ONNX Runtime.

Run by hand; rewrites the ``inference`` section of docs/benchmarks.md::

    python benchmarks/inference.py                  # trains a 1-epoch esc50-cpu-lh run first
    python benchmarks/inference.py --run runs/esc50-cpu-lh-...   # or times a run you have

Both engines tag the same files end to end (decode, resample, log-mel, every fold model,
geometric mean), one file at a time as ``soundtag tag`` does, from the same run: PyTorch
eager on the run directory, ONNX Runtime on the model ``soundtag export`` writes. Weights do
not change the speed, so a briefly trained run times the same as a converged one.

Two measurements:

* 2 threads: clips per second and milliseconds per clip for each engine, and their ratio;
* one core: the process pinned to one CPU with one thread, milliseconds per five-second clip
  for each stage (decode, log-mel, models).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))


def ensure_run(run: Path | None, epochs: int) -> Path:
    """The run to time: the given one, or a briefly trained esc50-cpu-lh run on ESC-50."""
    if run is not None:
        return run
    run = REPO / "runs" / f"bench-inference-esc50-cpu-lh-{epochs}ep"
    if not (run / "metrics.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "soundtag.cli",
            "train",
            "--data",
            str(DATA / "esc50"),
            "--recipe",
            "esc50-cpu-lh",
            "-o",
            f"training.epochs={epochs}",
            "--cache",
            str(REPO / ".cache" / "soundtag" / "features"),
        ]
        cmd += ["--resume", str(run)] if (run / "run.json").is_file() else ["--out", str(run)]
        subprocess.run(cmd, check=True)
    return run


def time_engine(tagger, files: list[Path], warmup: int = 5) -> list[float]:
    """Seconds per file, tagging one file at a time."""
    for f in files[:warmup]:
        tagger.tag(f)
    out = []
    for f in files:
        start = time.perf_counter()
        tagger.tag(f)
        out.append(time.perf_counter() - start)
    return out


def stages(tagger, files: list[Path]) -> dict[str, list[float]]:
    """Seconds per file in each stage of the pipeline."""
    from soundtag.features.views import decode_for_recipe, eval_chunks
    from soundtag.inference.combine import combine_folds

    out = {"decode": [], "log-mel": [], "models": [], "total": []}
    for f in files[:5]:
        tagger.tag(f)
    for f in files:
        t0 = time.perf_counter()
        wav = decode_for_recipe(f, tagger.recipe)
        t1 = time.perf_counter()
        chunks = eval_chunks(tagger.logmel(wav.samples), tagger.recipe)
        t2 = time.perf_counter()
        combine_folds(tagger.fold_probs(chunks), np.zeros(len(chunks), dtype=int), 1)
        t3 = time.perf_counter()
        for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            out[k].append(v)
    return out


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.1f}"


def _run_model(run: Path) -> str:
    """The recipe and model the run was trained with, as its recipe.yaml says."""
    from soundtag.recipe import load_recipe

    recipe = load_recipe(run / "recipe.yaml")
    return f"recipe {recipe.name}, model {recipe.training.model}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: train esc50-cpu-lh briefly)")
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--clips", type=int, default=200, help="ESC-50 files tagged per engine")
    args = parser.parse_args()

    from features import caption, machine
    from train import write_section

    from soundtag.prediction import export_onnx
    from soundtag.prediction.tagger import load_tagger

    run = ensure_run(args.run, args.train_epochs)
    onnx_path = export_onnx(run, run / "model.onnx")
    every = sorted((DATA / "esc50" / "audio").glob("*.flac"))
    files = every[:: max(1, len(every) // args.clips)][: args.clips]

    results = {}
    for engine, source in (("PyTorch eager", run), ("ONNX Runtime", onnx_path)):
        tagger = load_tagger(source, threads=2)
        results[engine] = time_engine(tagger, files)
    torch_s, ort_s = (statistics.mean(results[e]) for e in ("PyTorch eager", "ONNX Runtime"))

    # One core: pin the process, one thread per engine.
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    one_core = {
        engine: stages(load_tagger(source, threads=1), files[:100])
        for engine, source in (("PyTorch eager", run), ("ONNX Runtime", onnx_path))
    }

    folds = len(list(run.glob("fold-*/done.json")))
    command = f"python benchmarks/inference.py{' --run ' + str(args.run) if args.run else ''} --clips {args.clips}"
    date = dt.date.today().isoformat()
    lines = [
        "## Inference: tagging files (`benchmarks/inference.py`)",
        "",
        f"- run: `{run.name}` ({_run_model(run)}, {folds} fold models per clip, combined by "
        "their geometric mean); each file decoded, resampled, log-mel'd and tagged on its own, as `soundtag tag` does",
        "",
        caption(machine(), date, command, what=f"Two threads, {len(files)} ESC-50 files (five seconds each)"),
        "",
        "| engine | clips/s | ms per clip (mean) | ms per clip (median) |",
        "|---|---:|---:|---:|",
    ]
    for engine, secs in results.items():
        lines.append(f"| {engine} | {len(secs) / sum(secs):.1f} | {1000 * statistics.mean(secs):.1f} | {ms(secs)} |")
    lines += [
        "",
        f"ONNX Runtime is **{torch_s / ort_s:.2f} times** as fast as PyTorch eager (goal: 1.5).",
        "",
        caption(
            machine(),
            date,
            command,
            what="One core (process pinned to one CPU, one thread), median ms per five-second clip, 100 files",
        ),
        "",
        "| engine | decode + resample | log-mel | fold models | end to end |",
        "|---|---:|---:|---:|---:|",
    ]
    for engine, st in one_core.items():
        lines.append(
            f"| {engine} | {ms(st['decode'])} | {ms(st['log-mel'])} | {ms(st['models'])} | {ms(st['total'])} |"
        )
    total = 1000 * statistics.median(one_core["ONNX Runtime"]["total"])
    lines += [
        "",
        f"Goal: under 50 ms end to end on one core: {'met' if total < 50 else 'NOT met'} "
        f"({total:.1f} ms with ONNX Runtime).",
    ]
    write_section("inference", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
