"""Tagging speed of the pretrained AudioSet models: CNN14 and EfficientAT mn10, PyTorch eager
against ONNX Runtime, one 10-second clip at a time on one core, end to end (decode, front-end,
model), as ``soundtag tag CKPT --arch A FILE`` runs.

Run by hand; rewrites the ``pretrained-tagging`` section of docs/benchmarks.md::

    taskset -c 0 python benchmarks/pretrained.py          # tagging, one core
    python benchmarks/pretrained.py finetune              # one fine-tuning epoch of ESC-50 per model
    python benchmarks/pretrained.py --smoke               # 3 clips, no docs: checks it runs

``finetune`` trains one epoch of ESC-50's folds 2-5 (1600 clips) with ``panns-cnn14-ft`` and
``efficientat-mn10-ft`` from random-weight checkpoints and times it (rewrites the
``pretrained-finetuning`` section); on a GPU it uses the device-resident path as any run does.

No released checkpoint is needed, nor used: the weights are random, saved in each publisher's
layout (speed does not depend on them), so no accuracy is measured here. The clips are real:
ESC-50 clips resampled to 32 kHz, two of them end to end per 10-second file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
DOC = REPO / "docs" / "benchmarks.md"
ARCHS = ("panns-cnn14", "efficientat-mn10")


sys.path.insert(0, str(REPO / "benchmarks"))
from features import caption, machine  # noqa: E402
from inference import time_engine  # noqa: E402
from train import write_section  # noqa: E402


def make_clips(folder: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` 10 s 32 kHz WAVs, each two real ESC-50 clips end to end, from its ``start``-th clip."""
    import soundfile as sf

    from soundtag import audio
    from soundtag.manifest import read_manifest

    clips = list(read_manifest(DATA / "esc50"))[start : start + 2 * n]
    out = []
    for i in range(n):
        parts = [audio.load(c.path, sample_rate=32000, trim_db=None).samples for c in clips[2 * i : 2 * i + 2]]
        path = folder / f"clip{i:03d}.wav"
        sf.write(path, np.concatenate(parts)[:320000], 32000, subtype="PCM_16")
        out.append(path)
    return out


def checkpoint(arch: str, folder: Path, files: list[Path] | None = None) -> Path:
    """A random-weight checkpoint of ``arch`` in its publisher's layout.

    With ``files``, BatchNorm's running statistics are first measured on their log-mels, as
    training leaves them: with fresh statistics random activations shrink layer by layer into
    denormal floats, which slow PyTorch's CPU kernels 10-70x and would time nothing a real
    checkpoint does.
    """
    import torch

    from soundtag import audio
    from soundtag.features.melspec import LogMel
    from soundtag.models import create_model
    from soundtag.resolve import resolve_recipe

    torch.manual_seed(0)
    model = create_model(arch, num_classes=527)
    if files:
        recipe = resolve_recipe(arch=arch).recipe
        logmel = LogMel.from_recipe(recipe)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the batches
        model.train()
        with torch.no_grad():
            for f in files:
                x = torch.from_numpy(audio.load(f, sample_rate=recipe.audio.sample_rate, trim_db=None).samples)
                model(logmel(x[None])[:, None])
        model.eval()
    state = model.state_dict()
    path = folder / f"{arch}.pt"
    torch.save({"model": state} if arch.startswith("panns") else state, path)
    return path


