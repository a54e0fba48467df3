"""One registry and one factory for every model, as timm does it.

``create_model("alexnet-kernel", num_classes=41)`` builds one of ours;
``create_model("timm:efficientnet_b0", num_classes=41)`` builds any timm backbone with one input
channel. Every model has the same surface as timm's: ``forward_features``, ``forward_head(x,
pre_logits=...)``, ``num_features`` and ``reset_classifier``, so embeddings, ensembling and the
review page need no special cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from soundtag.errors import ParameterError
from soundtag.registry import Registry, did_you_mean

TIMM_PREFIX = "timm:"
_MODELS: Registry[Callable[..., torch.nn.Module]] = Registry("model")


def register_model(name: str):
    """Decorator registering ``fn(num_classes, in_chans, **kwargs) -> nn.Module`` as ``name``;
    a name already registered raises ParameterError."""
    return _MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Our registered model names matching a wildcard pattern (timm's are ``timm:<name>``)."""
    return _MODELS.names(pattern)


def create_model(
    name: str, *, num_classes: int, in_chans: int = 1, checkpoint: str | Path | None = None, **kwargs
) -> torch.nn.Module:
    """Build a model by name, from scratch or from a local checkpoint's weights.

    Parameters
    ----------
    name : one of :func:`list_models`, or ``timm:<any timm model name>``
    num_classes : outputs of the classifier
    in_chans : input channels (1 for a log-mel spectrogram)
    checkpoint : a local ``.ckpt`` (Lightning) or ``.pt`` state dict to start from; a
        classifier of another size is left at its fresh initialisation
    """
    if num_classes <= 0:
        raise ParameterError(f"num_classes={num_classes} must be a positive integer")
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX) :]
        if not timm.is_model(timm_name):
            hint = did_you_mean(timm_name, timm.list_models(), prefix=TIMM_PREFIX)
            raise ParameterError(f"unknown timm model {timm_name!r}" + (f": {hint}" if hint else ""))
        # Never pretrained: weights would come from a hub; a local checkpoint can be given instead.
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    else:
        try:
            build = _MODELS.get(name)
        except ParameterError as exc:
            raise ParameterError(f"{exc} (or {TIMM_PREFIX}<any timm model>)") from None
        model = build(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def load_weights(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Copy a local checkpoint's weights into ``model``; a classifier of another class count is
    left fresh (see :func:`soundtag.models.pretrained.load_checkpoint`, which says what does not fit)."""
    from soundtag.models.pretrained import load_checkpoint

    load_checkpoint(model, checkpoint, new_head=True)
