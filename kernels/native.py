"""The planner's C core (``plan_native.c``), compiled on first use and loaded with ctypes.

Planning a decode step is a few hundred small array operations; in numpy each costs a call's
overhead (about 1 µs), which put a 256-query ToT step at 0.3-0.6 ms of host time.  The C core
does the same work in one call (``plan_step.c``; its parts are callable one by one too).  It is
built with the system C compiler (``$CC``, else ``cc``), which Triton needs on a GPU host anyway,
into ``$DEFT_CACHE_DIR`` (default ``~/.cache/deft_sglang``), once per source version.  Without
a compiler, or with ``PlannerConfig(native=False)``, the numpy path plans; both give the same plan
bit for bit.

Every function takes and returns int64 numpy arrays (``plan_step`` also writes an int32 upload
buffer); see ``plan_native.c`` and ``plan_step.c`` for the layouts.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)
SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("plan_native.c", "plan_step.c", "plan_native.h"))
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "deft_validate": (_I64, [_I64, _I64, _I64, _I64, _I64] + [_PTR] * 4),
    "deft_layout": (_I64, [_I64, _I64, _PTR, _PTR, _PTR]),
    "deft_plan": (_I64, [_I64, _I64] + [_PTR] * 8 + [_I64]),
    "deft_short_tails": (_I64, [_I64] * 4 + [_PTR] * 10),
    "deft_plan_step": (_I64, [_I64] * 6 + [_PTR] * 7 + [_I64, _PTR, _I64]),
}
_library = None  # the loaded library, False once loading failed


def _cache_dir() -> Path:
    return Path(os.environ.get("DEFT_CACHE_DIR") or Path.home() / ".cache" / "deft_sglang")


def _compile(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (set CC, or install cc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target, then rename: concurrent processes never load a partial file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        sources = [str(path) for path in SOURCES if path.suffix == ".c"]
        subprocess.run([compiler, "-O3", "-shared", "-fPIC", "-o", str(built), *sources, "-lm"],
                       check=True, capture_output=True, timeout=120)
        os.replace(built, target)


def library():
    """The loaded C core, or None when it cannot be built here (logged once)."""
    global _library
    if _library is None:
        digest = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES)).hexdigest()[:16]
        target = _cache_dir() / f"plan_native-{digest}-{platform.machine()}.so"
        try:
            if not target.exists():
                _compile(target)
            lib = ctypes.CDLL(str(target))
            for name, (restype, argtypes) in _SIGNATURES.items():
                getattr(lib, name).restype = restype
                getattr(lib, name).argtypes = argtypes
            _library = lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            logger.warning("DeFT: the C planner core is unavailable (%s %s); planning with "
                           "numpy", error, detail.decode(errors="replace")[:500])
            _library = False
    return _library or None


def _ptr(array: np.ndarray) -> int:
    try:  # three times faster than array.ctypes.data, which a plan asks for eight times
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except (TypeError, ValueError):  # read-only or empty
        return array.ctypes.data


def validate(parent, kv_indptr, kv_indices, query_node, num_slots) -> int:
    """0 when the arrays (int64; ``kv_indices`` int32 or int64) satisfy the kernel contract,
    else the first failed check."""
    return library().deft_validate(
        parent.shape[0], query_node.shape[0], kv_indices.shape[0],
        -1 if num_slots is None else num_slots, kv_indices.itemsize,
        _ptr(parent), _ptr(kv_indptr), _ptr(kv_indices), _ptr(query_node))


def layout(parent: np.ndarray, query_node: np.ndarray):
    """(query_order [B], query_begin [N], query_end [N]): ``tree.build_layout``'s grouping."""
    n, b = parent.shape[0], query_node.shape[0]
    out = np.empty(b + 2 * n, dtype=np.int64)
    if library().deft_layout(n, b, _ptr(parent), _ptr(query_node), _ptr(out)):
        raise MemoryError("the C planner core could not allocate its scratch")
    return out[:b], out[b:b + n], out[b + n:]


