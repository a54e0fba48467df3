"""soundtag train's default product: views planned in a time budget, trained and blended into
one run directory that every later command takes as a run (soundtag.train_views, soundtag.planning,
soundtag.training.timing, soundtag.inference.blended)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from soundtag.errors import ParameterError
from soundtag.planning import (
    MIN_EPOCHS_PER_VIEW,
    RESERVE_S,
    FoldTiming,
    Pace,
    TimePlan,
    default_budget_epochs,
    default_budget_s,
    later_views_left_out,
    parse_duration,
    plan_epochs,
    replan_epochs,
)

TINY = [
    "-o",
    "training.batch_size=8",
    "-o",
    "training.model=vgg",
    "-o",
    "training.model_args={widths: [8, 16]}",
    "-o",
    "features.n_mels=32",
]

LH = FoldTiming(0.5, 0.2, 2.0, 3.0, train_batches=50, val_batches=13, oof_batches=13)
X = FoldTiming(0.2, 0.2, 1.0, 2.0, train_batches=50, val_batches=13, oof_batches=13)


# --- the plan, from timings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds", [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("45", 2700), ("1.5h", 5400), ("2min", 120)]
)
def test_durations_are_read_as_a_user_writes_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30x", "-5", "0", "m"])
def test_a_bad_duration_says_how_to_write_one(text):
    with pytest.raises(ParameterError, match="--time"):
        parse_duration(text)


@pytest.mark.parametrize("budget", [300.0, 900.0, 1800.0, 7200.0])
@pytest.mark.parametrize("folds", [1, 5])
def test_the_planned_epochs_are_the_most_that_fit_the_budget(budget, folds):
    plan = plan_epochs({"lh": LH, "x": X}, folds=folds, budget_s=budget, spent_s=40)
    if plan.epochs in (5, 300):  # held at a limit: said
        assert plan.notes
        return
    trained = [{"lh": LH, "x": X}[v] for v in plan.views]
    assert plan.views == ["lh", "x"] or (plan.views == ["lh"] and "under" in plan.notes[0])
    assert plan.expected_s <= budget
    one_more = 40 + RESERVE_S + sum(folds * t.fold_s(plan.epochs + 1) for t in trained)
    assert one_more > budget
    assert plan.view_expected_s["lh"] == pytest.approx(folds * LH.fold_s(plan.epochs), abs=1e-3)


def test_two_views_that_would_train_too_little_leave_the_time_to_lh():
    # room for about 10 epochs of both views, or 14 of LH alone
    budget = 40 + RESERVE_S + LH.fixed_s + X.fixed_s + 10.5 * (LH.epoch_s + X.epoch_s)
    plan = plan_epochs({"lh": LH, "x": X}, folds=1, budget_s=budget, spent_s=40)
    assert plan.views == ["lh"] and plan.epochs > 10
    assert f"under {MIN_EPOCHS_PER_VIEW}" in plan.notes[0]
    # the --time it names trains both views, each at least the fewest epochs
    minutes = re.search(r"--time (\d+)m or more trains LH \+ X", plan.notes[0]).group(1)
    enough = plan_epochs({"lh": LH, "x": X}, folds=1, budget_s=int(minutes) * 60, spent_s=40)
    assert enough.views == ["lh", "x"] and enough.epochs >= MIN_EPOCHS_PER_VIEW
    # views named by the user are kept however short the budget
    asked = plan_epochs({"lh": LH, "x": X}, folds=1, budget_s=budget, spent_s=40, min_epochs_per_view=0)
    assert asked.views == ["lh", "x"] and asked.epochs == 10 and not asked.notes


@pytest.mark.parametrize("budget", [300.0, 900.0, 1500.0, 2500.0])
def test_later_views_are_left_out_before_their_features_only_when_lh_alone_is_short(budget):
    note = later_views_left_out("lh", LH, ["x"], folds=1, budget_s=budget, spent_s=40)
    alone = plan_epochs({"lh": LH}, folds=1, budget_s=budget, spent_s=40)
    # two views can never each get more epochs than LH alone would: only then is X certain to go
    assert (note is not None) == (alone.epochs < MIN_EPOCHS_PER_VIEW)
    if note is None:
        return
    assert f"fits {alone.epochs} epochs of LH alone" in note and "X's features are not computed" in note
    # the --time it names trains both views, if X (its features included) costs what LH does
    minutes = int(re.search(r"about --time (\d+)m trains LH \+ X", note).group(1))
    both = plan_epochs({"lh": LH, "x": LH}, folds=1, budget_s=minutes * 60, spent_s=80)
    assert both.views == ["lh", "x"] and both.epochs >= MIN_EPOCHS_PER_VIEW


def test_a_budget_too_small_still_trains_the_fewest_epochs_and_says_it_overruns():
    plan = plan_epochs({"lh": LH}, folds=5, budget_s=60, spent_s=40)
    assert plan.epochs == 5 and "overrun" in plan.notes[0]
    assert plan.expected_s > 60


@pytest.mark.parametrize("left", [120.0, 400.0, 2000.0])
def test_a_later_view_gets_the_most_epochs_that_fit_what_is_left(left):
    epochs = replan_epochs({"x": X}, folds=2, left_s=left)
    used = RESERVE_S + 2 * X.fold_s(epochs)
    assert epochs == 5 or used <= left  # the fewest are trained even when they do not fit
    assert RESERVE_S + 2 * X.fold_s(epochs + 1) > left


def test_given_epochs_are_kept_and_only_timed():
    plan = plan_epochs({"lh": LH, "x": X}, folds=2, budget_s=None, spent_s=10, epochs=3, budget_source="given")
    assert plan.epochs == 3 and plan.views == ["lh", "x"] and plan.budget_s is None
    assert plan.expected_s == pytest.approx(10 + RESERVE_S + 2 * (LH.fold_s(3) + X.fold_s(3)), abs=1e-3)
    assert "no budget: given" in plan.lines()[1]


def test_the_default_budget_is_the_baseline_schedule_timed_here():
    # 1.4 x (what was spent + 30 epochs of LH over every fold)
    assert default_budget_s(LH, folds=5, spent_s=100) == pytest.approx(1.4 * (100 + 5 * (30 * LH.epoch_s + LH.fixed_s)))
    assert default_budget_s(LH, 5, 100, "gpu") == pytest.approx(1.4 * (100 + 5 * (150 * LH.epoch_s + LH.fixed_s)))


def test_a_plan_round_trips_through_json_and_prints_its_numbers():
    plan = plan_epochs({"lh": LH, "x": X}, folds=5, budget_s=14400, spent_s=40, budget_source="--time 240.0 min")
    again = TimePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    text = "\n".join(plan.lines())
    assert f"{plan.epochs} epochs for each of LH + X, 5 fold(s)" in text and "budget 240.0 min" in text
    assert "500 ms a training batch" in text and "then the blend" in text


# --- keeping the pace while the first fold trains ---------------------------------------------------


@pytest.mark.parametrize("factor", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("folds, later", [(1, ()), (5, ()), (2, (X,))])
def test_the_first_folds_real_epochs_replan_the_most_epochs_that_fit(factor, folds, later):
    budget, spent = 3000.0, 40.0
    views = {"lh": LH, **({"x": later[0]} if later else {})}
    planned = plan_epochs(views, folds=folds, budget_s=budget, spent_s=spent, min_epochs_per_view=0).epochs
    pace = Pace(deadline=budget, timing=LH, later=later, folds=folds, epochs=planned)
    real = [t.scaled(factor) for t in (LH, *later)]
    done = 3
    now = spent + LH.fold_setup_s + done * real[0].epoch_s  # the clock at the start of the 4th epoch

    def ends(epochs):  # when the command ends if every fold of every view trains `epochs` at the real pace
        rest_of_fold = (epochs - done) * real[0].epoch_s + real[0].fixed_s - LH.fold_setup_s
        return (
            now
            + rest_of_fold
            + (folds - 1) * real[0].fold_s(epochs)
            + sum(folds * t.fold_s(epochs) for t in real[1:])
            + RESERVE_S
        )

    epochs = pace.replanned(epochs_done=done, real_epoch_s=real[0].epoch_s, now=now)
    assert ends(epochs) <= budget < ends(epochs + 1)
    if factor == 1.0:
        assert epochs == planned  # the timed steps were right: the plan holds
    else:
        assert (epochs < planned) == (factor > 1.0)


@pytest.mark.parametrize("factor", [0.7, 1.3])
def test_the_default_budget_moves_with_the_real_epochs_and_a_given_one_does_not(factor):
    folds, spent, done = 5, 40.0, 3
    default = default_budget_s(LH, folds, spent)
    planned = plan_epochs({"lh": LH}, folds=folds, budget_s=default, spent_s=spent).epochs
    real = LH.scaled(factor)
    now = spent + LH.fold_setup_s + done * real.epoch_s
    moving = Pace(default, LH, (), folds, planned, budget_epochs=default_budget_epochs(folds))
    given = Pace(default, LH, (), folds, planned)
    # 1.4x the time of 30 epochs, as they really take: about the epochs planned, whatever the pace
    assert abs(moving.replanned(epochs_done=done, real_epoch_s=real.epoch_s, now=now) - planned) <= 2
    assert moving.budget_change_s(real.epoch_s) == pytest.approx(1.4 * folds * 30 * (real.epoch_s - LH.epoch_s))
    # --time: the epochs that fit the same seconds at the real pace
    assert abs(given.replanned(epochs_done=done, real_epoch_s=real.epoch_s, now=now) - planned / factor) <= 2


def test_a_pace_behind_its_deadline_still_trains_one_epoch_more_and_the_fewest():
    pace = Pace(deadline=100.0, timing=LH, later=(), folds=1, epochs=40)
    assert pace.replanned(epochs_done=3, real_epoch_s=LH.epoch_s, now=500.0) == 5
    assert pace.replanned(epochs_done=10, real_epoch_s=LH.epoch_s, now=500.0) == 11
    assert (
        Pace(deadline=1e9, timing=LH, later=(), folds=1, epochs=40).replanned(
            epochs_done=3, real_epoch_s=LH.epoch_s, now=0.0
        )
        == 300
    )  # the most epochs


@pytest.mark.parametrize("epochs, checks", [(5, (3,)), (12, (3, 6)), (41, (3, 10, 20)), (200, (3, 50, 100))])
def test_the_pace_is_read_after_the_warm_up_epoch_and_before_half_the_schedule(epochs, checks):
    assert Pace(0.0, LH, (), 1, epochs).checks() == checks


def _rates(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("betas", (None,))[0]))
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind", ["onecycle", "warmup_cosine"])
@pytest.mark.parametrize("total, stretched", [(100, 150), (100, 70)])
def test_a_stretched_schedule_goes_on_as_one_made_that_long(kind, total, stretched):
    import torch

    from soundtag.training.module import WarmupCosine, stretch_schedule

    def made(steps):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        if kind == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps), opt
        return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(warm=10, total=steps)), opt

    sched, opt = made(total)
    _rates(sched, opt, 20)  # within the warm-up of either schedule
    stretch_schedule(sched, stretched / total)
    # the rate the 20th step set stands until the next step, which follows the stretched schedule
    after = _rates(sched, opt, stretched - 20)[1:]
    fresh, fresh_opt = made(stretched)
    assert np.allclose(after, _rates(fresh, fresh_opt, stretched)[21:], rtol=1e-9, atol=1e-12)
    assert after[-1][0] < 1e-6  # annealed to (almost) nothing at the new end


def test_a_stretched_epoch_cosine_reaches_its_floor_at_the_new_end():
    import torch

    from soundtag.training.module import stretch_schedule

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    _rates(sched, opt, 10)
    stretch_schedule(sched, 30 / 40)
    rates = [lr for lr, _ in _rates(sched, opt, 21)]
    assert all(a > b for a, b in zip(rates, rates[1:]))  # still falling, no jump up
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)  # at epoch 30


def test_a_schedule_that_cannot_be_stretched_says_so():
    import torch

    from soundtag.training.module import stretch_schedule

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(TypeError, match="StepLR"):
        stretch_schedule(torch.optim.lr_scheduler.StepLR(opt, 5), 1.5)


def _train_behind_its_budget(subset_csv, feature_cache, run_dir, on_pace, *overrides) -> None:
    """Train a tiny recipe of 8 epochs on two folds under a pace whose deadline is now and whose
    timed steps are far too quick: the first fold's real epochs re-plan the run to the fewest (5)."""
    import time

    from soundtag.manifest import read_manifest
    from soundtag.recipe import load_recipe
    from soundtag.training.run import train

    recipe = load_recipe(
        "esc50-lh",
        ["training.batch_size=8", "training.model=vgg", "training.model_args={widths: [8]}", "training.epochs=8"]
        + list(overrides),
    )
    quick = FoldTiming(1e-4, 1e-4, 0.0, 0.0, train_batches=3, val_batches=1, oof_batches=1)
    pace = Pace(deadline=time.perf_counter(), timing=quick, later=(), folds=2, epochs=8)
    train(
        read_manifest(subset_csv), recipe, run_dir, cache_dir=feature_cache, progress=False, pace=pace, on_pace=on_pace
    )


