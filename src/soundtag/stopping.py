"""A job asked to stop says so: SIGTERM, SIGINT and SIGHUP end a command with 128 + the signal.

SLURM's preemption, ``timeout``, a container stop and ``kill`` send SIGTERM; a scheduler or a
script (``soundtag train ... && soundtag export RUN``) reads the exit status, so a stopped job
must not exit 0 as if it had finished. Within :func:`stop_on_signals` each of these signals
raises :class:`Stopped` in the main thread, wherever it is; the ``finally`` blocks of the
atomic writes remove their temporary files on the way out, so nothing is left half-written,
and the command line prints what was kept and the command that resumes (:func:`on_stop`),
then exits with ``128 + signal`` as shells do (143 for SIGTERM, 130 for Ctrl-C).

A second signal while the first is being handled kills the process at once (the default
action), so a job that hangs on its way out can still be stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Callable, Iterator

__all__ = ["Stopped", "stop_on_signals", "on_stop"]

#: The signals that stop a job: the scheduler's, Ctrl-C's, and a closed terminal's.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stopped(BaseException):
    """The process received ``signum``. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way takes it for an error of its own and carries on."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        #: what was kept and how to resume (see :func:`on_stop`)
        self.note: Callable[[], str] | None = None
        super().__init__(self.name)

    def report(self) -> str:
        """One line: the signal, what was kept and the command that resumes."""
        line = f"stopped by {self.name}"
        if self.note is not None:
            try:
                line += f": {self.note()}"
            except Exception as exc:  # noqa: BLE001 - the report of a stop must not fail in turn
                line += f" (what was kept could not be read: {exc})"
        return line

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """``128 + signum``: what a shell reports for a process the signal ended."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the signals ``signums`` raise :class:`Stopped` in this process.

    Worker processes forked inside the block inherit the handler; there it restores the
    default action and sends the signal again, so a worker dies as it would have without
    soundtag, and only the main process unwinds.
    """
    main = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main or getattr(handler, "fired", False):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        handler.fired = True
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def on_stop(note: Callable[[], str]) -> Iterator[None]:
    """A :class:`Stopped` raised within the block carries ``note``, which says what was kept
    and how to resume; it is called when the stop is reported (:meth:`Stopped.report`), so it
    can look at what is on disk by then. The innermost block's note wins."""
    try:
        yield
    except Stopped as stop:
        stop.note = stop.note or note
        raise
