"""Speculative target verify through DeFT (deft_sglang.verify) on real SGLang objects, against
SGLang's own Triton verify path on the same EagleVerifyInput (Triton interpreter on CPU)."""
import random

import numpy as np
import pytest
import torch

pytest.importorskip("sglang")

from deft_sglang import _logging  # noqa: E402
from deft_sglang.config import DeftConfig  # noqa: E402
from deft_sglang.kernels import ancestor_mask  # noqa: E402

from .conftest import make_runner  # noqa: E402
from .test_backend import PROMPT, fork, forward_batch, layer, qkv  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _logging.forget()
    yield
    _logging.forget()


def draft_parents(rng: random.Random, draft_len: int) -> list:
    return [-1] + [rng.randrange(i) for i in range(1, draft_len)]


def make_verify_batch(sim, draft_len: int, seed: int = 0, mask_mode: str = "full"):
    """Turn the running batch into a TARGET_VERIFY batch as ``eagle_prepare_for_verify`` does:
    ``draft_len`` slots per request written after its committed tokens, a random draft tree per
    request, and SGLang's tree mask (FULL_MASK rows of seq_len + T, or QLEN_ONLY rows of T)."""
    from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardMode
    from sglang.srt.speculative.eagle_info import EagleVerifyInput

    rng = random.Random(seed)
    batch = sim.running
    bs = len(batch.reqs)
    seq_lens = batch.seq_lens_cpu.tolist()
    slots = sim.allocator.alloc(bs * draft_len).to(torch.int64)
    parents, masks, positions = [], [], []
    for r, (row, seq_len) in enumerate(zip(batch.req_pool_indices_cpu.tolist(), seq_lens)):
        sim.req_to_token[row, seq_len:seq_len + draft_len] = slots[r * draft_len:
                                                                    (r + 1) * draft_len].to(torch.int32)
        parent = draft_parents(rng, draft_len)
        tree = torch.from_numpy(ancestor_mask(parent))
        depth = tree.sum(1) - 1
        positions.append(seq_len + depth)
        rows = tree if mask_mode == "qlen" else torch.cat(
            [torch.ones(draft_len, seq_len, dtype=torch.bool), tree], dim=1)
        masks.append(rows.reshape(-1))
        parents.append(parent)
    tokens = torch.randint(3, 1000, (bs * draft_len,), device=sim.device)
    unused = torch.full((bs, draft_len), -1, dtype=torch.int64, device=sim.device)
    verify = EagleVerifyInput(
        draft_token=tokens, custom_mask=torch.cat(masks).to(sim.device),
        positions=torch.cat(positions).to(sim.device), retrieve_index=unused,
        retrieve_next_token=unused, retrieve_next_sibling=unused, retrieve_cum_len=None,
        spec_steps=3, topk=2, draft_token_num=draft_len, capture_hidden_mode=CaptureHiddenMode.NULL,
        seq_lens_sum=sum(seq_lens), seq_lens_cpu=batch.seq_lens_cpu)
    batch.spec_info = verify
    batch.forward_mode = ForwardMode.TARGET_VERIFY
    batch.input_ids = tokens
    batch.out_cache_loc = slots.to(sim.device)
    return batch, np.array(parents)


def backends(sim, config=None):
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    from deft_sglang.backend import DeftAttnBackend

    runner = make_runner(sim)
    deft = DeftAttnBackend(runner, inner=TritonAttnBackend(runner),
                           config=config or DeftConfig())
    return runner, deft, TritonAttnBackend(runner)


def stock_atol(sim) -> float:
    """How close DeFT must be to SGLang's Triton kernel: on a GPU that kernel multiplies fp32 in
    TF32 (10-bit mantissa), so fp32 agrees to TF32 rounding there, and to IEEE rounding under
    the CPU interpreter; fp16 outputs agree to fp16 rounding."""
    if sim.dtype == torch.float16:
        return 2e-3
    return 5e-3 if sim.device == "cuda" else 1e-4


def forked_and_decoded(sim_factory, suffixes, dtype=torch.float32):
    """A sim whose running batch is forked branches one decode step on, and its backends."""
    sim = sim_factory(dtype=dtype)
    fork(sim, suffixes)
    sim.decode()
    sim.sample()
    return (sim, *backends(sim))


def verify_outputs(sim, runner, fb, backends_, seed):
    outs = []
    for layer_id in range(sim.num_layers):
        lay = layer(sim, layer_id)
        q, k, v = qkv(sim, fb.input_ids.shape[0], seed=seed + layer_id)
        row = []
        for backend in backends_:
            backend.init_forward_metadata(fb)
            row.append(backend.forward_extend(q, k, v, lay, fb).float())
        outs.append(row)
    return outs


@pytest.mark.parametrize("dtype, draft_len", [(torch.float32, 6), (torch.float16, 8),
                                              (torch.float32, 1)])
