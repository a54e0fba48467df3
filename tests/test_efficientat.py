"""EfficientAT's MobileNetV3 taggers (efficientat-mn04/-mn10/-mn40): the released checkpoints'
state_dict layout, loading a flat state dict, and timm's surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from soundtag.errors import ParameterError
from soundtag.models import create_model, list_models

FIXTURE = Path(__file__).parent / "data" / "efficientat_mn10_state_dict.json"


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on these small inputs a busy machine's thread hand-offs, not the
    maths, set the time (seconds per forward pass with two threads, milliseconds with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _randomised(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A flat state dict of random weights and BatchNorm statistics (variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.2
    return state


def test_the_three_models_are_registered():
    assert {"efficientat-mn04", "efficientat-mn10", "efficientat-mn40"} <= set(list_models("efficientat*"))


def test_mn10_state_dict_is_the_released_checkpoints_key_for_key():
    """Every key and shape of mn10 at 527 classes, in order, as in ``mn10_as_mAP_471.pt``.

    The fixture was made outside this repository, independently of soundtag's code: a
    throwaway script transcribed the module tree of fschmid56/EfficientAT's models/mn/model.py
    (``MN``, ``_mobilenet_v3_conf``, the ``mlp`` head), block_types.py (``InvertedResidual``,
    ``ConcurrentSEBlock``, ``SqueezeExcitation``) and utils.py (``make_divisible``) with
    torchvision's ``Conv2dNormActivation``, as the reference builds it, and dumped
    ``{key: shape}`` of its state_dict. Its parameter count, 4,876,831, is the README's 4.88M.
    """
    expected = json.loads(FIXTURE.read_text())
    assert len(expected) == 312
    model = create_model("efficientat-mn10", num_classes=527)
    assert list(_shapes(model).items()) == list(expected.items())
    assert sum(p.numel() for p in model.parameters()) == 4_876_831
    assert model.num_features == 1280


def test_mn04_and_mn40_have_mn10s_keys_at_their_widths():
    expected = json.loads(FIXTURE.read_text())
    # Built but never run: a forward pass of mn40 (68M parameters) is slow on a CPU.
    models = {name: create_model(name, num_classes=527) for name in ("efficientat-mn04", "efficientat-mn40")}
    mn04, mn40 = (_shapes(model) for model in models.values())
    assert list(mn04) == list(expected) and list(mn40) == list(expected)
    # Widths rounded to multiples of 8: 16 -> 8 and 64, 160 -> 64 and 640, 1280 -> 512 and 5120.
    assert mn04["features.0.0.weight"] == [8, 1, 3, 3] and mn40["features.0.0.weight"] == [64, 1, 3, 3]
    assert mn04["features.16.0.weight"] == [384, 64, 1, 1] and mn40["features.16.0.weight"] == [3840, 640, 1, 1]
    assert mn04["classifier.2.weight"] == [512, 384] and mn40["classifier.2.weight"] == [5120, 3840]
    assert mn04["classifier.5.weight"] == [527, 512] and mn40["classifier.5.weight"] == [527, 5120]
    # Squeeze-excitation of block 4 (72 expanded channels at width 1): 72 * w rounded, squeezed / 4.
    assert mn04["features.4.block.2.conc_se_layers.0.fc1.weight"] == [8, 32]
    assert expected["features.4.block.2.conc_se_layers.0.fc1.weight"] == [24, 72]
    assert mn40["features.4.block.2.conc_se_layers.0.fc1.weight"] == [72, 288]
    # The README's parameter counts: 0.983M and 68.43M.
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert params == {"efficientat-mn04": 983_599, "efficientat-mn40": 68_427_303}


def test_a_flat_state_dict_round_trips_through_torch_save_strictly(tmp_path):
    source = create_model("efficientat-mn10", num_classes=527)
    source.load_state_dict(_randomised(source))
    path = tmp_path / "mn10_as.pt"
    torch.save(source.state_dict(), path)
    fresh = create_model("efficientat-mn10", num_classes=527)
    fresh.load_state_dict(torch.load(path))  # strict, no key renamed
    x = torch.randn(2, 1, 128, 100)
    with torch.no_grad():
        expected, got = source.eval()(x), fresh.eval()(x)
    assert torch.equal(got, expected)
    assert got.abs().max() > 0.1  # random weights, not an all-zero head
    # The factory's checkpoint loading takes the same file; a smaller head keeps its fresh init.
    same = create_model("efficientat-mn10", num_classes=527, checkpoint=path).eval()
    with torch.no_grad():
        assert torch.equal(same(x), expected)
    other = create_model("efficientat-mn10", num_classes=50, checkpoint=path)
    assert torch.equal(other.features[3].block[0][0].weight, source.features[3].block[0][0].weight)
    assert other(x).shape == (2, 50)


@pytest.mark.parametrize("frames, time_out", [(1000, 32), (100, 4)])
def test_forward_shapes_for_10_s_and_1_s(frames, time_out):
    model = create_model("efficientat-mn10", num_classes=527).eval()
    x = torch.randn(2, 1, 128, frames)  # 128 mels at hop 320 / 32 kHz
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 960, 4, time_out)  # 32x downsampling on both axes
        embedding = model.forward_head(features, pre_logits=True)
        assert embedding.shape == (2, model.num_features)
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 527)
    assert torch.allclose(logits, model.classifier[5](embedding), atol=1e-6)


def test_a_batch_of_one_keeps_its_batch_axis():
    model = create_model("efficientat-mn04", num_classes=527).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 128, 64)).shape == (1, 527)


def test_reset_classifier_replaces_only_the_last_linear():
    model = create_model("efficientat-mn04", num_classes=527).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 128, 100)
    with torch.no_grad():
        embedding = model.forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(50)
    after = model.state_dict()
    assert list(after) == list(before)
    changed = {k for k in after if after[k].shape != before[k].shape}
    assert changed == {"classifier.5.weight", "classifier.5.bias"}
    assert after["classifier.5.weight"].shape == (50, model.num_features)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in changed)
    with torch.no_grad():
        assert model(x).shape == (2, 50)
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), embedding)


def test_other_input_channels_options_and_errors():
    model = create_model("efficientat-mn04", num_classes=10, in_chans=3, dropout=0.5)
    assert model.state_dict()["features.0.0.weight"].shape == (8, 3, 3, 3)
    assert model.classifier[4].p == 0.5
    assert model.eval()(torch.randn(2, 3, 64, 50)).shape == (2, 10)
    with pytest.raises(ParameterError, match="width_mult"):
        create_model("efficientat-mn10", num_classes=10, width_mult=2.0)
    with pytest.raises(ParameterError, match="dropout=1.5"):
        create_model("efficientat-mn10", num_classes=10, dropout=1.5)
