"""A recipe chosen from the data: ``soundtag train --recipe auto``.

:func:`auto_recipe` reads the headers of a dataset's files (durations, native rates, channels
where the manifest has them), counts its clips and labels, and picks every field of an
ordinary :class:`~soundtag.recipe.Recipe` by the explicit rules below; each choice comes back
with a line saying why, and ``section.key=value`` overrides apply last and win.

========================  ======================================================================
field                     rule
========================  ======================================================================
audio.sample_rate         the (lower) median native rate, snapped down to the nearest of
                          8000/16000/22050/32000/44100 Hz (never upsampling the typical clip)
                          and at most 32000 Hz; below 8 kHz the median rate itself
view.duration (LH)        the 90th percentile of the clip durations, to the nearest 0.1 s,
                          within 0.5-10 s
view.duration (X chunk)   half the median duration, to the nearest 0.1 s, within 0.5-4 s and
                          never longer than the LH window
features.n_fft            the next power of two of 40 ms of samples (512 at 8 kHz, 1024 at 16 kHz)
features.hop_length       10 ms when the LH window is at most 2 s (short events), else 20 ms
features.n_mels           64 up to 16 kHz, 128 above (a wider band); fmin 20 Hz, fmax the
                          Nyquist rate
view.normalization        LH: global (one mean and std of the training clips, as the plain-CNN
                          baseline of issue 11 does); X: per_feature, as the built-in X recipes do
view.normalize_over       sound: statistics over the sound's frames only, never the padding
view.padding              repeat when the median clip is shorter than half the view, else center
augmentation              mixup (alpha 1); random erasing off (issue 11: sized for the window
                          it wipes out short events, and on 5 s clips it changes little); a
                          time roll of up to half the view that never pushes the sound out of
                          it, one time mask (up to 16% of the sound) and one mel mask (up to
                          12.5%) of SpecAugment, each relative to the sound
training.model            CPU: ``plain-cnn`` (the 0.55M-parameter baseline) when registered,
                          else ``vgg`` with widths 16-32-64-128 (0.3M parameters); GPU: ``vgg``
                          32-64-128-256 below 5000 clips, the full ``vgg`` from 5000
training.epochs           a budget of spectrogram cells (mels x frames x clip passes) per fold,
                          divided by the training clips x the cells of one view: on a CPU the
                          baseline's own, 30 epochs of ESC-50's 1600 training clips x 64 mels x
                          250 frames = 7.7e8 per 2 cores, scaled with the cores; 2e11 on a GPU;
                          within 15-75 epochs (CPU) or 30-150 (GPU)
validation                verified_only when the data marks some clips unverified
                          (FSDKaggle2018), else all
========================  ======================================================================

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
from soundtag.recipe import AUTO_VIEWS, apply_override, recipe_from_dict

__all__ = ["AUTO_VIEWS", "DataProfile", "auto_recipe", "choose_chunk", "choose_epochs", "choose_model",
           "choose_resolution", "choose_sample_rate", "choose_window", "profile_data"]


STANDARD_RATES = (8000, 16000, 22050, 32000, 44100)
MAX_RATE = 32000
WINDOW_QUANTILE = 90
WINDOW_RANGE = (0.5, 10.0)
CHUNK_RANGE = (0.5, 4.0)
SHORT_WINDOW = 2.0          # a window up to this long gets the 10 ms hop
FFT_SECONDS = 0.040
MEL_RATE = 16000            # up to this rate 64 mels, above it 128
SMALL_VGG = [16, 32, 64, 128]
MEDIUM_VGG = [32, 64, 128, 256]
LARGE_DATA = 5000           # clips from which a GPU gets the full VGG
CELL_BUDGET = {"cpu": 30 * 1600 * 64 * 250, "gpu": 2e11}   # mels x frames x clip passes per fold (CPU: per 2 cores)
EPOCH_RANGE = {"cpu": (15, 75), "gpu": (30, 150)}


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
        raise DataError(f"{manifest.name}: none of its {len(manifest)} files has a readable header; "
                        f"`soundtag data check --decode` names the broken ones")
    folds = {c.fold for c in probed if c.fold is not None}
    return DataProfile(
        name=manifest.name, clips=len(manifest), labels=len(manifest.labels), multilabel=manifest.multilabel,
        folds=len(folds) or None, durations=tuple(float(c.duration) for c in known),
        rates=tuple(int(c.sample_rate) for c in known),
        channels=tuple(int(ch) for c in known if (ch := getattr(c, "channels", None)) is not None),
        unverified=sum(c.manually_verified is False for c in probed))


# --- the rules, one pure function each ------------------------------------------------------

def _to_step(seconds: float, step: float = 0.1) -> float:
    """``seconds`` to the nearest multiple of ``step`` (halves up)."""
    return round(math.floor(seconds / step + 0.5) * step, 6)


def choose_sample_rate(rates: Sequence[int], *, standard: Sequence[int] = STANDARD_RATES,
                       cap: int = MAX_RATE) -> tuple[int, str]:
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
    32000
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
    reason = (f"sample rate {rate} Hz: {n / len(ordered):.0%} of clips are {common} Hz natively; "
              f"the rule takes the median native rate ({median} Hz) "
              f"snapped down to a standard rate ({'/'.join(map(str, standard))}), at most {cap} Hz, "
              f"so the typical clip is never upsampled")
    if up:
        reason += f"; {up:.0%} of clips are below it natively and are upsampled"
    return rate, reason


def choose_window(durations: Sequence[float], *, quantile: float = WINDOW_QUANTILE,
                  limits: tuple[float, float] = WINDOW_RANGE) -> tuple[float, str]:
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
    return window, (f"LH window {window:g} s: the {quantile:g}th percentile of the clip durations is "
                    f"{q:.2f} s, to the nearest 0.1 s{clipped}; {whole:.0%} of clips fit in it (to 0.05 s)")


def choose_chunk(durations: Sequence[float], window: float, *,
                 limits: tuple[float, float] = CHUNK_RANGE) -> tuple[float, str]:
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
    return chunk, (f"X chunk {chunk:g} s: half the median duration ({median:.2f} s), to the nearest 0.1 s, "
                   f"within {limits[0]:g}-{limits[1]:g} s and at most the LH window ({window:g} s)")


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
    >>> choose_resolution(32000, 5.0)[0]["n_mels"]
    128
    """
    if sample_rate <= 0:
        raise ParameterError(f"sample_rate={sample_rate} must be positive")
    n_fft = 1 << max(0, math.ceil(math.log2(FFT_SECONDS * sample_rate)))
    hop_s = 0.010 if window <= SHORT_WINDOW else 0.020
    hop = max(1, round(hop_s * sample_rate))
    n_mels = 64 if sample_rate <= MEL_RATE else 128
    why_hop = (f"windows up to {SHORT_WINDOW:g} s keep 10 ms for short events" if hop_s == 0.010
               else f"windows over {SHORT_WINDOW:g} s take 20 ms")
    return ({"n_fft": n_fft, "hop_length": hop, "n_mels": n_mels, "fmin": 20.0, "fmax": None},
            f"mel resolution: n_fft {n_fft} (the next power of two of {FFT_SECONDS * 1000:g} ms), hop {hop} "
            f"({hop_s * 1000:g} ms: {why_hop}), {n_mels} mels ({'up to' if n_mels == 64 else 'above'} "
            f"{MEL_RATE} Hz), 20 Hz to {sample_rate / 2:g} Hz")


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
    available = set(available)
    if device == "cpu":
        if "plain-cnn" in available:
            # Pooling ahead of each block's BN + ReLU: the same map at evaluation where the BN scales
            # are positive, in less training time on 2 cores (docs/benchmarks.md, issue 12).
            return "plain-cnn", {"pool_before_norm": True}, (
                f"model plain-cnn (about 0.55M parameters, no large strides, max-pooling before each "
                f"block's BatchNorm): the baseline's small CNN, sized for training on a CPU ({clips} clips)")
        return "vgg", {"widths": list(SMALL_VGG)}, (
            f"model vgg, widths {SMALL_VGG} (about 0.3M parameters): a small CNN without large strides, "
            f"sized for training on a CPU ({clips} clips)")
    if clips < LARGE_DATA:
        return "vgg", {"widths": list(MEDIUM_VGG)}, (
            f"model vgg, widths {MEDIUM_VGG} (about 1.2M parameters): {clips} clips, below {LARGE_DATA}, on a GPU")
    return "vgg", {}, f"model vgg, full widths (about 4.7M parameters): {clips} clips, at least {LARGE_DATA}, on a GPU"


