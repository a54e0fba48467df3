"""Scale benchmark: feature extraction and one training epoch as the manifest grows 10 times.

Run by hand; rewrites the ``scale`` section of docs/benchmarks.md::

    python benchmarks/scale.py                       # 5,000 and 50,000 clips
    python benchmarks/scale.py --sizes 2000 20000    # smaller, for a quick look

Each size is a synthetic dataset of real ESC-50 audio repeated under distinct names
(symbolic links, so every clip is a distinct file to the feature store and is decoded and
computed again), with ESC-50's labels and five stratified folds. For each size, two commands
run as a user would run them, in a fresh feature cache:

1. ``soundtag features`` with the ``esc50-x`` view (2 decoding workers);
2. ``soundtag train --fold 0`` for one epoch of a small VGG (``widths [16, 32]``), which also
   validates on and predicts the held-out fifth.

A sampler thread reads ``/proc`` every 0.2 s and records the peak memory of the command's
whole process tree (the command and its DataLoader workers): **anonymous** memory (the heap:
what the program holds) and total resident memory, which also counts the store's
memory-mapped pages (page cache the kernel reclaims when memory runs short).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = Path(os.environ.get("SOUNDTAG_DATA", REPO.parent / "shared" / "data"))
SOUNDTAG = [sys.executable, "-m", "soundtag.cli"]
# The streaming, memory-mapped path is what must stay flat (50,000 X clips of 48 mels would fit
# the device path's 2 GiB CPU budget, whose memory grows with the data by design).
MODEL = [
    "-o",
    "training.model=vgg",
    "-o",
    "training.model_args={widths: [16, 32]}",
    "-o",
    "training.epochs=1",
    "-o",
    "training.batch_size=64",
    "-o",
    "training.folds=5",
    "-o",
    "training.fold_strategy=stratified",
    "-o",
    "training.device_data=off",
]


def make_dataset(n: int, folder: Path) -> Path:
    """``n`` links to ESC-50 clips under distinct names, and a CSV naming them with labels."""
    with open(DATA / "esc50" / "meta" / "esc50.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    audio = folder / "audio"
    audio.mkdir(parents=True)
    out = folder / "clips.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "labels"])
        for i in range(n):
            row = rows[i % len(rows)]
            name = f"{i:06d}-{row['filename']}"
            os.symlink(DATA / "esc50" / "audio" / row["filename"], audio / name)
            w.writerow([f"audio/{name}", row["category"]])
    return out


class TreeMemory(threading.Thread):
    """Peak anonymous and resident memory (bytes) of a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_anon = self.peak_rss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            anon = rss = 0
            for pid in self._tree():
                status = _status(pid)
                anon += status.get("RssAnon", 0)
                rss += status.get("VmRSS", 0)
            self.peak_anon, self.peak_rss = max(self.peak_anon, anon), max(self.peak_rss, rss)
            self.stop.wait(self.interval)

    def _tree(self) -> list[int]:
        parent = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                ppid = _status(int(entry)).get("PPid")
                if ppid is not None:
                    parent[int(entry)] = ppid
        tree, frontier = {self.pid}, [self.pid]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parent.items() if pp == p and c not in tree]
            tree.update(kids)
            frontier.extend(kids)
        return list(tree)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "PPid":
                out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


def measured(cmd: list[str], cwd: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mem = TreeMemory(proc.pid)
    mem.start()
    _, err = proc.communicate()
    mem.stop.set()
    mem.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - start, "peak_anon": mem.peak_anon, "peak_rss": mem.peak_rss}


def run_size(n: int, work: Path) -> dict:
    folder = work / f"n{n}"
    data = make_dataset(n, folder)
    cache = folder / "cache"
    feats = measured(
        SOUNDTAG
        + [
            "features",
            "--data",
            str(data),
            "--layout",
            "csv",
            "--recipe",
            "esc50-x",
            "--cache",
            str(cache),
            "--no-progress",
        ],
        folder,
    )
    # The extraction's own time, without the interpreter's start-up (about 5 s of imports).
    feats["work_seconds"] = json.loads(next(cache.glob("x-*/extraction.json")).read_text())["wall_seconds"]
    train = measured(
        SOUNDTAG
        + [
            "train",
            "--data",
            str(data),
            "--layout",
            "csv",
            "--recipe",
            "esc50-x",
            *MODEL,
            "--fold",
            "0",
            "--out",
            str(folder / "run"),
            "--cache",
            str(cache),
            "--no-progress",
        ],
        folder,
    )
    done = json.loads((folder / "run" / "fold-0" / "done.json").read_text())
    train["train_clips"], train["fold_seconds"] = done["train_clips"], done["seconds"]
    train["eval_clips"] = len(done["clips"]) + done["val_clips"]
    return {"clips": n, "features": feats, "train": train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    from features import caption, machine
    from train import write_section

    work = args.work or Path(tempfile.mkdtemp(prefix="soundtag-scale-"))
    try:
        results = [run_size(n, work) for n in sorted(args.sizes)]
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    gb = 1 << 30
    lines = [
        "## Scale: 10x more clips (`benchmarks/scale.py`)",
        "",
        "- data: real ESC-50 clips repeated under distinct names; `esc50-x` view; one epoch of a small VGG on "
        "fold 0 (4/5 of the clips), then validation and out-of-fold prediction of the other fifth",
        "",
        caption(
            machine(),
            dt.date.today().isoformat(),
            f"python benchmarks/scale.py --sizes {' '.join(map(str, sorted(args.sizes)))}",
            what="Feature extraction, then one training epoch with evaluation, at each size",
        ),
        "",
        "| clips | features: s | clips/s | peak heap | peak resident | train epoch + eval: s | train clips/s "
        "| peak heap | peak resident |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        f, t = r["features"], r["train"]
        lines.append(
            f"| {r['clips']:,} | {f['work_seconds']:.0f} | {r['clips'] / f['work_seconds']:.0f} | "
            f"{f['peak_anon'] / gb:.2f} GB | {f['peak_rss'] / gb:.2f} GB | {t['fold_seconds']:.0f} | "
            f"{t['train_clips'] / t['fold_seconds']:.0f} | {t['peak_anon'] / gb:.2f} GB | {t['peak_rss'] / gb:.2f} GB |"
        )
    small, big = results[0], results[-1]
    growth = big["clips"] / small["clips"]

    def ratio(stage: str, key: str) -> float:
        return big[stage][key] / small[stage][key]

    feat_speed = (big["clips"] / big["features"]["work_seconds"]) / (small["clips"] / small["features"]["work_seconds"])
    train_speed = (big["train"]["train_clips"] / big["train"]["fold_seconds"]) / (
        small["train"]["train_clips"] / small["train"]["fold_seconds"]
    )
    lines += [
        "",
        f"From {small['clips']:,} to {big['clips']:,} clips ({growth:.0f}x): peak heap x{ratio('features', 'peak_anon'):.2f} "
        f"in feature extraction and x{ratio('train', 'peak_anon'):.2f} in training (goal: within 20%); throughput per "
        f"clip x{feat_speed:.2f} (features) and x{train_speed:.2f} (training) (goal: within 20%). Peak resident memory "
        f"x{ratio('features', 'peak_rss'):.2f} / x{ratio('train', 'peak_rss'):.2f}: it includes the memory-mapped store's "
        "pages, which are page cache, not held by the program.",
    ]
    write_section("scale", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
