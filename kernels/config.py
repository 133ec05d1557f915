"""The planner's tuning knobs (``PlannerConfig``), the fixed small row tile, and whether the
Triton interpreter runs the kernels."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

SMALL_M = 16  # phase-1 row tile of items with few rows (plain decode, small groups)


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class PlannerConfig:
    """Tuning knobs of the planner (defaults chosen for Hopper; all validated).

    block_n : KV tokens per block inside a chunk (0 = by head_dim: 64, or 32 above 128).
    block_m : row tile of items with more than 16 rows (32, 64 or 128).
    small_block_n : KV tokens per block for items of at most 16 rows.
    waves : programs per SM the chunking aims for. 2 (longer chunks, fewer partials) against
        the earlier 4: DeFT-only geomeans 0.968x, 0.985x and 0.980x in three A/B runs (20-28
        workloads, H100, session 11, ``results/session11``): the 8k x 64 server fork 0.91x,
        few-shot b50 0.97x, fan-out 0.95x, 6-tree ToT batches 0.88-0.99x; spec star t256
        1.02-1.04x and some single ToT snapshots up to 1.08x slower. In graph form
        (``bench_graph``) the same: 8k x 64 70.7 -> 63.6 us per layer, few-shot b50 70.9 ->
        66.0, fan-out 208.9 -> 199.4, spec star t256 34.7 -> 37.2. 3 was 0.988x, 6 1.024x;
        1.5 and 1 0.995x and 1.048x (31 workloads, H200, session 12).
    num_sms : SMs to balance over (0 = read from the device, 132 when unknown).
    min_chunk_partial_ratio : a chunk's KV work is at least this many times its partial writes.
    min_chunk_blocks : load balance never asks for chunks shorter than this many KV blocks (a
        chunk may still be shorter when its node is). Small trees' phase 1 runs at 0.4-0.6 waves
        (ToT snapshots, Nsight Compute, H100, session 12), but shorter chunks did not help:
        1 block 0.994x, 2 blocks 1.000x (geomean of 31 workloads, H200, one ToT snapshot 0.91x
        and another 1.22x; ``results/session12/hold3-knobs-h200``).
    reread_min_queries : groups of more queries than this are split into row groups of
        ``reread_group_rows`` rows, one work item each per chunk: more programs and fewer
        partial results than one program walking all the rows' tiles. The row groups of one
        chunk are next to each other in the work order, so they run side by side and share it
        in L2: one step of the 8k x 64 server batch read 77 MB from DRAM for 67 MB of unique KV,
        against 162 MB with one program per chunk walking 4 row tiles (whose later passes
        missed L2); few-shot 4000 x b50 105 MB for 98, against 132 (H100, Nsight Compute,
        session 7). In graph form the 8k x 64 batch took 69 instead of 88 us per layer and the
        8B server ran 8k x 64 at 1.70x and 16k x 64 at 2.34x stock FlashInfer, against 1.60x
        and 1.89x; kernel-time geomean over the server shapes 0.90x (session 6, ``results/
        session6-h100/run3-rowgroups``).
    reread_group_rows : rows per row group.
    reread_needs_node_in_l2 : split only nodes whose whole KV fits in a quarter of L2 (the
        default before session 7, when the row groups of a chunk were not yet run together).
    l2_bytes : L2 size used to decide whether re-reads stay on chip (0 = from the device).
    num_warps, num_stages : phase 1's warps per program and Triton pipelining depth. At 3 (and
        4) Triton gives the K/V gathers one buffer and waits for them at the top of each block
        (the slot load ahead of the gather takes a stage); 5 double-buffers them (with
        ``block_n=small_block_n=32``: 66 KB of shared memory, 200 registers) but measured no
        faster: geomean 0.997x over 28 workloads (H100, session 11, ``results/session11``).
    fp32_partials : keep partial outputs in fp32 even for fp16/bf16 inputs.
    max_floor_over_want : the partial-write floor on chunk length never exceeds this many times
        the length that load balance asks for (0 = no cap). 2 took the server's 1k x 64 fork
        batches from 57 to 37 us per layer (8B heads) and from 40 to 26 (1B heads), the 8k x 64
        fork 93 -> 88, the rest within 2% except spec-star t128 (+8%): geomean 0.95x of no cap
        over 17 workloads (H100, session 6, ``benchmarks/sweep_config.py``).
    fixed_chunk_tokens : batch-invariant mode when > 0: every node is cut into chunks of this
        many tokens and the merge combines a fixed number of partials per step, so a query's
        result is bit-identical whatever else shares the batch (load balance is then not tuned
        to the batch).
    max_registers : cap on phase 1's registers per thread (0 = the compiler's choice). The
        kernel holds both row tiles, so the compiler sizes it for the 64-row one; a cap lets more
        programs share an SM at the risk of spills. Caps of 128 and 168 were 4-13% slower
        (geomean of 14 workloads, H200, ``benchmarks/sweep_config.py``), so none is set.
    merge_pdl : launch the merge of eager plans (``TreeAttentionPlan.run``; the CUDA-graph form
        never does, see ``kernels.static``) as a programmatic dependent of phase 1 (Hopper or
        later; a plain launch elsewhere): phase-1 programs signal when their partials are
        written, the merge's programs are scheduled once all have, and they wait on the GPU
        for phase 1 to end, which hides most of the launch gap. 0.95x the plain launch's time
        (geomean of the 47 workloads timed steadily, none slower: 0.86-0.99x), H100, session
        8 (``results/session8-h100/hold2-pdl-trigger``). Merge tasks inside phase 1's launch,
        waiting on per-block counters, were 1.21x slower (``hold1-merge-forms``): folding one
        partial at a time in heavy programs cost more than the launch they saved. Session
        7's variant, where the program writing a query's last partial merged it: 2-8x.
    merge_tail_tokens : leaves of at most this many tokens that hold one query's KV alone are
        attended by the merge, one token per step, instead of being phase-1 work items of
        their own (``kernels.short_tails``; 0 = never). Not with tail slack. At 8, speculative
        stars of t = 32-256 one-token drafts took 0.57-0.94x the time and Medusa trees
        0.72-0.91x; no other workload has such leaves (geomean 0.965x over 62, H100, session 8,
        ``results/session8-h100/hold6-short-tails``). At 16 two ToT snapshots folded 130-140
        tail tokens and took 1.26x; at 32 the fan-out's 32-token tails gained 12% and ToT
        snapshots lost up to 40%: a query's tail is a serial chain in the merge.
    pack_tail_tokens : leaves of at most this many tokens that hold one query's KV alone are
        taken out of the forest too; when some are longer than ``merge_tail_tokens``, phase 1
        attends all of them in packs, several queries' tails in one row tile, after its work
        items (``kernels.short_tails``; 0 = never). Not with tail slack. At 64 the 1024-way
        fan-out (32-token tails) took 0.80x the time eager (245 -> 198 us) and in graph form
        (268 -> 209); the other 61 workloads of the table within noise (geomean 1.00). At 128
        the 64-way fork with 128-token tails took 1.19x; packing 1-token tails too
        (``merge_tail_tokens=0``) cost spec stars up to 1.8x: the merge keeps those (H100,
        session 9, ``results/session9-h100/hold1-packs``, ``hold2-packs``).
    tail_pack_rows : the packs' row tile (16, 32 or 64): ``tail_pack_rows // (Hq/Hkv)`` tails
        per pack at most, fewer when that would leave the GPU short of programs. 16 and 64 ran
        the fan-out alike eager, but 64-row packs in the persistent kernel of the graph form
        spilled (255 registers) and slowed the server shapes there by 7%; 16-row packs run in
        its small-tile launch at no register cost.
    merge_block_h : query heads per merge program (0 = by batch size, see
        ``merge.merge_launch_shape``; else a power of two).
    merge_stages : 0: the merge combines ``block_p`` partials per step (a 3-D tile); > 0: one
        partial per step with the loop's loads pipelined this deep (a 2-D tile).
    merge_warps : warps per merge program.
    merge_blocked_max_rows : batches of at most this many (query, head) rows merge with the
        blocked loop whatever ``merge_stages`` says (0 = never). Few rows leave the sequential
        loop's serial chain of loads exposed: blocked was 0.86-0.95x the sequential time on
        batches of 320-800 rows (long 32k x 16, ToT snapshots, few-shot b20, MQA few-shot) and
        1.13-1.16x on 4096-8192 (3-level tree, spec star t128); 1600-2048 rows within 4% either
        way (H100, session 6). A shape-only choice, so CUDA-graph capture fixes it per batch size.
    interleave_heads : phase 1 takes (work item, KV head) pairs item-major, so the heaviest
        items of every KV head start first; off, the GPU's block order runs the heads one after
        another and the last head's heavy items start last.
    native : plan with the C core (``kernels.native``: compiled on first use, about 10x less
        host time than numpy's few hundred calls); the numpy path is used when it is off or no
        C compiler is found. Both give the same plan, bit for bit.
    split_launches : phase 1 in two launches: items of more than 16 rows (listed first) in the
        kernel with both row tiles, the rest in the 16-row-tile kernel (fewer registers). Off:
        the whole work list runs in one kernel, the two-tile one when any item needs it.
        Results are the same either way (an item of at most 16 rows is computed with the same
        tiles in both kernels). Measured slower: 1.35x the default's time (geomean of 14
        workloads, H100; 1.36x on an H200 with ``small_block_n=32``;
        ``benchmarks/sweep_config.py``), so it stays off.
    """

    block_n: int = 0
    block_m: int = 64
    small_block_n: int = 64
    waves: float = 2.0
    num_sms: int = 0
    min_chunk_partial_ratio: float = 4.0
    min_chunk_blocks: float = 4.0
    reread_min_queries: int = 16
    reread_group_rows: int = 64
    reread_needs_node_in_l2: bool = False
    l2_bytes: int = 0
    num_warps: int = 4
    num_stages: int = 3
    fp32_partials: bool = False
    max_floor_over_want: float = 2.0
    fixed_chunk_tokens: int = 0
    split_launches: bool = False
    max_registers: int = 0
    merge_block_h: int = 0
    interleave_heads: bool = True
    merge_stages: int = 3
    merge_warps: int = 2
    merge_blocked_max_rows: int = 1024
    native: bool = True
    merge_pdl: bool = True
    merge_tail_tokens: int = 8
    pack_tail_tokens: int = 64
    tail_pack_rows: int = 16

    def __post_init__(self):
        if self.block_n not in (0, 16, 32, 64, 128):
            raise ValueError(f"PlannerConfig.block_n must be 0, 16, 32, 64 or 128, got {self.block_n}")
        if self.small_block_n not in (16, 32, 64, 128):
            raise ValueError(f"PlannerConfig.small_block_n must be 16, 32, 64 or 128, "
                             f"got {self.small_block_n}")
        if self.block_m not in (32, 64, 128):
            raise ValueError(f"PlannerConfig.block_m must be 32, 64 or 128, got {self.block_m}")
        for name in ("waves", "min_chunk_partial_ratio", "min_chunk_blocks"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PlannerConfig.{name} must be positive")
        for name in ("num_sms", "l2_bytes", "reread_min_queries", "fixed_chunk_tokens",
                     "merge_blocked_max_rows", "merge_tail_tokens", "pack_tail_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"PlannerConfig.{name} must be >= 0")
        if self.max_registers and not 24 <= self.max_registers <= 255:
            raise ValueError(f"PlannerConfig.max_registers must be 0 or in [24, 255], "
                             f"got {self.max_registers}")
        if self.merge_block_h < 0 or self.merge_block_h & (self.merge_block_h - 1):
            raise ValueError(f"PlannerConfig.merge_block_h must be 0 or a power of two, "
                             f"got {self.merge_block_h}")
        if self.merge_stages < 0 or self.merge_warps not in (1, 2, 4, 8):
            raise ValueError(f"PlannerConfig.merge_stages must be >= 0 and merge_warps 1, 2, 4 "
                             f"or 8, got {self.merge_stages}, {self.merge_warps}")
        if self.tail_pack_rows not in (16, 32, 64):
            raise ValueError(f"PlannerConfig.tail_pack_rows must be 16, 32 or 64, "
                             f"got {self.tail_pack_rows}")
        if self.reread_group_rows < 16:
            raise ValueError("PlannerConfig.reread_group_rows must be >= 16")

    @classmethod
    def from_overrides(cls, items) -> "PlannerConfig":
        """The defaults with ``KEY=VALUE`` overrides (e.g. ``["waves=8", "split_launches=true"]``),
        each value read as its field's type and the result validated.

        Raises
        ------
        ValueError
            Naming an item that is not ``KEY=VALUE`` of a known field, or a value of the wrong
            type, or a combination that fails validation.
        """
        defaults = {f.name: f.default for f in fields(cls)}
        values = {}
        for item in items:
            key, sep, text = item.strip().partition("=")
            if not sep or key not in defaults:
                raise ValueError(f"PlannerConfig override {item!r} is not KEY=VALUE of a known "
                                 f"field ({', '.join(defaults)})")
            kind = type(defaults[key])
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"PlannerConfig.{key} must be true or false, got {text!r}")
                values[key] = text.lower() in ("true", "1")
            else:
                try:
                    values[key] = kind(text)
                except ValueError:
                    raise ValueError(f"PlannerConfig.{key} must be {kind.__name__}, "
                                     f"got {text!r}") from None
        return cls(**values)

    @property
    def packs_tails(self) -> bool:
        """Whether phase 1 may attend short tails in packs (never batch-invariant plans)."""
        return self.pack_tail_tokens > self.merge_tail_tokens and not self.fixed_chunk_tokens

    @property
    def short_tail_bound(self) -> int:
        """The longest private tail taken out of the forest (0: none)."""
        return self.pack_tail_tokens if self.packs_tails else self.merge_tail_tokens

    def merge_stages_for(self, num_rows: int) -> int:
        """The merge loop for a batch of ``num_rows`` (query, head) rows: 0 (blocked) for small
        batches (``merge_blocked_max_rows``), else ``merge_stages``. Batch-invariant plans keep
        one loop whatever the batch, so that the summation order never depends on it."""
        if self.fixed_chunk_tokens or num_rows > self.merge_blocked_max_rows:
            return self.merge_stages
        return 0
