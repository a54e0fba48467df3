"""The default against the plain-CNN baseline over data shapes: ``soundtag train`` as a user runs it.

Every row is one ``soundtag train`` command, run as a subprocess and timed whole (features,
timing, every fold of every view, the blend, scoring): ``plain-cnn-lh`` (the plain-CNN
baseline, 30 epochs) first, then the default (no recipe: ``auto``, both views where the clips
suit them, the default budget), then the default given the baseline's own wall time
(``--time``). Asked for with ``--rows``: the default with both views forced into its budget
(``default, LH + X``: the evidence for leaving X out of short budgets), and the default given 30
minutes. Each command gets a fresh feature cache, so features are paid by every row.

Cases (the folds are the dataset's own; "fold 1" trains on the others and scores fold 1):

- ``esc50-fold1``: ESC-50 (16 kHz FLAC), fold 1
- ``esc10``: ESC-10 at its native 44.1 kHz Ogg, uneven lengths, all 5 folds
- ``esc50-fold1-44k``: ESC-50 fold 1 resampled to 44.1 kHz: the same sounds at a higher native
  rate, where cost must not rise without a gain
- ``esc50-20x40``: 20 of ESC-50's classes (every other one, in its label order), all 40 clips
  each, fold 1: a small dataset
- ``esc50-1s``, ``esc50-0.5s``: ESC-50 cut to each clip's loudest 1 s / 0.5 s
  (``benchmarks/short_clips.py``), fold 1

Usage::

    python benchmarks/shapes.py --cases esc50-20x40 esc10 esc50-fold1
    python benchmarks/shapes.py --cases esc50-fold1 esc50-1s --rows "default, LH + X"
    python benchmarks/shapes.py --cases esc50-20x40 --seeds 0 1 2   # each row 3 times: mean, spread
    python benchmarks/shapes.py --smoke          # 10 classes x 2 clips a fold, a minute a row
    python benchmarks/shapes.py --cases esc10 --rows default --set training.batch_size=16   # a variant

A variant (``--set KEY=VALUE ...``) is the default's rows with those recipe overrides (``-o``): the
evidence for or against changing a rule, kept as its own rows (``default with KEY=VALUE``) beside the
default's. The baseline never takes them.

Results go to ``benchmarks/results/shapes.json``, which is committed: a full run takes hours on
2 cores and is made in parts, often on different days and checkouts, and each part keeps the
rows of the others (a row measured again replaces its old one). The table goes to the section
``shapes`` of docs/benchmarks.md. Runs, logs and the built data sets stay under
``.cache/benchmarks/shapes``. With ``--smoke`` or ``--out``, the results file is in that folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from short_clips import CASES as SHORT_CASES  # noqa: E402
from short_clips import build_case, pick_subset, read_case, write_manifest_csv  # noqa: E402
from train import DOC, code_version, device_line, write_section  # noqa: E402

from soundtag import audio  # noqa: E402
from soundtag._io import atomic_path, atomic_write_json  # noqa: E402
from soundtag.manifest import Manifest, read_manifest  # noqa: E402

BASELINE = "plain-cnn-lh"
RESULTS = REPO / "benchmarks" / "results" / "shapes.json"
CASES = {
    "esc50-fold1": "ESC-50, 16 kHz FLAC, fold 1",
    "esc10": "ESC-10, native 44.1 kHz Ogg, uneven lengths, 5 folds",
    "esc50-fold1-44k": "ESC-50 resampled to 44.1 kHz, fold 1",
    "esc50-20x40": "20 ESC-50 classes x 40 clips, fold 1",
    "esc50-1s": "ESC-50 cut to its loudest 1 s, fold 1",
    "esc50-0.5s": "ESC-50 cut to its loudest 0.5 s, fold 1",
}
ROWS = ("baseline", "default", "default, LH + X", "default at the baseline's time", "default in 30 min")
# asked for with --rows: the 30-minute row is the goal of two cases; "default, LH + X" (both views
# forced into the default budget) is the evidence for the rule that leaves X out of short budgets
DEFAULT_ROWS = ("baseline", "default", "default at the baseline's time")
SMOKE_SUBSET = {"classes": 10, "per_class_per_fold": 2}


def _write_manifest(folder: Path, rows: list[tuple[str, str, object]], name: str) -> Path:
    return write_manifest_csv(folder / name, rows)


def resampled_copy(manifest: Manifest, folder: Path, rate: int, *, name: str = "manifest.csv") -> Path:
    """Every clip of ``manifest`` resampled to ``rate`` and written once as FLAC into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in manifest:
        rel = Path("audio") / (Path(clip.id).with_suffix("").as_posix().replace("/", "__") + ".flac")
        target = folder / rel
        if not target.is_file():
            import soundfile as sf

            native = audio.decode(clip.path)
            mono = native.samples.mean(axis=1) if native.samples.shape[1] > 1 else native.samples[:, 0]
            with atomic_path(target) as tmp:
                sf.write(tmp, audio.resample(mono, native.sample_rate, rate), rate, format="FLAC", subtype="PCM_16")
        rows.append((rel.as_posix(), ",".join(clip.labels), clip.fold))
    return _write_manifest(folder, rows, name)


