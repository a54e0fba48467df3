"""A recipe chosen from the data: ``soundtag train --recipe auto``.

:func:`auto_recipe` reads the headers of a dataset's files (durations, native rates, channels
where the manifest has them), counts its clips and labels, and picks every field of an
ordinary :class:`~soundtag.recipe.Recipe` by the explicit rules of :data:`AUTO_RULES`; each choice comes back
with a line saying why, and ``section.key=value`` overrides apply last and win.

The rules are :data:`AUTO_RULES`: for each field, the rule in words and the line printed when
it is applied, filled with what the rule found in the data. The documentation's table is made
from the same entries (:func:`rules_markdown`), so a rule is written once.

The optimiser follows the baseline: AdamW (weight decay 0.01), one-cycle to 3e-3, batch 32.

Examples
--------
>>> recipe, reasons = auto_recipe(manifest, cpu_count=2)  # doctest: +SKIP
>>> recipe.audio.sample_rate, recipe.view.duration, recipe.training.epochs  # doctest: +SKIP
(8000, 1.0, 75)
>>> reasons[1]  # doctest: +SKIP
'sample rate 8000 Hz: 100% of clips are 8000 Hz natively; ...'
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from soundtag import hardware
from soundtag.errors import DataError, ParameterError
from soundtag.manifest.durations import as_durations, duration_summary
from soundtag.planning import MIN_EPOCHS_PER_VIEW
from soundtag.recipe import AUTO_VIEWS, apply_override, recipe_from_dict

__all__ = [
    "AUTO_VIEWS",
    "DataProfile",
    "auto_recipe",
    "auto_recipes",
    "choose_chunk",
    "choose_views",
    "choose_model",
    "choose_resolution",
    "choose_sample_rate",
    "choose_window",
    "profile_data",
]


STANDARD_RATES = (8000, 16000, 22050, 32000, 44100)
# The cheaper resolution stands until a dearer one wins at equal wall time on two data shapes.
# 32 kHz / 128 mels cost twice the cells of 16 kHz / 64 mels and gained nothing where measured:
# on ESC-10 esc50-cpu-lh scored 88.50% at 32 kHz against 89.00% at 16 kHz (docs/benchmarks.md).
MAX_RATE = 16000
N_MELS = 64
WINDOW_QUANTILE = 90
WINDOW_RANGE = (0.5, 10.0)
CHUNK_RANGE = (0.5, 4.0)
SHORT_WINDOW = 2.0  # a window up to this long gets the 10 ms hop
FFT_SECONDS = 0.040
SMALL_VGG = [16, 32, 64, 128]
MEDIUM_VGG = [32, 64, 128, 256]
LARGE_DATA = 5000  # clips from which a GPU gets the full VGG
#: The mel bins a sample may move up or down, of :data:`N_MELS` (from 20 Hz to 8 kHz, two bins
#: above 1 kHz are 10% in frequency by ``librosa.mel_frequencies``, about 1.7 semitones). It costs
#: nothing a step. At the baseline's wall time the default scored more with it on each of three
#: data shapes (the figures are in the printed reason and docs/benchmarks.md, data shapes), where
#: a second time and mel mask did not; at the default budget ESC-50 fold 1 scored less with it over
#: three seeds, within the 3 points its seeds spread.
FREQ_SHIFT_BINS = 2
X_MIN_CHUNKS = 2  # the X view is trained when the median clip holds this many chunks
#: Epochs a recipe chosen from the data states before ``soundtag train`` times this machine's
#: steps and fits them to the time budget (:mod:`soundtag.planning`).
PROVISIONAL_EPOCHS = {"cpu": 30, "gpu": 60}


@dataclass(frozen=True)
class AutoRule:
    """One rule of the ``auto`` recipe.

    Attributes
    ----------
    field : the recipe field(s) it sets, as the documentation names them
    rule : the rule in words, as the documentation's table shows it
    reasons : the line printed when it is applied, a :meth:`str.format` template over what the rule
        found; one template per outcome where the rule has several (keyed by outcome)
    """

    field: str
    rule: str
    reasons: dict[str, str]

    def explain(self, outcome: str = "", **found) -> str:
        """The printed line for ``outcome``, filled with ``found``."""
        return self.reasons[outcome].format(**found)


_RATES = "/".join(map(str, STANDARD_RATES))

#: Every rule of the ``auto`` recipe, in the order they are applied and printed.
AUTO_RULES: dict[str, AutoRule] = {
    "sample_rate": AutoRule(
        "audio.sample_rate",
        f"the median native rate snapped down to {_RATES} Hz, at most {MAX_RATE}: the typical clip is never "
        "upsampled, and a higher rate has not yet earned its cost",
        {
            "": "sample rate {rate} Hz: {share:.0%} of clips are {common} Hz natively; the rule takes the median "
            "native rate ({median} Hz) snapped down to a standard rate (" + _RATES + "), at most {cap} Hz, so the "
            "typical clip is never upsampled{upsampled}{capped}"
        },
    ),
    "window": AutoRule(
        "view.duration (LH)",
        f"the {WINDOW_QUANTILE}th percentile of the durations, to 0.1 s, "
        f"within {WINDOW_RANGE[0]:g}-{WINDOW_RANGE[1]:g} s",
        {
            "": "LH window {window:g} s: the {quantile:g}th percentile of the clip durations is {q:.2f} s, to the "
            "nearest 0.1 s{clipped}; {whole:.0%} of clips fit in it (to 0.05 s)"
        },
    ),
    "chunk": AutoRule(
        "view.duration (X chunk)",
        f"half the median duration, to 0.1 s, within {CHUNK_RANGE[0]:g}-{CHUNK_RANGE[1]:g} s and the LH window",
        {
            "": "X chunk {chunk:g} s: half the median duration ({median:.2f} s), to the nearest 0.1 s, within "
            "{lo:g}-{hi:g} s and at most the LH window ({window:g} s)"
        },
    ),
    "resolution": AutoRule(
        "features",
        f"n_fft the power of two above {FFT_SECONDS * 1000:g} ms; hop 10 ms for windows up to {SHORT_WINDOW:g} s, "
        f"else 20 ms; {N_MELS} mels; 20 Hz to sr/2",
        {
            "": "mel resolution: n_fft {n_fft} (the next power of two of {fft_ms:g} ms), hop {hop} ({hop_ms:g} ms: "
            "{why_hop}), " + str(N_MELS) + " mels, 20 Hz to {nyquist:g} Hz"
        },
    ),
    "padding": AutoRule(
        "view.padding",
        "`repeat` when the median clip is under half the view, else `center`",
        {
            "repeat": "padding repeat: the median clip ({median:.2f} s) is shorter than half the {duration:g} s view, "
            "so the clip is repeated to fill it",
            "center": "padding center: the median clip ({median:.2f} s) is at least half the {duration:g} s view, "
            "so it is centred",
        },
    ),
    "normalization": AutoRule(
        "view.normalization, view.normalize_over",
        "over the sound's frames only, never the padding: LH `global`, X `per_feature`",
        {
            "global": "normalisation global over the sound's frames only, never the padding: one mean and std of the "
            "training clips, as the plain-CNN baseline",
            "per_feature": "normalisation per_feature over the sound's frames only, never the padding: each mel bin "
            "by the training clips' mean and std, as the built-in X recipes",
        },
    ),
    "augment": AutoRule(
        "training.augment",
        "mixup; no random erasing; a roll of up to half the view, one time mask (16%) and one mel mask (12.5%), "
        f"all relative to the sound; a move of up to {FREQ_SHIFT_BINS} mel bins up or down",
        {
            "": "augmentation: mixup (alpha 1); no random erasing (sized for the window it wipes out short events: "
            "on 1 s clips in 5 s views top-1 went from 34.8% to 80.2% without it); a time roll of up to half the "
            "view, never pushing the sound out of it; one time mask (up to 16%) and one mel mask (up to 12.5%) "
            f"of the sound; a move of up to {FREQ_SHIFT_BINS} of the {N_MELS} mel bins up or down (at the baseline's "
            "wall time it scored 91.25% against 89.17% without it on a 20-class subset over three seeds, 89.25% "
            "against 87.50% on ESC-10 and 83.00% against 80.75% on ESC-50 fold 1; at the default budget fold 1 "
            "scored 79.25% with it against 81.08% without, over three seeds that spread 3 points)"
        },
    ),
    "model": AutoRule(
        "training.model",
        f"CPU: `plain-cnn` with max-pooling ahead of each block's BatchNorm + ReLU (`pool_before_norm`, as in the CPU "
        f"recipes; else `vgg` {'-'.join(map(str, SMALL_VGG))}); GPU: `vgg` {'-'.join(map(str, MEDIUM_VGG))} below "
        f"{LARGE_DATA} clips, the full `vgg` from {LARGE_DATA}",
        {
            "plain-cnn": "model plain-cnn (about 0.55M parameters, no large strides, max-pooling before each block's "
            "BatchNorm): the baseline's small CNN, sized for training on a CPU ({clips} clips)",
            "vgg-cpu": "model vgg, widths " + str(SMALL_VGG) + " (about 0.3M parameters): a small CNN without large "
            "strides, sized for training on a CPU ({clips} clips)",
            "vgg-gpu": "model vgg, widths "
            + str(MEDIUM_VGG)
            + " (about 1.2M parameters): {clips} clips, below "
            + str(LARGE_DATA)
            + ", on a GPU",
            "vgg-gpu-full": "model vgg, full widths (about 4.7M parameters): {clips} clips, at least "
            + str(LARGE_DATA)
            + ", on a GPU",
        },
    ),
    "views": AutoRule(
        "views",
        f"LH and X, blended out of fold, when the median clip holds at least {X_MIN_CHUNKS} X chunks and the time "
        f"budget gives each view at least {MIN_EPOCHS_PER_VIEW} epochs (fewer: the blend scored below LH alone "
        "trained for the same time); else LH alone",
        {
            "both": "views LH + X, blended out of fold with equal weights: the median clip ({median:.2f} s) holds "
            "{chunks:.1f} X chunks of {chunk:g} s, so the X view votes over parts of the sound that LH sees "
            "whole, and the two views err differently; X is trained if the time budget gives each view at least "
            + str(MIN_EPOCHS_PER_VIEW)
            + " epochs (the plan says)",
            "lh": "view LH alone: the median clip ({median:.2f} s) holds {chunks:.1f} X chunk(s) of {chunk:g} s, "
            "fewer than " + str(X_MIN_CHUNKS) + ", so the X view would see what LH sees; its time goes to LH",
            "asked": "view {views} alone, as asked (--views)",
        },
    ),
    "epochs": AutoRule(
        "training.epochs",
        "from the time budget (`--time`; default 1.4x the time of 30 epochs of the LH view over every fold on "
        "a CPU, the plain-CNN baseline's schedule, 150 on a GPU): a few real training and validation steps of "
        "each view are timed on this machine before training, and the views share the budget with the same "
        "epochs; each view's first fold re-plans them from its real epochs (and the default budget with them)",
        {
            "provisional": "epochs {epochs} for now: `soundtag train` times a few real steps on this machine "
            "and sets the epochs that fit the time budget",
        },
    ),
    "keep": AutoRule(
        "training.keep",
        "`last`: the weights named before training (the last epoch), since the validation fold is the "
        "fold the out-of-fold score is computed on",
        {
            "": "weights of the last epoch (keep: last): picking the best epoch on the validation fold would "
            "pick it on the clips the out-of-fold score is computed on"
        },
    ),
    "validation": AutoRule(
        "validation",
        "`verified_only` when the data marks some clips unverified",
        {"": "validation on verified clips only: {unverified} of {clips} clips are marked not manually verified"},
    ),
}


def _code(item: str) -> str:
    """``view.duration (LH)`` as ```view.duration` (LH)``: the field as code, its note as text."""
    name, _, note = item.partition(" ")
    return f"`{name}`" + (f" {note}" if note else "")


def rules_markdown() -> str:
    """The documentation's table of :data:`AUTO_RULES` (Markdown), field and rule a row.

    Examples
    --------
    >>> print(rules_markdown().splitlines()[3])
    | `view.duration` (LH) | the 90th percentile of the durations, to 0.1 s, within 0.5-10 s |
    """
    rows = ["| field | rule (`soundtag.recipe_auto.AUTO_RULES`) |", "|---|---|"]
    for r in AUTO_RULES.values():
        rows.append(f"| {', '.join(_code(item) for item in r.field.split(', '))} | {r.rule} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class DataProfile:
    """What the rules look at: a dataset's clips as their file headers describe them.

    Attributes
    ----------
    name : the dataset's name
    clips : number of clips
    labels : size of the label vocabulary
    multilabel : whether a clip may carry several labels
    folds : number of folds the dataset gives, or None
    durations : seconds of each clip with a readable header
    rates : native sample rate of each clip with a readable header, Hz
    channels : channel count of each clip, where the manifest records it
    unverified : clips marked not manually verified
    """

    name: str
    clips: int
    labels: int
    multilabel: bool
    folds: int | None
    durations: tuple[float, ...]
    rates: tuple[int, ...]
    channels: tuple[int, ...] = ()
    unverified: int = 0

    @property
    def train_clips(self) -> int:
        """Clips one fold trains on: all but the held-out fold (5 folds when the data gives none)."""
        k = self.folds if self.folds and self.folds >= 2 else 5
        return max(1, round(self.clips * (k - 1) / k))


def profile_data(manifest) -> DataProfile:
    """Probe ``manifest``'s file headers and summarise what :func:`auto_recipe` decides from.

    Raises
    ------
    ParameterError
        for an empty manifest
    DataError
        when no file has a readable header
    """
    if len(manifest) == 0:
        raise ParameterError(f"dataset {manifest.name!r} has no clips: a recipe cannot be chosen from it")
    probed = manifest.with_probed_audio()
    known = [c for c in probed if c.duration is not None and c.sample_rate is not None]
    if not known:
        raise DataError(
            f"{manifest.name}: none of its {len(manifest)} files has a readable header; "
            f"`soundtag data check --decode` names the broken ones"
        )
    folds = {c.fold for c in probed if c.fold is not None}
    return DataProfile(
        name=manifest.name,
        clips=len(manifest),
        labels=len(manifest.labels),
        multilabel=manifest.multilabel,
        folds=len(folds) or None,
        durations=tuple(float(c.duration) for c in known),
        rates=tuple(int(c.sample_rate) for c in known),
        channels=tuple(int(ch) for c in known if (ch := getattr(c, "channels", None)) is not None),
        unverified=sum(c.manually_verified is False for c in probed),
    )


# --- the rules, one pure function each ------------------------------------------------------


def _to_step(seconds: float, step: float = 0.1) -> float:
    """``seconds`` to the nearest multiple of ``step`` (halves up)."""
    return round(math.floor(seconds / step + 0.5) * step, 6)


def choose_sample_rate(
    rates: Sequence[int], *, standard: Sequence[int] = STANDARD_RATES, cap: int = MAX_RATE
) -> tuple[int, str]:
    """The recipe's sample rate: the lower median native rate snapped down to a standard rate.

    Parameters
    ----------
    rates : native rate of each clip, Hz
    standard : the rates snapped to, ascending
    cap : the highest rate chosen

    Returns
    -------
    (rate, reason)

    Examples
    --------
    >>> choose_sample_rate([8000] * 19 + [44100])[0]
    8000
    >>> choose_sample_rate([44100, 48000])[0]
    16000
    >>> choose_sample_rate([6000])[0]
    6000
    """
    if not len(rates):
        raise ParameterError("rates=[] is empty: no clip has a known native rate")
    ordered = sorted(int(r) for r in rates)
    median = ordered[(len(ordered) - 1) // 2]
    below = [r for r in standard if r <= min(median, cap)]
    rate = below[-1] if below else median
    up = sum(r < rate for r in ordered) / len(ordered)
    common, n = Counter(ordered).most_common(1)[0]
    upsampled = f"; {up:.0%} of clips are below it natively and are upsampled" if up else ""
    capped = (
        " (a higher rate costs more cells a step and has not scored more at equal time where measured)"
        if median > cap
        else ""
    )
    return rate, AUTO_RULES["sample_rate"].explain(
        rate=rate, share=n / len(ordered), common=common, median=median, cap=cap, upsampled=upsampled, capped=capped
    )


def choose_window(
    durations: Sequence[float], *, quantile: float = WINDOW_QUANTILE, limits: tuple[float, float] = WINDOW_RANGE
) -> tuple[float, str]:
    """The LH window: the ``quantile``-th percentile of the durations to the nearest 0.1 s, clipped.

    Examples
    --------
    >>> choose_window([5.0] * 10)[0]
    5.0
    >>> choose_window([30.0] * 10)[0], choose_window([0.1] * 10)[0]
    (10.0, 0.5)
    """
    d = as_durations(durations)
    q = float(np.percentile(d, quantile))
    window = min(max(_to_step(q), limits[0]), limits[1])
    whole = float(np.mean(d <= window + 0.05))  # to the nearest 0.1 s: a clip may lose up to 0.05 s
    clipped = "" if window == _to_step(q) else f", kept within {limits[0]:g}-{limits[1]:g} s"
    return window, AUTO_RULES["window"].explain(window=window, quantile=quantile, q=q, clipped=clipped, whole=whole)


def choose_chunk(
    durations: Sequence[float], window: float, *, limits: tuple[float, float] = CHUNK_RANGE
) -> tuple[float, str]:
    """The X chunk: half the median duration to the nearest 0.1 s, within ``limits`` and the window.

    Half the median gives the typical clip at least two chunks to vote with.

    Examples
    --------
    >>> choose_chunk([5.0] * 10, 5.0)[0]
    2.5
    >>> choose_chunk([0.6] * 10, 0.6)[0]
    0.5
    """
    d = as_durations(durations)
    median = float(np.median(d))
    chunk = min(max(_to_step(median / 2), limits[0]), limits[1], window)
    return chunk, AUTO_RULES["chunk"].explain(chunk=chunk, median=median, lo=limits[0], hi=limits[1], window=window)


def choose_resolution(sample_rate: int, window: float) -> tuple[dict[str, Any], str]:
    """``features`` fields from the rate and the LH window.

    Returns
    -------
    ({n_fft, hop_length, n_mels, fmin, fmax}, reason)

    Examples
    --------
    >>> choose_resolution(8000, 1.0)[0]
    {'n_fft': 512, 'hop_length': 80, 'n_mels': 64, 'fmin': 20.0, 'fmax': None}
    >>> choose_resolution(16000, 5.0)[0]
    {'n_fft': 1024, 'hop_length': 320, 'n_mels': 64, 'fmin': 20.0, 'fmax': None}
    >>> choose_resolution(8000, 5.0)[0]["hop_length"]
    160
    """
    if sample_rate <= 0:
        raise ParameterError(f"sample_rate={sample_rate} must be positive")
    n_fft = 1 << max(0, math.ceil(math.log2(FFT_SECONDS * sample_rate)))
    hop_s = 0.010 if window <= SHORT_WINDOW else 0.020
    hop = max(1, round(hop_s * sample_rate))
    n_mels = N_MELS
    why_hop = (
        f"windows up to {SHORT_WINDOW:g} s keep 10 ms for short events"
        if hop_s == 0.010
        else f"windows over {SHORT_WINDOW:g} s take 20 ms"
    )
    return (
        {"n_fft": n_fft, "hop_length": hop, "n_mels": n_mels, "fmin": 20.0, "fmax": None},
        AUTO_RULES["resolution"].explain(
            n_fft=n_fft,
            fft_ms=FFT_SECONDS * 1000,
            hop=hop,
            hop_ms=hop_s * 1000,
            why_hop=why_hop,
            nyquist=sample_rate / 2,
        ),
    )


def choose_model(clips: int, device: str, available: Iterable[str]) -> tuple[str, dict[str, Any], str]:
    """The model and its size from the clip count and the device.

    Parameters
    ----------
    clips : clips in the dataset
    device : ``cpu`` or ``gpu``
    available : registered model names (:func:`soundtag.models.list_models`)

    Returns
    -------
    (model, model_args, reason)

    Examples
    --------
    >>> choose_model(400, "cpu", ["vgg"])[:2]
    ('vgg', {'widths': [16, 32, 64, 128]})
    >>> choose_model(400, "cpu", ["plain-cnn", "vgg"])[:2]
    ('plain-cnn', {'pool_before_norm': True})
    >>> choose_model(9000, "gpu", ["vgg"])[:2]
    ('vgg', {})
    """
    available, rule = set(available), AUTO_RULES["model"]
    if device == "cpu":
        if "plain-cnn" in available:
            # Pooling ahead of each block's BN + ReLU: the same map at evaluation where the BN scales
            # are positive, in less training time on 2 cores (docs/benchmarks.md).
            return "plain-cnn", {"pool_before_norm": True}, rule.explain("plain-cnn", clips=clips)
        return "vgg", {"widths": list(SMALL_VGG)}, rule.explain("vgg-cpu", clips=clips)
    if clips < LARGE_DATA:
        return "vgg", {"widths": list(MEDIUM_VGG)}, rule.explain("vgg-gpu", clips=clips)
    return "vgg", {}, rule.explain("vgg-gpu-full", clips=clips)


def choose_views(
    durations: Sequence[float], chunk: float, *, min_chunks: int = X_MIN_CHUNKS
) -> tuple[tuple[str, ...], str]:
    """The views trained by default: LH and X when the median clip holds ``min_chunks`` X chunks.

    The X view cuts each clip into chunks and averages their predictions; on clips no longer
    than one chunk it sees what LH sees, so its training time is better spent on LH.

    Examples
    --------
    >>> choose_views([5.0] * 10, 2.5)[0]
    ('lh', 'x')
    >>> choose_views([0.6] * 10, 0.5)[0]
    ('lh',)
    """
    if chunk <= 0:
        raise ParameterError(f"chunk={chunk} must be positive")
    median = float(np.median(as_durations(durations)))
    chunks = median / chunk
    # 0.05 s of slack: durations are rounded to 0.1 s when the chunk is chosen
    views = ("lh", "x") if chunks >= min_chunks - 0.05 / chunk else ("lh",)
    return views, AUTO_RULES["views"].explain(
        "both" if len(views) == 2 else "lh", median=median, chunks=chunks, chunk=chunk
    )


# --- the recipe -------------------------------------------------------------------------------


def _device(device: str) -> str:
    text = str(device).lower()
    if text == "cpu":
        return "cpu"
    if text in ("gpu", "cuda") or text.startswith("cuda:"):
        return "gpu"
    raise ParameterError(f"device={device!r} must be 'cpu', 'gpu' or 'cuda'")


def auto_recipe(
    manifest,
    *,
    overrides: Iterable[str] = (),
    view: str = "lh",
    device: str = "cpu",
    cpu_count: int | None = None,
    models: Iterable[str] | None = None,
):
    """Choose a recipe from a dataset, by the rules of this module's table, and say why.

    Parameters
    ----------
    manifest : the dataset (:class:`~soundtag.manifest.Manifest`); its headers are probed
    overrides : ``section.key=value`` strings, as :func:`~soundtag.recipe.load_recipe` takes;
        applied last, so they win over every choice
    view : ``lh`` (recipe ``auto``) or ``x`` (recipe ``auto-x``, whose chunks cover each clip)
    device : ``cpu``, or ``gpu``/``cuda`` for the machine the run trains on
    cpu_count : CPU cores for the CPU budget (default: the cores this process may use)
    models : registered model names (default: :func:`soundtag.models.list_models`)

    Returns
    -------
    (Recipe, list of str)
        the validated recipe and a line per choice saying what was chosen and why

    Raises
    ------
    ParameterError
        for a bad ``view``, ``device`` or ``cpu_count``, an empty dataset, or an override the
        recipe rejects
    DataError
        when no file of the dataset has a readable header
    """

    if view not in ("lh", "x"):
        raise ParameterError(f"view={view!r} must be 'lh' or 'x'")
    return _recipe_from_profile(profile_data(manifest), view, overrides, device, cpu_count, models)


def auto_recipes(
    manifest,
    *,
    views: Sequence[str] | None = None,
    overrides: Iterable[str] = (),
    device: str = "cpu",
    cpu_count: int | None = None,
    models: Iterable[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The recipes of the views ``soundtag train`` trains by default, and why.

    Parameters
    ----------
    manifest : the dataset; its headers are probed once
    views : ``["lh"]``, ``["x"]`` or ``["lh", "x"]``; default: :func:`choose_views` decides
    overrides, device, cpu_count, models : as :func:`auto_recipe`

    Returns
    -------
    ({view: Recipe}, list of str)
        the recipes in training order and the reasons, each line once (a line that only one view
        has follows the shared ones)
    """
    profile = profile_data(manifest)
    lh, lh_reasons = _recipe_from_profile(profile, "lh", overrides, device, cpu_count, models)
    x, x_reasons = _recipe_from_profile(profile, "x", overrides, device, cpu_count, models)
    if views is None:
        views, why = choose_views(profile.durations, x.view.duration)
    else:
        views = tuple(views)
        if not views or any(v not in ("lh", "x") for v in views) or len(set(views)) != len(views):
            raise ParameterError(f"views={list(views)} must be lh, x, or both")
        why = AUTO_RULES["views"].explain("asked", views="+".join(v.upper() for v in views))
    chosen = {"lh": lh, "x": x}
    reasons = list(lh_reasons) if "lh" in views else []
    if "x" in views:
        reasons += [line for line in x_reasons if line not in reasons]
    reasons.insert(1, why)
    return {v: chosen[v] for v in views}, reasons


