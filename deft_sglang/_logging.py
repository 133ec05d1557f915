"""Logging helpers: one line per process for things that must be said once."""
from __future__ import annotations

import logging
import threading

logger = logging.getLogger("deft_sglang")

_said: set[str] = set()
_lock = threading.Lock()


def once(key: str, level: int, message: str, *args) -> bool:
    """Log ``message`` at ``level`` the first time ``key`` is seen in this process.

    Parameters
    ----------
    key : str
        Deduplication key; a second call with the same key logs nothing.
    level : int
        A ``logging`` level.
    message : str
        ``%``-style format string, formatted with ``args``.

    Returns
    -------
    bool
        True when the line was emitted by this call.
    """
    with _lock:
        if key in _said:
            return False
        _said.add(key)
    logger.log(level, message, *args)
    return True


def warn_once(key: str, message: str, *args) -> bool:
    """``once`` at WARNING level."""
    return once(key, logging.WARNING, message, *args)


def info_once(key: str, message: str, *args) -> bool:
    """``once`` at INFO level."""
    return once(key, logging.INFO, message, *args)


def forget(prefix: str = "") -> None:
    """Forget the keys starting with ``prefix`` (tests use it to observe warnings again)."""
    with _lock:
        for key in [k for k in _said if k.startswith(prefix)]:
            _said.discard(key)