def every_other_class(manifest: Manifest, classes: int) -> Manifest:
    """The clips of ``classes`` labels taken every other one in the label order (no choosing)."""
    keep = set(manifest.labels[::2][:classes])
    return manifest.filter(lambda c: c.labels[0] in keep)


def case_data(name: str, data: Path, work: Path, smoke: bool) -> tuple[str, list[str]]:
    """The ``--data`` of case ``name`` and the extra arguments of its commands (``--fold 0``)."""
    tag = "-smoke" if smoke else ""
    esc50 = read_manifest(data / "esc50")
    fold1 = ["--fold", "0"]
    if name == "esc10":
        source = read_manifest(data / "esc10")
        if not smoke:
            return str(data / "esc10"), []
        subset = pick_subset(source, **SMOKE_SUBSET)
        rows = [(c.path, ",".join(c.labels), c.fold) for c in subset]
        return str(_write_manifest(_mkdir(work / "esc10"), rows, f"manifest{tag}.csv")), []
    source = pick_subset(esc50, **SMOKE_SUBSET) if smoke else esc50
    if name == "esc50-fold1":
        if not smoke:
            return str(data / "esc50"), fold1
        rows = [(c.path, ",".join(c.labels), c.fold) for c in source]
        return str(_write_manifest(_mkdir(work / name), rows, f"manifest{tag}.csv")), fold1
    if name == "esc50-fold1-44k":
        return str(resampled_copy(source, work / "clips-44k", 44100, name=f"manifest{tag}.csv")), fold1
    if name == "esc50-20x40":
        subset = every_other_class(esc50, 20)
        if smoke:
            subset = pick_subset(subset, **SMOKE_SUBSET)
        rows = [(c.path, ",".join(c.labels), c.fold) for c in subset]
        return str(_write_manifest(_mkdir(work / name), rows, f"manifest{tag}.csv")), fold1
    if name in SHORT_CASES:
        path, _ = build_case(SHORT_CASES[name], source, work / "clips" / name, manifest_name=f"manifest{tag}.csv")
        read_case(path, source)  # the labels are all there
        return str(path), fold1
    raise SystemExit(f"unknown case {name!r}")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_train(args: list[str], run_dir: Path, log: Path) -> dict:
    """One ``soundtag train`` command, timed whole; its scores, plan and wall time."""
    command = [sys.executable, "-m", "soundtag.cli", "train", *args, "--out", str(run_dir), "--no-progress"]
    start = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}); see {log}")
    return read_run(run_dir) | {"wall_s": round(wall, 1)}


