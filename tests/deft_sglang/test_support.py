"""Which configurations fall back to the stock backend (pure attribute checks)."""
import types

import pytest
import torch

from deft_sglang.support import layer_unsupported_reason, model_unsupported_reason


class MHATokenToKVPool:  # same class name as SGLang's supported pool
    dtype = torch.bfloat16
    is_quantized_kv_cache = False


def runner(**overrides):
    base = dict(device="cuda", use_mla_backend=False, sliding_window_size=None,
                model_config=types.SimpleNamespace(is_encoder_decoder=False, head_dim=128),
                server_args=types.SimpleNamespace(speculative_algorithm=None),
                token_to_kv_pool=MHATokenToKVPool(), token_to_kv_pool_allocator=object(),
                dtype=torch.bfloat16)
    base.update(overrides)
    return types.SimpleNamespace(**base)


def test_supported_model():
    assert model_unsupported_reason(runner()) is None
    # EAGLE-style speculative decoding: DeFT serves the target model's verify forwards
    eagle = types.SimpleNamespace(speculative_algorithm="EAGLE")
    assert model_unsupported_reason(runner(server_args=eagle)) is None


@pytest.mark.parametrize("overrides, words", [
    (dict(use_mla_backend=True), "MLA"),
    (dict(model_config=types.SimpleNamespace(is_encoder_decoder=True, head_dim=128)), "cross"),
    (dict(sliding_window_size=4096), "sliding-window"),
    (dict(model_config=types.SimpleNamespace(is_encoder_decoder=False, head_dim=72)), "head_dim"),
    (dict(server_args=types.SimpleNamespace(speculative_algorithm="NGRAM")), "speculative"),
    (dict(server_args=types.SimpleNamespace(speculative_algorithm="EAGLE"),
          is_draft_worker=True), "draft model"),
    (dict(server_args=types.SimpleNamespace(speculative_algorithm=None,
                                            enable_two_batch_overlap=True)), "two-batch"),
    (dict(server_args=types.SimpleNamespace(speculative_algorithm=None, enable_pdmux=True)),
     "multiplexing"),
    (dict(token_to_kv_pool=object()), "KV pool"),
    (dict(dtype=torch.float16), "differs"),
    (dict(device="npu"), "CUDA"),
    (dict(token_to_kv_pool_allocator=types.SimpleNamespace(translate_kv_loc=lambda x: x)),
     "unified"),
])
def test_unsupported_models(overrides, words):
    reason = model_unsupported_reason(runner(**overrides))
    assert reason and words in reason


def layer(**overrides):
    base = dict(tp_q_head_num=32, tp_k_head_num=8, qk_head_dim=128, v_head_dim=128, logit_cap=0.0,
                sliding_window_size=-1, is_cross_attention=False, k_scale=None, v_scale=None,
                xai_temperature_len=-1)
    base.update(overrides)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize("overrides, kwargs, words", [
    ({}, {}, None),
    ({}, {"sinks": None}, None),
    (dict(tp_k_head_num=4), {}, "heads"),
    (dict(v_head_dim=64), {}, "head dims"),
    (dict(logit_cap=30.0), {}, "soft-capping"),
    (dict(sliding_window_size=128), {}, "sliding"),
    (dict(is_cross_attention=True), {}, "cross"),
    (dict(k_scale=torch.ones(1)), {}, "quantized"),
    ({}, {"sinks": torch.zeros(32)}, "sinks"),
])
def test_layer_checks(overrides, kwargs, words):
    reason = layer_unsupported_reason(layer(**overrides), 32, 8, 128, kwargs)
    assert (reason is None) if words is None else (words in reason)
