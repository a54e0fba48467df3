"""Feature extraction: soundtag against the original kernel's per-file librosa pipeline.

Run by hand (``make bench`` or ``python benchmarks/features.py``); results go to
docs/benchmarks.md. Each measurement runs in a fresh subprocess so that its peak memory
(the process and its decoding workers) is its own.

* kernel: per file ``librosa.load(sr)``, ``librosa.effects.trim(top_db=60)``, head crop or
  centred padding, ``librosa.feature.melspectrogram``, ``librosa.power_to_db``, one process;
* soundtag first run: ``extract_features`` into an empty cache (decode workers + batched
  PyTorch log-mel + store writes);
* soundtag second run: the same call again, served from the cache;
* decode-only: the limit that decoding sets, ``soundfile.read`` of every file in ``--workers``
  processes and nothing else (the goal: ``extract_features`` at >= 0.8x of it);
* decode + log-mel: the same plus soundtag's log-mel module on each clip and nothing else, what
  the two steps every clip needs reach alone (the rest of extraction is soundtag's gap to it).
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
        spec = librosa.feature.melspectrogram(
            y=y,
            sr=recipe.audio.sample_rate,
            n_fft=f.n_fft,
            hop_length=f.hop_length,
            n_mels=f.n_mels,
            fmin=f.fmin,
            fmax=f.fmax or recipe.audio.sample_rate / 2,
        )
        librosa.power_to_db(spec).astype(np.float32)
    return {"seconds": time.perf_counter() - start}


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _cpu_per_clip(before: tuple[float, float], clips: int) -> dict:
    """Milliseconds of CPU a clip since ``before``: the main process's and the workers'
    (which have ended and been joined by then)."""
    after = _cpu_seconds()
    return {"main_cpu_ms": 1e3 * (after[0] - before[0]) / clips, "workers_cpu_ms": 1e3 * (after[1] - before[1]) / clips}


def run_soundtag(manifest, recipe, cache: str, workers: int) -> dict:
    from soundtag.features import extract_features

    cpu = _cpu_seconds()
    start = time.perf_counter()
    _, first = extract_features(manifest, recipe, cache_dir=cache, workers=workers, progress=False)
    first_s = time.perf_counter() - start
    first_cpu = _cpu_per_clip(cpu, len(manifest))
    start = time.perf_counter()
    _, second = extract_features(manifest, recipe, cache_dir=cache, workers=workers, progress=False)
    second_s = time.perf_counter() - start
    assert first.computed == len(manifest) - len(first.failures) and second.cached == first.computed
    return {"seconds": first_s, "cached_seconds": second_s, **first_cpu}


def _decode_one(path: str) -> int:
    import soundfile as sf

    return sf.read(path, dtype="float32", always_2d=True)[0].shape[0]


def run_decode_only(manifest, workers: int) -> dict:
    """Seconds to decode every clip with soundfile in ``workers`` processes, nothing else: only the
    sample count comes back, so the time is decoding and the pool's own hand-offs."""
    import multiprocessing as mp

    paths = [clip.path for clip in manifest]
    cpu = _cpu_seconds()
    start = time.perf_counter()
    if workers:
        with mp.get_context("fork").Pool(workers) as pool:
            samples = sum(pool.imap_unordered(_decode_one, paths, chunksize=16))
    else:
        samples = sum(map(_decode_one, paths))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "samples": samples, **_cpu_per_clip(cpu, len(paths))}


_LOGMEL = None  # (the case's LogMel, view samples), made before the pool forks so that each worker inherits it


def _decode_logmel_one(path: str) -> int:
    import soundfile as sf
    import torch

    from soundtag.audio import head

    logmel, view_samples = _LOGMEL
    samples = sf.read(path, dtype="float32", always_2d=True)[0].mean(axis=1, dtype="float32")
    with torch.no_grad():  # the view's samples, as extraction log-mels them
        return logmel(torch.from_numpy(head(samples, view_samples))[None]).shape[-1]