def read_run(run_dir: Path) -> dict:
    """What a finished run of ``soundtag train`` says of itself: its scores, its plan, its front
    end, and with two views each view's own top-1 (``view_top1``)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = {
        "top1": metrics["all"]["top1"],
        "map3": metrics["all"]["map@3"],
        "clips": metrics["all"]["clips"],
        "selected_on_scored_clips": metrics.get("selected_on_scored_clips", False),
    }
    plan_file = run_dir / "plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())["plan"]
        # the epochs trained: each view's own once its first fold's real epochs re-planned them, or
        # a later view was planned again once the first had finished
        view_epochs = plan.get("view_epochs") or {}
        row |= {
            "views": "+".join(v.upper() for v in plan["views"]),
            "epochs": view_epochs.get(plan["views"][0], plan["epochs"]),
            "planned_epochs": plan["epochs"],
            "view_epochs": view_epochs,
            "budget_s": plan["budget_s"],
            "expected_s": plan["expected_s"],
        }
        if len(plan["views"]) > 1:
            row["view_top1"] = {
                v: json.loads((run_dir / v / "metrics.json").read_text())["all"]["top1"] for v in plan["views"]
            }
    recipe = (run_dir / ("lh" if (run_dir / "lh").is_dir() else ".") / "recipe.yaml").read_text()
    import yaml

    r = yaml.safe_load(recipe)
    row["front_end"] = f"{r['audio']['sample_rate'] // 1000} kHz, {r['features']['n_mels']} mels"
    row.setdefault("epochs", r["training"]["epochs"])
    row.setdefault("views", r["view"]["kind"].upper())
    return row


def seed_mean(runs: list[dict]) -> dict:
    """One row from the runs of several seeds: the mean of each score, of the wall time and of the
    budget and expected time (each run plans its own), and each seed's top-1 and epochs
    (``top1_seeds``, ``epochs_seeds``); the front end is the last run's."""
    row = {k: v for k, v in runs[-1].items() if k != "seed"}
    if len(runs) > 1:
        means = [k for k in ("top1", "map3", "wall_s", "budget_s", "expected_s") if all(r.get(k) for r in runs)]
        row |= {k: round(sum(r[k] for r in runs) / len(runs), 6) for k in means}
        row["top1_seeds"] = {str(r["seed"]): r["top1"] for r in runs}
        row["epochs_seeds"] = {str(r["seed"]): r["epochs"] for r in runs}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/shapes.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(DEFAULT_ROWS), help="default: %(default)s")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="train every row once per seed (training.seed) and report the mean and the spread (default: 0, "
        "the recipes' own)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="recipe overrides (-o) for every row but the baseline, kept as rows of their own",
    )
    parser.add_argument("--smoke", action="store_true", help="10 classes x 2 clips a fold, 1-2 min budgets")
    parser.add_argument("--out", type=Path, help="runs, logs and data sets (default .cache/benchmarks/shapes[-smoke])")
    parser.add_argument(
        "--doc",
        help="markdown file to write the table into (default docs/benchmarks.md; none with --smoke or --out, "
        "whose rows are not the committed ones)",
    )
    parser.add_argument("--table-only", action="store_true", help="write the table of the rows already measured")
    args = parser.parse_args(argv)
    out = args.out or REPO / ".cache" / "benchmarks" / ("shapes-smoke" if args.smoke else "shapes")
    doc = Path(args.doc) if args.doc else (None if args.smoke or args.out else DOC)
    data = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
    results = out / "shapes.json" if args.smoke or args.out else RESULTS
    report = json.loads(results.read_text()) if results.is_file() else {"rows": {}}
    for r in report["rows"].values():  # rows from before each row named its machine: the file's
        r.setdefault("machine", report.get("machine", "unknown"))
    if not args.table_only:
        command = " ".join(["python benchmarks/shapes.py", *map(shlex.quote, argv or sys.argv[1:])])
        commands = [c for c in report.get("commands", []) if c != command]
        report |= {"machine": device_line(), "commands": [*commands, command]}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for case in [] if args.table_only else args.cases:
        data_arg, extra = case_data(case, data, out / "data", args.smoke)
        baseline_wall = report["rows"].get(f"{case}|baseline", {}).get("wall_s")
        for row in args.rows:
            if row == "baseline":
                recipe = ["--recipe", BASELINE] + (["-o", "training.epochs=1"] if args.smoke else [])
            elif row == "default":
                recipe = ["--time", "1m"] if args.smoke else []
            elif row == "default, LH + X":
                recipe = ["--views", "lh+x"] + (["--time", "1m"] if args.smoke else [])
            elif row == "default in 30 min":
                recipe = ["--time", "1m" if args.smoke else "30m"]
            else:
                if baseline_wall is None:
                    print(f"{case}: no baseline row yet, so no run at its time", file=sys.stderr)
                    continue
                recipe = ["--time", f"{baseline_wall:.0f}s"]
            overrides = [] if row == "baseline" else [a for kv in args.set for a in ("-o", kv)]
            recipe += overrides
            row = variant_name(row, [] if row == "baseline" else args.set)
            slug = row.replace(" ", "-").replace(chr(39), "").replace(",", "").replace("+", "and")
            runs = []
            for seed in args.seeds:
                # seed 0 is the recipes' own: its command is the one a user types
                seeded = [*recipe, "-o", f"training.seed={seed}"] if seed else recipe
                name = f"{case}-{slug}-{stamp}" + (f"-seed{seed}" if seed else "")
                run_dir = out / "runs" / name
                cache = out / "cache" / name  # fresh: every row pays for its features
                print(f"{case}: {row}{f' (seed {seed})' if seed else ''} ...", flush=True)
                log = _mkdir(out / "logs") / f"{name}.log"
                one = run_train(["--data", data_arg, *extra, *seeded, "--cache", str(cache)], run_dir, log)
                runs.append(one | {"seed": seed})
                print(
                    f"{case}: {row}{f' (seed {seed})' if seed else ''}: top-1 {one['top1']:.2%}, "
                    f"MAP@3 {one['map3']:.4f}, {one['wall_s'] / 60:.1f} min",
                    flush=True,
                )
            result = seed_mean(runs) | {
                "case": case,
                "row": row,
                "date": str(dt.date.today()),
                "code": code_version(),
                "machine": device_line(),
                "args": shlex.join(["soundtag", "train", "--data", data_arg, *extra, *recipe])
                + (f" [-o training.seed=S for S in {', '.join(map(str, args.seeds))}]" if len(runs) > 1 else ""),
            }
            if row == "baseline":
                baseline_wall = result["wall_s"]
            else:  # wall times compare only within a session: the baseline's of this one
                result["baseline_wall_s"] = baseline_wall
            report["rows"][f"{case}|{row}"] = result
            atomic_write_json(results, report)
    lines = table(report)
    print("\n".join(lines))
    if doc is not None:
        write_section("shapes", lines, doc)


