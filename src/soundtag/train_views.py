"""``soundtag train``'s default product: the LH and the X view, trained in a time budget and
blended out of fold into one run directory.

:func:`train_views` extracts each view's features, times a few real steps of each view's model
on this machine (:func:`~soundtag.training.timing.time_fold`), plans the epochs that fit the
budget (:func:`~soundtag.planning.plan_epochs`), trains the views one after the other and
blends them with equal weights (:func:`~soundtag.prediction.ensemble_runs`). With two views the
run directory holds ``lh/`` and ``x/`` (each an ordinary run) and the blend; with one view it is
that view's run. Either way ``evaluate``, ``suspects``, ``review``, ``predict``, ``tag`` and
``export`` take it as they take any run, and ``plan.json`` keeps the plan and the recipes so that
``--resume`` trains what was planned.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from soundtag._io import atomic_write_json
from soundtag.distributed import is_primary_process, launch_rank
from soundtag.errors import DataError, ParameterError
from soundtag.hardware import Hardware, default_device
from soundtag.manifest import Manifest
from soundtag.planning import (
    DEFAULT_BUDGET,
    MIN_EPOCHS_PER_VIEW,
    FoldTiming,
    Pace,
    TimePlan,
    default_budget_epochs,
    default_budget_s,
    format_minutes,
    later_views_left_out,
    plan_epochs,
)
from soundtag.recipe import Recipe, load_recipe, recipe_from_dict
from soundtag.runs import EnsembleDir, RunDir

__all__ = ["ViewsResult", "is_planned_run", "resume_views", "train_views"]


@dataclass
class ViewsResult:
    run_dir: Path
    metrics: dict
    plan: TimePlan
    views: list[str]
    folds_trained: list[int] = field(default_factory=list)
    folds_skipped: list[int] = field(default_factory=list)
    blend: object | None = None  # the EnsembleResult of two views


def is_planned_run(path: str | Path) -> bool:
    """Whether ``path`` is a run ``soundtag train`` planned (it holds ``plan.json``)."""
    return RunDir(path).plan_file.is_file()


def train_views(
    manifest: Manifest,
    recipes: dict[str, Recipe],
    run_dir: str | Path,
    *,
    cache_dir: str | Path,
    budget_s: float | None = None,
    epochs_given: bool = False,
    folds: list[int] | None = None,
    progress: bool = True,
    data_source: str | None = None,
    hardware: Hardware = Hardware(),
    started: float | None = None,
    echo: Callable[[str], None] = print,
    views_asked: bool = False,
) -> ViewsResult:
    """Plan, train and blend the views of ``recipes`` into ``run_dir``.

    Parameters
    ----------
    manifest : the training clips
    recipes : ``{"lh": recipe, "x": recipe}``, or one of them, in training order
    run_dir : the run directory; must not exist or be empty
    cache_dir : the feature store folder
    budget_s : seconds for the whole command (default: :func:`~soundtag.planning.default_budget_s`)
    epochs_given : keep the recipes' epochs (the plan then only says how long they take)
    folds : train only these folds (default: all)
    started : ``time.perf_counter()`` when the command started (default: now)
    echo : where the plan and the progress lines go
    views_asked : the views were named (``--views lh+x``): kept however few epochs the budget gives
        them, rather than leaving a short budget to LH alone
    """
    from soundtag.training.run import fold_set, relabelled
    from soundtag.training.timing import time_fold

    started = time.perf_counter() if started is None else started
    run_dir = Path(run_dir)
    if not recipes:
        raise ParameterError("no view to train")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ParameterError(
            f"run directory {run_dir} already exists; use --resume to continue it or give another --out"
        )
    if budget_s is not None and epochs_given:
        raise ParameterError("give --time or training.epochs, not both: the budget sets the epochs")

    timings, n_folds, views, notes = {}, None, list(recipes), []
    timed = hardware.devices == 1 and hardware.num_nodes == 1 and launch_rank()[1] == 1
    for i, (view, recipe) in enumerate(recipes.items()):
        if i == 1 and timed and not (epochs_given or views_asked):
            # LH alone short of the fewest epochs a view: the plan would drop X, so X's features
            # and timing are not paid for
            spent, n = time.perf_counter() - started, len(folds) if folds else n_folds
            budget, _, _ = _budget(budget_s, timings[views[0]], views[0], n, spent)
            note = later_views_left_out(views[0], timings[views[0]], views[1:], folds=n, budget_s=budget, spent_s=spent)
            if note:
                views, notes = views[:1], [note]
                break
        labelled, blacklist = relabelled(manifest, recipe)
        plan_set = fold_set(labelled, recipe, blacklist, cache_dir, progress=progress)
        n_folds = plan_set.n_folds
        first = (folds or [0])[0]
        if not 0 <= first < n_folds:
            raise ParameterError(f"fold {first} does not exist: this dataset has folds 0..{n_folds - 1}")
        if timed:
            timings[view] = time_fold(plan_set, first)
    trained_folds = len(folds) if folds else n_folds
    spent = time.perf_counter() - started
    if not timed:  # several processes: each would time its own share; no plan
        plan = TimePlan(
            budget_s=None,
            budget_source="several processes: the recipes' epochs, untimed",
            epochs=recipes[views[0]].training.epochs,
            views=views,
            folds=trained_folds,
            spent_s=spent,
            expected_s=None,
            view_expected_s={},
            timings={},
        )
    else:
        budget_epochs = 0.0
        if epochs_given:
            source, budget = "the epochs were given (training.epochs)", None
        else:
            budget, source, budget_epochs = _budget(budget_s, timings[views[0]], views[0], trained_folds, spent)
        plan = plan_epochs(
            {v: timings[v] for v in views},
            folds=trained_folds,
            budget_s=budget,
            spent_s=spent,
            epochs=recipes[views[0]].training.epochs if epochs_given else None,
            budget_source=source,
            min_epochs_per_view=0 if views_asked else MIN_EPOCHS_PER_VIEW,
        )
        plan.notes[:0] = notes
        plan.budget_epochs = budget_epochs
    for line in plan.lines():
        echo(line)
    recipes = {v: load_recipe(recipes[v], [f"training.epochs={plan.epochs}"]) for v in plan.views}
    record = {
        "plan": plan.to_dict(),
        "recipes": {v: r.model_dump(mode="json") for v, r in recipes.items()},
        "data": data_source,
        "cache_dir": str(Path(cache_dir).absolute()),
        "folds": folds,
        "sessions_s": [],
        "created": dt.datetime.now().isoformat(timespec="seconds"),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    if is_primary_process():
        atomic_write_json(RunDir(run_dir).plan_file, record)
    return _train_planned(manifest, run_dir, record, progress=progress, hardware=hardware, started=started, echo=echo)


def _budget(
    budget_s: float | None, timing: FoldTiming, view: str, folds: int, spent: float
) -> tuple[float, str, float]:
    """The command's budget in seconds, where it came from (``--time``, or the default measured
    from the first view's ``timing`` and the ``spent`` seconds before training), and the epochs of
    the first view it counts (:attr:`TimePlan.budget_epochs`; 0 for ``--time``)."""
    if budget_s is not None:
        return budget_s, f"--time {format_minutes(budget_s)}", 0.0
    device = default_device()
    epochs = DEFAULT_BUDGET["epochs"][device]
    source = (
        f"the default: {DEFAULT_BUDGET['factor']:g}x the time of {epochs} epochs of the "
        f"{view.upper()} view over every fold here, features included"
        + (" (the plain-CNN baseline's schedule)" if device == "cpu" else "")
        + ", as timed, then as the first fold's epochs take; set it with --time"
    )
    return default_budget_s(timing, folds, spent, device), source, default_budget_epochs(folds, device)


def resume_views(
    run_dir: str | Path,
    *,
    progress: bool = True,
    hardware: Hardware = Hardware(),
    started: float | None = None,
    echo: Callable = print,
) -> ViewsResult:
    """Go on with a planned run: finished folds are kept, the plan's epochs and views hold
    (``started``: ``time.perf_counter()`` when this session started; default: now)."""
    started = time.perf_counter() if started is None else started
    run_dir = Path(run_dir)
    record = _read_record(run_dir)
    plan = TimePlan.from_dict(record["plan"])
    echo(
        f"resuming the plan of {run_dir}: {plan.epochs_text()}"
        + (f" (expected {format_minutes(plan.expected_s)} in all)" if plan.expected_s is not None else "")
    )
    first = RunDir(_view_dir(run_dir, plan.views[0], plan.views))
    manifest = first.manifest() if first.is_run() else _open_data(record)
    return _train_planned(manifest, run_dir, record, progress=progress, hardware=hardware, started=started, echo=echo)


def _read_record(run_dir: Path) -> dict:
    path = RunDir(run_dir).plan_file
    if not path.is_file():
        raise DataError(f"{run_dir} has no {path.name}: it is not a run `soundtag train` planned")
    try:
        record = json.loads(path.read_text())
        record["plan"], record["recipes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is damaged ({exc}); train the run again") from None
    return record


def _open_data(record: dict) -> Manifest:
    from soundtag.manifest import open_dataset

    if not record.get("data"):
        raise DataError("the plan does not say which data it was made for; train the run again with --data")
    return open_dataset(record["data"])


def _view_dir(run_dir: Path, view: str, views: list[str]) -> Path:
    """One view's run directory: the run itself when it trains one view, else ``lh/`` or ``x/``."""
    return run_dir if len(views) == 1 else EnsembleDir(run_dir).view_dir(view)


