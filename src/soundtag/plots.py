"""Pictures people would rather see than read: a clip's waveform and its views."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from soundtag import audio
from soundtag._io import atomic_path
from soundtag.features.views import decode_for_recipe
from soundtag.features.melspec import log_mel
from soundtag.recipe import Recipe
from soundtag.features.views import chunk_starts


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is ever needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, out: str | Path) -> Path:
    """Lay out ``fig``, write it to ``out`` as a PNG atomically, and close it."""
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
    return out


def _view_spectrogram(path: str | Path, recipe: Recipe) -> np.ndarray:
    wav = decode_for_recipe(path, recipe)
    f = recipe.features
    return log_mel(wav.samples, sample_rate=recipe.audio.sample_rate, n_fft=f.n_fft,
                   hop_length=f.hop_length, n_mels=f.n_mels, fmin=f.fmin, fmax=f.fmax, top_db=f.top_db)


def show_clip(path: str | Path, recipes: Sequence[Recipe], out: str | Path) -> Path:
    """Write a PNG of the clip's waveform and each recipe's view spectrogram.

    The X view is drawn whole, with its chunk boundaries marked, so the overlap and the
    dropped tail are visible.
    """
    plt = pyplot()
    native = audio.load(path, sample_rate=recipes[0].audio.sample_rate)
    fig, axes = plt.subplots(1 + len(recipes), 1, figsize=(10, 2.2 + 2.6 * len(recipes)),
                             gridspec_kw={"height_ratios": [0.7] + [1.0] * len(recipes)})
    t = np.arange(native.samples.shape[0]) / native.sample_rate
    axes[0].plot(t, native.samples, linewidth=0.5, color="tab:blue")
    axes[0].set(title=f"{Path(path).name}: {native.source_duration:.2f} s, {native.native_rate} Hz, "
                f"{native.channels} ch" + (f" ({'; '.join(native.notes)})" if native.notes else ""),
                xlabel="seconds", ylabel="amplitude", xlim=(0, max(t[-1], 1e-3)))
    for ax, recipe in zip(axes[1:], recipes):
        spec = _view_spectrogram(path, recipe)
        seconds = spec.shape[1] * recipe.features.hop_length / recipe.audio.sample_rate
        im = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma",
                       extent=(0, seconds, 0, recipe.features.n_mels))
        title = f"{recipe.name} ({recipe.view.kind.upper()} view): {spec.shape[0]} mels x {spec.shape[1]} frames"
        if recipe.view.kind == "x":
            starts = chunk_starts(spec.shape[1], chunk=recipe.chunk_frames, step=recipe.chunk_step,
                                  min_tail=recipe.view.min_tail)
            frame_s = recipe.features.hop_length / recipe.audio.sample_rate
            for s in starts:
                ax.axvline(s * frame_s, color="white", linewidth=0.8, linestyle="--")
                ax.axvline((s + recipe.chunk_frames) * frame_s, color="cyan", linewidth=0.6, linestyle=":")
            title += f", {len(starts)} chunk(s) of {recipe.chunk_frames}"
        ax.set(title=title, xlabel="seconds", ylabel="mel bin")
        fig.colorbar(im, ax=ax, label="dB")
    return save_png(fig, out)
