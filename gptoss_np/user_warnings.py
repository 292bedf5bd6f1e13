"""Warnings about how the library is used, attributed to the user's line: the first outside gptoss_np."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """warnings.warn(message), a UserWarning, naming the first line outside gptoss_np's files on the way
    here: the user's call, whether it came through model.generate, Chat.send or gptoss_np.load (from
    the command line, the line that started it)."""
    frame, level = sys._getframe(1), 2  # level: warnings.warn's stacklevel that names `frame`
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)