@pytest.mark.slow
def test_a_run_behind_its_budget_trains_fewer_epochs_in_every_fold(subset_csv, feature_cache, tmp_path):
    """Real folds under a pace whose timed steps were far too quick for its deadline: the first
    fold re-plans the epochs of both folds, and the run's recipe keeps them for a resume."""
    from soundtag.runs import RunDir

    found = []
    run_dir = tmp_path / "run"
    _train_behind_its_budget(subset_csv, feature_cache, run_dir, found.append)
    # told at each check of the first fold (after epochs 3 and 4 of 8), never by the second
    assert [(kept.planned, kept.epochs) for kept in found] == [(8, 5), (8, 5)]
    assert all(kept.real_epoch_s > kept.timed_epoch_s for kept in found)
    run = RunDir(run_dir)
    assert run.recipe().training.epochs == 5
    for k in (0, 1):
        assert json.loads((run.fold_dir(k) / "done.json").read_text())["epochs"] == 5


# --- timing real steps -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_fold_is_timed_with_its_own_batches(subset_csv, feature_cache):
    from soundtag.manifest import read_manifest
    from soundtag.recipe import load_recipe
    from soundtag.training.run import fold_set
    from soundtag.training.timing import time_fold

    recipe = load_recipe(
        "esc50-lh", ["training.batch_size=4", "training.model=vgg", "training.model_args={widths: [8]}"]
    )
    plan = fold_set(read_manifest(subset_csv), recipe, set(), feature_cache, progress=False)
    loaders = plan.loaders(1)
    timing = time_fold(plan, 1, train_steps=3, val_steps=2)
    assert (timing.train_batches, timing.val_batches, timing.oof_batches) == (
        len(loaders.train),
        len(loaders.val),
        len(loaders.oof),
    )
    assert timing.train_step_s > 0 and timing.val_batch_s > 0 and timing.fold_setup_s > 0
    assert timing.epoch_s > timing.train_batches * timing.train_step_s
    assert timing.probe_s >= timing.fold_setup_s
    with pytest.raises(ValueError, match="train_steps"):
        time_fold(plan, 1, train_steps=0)