def choose_epochs(train_clips: int, cells: int, device: str, cpu_count: int) -> tuple[int, str]:
    """Epochs from the budget of spectrogram cells one fold may spend.

    Parameters
    ----------
    train_clips : clips one fold trains on
    cells : mels x frames of one training view
    device : ``cpu`` or ``gpu``
    cpu_count : CPU cores (the CPU budget is per 2 cores)

    Examples
    --------
    >>> choose_epochs(1600, 64 * 250, "cpu", 2)[0]
    30
    >>> choose_epochs(1600, 128 * 250, "cpu", 2)[0], choose_epochs(320, 128 * 250, "cpu", 2)[0]
    (15, 75)
    """
    if train_clips < 1 or cells < 1:
        raise ParameterError(f"train_clips={train_clips} and cells={cells} must be positive")
    budget = CELL_BUDGET[device] * (max(1, cpu_count) / 2 if device == "cpu" else 1)
    lo, hi = EPOCH_RANGE[device]
    raw = budget / (train_clips * cells)
    epochs = int(min(max(round(raw), lo), hi))
    where = f"{cpu_count} CPU core(s)" if device == "cpu" else "a GPU"
    return epochs, (f"epochs {epochs}: a budget of {budget:.2g} spectrogram cells per fold on {where}, over "
                    f"{train_clips} training clips x {cells} cells = {raw:.1f}, kept within {lo}-{hi}")


