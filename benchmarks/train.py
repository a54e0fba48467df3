"""Training benchmarks: step overhead, and accuracy with wall time on real data.

Run by hand; each part rewrites its own section of docs/benchmarks.md::

    python benchmarks/train.py overhead            # full Lightning step vs bare forward+backward
    python benchmarks/train.py esc10               # ESC-10, its 5 folds, CPU recipe
    python benchmarks/train.py esc50-fold1         # ESC-50 fold 1 (trained on folds 2-5), CPU recipe
    python benchmarks/train.py esc50               # ESC-50, all 5 folds (meant for a GPU)
    python benchmarks/train.py robustness          # short clips cut from ESC-50/ESC-10, fold 1, three recipes

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


def write_section(name: str, lines: list[str], doc: Path = DOC) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = "\n".join([start, *lines, end])
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


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

        x, y, _ = next(iter(train_loader))  # (views, targets, sound extents)
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


# --- robustness (issue 11): short clips cut from real audio, fold 1, several recipes ---------

ROBUSTNESS_RECIPES = ["plain-cnn-lh", "esc50-cpu-lh", "auto"]
BASELINE = "plain-cnn-lh"
SMOKE_SUBSET = {"classes": 10, "per_class_per_fold": 2}  # 100 clips a case, 80 trained on


def _auto_missing() -> str | None:
    """Why ``auto`` cannot run here, or None when ``soundtag.recipe_auto.auto_recipe`` exists."""
    import importlib

    try:
        module = importlib.import_module("soundtag.recipe_auto")
    except ModuleNotFoundError as exc:
        if exc.name not in ("soundtag.recipe_auto", "soundtag"):
            raise
        return "soundtag.recipe_auto is not there yet (issue 11's --recipe auto)"
    if not hasattr(module, "auto_recipe"):
        return "soundtag.recipe_auto has no auto_recipe yet"
    return None


def _robustness_recipe(name: str, manifest, *, epochs_scale: float, smoke: bool):
    """The recipe called ``name`` (``auto``: chosen from ``manifest``) and its reasons, with
    its epochs scaled (one epoch in smoke mode)."""
    from soundtag.recipe import load_recipe

    if name == "auto":
        from soundtag.recipe_auto import auto_recipe, default_device

        # As `soundtag train --recipe auto` chooses it: from the whole dataset, for this machine.
        recipe, reasons = auto_recipe(manifest, device=default_device())
        reasons = reasons.splitlines() if isinstance(reasons, str) else [str(r) for r in reasons]
    else:
        recipe, reasons = load_recipe(name), []
    epochs = 1 if smoke else max(1, round(recipe.training.epochs * epochs_scale))
    if epochs != recipe.training.epochs:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "recipe.yaml"
            path.write_text(recipe.to_yaml())
            recipe = load_recipe(path, [f"training.epochs={epochs}"])
    return recipe, reasons


def _last_epoch_scores(manifest, recipe, cache: Path, run_dir: Path) -> dict:
    """Fold 1 scored with the last epoch's weights (the run itself keeps the best epoch's)."""
    from soundtag import evaluation
    from soundtag.features.store import FeatureStore
    from soundtag.runs import RunDir
    from soundtag.training.module import TaggerModule
    from soundtag.training.run import FoldSet, predict_clips
    from soundtag.training.splits import label_matrix

    plan = FoldSet.build(manifest, recipe, FeatureStore.open(cache, recipe))
    loaders = plan.loaders(0)
    module = TaggerModule.load_from_checkpoint(RunDir(run_dir).checkpoint(0, "last"), map_location="cpu")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    probs = predict_clips(module, loaders.oof, device)
    ids = {c: i for i, c in enumerate(manifest.ids)}
    targets = label_matrix(manifest)[[ids[c] for c in loaders.oof_ids]]
    return evaluation.summarize(targets, probs)


def _train_fold1(case: str, label: str, recipe, manifest, out: Path) -> dict:
    """Extract the features (timed apart), train fold 1 (index 0: trained on folds 2-5) and
    score it."""
    from soundtag.features import extract_features
    from soundtag.runs import RunDir
    from soundtag.training import train

    cache = out / "features"
    start = time.perf_counter()
    _, summary = extract_features(manifest, recipe, cache_dir=cache, progress=False, shard="all")
    features_s = time.perf_counter() - start
    run_dir = out / "runs" / case / label
    if run_dir.exists():
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    result = train(manifest, recipe, run_dir, cache_dir=cache, folds=[0], progress=False, data_source=case)
    train_s = time.perf_counter() - start
    m = result.metrics
    if m.get("folds") != [0]:
        raise RuntimeError(f"{case}/{label}: expected a run scored on fold 0 only, got folds={m.get('folds')}")
    record = RunDir(run_dir).fold_record(0)
    last = _last_epoch_scores(manifest, recipe, cache, run_dir)
    t, f, v = recipe.training, recipe.features, recipe.view
    return {
        "case": case, "recipe": label, "recipe_name": recipe.name, "model": t.model, "epochs": t.epochs,
        "epochs_run": record.get("epochs"), "sample_rate": recipe.audio.sample_rate, "n_mels": f.n_mels,
        "hop_length": f.hop_length, "view": f"{v.kind} {v.duration:g} s", "clips": len(manifest),
        "clips_scored": m["all"]["clips"], "train_clips": record.get("train_clips"),
        "top1": m["all"]["top1"], "map3": m["all"]["map@3"],
        "top1_last_epoch": last["top1"], "map3_last_epoch": last["map@3"],
        "best_checkpoint": record.get("best_checkpoint"),
        "train_s": train_s, "fit_s": record.get("seconds"), "features_s": features_s,
        "features_computed": summary.computed, "features_cached": summary.cached,
        "feature_failures": len(summary.failures), "run_dir": str(run_dir),
    }


def _row_key(row: dict) -> tuple:
    return row["case"], row["recipe"], row.get("epochs_scale", 1.0)


def _earlier_rows(results: Path, report: dict) -> dict:
    """The rows and cases of an earlier run into the same folder, each row stamped with the
    command, date, machine and epoch scale of the run that made it; none when that run was a
    smoke run and this one is not (or the other way round)."""
    if not results.is_file():
        return {"rows": [], "cases": {}}
    before = json.loads(results.read_text())
    if before.get("smoke") != report["smoke"]:
        return {"rows": [], "cases": {}}
    stamp = {k: before.get(k) for k in ("command", "date", "machine", "epochs_scale")}
    rows = [{**stamp, **{k: v for k, v in row.items() if v is not None}} for row in before.get("rows", [])]
    return {"rows": rows, "cases": before.get("cases", {})}


def _with_earlier(report: dict, earlier: dict) -> dict:
    """``report`` with the earlier rows it did not redo, in the order case, then recipe."""
    redone = {_row_key(r) for r in report["rows"]}
    kept = [r for r in earlier["rows"] if _row_key(r) not in redone]
    order = {name: i for i, name in enumerate(report["cases"])}
    rows = sorted(kept + [r for r in report["rows"] if r not in kept],
                  key=lambda r: (order.get(r["case"], len(order)), r.get("epochs_scale", 1.0) != 1.0))
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    return {**report, "rows": rows, "commands": commands or [report["command"]]}


def _robustness_doc(report: dict) -> list[str]:
    rows, cases = report["rows"], report["cases"]
    scale_of = lambda r: r.get("epochs_scale", 1.0)  # noqa: E731
    # Scores are compared only between rows trained at the same epoch scale.
    base = {(r["case"], scale_of(r)): r for r in rows if r["recipe"] == BASELINE}
    dates = sorted({r.get("date", report["date"]) for r in rows} or {report["date"]})
    machines = sorted({r.get("machine", report["machine"]) for r in rows} or {report["machine"]})
    commands = report.get("commands") or [report["command"]]
    lines = [
        "## Robustness: short clips cut from real audio (`benchmarks/train.py robustness`)", "",
        f"- Date: {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}; machine: {'; '.join(machines)}",
        ("- Command: " if len(commands) == 1 else "- Commands (the table gathers their rows): ")
        + ", ".join(f"`{c}`" for c in commands),
        "- Cases (built once into a FLAC cache with their CSV manifest; ESC-50's and ESC-10's own folds kept): "
        + "; ".join(f"`{name}`: {c['description']} ({c['clips']} clips)" for name, c in cases.items()),
        "- Each case and recipe in the same run: fold 1 only (trained on folds 2-5, scored on fold 1's clips). "
        f"`{BASELINE}` is the plain-CNN baseline of issue 12, `esc50-cpu-lh` today's CPU default, `auto` the "
        "recipe `soundtag train --recipe auto` chooses from each case's data. Top-1 and MAP@3 use the weights "
        "`soundtag train` keeps (the epoch with the lowest validation loss on fold 1, the scored fold); "
        "the last epoch's top-1 is beside it. Training wall time is the whole `train()` call (fit, "
        "out-of-fold prediction, scoring); features are extracted before it and timed apart. An epoch "
        "count marked like `15 (0.5x)` is a shortened run (`--epochs-scale`), not the recipe as it ships.",
    ]
    if report["smoke"]:
        lines.append("- **Smoke run** (a handful of clips, one epoch): checks that the benchmark runs, "
                     "its numbers mean nothing.")
    lines += ["", "| case | recipe | features | model | epochs | top-1 | vs baseline | top-1 last epoch | MAP@3 | "
              "training wall | features wall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get((r["case"], scale_of(r)))
        gap = f"{100 * (r['top1'] - b['top1']):+.1f} pts" if b and r["recipe"] != BASELINE else ""
        epochs = f"{r['epochs']}" + (f" ({scale_of(r):g}x)" if scale_of(r) != 1 else "")
        lines.append(f"| {r['case']} | {r['recipe']} | {r['sample_rate'] / 1000:g} kHz, {r['n_mels']} mels, hop "
                     f"{r['hop_length']}, {r['view']} | {r['model']} | {epochs} | {100 * r['top1']:.1f}% | "
                     f"{gap} | "
                     f"{100 * r['top1_last_epoch']:.1f}% | {r['map3']:.4f} | {r['train_s'] / 60:.1f} min | "
                     f"{r['features_s']:.0f} s |")
    skipped: dict[tuple[str, str], list[str]] = {}
    for skip in report["skipped"]:
        skipped.setdefault((skip["recipe"], skip["why"]), []).append(skip["case"])
    if skipped:
        lines.append("")
    for (recipe, why), on in skipped.items():
        lines.append(f"- Not run: `{recipe}` on {', '.join(on)}: {why}")
    auto = {(r["case"], scale_of(r)): r for r in rows if r["recipe"] == "auto"}
    if auto:
        lines += ["", "Goals (issue 11, 2 cores, fold 1); a goal judged on shortened runs says so:"]
        for (c, scale), a in auto.items():
            b = base.get((c, scale))
            if c == "full" or b is None:
                continue
            met = a["top1"] >= b["top1"] and a["train_s"] <= b["train_s"]
            lines.append(f"- {c}{'' if scale == 1 else f' (at {scale:g}x epochs)'}: `auto` at or above the "
                         f"baseline in no more wall time: {100 * a['top1']:.1f}% vs {100 * b['top1']:.1f}%, "
                         f"{a['train_s'] / 60:.1f} vs {b['train_s'] / 60:.1f} min: {'met' if met else 'not met'}")
        for scale in sorted({s for _, s in auto}):
            full, short = auto.get(("full", scale)), auto.get(("esc50-1s", scale))
            if full and short:
                drop = 100 * (full["top1"] - short["top1"])
                lines.append(f"- esc50-1s{'' if scale == 1 else f' (at {scale:g}x epochs)'}: `auto` within 3 "
                             f"points of its own full-length score: {100 * short['top1']:.1f}% vs "
                             f"{100 * full['top1']:.1f}% on `full` ({abs(drop):.1f} points "
                             f"{'below' if drop >= 0 else 'above'}): {'met' if drop <= 3 else 'not met'}")
    return lines


def robustness(argv: list[str]) -> None:
    """Short clips cut from ESC-50 and ESC-10: the baseline, today's recipe and `auto`, fold 1."""
    import shlex

    from short_clips import CASES, build_case, pick_subset, read_case

    from soundtag._io import atomic_write_json
    from soundtag.manifest import read_manifest

    parser = argparse.ArgumentParser(prog="benchmarks/train.py robustness", description=robustness.__doc__)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="default: all (" + ", ".join(f"{n}: {c.description}" for n, c in CASES.items()) + ")")
    parser.add_argument("--recipes", nargs="+", default=ROBUSTNESS_RECIPES,
                        help="recipe names or YAML files, and `auto` (default: %(default)s)")
    parser.add_argument("--full-recipes", nargs="*", default=["auto"],
                        help="those of --recipes also trained on the full-length case `full` (default: %(default)s, "
                        "whose full-length score is the 1 s goal's reference)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every recipe's epochs")
    parser.add_argument("--smoke", action="store_true",
                        help="10 classes x 2 clips per fold and 1 epoch: checks it runs end to end (~2 min)")
    parser.add_argument("--fresh", action="store_true",
                        help="forget the rows of earlier runs into --out (kept by default: a run in parts)")
    parser.add_argument("--out", type=Path, help="results, clip cache, feature cache and runs "
                        "(default .cache/benchmarks/robustness[-smoke])")
    parser.add_argument("--doc", help="markdown file whose robustness section is replaced (default "
                        "docs/benchmarks.md, or none with --smoke; '' for none)")
    args = parser.parse_args(argv)
    if args.epochs_scale <= 0:
        parser.error(f"--epochs-scale={args.epochs_scale} must be positive")
    out = args.out or REPO / ".cache" / "benchmarks" / ("robustness-smoke" if args.smoke else "robustness")
    doc = Path(args.doc) if args.doc else (None if args.smoke or args.doc == "" else DOC)
    data = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
    auto_missing = _auto_missing() if "auto" in args.recipes else None
    if auto_missing:
        print(f"skipping recipe auto: {auto_missing}", file=sys.stderr)
    command = " ".join(["python benchmarks/train.py robustness", *map(shlex.quote, argv)])
    report = {"date": str(dt.date.today()), "machine": device_line(), "torch_threads": torch.get_num_threads(),
              "command": command, "smoke": args.smoke, "epochs_scale": args.epochs_scale, "cases": {},
              "rows": [], "skipped": []}
    results = out / "robustness.json"
    # A full run takes hours on 2 cores, so it is made in parts: the rows of earlier runs into
    # the same folder stay unless this run trains the same case, recipe and epoch scale again.
    earlier = _earlier_rows(results, report) if not args.fresh else {"rows": [], "cases": {}}
    report["cases"] = dict(earlier["cases"])
    sources = {}
    for name in args.cases:
        case = CASES[name]
        if case.source not in sources:
            sources[case.source] = read_manifest(data / case.source)
        source = pick_subset(sources[case.source], **SMOKE_SUBSET) if args.smoke else sources[case.source]
        recipes = [r for r in args.recipes if case.seconds is not None or r in args.full_recipes]
        if not recipes:
            continue
        start = time.perf_counter()
        if case.seconds is None:
            manifest, counts = source, {}
        else:
            path, counts = build_case(case, source, out / "clips" / case.name,
                                      manifest_name="manifest-smoke.csv" if args.smoke else "manifest.csv")
            manifest = read_case(path, source)
        report["cases"][name] = {"description": case.description, "clips": len(manifest),
                                 "build_s": time.perf_counter() - start, **counts}
        for recipe_name in recipes:
            if recipe_name == "auto" and auto_missing:
                report["skipped"].append({"case": name, "recipe": "auto", "why": auto_missing})
                continue
            recipe, reasons = _robustness_recipe(recipe_name, manifest, epochs_scale=args.epochs_scale,
                                                 smoke=args.smoke)
            label = recipe_name if recipe_name == "auto" or "/" not in recipe_name else recipe.name
            row = _train_fold1(name, label, recipe, manifest, out) | {
                "reasons": reasons, "epochs_scale": args.epochs_scale, "command": command,
                "date": report["date"], "machine": report["machine"]}
            print(json.dumps({k: v for k, v in row.items() if k != "reasons"}), flush=True)
            report["rows"].append(row)
            # After every run: an interrupted benchmark keeps its rows.
            atomic_write_json(results, _with_earlier(report, earlier))
    report = _with_earlier(report, earlier)
    atomic_write_json(results, report)
    print(f"results: {results}")
    if doc is not None:
        write_section("train-robustness", _robustness_doc(report), doc=doc)
        print(f"table: {doc}")


def main() -> None:
    if sys.argv[1:2] == ["robustness"]:  # a subcommand with options of its own
        robustness(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["overhead", "esc10", "esc50-fold1", "esc50", "robustness"])
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