# --- the whole command -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blended_run(subset_csv, tmp_path_factory):
    """``soundtag train`` with no recipe on 40 real 5 s clips: LH and X, two epochs, two folds."""
    from soundtag import cli

    folder = tmp_path_factory.mktemp("blended")
    run = folder / "run"
    args = ["train", "--data", subset_csv, "--out", run, "--cache", folder / "cache", "--no-progress"]
    args += [*TINY, "-o", "training.epochs=2"]
    _run_cli(cli, args)
    return run


def _run_cli(cli, args) -> None:
    import sys

    argv = sys.argv
    sys.argv = ["soundtag", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as done:
            cli.main()
    finally:
        sys.argv = argv
    assert (done.value.code or 0) == 0


@pytest.mark.slow
def test_the_default_trains_both_views_and_blends_them_into_one_run(blended_run):
    from soundtag.inference.blended import open_run
    from soundtag.runs import RunDir

    assert RunDir(blended_run / "lh").require_complete().recipe().view.kind == "lh"
    assert RunDir(blended_run / "x").require_complete().recipe().view.kind == "x"
    info = json.loads((blended_run / "ensemble.json").read_text())
    # the runs are named relative to the blend, so the folder can be moved whole
    assert [r["path"] for r in info["runs"]] == ["lh", "x"] and [r["weight"] for r in info["runs"]] == [0.5, 0.5]
    assert info["blend"]["weights"] == "equal" and info["blend"]["fitted_on"] is None
    record = json.loads((blended_run / "plan.json").read_text())
    assert record["plan"]["epochs"] == 2 and record["plan"]["views"] == ["lh", "x"]
    assert record["plan"]["actual_s"] > 0 and len(record["sessions_s"]) == 1
    assert set(record["plan"]["timings"]) == {"lh", "x"}
    # the blend's metrics are those of the geometric mean of the views' out-of-fold predictions
    metrics = json.loads((blended_run / "metrics.json").read_text())
    lh, x = (RunDir(blended_run / v).out_of_fold() for v in ("lh", "x"))
    blend = open_run(blended_run).out_of_fold()
    assert blend.manifest.ids == lh.manifest.ids
    expected = np.sqrt(lh.probs * x.probs)
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(blend.probs, expected, atol=1e-5)
    truth = np.array([blend.manifest.labels.index(c.labels[0]) for c in blend.manifest])
    assert metrics["all"]["top1"] == pytest.approx(float(np.mean(blend.probs.argmax(1) == truth)))
    assert (blended_run / "confusion.png").is_file()


@pytest.mark.slow
def test_every_later_command_takes_the_blended_run(blended_run, subset_csv, tmp_path, soundtag_main):
    run = tmp_path / "run"
    shutil.copytree(blended_run, run)  # moved whole: it still finds its views
    code, out, err = soundtag_main("evaluate", run)
    assert code == 0, err
    assert "top-1" in out or "MAP@3" in out
    code, out, err = soundtag_main("suspects", run, "--no-audio", "--lists", tmp_path / "lists")
    assert code == 0, err
    assert (run / "suspects.csv").is_file() and f"soundtag review {run}" in out
    # the next round of the blacklist loop trains the default's views again, not one recipe file
    from soundtag.cleaning import retrain_command

    again = retrain_command(run, tmp_path / "lists")
    assert again.startswith(f"soundtag train --data {subset_csv} --blacklist") and "--recipe" not in again
    code, out, err = soundtag_main("predict", run, "--data", subset_csv, "--out", tmp_path / "pred.csv")
    assert code == 0, err
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert len(rows) == 41  # a header and every clip once
    clip = Path(rows[1].split(",")[0])
    clip = clip if clip.is_absolute() else Path(subset_csv).parent / clip
    code, torch_out, err = soundtag_main("tag", run, clip, "--format", "json")
    assert code == 0, err
    code, out, err = soundtag_main("export", run, "--out", tmp_path / "model")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["ensemble.json", "lh.onnx", "x.onnx"]
    code, onnx_out, err = soundtag_main("tag", tmp_path / "model", clip, "--format", "json")
    assert code == 0, err
    assert _top(torch_out) == _top(onnx_out)
    # one ONNX file cannot hold two front-ends: a folder is asked for
    code, out, err = soundtag_main("export", run, "--out", tmp_path / "one.onnx")
    assert code != 0 and "give a folder" in err


def _top(out: str) -> tuple[str, float]:
    """The first tag of ``tag --format json``'s one file, and its score to 1e-3."""
    (item,) = json.loads(out)
    return item["tags"][0]["label"], round(item["tags"][0]["score"], 3)


@pytest.mark.slow
def test_resume_keeps_the_plan_and_trains_only_what_is_missing(blended_run, tmp_path, soundtag_main):
    run = tmp_path / "run"
    shutil.copytree(blended_run, run)
    # as if stopped during the X view's second fold: its record and the blend are not written
    (run / "x" / "fold-1" / "done.json").unlink()
    (run / "ensemble.json").unlink()
    before = (run / "lh" / "fold-0" / "last.ckpt").read_bytes()
    code, out, err = soundtag_main("train", "--resume", run, "--no-progress")
    assert code == 0, err
    assert "resuming the plan" in out and "2 epochs for each of LH + X" in out
    assert "over 2 sessions" in out
    assert (run / "lh" / "fold-0" / "last.ckpt").read_bytes() == before  # finished work is not redone
    assert (run / "x" / "fold-1" / "done.json").is_file() and (run / "ensemble.json").is_file()
    record = json.loads((run / "plan.json").read_text())
    assert len(record["sessions_s"]) == 2 and record["plan"]["actual_s"] == pytest.approx(sum(record["sessions_s"]))
    code, out, err = soundtag_main("train", "--resume", run, "--time", "5m")
    assert code != 0 and "keeps the run's plan" in err


@pytest.mark.slow
def test_a_short_budget_trains_lh_alone_without_computing_x(subset_csv, tmp_path, soundtag_main):
    cache, run = tmp_path / "cache", tmp_path / "run"
    # a budget under the fewest epochs: LH alone trains them (5), and says it overruns
    args = ["train", "--data", subset_csv, "--cache", cache, "--no-progress", *TINY, "--time", "1s"]
    code, out, err = soundtag_main(*args, "--out", run)
    assert code == 0, err
    assert "X's features are not computed" in out and "epochs of LH" in out
    record = json.loads((run / "plan.json").read_text())
    assert record["plan"]["views"] == ["lh"] and set(record["plan"]["timings"]) == {"lh"}
    # the first fold kept the pace: far behind a 1 s budget, it trains the fewest epochs, and says so
    assert record["paces"]["lh"]["epochs"] == 5 and record["paces"]["lh"]["budget_s"] == 1.0
    assert "LH: its first fold's epochs took" in out and "the 5 epochs planned hold" in out
    stores = [store.name for store in cache.iterdir() if (store / "store.json").is_file()]
    assert len(stores) == 1 and stores[0].startswith("lh-"), stores  # one view's features only
    assert not (run / "x").exists() and (run / "metrics.json").is_file()


def test_views_and_time_are_refused_where_they_mean_nothing(subset_csv, tmp_path, soundtag_main):
    code, out, err = soundtag_main(
        "train", "--data", subset_csv, "--recipe", "esc50-cpu-lh", "--views", "x", "--out", tmp_path / "r"
    )
    assert code != 0 and "--views chooses the views of the recipe auto" in err
    code, out, err = soundtag_main("train", "--data", subset_csv, "--time", "soon", "--out", tmp_path / "r")
    assert code != 0 and "--time 'soon' is not a duration" in err
    code, out, err = soundtag_main(
        "train", "--data", subset_csv, "--time", "5m", "-o", "training.epochs=3", "--out", tmp_path / "r"
    )
    assert code != 0 and "not both" in err


@pytest.mark.slow
def test_a_fold_stopped_after_its_pace_changed_resumes_to_the_new_epochs(subset_csv, feature_cache, tmp_path):
    """Stopped in the epoch after the re-plan: the last checkpoint holds the stretched schedule,
    and the resume trains the epochs it was stretched to (a one-cycle schedule stepped past its
    end would fail)."""

    from soundtag.runs import RunDir
    from soundtag.training.run import resume

    checks = []

    def stop_at_the_second_check(kept):
        checks.append(kept)
        if len(checks) == 2:
            raise RuntimeError("stopped")  # as a crash at the start of the fifth epoch

    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped"):
        # auto's one-cycle schedule, which fails if stepped past its end
        _train_behind_its_budget(
            subset_csv, feature_cache, run_dir, stop_at_the_second_check, "training.scheduler=onecycle"
        )
    run = RunDir(run_dir)
    assert run.recipe().training.epochs == 5 and not run.finished_folds()
    resume(run_dir, progress=False)
    for k in (0, 1):
        assert json.loads((run.fold_dir(k) / "done.json").read_text())["epochs"] == 5