def finetune(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="one fine-tuning epoch of ESC-50 per pretrained model")
    parser.add_argument("--smoke", action="store_true", help="2 clips per class of 5 classes, no docs")
    parser.add_argument("--doc", default=str(DOC), help="markdown file ('' for none)")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "soundtag" / "features"), help="feature stores")
    args = parser.parse_args(argv)
    import torch

    from soundtag.features.extract import extract_features
    from soundtag.manifest import read_manifest
    from soundtag.recipe import load_recipe
    from soundtag.training import train

    manifest = read_manifest(DATA / "esc50")
    if args.smoke:  # 5 classes, 2 clips of each per fold
        from collections import Counter

        keep, taken = set(manifest.labels[:5]), Counter()

        def wanted(clip) -> bool:
            taken[clip.labels[0], clip.fold] += clip.labels[0] in keep
            return clip.labels[0] in keep and taken[clip.labels[0], clip.fold] <= 2

        manifest = manifest.filter(wanted)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch, name in (("efficientat-mn10", "efficientat-mn10-ft"), ("panns-cnn14", "panns-cnn14-ft")):
            recipe = load_recipe(name, ["training.epochs=1", f"training.checkpoint={checkpoint(arch, tmp)}"])
            start = time.perf_counter()
            extract_features(manifest, recipe, cache_dir=args.cache, progress=False)
            features_s = time.perf_counter() - start
            start = time.perf_counter()
            result = train(manifest, recipe, tmp / f"run-{arch}", cache_dir=args.cache, folds=[0], progress=False)
            wall = time.perf_counter() - start
            done = json.loads((result.run_dir / "fold-0" / "done.json").read_text())
            rows.append(
                {
                    "arch": arch,
                    "recipe": name,
                    "train_clips": done["train_clips"],
                    "wall_s": wall,
                    "features_s": features_s,
                    "device": device,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.smoke or not args.doc:
        return
    code = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    write_section(
        "pretrained-finetuning",
        [
            "## Pretrained models: fine-tuning speed (`benchmarks/pretrained.py finetune`)",
            "",
            "One fine-tuning epoch on ESC-50's folds 2-5 from a random-weight checkpoint in the publisher's layout (speed "
            "does not depend on the weights; no accuracy is measured): `train()` with `training.epochs=1` and fold 1 held "
            "out, that is the epoch, validation on fold 1 and its out-of-fold prediction. Features (LH 5 s at 32 kHz) are "
            "extracted first and timed apart (cached: near zero on a second run).",
            "",
            caption(
                f"{machine()}; device {device}, {torch.get_num_threads()} threads",
                str(dt.date.today()),
                "python benchmarks/pretrained.py finetune",
                code=code,
            ),
            "",
            "| model | recipe | training clips | epoch + validation + out-of-fold | clips per second | features |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['arch']} | {r['recipe']} | {r['train_clips']} | {r['wall_s'] / 60:.1f} min | "
                f"{r['train_clips'] / r['wall_s']:.1f} | {r['features_s']:.0f} s |"
                for r in rows
            ],
        ],
        Path(args.doc),
    )
    print(f"table: {args.doc}")


def main() -> None:
    if sys.argv[1:2] == ["finetune"]:
        finetune(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="10 s files tagged per engine")
    parser.add_argument("--smoke", action="store_true", help="3 clips, no docs")
    parser.add_argument("--doc", default=str(DOC), help="markdown file ('' for none)")
    args = parser.parse_args()
    import torch

    from soundtag.prediction.export import export_onnx
    from soundtag.prediction.tagger import load_tagger

    torch.set_num_threads(1)
    n = 3 if args.smoke else args.clips
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_clips(tmp, n)
        for arch in ARCHS:
            ckpt = checkpoint(arch, tmp, files)
            onnx = export_onnx(ckpt, tmp / f"{arch}.onnx", arch=arch)
            eager = time_engine(load_tagger(ckpt, arch=arch, threads=1), files, warmup=2)
            ort = time_engine(load_tagger(onnx, threads=1), files, warmup=2)
            row = {"arch": arch, "torch_ms": 1000 * statistics.median(eager), "onnx_ms": 1000 * statistics.median(ort)}
            row["ratio"] = row["torch_ms"] / row["onnx_ms"]
            rows.append(row)
            print(
                f"{arch}: PyTorch {row['torch_ms']:.1f} ms, ONNX Runtime {row['onnx_ms']:.1f} ms per 10 s clip "
                f"({row['ratio']:.2f}x)",
                flush=True,
            )
    if args.smoke or not args.doc:
        return
    code = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "## Pretrained models: tagging speed (`benchmarks/pretrained.py`)",
        "",
        "Median milliseconds to tag one 10-second 32 kHz WAV end to end (decode, front-end, model), one file at a time, "
        "random weights in each publisher's layout with BatchNorm statistics measured on the clips (fresh statistics "
        "let activations decay into denormal floats, which slowed PyTorch 60x in a first run and no real checkpoint "
        "does; speed does not otherwise depend on the weights).",
        "",
        caption(
            f"{machine()}; {cores} core(s) allowed to the process, one thread",
            str(dt.date.today()),
            f"{'taskset -c 0 ' if cores == 1 else ''}python benchmarks/pretrained.py --clips {n}",
            code=code,
        ),
        "",
        "| model | PyTorch eager | ONNX Runtime | ONNX Runtime vs PyTorch |",
        "|---|---|---|---|",
        *[f"| {r['arch']} | {r['torch_ms']:.1f} ms | {r['onnx_ms']:.1f} ms | {r['ratio']:.2f}x |" for r in rows],
        "",
        "Goals: ONNX Runtime at least 1.5x PyTorch for both; mn10 under 40 ms per 10 s clip on one core: "
        + ", ".join(f"{r['arch']} {'met' if r['ratio'] >= 1.5 else 'not met'}" for r in rows)
        + f"; mn10 {'met' if rows[1]['onnx_ms'] < 40 else 'not met'} ({rows[1]['onnx_ms']:.1f} ms).",
    ]
    write_section("pretrained-tagging", lines, Path(args.doc))
    print(f"table: {args.doc}")


if __name__ == "__main__":
    main()
