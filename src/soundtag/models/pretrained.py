"""Weights from local checkpoint files: ours, and the released PANNs and EfficientAT models.

Nothing is downloaded: a user passes a file. :func:`~soundtag.checkpoints.read_state_dict` reads
it without running code, in the layouts in use (a flat state dict as EfficientAT releases it,
PANNs' ``{"model": state_dict}``, a Lightning ``.ckpt``); :func:`load_checkpoint` copies it into a
model and says exactly what does not fit.
A PANNs file carries its torchlibrosa front-end as weights (the STFT's conv kernels and the mel
matrix): :func:`check_panns_frontend` compares them with the recipe's log-mel instead of
running them, so the model is fed the input it was trained on or refuses with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from soundtag.checkpoints import read_state_dict
from soundtag.errors import DataError, ParameterError

if TYPE_CHECKING:
    from soundtag.recipe import Recipe

#: torchlibrosa's front-end keys in a PANNs checkpoint: checked, never loaded.
PANNS_FRONTEND = ("spectrogram_extractor.", "logmel_extractor.")


@dataclass(frozen=True)
class Pretrained:
    """A released model family member: the recipe whose front-end reproduces its input, the
    class count of its release, and where its publishers put the files."""

    arch: str
    recipe: str
    classes: int
    source: str


#: The released checkpoints soundtag loads, by ``--arch``. The files come from their publishers:
#: PANNs on Zenodo (record 3987831), EfficientAT on its GitHub release page (v0.0.1).
PRETRAINED = {
    p.arch: p
    for p in (
        Pretrained("panns-cnn14", "panns-cnn14-ft", 527, "https://zenodo.org/record/3987831 (Cnn14_mAP=0.431.pth)"),
        Pretrained(
            "panns-cnn14-16k", "panns-cnn14-16k-ft", 527, "https://zenodo.org/record/3987831 (Cnn14_16k_mAP=0.438.pth)"
        ),
        Pretrained(
            "panns-cnn14-dlm",
            "panns-cnn14-ft",
            527,
            "https://zenodo.org/record/3987831 (Cnn14_DecisionLevelMax_mAP=0.385.pth)",
        ),
        Pretrained(
            "efficientat-mn04",
            "efficientat-mn10-ft",
            527,
            "https://github.com/fschmid56/EfficientAT/releases/tag/v0.0.1 (mn04_as_mAP_432.pt)",
        ),
        Pretrained(
            "efficientat-mn10",
            "efficientat-mn10-ft",
            527,
            "https://github.com/fschmid56/EfficientAT/releases/tag/v0.0.1 (mn10_as_mAP_471.pt)",
        ),
        Pretrained(
            "efficientat-mn40",
            "efficientat-mn10-ft",
            527,
            "https://github.com/fschmid56/EfficientAT/releases/tag/v0.0.1 (mn40_as_mAP_484.pt)",
        ),
    )
}


def pretrained_info(arch: str) -> Pretrained:
    """The :class:`Pretrained` entry of ``arch``; an unknown one names those there are."""
    if arch not in PRETRAINED:
        from soundtag.registry import did_you_mean

        hint = did_you_mean(arch, list(PRETRAINED))
        raise ParameterError(
            f"--arch {arch!r} is not a pretrained model soundtag loads"
            + (f": {hint}" if hint else "")
            + f"; choose one of {', '.join(PRETRAINED)}"
        )
    return PRETRAINED[arch]


def panns_frontend(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The window, DFT size and mel matrix a PANNs checkpoint's front-end weights encode (None
    when the file has none): ``{"window": (n_fft,), "mel": (n_mels, 1 + n_fft // 2)}``."""
    real = state.get("spectrogram_extractor.stft.conv_real.weight")
    mel = state.get("logmel_extractor.melW")
    if real is None or mel is None:
        return None
    # torchlibrosa's conv_real kernel k is window * cos(2 pi k n / n_fft): row 0 is the window.
    return {"window": real[0, 0].double().numpy(), "mel": mel.double().numpy().T}


def check_panns_frontend(state: dict[str, torch.Tensor], recipe: "Recipe", path: str | Path) -> None:
    """Refuse a PANNs checkpoint whose torchlibrosa front-end is not the recipe's log-mel.

    Raises
    ------
    DataError
        naming what differs (DFT size, window, mel bands) and the ``--arch`` whose recipe fits
        the file, when one does
    """
    found = panns_frontend(state)
    if found is None:
        return
    problems = _frontend_problems(found, recipe)
    if problems:
        from soundtag.recipe import load_recipe

        fits = [
            arch
            for arch, p in PRETRAINED.items()
            if arch.startswith("panns") and not _frontend_problems(found, load_recipe(p.recipe))
        ]
        hint = f"; the file fits --arch {fits[0]}" if fits else ""
        raise DataError(
            f"{path}: its front-end has {'; '.join(problems)} (recipe {recipe.name}): the model would be "
            f"fed another input than it was trained on{hint}"
        )