# --- the recipe -------------------------------------------------------------------------------

def _device(device: str) -> str:
    text = str(device).lower()
    if text == "cpu":
        return "cpu"
    if text in ("gpu", "cuda") or text.startswith("cuda:"):
        return "gpu"
    raise ParameterError(f"device={device!r} must be 'cpu', 'gpu' or 'cuda'")


def auto_recipe(manifest, *, overrides: Iterable[str] = (), view: str = "lh", device: str = "cpu",
                cpu_count: int | None = None, models: Iterable[str] | None = None):
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
    device = _device(device)
    if cpu_count is None:
        cpu_count = hardware.cpu_count()
    if cpu_count < 1:
        raise ParameterError(f"cpu_count={cpu_count} must be at least 1")
    if models is None:
        from soundtag.models import list_models

        models = list_models()
    profile = profile_data(manifest)
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
    view_cfg: dict[str, Any] = {"kind": view, "duration": duration, "normalize_over": "sound",
                                "normalization": "global" if view == "lh" else "per_feature",
                                "padding": "repeat" if short else "center"}
    if view == "x":
        view_cfg |= {"overlap": 0.1, "min_tail": 0.2}
    reasons.append(f"padding {view_cfg['padding']}: the median clip ({median:.2f} s) is "
                   + (f"shorter than half the {duration:g} s view, so the clip is repeated to fill it"
                      if short else f"at least half the {duration:g} s view, so it is centred"))
    reasons.append(f"normalisation {view_cfg['normalization']} over the sound's frames only, never the padding: "
                   f"{_NORMALIZATION[view_cfg['normalization']]}")

    augment, why = _augment()
    reasons.append(why)

    model, model_args, why = choose_model(profile.clips, device, models)
    reasons.append(why)
    frames = int(round(duration * rate)) // features["hop_length"]
    epochs, why = choose_epochs(profile.train_clips, max(1, frames) * features["n_mels"], device, cpu_count)
    reasons.append(why)

    validation = "all"
    if profile.unverified and profile.unverified < profile.clips:
        validation = "verified_only"
        reasons.append(f"validation on verified clips only: {profile.unverified} of {profile.clips} clips are "
                       f"marked not manually verified")

    data = {
        "name": "auto" if view == "lh" else "auto-x",
        "description": _description(profile, rate, duration, view, device, cpu_count),
        "audio": {"sample_rate": rate, "trim_db": 60.0},
        "features": features,
        "view": view_cfg,
        "validation": validation,
        "training": {"model": model, "model_args": model_args, "epochs": epochs, "batch_size": 32,
                     "optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-2, "scheduler": "onecycle",
                     "monitor": "val_loss", "balance": "oversample", "augment": augment},
    }
    overrides = list(overrides)
    for item in overrides:
        apply_override(data, item)
    if overrides:
        reasons.append(f"overrides applied last: {', '.join(overrides)}")
    return recipe_from_dict(data, source=f"recipe {data['name']} for {profile.name}"), reasons


