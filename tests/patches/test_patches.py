"""The patch layer against SGLang 0.5.17's real modules: apply, idempotence, revert, guards."""
import argparse
import pickle

import pytest

pytest.importorskip("sglang")

from deft_sglang import patches  # noqa: E402
from deft_sglang.patches import _base  # noqa: E402
from deft_sglang.patches import scheduler_entry, server_args as sa_patch  # noqa: E402

from tests.deft_sglang.sim import tiny_model_dir  # noqa: E402

MODEL = tiny_model_dir()


def originals():
    from sglang.srt.entrypoints.engine import Engine
    from sglang.srt.managers import scheduler
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.server_args import ServerArgs

    return (ServerArgs.__dict__["__post_init__"], ForwardBatch.__dict__["init_new"],
            scheduler.configure_scheduler_process, Engine.__dict__["run_scheduler_process_func"])


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv("DEFT_ENABLE", raising=False)
    monkeypatch.delenv("DEFT_CUDA_GRAPH", raising=False)
    before = originals()
    yield
    for owner in list(patches.owners()):
        patches.revert_all(owner)
    assert originals() == before, "a test left SGLang patched"


def parse(*flags):
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser.parse_args(["--model-path", MODEL, *flags])


def build_server_args(**kwargs):
    from sglang.srt.server_args import ServerArgs

    return ServerArgs(model_path=MODEL, load_format="dummy", device="cuda", **kwargs)


def test_registration_and_cli_choices():
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    with pytest.raises(SystemExit):
        parse("--attention-backend", "deft")
    patches.apply_all(owner="t")
    assert ATTENTION_BACKENDS["deft"] is patches.patch_module("attention_registry").create_deft_backend
    assert ATTENTION_BACKEND_CHOICES.count("deft") == 1
    assert parse("--attention-backend", "deft").attention_backend == "deft"
    args = parse("--decode-attention-backend", "deft", "--prefill-attention-backend", "triton")
    assert (args.decode_attention_backend, args.prefill_attention_backend) == ("deft", "triton")
    patches.revert_all(owner="t")
    assert "deft" not in ATTENTION_BACKENDS and "deft" not in ATTENTION_BACKEND_CHOICES
    with pytest.raises(SystemExit):
        parse("--decode-attention-backend", "deft")


def test_idempotent_apply_and_exact_revert():
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, ServerArgs

    before = originals()
    patches.apply_all(owner="t")
    first = originals()
    patches.apply_all(owner="t")
    for name in patches.PATCH_NAMES:
        patches.patch_module(name).apply()
    assert originals() == first and all(patches.applied().values())
    assert ATTENTION_BACKEND_CHOICES.count("deft") == 1
    assert all(a is not b for a, b in zip(before, first))
    assert ServerArgs.__post_init__.__wrapped__ is before[0]
    assert patches.revert_all(owner="t")
    assert originals() == before and not any(patches.applied().values())
    patches.revert_all(owner="t")  # reverting twice is harmless
    assert originals() == before


def test_owners_share_the_patches():
    patches.apply_all(owner="plugin")
    patches.apply_all(owner="enable")
    assert not patches.revert_all(owner="enable")
    assert all(patches.applied().values())
    assert patches.revert_all(owner="plugin")
    assert not any(patches.applied().values())


def test_a_choice_present_before_apply_stays():
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    ATTENTION_BACKEND_CHOICES.append("deft")
    try:
        patches.apply_all(owner="t")
        assert ATTENTION_BACKEND_CHOICES.count("deft") == 1
        patches.revert_all(owner="t")
        assert ATTENTION_BACKEND_CHOICES.count("deft") == 1
    finally:
        ATTENTION_BACKEND_CHOICES.remove("deft")


def test_version_guard(monkeypatch, caplog):
    assert _base.check_sglang_version() == "0.5.17"
    with pytest.raises(patches.SGLangCompatError, match=r"SGLang 0\.5\.17 only.*is 0\.5\.16"):
        _base.check_sglang_version("0.5.16")
    monkeypatch.setattr(_base, "installed_sglang_version", lambda: None)
    with pytest.raises(patches.SGLangCompatError, match="not installed"):
        _base.check_sglang_version()
    monkeypatch.setattr(_base, "installed_sglang_version", lambda: "0.6.0")
    with pytest.raises(patches.SGLangCompatError, match="DEFT_ALLOW_UNSUPPORTED_SGLANG"):
        patches.apply_all(owner="t")
    assert not any(patches.applied().values())
    monkeypatch.setenv("DEFT_ALLOW_UNSUPPORTED_SGLANG", "1")
    with caplog.at_level("WARNING", logger="deft_sglang"):
        patches.apply_all(owner="t")
    assert all(patches.applied().values()) and "0.6.0" in caplog.text
    patches.revert_all(owner="t")


def test_moved_symbol_is_named(monkeypatch):
    with pytest.raises(patches.SGLangCompatError,
                       match=r"sglang\.srt\.server_args\.NoSuchThing not found.*0\.5\.17"):
        _base.resolve("sglang.srt.server_args", "NoSuchThing")
    with pytest.raises(patches.SGLangCompatError, match="sglang.srt.no_such_module"):
        _base.resolve("sglang.srt.no_such_module")
    module = patches.patch_module("forward_batch")
    monkeypatch.setattr(module, "_TARGET",
                        ("sglang.srt.model_executor.forward_batch_info", "ForwardBatchMoved"))
    with pytest.raises(patches.SGLangCompatError, match="ForwardBatchMoved"):
        patches.apply_all(owner="t")
    assert not any(patches.applied().values())  # partial work undone


