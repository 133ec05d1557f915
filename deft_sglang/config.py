"""DeFT runtime configuration, read from ``DEFT_*`` environment variables (and server args).

Every variable is validated when read; a bad value raises ``ValueError`` naming the variable.

======================================  =========  ==============================================
Variable                                Default    Meaning
======================================  =========  ==============================================
``DEFT_ENABLE``                         ``0``      Make DeFT the decode attention of the SGLang
                                                   servers/engines this process (and its spawned
                                                   schedulers) starts. Set by ``enable()``.
``DEFT_ALLOW_UNSUPPORTED_SGLANG``       ``0``      Run on an SGLang other than 0.5.17 (warns).
``DEFT_FALLBACK_BACKEND``               (auto)     Stock backend for extend/prefill and for the
                                                   decode batches DeFT does not handle; default:
                                                   ``--attention-backend`` when it names a stock
                                                   backend, else ``triton``.
``DEFT_CUDA_GRAPH``                     ``on``     ``on``: DeFT decodes inside SGLang's decode
                                                   CUDA graphs; ``disable``: turn decode graphs
                                                   off (DeFT runs eagerly); ``fallback``: graphs
                                                   replay the stock decode kernel.
``DEFT_GRAPH_WORKSPACE_MB``             ``256``    Memory for the partial results of graph
                                                   replays; a step needing more runs eagerly.
``DEFT_VERIFY_TREE``                    ``0``      Check every shared node's KV slots against
                                                   each request's ``req_to_token`` row (a device
                                                   sync per step; for debugging).
``DEFT_VALIDATE_PLAN``                  ``0``      Validate the forest handed to the planner (host sync).
``DEFT_PLANNER``                        (none)     Planner overrides, comma-separated
                                                   ``KEY=VALUE`` fields of
                                                   ``kernels.PlannerConfig`` (e.g.
                                                   ``waves=8,block_m=128``); for tuning.
``DEFT_MIN_BATCH_SIZE``                 ``1``      Eager decode batches smaller than this use the
                                                   stock kernel (graph replays always run DeFT).
``DEFT_TAIL_SLACK``                     ``32``     Plans leave this many free slots per request
                                                   tail, so the next decode steps of an unchanged
                                                   batch reuse the plan (advanced on the GPU)
                                                   instead of re-planning; 0: plan every step.
``DEFT_GRAPH_TAIL_ADVANCE``             ``graph``  Where a replayed decode graph's reused plan is
                                                   advanced: ``graph`` (a kernel the graph
                                                   captured: no host launch) or ``host`` (two
                                                   device copies launched before the replay).
``DEFT_SPEC_VERIFY``                    ``1``      Speculative decoding (EAGLE, EAGLE3,
                                                   STANDALONE): the target model's tree-verify
                                                   forwards run DeFT (the draft model keeps a
                                                   stock backend); 0: stock attention throughout.
``DEFT_SHADOW_CHECK``                   ``0``      Also run the stock kernel on every DeFT decode
                                                   layer and keep the largest difference (slow;
                                                   logged every ``DEFT_STATS_INTERVAL`` steps).
``DEFT_STATS_INTERVAL``                 ``0``      Every this many decode steps, log the host time
                                                   per step (and the shadow check); 0: never.
``DEFT_LOG_LEVEL``                      (unset)    Level of the ``deft_sglang`` logger, e.g.
                                                   ``debug`` for per-step stats without SGLang's
                                                   own debug output.
======================================  =========  ==============================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
CUDA_GRAPH_MODES = ("on", "disable", "fallback")
GRAPH_TAIL_ADVANCE = ("host", "graph")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_ENABLE = "DEFT_ENABLE"
ENV_ALLOW_UNSUPPORTED = "DEFT_ALLOW_UNSUPPORTED_SGLANG"


def _get_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _get_int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _get_choice(env: Mapping[str, str], name: str, default: str, choices) -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return value


def _get_planner(env: Mapping[str, str]) -> tuple:
    raw = env.get("DEFT_PLANNER", "")
    items = tuple(item.strip() for item in raw.split(",") if item.strip())
    if items:
        from .kernels.config import PlannerConfig
        try:
            PlannerConfig.from_overrides(items)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"DEFT_PLANNER={raw!r}: {exc}") from None
    return items


def _fallback_backend(env: Mapping[str, str], server_args: Any) -> str:
    raw = env.get("DEFT_FALLBACK_BACKEND")
    if raw is not None and raw.strip():
        value = raw.strip()
        if value == "deft":
            raise ValueError("DEFT_FALLBACK_BACKEND must name a stock SGLang backend, not 'deft'")
        if not value.replace("_", "").isalnum():
            raise ValueError(f"DEFT_FALLBACK_BACKEND={raw!r} is not a backend name")
        return value
    stock = getattr(server_args, "attention_backend", None) if server_args is not None else None
    if stock and stock != "deft":
        return str(stock)
    return "triton"


@dataclass(frozen=True)
class DeftConfig:
    """DeFT settings of this process; build with :meth:`DeftConfig.from_env`.

    Attributes
    ----------
    enable : bool
        DeFT is the decode attention of the engines/servers started from here.
    allow_unsupported_sglang : bool
        Proceed (with a warning) on an SGLang version other than the supported one.
    fallback_backend : str
        Stock SGLang backend name for extend/prefill and for decode batches DeFT skips.
    cuda_graph : str
        ``"on"``, ``"disable"`` or ``"fallback"``; see the module docstring.
    graph_workspace_mb : int
        Partial-result memory of the CUDA-graph workspace, in MiB.
    verify_tree : bool
        Compare shared nodes' slots with every request's ``req_to_token`` row each step.
    validate_plan : bool
        Validate the forest arrays in the planner.
    planner : tuple of str
        ``KEY=VALUE`` overrides of the planner's defaults (:meth:`planner_config`).
    min_batch_size : int
        Smallest decode batch DeFT handles.
    tail_slack : int
        Decode steps a plan may be reused for while its batch only grows (0: never).
    graph_tail_advance : str
        ``"host"`` or ``"graph"``: who advances a reused plan in a replayed decode graph.
    spec_verify : bool
        Serve speculative decoding's target-verify forwards with DeFT.
    shadow_check : bool
        Compare every DeFT decode layer with the stock kernel (debugging, evidence).
    stats_interval : int
        Decode steps between two INFO lines of run-time statistics (0: none).
    log_level : str or None
        Level for the ``deft_sglang`` logger (None: inherit SGLang's).
    """

    enable: bool = False
    allow_unsupported_sglang: bool = False
    fallback_backend: str = "triton"
    cuda_graph: str = "on"
    graph_workspace_mb: int = 256
    verify_tree: bool = False
    validate_plan: bool = False
    planner: tuple = ()
    min_batch_size: int = 1
    tail_slack: int = 32
    graph_tail_advance: str = "graph"
    spec_verify: bool = True
    shadow_check: bool = False
    stats_interval: int = 0
    log_level: Optional[str] = None

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None,
                 server_args: Any = None) -> "DeftConfig":
        """Read and validate the ``DEFT_*`` variables.

        Parameters
        ----------
        environ : mapping, optional
            Defaults to ``os.environ``.
        server_args : sglang ServerArgs, optional
            Supplies the default fallback backend (its ``attention_backend``).

        Raises
        ------
        ValueError
            Naming the variable whose value is invalid.
        """
        env = os.environ if environ is None else environ
        return cls(
            enable=_get_bool(env, ENV_ENABLE, False),
            allow_unsupported_sglang=_get_bool(env, ENV_ALLOW_UNSUPPORTED, False),
            fallback_backend=_fallback_backend(env, server_args),
            cuda_graph=_get_choice(env, "DEFT_CUDA_GRAPH", "on", CUDA_GRAPH_MODES),
            graph_workspace_mb=_get_int(env, "DEFT_GRAPH_WORKSPACE_MB", 256, 16),
            verify_tree=_get_bool(env, "DEFT_VERIFY_TREE", False),
            validate_plan=_get_bool(env, "DEFT_VALIDATE_PLAN", False),
            planner=_get_planner(env),
            min_batch_size=_get_int(env, "DEFT_MIN_BATCH_SIZE", 1, 1),
            tail_slack=_get_int(env, "DEFT_TAIL_SLACK", 32, 0),
            graph_tail_advance=_get_choice(env, "DEFT_GRAPH_TAIL_ADVANCE", "graph",
                                           GRAPH_TAIL_ADVANCE),
            spec_verify=_get_bool(env, "DEFT_SPEC_VERIFY", True),
            shadow_check=_get_bool(env, "DEFT_SHADOW_CHECK", False),
            stats_interval=_get_int(env, "DEFT_STATS_INTERVAL", 0, 0),
            log_level=_get_choice(env, "DEFT_LOG_LEVEL", "", LOG_LEVELS) or None,
        )

    def planner_config(self):
        """The ``kernels.PlannerConfig`` these settings ask for (None: the defaults)."""
        if not self.planner:
            return None
        from .kernels.config import PlannerConfig
        return PlannerConfig.from_overrides(self.planner)

    def apply_log_level(self) -> None:
        """Set the ``deft_sglang`` logger's level when ``DEFT_LOG_LEVEL`` asks for one."""
        if self.log_level:
            import logging
            logging.getLogger("deft_sglang").setLevel(self.log_level.upper())


def get_config(server_args: Any = None) -> DeftConfig:
    """The configuration of this process, read now from ``os.environ``."""
    return DeftConfig.from_env(None, server_args)
