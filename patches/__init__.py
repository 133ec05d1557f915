"""Reversible monkey patches of SGLang 0.5.17, one module per touch point.

=====================  ==========================================================================
Module                 Touch point
=====================  ==========================================================================
attention_registry     ``ATTENTION_BACKENDS['deft']`` and the ``--*-attention-backend`` choices
server_args            ``ServerArgs.__post_init__``: select DeFT when enabled; CUDA-graph policy
forward_batch          ``ForwardBatch.init_new``: hand the decode batch's requests to the backend
scheduler_entry        ``configure_scheduler_process`` / ``Engine.run_scheduler_process_func``
graph_runner           ``DecodeCudaGraphRunner.can_run_graph``: plan a decode step before replay
=====================  ==========================================================================

Each module has ``apply()`` (idempotent), ``revert()`` and ``is_applied()``. :func:`apply_all`
checks the SGLang version first. Patches are shared by *owners* (``"plugin"`` for the entry
point, ``"enable"`` for :func:`deft_sglang.enable`): :func:`revert_all` reverts only when no owner
is left, so ``disable()`` does not pull the ``deft`` backend name from under an installed plugin.
"""
from __future__ import annotations

import importlib

from ._base import (SUPPORTED_SGLANG_VERSION, SGLangCompatError, check_sglang_version,
                    installed_sglang_version)

PATCH_NAMES = ("attention_registry", "server_args", "forward_batch", "scheduler_entry",
               "graph_runner")
_owners: set[str] = set()

__all__ = ["PATCH_NAMES", "SUPPORTED_SGLANG_VERSION", "SGLangCompatError", "apply_all",
           "revert_all", "applied", "owners", "check_sglang_version", "installed_sglang_version",
           "patch_module"]


def patch_module(name: str):
    """The patch module called ``name`` (one of :data:`PATCH_NAMES`)."""
    if name not in PATCH_NAMES:
        raise ValueError(f"unknown patch {name!r}; known: {', '.join(PATCH_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def apply_all(owner: str = "enable") -> None:
    """Check the SGLang version, then apply every patch (idempotent) on behalf of ``owner``.

    Raises
    ------
    SGLangCompatError
        Wrong SGLang version (without ``DEFT_ALLOW_UNSUPPORTED_SGLANG=1``) or a moved symbol.
        Patches applied before the failure are reverted when no other owner holds them.
    """
    check_sglang_version()
    done = []
    try:
        for name in PATCH_NAMES:
            patch_module(name).apply()
            done.append(name)
    except Exception:
        if not _owners:
            for name in reversed(done):
                patch_module(name).revert()
        raise
    _owners.add(owner)


def revert_all(owner: str = "enable") -> bool:
    """Drop ``owner``; revert every patch when no owner is left. True when reverted."""
    _owners.discard(owner)
    if _owners:
        return False
    for name in reversed(PATCH_NAMES):
        patch_module(name).revert()
    return True


def applied() -> dict[str, bool]:
    """Patch name -> whether it is currently applied."""
    result = {}
    for name in PATCH_NAMES:
        try:
            result[name] = bool(patch_module(name).is_applied())
        except SGLangCompatError:  # its target moved: certainly not applied
            result[name] = False
    return result


def owners() -> frozenset:
    """The owners currently holding the patches."""
    return frozenset(_owners)
