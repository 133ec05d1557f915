"""A decode step's plan in one call of the C core (``plan_step.c``): validation, short tails,
grouping, chunking and merge lists there, the kernels' metadata written straight into the plan's
pinned upload buffer, then one copy to the device split into the plan's views.

The same plan as ``planner.build_plan`` step by step (``tests/kernels/test_plan_step.py``);
``api.plan_tree_attention`` takes this path when the C core is available, there is no tail slack
and the slot list is on the host.  From Python the steps took some twenty ctypes, numpy and
torch calls per plan: 140 µs for a 256-query ToT step on an H100 host, 76 in one call
(``results/session10-h100/hold1``).
"""
from __future__ import annotations

import torch

from . import native as native_core
from .config import PlannerConfig
from .planner import assemble_plan, plan_shape
from .short_tails import ShortTails
from .tree import TreeLayout

_NATIVE_CONTEXTS: dict = {}  # (config id, heads, device, ...) -> (config, shape, Knobs)


def plan_step_native(parent, kv_indptr, kv_indices, query_node, *, num_qo_heads: int,
                     num_kv_heads: int, head_dim: int, device: torch.device,
                     config: PlannerConfig, kv_elem_bytes: int, num_slots, validate: bool):
    """``build_plan`` after validation, short tails and grouping, all in one call of the C core
    (``plan_step.c``), its upload buffer written in pinned memory: the same plan.  The arrays
    as ``validate_tree`` returns them (contiguous int64; ``kv_indices`` int32 or int64).
    Returns the plan, or the number of the contract check the forest failed (its shape is
    always checked, the slots' range only with ``validate``; ``validate_tree`` names it)."""
    key = (id(config), num_qo_heads, num_kv_heads, head_dim, device, kv_elem_bytes)
    context = _NATIVE_CONTEXTS.get(key)
    if context is None or context[0] is not config:  # (held, so its id is not reused)
        if len(_NATIVE_CONTEXTS) > 64:  # a long-lived process that saw many shapes
            _NATIVE_CONTEXTS.clear()
        shape = plan_shape(num_qo_heads, num_kv_heads, head_dim, device, config, kv_elem_bytes)
        context = _NATIVE_CONTEXTS[key] = (config, shape, native_core.knobs_for(config, shape))
    shape, pinned = context[1], device.type == "cuda"
    step = native_core.plan_step(
        context[2], parent, kv_indptr, kv_indices, query_node, num_slots, validate,
        lambda length: torch.empty(length, dtype=torch.int32, pin_memory=pinned))
    if isinstance(step, int):
        return step
    blob = step.blob.to(device, non_blocking=True) if pinned else step.blob.to(device)
    views = blob.split_with_sizes(step.blob_sizes)[:-1]  # (the last: the buffer's unused rest)
    step.blob = None  # stats() keeps the host arrays only: the pinned buffer goes back now
    header = step.header
    pack_shape = ((step.num_tails, header[native_core.H_PER_PACK],
                   header[native_core.H_PARTIALS]) if header[native_core.H_PER_PACK] else ())

    def planned():  # the host arrays, for stats()
        arrays = step.host_arrays()
        short_tails = (ShortTails(arrays["kept_indptr"], None, arrays["tail_indptr"], None,
                                  arrays["tail_queries"], header[native_core.H_LONGEST])
                       if step.num_tails else None)
        layout = TreeLayout(parent, arrays["kept_indptr"] if step.num_tails else kv_indptr,
                            None, query_node, arrays["query_order"], arrays["query_begin"],
                            arrays["query_end"])
        return (layout, arrays["items"], arrays["item_node"], arrays["partial_counts"],
                short_tails)

    counts = (header[native_core.H_MOST_PARTIALS:native_core.H_LARGE + 1]
              + [header[native_core.H_PARTIALS]])
    return assemble_plan(shape, (num_qo_heads, head_dim, step.num_queries), device, config,
                         kv_elem_bytes, counts, views, planned, pack_shape, None)