def test_server_args_enable_selects_deft_and_keeps_decode_graphs(monkeypatch):
    patches.apply_all(owner="t")
    plain = build_server_args()
    # SGLang picks its default backend by hardware (triton without a GPU, fa3/flashinfer on one)
    assert "deft" not in plain.get_attention_backends()
    assert plain.cuda_graph_config.decode.backend == "full"
    monkeypatch.setenv("DEFT_ENABLE", "1")
    enabled = build_server_args()
    assert enabled.get_attention_backends() == ("deft", "deft")
    assert enabled.cuda_graph_config.decode.backend == "full"  # DeFT runs inside the graphs
    hybrid = build_server_args(attention_backend="torch_native")
    assert hybrid.get_attention_backends() == ("torch_native", "deft")
    monkeypatch.setenv("DEFT_CUDA_GRAPH", "fallback")
    kept = build_server_args()
    assert kept.cuda_graph_config.decode.backend == "full"


def test_graph_policy_disable_turns_only_decode_graphs_off(monkeypatch):
    patches.apply_all(owner="t")
    monkeypatch.setenv("DEFT_CUDA_GRAPH", "disable")
    args = build_server_args(decode_attention_backend="deft")
    assert args.get_attention_backends()[1] == "deft"
    assert args.get_attention_backends()[0] != "deft"  # SGLang's default prefill backend
    assert args.cuda_graph_config.decode.backend == "disabled"
    assert args.cuda_graph_config.prefill.backend != "disabled"  # prefill graphs untouched
    stock = build_server_args()
    assert stock.cuda_graph_config.decode.backend == "full"  # no DeFT: nothing changes


def test_scheduler_entry(monkeypatch):
    from sglang.srt.entrypoints.engine import Engine

    patches.apply_all(owner="t")
    entry = Engine.run_scheduler_process_func
    assert entry is scheduler_entry.run_scheduler_process
    assert pickle.loads(pickle.dumps(entry)) is entry  # spawn pickles it by reference
    seen = []
    configure = scheduler_entry._make_configure(lambda args, *a, **k: seen.append(args) or 7)
    args = build_server_args()  # built before enable(): stock (SGLang's default backend)
    stock = args.get_attention_backends()
    assert configure(args, 0) == 7 and args.get_attention_backends() == stock
    monkeypatch.setenv("DEFT_ENABLE", "1")
    assert configure(args, 0) == 7 and seen == [args, args]
    assert args.get_attention_backends() == (stock[0], "deft")


def test_select_deft_rules():
    import types

    def make(attention=None, prefill=None, decode=None):
        return types.SimpleNamespace(attention_backend=attention, prefill_attention_backend=prefill,
                                     decode_attention_backend=decode)
    args = make()
    assert sa_patch.select_deft(args) and args.attention_backend == "deft"
    args = make(attention="flashinfer")
    assert sa_patch.select_deft(args) and args.decode_attention_backend == "deft"
    args = make(attention="deft")
    assert not sa_patch.select_deft(args) and sa_patch.deft_decodes(args)
    args = make(attention="triton", decode="fa3")
    assert sa_patch.select_deft(args) and args.decode_attention_backend == "deft"


def test_speculative_draft_model_gets_the_stock_backend(monkeypatch):
    """DeFT verifies; SGLang's draft workers take stock backends only, so the draft model gets
    DeFT's fallback backend unless the user named one."""
    import types

    monkeypatch.delenv("DEFT_FALLBACK_BACKEND", raising=False)

    def make(spec="EAGLE", draft=None, attention="deft"):
        return types.SimpleNamespace(speculative_algorithm=spec, attention_backend=attention,
                                     speculative_draft_attention_backend=draft)
    args = make()
    assert sa_patch.select_draft_backend(args)
    assert args.speculative_draft_attention_backend == "triton"
    args = make(draft="fa3")
    assert not sa_patch.select_draft_backend(args)
    assert args.speculative_draft_attention_backend == "fa3"
    args = make(spec=None)
    assert not sa_patch.select_draft_backend(args)
    assert args.speculative_draft_attention_backend is None
    monkeypatch.setenv("DEFT_FALLBACK_BACKEND", "flashinfer")
    args = make(draft="deft")
    assert sa_patch.select_draft_backend(args)
    assert args.speculative_draft_attention_backend == "flashinfer"


def test_speculative_server_args_resolve_with_deft(monkeypatch):
    """A real ServerArgs: STANDALONE tree drafting with --attention-backend deft resolves with
    DeFT for the target and the stock fallback for the draft model."""
    monkeypatch.delenv("DEFT_FALLBACK_BACKEND", raising=False)
    patches.apply_all(owner="t")
    args = build_server_args(attention_backend="deft", speculative_algorithm="STANDALONE",
                             speculative_draft_model_path=MODEL, speculative_num_steps=3,
                             speculative_eagle_topk=4, speculative_num_draft_tokens=16)
    assert args.get_attention_backends() == ("deft", "deft")
    assert args.speculative_draft_attention_backend == "triton"
    assert args.speculative_eagle_topk == 4
