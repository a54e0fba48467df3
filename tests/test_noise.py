"""Losses for noisy labels (training.noise): masking, GCE, SCE, bootstrapping, and the trust flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from soundtag.errors import ParameterError
from soundtag.recipe import NoiseConfig, load_recipe
from soundtag.training import noise


def _batch(n=12, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, requires_grad=True)
    y = F.one_hot(torch.randint(0, classes, (n,), generator=g), classes).float()
    return logits, y


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_masking_leaves_out_exactly_the_fraction_of_untrusted_samples_with_the_largest_loss(fraction):
    logits, y = _batch(16)
    trusted = torch.tensor([i % 4 == 0 for i in range(16)])  # 4 verified, 12 not
    losses = noise.plain_loss(logits, y, False)
    keep = noise.loss_mask(losses, trusted, fraction)
    assert keep[trusted].all(), "a verified sample is never masked"
    dropped = torch.nonzero(~keep).flatten()
    assert len(dropped) == round(fraction * 12)
    kept_untrusted = losses[~trusted & keep]
    if len(dropped) and len(kept_untrusted):  # the dropped are the largest untrusted losses
        assert losses[dropped].min() >= kept_untrusted.max()


def test_masked_loss_has_no_gradient_from_masked_samples():
    logits, y = _batch(8)
    trusted = torch.zeros(8, dtype=torch.bool)
    cfg = NoiseConfig(strategy="mask", mask_fraction=0.25)
    loss = noise.noisy_label_loss(logits, y, trusted, cfg, multilabel=False)
    loss.backward()
    losses = noise.plain_loss(logits.detach(), y, False)
    top2 = set(losses.topk(2).indices.tolist())
    zero_grad = {i for i in range(8) if torch.all(logits.grad[i] == 0)}
    assert zero_grad == top2
    kept = [i for i in range(8) if i not in top2]
    assert loss.item() == pytest.approx(losses[kept].mean().item(), rel=1e-6)


def test_masking_waits_for_its_warm_up():
    logits, y = _batch(8)
    cfg = NoiseConfig(strategy="mask", mask_fraction=0.5, warmup_epochs=3)
    plain = noise.plain_loss(logits, y, False).mean()
    assert noise.noisy_label_loss(logits, y, None, cfg, multilabel=False, epoch=2).item() == pytest.approx(plain.item())
    assert noise.noisy_label_loss(logits, y, None, cfg, multilabel=False, epoch=3).item() < plain.item()


def test_multilabel_masking_ranks_each_label_apart():
    losses = torch.tensor([[9.0, 0.1], [0.2, 8.0], [0.3, 0.4], [7.0, 7.0]])
    trusted = torch.tensor([False, False, False, True])
    keep = noise.loss_mask(losses, trusted, 1 / 3)  # 1 of 3 untrusted rows per label
    assert keep.tolist() == [[False, True], [True, False], [True, True], [True, True]]


def test_robust_losses_match_their_definitions_and_limits():
    logits, y = _batch(10)
    ce = noise.plain_loss(logits, y, False)
    torch.testing.assert_close(ce, F.cross_entropy(logits, y, reduction="none"))
    p = torch.softmax(logits, 1)
    p_y = (p * y).sum(1)
    torch.testing.assert_close(noise.gce_loss(logits, y, False, q=1.0), 1 - p_y)  # q = 1: MAE
    torch.testing.assert_close(noise.gce_loss(logits, y, False, q=1e-4), ce, rtol=1e-3, atol=1e-3)  # q -> 0: CE
    rce = -np.log(1e-4) * (1 - p_y)  # one-hot: -sum_{c != y} p_c log 1e-4
    torch.testing.assert_close(noise.sce_loss(logits, y, False, alpha=0.1, beta=1.0), 0.1 * ce + rce)
    boot = noise.bootstrap_loss(logits, y, False, beta=0.8)
    torch.testing.assert_close(boot, -((0.8 * y + 0.2 * p.detach()) * F.log_softmax(logits, 1)).sum(1))
    torch.testing.assert_close(noise.bootstrap_loss(logits, y, False, beta=1.0), ce)


def test_multilabel_robust_losses_reduce_to_their_binary_forms():
    logits = torch.tensor([[0.0, 2.0]])
    y = torch.tensor([[1.0, 0.0]])
    s = torch.sigmoid(logits)
    torch.testing.assert_close(noise.gce_loss(logits, y, True, q=1.0), torch.stack([1 - s[0, 0], s[0, 1]])[None])
    torch.testing.assert_close(
        noise.plain_loss(logits, y, True), F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    )


@pytest.mark.parametrize("strategy", ["gce", "sce", "bootstrap"])
def test_robust_losses_spare_trusted_samples(strategy):
    logits, y = _batch(6)
    trusted = torch.tensor([True, False, True, False, True, False])
    cfg = NoiseConfig(strategy=strategy)
    loss = noise.noisy_label_loss(logits, y, trusted, cfg, multilabel=False)
    ce = noise.plain_loss(logits, y, False)
    robust = {
        "gce": lambda: noise.gce_loss(logits, y, False, q=cfg.gce_q),
        "sce": lambda: noise.sce_loss(logits, y, False, alpha=cfg.sce_alpha, beta=cfg.sce_beta),
        "bootstrap": lambda: noise.bootstrap_loss(logits, y, False, beta=cfg.bootstrap_beta),
    }[strategy]()
    expected = torch.where(trusted, ce, robust).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    all_trusted = noise.noisy_label_loss(logits, y, torch.ones(6, dtype=torch.bool), cfg, multilabel=False)
    assert all_trusted.item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_a_mixed_sample_is_trusted_only_when_both_sources_are():
    trusted = torch.tensor([True, True, False, True])
    perm = torch.tensor([1, 2, 3, 0])
    assert noise.mixed_trust(trusted, perm).tolist() == [True, False, False, True]


def test_bad_noise_settings_are_named():
    with pytest.raises(ParameterError, match="mask fraction"):
        noise.loss_mask(torch.ones(3), torch.zeros(3, dtype=torch.bool), 1.5)
    with pytest.raises(ParameterError, match="noise"):
        load_recipe("esc50-cpu-lh", overrides=["training.noise.strategy=focal"])
    with pytest.raises(ParameterError, match="mask_fraction"):
        load_recipe("esc50-cpu-lh", overrides=["training.noise.mask_fraction=2"])


def test_the_trust_flag_follows_the_manifest(tmp_path):
    import soundfile as sf

    from soundtag.features.store import FeatureStore
    from soundtag.manifest import read_manifest
    from soundtag.training.folds import FoldSet

    rng = np.random.default_rng(0)
    rows = ["fname,label,manually_verified"]
    (tmp_path / "audio_train").mkdir()
    for i in range(6):  # 3 clips a label: 3 folds
        sf.write(tmp_path / "audio_train" / f"c{i}.wav", 0.1 * rng.standard_normal(8000).astype("float32"), 16000)
        rows.append(f"c{i}.wav,{('Bark', 'Applause')[i % 2]},{int(i < 2)}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    manifest = read_manifest(tmp_path)
    recipe = load_recipe("esc50-cpu-lh", overrides=["training.folds=3"])
    store = FeatureStore(tmp_path / "cache", recipe)
    fs = FoldSet.build(manifest, recipe, store)
    assert fs.trusted.tolist() == [c.manually_verified is True for c in manifest]
    assert fs.trusted.sum() == 2
    no_flags = FoldSet(**{**fs.__dict__, "manifest": read_manifest(tmp_path)})
    for c in no_flags.manifest:
        object.__setattr__(c, "manually_verified", None)
    assert not no_flags.trusted.any(), "without verified flags every clip is treated as possibly noisy"


def test_the_training_module_carries_trust_through_mixup_into_the_loss():
    from soundtag.training.module import TaggerModule

    recipe = load_recipe(
        "esc50-cpu-lh",
        overrides=[
            "training.noise.strategy=mask",
            "training.noise.mask_fraction=0.5",
            "training.augment.erasing.enabled=false",
            "training.augment.shift.enabled=false",
        ],
    )
    module = TaggerModule(
        recipe.model_dump(),
        labels=list("abcde"),
        multilabel=False,
        normalizer={"kind": "none", "mean": None, "std": None},
    )
    x = torch.randn(8, 1, 16, 20)
    _, y = _batch(8)
    trusted = torch.tensor([True, False] * 4)
    _, y_mixed, t_mixed = module.augment(x, y, None, trusted)
    assert not (t_mixed & ~trusted).any(), "mixing never makes an unverified sample trusted"
    assert not torch.equal(y_mixed, y), "mixup ran"
    logits, _ = _batch(8, seed=1)
    expected = noise.noisy_label_loss(logits, y, trusted, recipe.training.noise, multilabel=False)
    assert module.loss(logits, y, trusted).item() == pytest.approx(expected.item())
    assert module.loss(logits, y, trusted).item() < F.cross_entropy(logits, y).item()  # 2 largest untrusted out


def test_self_verification_accepts_only_above_the_threshold_within_the_per_class_cap():
    from soundtag.cleaning.self_verify import verify_labels

    rng = np.random.default_rng(0)
    n, classes = 200, 4
    given = rng.integers(0, classes, n)
    targets = np.eye(classes)[given]
    probs = rng.dirichlet(np.full(classes, 0.3), n)
    verified = rng.random(n) < 0.4
    v = verify_labels(probs, targets, verified, threshold=0.9, per_class=5, relabel_threshold=0.9)
    own = probs[np.arange(n), given]
    assert not verified[np.concatenate([v.accepted, v.relabelled, v.dropped])].any(), "verified clips stay"
    assert sorted(np.concatenate([v.accepted, v.relabelled, v.dropped]).tolist()) == np.flatnonzero(~verified).tolist()
    assert (own[v.accepted] >= 0.9).all()
    assert np.bincount(given[v.accepted], minlength=classes).max() <= 5
    # the cap keeps the most confident: every refused candidate of a full class is below its accepted ones
    for c in range(classes):
        taken = v.accepted[given[v.accepted] == c]
        refused = [i for i in np.flatnonzero(~verified & (given == c) & (own >= 0.9)) if i not in taken]
        if refused:
            assert len(taken) == 5 and own[refused].max() <= own[taken].min()
    assert (probs[v.relabelled, v.new_labels] >= 0.9).all() and (v.new_labels != given[v.relabelled]).all()
    assert np.bincount(v.new_labels, minlength=classes).max() <= 5
    uncapped = verify_labels(probs, targets, verified, threshold=0.9)
    assert set(uncapped.accepted) == set(np.flatnonzero(~verified & (own >= 0.9)))
    assert len(uncapped.relabelled) == 0, "no relabel_threshold: never relabel"


def test_the_auto_threshold_is_what_four_fifths_of_the_verified_clips_reach():
    from soundtag.cleaning.self_verify import verify_labels

    rng = np.random.default_rng(1)
    n, classes = 300, 5
    given = rng.integers(0, classes, n)
    probs = rng.dirichlet(np.full(classes, 0.5), n)
    verified = rng.random(n) < 0.4
    # the unverified clips' posteriors do not move the level: only the checked labels set it
    shuffled = probs.copy()
    shuffled[~verified] = rng.dirichlet(np.full(classes, 0.5), int((~verified).sum()))
    v, w = (verify_labels(p, np.eye(classes)[given], verified, threshold="auto") for p in (probs, shuffled))
    own = probs[np.arange(n), given]
    assert v.threshold == w.threshold
    assert np.mean(own[verified] >= v.threshold) == pytest.approx(0.8, abs=1 / verified.sum())
    assert set(v.accepted) == set(np.flatnonzero(~verified & (own >= v.threshold)))
    with pytest.raises(ParameterError, match="no clip is marked verified"):
        verify_labels(probs, np.eye(classes)[given], np.zeros(n, bool), threshold="auto")
    with pytest.raises(ParameterError, match="'auto'"):
        verify_labels(probs, np.eye(classes)[given], verified, threshold="automatic")


@pytest.mark.parametrize("multilabel", [False, True])
def test_no_strategy_is_the_mean_of_the_plain_loss(multilabel):
    logits, y = _batch(7)
    loss = noise.noisy_label_loss(logits, y, None, NoiseConfig(), multilabel=multilabel)
    assert loss.item() == pytest.approx(noise.plain_loss(logits, y, multilabel).mean().item(), rel=1e-6)