def _recipe_from_profile(profile: DataProfile, view, overrides, device, cpu_count, models):
    device = _device(device)
    if cpu_count is None:
        cpu_count = hardware.cpu_count()
    if cpu_count < 1:
        raise ParameterError(f"cpu_count={cpu_count} must be at least 1")
    if models is None:
        from soundtag.models import list_models

        models = list_models()
    d = np.asarray(profile.durations)
    reasons = [_data_line(profile)]

    rate, why = choose_sample_rate(profile.rates)
    reasons.append(why)
    window, why = choose_window(d)
    reasons.append(why)
    duration = window
    if view == "x":
        duration, why = choose_chunk(d, window)
        reasons.append(why)
    features, why = choose_resolution(rate, window)
    reasons.append(why)

    median = float(np.median(d))
    short = median < duration / 2  # most clips much shorter than the view
    view_cfg: dict[str, Any] = {
        "kind": view,
        "duration": duration,
        "normalize_over": "sound",
        "normalization": "global" if view == "lh" else "per_feature",
        "padding": "repeat" if short else "center",
    }
    if view == "x":
        view_cfg |= {"overlap": 0.1, "min_tail": 0.2}
    reasons.append(AUTO_RULES["padding"].explain(view_cfg["padding"], median=median, duration=duration))
    reasons.append(AUTO_RULES["normalization"].explain(view_cfg["normalization"]))

    augment, why = _augment()
    reasons.append(why)

    model, model_args, why = choose_model(profile.clips, device, models)
    reasons.append(why)
    epochs = PROVISIONAL_EPOCHS[device]
    reasons.append(AUTO_RULES["epochs"].explain("provisional", epochs=epochs))
    reasons.append(AUTO_RULES["keep"].explain())

    validation = "all"
    if profile.unverified and profile.unverified < profile.clips:
        validation = "verified_only"
        reasons.append(AUTO_RULES["validation"].explain(unverified=profile.unverified, clips=profile.clips))

    data = {
        "name": "auto" if view == "lh" else "auto-x",
        "description": _description(profile, rate, duration, view, device, cpu_count),
        "audio": {"sample_rate": rate, "trim_db": 60.0},
        "features": features,
        "view": view_cfg,
        "validation": validation,
        "training": {
            "model": model,
            "model_args": model_args,
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 3e-3,
            "weight_decay": 1e-2,
            "scheduler": "onecycle",
            "monitor": "val_loss",
            "keep": "last",
            "balance": "oversample",
            "augment": augment,
        },
    }
    overrides = list(overrides)
    for item in overrides:
        apply_override(data, item)
    if overrides:
        reasons.append(f"overrides applied last: {', '.join(overrides)}")
    return recipe_from_dict(data, source=f"recipe {data['name']} for {profile.name}"), reasons