def _replan(plan: TimePlan, record: dict, rest: list[str], session_s: float, echo) -> None:
    """Give the views still to train the epochs that fit what is left of the budget, now that the
    views before them have taken what they really took (the timing of a few steps can be off)."""
    from soundtag.planning import FoldTiming, replan_epochs

    spent = sum(record.get("sessions_s", [])) + session_s
    timings = {v: FoldTiming(**plan.timings[v]) for v in rest}
    epochs = replan_epochs(timings, folds=plan.folds, left_s=plan.budget_s - spent)
    if epochs == plan.view_epochs[rest[0]]:
        return
    done = [v for v in plan.views if v not in rest]
    expected_then = plan.spent_s + sum(plan.view_expected_s[v] for v in done)
    echo(
        f"{' + '.join(v.upper() for v in done)} took {format_minutes(spent)} in all against "
        f"{format_minutes(expected_then)} planned: "
        f"{' + '.join(v.upper() for v in rest)} {'get' if len(rest) > 1 else 'gets'} {epochs} epochs "
        f"instead of {plan.view_epochs[rest[0]]}, "
        f"to end within the {format_minutes(plan.budget_s)} budget"
    )
    for v in rest:
        plan.view_epochs[v] = epochs
        record["recipes"][v]["training"]["epochs"] = epochs
    record["plan"] = plan.to_dict()


