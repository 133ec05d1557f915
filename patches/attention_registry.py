"""Touch point: the ``deft`` attention backend name.

Registers a factory under ``deft`` in SGLang's ``ATTENTION_BACKENDS`` and adds ``deft`` to
``ATTENTION_BACKEND_CHOICES`` (the list behind ``--attention-backend``,
``--decode-attention-backend`` and ``--prefill-attention-backend``; SGLang's own
``add_attention_backend_choices`` extends blindly, so membership is checked first).
"""
from __future__ import annotations

from ._base import MARKER, SGLangCompatError, resolve

BACKEND_NAME = "deft"
_REGISTRY = ("sglang.srt.layers.attention.attention_registry", "ATTENTION_BACKENDS")
_CHOICES = ("sglang.srt.server_args", "ATTENTION_BACKEND_CHOICES")
_ADD_CHOICES = ("sglang.srt.server_args", "add_attention_backend_choices")
_state = {"added_choice": False}


def create_deft_backend(model_runner):
    """SGLang backend factory: ``DeftAttnBackend(model_runner)``."""
    from deft_sglang.backend import DeftAttnBackend

    return DeftAttnBackend(model_runner)


setattr(create_deft_backend, MARKER, True)


def apply() -> None:
    """Register ``deft``; idempotent.

    Raises
    ------
    SGLangCompatError
        A symbol moved, or another package already registered a backend named ``deft``.
    """
    registry = resolve(*_REGISTRY)
    choices = resolve(*_CHOICES)
    add_choices = resolve(*_ADD_CHOICES)
    existing = registry.get(BACKEND_NAME)
    if existing is not None and not getattr(existing, MARKER, False):
        raise SGLangCompatError(
            f"another attention backend is already registered as {BACKEND_NAME!r} ({existing!r})")
    registry[BACKEND_NAME] = create_deft_backend
    if BACKEND_NAME not in choices:
        add_choices([BACKEND_NAME])
        _state["added_choice"] = True


def revert() -> None:
    """Remove what :func:`apply` added (a choice present before apply stays)."""
    registry = resolve(*_REGISTRY)
    if getattr(registry.get(BACKEND_NAME), MARKER, False):
        del registry[BACKEND_NAME]
    if _state["added_choice"]:
        choices = resolve(*_CHOICES)
        while BACKEND_NAME in choices:
            choices.remove(BACKEND_NAME)
        _state["added_choice"] = False


def is_applied() -> bool:
    """True while ``deft`` maps to this package's factory."""
    try:
        registry = resolve(*_REGISTRY)
    except SGLangCompatError:
        return False
    return getattr(registry.get(BACKEND_NAME), MARKER, False)
