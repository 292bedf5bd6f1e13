"""Warnings about how the library is used, attributed to the user's line: the first outside gptoss_np."""

from __future__ import annotations

import sys
import warnings


def warn(message: str) -> None:
    """warnings.warn(message), a UserWarning, naming the first line outside gptoss_np on the way here
    (the user's call, whether it came through model.generate, Chat.send or gptoss_np.load)."""
    frame, level = sys._getframe(1), 2  # level: warnings.warn's stacklevel that names `frame`
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == __package__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)
