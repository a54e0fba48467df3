"""Pictures people would rather see than read: a clip's waveform and its views.

Figures are drawn with matplotlib's object API (:class:`matplotlib.figure.Figure` on an Agg
canvas), never pyplot: nothing here selects a backend or keeps figures in a global registry,
so importing or calling it changes nothing else in the process (a notebook's or an
application's own matplotlib setup is left as it was).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from soundtag import audio
from soundtag._io import atomic_path
from soundtag.features.melspec import recipe_log_mel
from soundtag.features.views import chunk_starts, decode_for_recipe
from soundtag.recipe import Recipe


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(figure, axes)`` as ``pyplot.subplots`` returns them, on a private Agg canvas.

    ``kwargs`` go to :class:`~matplotlib.figure.Figure` (``figsize``...) except ``sharex``,
    ``sharey``, ``squeeze``, ``gridspec_kw`` and ``subplot_kw``, which go to
    :meth:`~matplotlib.figure.Figure.subplots`. The figure belongs to no pyplot state: it is
    freed like any object once unreferenced.

    Examples
    --------
    >>> fig, axes = subplots(2, 1, figsize=(4, 3))
    >>> type(fig.canvas).__name__, len(axes)
    ('FigureCanvasAgg', 2)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = {k: kwargs.pop(k) for k in ("sharex", "sharey", "squeeze", "gridspec_kw", "subplot_kw") if k in kwargs}
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **layout)


def save_png(fig, out: str | Path) -> Path:
    """Lay out ``fig`` and write it to ``out`` as a PNG atomically."""
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def _view_spectrogram(path: str | Path, recipe: Recipe) -> np.ndarray:
    return recipe_log_mel(decode_for_recipe(path, recipe).samples, recipe)


def show_clip(path: str | Path, recipes: Sequence[Recipe], out: str | Path) -> Path:
    """Write a PNG of the clip's waveform and each recipe's view spectrogram.

    The X view is drawn whole, with its chunk boundaries marked, so the overlap and the
    dropped tail are visible.
    """
    native = audio.load(path, sample_rate=recipes[0].audio.sample_rate)
    fig, axes = subplots(
        1 + len(recipes),
        1,
        figsize=(10, 2.2 + 2.6 * len(recipes)),
        gridspec_kw={"height_ratios": [0.7] + [1.0] * len(recipes)},
    )
    t = np.arange(native.samples.shape[0]) / native.sample_rate
    axes[0].plot(t, native.samples, linewidth=0.5, color="tab:blue")
    axes[0].set(
        title=f"{Path(path).name}: {native.source_duration:.2f} s, {native.native_rate} Hz, "
        f"{native.channels} ch" + (f" ({'; '.join(native.notes)})" if native.notes else ""),
        xlabel="seconds",
        ylabel="amplitude",
        xlim=(0, max(t[-1], 1e-3)),
    )
    for ax, recipe in zip(axes[1:], recipes):
        spec = _view_spectrogram(path, recipe)
        seconds = spec.shape[1] * recipe.features.hop_length / recipe.audio.sample_rate
        im = ax.imshow(
            spec, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, recipe.features.n_mels)
        )
        title = f"{recipe.name} ({recipe.view.kind.upper()} view): {spec.shape[0]} mels x {spec.shape[1]} frames"
        if recipe.view.kind == "x":
            starts = chunk_starts(
                spec.shape[1], chunk=recipe.chunk_frames, step=recipe.chunk_step, min_tail=recipe.view.min_tail
            )
            frame_s = recipe.features.hop_length / recipe.audio.sample_rate
            for s in starts:
                ax.axvline(s * frame_s, color="white", linewidth=0.8, linestyle="--")
                ax.axvline((s + recipe.chunk_frames) * frame_s, color="cyan", linewidth=0.6, linestyle=":")
            title += f", {len(starts)} chunk(s) of {recipe.chunk_frames}"
        ax.set(title=title, xlabel="seconds", ylabel="mel bin")
        fig.colorbar(im, ax=ax, label="dB")
    return save_png(fig, out)
