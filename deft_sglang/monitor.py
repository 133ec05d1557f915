"""Opt-in run-time evidence from a live server: host time per decode step, and a shadow check.

* :class:`StepTimer` keeps the host time the backend's own code spends per decode step (reading
  the tree and planning, or advancing the last plan; loading the graph workspace) and, every ``DEFT_STATS_INTERVAL`` steps, logs its distribution.
* :class:`PlanTally`: what the fresh plans read (requests read as unshared chains and why, KV
  tokens per request vs unique), appended to that log line.
* :func:`log_plan_stats`: at DEBUG, one line per fresh plan (groups, chunks, unique vs
  per-request KV tokens).
* :class:`ShadowCheck` (``DEFT_SHADOW_CHECK=1``): every DeFT decode layer also runs the stock
  kernel on the same inputs and keeps, on the device, the largest ``|deft - stock|`` and the
  largest ``|stock|`` seen. Both are tensor ops with fixed addresses, so they are captured into
  CUDA graphs and replayed with them. The interval log reads them (one device sync). This checks
  DeFT against stock on the real batches and radix trees of a running server, which dummy-weight
  models cannot (their logits are flat, so tokens barely depend on attention).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Optional

import numpy as np
import torch

from ._logging import logger

WINDOW = 4096  # steps kept for the host-time percentiles


class StepTimer:
    """Host seconds per decode step (the sum of its timed spans), over :data:`WINDOW` steps."""

    def __init__(self):
        self.samples: deque = deque(maxlen=WINDOW)
        self._start: Optional[float] = None
        self._spent = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self._spent += time.perf_counter() - self._start
            self._start = None

    def commit(self) -> None:
        """Close the step: its spans' sum becomes one sample."""
        self.stop()
        self.samples.append(self._spent)
        self._spent = 0.0

    def summary(self) -> dict:
        """Percentiles in microseconds (empty when no step was timed)."""
        if not self.samples:
            return {}
        us = np.asarray(self.samples) * 1e6
        return dict(steps=int(us.size), p50_us=float(np.percentile(us, 50)),
                    p90_us=float(np.percentile(us, 90)), p99_us=float(np.percentile(us, 99)),
                    max_us=float(us.max()))


class ShadowCheck:
    """Largest ``|deft - stock|`` and ``|stock|`` over every compared layer, on ``device``."""

    def __init__(self, device):
        self.max_diff = torch.zeros((), dtype=torch.float32, device=device)
        self.max_ref = torch.zeros((), dtype=torch.float32, device=device)
        self.rows = torch.zeros((), dtype=torch.int64, device=device)  # real rows of the batch

    def set_rows(self, num_rows: int) -> None:
        """Rows past ``num_rows`` are graph padding (DeFT writes zeros there, stock does not)."""
        self.rows.fill_(num_rows)

    def compare(self, out: torch.Tensor, ref: torch.Tensor) -> None:
        """Fold one layer's outputs in (no host sync; capturable)."""
        ref = ref.float().view(out.shape)
        real = (torch.arange(out.shape[0], device=out.device) < self.rows).view(-1, 1)
        diff = torch.where(real, (out.float() - ref).abs(), 0.0)
        torch.maximum(self.max_diff, diff.amax(), out=self.max_diff)
        torch.maximum(self.max_ref, torch.where(real, ref.abs(), 0.0).amax(), out=self.max_ref)

    def summary(self) -> dict:
        """Host copy of the maxima (synchronises with the device)."""
        return dict(max_abs_diff=float(self.max_diff.item()), max_abs_stock=float(self.max_ref.item()))


class PlanTally:
    """What the fresh plans read: requests, those read as unshared chains (by reason), and KV
    tokens per request vs unique. Says whether a server's trees are shared as expected."""

    def __init__(self):
        self.requests = 0
        self.chains: dict = {}
        self.unique_kv = 0
        self.per_request_kv = 0

    def add(self, plan, forest) -> None:
        stats = plan.stats()
        self.requests += int(forest.query_node.shape[0])
        for reason, count in forest.fallbacks.items():
            self.chains[reason] = self.chains.get(reason, 0) + count
        self.unique_kv += int(stats.get("unique_kv_tokens", 0))
        self.per_request_kv += int(stats.get("per_request_kv_tokens", 0))

    def describe(self) -> str:
        if not self.requests:
            return ""
        chains = sum(self.chains.values())
        reasons = f" {self.chains}" if chains else ""
        return (f"; fresh plans read {self.requests} requests, {chains} as unshared chains"
                f"{reasons}, KV per request / unique {self.per_request_kv / max(self.unique_kv, 1):.2f}x")


class Monitor:
    """What the backend records per step; logs every ``interval`` steps (0: never)."""

    def __init__(self, interval: int, shadow: Optional[ShadowCheck]):
        self.interval = interval
        self.timer = StepTimer()
        self.shadow = shadow
        self.steps = 0
        self.plans = PlanTally()

    def step_done(self, note=None) -> None:
        """Count a step; every ``interval`` steps log, with ``note()`` (a str) appended."""
        self.timer.commit()
        self.steps += 1
        if self.interval and self.steps % self.interval == 0:
            self.log(note() if note is not None else "")

    def log(self, note: str = "") -> None:
        host = self.timer.summary()
        if host:
            logger.info("DeFT host time per decode step over the last %d steps: p50 %.0f us, "
                        "p90 %.0f us, p99 %.0f us, max %.0f us%s%s", host["steps"], host["p50_us"],
                        host["p90_us"], host["p99_us"], host["max_us"], note,
                        self.plans.describe())
        if self.shadow is not None:
            check = self.shadow.summary()
            logger.info("DeFT shadow check after %d steps: max |deft - stock| = %.3g "
                        "(max |stock| = %.3g)", self.steps, check["max_abs_diff"],
                        check["max_abs_stock"])


def log_plan_stats(step: int, plan, forest, batch_size: int) -> Optional[dict]:
    """At DEBUG: one line of a fresh plan's shape and IO (groups, chunks, unique vs per-request
    KV tokens); returns the plan's stats when logged, else None (no work at other levels)."""
    if not logger.isEnabledFor(logging.DEBUG):
        return None
    stats = plan.stats()
    unique = max(stats.get("unique_kv_tokens", 0), 1)
    logger.debug(
        "DeFT step %d: bs=%d nodes=%d (tree %d) groups=%s work_items=%s unique_kv=%s "
        "per_request_kv=%s (%.2fx) loaded_kv=%s partial_bytes=%s fallbacks=%s",
        step, batch_size, forest.num_nodes, forest.num_tree_nodes,
        stats.get("num_groups"), stats.get("num_work_items"), stats.get("unique_kv_tokens"),
        stats.get("per_request_kv_tokens"), stats.get("per_request_kv_tokens", 0) / unique,
        stats.get("loaded_kv_tokens"), stats.get("partial_bytes"), forest.fallbacks or "none")
    return stats