def run_decode_logmel(manifest, recipe, workers: int) -> dict:
    """Seconds to decode every clip and take its log-mel (the recipe's, soundtag's own module)
    in ``workers`` processes, nothing else: no trim, no checks, no hand-off of the arrays, no
    store: the two steps every clip needs, alone. soundtag's gap to it is the rest of extraction."""
    import multiprocessing as mp

    import torch

    from soundtag.features.melspec import LogMel

    global _LOGMEL
    _LOGMEL = LogMel.from_recipe(recipe), recipe.view_samples
    torch.set_num_threads(1)
    paths = [clip.path for clip in manifest]
    cpu = _cpu_seconds()
    start = time.perf_counter()
    if workers:
        # One thread a process, as extraction's DataLoader workers set it in each of them.
        with mp.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            frames = sum(pool.imap_unordered(_decode_logmel_one, paths, chunksize=16))
    else:
        frames = sum(map(_decode_logmel_one, paths))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "frames": frames, **_cpu_per_clip(cpu, len(paths))}


def one(case: str, pipeline: str, workers: int) -> dict:
    """Measure one pipeline on one case in this process (called in a fresh subprocess)."""
    import torch

    from soundtag.manifest import read_manifest
    from soundtag.recipe import load_recipe

    folder, recipe_name = CASES[case]
    manifest = read_manifest(Path(os.environ["SOUNDTAG_DATA"]) / folder)
    recipe = load_recipe(recipe_name)
    if pipeline == "decode":
        run_decode_only(manifest.filter(lambda c: c is manifest[0]), 0)
        out = run_decode_only(manifest, workers)
    elif pipeline == "logmel":
        run_decode_logmel(manifest.filter(lambda c: c is manifest[0]), recipe, 0)
        out = run_decode_logmel(manifest, recipe, workers)
    elif pipeline == "kernel":
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
    # Our 2-core machines vary: with native bf16, training's precision auto is bf16 (2x faster).
    from soundtag.hardware import cpu_native_bf16

    vector = "native bf16" if cpu_native_bf16() else "no native bf16"
    return f"{cpu} ({vector}), {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def caption(machine: str, date: str, command: str | list[str], *, what: str = "", code: str = "") -> str:
    """The caption a benchmark writes directly above each of its tables: what the table holds
    (optional), then the machine, the date, the code (optional) and the command(s) of the run
    that made it, on one line."""
    commands = [command] if isinstance(command, str) else list(dict.fromkeys(command))
    parts = [what.rstrip(". ")] if what else []
    parts += [f"Machine: {machine}", f"Date: {date}"] + ([f"Code: {code}"] if code else [])
    parts.append(("Command: " if len(commands) == 1 else "Commands: ") + ", ".join(f"`{c}`" for c in commands))
    return ". ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=2, metavar=("CASE", "PIPELINE"), help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3, help="decode-only / soundtag pairs per case (median kept)")
    parser.add_argument(
        "--write",
        default=str(REPO / "docs" / "benchmarks.md"),
        help="markdown file whose 'features' section is replaced ('' to skip)",
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, workers=args.workers)))
        return
    os.environ.setdefault("SOUNDTAG_DATA", str(REPO.parent / "shared" / "data"))
    rows = []

    def measure(case: str, pipeline: str) -> dict:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", case, pipeline, "--workers", str(args.workers)],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    for case in args.cases:
        k = measure(case, "kernel")
        # Decode-only and soundtag alternate, so that each soundtag run has a decode-only run next
        # to it in time: on a shared 2-core machine the same run moves by 20-30% from minute to
        # minute, and the ratio of neighbours is steadier than either rate.
        # Decode + log-mel runs between them: decoding and the log-mel alone, in the same run.
        triples = [
            (measure(case, "decode"), measure(case, "logmel"), measure(case, "soundtag")) for _ in range(args.repeats)
        ]
        ratios = [d["seconds"] / s["seconds"] for d, _, s in triples]
        ceilings = [d["seconds"] / f["seconds"] for d, f, _ in triples]
        mid = sorted(range(len(triples)), key=lambda i: ratios[i])[len(triples) // 2]  # the median triple
        d, f, s = triples[mid]
        n = k["clips"]
        row = {
            "case": case,
            "clips": n,
            "repeats": args.repeats,
            "kernel_cps": n / k["seconds"],
            "soundtag_cps": n / s["seconds"],
            "speedup": k["seconds"] / s["seconds"],
            "decode_cps": n / d["seconds"],
            "vs_decode": ratios[mid],
            "vs_decode_all": sorted(ratios),
            "logmel_cps": n / f["seconds"],
            "logmel_vs_decode": ceilings[mid],
            "logmel_vs_decode_all": sorted(ceilings),
            "soundtag_vs_logmel": f["seconds"] / s["seconds"],
            "cached_cps": n / s["cached_seconds"],
            "cache_speedup": s["seconds"] / s["cached_seconds"],
            "kernel_peak_mb": k["peak_mb"],
            "soundtag_peak_mb": s["peak_mb"],
            # Where the time goes: CPU a clip, in the workers and in the main process.
            "decode_cpu_ms": d["workers_cpu_ms"] + d["main_cpu_ms"],
            "logmel_cpu_ms": f["workers_cpu_ms"] + f["main_cpu_ms"],
            "soundtag_workers_cpu_ms": s["workers_cpu_ms"],
            "soundtag_main_cpu_ms": s["main_cpu_ms"],
        }
        rows.append(row)
        print(json.dumps(row))
    if args.write:
        write_markdown(Path(args.write), rows, args.workers, args.repeats)


def write_markdown(path: Path, rows: list[dict], workers: int, repeats: int) -> None:
    lines = [
        "<!-- features:start -->",
        "## Feature extraction (`benchmarks/features.py`)",
        "",
        "- Kernel: one process, per file `librosa.load` + `trim(top_db=60)` + head crop + "
        "`melspectrogram` + `power_to_db`. soundtag: `extract_features`, "
        f"{workers} decoding workers + batched PyTorch log-mel + store writes, into an empty cache; "
        "then the same call again, served from the cache. Decode-only: `soundfile.read` of every file in "
        f"{workers} processes and nothing else, the limit decoding sets (goal: soundtag >= 0.8x of it). "
        "Decode + log-mel: the same, plus soundtag's own log-mel module on each decoded clip (one thread a "
        "process, as in extraction) on the view's samples and nothing else (no trim, checks, hand-off of the arrays or store): "
        "what the two steps every clip needs reach alone. "
        "Each pipeline is warmed up on one clip first (imports, first-call caches) and runs in a fresh process, "
        "one after the other, with the files in the page cache. Decode-only, decode + log-mel and soundtag "
        f"alternate {repeats} times; the row is the triple with the median soundtag / decode-only ratio "
        "(every ratio in its own column). "
        "Peak memory is the process plus its largest child. CPU a clip: user + system time of the "
        "decoding processes and of the main process (of the median triple's runs), divided by the clips.",
        "",
        caption(
            machine(),
            dt.date.today().isoformat(),
            f"python benchmarks/features.py --workers {workers} --repeats {repeats}",
            what="Feature extraction, clips per second and their ratios (SOUNDTAG_DATA=../shared/data)",
        ),
        "",
        "| case | clips | decode-only clips/s | decode + log-mel clips/s | decode + log-mel vs decode-only | "
        "soundtag clips/s | soundtag vs decode-only | soundtag vs decode + log-mel | kernel clips/s | "
        "soundtag vs kernel | cached clips/s | cached vs first run | kernel peak MB | soundtag peak MB | "
        "every soundtag / decode-only ratio | every decode + log-mel / decode-only ratio | "
        "CPU ms a clip: decode-only | decode + log-mel | soundtag workers | soundtag main |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['clips']} | {r['decode_cps']:.0f} | {r['logmel_cps']:.0f} | "
            f"{r['logmel_vs_decode']:.2f}x | {r['soundtag_cps']:.0f} | "
            f"{r['vs_decode']:.2f}x | {r['soundtag_vs_logmel']:.2f}x | {r['kernel_cps']:.0f} | "
            f"{r['speedup']:.2f}x | {r['cached_cps']:.0f} | {r['cache_speedup']:.0f}x | "
            f"{r['kernel_peak_mb']:.0f} | {r['soundtag_peak_mb']:.0f} | "
            f"{', '.join(f'{x:.2f}' for x in r['vs_decode_all'])} | "
            f"{', '.join(f'{x:.2f}' for x in r['logmel_vs_decode_all'])} | {r['decode_cpu_ms']:.2f} | "
            f"{r['logmel_cpu_ms']:.2f} | {r['soundtag_workers_cpu_ms']:.2f} | {r['soundtag_main_cpu_ms']:.2f} |"
        )
    lines.append("<!-- features:end -->")
    section = "\n".join(lines)
    text = (
        path.read_text()
        if path.is_file()
        else "# Benchmarks\n\nRun by hand; each section is rewritten by its script.\n"
    )
    if "<!-- features:start -->" in text:
        head, rest = text.split("<!-- features:start -->", 1)
        text = head + section + rest.split("<!-- features:end -->", 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