def test_verify_matches_sglang_triton(sim_factory, deft_patches, dtype, draft_len):
    sim, runner, deft, triton = forked_and_decoded(sim_factory, [[1000 + i, 5] for i in range(3)],
                                                   dtype)
    batch, _ = make_verify_batch(sim, draft_len, seed=draft_len)
    fb = forward_batch(sim, runner, batch)
    assert fb.forward_mode.is_target_verify() and fb.deft_batch_info is not None
    atol = stock_atol(sim)
    for deft_out, stock_out in verify_outputs(sim, runner, fb, (deft, triton), seed=3):
        torch.testing.assert_close(deft_out, stock_out, atol=atol, rtol=0)
    step = deft._step
    assert step is not None and step.draft_len == draft_len
    assert step.forest.num_tree_nodes >= 1 and not step.forest.fallbacks
    stats = step.plan.stats()
    assert stats["num_queries"] == 3 * draft_len
    assert stats["unique_kv_tokens"] < stats["per_request_kv_tokens"]


def test_verify_right_after_prefill_shares_the_cached_prompt(sim_factory, deft_patches):
    """Committed length == cached prefix (empty tail): still read from the tree, not chains."""
    sim = sim_factory(dtype=torch.float32)
    parent = sim.submit([PROMPT], max_new_tokens=2)
    sim.finish(parent)
    sim.submit([PROMPT + [7, 8], PROMPT + [9, 10]])
    runner, deft, triton = backends(sim)
    batch, _ = make_verify_batch(sim, 4, seed=1)
    fb = forward_batch(sim, runner, batch)
    for deft_out, stock_out in verify_outputs(sim, runner, fb, (deft, triton), seed=5):
        torch.testing.assert_close(deft_out, stock_out, atol=stock_atol(sim), rtol=0)
    assert not deft._step.forest.fallbacks


def test_qlen_only_mask_layout(sim_factory, deft_patches):
    """An inner backend whose verify mask is QLEN_ONLY (T x T rows): DeFT reads that layout."""
    import types

    from sglang.srt.speculative.eagle_utils import TreeMaskMode

    sim, runner, deft, triton = forked_and_decoded(sim_factory, [[1000 + i] for i in range(2)])
    batch, parents = make_verify_batch(sim, 5, seed=2, mask_mode="qlen")
    fb = forward_batch(sim, runner, batch)
    deft.inner._verify_mask = types.SimpleNamespace(mode=TreeMaskMode.QLEN_ONLY)
    lay = layer(sim)
    q, k, v = qkv(sim, fb.input_ids.shape[0], seed=9)
    deft.init_forward_metadata(fb)
    out = deft.forward_extend(q, k, v, lay, fb).float()
    # the same step with the FULL_MASK layout through SGLang's Triton kernel
    seq_lens = batch.seq_lens_cpu.tolist()
    full = [torch.cat([torch.ones(5, s, dtype=torch.bool),
                       torch.from_numpy(ancestor_mask(p))], 1).reshape(-1)
            for s, p in zip(seq_lens, parents)]
    fb.spec_info.custom_mask = torch.cat(full).to(sim.device)
    triton.init_forward_metadata(fb)
    torch.testing.assert_close(out, triton.forward_extend(q, k, v, lay, fb).float(),
                               atol=stock_atol(sim), rtol=0)


def test_unreadable_verify_batches_use_stock(sim_factory, deft_patches):
    """Bit-packed masks and ragged verify go to the inner backend, with the same results."""
    import types

    from sglang.srt.speculative.eagle_utils import TreeMaskMode

    sim, runner, deft, triton = forked_and_decoded(sim_factory, [[1000 + i] for i in range(2)])
    batch, _ = make_verify_batch(sim, 3, seed=4)
    fb = forward_batch(sim, runner, batch)
    deft.inner._verify_mask = types.SimpleNamespace(mode=TreeMaskMode.QLEN_ONLY_BITPACKING)
    deft.init_forward_metadata(fb)
    assert deft._step is None
    deft.inner._verify_mask = None
    fb.spec_info.draft_token_num = 2  # input_ids no longer bs * T: ragged
    deft.init_forward_metadata(fb)
    assert deft._step is None


