"""One small registry for every named thing: models, dataset layouts, datasets.

A duplicate name is an error, never a silent overwrite, and an unknown name is an error that
names the nearest registered one, so a typo never falls back to something else.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Generic, Iterable, Iterator, TypeVar

from soundtag.errors import ParameterError

T = TypeVar("T")


def nearest(name: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The choice closest to ``name`` (``difflib``'s ratio at least ``cutoff``), or None.

    Examples
    --------
    >>> nearest("alexnet-kernl", ["alexnet-kernel", "vgg"])
    'alexnet-kernel'
    >>> nearest("zzz", ["alexnet-kernel", "vgg"]) is None
    True
    """
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str], *, cutoff: float = 0.6, prefix: str = "") -> str:
    """``"did you mean 'x'?"`` for the nearest of ``choices``, or ``""`` when none is near.

    Examples
    --------
    >>> did_you_mean("esc5O", ["esc50", "esc10"])
    "did you mean 'esc50'?"
    >>> did_you_mean("resnet", ["resnet18"], prefix="timm:")
    "did you mean 'timm:resnet18'?"
    """
    close = nearest(name, choices, cutoff=cutoff)
    return f"did you mean {prefix + close!r}?" if close else ""


class Registry(Generic[T]):
    """Named entries of one kind.

    Parameters
    ----------
    kind : what the entries are, for messages (``"model"``, ``"dataset layout"``)
    hint : what to say when no registered name is near (default: the list of names)

    Examples
    --------
    >>> models = Registry("model")
    >>> models.add("vgg", 1)
    1
    >>> models.get("vgh")
    Traceback (most recent call last):
        ...
    soundtag.errors.ParameterError: unknown model 'vgh': did you mean 'vgg'?
    >>> models.add("vgg", 2)
    Traceback (most recent call last):
        ...
    soundtag.errors.ParameterError: model 'vgg' is already registered; pick another name
    """

    def __init__(self, kind: str, *, hint: str | None = None):
        self.kind, self._hint = kind, hint
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; returns it (so it can end a decorator)."""
        if name in self._entries:
            raise ParameterError(f"{self.kind} {name!r} is already registered; pick another name")
        self._entries[name] = entry
        return entry

    def register(self, name: str):
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry)

    def remove(self, name: str) -> T:
        return self._entries.pop(self.resolve(name))

    def resolve(self, name: str) -> str:
        """The registered name for ``name`` (exact, else case- and space-insensitive), or an
        error naming the nearest one."""
        if name in self._entries:
            return name
        folded = str(name).strip().lower()
        if folded in self._entries:
            return folded
        hint = (
            did_you_mean(folded, self._entries, cutoff=0.5)
            or self._hint
            or f"choose one of {', '.join(self.names()) or '(none registered)'}"
        )
        raise ParameterError(f"unknown {self.kind} {name!r}: {hint}")

    def get(self, name: str) -> T:
        return self._entries[self.resolve(name)]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a wildcard pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def values(self):
        return self._entries.values()

    def __len__(self) -> int:
        return len(self._entries)