def _augment() -> tuple[dict, str]:
    """The augmentation section: the plain-CNN baseline's, sized to the sound, and a small move
    along the mel axis.

    Mixup; no random erasing; a time roll of up to half the view and one time and one mel mask
    of SpecAugment, each relative to the sound; each sample moved up or down by up to
    :data:`FREQ_SHIFT_BINS` mel bins, a pitch shift's cheap likeness that costs nothing a step.
    """
    augment: dict[str, dict] = {
        "mixup": {"enabled": True, "alpha": 1.0},
        "erasing": {"enabled": False, "relative_to": "sound"},
        "shift": {"enabled": True, "max_fraction": 0.5, "relative_to": "sound"},
        "reverse": {"enabled": False},
        "specaugment": {
            "enabled": True,
            "time_masks": 1,
            "time_width": 0.16,
            "freq_masks": 1,
            "freq_width": 0.125,
            "relative_to": "sound",
        },
        "freq_shift": {"enabled": True, "max_bins": FREQ_SHIFT_BINS},
    }
    return augment, AUTO_RULES["augment"].explain()


def _data_line(p: DataProfile) -> str:
    s = duration_summary(p.durations)
    rates = Counter(p.rates).most_common(3)
    rate_text = ", ".join(f"{r} Hz ({n / len(p.rates):.0%})" for r, n in rates)
    line = (
        f"data {p.name}: {p.clips} clips, {p.labels} labels, {'multi' if p.multilabel else 'single'}-label"
        f"{f', {p.folds} folds' if p.folds else ''}; durations {s['min']:.2f}-{s['max']:.2f} s "
        f"(median {s['p50']:.2f} s, from the file headers, before trimming); native rates {rate_text}"
    )
    if p.channels:
        shares = Counter(p.channels).most_common()
        line += "; channels " + ", ".join(f"{c} ({n / len(p.channels):.0%})" for c, n in shares)
    if len(p.durations) < p.clips:
        line += f"; {p.clips - len(p.durations)} file(s) without a readable header left out of these figures"
    return line


def _description(p: DataProfile, rate: int, duration: float, view: str, device: str, cpu_count: int) -> str:
    s = duration_summary(p.durations)
    where = f"{cpu_count} CPU core(s)" if device == "cpu" else "a GPU"
    return (
        f"chosen from the data for {p.name} ({p.clips} clips, {p.labels} labels, {s['min']:.2f}-{s['max']:.2f} s, "
        f"median {s['p50']:.2f} s, native {Counter(p.rates).most_common(1)[0][0]} Hz): "
        f"{'LH window' if view == 'lh' else 'X chunks of'} {duration:g} s at {rate} Hz, for {where}"
    )