def short_tails(parent, kv_indptr, kv_indices, query_node, max_tokens: int):
    """``short_tails.take_short_tails`` on a host slot list (int32 or int64): (new kv_indptr,
    kept slots, tail_indptr, tail slots, queries with a tail, longest tail), or None when no
    leaf qualifies."""
    n, b, total = parent.shape[0], query_node.shape[0], kv_indices.shape[0]
    ints = np.empty(n + 2 * b + 4, dtype=np.int64)  # new_indptr, tail_indptr, queries, info
    slots = np.empty(2 * total, dtype=kv_indices.dtype)  # kept, tails
    info = ints[n + 2 * b + 2:]
    taken = library().deft_short_tails(
        n, b, max_tokens, kv_indices.itemsize, _ptr(parent), _ptr(kv_indptr), _ptr(kv_indices),
        _ptr(query_node), _ptr(ints), _ptr(ints[n + 1:]), _ptr(slots), _ptr(slots[total:]),
        _ptr(ints[n + b + 2:]), _ptr(info))
    if taken < 0:
        raise MemoryError("the C planner core could not allocate its scratch")
    if not taken:
        return None
    longest, with_tail = info.tolist()
    return (ints[:n + 1], slots[:total - taken], ints[n + 1:n + b + 2], slots[total:total + taken],
            ints[n + b + 2:n + b + 2 + with_tail], longest)


class Knobs:
    """The planner's knobs as the C core reads them (``plan_native.h``'s ``K_*``/``F_*``
    order), kept with their addresses: built once per configuration and attention shape."""

    def __init__(self, config, group, block_n, num_sms, num_kv_heads, l2_bytes,
                 kv_bytes_per_token):
        self.ints = np.array([group, block_n, config.block_m, num_sms, num_kv_heads, l2_bytes,
                              kv_bytes_per_token, config.reread_min_queries,
                              config.reread_group_rows, config.reread_needs_node_in_l2,
                              config.fixed_chunk_tokens, config.split_launches,
                              config.short_tail_bound, config.merge_tail_tokens,
                              config.tail_pack_rows], dtype=np.int64)
        self.floats = np.array([config.waves, config.min_chunk_partial_ratio,
                                config.max_floor_over_want, config.min_chunk_blocks],
                               dtype=np.float64)
        self.addresses = (_ptr(self.ints), _ptr(self.floats))
        self.out_length = 0  # the last plan's output length: the next one's first guess
        self.step_lengths = (0, 0)  # the last plan_step's (host, blob) lengths: the same


_KNOBS: dict = {}


def knobs_for(config, shape: tuple) -> Knobs:
    """The cached :class:`Knobs` of ``config`` and ``shape`` = (GQA group, block_n, SMs, KV
    heads, L2 bytes, KV bytes per token)."""
    key = (config, shape)
    knobs = _KNOBS.get(key)
    if knobs is None:
        if len(_KNOBS) > 64:  # a long-lived process that saw many shapes
            _KNOBS.clear()
        knobs = _KNOBS[key] = Knobs(config, *shape)
    return knobs


PLAN_HEADER = 5  # plan_native.c's PLAN_HEADER


def plan(knobs: Knobs, kv_indptr, query_begin, query_end, query_order, shift):
    """``work_list.plan_items``'s result: (items int64 [5, I] in the final order,
    item_node [I], item_last [I] (0/1), merge_indptr [B+1], merge_slots [P],
    partial_counts [B], most partials of a query, most rows of an item, items of more than
    16 rows)."""
    n, b = query_begin.shape[0], query_order.shape[0]
    args = (n, b, *knobs.addresses, _ptr(kv_indptr), _ptr(query_begin), _ptr(query_end),
            _ptr(query_order), None if shift is None else _ptr(shift))
    length = max(knobs.out_length, PLAN_HEADER + 1 + 2 * b)
    out = np.empty(length, dtype=np.int64)
    status = library().deft_plan(*args, _ptr(out), length)
    if status < -1:  # a bigger plan than the last: once more with the exact size
        length = -status
        out = np.empty(length, dtype=np.int64)
        status = library().deft_plan(*args, _ptr(out), length)
    if status:
        raise MemoryError("the C planner core could not allocate its scratch")
    knobs.out_length = length
    m, p, most_partials, most_rows, num_large = out[:PLAN_HEADER].tolist()
    o = PLAN_HEADER + 7 * m
    return (out[PLAN_HEADER:o - 2 * m].reshape(5, m), out[o - 2 * m:o - m], out[o - m:o],
            out[o:o + b + 1], out[o + b + 1:o + b + 1 + p],
            out[o + b + 1 + p:o + 2 * b + 1 + p], most_partials, most_rows, num_large)


