"""Reading checkpoint files, which may come from anyone: the one place soundtag calls ``torch.load``.

Run directories, fold checkpoints and fine-tuned PANNs / EfficientAT files are made to be
shared, and a pickle can name any Python function to call while it loads. So every file is
read with ``weights_only=True``: tensors, numbers, strings, lists and dicts come back, and a
file that holds anything else is refused before any of it runs, with the names of what it
holds (:class:`UnsafeFileError`). soundtag's own checkpoints hold only such plain data (the
recipe as a dict, label names, normalisation statistics as lists); every release has written
them that way, so there is nothing to convert.

:func:`read_checkpoint` reads any file, :func:`read_state_dict` finds the weights in the
layouts in use, :func:`read_soundtag_checkpoint` reads one of our fold checkpoints with what
tagging needs besides the weights.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from soundtag.errors import DataError

__all__ = ["UnsafeFileError", "read_checkpoint", "read_state_dict", "read_soundtag_checkpoint", "SoundtagCheckpoint"]


class UnsafeFileError(DataError):
    """A file would run code if it were opened the way its format allows; it was not opened."""


def unsafe_globals(path: str | Path) -> list[str]:
    """The Python objects (``module.name``) a checkpoint's pickle would import and call, read
    from its opcodes without running any; empty where the file has none, or is not the zip
    layout of ``torch.save``."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - the legacy (non-zip) layout, or not a torch file at all
        return []


def read_checkpoint(path: str | Path, *, what: str = "checkpoint") -> Any:
    """The contents of a ``torch.save`` file, loaded without running any code.

    Parameters
    ----------
    path : the file
    what : what the file is to the caller, for the messages (``checkpoint``, ``--init file``)

    Raises
    ------
    UnsafeFileError
        when the file holds Python objects other than tensors and plain data (the message
        names them: ``posix.system``, ``numpy.ndarray``...); nothing of it was run
    DataError
        when the file is missing, truncated or not a PyTorch file
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist; give the path of a local file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = unsafe_globals(path) or re.findall(r"GLOBAL (\S+)", str(exc))
        if not found:  # not a pickle of objects: bytes that are no pickle at all
            raise DataError(
                f"{what} {path} cannot be read (it is not a PyTorch file, or it is damaged); give the "
                "file torch.save wrote"
            ) from None
        raise UnsafeFileError(
            f"{what} {path} was not loaded: it holds Python objects that would run code when unpickled "
            f"({', '.join(found[:8])}). soundtag reads only "
            "tensors, numbers, strings, lists and dicts from a checkpoint. If you made this file, save "
            "`model.state_dict()` (or a dict of tensors and plain values) instead; if someone sent it to "
            "you, do not unpickle it with other tools either"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a text file, another format
        raise DataError(
            f"{what} {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it may be "
            "truncated (download it again and compare its size or checksum) or not a PyTorch "
            "file"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file, whatever its layout.

    Accepts a flat state dict (EfficientAT), ``{"model": state_dict}`` (PANNs) and
    ``{"state_dict": ...}`` (Lightning: soundtag's own, whose ``model.`` prefix is removed and
    whose EMA run's ``training_model.`` copy is left out).
    """
    state = read_checkpoint(path)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(
            f"checkpoint {path} holds no state dict of tensors (top level: "
            f"{type(state).__name__}); soundtag reads flat state dicts, PANNs' {{'model': ...}} "
            "and Lightning checkpoints"
        )
    if any(k.startswith("model.") for k in state):  # a soundtag (Lightning) checkpoint
        state = {k.removeprefix("model."): v for k, v in state.items() if not k.startswith("training_model.")}
    return state


@dataclass
class SoundtagCheckpoint:
    """One fold checkpoint written by ``soundtag train``: everything needed to tag a file.

    Attributes
    ----------
    path : the file
    hyper_parameters : the training module's arguments as saved (``recipe`` as a dict,
        ``labels``, ``multilabel``, ``normalizer``, ``fold``)
    state_dict : every tensor of the training module (keys ``model.*``, and ``training_model.*``
        with EMA)
    epoch : the last epoch the file saw, counted from 0
    """

    path: Path
    hyper_parameters: dict
    state_dict: dict[str, torch.Tensor]
    epoch: int

    @property
    def labels(self) -> list[str]:
        return list(self.hyper_parameters["labels"])

    @property
    def multilabel(self) -> bool:
        return bool(self.hyper_parameters["multilabel"])

    @property
    def normalizer(self) -> dict:
        return self.hyper_parameters["normalizer"]

    @property
    def recipe(self):
        """The recipe it was trained with, validated (:class:`~soundtag.recipe.Recipe`)."""
        from soundtag.recipe import Recipe

        return Recipe.model_validate(self.hyper_parameters["recipe"])

    def model_weights(self) -> dict[str, torch.Tensor]:
        """The weights that predict (the EMA average when the run kept one), without ``model.``."""
        return {k.removeprefix("model."): v for k, v in self.state_dict.items() if k.startswith("model.")}


def read_soundtag_checkpoint(path: str | Path) -> SoundtagCheckpoint:
    """Read a fold checkpoint of ``soundtag train`` (a ``best.ckpt`` or ``last.ckpt``) safely.

    Raises
    ------
    UnsafeFileError
        when it holds anything but tensors and plain data (see :func:`read_checkpoint`)
    DataError
        when it is missing, unreadable, or not a soundtag checkpoint (naming what is missing)
    """
    path = Path(path)
    state = read_checkpoint(path)
    hp = state.get("hyper_parameters") if isinstance(state, dict) else None
    needed = ("recipe", "labels", "multilabel", "normalizer")
    if not isinstance(hp, dict) or any(k not in hp for k in needed) or not isinstance(state.get("state_dict"), dict):
        raise DataError(
            f"{path} is not a soundtag checkpoint (it needs a state_dict and hyper-parameters "
            f"with {', '.join(needed)}); a released PANNs or EfficientAT file needs --arch, "
            "e.g. --arch panns-cnn14"
        )
    return SoundtagCheckpoint(path, hp, state["state_dict"], int(state.get("epoch", -1)))
