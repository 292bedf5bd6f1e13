"""Warnings about how the library is used, attributed to the user's line: the first outside gptoss_np."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """warnings.warn(message), a UserWarning, naming the first line outside gptoss_np's files on the way
    here: the user's call, whether it came through model.generate, Chat.send or gptoss_np.load. The
    command lines show it as a note instead (shown_as_notes)."""
    frame, level = sys._getframe(1), 2  # level: warnings.warn's stacklevel that names `frame`
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


@contextlib.contextmanager
def shown_as_notes(prog: str) -> Iterator[None]:
    """Within it, a warning is shown as one line `PROG: warning: MESSAGE` on stderr, as a command line's
    notes are, not with the file and line that Python names (a command's user has no line of their own)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