def _paced(plan: TimePlan, record: dict, view: str, kept, run_dir: Path) -> None:
    """Keep in the plan what a check of a view's first fold found of its real epochs (a
    :class:`~soundtag.training.fit.PaceKept`): the epochs every fold of the view trains, and the
    default budget as those epochs take it."""
    found = record.setdefault("paces", {}).setdefault(view, {"planned_budget_s": plan.budget_s})
    plan.budget_s = round(found["planned_budget_s"] + kept.budget_change_s, 3)
    plan.view_epochs[view] = kept.epochs
    record["recipes"][view]["training"]["epochs"] = kept.epochs
    record["plan"] = plan.to_dict()
    found |= {
        "planned": kept.planned,
        "epochs": kept.epochs,
        "real_epoch_s": round(kept.real_epoch_s, 4),
        "timed_epoch_s": round(kept.timed_epoch_s, 4),
        "budget_s": plan.budget_s,
    }
    if is_primary_process():
        atomic_write_json(RunDir(run_dir).plan_file, record)


def _pace_line(view: str, found: dict) -> str:
    """What a view's first fold found of its real epochs, in words."""
    moved = round(found["budget_s"]) != round(found["planned_budget_s"])
    return (
        f"{view.upper()}: its first fold's epochs took {found['real_epoch_s']:.2f} s against "
        f"{found['timed_epoch_s']:.2f} s timed, so "
        + (f"the default budget is {format_minutes(found['budget_s'])} and " if moved else "")
        + (
            f"the {found['planned']} epochs planned hold"
            if found["epochs"] == found["planned"]
            else f"each fold trains {found['epochs']} epochs instead of {found['planned']}"
        )
        + ("" if moved else f" to end within the {format_minutes(found['budget_s'])} budget")
    )


