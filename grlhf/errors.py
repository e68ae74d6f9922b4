"""What a command line reports as the user's error: a message and exit status 2, without a traceback.

``UserError`` marks an exception raised by bad input: a configuration, a YAML file, a path, a model
directory whose weights do not fit its config, data without usable rows, a judge endpoint that does not
answer. The modules raise subclasses that also derive from the builtin type callers expect (``ValueError``,
``RuntimeError``); ``cli_main`` turns them into one line on stderr. Anything else is an internal error
and keeps its traceback. ``--debug`` or ``GRLHF_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "GRLHF_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error in what the user gave; its message says what is wrong and what to change."""


# missing or unusable paths are the user's too, whichever module tripped over them
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def debug_requested(args: Sequence[str]) -> tuple[list[str], bool]:
    """``(args without --debug, whether --debug was given or GRLHF_DEBUG is set to 1/true)``."""
    rest = [arg for arg in args if arg != DEBUG_FLAG]
    return rest, len(rest) < len(args) or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def cli_main(prog: str, main: Callable[[list[str]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``main(args)``; a user error prints ``prog: message`` on stderr and returns 2 (with
    ``--debug`` / ``GRLHF_DEBUG=1`` it is re-raised, traceback and all). Internal errors propagate."""
    args, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    try:
        return main(args)
    except (UserError, *PATH_ERRORS) as error:
        if debug:
            raise
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "EXIT_USER_ERROR", "PATH_ERRORS", "UserError", "cli_main", "debug_requested"]