def variant_name(row: str, overrides: list[str]) -> str:
    """``'default'``, or with overrides ``'default with training.batch_size=16'``."""
    return f"{row} with {', '.join(overrides)}" if overrides else row


def _case_rows(rows: dict, case: str) -> list[tuple[str, dict]]:
    """The rows of ``case`` in the order of :data:`ROWS`, each variant after the row it varies."""
    mine = {key.split("|", 1)[1]: r for key, r in rows.items() if key.split("|", 1)[0] == case}
    order = {row: i for i, row in enumerate(ROWS)}
    return sorted(mine.items(), key=lambda kv: (order.get(kv[0].split(" with ")[0], len(ROWS)), kv[0]))


def _top1(row: dict) -> str:
    """``'87.50%'``, or over seeds the mean and each seed's: ``'87.50% (86.25, 88.75, 87.50)'``."""
    seeds = row.get("top1_seeds")
    if not seeds:
        return f"{row['top1']:.2%}"
    return f"{row['top1']:.2%} ({', '.join(f'{v * 100:.2f}' for v in seeds.values())})"


def _views(row: dict) -> str:
    """``'LH'``; with two views each one's own top-1: ``'LH+X (85.00 / 82.00)'``."""
    scores = row.get("view_top1") if not row.get("top1_seeds") else None
    return row["views"] + (f" ({' / '.join(f'{v * 100:.2f}' for v in scores.values())})" if scores else "")


def _epochs(row: dict) -> str:
    """``'41'``; ``'200 / 150'`` where X was planned again after LH; ``'40-41'`` over seeds."""
    per_view = list((row.get("view_epochs") or {}).values())
    if len(set(per_view)) > 1 and not row.get("epochs_seeds"):
        return " / ".join(map(str, per_view))
    epochs = sorted(set((row.get("epochs_seeds") or {"": row["epochs"]}).values()))
    return "-".join(map(str, (epochs[0], epochs[-1]) if len(epochs) > 1 else epochs))


