"""int8 against float ONNX models: tagging time on one core, file size, and accuracy.

Run by hand; rewrites the ``int8`` section of docs/benchmarks.md::

    python benchmarks/int8.py                       # trains esc50-cpu-lh on ESC-50 folds 2-5 first
    python benchmarks/int8.py --run runs/my-fold1   # or uses a run that scored fold 1 alone
    python benchmarks/int8.py --smoke               # a 1-epoch run on 5 classes, 3 clips: checks it runs

Per model, one process, one run:

* our own run (``esc50-cpu-lh``, trained on ESC-50 folds 2-5 and scored on fold 1): its float
  export, the static int8 model (calibrated on 300 of its training clips, none of fold 1) and
  the dynamic one. Top-1 and MAP@3 of each on the 400 clips of fold 1 (the run's out-of-fold
  clips), every clip tagged end to end as ``soundtag tag`` does.
* EfficientAT mn10 and PANNs CNN14 in their publishers' layouts, with random weights (speed and
  size do not depend on them; BatchNorm statistics measured on real clips, as for the pretrained
  tagging benchmark), statically calibrated on 10-second files made of ESC-50 clips. Random
  weights have no accuracy to lose, so for them only the agreement with the float model is shown.

Speed: median milliseconds to tag one 10-second file (two ESC-50 clips end to end, 32 kHz WAV)
end to end (decode, resample, log-mel, model), the process pinned to one core, ONNX Runtime with
one thread; and listening (``soundtag listen``): the same files as one stream, latency per window
and real-time factor on one core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "benchmarks"))
from features import caption, machine  # noqa: E402
from inference import time_engine  # noqa: E402
from pretrained import checkpoint, make_clips  # noqa: E402
from train import DOC, code_version, write_section  # noqa: E402

RUN_RECIPE = "esc50-cpu-lh"
PRETRAINED = ("efficientat-mn10", "panns-cnn14")
#: the goals: int8 at least this much faster than the float model, at most this share of its
#: size, losing at most this many points of top-1
GOALS = {"speed": 2.0, "size": 1 / 3, "top1_points": 0.5}


def train_run(out: Path, smoke: bool) -> Path:
    """``esc50-cpu-lh`` trained on ESC-50 folds 2-5 and scored on fold 1 (resumed if cut off)."""
    if (out / "metrics.json").is_file():
        return out
    data = str(DATA / "esc50")
    extra = []
    if smoke:
        from short_clips import pick_subset, write_manifest_csv

        from soundtag.manifest import read_manifest

        subset = pick_subset(read_manifest(DATA / "esc50"), classes=5, per_class_per_fold=4)
        data = str(write_manifest_csv(out.parent / "smoke.csv", [(c.path, c.labels[0], c.fold) for c in subset]))
        extra = ["-o", "training.epochs=1"]
    cmd = [sys.executable, "-m", "soundtag.cli", "train", "--no-progress"]
    if (out / "run.json").is_file():
        cmd += ["--resume", str(out)]
    else:
        cmd += ["--data", data, "--recipe", RUN_RECIPE, "--fold", "0", "--out", str(out), *extra]
    subprocess.run(cmd, check=True)
    return out


def run_label(run: Path) -> str:
    """What the run is, for the tables: its recipe's name (``auto``: the default's LH model)."""
    import yaml

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    name = recipe.get("name", run.name)
    return f"default ({recipe['training']['model']})" if name == "auto" else name


def scored_clips(run: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """The clips the run scored out of fold, their one-hot targets, and the labels."""
    from soundtag.runs import RunDir

    oof = RunDir(run).out_of_fold(partial=True)
    keep = ~np.isnan(oof.probs[:, 0])
    clips = [c for c, k in zip(oof.manifest, keep) if k]
    labels = oof.manifest.labels
    targets = np.zeros((len(clips), len(labels)), dtype=np.float32)
    for i, c in enumerate(clips):
        for lab in c.labels:
            targets[i, labels.index(lab)] = 1
    return [c.path for c in clips], targets, labels


def accuracy(model: Path, paths: list[str], targets: np.ndarray) -> dict:
    from soundtag.evaluation import map_at_k, top1_accuracy
    from soundtag.prediction.tagger import load_tagger

    tagger = load_tagger(model)
    probs = np.stack([tagger.tag(p).probs for p in paths])
    return {"top1": top1_accuracy(targets, probs), "map3": map_at_k(targets, probs, 3)}


def one_core_ms(model: Path, files: list[Path]) -> dict:
    """Median ms per file end to end, and of the model alone (the file's chunks already made),
    the process pinned to one core, one ONNX Runtime thread."""
    import time

    from soundtag.prediction.tagger import load_tagger

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        tagger = load_tagger(model, threads=1)
        whole = time_engine(tagger, files, warmup=2)
        chunks = [tagger.chunks(f)[0] for f in files]
        alone = []
        for c in chunks:
            start = time.perf_counter()
            tagger.fold_probs(c)
            alone.append(time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, allowed)
    return {"ms": 1000 * statistics.median(whole), "model_ms": 1000 * statistics.median(alone)}


def op_profile(model: Path, chunks) -> dict:
    """ONNX Runtime's own profile of the model alone on one file's chunks, one thread, 10 runs:
    milliseconds a run in its kernels and the share of the operator types that take most."""
    import collections
    import json

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(10):
            session.run(None, {"chunks": chunks})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return {"kernel_ms": total / 10 / 1000, "ops": [(op, us / total) for op, us in by_op.most_common(4)]}


def stream_timing(model: Path, files: list[Path], block_s: float = 0.1) -> dict:
    """Listening on one core: the files end to end as one stream at the model's rate, fed in
    ``block_s`` blocks, windows half a window apart (``soundtag listen``'s default). Latency: the
    median time from the block that completes a window to its probabilities; real-time factor:
    processing time over the sound's duration."""
    import time

    from soundtag import audio
    from soundtag.prediction.stream import StreamTimeline, WindowGrid
    from soundtag.prediction.tagger import load_tagger

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        tagger = load_tagger(model, threads=1)
        rate = tagger.recipe.audio.sample_rate
        sound = np.concatenate([audio.load(f, sample_rate=rate, trim_db=None).samples for f in files])
        grid = WindowGrid.from_recipe(tagger.recipe, tagger.recipe.view_samples / rate / 2)
        block = int(rate * block_s)
        StreamTimeline(tagger, grid).feed(sound[: grid.width])  # warm-up
        live, latencies, busy = StreamTimeline(tagger, grid), [], 0.0
        for i in range(0, len(sound), block):
            start = time.perf_counter()
            windows = live.feed(sound[i : i + block])
            spent = time.perf_counter() - start
            busy += spent
            if windows:
                latencies.append(spent)
        start = time.perf_counter()
        live.finish()
        busy += time.perf_counter() - start
    finally:
        os.sched_setaffinity(0, allowed)
    return {
        "latency_ms": 1000 * statistics.median(latencies),
        "rtf": busy / (len(sound) / rate),
        "window_s": grid.width / rate,
        "hop_s": grid.step / rate,
        "stream_s": len(sound) / rate,
    }


def variants(source: Path, folder: Path, name: str, *, arch: str | None, calibrate: list[Path]) -> dict[str, Path]:
    """The float, static int8 and dynamic int8 ONNX files of a run or a pretrained checkpoint."""
    from soundtag.prediction.export import export_onnx

    return {
        "float": export_onnx(source, folder / f"{name}.onnx", arch=arch),
        "int8 static": export_onnx(
            source, folder / f"{name}.static.onnx", arch=arch, quantize="int8", int8_mode="static", calibrate=calibrate
        ),
        "int8 dynamic": export_onnx(
            source, folder / f"{name}.dynamic.onnx", arch=arch, quantize="int8", int8_mode="dynamic"
        ),
    }


def int8_instructions() -> list[str]:
    """The CPU's int8 dot-product instructions (VNNI, AMX), which decide how much faster
    ONNX Runtime's int8 kernels can be than its float ones: the tables of CPUs with and without
    them are kept apart."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return []
    return [f for f in ("avx_vnni", "avx512_vnni", "amx_int8") if f in flags]


def quantization_info(model: Path) -> dict:
    from soundtag.prediction.tagger import read_onnx_metadata

    return read_onnx_metadata(model).get("quantization", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an esc50-cpu-lh run that scored ESC-50 fold 1 alone")
    parser.add_argument("--clips", type=int, default=20, help="10 s files timed per model")
    parser.add_argument("--smoke", action="store_true", help="a 1-epoch run on 5 classes, 3 files, no docs")
    parser.add_argument("--doc", default=str(DOC), help="markdown file ('' for none)")
    args = parser.parse_args()
    n_files = 3 if args.smoke else args.clips
    work = REPO / ".cache" / "benchmarks" / ("int8-smoke" if args.smoke else "int8")
    work.mkdir(parents=True, exist_ok=True)
    run = args.run or train_run(work / f"run-{RUN_RECIPE}-fold1", args.smoke)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        timing = tmp / "timing"
        calib = tmp / "calibration"
        timing.mkdir()
        calib.mkdir()
        files = make_clips(timing, n_files)
        # 10 s calibration files of other ESC-50 clips than the timed ones (the make_clips of a
        # later slice), for the pretrained models, which have no training clips of their own
        calib_files = make_clips(calib, 3 if args.smoke else 60, start=2 * n_files)
        paths, targets, _ = scored_clips(run)
        if args.smoke:
            paths, targets = paths[:10], targets[:10]
        models = [(run_label(run), run, None, [])]
        models += [(arch, checkpoint(arch, tmp, files[:3]), arch, calib_files) for arch in PRETRAINED]
        for name, source, arch, calibrate in models:
            for variant, model in variants(source, tmp, name, arch=arch, calibrate=calibrate).items():
                row = {"model": name, "variant": variant, "bytes": model.stat().st_size}
                row |= one_core_ms(model, files)
                if variant != "int8 dynamic":
                    from soundtag.prediction.tagger import load_tagger

                    row["profile"] = op_profile(model, load_tagger(model).chunks(files[-1])[0])
                row |= stream_timing(model, files)
                if arch is None:
                    row |= accuracy(model, paths, targets)
                info = quantization_info(model)
                row["agreement"] = info.get("top1_agreement")
                row["calibration_clips"] = info.get("calibration_clips")
                rows.append(row)
                print(
                    f"{name} {variant}: {row['bytes'] / 1e6:.1f} MB, {row['ms']:.1f} ms per 10 s file"
                    + (f", top-1 {row['top1']:.2%}, MAP@3 {row['map3']:.4f}" if "top1" in row else ""),
                    flush=True,
                )
    vnni = int8_instructions()
    lines = table(rows, n_files, len(paths), run, vnni) + [""] + profile_table(rows) + [""] + listen_table(rows)
    print("\n".join(lines))
    if not args.smoke and args.doc:
        write_section("int8-vnni" if vnni else "int8", lines, Path(args.doc))
        print(f"table: {args.doc}")


def table(rows: list[dict], n_files: int, n_scored: int, run: Path, vnni: list[str]) -> list[str]:
    base = {r["model"]: r for r in rows if r["variant"] == "float"}
    cpu = f"a CPU with int8 dot products ({', '.join(vnni)})" if vnni else "a CPU without VNNI"
    lines = [
        f"## int8 models on {cpu}: size, speed and accuracy (`benchmarks/int8.py`)",
        "",
        f"Median milliseconds to tag one 10-second file end to end on one core (one ONNX Runtime thread, {n_files} "
        "files of two ESC-50 clips each: decode, resample, log-mel, model), and of the model alone on the file's "
        "chunks; file size, and for our own run the top-1 / MAP@3 of each model on the "
        f"{n_scored} clips of ESC-50 fold 1 it was scored on out of fold (run `{run.name}`: `{run_label(run)}` trained on "
        "folds 2-5). Static int8: QDQ, weights per channel in 7 bits, activations calibrated on the run's own "
        "training clips (none of fold 1), or for the pretrained models on 10-second files of other ESC-50 clips "
        "(the calibration column counts them). mn10 and CNN14 have random weights in their publishers' layouts "
        "(speed and size do not depend on them): 'same best label' is the share of the clips kept apart from "
        "calibration whose best label the int8 model gives as the float one.",
        "",
        caption(
            machine(), str(dt.date.today()), " ".join(["python benchmarks/int8.py", *sys.argv[1:]]), code=code_version()
        ),
        "",
        "| model | variant | calibration | size | x float size | ms per 10 s file | x float speed | model alone | "
        "x float | top-1 | MAP@3 | same best label |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["model"]]
        acc = f"{r['top1']:.2%} | {r['map3']:.4f}" if "top1" in r else " | "
        same = f"{r['agreement']:.1%}" if r.get("agreement") is not None else ""
        calib = f"{r['calibration_clips']} clips" if r.get("calibration_clips") else ""
        lines.append(
            f"| {r['model']} | {r['variant']} | {calib} | {r['bytes'] / 1e6:.1f} MB | {r['bytes'] / b['bytes']:.2f} | "
            f"{r['ms']:.1f} | {b['ms'] / r['ms']:.2f}x | {r['model_ms']:.1f} ms | {b['model_ms'] / r['model_ms']:.2f}x | "
            f"{acc} | {same} |"
        )
    verdicts = []
    for r in rows:
        if r["variant"] == "float":
            continue
        b = base[r["model"]]
        ok = [b["ms"] / r["ms"] >= GOALS["speed"], r["bytes"] / b["bytes"] <= GOALS["size"]]
        if "top1" in r:
            ok.append((b["top1"] - r["top1"]) * 100 <= GOALS["top1_points"])
        verdicts.append(f"{r['model']} {r['variant']} {'met' if all(ok) else 'not met'}")
    lines += [
        "",
        "Goals: int8 at least 2x as fast as the float model, at most a third of its size, and (our run) at most "
        "0.5 points of top-1 lost: " + "; ".join(verdicts) + ".",
    ]
    return lines


def profile_table(rows: list[dict]) -> list[str]:
    lines = [
        "### Where the model's time goes: ONNX Runtime's profile, one thread",
        "",
        "Time in ONNX Runtime's kernels for one 10-second file's chunks (10 runs, one thread), and the operator "
        "types that take the most of it: what keeps an int8 model from being faster.",
        "",
        "| model | variant | kernels | operators (share of the kernel time) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if "profile" in r:
            ops = ", ".join(f"{op} {share:.0%}" for op, share in r["profile"]["ops"])
            lines.append(f"| {r['model']} | {r['variant']} | {r['profile']['kernel_ms']:.1f} ms | {ops} |")
    return lines


def listen_table(rows: list[dict]) -> list[str]:
    base = {r["model"]: r for r in rows if r["variant"] == "float"}
    lines = [
        "### Listening to a stream (`soundtag listen`), one core",
        "",
        f"The same files end to end as one {rows[0]['stream_s']:.0f} s stream at each model's own rate, fed in 0.1 s "
        "blocks through the streaming timeline `soundtag listen` runs, windows of the model's input length half a "
        "window apart (its default). Latency: median time from the block that completes a window to the window's "
        "probabilities (the event follows at once); real-time factor: processing time over the sound's duration "
        "(under 1: faster than real time). One core, one ONNX Runtime thread, same run as the table above.",
        "",
        "| model | variant | window / hop | latency | real-time factor | x float speed |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["model"]]
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['window_s']:g} s / {r['hop_s']:g} s | {r['latency_ms']:.1f} ms | "
            f"{r['rtf']:.4f} | {b['rtf'] / r['rtf']:.2f}x |"
        )
    return lines


if __name__ == "__main__":
    main()
