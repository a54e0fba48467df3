"""Feature extraction: soundtag against the original kernel's per-file librosa pipeline.

Run by hand (``make bench`` or ``python benchmarks/features.py``); results go to
docs/benchmarks.md. Each measurement runs in a fresh subprocess so that its peak memory
(the process and its decoding workers) is its own.

* kernel: per file ``librosa.load(sr)``, ``librosa.effects.trim(top_db=60)``, head crop or
  centred padding, ``librosa.feature.melspectrogram``, ``librosa.power_to_db``, one process;
* soundtag first run: ``extract_features`` into an empty cache (decode workers + batched
  PyTorch log-mel + store writes);
* soundtag second run: the same call again, served from the cache.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {  # name: (dataset folder under SOUNDTAG_DATA, recipe)
    "esc10/fsd2018-lh": ("esc10", "fsd2018-lh"),
    "esc50/esc50-lh": ("esc50", "esc50-lh"),
}


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def run_kernel(manifest, recipe) -> dict:
    import librosa
    import numpy as np

    f = recipe.features
    n = recipe.view_samples
    start = time.perf_counter()
    for clip in manifest:
        y, _ = librosa.load(clip.path, sr=recipe.audio.sample_rate)
        y, _ = librosa.effects.trim(y, top_db=recipe.audio.trim_db)
        if len(y) > n:
            y = y[:n]
        else:
            left = (n - len(y)) // 2
            y = np.pad(y, (left, n - len(y) - left))
        spec = librosa.feature.melspectrogram(y=y, sr=recipe.audio.sample_rate, n_fft=f.n_fft,
                                              hop_length=f.hop_length, n_mels=f.n_mels, fmin=f.fmin,
                                              fmax=f.fmax or recipe.audio.sample_rate / 2)
        librosa.power_to_db(spec).astype(np.float32)
    return {"seconds": time.perf_counter() - start}


def run_soundtag(manifest, recipe, cache: str, workers: int) -> dict:
    from soundtag.features import extract_features

    start = time.perf_counter()
    _, first = extract_features(manifest, recipe, cache_dir=cache, workers=workers, progress=False)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    _, second = extract_features(manifest, recipe, cache_dir=cache, workers=workers, progress=False)
    second_s = time.perf_counter() - start
    assert first.computed == len(manifest) - len(first.failures) and second.cached == first.computed
    return {"seconds": first_s, "cached_seconds": second_s}


def one(case: str, pipeline: str, workers: int) -> dict:
    """Measure one pipeline on one case in this process (called in a fresh subprocess)."""
    import torch

    from soundtag.recipe import load_recipe
    from soundtag.manifest import read_manifest

    folder, recipe_name = CASES[case]
    manifest = read_manifest(Path(os.environ["SOUNDTAG_DATA"]) / folder)
    recipe = load_recipe(recipe_name)
    if pipeline == "kernel":
        # Warm librosa up on one clip (imports, first-call caches) so steady state is timed.
        run_kernel(manifest.filter(lambda c: c is manifest[0]), recipe)
        out = run_kernel(manifest, recipe)
    else:
        # The same warm-up as the kernel's: imports and first-call caches on one clip.
        with tempfile.TemporaryDirectory() as cache:
            run_soundtag(manifest.filter(lambda c: c is manifest[0]), recipe, cache, 0)
        with tempfile.TemporaryDirectory() as cache:
            out = run_soundtag(manifest, recipe, cache, workers)
    out.update(clips=len(manifest), peak_mb=_peak_mb(), torch_threads=torch.get_num_threads())
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("CASE", "PIPELINE"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--write", default=str(REPO / "docs" / "benchmarks.md"),
                        help="markdown file whose 'features' section is replaced ('' to skip)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, workers=args.workers)))
        return
    os.environ.setdefault("SOUNDTAG_DATA", str(REPO.parent / "shared" / "data"))
    rows = []
    for case in args.cases:
        result = {}
        for pipeline in ("kernel", "soundtag"):
            proc = subprocess.run([sys.executable, __file__, "--one", case, pipeline,
                                   "--workers", str(args.workers)], check=True, capture_output=True, text=True)
            result[pipeline] = json.loads(proc.stdout.strip().splitlines()[-1])
        k, s = result["kernel"], result["soundtag"]
        n = k["clips"]
        row = {
            "case": case, "clips": n,
            "kernel_cps": n / k["seconds"], "soundtag_cps": n / s["seconds"],
            "speedup": k["seconds"] / s["seconds"],
            "cached_cps": n / s["cached_seconds"], "cache_speedup": s["seconds"] / s["cached_seconds"],
            "kernel_peak_mb": k["peak_mb"], "soundtag_peak_mb": s["peak_mb"],
        }
        rows.append(row)
        print(json.dumps(row))
    if args.write:
        write_markdown(Path(args.write), rows, args.workers)


def write_markdown(path: Path, rows: list[dict], workers: int) -> None:
    lines = [
        "<!-- features:start -->",
        "## Feature extraction (`benchmarks/features.py`)",
        "",
        f"- Date: {dt.date.today().isoformat()}",
        f"- Machine: {machine()}",
        f"- Command: `python benchmarks/features.py --workers {workers}` (SOUNDTAG_DATA=../shared/data)",
        "- Kernel: one process, per file `librosa.load` + `trim(top_db=60)` + head crop + "
        "`melspectrogram` + `power_to_db`. soundtag: `extract_features`, "
        f"{workers} decoding workers + batched PyTorch log-mel + store writes, into an empty cache; "
        "then the same call again, served from the cache. Both pipelines are warmed up on one clip first "
        "(imports, first-call caches). Peak memory is the process plus its largest child.",
        "",
        "| case | clips | kernel clips/s | soundtag clips/s | speed-up | cached clips/s | cached vs first run | kernel peak MB | soundtag peak MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['clips']} | {r['kernel_cps']:.0f} | {r['soundtag_cps']:.0f} | "
                     f"{r['speedup']:.2f}x | {r['cached_cps']:.0f} | {r['cache_speedup']:.0f}x | "
                     f"{r['kernel_peak_mb']:.0f} | {r['soundtag_peak_mb']:.0f} |")
    lines.append("<!-- features:end -->")
    section = "\n".join(lines)
    text = path.read_text() if path.is_file() else "# Benchmarks\n\nRun by hand; each section is rewritten by its script.\n"
    if "<!-- features:start -->" in text:
        head, rest = text.split("<!-- features:start -->", 1)
        text = head + section + rest.split("<!-- features:end -->", 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