def _train_planned(
    manifest: Manifest, run_dir: Path, record: dict, *, progress: bool, hardware: Hardware, started: float, echo
) -> ViewsResult:
    from soundtag.training import evaluate_run
    from soundtag.training.run import train

    plan = TimePlan.from_dict(record["plan"])
    trained, skipped = [], []
    for i, view in enumerate(plan.views):
        view_dir = _view_dir(run_dir, view, plan.views)
        if i > 0 and plan.budget_s is not None and not RunDir(view_dir).is_run():
            _replan(plan, record, plan.views[i:], time.perf_counter() - started, echo)
            if is_primary_process():
                atomic_write_json(RunDir(run_dir).plan_file, record)
        recipe = recipe_from_dict(record["recipes"][view], source=f"{RunDir(run_dir).plan_file} ({view})")
        if len(plan.views) > 1:
            echo(f"view {view.upper()}: {view_dir}")
        pace, heard = None, []
        if plan.budget_s is not None and view in plan.timings:
            # the budget ends this long after this session's start, given what earlier ones took
            deadline = started + plan.budget_s - sum(record.get("sessions_s", []))
            later = tuple(FoldTiming(**plan.timings[v]) for v in plan.views[i + 1 :])
            # the default budget counts the first view's epochs: it moves with them
            budget_epochs = plan.budget_epochs if i == 0 else 0.0
            pace = Pace(
                deadline, FoldTiming(**plan.timings[view]), later, plan.folds, recipe.training.epochs, budget_epochs
            )

        def paced(kept, view=view, heard=heard):
            heard.append(kept)
            _paced(plan, record, view, kept, run_dir)

        result = train(
            manifest,
            recipe,
            view_dir,
            cache_dir=record["cache_dir"],
            folds=record.get("folds"),
            progress=progress,
            resume=True,  # a fresh view directory has nothing to resume; a stopped one goes on
            data_source=record.get("data"),
            hardware=hardware,
            pace=pace,
            on_pace=paced,
        )
        if heard:  # the view's first fold kept the pace in this session
            echo(_pace_line(view, record["paces"][view]))
        trained += [(view, k) for k in result.folds_trained]
        skipped += [(view, k) for k in result.folds_skipped]
        metrics = result.metrics
    blend = None
    if is_primary_process() and len(plan.views) > 1:
        from soundtag.prediction import ensemble_runs

        blend = ensemble_runs(
            [_view_dir(run_dir, v, plan.views) for v in plan.views],
            run_dir,
            partial=bool(record.get("folds")),
            weights="equal",
        )
        metrics = evaluate_run(run_dir)
    if is_primary_process():
        record["sessions_s"] = [*record.get("sessions_s", []), round(time.perf_counter() - started, 3)]
        plan.actual_s = round(sum(record["sessions_s"]), 3)
        record["plan"] = plan.to_dict()
        atomic_write_json(RunDir(run_dir).plan_file, record)
        if plan.expected_s is not None:  # a timed plan
            sessions = len(record["sessions_s"])
            echo(
                f"took {format_minutes(plan.actual_s)}"
                + (f" over {sessions} sessions" if sessions > 1 else "")
                + (f" of a {format_minutes(plan.budget_s)} budget" if plan.budget_s else "")
                + f"; the plan made before training expected {format_minutes(plan.expected_s)}"
            )
    return ViewsResult(
        run_dir,
        metrics,
        plan,
        plan.views,
        folds_trained=sorted({k for _, k in trained}),
        folds_skipped=sorted({k for _, k in skipped} - {k for _, k in trained}),
        blend=blend,
    )