def table(report: dict) -> list[str]:
    """The markdown section: one row per case and command, the deltas against the baseline."""
    rows = report["rows"]
    dates = sorted({r["date"] for r in rows.values()})
    # a case's rows are compared with each other only; cases measured on other machines say so
    machines = list(dict.fromkeys(r.get("machine", report["machine"]) for r in rows.values()))
    mark = {m: "" if len(machines) == 1 else f" ({chr(97 + i)})" for i, m in enumerate(machines)}
    lines = [
        "## Data shapes: the default against the plain-CNN baseline (`benchmarks/shapes.py`)",
        "",
        "Each row is one `soundtag train` command as a user runs it, timed whole (features, timing, every "
        "fold of every view, the blend, scoring), with a fresh feature cache. `default` names no recipe "
        "(`auto` in the default time budget: LH alone, or LH + X blended where the clips hold two X chunks and "
        "the budget gives each view 60 epochs); `default, LH + X` is the same with both views forced "
        "(`--views lh+x`), the case for that rule; `default at the "
        "baseline's time` is the same as `default` with `--time` set to the baseline's wall time. Top-1 and MAP@3 are "
        "out of fold on the scored clips (fold 1, or all 5 folds for esc10), with the weights named before "
        "training (the last epoch); a row trained with several seeds (`--seeds`) shows the mean, each seed's "
        "top-1 in brackets, and its mean wall time. With two views, each view's own top-1 follows the views in "
        "brackets, and the epochs read `LH / X` where X trains its own. The epochs are those trained: the plan's, "
        "or what the first fold's real epochs re-planned them to. `wall / budget` is the whole command's wall time "
        "(the process included) over its budget as it ended (the default budget moves with the first fold's real "
        "epochs); over seeds, the mean wall time over the mean budget.",
        "",
        ("Machine: " if len(machines) == 1 else "Machines (a case's rows all come from one): ")
        + "; ".join(f"{m}{mark[m]}" for m in machines)
        + f". Date: {', '.join(dates)}. "
        f"Commands: {', '.join(f'`{c}`' for c in report.get('commands', []))}.",
        "",
        "| case | row | views | front-end | epochs | top-1 | vs baseline | MAP@3 | wall time | x baseline | "
        "plan (expected / budget) | wall / budget | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        base = rows.get(f"{case}|baseline")
        for row, r in _case_rows(rows, case):
            delta = f"{(r['top1'] - base['top1']) * 100:+.1f} pts" if base and row != "baseline" else ""
            ratio = f"{r['wall_s'] / r['baseline_wall_s']:.2f}x" if r.get("baseline_wall_s") else ""
            plan = (
                f"{r['expected_s'] / 60:.1f} / {r['budget_s'] / 60:.1f} min"
                if r.get("expected_s") and r.get("budget_s")
                else ""
            )
            of_budget = f"{r['wall_s'] / r['budget_s']:.0%}" if r.get("budget_s") else ""
            lines.append(
                f"| {case} | {row} | {_views(r)} | {r['front_end']} | {_epochs(r)} | {_top1(r)} | {delta} | "
                f"{r['map3']:.4f} | {r['wall_s'] / 60:.1f} min | {ratio} | {plan} | {of_budget} | "
                f"{r['code']}{mark[r.get('machine', report['machine'])]} |"
            )
    lines += ["", "Commands of the rows: " + "; ".join(f"`{r['args']}`" for r in rows.values()) + "."]
    for key, r in rows.items():
        if r.get("note"):
            lines += ["", f"{key.replace('|', ', ')}: {r['note']}"]
    if any(not r.get("baseline_wall_s") for key, r in rows.items() if not key.endswith("|baseline")):
        lines += [
            "",
            "`x baseline` is the row's wall time over the baseline's measured in the same session, before the row: "
            "the same CPU model ran the same step up to 1.4x faster in one session than another. Rows without it "
            "come from a session whose baseline row has since been measured again.",
        ]
    if any(r.get("wall_s_from_table") for r in rows.values()):
        lines += [
            "",
            "Rows measured before the results file was kept in the repository were read back from this "
            "table, so their wall times are to 0.1 min.",
        ]
    return lines


if __name__ == "__main__":
    main()
