"""A run's fold models as one PyTorch module: raw log-mel chunks in, every fold's chunk
probabilities out. The same module runs eagerly and is what ``soundtag export`` writes to
ONNX, so both engines compute the same thing.

Each fold keeps its own normalisation (an X run's per-mel-bin statistics come from that
fold's training clips), so the normalisation is part of the module, not of the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from soundtag.checkpoints import read_soundtag_checkpoint
from soundtag.errors import DataError, ParameterError
from soundtag.features.frontend import Normalization
from soundtag.models import create_model
from soundtag.models.batching import pad_chunks
from soundtag.recipe import Recipe
from soundtag.runs import RunDir


class FoldEnsemble(torch.nn.Module):
    """``forward(chunks (n, n_mels, frames) dB) -> (folds, n, classes)`` probabilities.

    Parameters
    ----------
    models : one trained model per fold (eval mode is set here)
    normalizations : each fold's :class:`~soundtag.features.frontend.Normalization` (an X run's
        per-mel-bin statistics come from that fold's training clips), as training applied it
    multilabel : sigmoid per class instead of a softmax
    """

    def __init__(self, models: list[torch.nn.Module], normalizations: list[Normalization], *, multilabel: bool):
        super().__init__()
        if len(models) != len(normalizations):
            raise ParameterError(f"{len(models)} models need as many normalisations, not {len(normalizations)}")
        self.models = torch.nn.ModuleList(models).eval()
        self.normalizations = torch.nn.ModuleList(normalizations)
        self.multilabel = multilabel

    def forward(self, chunks: torch.Tensor) -> torch.Tensor:
        out = []
        for k, model in enumerate(self.models):
            logits = model(self.normalized(chunks, k)[:, None])
            out.append(torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1))
        return torch.stack(out)

    def embeddings(self, chunks: torch.Tensor, fold: int = 0) -> torch.Tensor:
        """Fold ``fold``'s pre-logit embedding of every chunk, ``(n, num_features)``: timm's
        ``forward_head(..., pre_logits=True)`` (each fold has an embedding space of its own)."""
        model = self.models[fold]
        return model.forward_head(model.forward_features(self.normalized(chunks, fold)[:, None]), pre_logits=True)

    def normalized(self, chunks: torch.Tensor, fold: int) -> torch.Tensor:
        """``chunks`` as fold ``fold``'s model was trained on them."""
        return self.normalizations[fold](chunks)

    def probabilities(self, chunks: np.ndarray) -> np.ndarray:
        """:meth:`forward` on a NumPy batch, without autograd, as ``(folds, n, classes)``.

        The batch is padded to a few sizes (:func:`~soundtag.models.batching.pad_chunks`):
        PyTorch's CPU kernels keep memory for every input shape they meet.
        """
        x = torch.from_numpy(np.ascontiguousarray(chunks, dtype=np.float32))
        with torch.inference_mode():
            return self(pad_chunks(x)).numpy()[:, : len(x)]


@dataclass
class LoadedRun:
    """What tagging needs of a finished run (or of a released pretrained model)."""

    path: Path
    recipe: Recipe
    labels: list[str]
    multilabel: bool
    ensemble: FoldEnsemble
    checkpoints: list[Path]
    #: a pretrained model tags the whole clip in one pass, as its publishers run it, instead of
    #: the recipe's view
    whole_clip: bool = False


def audioset_labels() -> list[str]:
    """AudioSet's 527 display names in the order of its ``class_labels_indices.csv`` (shipped)."""
    import csv
    from importlib import resources

    with (resources.files("soundtag") / "data" / "audioset_labels.csv").open(encoding="utf-8") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def load_pretrained(path: str | Path, arch: str) -> LoadedRun:
    """A released checkpoint (PANNs, EfficientAT) as a one-model run with AudioSet's labels.

    Parameters
    ----------
    path : the local file as its publishers release it (e.g. ``Cnn14_mAP=0.431.pth``)
    arch : ``panns-cnn14``, ``panns-cnn14-16k``, ``panns-cnn14-dlm``, ``efficientat-mn04``,
        ``efficientat-mn10`` or ``efficientat-mn40`` (see :data:`~soundtag.models.pretrained.PRETRAINED`)
    """
    from soundtag.models.pretrained import load_checkpoint, pretrained_info
    from soundtag.resolve import resolve_recipe

    info = pretrained_info(arch)
    recipe = resolve_recipe(arch=arch).recipe
    labels = audioset_labels()
    model = create_model(arch, num_classes=info.classes, in_chans=1)
    load_checkpoint(model, path, recipe=recipe)
    ensemble = FoldEnsemble([model], [Normalization("none")], multilabel=True)
    return LoadedRun(Path(path), recipe, labels[: info.classes], True, ensemble, [Path(path)], whole_clip=True)


def fold_checkpoints(run_dir: str | Path) -> list[Path]:
    """The best checkpoint of every finished fold, in fold order."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise DataError(
            f"{run_dir} is not a soundtag run; give a run directory, an ensemble directory, "
            "a .ckpt or an exported .onnx model (a released PANNs or EfficientAT file needs --arch, "
            "e.g. --arch panns-cnn14)"
        )
    return run.best_checkpoints()


def load_run(path: str | Path) -> LoadedRun:
    """Load a run directory's finished fold models (or one Lightning ``.ckpt``) for inference.

    Every checkpoint is read without running code (:func:`~soundtag.checkpoints.read_soundtag_checkpoint`):
    a run shared by someone else can be tagged with safely.
    """
    path = Path(path)
    checkpoints = [path] if path.suffix == ".ckpt" else fold_checkpoints(path)
    models, normalizations = [], []
    for file in checkpoints:
        if not file.is_file():
            raise DataError(f"checkpoint {file} is missing; retrain that fold with `soundtag train --resume`")
        ckpt = read_soundtag_checkpoint(file)
        recipe = ckpt.recipe
        t = recipe.training
        model = create_model(t.model, num_classes=len(ckpt.labels), in_chans=1, **t.model_args)
        model.load_state_dict(ckpt.model_weights())
        models.append(model)
        # the fold's own statistics; checkpoints from before normalize_over existed normalised the window
        normalizations.append(Normalization.from_record({"over": "window", **ckpt.normalizer}))
    ensemble = FoldEnsemble(models, normalizations, multilabel=ckpt.multilabel)
    return LoadedRun(path, recipe, ckpt.labels, ckpt.multilabel, ensemble, checkpoints)
