"""Exceptions raised by soundtag.

Every error a user can cause derives from :class:`SoundtagError`, so the command line can
print it as one clear message instead of a traceback. Messages quote the bad value, the rule
it broke, and what to do.
"""

from __future__ import annotations

from pathlib import Path


class SoundtagError(Exception):
    """Base class of every error soundtag raises on purpose."""


class ParameterError(SoundtagError, ValueError):
    """A parameter or config value is invalid (``hop_length=0 must be a positive integer``)."""


class DataError(SoundtagError):
    """A dataset, manifest or download is unusable; the message names the file and row."""


class AudioError(SoundtagError):
    """One audio file cannot be turned into a waveform.

    Parameters
    ----------
    path : path of the offending file
    reason : a short machine-readable tag (``corrupt``, ``empty``, ``missing`` ...)
    message : what went wrong and what to do
    """

    def __init__(self, path: str | Path, reason: str, message: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {message}")
