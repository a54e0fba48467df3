"""Recipes: YAML files, validated by pydantic, that fix every parameter of a view.

A recipe names the audio handling, the log-mel parameters and the view (LH: head crop; X:
overlapping chunks of the whole clip). Built-in recipes live in ``soundtag/recipes/*.yaml``;
a user's own YAML file is loaded the same way. A key that does not exist is an error naming
the key and the nearest valid one, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from soundtag.errors import ParameterError
from soundtag.registry import did_you_mean

# Bump when the meaning of stored features changes, so old caches are not read as current.
FEATURE_VERSION = 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioConfig(_Section):
    sample_rate: int = Field(gt=0, description="rate the audio is resampled to, Hz")
    trim_db: float | None = Field(60.0, gt=0, description="librosa.effects.trim top_db; null: no trim")
    max_duration: float = Field(600.0, gt=0, description="seconds read at most from one file")


class FeatureConfig(_Section):
    n_fft: int = Field(gt=0)
    hop_length: int = Field(gt=0)
    n_mels: int = Field(gt=0)
    fmin: float = Field(20.0, ge=0)
    fmax: float | None = Field(None, gt=0, description="null means sample_rate / 2")
    top_db: float | None = Field(80.0, gt=0)
    # The fields below reproduce pretrained models' own inputs (PANNs, EfficientAT); their
    # defaults are librosa's log-mel, which every recipe before them used.
    window_length: int | None = Field(
        None, gt=0, description="samples of the Hann window, centred in each n_fft frame (torch.stft); null: n_fft"
    )
    periodic_window: bool = Field(True, description="periodic Hann (librosa, torchlibrosa); false: symmetric")
    pad_mode: Literal["constant", "reflect"] = Field("constant", description="how the centred STFT pads the ends")
    preemphasis: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="y[n] = x[n+1] - c x[n] before the STFT (one sample shorter), as EfficientAT's conv1d",
    )
    mel_scale: Literal["slaney", "kaldi"] = Field(
        "slaney", description="slaney: librosa's Slaney-normalised filters; kaldi: Kaldi's unnormalised mel banks"
    )
    log: Literal["db", "ln"] = Field("db", description="db: 10 log10(max(mel, amin)); ln: ln(mel + log_offset)")
    amin: float = Field(1e-10, gt=0, description="db: the power floor before the logarithm")
    log_offset: float = Field(1e-5, gt=0, description="ln: added to the power before the logarithm")
    offset: float = Field(0.0, description="the log-mel becomes (x + offset) / scale")
    scale: float = Field(1.0, gt=0, description="the log-mel becomes (x + offset) / scale")


#: FeatureConfig fields added after stores existed: left out of a store's key at their defaults,
#: so the stores of earlier recipes keep their names.
FRONTEND_DEFAULTS = {
    name: FeatureConfig.model_fields[name].default
    for name in (
        "window_length",
        "periodic_window",
        "pad_mode",
        "preemphasis",
        "mel_scale",
        "log",
        "amin",
        "log_offset",
        "offset",
        "scale",
    )
}


class ViewConfig(_Section):
    kind: Literal["lh", "x"]
    duration: float = Field(gt=0, description="LH: seconds of the head; X: seconds per chunk")
    overlap: float = Field(0.1, ge=0, lt=1, description="X: fraction shared by neighbouring chunks")
    min_tail: float = Field(0.2, ge=0, le=1, description="X: a tail shorter than this fraction of a chunk is dropped")
    normalization: Literal["per_sample", "per_feature", "global", "none"] = Field(
        "per_sample",
        description="per_sample: (x - mean) / (std + 1) of each view; per_feature: each mel bin by "
        "the training clips' mean and std; global: one mean and std of the training clips",
    )
    normalize_over: Literal["window", "sound"] = Field(
        "window",
        description="statistics over the whole view (the kernel's), or over the sound's frames only, "
        "so the padding of a short clip does not drown them",
    )
    padding: Literal["center", "repeat"] = Field(
        "center",
        description="a clip shorter than the view: centred between zeros (the kernel's), or repeated to fill it",
    )


class MixupConfig(_Section):
    enabled: bool = True
    alpha: float = Field(1.0, gt=0)


#: Where an augmentation's sizes and places are measured: the whole view (the kernel's), or the
#: sound within it (a 0.4 s event in a 5 s window is then never wiped out or shifted away).
RelativeTo = Literal["sound", "window"]


class ErasingConfig(_Section):
    enabled: bool = True
    relative_to: RelativeTo = "window"
    p: float = Field(0.5, ge=0, le=1)
    area: tuple[float, float] = (0.02, 0.4)
    aspect: tuple[float, float] = (0.3, 3.33)


class ShiftConfig(_Section):
    enabled: bool = True
    relative_to: RelativeTo = "window"
    max_fraction: float = Field(0.4, ge=0, le=1)


class ReverseConfig(_Section):
    enabled: bool = False
    p: float = Field(0.5, ge=0, le=1)


class SpecAugmentConfig(_Section):
    enabled: bool = False
    relative_to: RelativeTo = "window"
    time_masks: int = Field(2, ge=0)
    time_width: float = Field(0.1, ge=0, le=1)
    freq_masks: int = Field(2, ge=0)
    freq_width: float = Field(0.15, ge=0, le=1)


class FreqShiftConfig(_Section):
    enabled: bool = False
    max_bins: int = Field(4, ge=0, description="each sample moves up or down by up to this many mel bins")


class AugmentConfig(_Section):
    mixup: MixupConfig = MixupConfig()
    erasing: ErasingConfig = ErasingConfig()
    shift: ShiftConfig = ShiftConfig()
    reverse: ReverseConfig = ReverseConfig()
    specaugment: SpecAugmentConfig = SpecAugmentConfig()
    freq_shift: FreqShiftConfig = FreqShiftConfig()


class NoiseConfig(_Section):
    """Losses for noisy labels (:mod:`soundtag.training.noise`), applied to the clips nobody verified
    when the manifest says which were (``manually_verified``), to every clip otherwise."""

    strategy: Literal["none", "mask", "gce", "sce", "bootstrap"] = "none"
    mask_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="mask: the share of a batch's untrusted samples "
        "(per label, multi-label) with the largest loss left out of the gradient",
    )
    warmup_epochs: int = Field(0, ge=0, description="mask: epochs of the plain loss before masking starts")
    gce_q: float = Field(0.7, gt=0, le=1, description="gce: q (toward 0 cross-entropy, 1 the mean absolute error)")
    sce_alpha: float = Field(0.1, ge=0, description="sce: weight of the cross-entropy")
    sce_beta: float = Field(1.0, ge=0, description="sce: weight of the reverse cross-entropy")
    bootstrap_beta: float = Field(0.8, ge=0, le=1, description="bootstrap: weight of the given label in the target")


class EmaConfig(_Section):
    enabled: bool = False
    decay: float = Field(0.999, gt=0, lt=1, description="per optimiser step")


class TrainingConfig(_Section):
    model: str = "alexnet-kernel"
    model_args: dict[str, Any] = {}
    checkpoint: str | None = Field(
        None,
        description="local weights to start from (soundtag train --init): a "
        "soundtag checkpoint or a released PANNs / EfficientAT file; a classifier of "
        "another class count starts fresh",
    )
    backbone_lr: float = Field(
        1.0,
        gt=0,
        description="the learning rate of every layer but the classifier, as a multiple of lr (fine-tuning: e.g. 0.1)",
    )
    freeze_epochs: int = Field(0, ge=0, description="epochs at the start that train the classifier alone")
    folds: int = Field(5, ge=2)
    fold_strategy: Literal["auto", "given", "stratified"] = "auto"
    seed: int = 0
    epochs: int = Field(50, gt=0)
    batch_size: int = Field(32, gt=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "onecycle", "warmup_cosine", "none"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up of warmup_cosine, in epochs")
    ema: EmaConfig = EmaConfig()
    keep: Literal["best", "last"] = Field(
        "best",
        description="the weights a fold predicts out of fold with: the best epoch by `monitor` on "
        "the validation fold, or the last epoch (EMA weights when ema is on), named before training",
    )
    monitor: Literal["val_loss", "val_map3"] = "val_loss"
    tta: int = Field(
        0,
        ge=0,
        description="test-time copies of every chunk, rolled in time by up to half the "
        "training shift, averaged into the out-of-fold predictions; predict and tag use as many "
        "unless given --tta",
    )
    early_stopping: int | None = Field(None, gt=0, description="patience in epochs; null: off")
    balance: Literal["oversample", "balanced", "none"] = "oversample"
    augment: AugmentConfig = AugmentConfig()
    noise: NoiseConfig = NoiseConfig()
    blacklist: str | None = Field(None, description="CSV of clips left out of training (column clip_id or fname)")
    relabel: str | None = Field(None, description="CSV of clip_id,label corrections")
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field(
        "auto",
        description="auto: bf16-mixed on a GPU that has it (else 16-mixed), and on a CPU with native "
        "bf16 (AVX512-BF16 or AMX); 32 elsewhere",
    )
    workers: int = Field(0, ge=0, description="DataLoader workers (the streaming path only)")
    device_data: Literal["auto", "on", "off"] = Field(
        "auto",
        description="hold a fold's features on the training device and draw batches there; auto: when "
        "they take under half of the GPU's free memory, or under 2 GiB of RAM on a CPU",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="NHWC memory layout for the model and its batches; auto: on"
    )
    compile: bool = Field(False, description="torch.compile the model before training")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, value):
        # `-o training.precision=32` and a bare `precision: 32` in YAML arrive as the number 32.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("device_data", "channels_last", mode="before")
    @classmethod
    def _yaml_switch(cls, value):
        # YAML 1.1 reads a bare on/off as true/false.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class Recipe(_Section):
    """A complete, validated recipe. Build with :func:`load_recipe`."""

    name: str
    description: str = ""
    audio: AudioConfig
    features: FeatureConfig
    view: ViewConfig
    validation: Literal["verified_only", "all"] = "all"
    training: TrainingConfig = TrainingConfig()

    @model_validator(mode="after")
    def _check_consistency(self) -> "Recipe":
        nyquist = self.audio.sample_rate / 2
        fmax = self.features.fmax if self.features.fmax is not None else nyquist
        if not self.features.fmin < fmax <= nyquist:
            raise ValueError(
                f"features.fmin={self.features.fmin} and features.fmax={fmax} must "
                f"satisfy fmin < fmax <= sample_rate/2 = {nyquist}"
            )
        if self.features.hop_length > self.features.n_fft:
            raise ValueError(
                f"features.hop_length={self.features.hop_length} must not exceed features.n_fft={self.features.n_fft}"
            )
        return self

    # --- derived quantities --------------------------------------------------------------
    @property
    def view_samples(self) -> int:
        """Samples in the LH head or in one X chunk."""
        return int(round(self.view.duration * self.audio.sample_rate))

    @property
    def chunk_frames(self) -> int:
        """Frames in one X chunk (``duration * sample_rate // hop_length``)."""
        return self.view_samples // self.features.hop_length

    @property
    def chunk_step(self) -> int:
        """Frames between the starts of neighbouring X chunks."""
        return max(1, int(round(self.chunk_frames * (1 - self.view.overlap))))

    def feature_key(self) -> dict[str, Any]:
        """Everything that decides the stored features (and nothing that does not)."""
        crop = {"kind": self.view.kind}
        # The LH store keeps only the head; the X store keeps the whole clip padded to a chunk.
        crop["samples"] = self.view_samples
        if self.view.padding != "center":  # only then: the stores of existing recipes keep their names
            crop["padding"] = self.view.padding
        return {
            "version": FEATURE_VERSION,
            "audio": self.audio.model_dump(),
            "features": {
                k: v
                for k, v in self.features.model_dump().items()
                if k not in FRONTEND_DEFAULTS or v != FRONTEND_DEFAULTS[k]
            },
            "crop": crop,
        }

    def feature_hash(self) -> str:
        text = json.dumps(self.feature_key(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)


#: The recipes chosen from a dataset rather than read (:mod:`soundtag.recipe_auto`), and the view
#: each one makes.
AUTO_VIEWS = {"auto": "lh", "auto-x": "x"}


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    folder = resources.files("soundtag") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path | Recipe, overrides: Iterable[str] = ()) -> Recipe:
    """Load a built-in recipe by name, or a YAML file by path, and apply overrides.

    Commands resolve what a user names with :func:`soundtag.resolve.resolve_recipe`, which adds
    ``auto`` (chosen from a dataset), pretrained architectures and the command line's options on
    top of this.

    Parameters
    ----------
    name_or_path : ``fsd2018-lh``, ``esc50-x``... (see :func:`list_recipes`), a YAML path, or a
        :class:`Recipe` (the overrides are applied to a copy)
    overrides : ``section.key=value`` strings, values parsed as YAML
        (``features.hop_length=441``, ``audio.trim_db=null``)

    Raises
    ------
    ParameterError
        for an unknown recipe, a mistyped key (with the nearest valid one) or a bad value, or
        ``auto`` (which needs a dataset: :func:`soundtag.resolve.resolve_recipe`)
    """
    if isinstance(name_or_path, Recipe):
        data = name_or_path.model_dump()
        for item in overrides:
            apply_override(data, item)
        return recipe_from_dict(data, source=f"recipe {name_or_path.name}")
    if str(name_or_path) in AUTO_VIEWS:
        raise ParameterError(
            f"recipe {str(name_or_path)!r} is chosen from a dataset: pass it (--data D on the "
            "command line, soundtag.resolve.resolve_recipe(name, manifest=...) from Python)"
        )
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ParameterError(f"recipe file {path} does not exist")
        source, text = str(path), path.read_text(encoding="utf-8")
    else:
        names = list_recipes()
        if str(name_or_path) not in names:
            hint = (
                did_you_mean(str(name_or_path), [*names, *AUTO_VIEWS])
                or f"built-in recipes: {', '.join(names)}, or auto (chosen from the data)"
            )
            raise ParameterError(f"unknown recipe {str(name_or_path)!r}: {hint}")
        source = f"recipe {name_or_path}"
        text = (resources.files("soundtag") / "recipes" / f"{name_or_path}.yaml").read_text(encoding="utf-8")
    try:
        # safe_load builds plain values only: a tag such as !!python/object/apply is an error, not a call.
        data = yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError as exc:
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise ParameterError(
            f"{source}{where}: {exc.problem}; a recipe holds plain values only (mappings, lists, "
            "strings, numbers), and soundtag never builds Python objects from YAML: remove the "
            "tag"
        ) from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParameterError(f"{source}: a recipe must be a mapping of sections")
    for item in overrides:
        apply_override(data, item)
    return recipe_from_dict(data, source=source)


def recipe_from_dict(data: dict, *, source: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict; errors name each bad key and the nearest valid one."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise ParameterError(f"{source}: {len(lines)} problem(s):\n" + "\n".join(f"  - {x}" for x in lines)) from None


def apply_override(data: dict, item: str) -> None:
    """Set one ``section.key=value`` override in a recipe's dict, the value parsed as plain YAML.

    Examples
    --------
    >>> data = {"training": {"epochs": 30}}
    >>> apply_override(data, "training.epochs=5"); data
    {'training': {'epochs': 5}}
    """
    if "=" not in item:
        raise ParameterError(f"override {item!r} must look like section.key=value, e.g. features.hop_length=441")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    target = data
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ParameterError(f"override {item!r}: {key!r} is not a section")
    try:
        target[keys[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ParameterError(
            f"override {item!r}: the value is not a plain YAML value ({getattr(exc, 'problem', exc)}); "
            "quote it to pass a string"
        ) from None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for key in loc:
        field = model.model_fields.get(key) if model else None
        ann = field.annotation if field else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _describe(err: dict) -> str:
    loc = tuple(str(x) for x in err["loc"])
    where = ".".join(loc) or "recipe"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = list(parent.model_fields) if parent else []
        prefix = "".join(f"{key}." for key in loc[:-1])
        hint = did_you_mean(loc[-1], valid, prefix=prefix) or f"valid keys: {', '.join(valid)}"
        return f"unknown key {where!r}: {hint}"
    if err["type"] == "missing":
        return f"missing key {where!r}"
    return f"{where}={err.get('input')!r}: {err['msg']}"


def with_sibling_views(names: Iterable[str]) -> list[str]:
    """``names`` plus the other view of each built-in LH/X pair (``esc50-lh`` brings ``esc50-x``,
    ``auto`` brings ``auto-x``), in order and without repeats: what ``soundtag show`` draws.

    Examples
    --------
    >>> with_sibling_views(["fsd2018-lh"])
    ['fsd2018-lh', 'fsd2018-x']
    >>> with_sibling_views(["auto"])
    ['auto', 'auto-x']
    >>> with_sibling_views(["esc50-x", "esc50-lh", "my.yaml"])
    ['esc50-x', 'esc50-lh', 'my.yaml']
    """
    out = list(dict.fromkeys(str(n) for n in names))
    builtin = set(list_recipes()) | set(AUTO_VIEWS)
    out += [other for own, other in (("auto", "auto-x"), ("auto-x", "auto")) if own in out and other not in out]
    for name in list(out):
        for own, other in (("-lh", "-x"), ("-x", "-lh")):
            sibling = name[: -len(own)] + other if name.endswith(own) else None
            if sibling in builtin and sibling not in out:
                out.append(sibling)
    return out