STEP_HEADER, STEP_GROW = 16, -2  # plan_step.c's
(H_ITEMS, H_PARTIALS, H_MOST_PARTIALS, H_MOST_ROWS, H_LARGE, H_TAKEN, H_LONGEST, H_TAILS,
 H_PER_PACK, H_BLOB, H_HOST) = range(11)


class PlannedStep:
    """``plan_step``'s result: the header, the upload buffer ``blob`` (int32, its parts in
    ``blob_sizes`` order, then its unused rest) and the host arrays (``host_arrays``, for
    stats); see ``plan_step.c``."""

    def __init__(self, host: np.ndarray, blob, capacity: int, n: int, b: int, total: int):
        self.host, self.blob, self.num_nodes, self.num_queries = host, blob, n, b
        header = self.header = host[:STEP_HEADER].tolist()
        m, p, taken = header[H_ITEMS], header[H_PARTIALS], header[H_TAKEN]
        self.num_tails = header[H_TAILS]
        sizes = [total - taken, b, b + 1, p, 5 * m]
        if taken:
            sizes += [b + 1, taken] + ([3 + self.num_tails, b] if header[H_PER_PACK] else [])
        self.blob_sizes = sizes + [capacity - header[H_BLOB]]

    def host_arrays(self) -> dict:
        """The int64 host arrays by name (views of one buffer; see ``plan_step.c``)."""
        host, n, b = self.host, self.num_nodes, self.num_queries
        m, p = self.header[H_ITEMS], self.header[H_PARTIALS]
        sizes = dict(query_order=b, query_begin=n, query_end=n, kept_indptr=n + 1,
                     tail_indptr=b + 1, tail_queries=b, plan_header=PLAN_HEADER, items=5 * m,
                     item_node=m, item_last=m, merge_indptr=b + 1, merge_slots=p,
                     partial_counts=b)
        arrays, at = {}, STEP_HEADER
        for name, size in sizes.items():
            arrays[name], at = host[at:at + size], at + size
        arrays["items"] = arrays["items"].reshape(5, m)
        arrays["tail_queries"] = arrays["tail_queries"][:self.num_tails]
        return arrays


def plan_step(knobs: Knobs, parent, kv_indptr, kv_indices, query_node, num_slots, validate: bool,
              new_blob) -> "PlannedStep | int":
    """A decode step's whole plan in one call (``plan_step.c``).  ``parent``, ``kv_indptr``,
    ``query_node``: contiguous int64; ``kv_indices``: contiguous int32 or int64;
    ``new_blob(length)``: an int32 tensor of ``length`` elements for the upload
    (pinned host memory for a GPU plan).  Returns the :class:`PlannedStep`, or the number of
    the contract check the forest failed."""
    n, b, total = parent.shape[0], query_node.shape[0], kv_indices.shape[0]
    host_length, blob_length = knobs.step_lengths
    host = np.empty(max(host_length, STEP_HEADER + 5 * b + 3 * n + 3 + PLAN_HEADER), np.int64)
    capacity = max(blob_length, total + 5 * b + 8)
    blob = new_blob(capacity)
    pointers = (_ptr(parent), _ptr(kv_indptr), _ptr(kv_indices), _ptr(query_node))
    for _ in range(3):  # a bigger plan than the last: once more, with room enough
        status = library().deft_plan_step(
            n, b, total, -1 if num_slots is None else num_slots, kv_indices.itemsize,
            int(validate), *knobs.addresses, *pointers, blob.data_ptr(), capacity,
            _ptr(host), host.shape[0])
        if status != STEP_GROW:
            break
        host_length, blob_length = int(host[H_HOST]), int(host[H_BLOB])
        knobs.step_lengths = (host_length + host_length // 4, blob_length + blob_length // 4)
        if host_length > host.shape[0]:
            host = np.empty(knobs.step_lengths[0], np.int64)
        if blob_length > capacity:
            capacity = knobs.step_lengths[1]
            blob = new_blob(capacity)
    if status < 0:
        raise MemoryError("the C planner core could not allocate its scratch")
    if status > 0:
        return status
    step = PlannedStep(host, blob, capacity, n, b, total)
    used_host, used_blob = step.header[H_HOST], step.header[H_BLOB]
    if capacity > 2 * used_blob or host.shape[0] > 2 * used_host:
        # after a much bigger plan: smaller buffers again (the whole buffer is uploaded)
        knobs.step_lengths = (used_host + used_host // 4, used_blob + used_blob // 4)
    return step
