"""From what a user names to a validated recipe: the one resolver every command goes through.

A recipe can be named five ways: a built-in name (``esc50-cpu-lh``), a YAML file, ``auto`` or
``auto-x`` (chosen from a dataset, :mod:`soundtag.recipe_auto`), a released pretrained
architecture (``--arch panns-cnn14``: its fine-tuning recipe with that model), and on top of any
of them the command line's options (``--init``, ``--folds``, ``--model``, ``--blacklist``,
``--relabel``) and ``-o section.key=value`` overrides. :func:`resolve_recipe` takes them all, in
that order, and says why when the data chose.

The layers underneath: :mod:`soundtag.recipe` is the schema and reads names and files,
:mod:`soundtag.recipe_auto` holds the rules of ``auto``; neither imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from soundtag.errors import ParameterError
from soundtag.recipe import AUTO_VIEWS, Recipe, load_recipe

__all__ = ["ResolvedRecipe", "ResolvedViews", "option_overrides", "resolve_recipe", "resolve_views"]


@dataclass
class ResolvedRecipe:
    """The recipe, and for ``auto`` a line per choice saying what the data made it choose."""

    recipe: Recipe
    reasons: list[str] = field(default_factory=list)


def option_overrides(
    *,
    folds: int | None = None,
    model: str | None = None,
    blacklist: str | Path | None = None,
    relabel: str | Path | None = None,
    init: str | Path | None = None,
) -> list[str]:
    """The command line's recipe options as ``training.*`` overrides (paths made absolute, so that a
    run's saved recipe still finds them from another folder).

    Examples
    --------
    >>> option_overrides(folds=5, model="vgg")
    ['training.folds=5', 'training.model=vgg']
    """
    out = [f"training.{key}={value}" for key, value in (("folds", folds), ("model", model)) if value is not None]
    for key, value in (("blacklist", blacklist), ("relabel", relabel)):
        if value is not None:
            out.append(f"training.{key}={Path(value).absolute()}")
    if init is not None:
        if not Path(init).is_file():
            raise ParameterError(f"--init {init} does not exist; give a local checkpoint file")
        out.append(f"training.checkpoint={Path(init).resolve()}")
    return out


def resolve_recipe(
    source: str | Path | Recipe | None = None,
    overrides: Iterable[str] = (),
    *,
    manifest=None,
    arch: str | None = None,
    device: str | None = None,
    cpu_count: int | None = None,
    **options,
) -> ResolvedRecipe:
    """Resolve a recipe as the command line names it.

    Parameters
    ----------
    source : a built-in name, a YAML file, a :class:`~soundtag.recipe.Recipe`, or ``auto`` /
        ``auto-x``; None with ``arch``
    overrides : ``section.key=value`` strings, applied after the source's own fields
    manifest : the dataset ``auto`` is chosen from
    arch : a released architecture (:data:`~soundtag.models.pretrained.PRETRAINED`): its
        fine-tuning recipe, with ``training.model`` set to it, unless ``source`` names another
    device, cpu_count : the machine ``auto`` sizes for (default: this one)
    **options : ``folds``, ``model``, ``blacklist``, ``relabel``, ``init`` (see
        :func:`option_overrides`), applied after ``overrides``

    Raises
    ------
    ParameterError
        for an unknown name (with the nearest), a file that does not exist, ``auto`` without a
        dataset, or an override the recipe rejects
    """
    extra = [*overrides, *option_overrides(**options)]
    if arch is not None:
        from soundtag.models.pretrained import pretrained_info

        info = pretrained_info(arch)
        source = source or info.recipe
        extra = [f"training.model={arch}", *extra]
    if source is None:
        raise ParameterError("name a recipe (a built-in name, a YAML file or auto) or a pretrained --arch")
    if not isinstance(source, Recipe) and str(source) in AUTO_VIEWS:
        if manifest is None:
            raise ParameterError(
                f"recipe {str(source)!r} is chosen from a dataset: pass it "
                f"(--data D on the command line, manifest= from Python)"
            )
        from soundtag.hardware import default_device
        from soundtag.recipe_auto import auto_recipe

        recipe, reasons = auto_recipe(
            manifest,
            overrides=extra,
            view=AUTO_VIEWS[str(source)],
            device=device or default_device(),
            cpu_count=cpu_count,
        )
        return ResolvedRecipe(recipe, reasons)
    return ResolvedRecipe(load_recipe(source, extra))


@dataclass
class ResolvedViews:
    """The recipe of every view ``soundtag train`` trains, in order, and why."""

    recipes: dict[str, Recipe]
    reasons: list[str] = field(default_factory=list)


def resolve_views(
    source: str | Path | Recipe,
    overrides: Iterable[str] = (),
    *,
    manifest=None,
    views: Iterable[str] | None = None,
    device: str | None = None,
    cpu_count: int | None = None,
    **options,
) -> ResolvedViews:
    """The views a training run trains: for ``auto``, LH and X when the data suits both (or the
    ``views`` asked for); for ``auto-x`` the X view; for any other recipe, that recipe alone.

    Parameters are those of :func:`resolve_recipe`, and ``views`` (``["lh"]``, ``["x"]`` or
    ``["lh", "x"]``), which only ``auto`` takes.
    """
    views = list(views) if views is not None else None
    if isinstance(source, Recipe) or str(source) != "auto":
        if views is not None and not (str(source) == "auto-x" and views == ["x"]):
            raise ParameterError(
                f"--views chooses the views of the recipe auto; recipe {getattr(source, 'name', source)!r} is one view"
            )
        resolved = resolve_recipe(source, overrides, manifest=manifest, device=device, cpu_count=cpu_count, **options)
        return ResolvedViews({resolved.recipe.view.kind: resolved.recipe}, resolved.reasons)
    if manifest is None:
        raise ParameterError("recipe 'auto' is chosen from a dataset: pass it (--data D, or manifest= from Python)")
    from soundtag.hardware import default_device
    from soundtag.recipe_auto import auto_recipes

    recipes, reasons = auto_recipes(
        manifest,
        views=views,
        overrides=[*overrides, *option_overrides(**options)],
        device=device or default_device(),
        cpu_count=cpu_count,
    )
    return ResolvedViews(recipes, reasons)
