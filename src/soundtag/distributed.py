"""Who this process is among processes started together, and which share of the work is its own:
the one place that answers "am I rank 0".

An external launcher (torchrun, SLURM's srun) starts several copies of a command and tells
each its rank and the world size in the environment. :func:`launch_rank` reads them before
any process group exists, :func:`group_rank` asks PyTorch's process group once one does, and
:func:`is_primary_process` (the one process that writes files and reports) asks both.
:func:`resolve_shard` turns them, or a shard given by hand (``--shard 3/8`` for array jobs),
into the ``(i, n)`` share of clips a process computes. Nothing here imports PyTorch.
"""

from __future__ import annotations

import numbers
import os
import sys
from typing import Mapping, Union

from soundtag.errors import ParameterError

#: What to compute: ``(i, n)`` (every n-th clip from the i-th), ``"i/n"``, ``"all"``, or None
#: (the launcher's share when several processes were started together, else all clips).
Shard = Union[tuple[int, int], str, None]
ALL = (0, 1)


def launch_rank(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(global rank, world size)`` given by an external launcher (torchrun, SLURM), before
    the process group exists; ``(0, 1)`` when this process is the only one so far.

    Parameters
    ----------
    env : the environment to read (default: ``os.environ``)

    Examples
    --------
    >>> launch_rank({})
    (0, 1)
    >>> launch_rank({"RANK": "3", "WORLD_SIZE": "4"})  # torchrun
    (3, 4)
    >>> launch_rank({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"})  # srun
    (1, 2)
    """
    env = os.environ if env is None else env
    size = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", "1")))
    if "RANK" in env or "SLURM_PROCID" in env:
        return int(env.get("RANK", env.get("SLURM_PROCID"))), size
    # Processes started by Lightning's own launcher know only their node and local rank; this
    # number is unique and zero for the first process only, which is all that is asked of it.
    return int(env.get("NODE_RANK", "0")) * size + int(env.get("LOCAL_RANK", "0")), size


def group_rank() -> tuple[int, int]:
    """``(rank, world size)`` in PyTorch's process group once one exists, else ``(0, 1)``.

    A process that has not imported PyTorch has no process group, so it is not imported here.
    """
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_primary_process() -> bool:
    """Whether this is the one process (of several, or the only one) that writes and reports:
    rank 0 in the process group and by the launcher's word."""
    return group_rank()[0] == 0 and launch_rank()[0] == 0


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` as ``(i, n)`` with ``0 <= i < n``; ``"all"`` is ``(0, 1)``, every clip.

    Examples
    --------
    >>> parse_shard("3/8")
    (3, 8)
    >>> parse_shard("all")
    (0, 1)
    >>> parse_shard("8/8")
    Traceback (most recent call last):
        ...
    soundtag.errors.ParameterError: shard '8/8' must be i/n with 0 <= i < n, e.g. 0/4 ... 3/4 (or 'all')
    """
    if str(text).strip().lower() == "all":
        return ALL
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ParameterError(f"shard {text!r} must be written i/n, e.g. 0/4 ... 3/4 (or 'all')") from None
    if not 0 <= i < n:
        raise ParameterError(f"shard {text!r} must be i/n with 0 <= i < n, e.g. 0/4 ... 3/4 (or 'all')")
    return i, n


def resolve_shard(shard: Shard = None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The ``(i, n)`` share of the clips this process computes; ``(0, 1)`` is all of them.

    Parameters
    ----------
    shard : ``(i, n)`` or ``"i/n"``: that share; ``"all"``: every clip, whoever started the
        process; None: the launcher's ``(rank, world size)`` when torchrun or srun started
        several processes, else every clip
    env : the environment to read (default: ``os.environ``)

    Raises
    ------
    ParameterError
        for a shard that is not ``0 <= i < n``, naming it

    Examples
    --------
    >>> resolve_shard(None, {})
    (0, 1)
    >>> resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"})
    (1, 2)
    >>> resolve_shard("all", {"RANK": "1", "WORLD_SIZE": "2"})
    (0, 1)
    >>> resolve_shard((2, 4))
    (2, 4)
    """
    if shard is None:
        rank, processes = launch_rank(env)
        return (rank, processes) if processes > 1 else ALL
    if isinstance(shard, str):
        return parse_shard(shard)
    try:
        i, n = shard
    except (TypeError, ValueError):
        raise ParameterError(f"shard={shard!r} must be (i, n), 'i/n', 'all' or None") from None
    if not (isinstance(i, numbers.Integral) and isinstance(n, numbers.Integral) and 0 <= i < n):
        raise ParameterError(f"shard={i}/{n}: needs 0 <= i < n, e.g. 0/4 ... 3/4")
    return int(i), int(n)
