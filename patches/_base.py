"""Shared machinery of the patch modules: version guard, symbol lookup, reversible wrapping.

Every wrapper installed here keeps the object it replaced as ``__wrapped__`` and carries a
``__deft_patch__`` marker, so applying twice is a no-op and reverting restores the exact
original object (descriptor kind included: function, classmethod or staticmethod).
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable

from deft_sglang._logging import warn_once

SUPPORTED_SGLANG_VERSION = "0.5.17"
ENV_ALLOW_UNSUPPORTED = "DEFT_ALLOW_UNSUPPORTED_SGLANG"
MARKER = "__deft_patch__"


class SGLangCompatError(RuntimeError):
    """The installed SGLang is not the one deft-sglang supports (or lacks a symbol it needs)."""


def installed_sglang_version() -> str | None:
    """Version string of the installed ``sglang`` distribution, or None when absent."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        return version("sglang")
    except PackageNotFoundError:
        pass
    try:
        import sglang
        return getattr(sglang, "__version__", None)
    except ImportError:
        return None


def check_sglang_version(found: str | None = None) -> str:
    """Raise unless SGLang ``SUPPORTED_SGLANG_VERSION`` is installed.

    ``DEFT_ALLOW_UNSUPPORTED_SGLANG=1`` turns the error into a one-time warning.

    Parameters
    ----------
    found : str, optional
        Version to check (default: the installed one).

    Returns
    -------
    str
        The version found.

    Raises
    ------
    SGLangCompatError
        SGLang missing or at another version, without the override.
    """
    from deft_sglang.config import _get_bool

    found = installed_sglang_version() if found is None else found
    if found == SUPPORTED_SGLANG_VERSION:
        return found
    what = "is not installed" if found is None else f"is {found}"
    message = (f"deft-sglang supports SGLang {SUPPORTED_SGLANG_VERSION} only; the installed SGLang "
               f"{what}. Install sglang=={SUPPORTED_SGLANG_VERSION}")
    if found is not None and _get_bool(os.environ, ENV_ALLOW_UNSUPPORTED, False):
        warn_once(f"version:{found}", "%s (continuing: %s=1).", message, ENV_ALLOW_UNSUPPORTED)
        return found
    raise SGLangCompatError(message + f", or set {ENV_ALLOW_UNSUPPORTED}=1 to try anyway.")


def resolve(module: str, qualname: str = "") -> Any:
    """Import ``module`` and return the attribute at ``qualname`` (dotted), or the module.

    Raises
    ------
    SGLangCompatError
        Naming the missing symbol and the supported SGLang version.
    """
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module, exc) from exc
    for part in [p for p in qualname.split(".") if p]:
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise _missing(f"{module}.{qualname}", exc) from exc
    return obj


def _missing(symbol: str, exc: Exception) -> SGLangCompatError:
    return SGLangCompatError(
        f"SGLang symbol {symbol} not found ({exc}); deft-sglang needs SGLang "
        f"{SUPPORTED_SGLANG_VERSION} (installed: {installed_sglang_version()}).")


def _raw(owner: Any, name: str) -> Any:
    """The attribute as stored (a classmethod/staticmethod object for a class attribute)."""
    if isinstance(owner, type):
        for klass in owner.__mro__:
            if name in klass.__dict__:
                return klass.__dict__[name]
        raise AttributeError(name)
    return getattr(owner, name)


def _function_of(raw: Any) -> Callable:
    return raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw


def is_wrapped(owner: Any, name: str) -> bool:
    """True when ``owner.name`` is a deft wrapper."""
    try:
        return bool(getattr(_function_of(_raw(owner, name)), MARKER, False))
    except AttributeError:
        return False


def wrap(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.name`` by ``make_wrapper(original_function)``; idempotent.

    The original is kept as the wrapper's ``__wrapped__``; a classmethod or staticmethod stays
    one. Returns True when a wrapper was installed by this call.
    """
    if not hasattr(owner, name):
        where = getattr(owner, "__qualname__", getattr(owner, "__name__", repr(owner)))
        raise _missing(f"{getattr(owner, '__module__', '')}.{where}.{name}".lstrip("."),
                       AttributeError(name))
    if is_wrapped(owner, name):
        return False
    raw = _raw(owner, name)
    func = make_wrapper(_function_of(raw))
    setattr(func, MARKER, True)
    func.__wrapped__ = raw
    func.__deft_inherited__ = isinstance(owner, type) and name not in owner.__dict__
    if isinstance(raw, classmethod):
        func = classmethod(func)
    elif isinstance(raw, staticmethod):
        func = staticmethod(func)
    setattr(owner, name, func)
    return True


def unwrap(owner: Any, name: str) -> bool:
    """Restore the original of a deft wrapper at ``owner.name``; True when something changed."""
    if not is_wrapped(owner, name):
        return False
    func = _function_of(_raw(owner, name))
    if getattr(func, "__deft_inherited__", False):
        delattr(owner, name)
    else:
        setattr(owner, name, func.__wrapped__)
    return True
