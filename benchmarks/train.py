"""Training benchmarks: step overhead, and accuracy with wall time on real data.

Run by hand; each part rewrites its own section of docs/benchmarks.md::

    python benchmarks/train.py overhead            # full Lightning step vs bare forward+backward
    python benchmarks/train.py esc10               # ESC-10, its 5 folds, CPU recipe
    python benchmarks/train.py esc50-fold1         # ESC-50 fold 1 (trained on folds 2-5), CPU recipe
    python benchmarks/train.py esc50               # ESC-50, all 5 folds (meant for a GPU)

The data comes from SOUNDTAG_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from features import machine  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"


def write_section(name: str, lines: list[str]) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = "\n".join([start, *lines, end])
    text = DOC.read_text() if DOC.is_file() else "# Benchmarks\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def device_line() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} + {os.cpu_count()} CPU cores"
    return machine()


def overhead(recipe_name: str, steps: int) -> None:
    """Time per step of Lightning's full loop against a bare forward+backward on one batch."""
    import lightning as L

    from soundtag.features import extract_features
    from soundtag.recipe import load_recipe
    from soundtag.manifest import read_manifest
    from soundtag.training.module import TaggerModule
    from soundtag.training.run import FoldSet

    data = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
    manifest = read_manifest(data / "esc10")
    recipe = load_recipe(recipe_name, ["training.epochs=1"])
    with tempfile.TemporaryDirectory() as tmp:
        store, _ = extract_features(manifest, recipe, cache_dir=Path(tmp) / "cache", progress=False)
        loaders = FoldSet.build(manifest, recipe, store).loaders(0)
        train_loader, normalizer = loaders.train, loaders.normalizer
        module = TaggerModule(recipe.model_dump(), list(manifest.labels), False, normalizer.to_dict())
        ends: list[float] = []

        class Clock(L.Callback):
            def on_train_batch_end(self, *args):
                ends.append(time.perf_counter())

        trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, accelerator="auto",
                            devices=1, logger=L.pytorch.loggers.CSVLogger(tmp), enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()],
                            log_every_n_steps=1)
        trainer.fit(module, train_loader)
        full = np.diff(ends[2:])  # skip warm-up steps

        x, y = next(iter(train_loader))
        x, y = x.to(module.device), y.to(module.device)
        bare_model = TaggerModule(recipe.model_dump(), list(manifest.labels), False, normalizer.to_dict()).model
        bare_model.to(module.device).train()
        times = []
        for i in range(len(full) + 3):
            start = time.perf_counter()
            bare_model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(bare_model(x), y).backward()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - start)
    full_ms, bare_ms = 1000 * float(np.median(full)), 1000 * float(np.median(times))
    ratio = full_ms / bare_ms
    print(json.dumps({"full_ms": full_ms, "bare_ms": bare_ms, "ratio": ratio}))
    write_section("train-overhead", [
        "## Training step overhead (`benchmarks/train.py overhead`)", "",
        f"- Date: {dt.date.today()}; machine: {device_line()}",
        f"- Command: `python benchmarks/train.py overhead --recipe {recipe_name} --steps {steps}`",
        f"- Recipe {recipe_name} ({recipe.training.model}, batch {recipe.training.batch_size}), ESC-10 fold 0. "
        "Full step: Lightning's loop with sampling from the memory-mapped store, oversampling, augmentation "
        "(shift, erasing, mixup), forward, backward, optimiser step and logging, timed between consecutive "
        "batch ends. Bare: the same model's forward + loss + backward on one fixed batch. Medians.", "",
        "| full step ms | bare forward+backward ms | ratio (goal <= 1.10) |", "|---|---|---|",
        f"| {full_ms:.1f} | {bare_ms:.1f} | {ratio:.3f} |",
    ])


def accuracy(case: str, recipe_name: str, overrides: list[str], keep: Path | None) -> None:
    """Train and report out-of-fold accuracy and MAP@3 with the wall time."""
    from soundtag.recipe import load_recipe
    from soundtag.manifest import read_manifest
    from soundtag.training import train

    data = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
    folder, folds = {"esc10": ("esc10", None), "esc50-fold1": ("esc50", [0]), "esc50": ("esc50", None)}[case]
    manifest = read_manifest(data / folder)
    recipe = load_recipe(recipe_name, overrides)
    run_dir = keep or Path(tempfile.mkdtemp()) / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cache = Path(tempfile.mkdtemp()) / "cache"
    start = time.perf_counter()
    result = train(manifest, recipe, run_dir, cache_dir=cache, folds=folds, progress=False, data_source=folder)
    wall = time.perf_counter() - start
    if folds is None:
        m = result.metrics["all"]
    else:  # one fold: score its out-of-fold clips directly
        from soundtag import evaluation
        from soundtag.training.splits import label_matrix

        done = json.loads((run_dir / "fold-0" / "done.json").read_text())
        probs = np.load(run_dir / "fold-0" / "oof.npy")
        ids = {c: i for i, c in enumerate(manifest.ids)}
        targets = label_matrix(manifest)[[ids[c] for c in done["clips"]]]
        m = evaluation.summarize(targets, probs)
    row = {"case": case, "recipe": recipe_name, "overrides": overrides, "clips": m["clips"], "top1": m["top1"],
           "map3": m["map@3"], "wall_s": wall}
    print(json.dumps(row))
    goal = {"esc10": "top-1 >= 85% within 20 min (2-core CPU)", "esc50-fold1": "top-1 >= 75% within 30 min (2-core CPU)",
            "esc50": "reference: 64.5% (Piczak) to 85-88% (best from scratch)"}[case]
    over = " ".join(f"-o {o}" for o in overrides)
    write_section(f"train-{case}", [
        f"## Accuracy: {case} (`benchmarks/train.py {case}`)", "",
        f"- Date: {dt.date.today()}; machine: {device_line()}",
        f"- Command: `{f'python benchmarks/train.py {case} --recipe {recipe_name} {over}'.rstrip()}`",
        f"- Goal: {goal}", "",
        "| clips scored out of fold | top-1 | MAP@3 | wall time |", "|---|---|---|---|",
        f"| {m['clips']} | {100 * m['top1']:.1f}% | {m['map@3']:.4f} | {wall / 60:.1f} min |",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["overhead", "esc10", "esc50-fold1", "esc50"])
    parser.add_argument("--recipe", default="esc50-cpu-lh")
    parser.add_argument("-o", "--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="keep the run directory here")
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.recipe, args.steps)
    else:
        accuracy(args.what, args.recipe, args.overrides, args.keep)


if __name__ == "__main__":
    main()
