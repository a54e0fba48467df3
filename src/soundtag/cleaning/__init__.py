"""The blacklist loop: find suspect training clips, review them, and write the lists training reads.

- :mod:`~soundtag.cleaning.suspects`: rank a finished run's clips by out-of-fold mistakes,
  cleanlab's label quality and audio defects (``soundtag suspects RUN``);
- :mod:`~soundtag.cleaning.decisions`: the lists folder (``blacklist.csv``, ``relabel.csv``,
  ``decisions.csv``) and its :class:`DecisionBook`;
- :mod:`~soundtag.cleaning.review`: the local review page (``soundtag review RUN``);
- :mod:`~soundtag.cleaning.auto`: cleanlab's findings applied without review (``soundtag clean --auto``);
- :mod:`~soundtag.cleaning.self_verify`: self-verification's rounds of accept / relabel / drop and
  retrain (``soundtag self-verify RUN``).
"""

from soundtag.cleaning.auto import auto_clean
from soundtag.cleaning.decisions import Decision, DecisionBook, default_lists_dir, retrain_command
from soundtag.cleaning.self_verify import RoundReport, Verdicts, self_verify, verify_labels
from soundtag.cleaning.suspects import find_suspects, rank_suspects, read_suspects, summarize, write_suspects

__all__ = [
    "Decision",
    "DecisionBook",
    "RoundReport",
    "Verdicts",
    "auto_clean",
    "default_lists_dir",
    "find_suspects",
    "rank_suspects",
    "read_suspects",
    "retrain_command",
    "self_verify",
    "summarize",
    "verify_labels",
    "write_suspects",
]
