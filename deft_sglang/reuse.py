"""Plan reuse across decode steps: while a batch only grows its tails, advance the last plan.

A decode batch that keeps the same requests, in the same order and pool rows, with every
sequence one token longer and every request's RadixCache position (``last_node``,
``prefix_indices``) untouched, attends to the same KV as the step before plus one new token per
request. The backend then skips reading the tree and planning: the last plan, built with tail
slack (:mod:`deft_sglang.kernels.tails`), is advanced on the device with the batch's
``out_cache_loc``. When the slack is used up, the same batch is planned again from the kept
forest with longer tails (no tree read). Any other change (a request joins, finishes or is
retracted, a prefix is re-inserted) means a fresh plan from the tree.

Why this is exact: a running request's ``req_to_token`` entries below its previous length never
change while its RadixCache position is unchanged (SGLang rewrites a row only when it re-inserts
the request's prefix, which replaces ``last_node``/``prefix_indices``), and the new token's slot is
``out_cache_loc[b]``, which is where SGLang stores its K/V this step.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

_LAST_NODE = operator.attrgetter("last_node")
_PREFIX = operator.attrgetter("prefix_indices")


def _same_objects(a: tuple, b: tuple) -> bool:
    """The same objects in the same order. SGLang's ``Req`` and ``TreeNode`` keep object's
    identity equality, for which tuple ``==`` is exactly that test and runs in C; other types
    (tensors: ``==`` compares elements) are compared with ``is``, one by one."""
    if len(a) != len(b):
        return False
    if a and type(a[0]).__eq__ is object.__eq__ and type(b[0]).__eq__ is object.__eq__:
        return a == b
    return all(map(operator.is_, a, b))


@dataclass
class BatchSignature:
    """What must hold still (or grow by one) for a plan to carry over to the next step.

    This runs every decode step over every request, so each field is compared by C-level loops
    (256 requests: a few microseconds per field)."""

    reqs: tuple
    rows: tuple
    last_nodes: tuple  # compared by identity
    prefixes: tuple
    seq_lens: np.ndarray  # int64 [B], a copy (SGLang may update its tensor in place)
    graph: bool

    @classmethod
    def of(cls, reqs, rows, seq_lens, graph: bool) -> "BatchSignature":
        reqs = tuple(reqs)
        return cls(reqs, tuple(rows), tuple(map(_LAST_NODE, reqs)), tuple(map(_PREFIX, reqs)),
                   np.array(seq_lens, dtype=np.int64), graph)

    def advance(self, reqs, rows, seq_lens, graph: bool) -> bool:
        """Whether ``(reqs, rows, seq_lens)`` is this batch one decode step later; if so the
        signature moves to it (only the lengths differ). Compares in place, building no
        per-request tuples: this runs every decode step."""
        seq_lens = np.asarray(seq_lens)
        same = (graph == self.graph and _same_objects(tuple(reqs), self.reqs)
                and tuple(rows) == self.rows and seq_lens.shape == self.seq_lens.shape
                and bool(np.all(seq_lens - self.seq_lens == 1))
                and all(map(operator.is_, map(_LAST_NODE, reqs), self.last_nodes))
                and all(map(operator.is_, map(_PREFIX, reqs), self.prefixes)))
        if same:
            self.seq_lens = np.array(seq_lens, dtype=np.int64)  # a copy: see the field
        return same


class PlanReuse:
    """The last fresh step of one backend and the batch it describes now."""

    def __init__(self):
        self._signature: Optional[BatchSignature] = None
        self._step: Any = None
        self.reused = 0
        self.fresh = 0

    def forget(self) -> None:
        self._signature, self._step = None, None

    def remember(self, signature: BatchSignature, step: Any) -> None:
        """Keep ``step`` (its plan built with tail slack) for the batches that follow."""
        self.fresh += 1
        if step.plan.tails is None:
            self.forget()
            return
        self._signature, self._step = signature, step

    def follow(self, reqs, rows, seq_lens, graph: bool) -> tuple[Optional[Any], Optional[Any]]:
        """``(step, None)``: the kept step, when this batch is its batch one step later with
        slack left (the caller advances the plan by one token per request). ``(None, step)``:
        the same batch, but the slack is used up: the caller re-plans the kept step's forest
        with longer tails (:meth:`DecodeForest.with_tails_at`) instead of reading the tree
        again. ``(None, None)``: anything else (nothing is kept then)."""
        step, signature = self._step, self._signature
        if step is None or not signature.advance(reqs, rows, seq_lens, graph):
            self.forget()
            return None, None
        if step.plan.tails.room < 1:
            self.forget()
            return None, step
        self.reused += 1
        return step, None