_NORMALIZATION = {
    "global": "one mean and std of the training clips, as the plain-CNN baseline of issue 11",
    "per_feature": "each mel bin by the training clips' mean and std, as the built-in X recipes",
}


def _augment() -> tuple[dict, str]:
    """The augmentation section: the plain-CNN baseline's, sized to the sound.

    Mixup; no random erasing; a time roll of up to half the view and one time and one mel mask
    of SpecAugment, each relative to the sound.
    """
    augment: dict[str, dict] = {
        "mixup": {"enabled": True, "alpha": 1.0},
        "erasing": {"enabled": False, "relative_to": "sound"},
        "shift": {"enabled": True, "max_fraction": 0.5, "relative_to": "sound"},
        "reverse": {"enabled": False},
        "specaugment": {"enabled": True, "time_masks": 1, "time_width": 0.16, "freq_masks": 1, "freq_width": 0.125,
                        "relative_to": "sound"},
    }
    return augment, ("augmentation: mixup (alpha 1); no random erasing (sized for the window it wipes out "
                     "short events: issue 11, 34.8% -> 80.2%); a time roll of up to half the view, never pushing "
                     "the sound out of it; one time mask (up to 16%) and one mel mask (up to 12.5%) of the sound")


def _data_line(p: DataProfile) -> str:
    s = duration_summary(p.durations)
    rates = Counter(p.rates).most_common(3)
    rate_text = ", ".join(f"{r} Hz ({n / len(p.rates):.0%})" for r, n in rates)
    line = (f"data {p.name}: {p.clips} clips, {p.labels} labels, {'multi' if p.multilabel else 'single'}-label"
            f"{f', {p.folds} folds' if p.folds else ''}; durations {s['min']:.2f}-{s['max']:.2f} s "
            f"(median {s['p50']:.2f} s, from the file headers, before trimming); native rates {rate_text}")
    if p.channels:
        shares = Counter(p.channels).most_common()
        line += "; channels " + ", ".join(f"{c} ({n / len(p.channels):.0%})" for c, n in shares)
    if len(p.durations) < p.clips:
        line += f"; {p.clips - len(p.durations)} file(s) without a readable header left out of these figures"
    return line


def _description(p: DataProfile, rate: int, duration: float, view: str, device: str, cpu_count: int) -> str:
    s = duration_summary(p.durations)
    where = f"{cpu_count} CPU core(s)" if device == "cpu" else "a GPU"
    return (f"chosen from the data for {p.name} ({p.clips} clips, {p.labels} labels, {s['min']:.2f}-{s['max']:.2f} s, "
            f"median {s['p50']:.2f} s, native {Counter(p.rates).most_common(1)[0][0]} Hz): "
            f"{'LH window' if view == 'lh' else 'X chunks of'} {duration:g} s at {rate} Hz, for {where}")
