"""Touch point: the scheduler process entry, so ``enable()`` reaches spawned schedulers.

SGLang starts schedulers with multiprocessing *spawn*: patches made in the parent are gone in
the child. Three things carry DeFT over:

1. ``DEFT_ENABLE=1`` in the environment (set by ``enable()``), inherited by the child.
2. The ``sglang.srt.plugins`` entry point: ``run_scheduler_process`` calls ``load_plugins()``
   first, which runs :func:`deft_sglang.plugin.register` and re-applies the patches there.
3. ``Engine.run_scheduler_process_func`` is replaced by :func:`run_scheduler_process` (a
   module-level function, so it pickles by reference), which applies the patches itself before
   calling SGLang's: ``sgl.Engine`` works even where entry points are not installed.

In the child, ``configure_scheduler_process`` (the first thing ``run_scheduler_process`` does with
its ServerArgs) is wrapped to make DeFT the decode backend when enabled, for ServerArgs that were
built before ``enable()``.
"""
from __future__ import annotations

from ._base import _missing, is_wrapped, resolve, unwrap, wrap

_SCHED = ("sglang.srt.managers.scheduler", "")
_ENGINE = ("sglang.srt.entrypoints.engine", "Engine")
_saved: dict = {}


def run_scheduler_process(*args, **kwargs):
    """SGLang's ``run_scheduler_process`` with the DeFT patches applied first (child side)."""
    from deft_sglang import patches
    from deft_sglang.config import get_config

    if get_config().enable:
        patches.apply_all(owner="enable")
    stock = resolve("sglang.srt.managers.scheduler", "run_scheduler_process")
    return stock(*args, **kwargs)


def _make_configure(original):
    def configure_scheduler_process(server_args, *args, **kwargs):
        from deft_sglang.config import get_config

        from .server_args import adjust

        if get_config().enable:
            adjust(server_args)
        return original(server_args, *args, **kwargs)
    return configure_scheduler_process


def apply() -> None:
    """Wrap ``configure_scheduler_process`` and point ``Engine`` at the DeFT entry; idempotent."""
    wrap(resolve(*_SCHED), "configure_scheduler_process", _make_configure)
    engine = resolve(*_ENGINE)
    current = engine.__dict__.get("run_scheduler_process_func")
    if not isinstance(current, staticmethod):
        raise _missing("sglang.srt.entrypoints.engine.Engine.run_scheduler_process_func",
                       TypeError("not a staticmethod"))
    if current.__func__ is not run_scheduler_process:
        _saved["engine_entry"] = current
        engine.run_scheduler_process_func = staticmethod(run_scheduler_process)


def revert() -> None:
    """Restore both originals."""
    unwrap(resolve(*_SCHED), "configure_scheduler_process")
    engine = resolve(*_ENGINE)
    saved = _saved.pop("engine_entry", None)
    if saved is not None:
        engine.run_scheduler_process_func = saved


def is_applied() -> bool:
    """True while both hooks are installed."""
    engine = resolve(*_ENGINE)
    return (is_wrapped(resolve(*_SCHED), "configure_scheduler_process")
            and engine.__dict__["run_scheduler_process_func"].__func__ is run_scheduler_process)
