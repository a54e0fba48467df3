"""Fine-tuning options and the event rows of a timeline: the semantics, on small models."""

from __future__ import annotations

from unittest.mock import PropertyMock, patch

import numpy as np
import pytest
import torch

from soundtag.prediction.render_tags import to_events_csv
from soundtag.prediction.tagger import ClipTags
from soundtag.recipe import load_recipe
from soundtag.training.module import TaggerModule

NORMALIZER = {"kind": "per_sample", "mean": None, "std": None}


def _module(overrides, labels=("a", "b", "c")):
    recipe = load_recipe(
        "esc50-lh",
        ["training.model=vgg", "training.model_args={widths: [4, 8]}", "training.scheduler=none", *overrides],
    )
    return TaggerModule(recipe.model_dump(), list(labels), False, NORMALIZER)


def test_backbone_learns_at_its_multiple_of_the_rate_and_the_head_at_the_rate():
    module = _module(["training.lr=0.01", "training.backbone_lr=0.1"])
    opt = module.configure_optimizers()
    backbone, head = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.001) and head["lr"] == pytest.approx(0.01)
    assert {id(p) for p in head["params"]} == {id(p) for p in module.net.classifier.parameters()}
    assert len(backbone["params"]) + len(head["params"]) == len(list(module.net.parameters()))


def test_frozen_epochs_train_the_classifier_alone_then_everything():
    module = _module(["training.freeze_epochs=1", "training.lr=0.1"])
    opt = module.configure_optimizers()
    before = {k: v.clone() for k, v in module.net.state_dict().items()}

    def step(epoch):
        # Lightning's current_epoch comes from a trainer; this test drives the hooks itself.
        with patch.object(TaggerModule, "current_epoch", new_callable=PropertyMock, return_value=epoch):
            module.on_train_epoch_start()
        opt.zero_grad(set_to_none=True)
        module.net(torch.randn(4, 1, 32, 40)).logsumexp(dim=1).mean().backward()
        opt.step()

    step(0)
    after = module.net.state_dict()
    moved = {
        k for k in before if not torch.equal(before[k], after[k]) and "running" not in k and "num_batches" not in k
    }
    assert moved == {"classifier.weight", "classifier.bias"}
    step(1)
    assert not torch.equal(before["features.0.weight"], module.net.state_dict()["features.0.weight"])


def test_events_merge_neighbouring_windows_of_a_label_above_the_threshold():
    p = lambda a, b: np.array([a, b])  # noqa: E731
    clip = ClipTags(
        "park.wav",
        p(0.5, 0.5),
        timeline=[(0.0, 1.0, p(0.9, 0.1)), (0.9, 2.0, p(0.7, 0.6)), (1.8, 3.0, p(0.2, 0.4)), (2.7, 4.0, p(0.8, 0.4))],
    )
    rows = to_events_csv([clip], ["bird", "car"], 0.5, timeline=True).strip().splitlines()
    assert rows == [
        "file,start,end,label,probability",
        "park.wav,0.00,2.00,bird,0.900000",
        "park.wav,0.90,2.00,car,0.600000",
        "park.wav,2.70,4.00,bird,0.800000",
    ]
    whole = to_events_csv([clip], ["bird", "car"], 0.5, timeline=False).strip().splitlines()
    assert whole == ["file,start,end,label,probability", "park.wav,,,bird,0.500000", "park.wav,,,car,0.500000"]