def test_mask_layout_into_fixed_graph_buffers():
    """Graph replays write the mask rows of the (padded) batch into fixed buffers; rows past
    the batch keep their contents."""
    from deft_sglang.kernels.verify import full_mask_layout
    from deft_sglang.verify import FULL_MASK, QLEN_ONLY, layout

    seq_lens = torch.tensor([30, 0, 7])
    offsets, _ = full_mask_layout(seq_lens, 6)
    assert offsets.tolist() == [30, 6 * 36, 6 * 36 + 6 * 6 + 7]
    fixed_off, fixed_str = torch.zeros(5, dtype=torch.int64), torch.zeros(5, dtype=torch.int64)
    layout(FULL_MASK, seq_lens, 6, fixed_off, fixed_str)
    assert fixed_off[:3].tolist() == offsets.tolist() and fixed_str[3:].tolist() == [0, 0]
    assert fixed_str[:3].tolist() == [36, 6, 13]
    layout(QLEN_ONLY, seq_lens, 6, fixed_off, fixed_str)
    assert fixed_off[:3].tolist() == [0, 36, 72] and fixed_str[:3].tolist() == [6, 6, 6]


def test_speculative_support_rules(monkeypatch):
    import types

    from deft_sglang.support import speculative_reason

    def args(spec):
        return types.SimpleNamespace(speculative_algorithm=spec)
    assert speculative_reason(args(None)) is None
    assert speculative_reason(args("EAGLE")) is None
    assert speculative_reason(args("STANDALONE")) is None
    assert "NGRAM" in speculative_reason(args("NGRAM"))
    assert "draft model" in speculative_reason(args("EAGLE"), is_draft_worker=True)
    monkeypatch.setenv("DEFT_SPEC_VERIFY", "0")
    assert "DEFT_SPEC_VERIFY=0" in speculative_reason(args("EAGLE3"))


MAX_BS = 4


def verify_view(fb, draft_len, max_bs=MAX_BS):
    """What ``build_replay_fb_view`` hands the backend for a verify replay: padded lengths and
    rows, the batch's own ``out_cache_loc``."""
    import types

    pad = max_bs - fb.batch_size
    return types.SimpleNamespace(
        batch_size=max_bs, forward_mode=fb.forward_mode, num_padding=pad,
        out_cache_loc=fb.out_cache_loc, spec_info=fb.spec_info, input_ids=None, encoder_lens=None,
        req_pool_indices=torch.cat([fb.req_pool_indices, fb.req_pool_indices.new_zeros(pad)]),
        seq_lens=torch.cat([fb.seq_lens, fb.seq_lens.new_ones(pad)]),
        seq_lens_cpu=torch.cat([fb.seq_lens_cpu, fb.seq_lens_cpu.new_ones(pad)]))


def graph_verify_layer(sim, deft, fb, draft_len, lay, q, k, v):
    """The launches a captured verify graph replays for one layer, on MAX_BS padded requests
    (static out_cache_loc padded with slot 0; the mask in the inner's fixed buffer)."""
    import types

    rows = MAX_BS * draft_len
    pad = rows - q.shape[0]
    static = types.SimpleNamespace(out_cache_loc=torch.cat(
        [fb.out_cache_loc, fb.out_cache_loc.new_zeros(pad)]))
    qp = torch.cat([q, q.new_zeros(pad, q.shape[1])])
    kp, vp = torch.cat([k, k.new_zeros(pad, *k.shape[1:])]), torch.cat([v, v.new_zeros(pad, *v.shape[1:])])
    return deft._deft_verify(None, qp, kp, vp, lay, static, True)[:q.shape[0]].float()


def test_verify_graph_capture_and_replays_match_stock(sim_factory, deft_patches):
    draft_len = 4
    sim, runner, deft, triton = forked_and_decoded(sim_factory, [[1000 + i, 5] for i in range(3)])
    deft.inner.num_draft_tokens = draft_len  # SGLang sizes the verify mask buffer from this
    deft.init_cuda_graph_state(MAX_BS, MAX_BS * draft_len)
    assert deft.graphs is not None and deft.graphs.verify is not None
    assert deft.graphs.workspace.capacity["queries"] == MAX_BS * draft_len
    batch, _ = make_verify_batch(sim, draft_len, seed=11)
    fb = forward_batch(sim, runner, batch)
    deft.init_forward_metadata_out_graph(verify_view(fb, draft_len), in_capture=True)
    assert deft._graph_verify and deft._step is None
    buffer = deft.inner.verify_mask.buffer
    for announced in (True, False):  # planned in can_run_graph, or read as chains at replay
        if announced:
            assert deft.deft_prepare_graph_replay(fb)
        buffer[:fb.spec_info.custom_mask.numel()] = fb.spec_info.custom_mask  # as the worker
        deft.init_forward_metadata_out_graph(verify_view(fb, draft_len))
        for layer_id in range(sim.num_layers):
            lay = layer(sim, layer_id)
            q, k, v = qkv(sim, fb.input_ids.shape[0], seed=40 + layer_id)
            out = graph_verify_layer(sim, deft, fb, draft_len, lay, q, k, v)
            triton.init_forward_metadata(fb)
            torch.testing.assert_close(out, triton.forward_extend(q, k, v, lay, fb).float(),
                                       atol=stock_atol(sim), rtol=0)
    assert deft.graphs.replays == 1
