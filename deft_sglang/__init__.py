"""deft-sglang: DeFT tree attention (KV-guided grouping, flattened tree KV splitting) for SGLang.

Three ways in:

* ``python -m sglang.launch_server --attention-backend deft ...`` (or
  ``--decode-attention-backend deft``): the ``sglang.srt.plugins`` entry point registers the name.
* ``python -m deft_sglang.launch_server <sglang flags>`` (also the ``deft-sglang`` command).
* ``deft_sglang.enable()`` before starting ``sgl.Engine`` / a server from Python.

Importing this package is cheap and does not import SGLang; :func:`enable` does.
"""
from __future__ import annotations

import os

from ._version import __version__

__all__ = ["__version__", "enable", "disable", "is_enabled"]

_state = {"enabled": False}


def enable() -> None:
    """Make DeFT the decode attention of the SGLang engines/servers this process starts.

    Applies the SGLang patches (see ``deft_sglang.patches``) and sets ``DEFT_ENABLE=1`` so that
    SGLang's spawned scheduler processes apply them too. Idempotent.

    Raises
    ------
    deft_sglang.patches.SGLangCompatError
        SGLang is not version 0.5.17 (``DEFT_ALLOW_UNSUPPORTED_SGLANG=1`` overrides), or a symbol
        deft-sglang patches has moved.
    ValueError
        A ``DEFT_*`` environment variable has an invalid value.
    """
    from . import patches
    from ._logging import info_once
    from .config import ENV_ENABLE, get_config

    get_config()  # validate the DEFT_* variables before touching anything
    patches.apply_all(owner="enable")
    os.environ[ENV_ENABLE] = "1"
    _state["enabled"] = True
    info_once("enabled", "DeFT enabled: SGLang engines/servers started from this process decode "
              "with DeFT tree attention (deft-sglang %s)", __version__)


def disable() -> None:
    """Undo :func:`enable`: engines/servers started afterwards use stock SGLang attention."""
    from . import patches
    from ._logging import forget
    from .config import ENV_ENABLE

    os.environ.pop(ENV_ENABLE, None)
    _state["enabled"] = False
    patches.revert_all(owner="enable")
    forget("enabled")


def is_enabled() -> bool:
    """True between :func:`enable` and :func:`disable` (or in a process started with it)."""
    return _state["enabled"]


def _mark_enabled() -> None:
    """Called by the plugin in processes that inherited ``DEFT_ENABLE=1``."""
    _state["enabled"] = True