def _frontend_problems(found: dict[str, np.ndarray], recipe: "Recipe") -> list[str]:
    """What differs between a checkpoint's front-end (:func:`panns_frontend`) and the recipe's
    log-mel: the DFT size, the window, the mel bands; empty when they agree."""
    from soundtag.features.numpy_melspec import hann_window, mel_filterbank

    f = recipe.features
    n_fft = found["window"].shape[0]
    if n_fft != f.n_fft:
        return [f"a DFT of {n_fft} samples, the recipe {f.n_fft}"]
    if not np.allclose(found["window"], hann_window(f.n_fft, f.window_length, f.periodic_window), atol=1e-6):
        return ["another window than the recipe's Hann window"]
    ours = mel_filterbank(
        sample_rate=recipe.audio.sample_rate,
        n_fft=f.n_fft,
        n_mels=f.n_mels,
        fmin=f.fmin,
        fmax=f.fmax,
        mel_scale=f.mel_scale,
    )
    if ours.shape != found["mel"].shape:
        return [f"{found['mel'].shape[0]} mel bands, the recipe {f.n_mels}"]
    if not np.allclose(ours, found["mel"], rtol=1e-4, atol=1e-7):
        return [
            f"other mel bands than the recipe's ({recipe.audio.sample_rate} Hz, "
            f"{f.fmin:g}-{f.fmax or recipe.audio.sample_rate / 2:g} Hz)"
        ]
    return []


def head_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the model's last layer (timm's ``get_classifier`` or ``classifier``)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "classifier", None)
    if head is None:
        return set()
    ids = {id(t) for t in head.state_dict(keep_vars=True).values()}
    return {k for k, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def load_checkpoint(
    model: torch.nn.Module, path: str | Path, *, recipe: "Recipe | None" = None, new_head: bool = False
) -> list[str]:
    """Copy a local checkpoint's weights into ``model``, refusing anything that does not fit.

    Parameters
    ----------
    model : the network, built for the classes it will predict
    path : a flat state dict, a PANNs ``{"model": ...}`` file or a soundtag ``.ckpt``
    recipe : checks a PANNs file's front-end against it (:func:`check_panns_frontend`)
    new_head : a classifier of another class count is left at its fresh initialisation
        (fine-tuning); otherwise it is an error

    Returns
    -------
    the keys left at their initialisation (the head's, when it was reset)

    Raises
    ------
    DataError
        when the file cannot be read, or its front-end is not the recipe's
    ParameterError
        naming the missing and unexpected keys, or the shapes that differ, and what to pass
    """
    state = read_state_dict(path)
    if recipe is not None:
        check_panns_frontend(state, recipe, path)
    state = {k: v for k, v in state.items() if not k.startswith(PANNS_FRONTEND)}
    own = model.state_dict()
    head = head_keys(model)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    name = type(model).__name__
    if missing or unexpected:
        raise ParameterError(
            f"{path} does not fit {name}: {len(missing)} of its {len(own)} tensors are missing"
            f"{_some(missing)} and the file has {len(unexpected)} it does not know{_some(unexpected)}. Is it "
            f"another model's checkpoint? Pass the --arch (or training.model) it was saved from; pretrained files "
            f"soundtag reads: {', '.join(PRETRAINED)}"
        )
    reset = []
    if wrong:
        if set(wrong) <= head and new_head:
            reset = wrong
        else:
            shapes = "; ".join(f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in wrong[:4])
            what = (
                "the classifier has another class count: fine-tuning resets it (soundtag train --init), "
                "tagging needs the model's own classes"
                if set(wrong) <= head
                else "is it another width or variant of the model? Pass the matching --arch"
            )
            raise ParameterError(f"{path} does not fit {name}: shapes differ ({shapes}); {what}")
    model.load_state_dict({k: v for k, v in state.items() if k not in reset}, strict=False)
    return reset


def _some(keys: list[str], n: int = 4) -> str:
    return f" ({', '.join(keys[:n])}{', ...' if len(keys) > n else ''})" if keys else ""
