"""DeftConfig: defaults, parsing and loud validation (no SGLang needed)."""
import types

import pytest

from deft_sglang.config import DeftConfig


def test_defaults():
    cfg = DeftConfig.from_env({})
    assert cfg == DeftConfig()
    assert cfg.fallback_backend == "triton" and cfg.cuda_graph == "on"
    assert not cfg.enable and not cfg.validate_plan and cfg.min_batch_size == 1


def test_parsing():
    cfg = DeftConfig.from_env({"DEFT_ENABLE": "yes", "DEFT_CUDA_GRAPH": "Fallback",
                               "DEFT_VERIFY_TREE": "on", "DEFT_VALIDATE_PLAN": "1",
                               "DEFT_MIN_BATCH_SIZE": "4", "DEFT_FALLBACK_BACKEND": "flashinfer"})
    assert cfg.enable and cfg.verify_tree and cfg.validate_plan
    assert cfg.cuda_graph == "fallback" and cfg.min_batch_size == 4
    assert DeftConfig.from_env({"DEFT_CUDA_GRAPH": "disable"}).cuda_graph == "disable"
    assert DeftConfig.from_env({"DEFT_GRAPH_WORKSPACE_MB": "64"}).graph_workspace_mb == 64
    more = DeftConfig.from_env({"DEFT_TAIL_SLACK": "0", "DEFT_SHADOW_CHECK": "yes",
                                "DEFT_STATS_INTERVAL": "100"})
    assert (more.tail_slack, more.shadow_check, more.stats_interval) == (0, True, 100)
    assert cfg.fallback_backend == "flashinfer"
    assert DeftConfig.from_env({"DEFT_LOG_LEVEL": "DEBUG"}).log_level == "debug"
    assert cfg.spec_verify and not DeftConfig.from_env({"DEFT_SPEC_VERIFY": "0"}).spec_verify
    assert cfg.graph_tail_advance == "graph"
    assert DeftConfig.from_env({"DEFT_GRAPH_TAIL_ADVANCE": "Host"}).graph_tail_advance == "host"


@pytest.mark.parametrize("env, name", [
    ({"DEFT_ENABLE": "maybe"}, "DEFT_ENABLE"),
    ({"DEFT_CUDA_GRAPH": "always"}, "DEFT_CUDA_GRAPH"),
    ({"DEFT_MIN_BATCH_SIZE": "0"}, "DEFT_MIN_BATCH_SIZE"),
    ({"DEFT_MIN_BATCH_SIZE": "two"}, "DEFT_MIN_BATCH_SIZE"),
    ({"DEFT_FALLBACK_BACKEND": "deft"}, "DEFT_FALLBACK_BACKEND"),
    ({"DEFT_FALLBACK_BACKEND": "a b"}, "DEFT_FALLBACK_BACKEND"),
    ({"DEFT_ALLOW_UNSUPPORTED_SGLANG": "2"}, "DEFT_ALLOW_UNSUPPORTED_SGLANG"),
    ({"DEFT_LOG_LEVEL": "loud"}, "DEFT_LOG_LEVEL"),
    ({"DEFT_GRAPH_WORKSPACE_MB": "8"}, "DEFT_GRAPH_WORKSPACE_MB"),
    ({"DEFT_TAIL_SLACK": "-1"}, "DEFT_TAIL_SLACK"),
    ({"DEFT_STATS_INTERVAL": "often"}, "DEFT_STATS_INTERVAL"),
    ({"DEFT_SHADOW_CHECK": "2"}, "DEFT_SHADOW_CHECK"),
    ({"DEFT_SPEC_VERIFY": "sometimes"}, "DEFT_SPEC_VERIFY"),
    ({"DEFT_GRAPH_TAIL_ADVANCE": "device"}, "DEFT_GRAPH_TAIL_ADVANCE"),
    ({"DEFT_PLANNER": "wave=8"}, "DEFT_PLANNER"),                 # unknown field
    ({"DEFT_PLANNER": "waves"}, "DEFT_PLANNER"),                  # not KEY=VALUE
    ({"DEFT_PLANNER": "block_m=96"}, "DEFT_PLANNER"),             # fails validation
    ({"DEFT_PLANNER": "split_launches=maybe"}, "DEFT_PLANNER"),   # not a bool
    ({"DEFT_PLANNER": "num_warps=4.5"}, "DEFT_PLANNER"),          # not an int
])
def test_invalid_values_name_the_variable(env, name):
    with pytest.raises(ValueError, match=name):
        DeftConfig.from_env(env)


def test_fallback_follows_server_args():
    args = types.SimpleNamespace(attention_backend="flashinfer")
    assert DeftConfig.from_env({}, args).fallback_backend == "flashinfer"
    args.attention_backend = "deft"
    assert DeftConfig.from_env({}, args).fallback_backend == "triton"
    assert DeftConfig.from_env({"DEFT_FALLBACK_BACKEND": "torch_native"},
                               args).fallback_backend == "torch_native"


def test_planner_overrides():
    assert DeftConfig.from_env({}).planner_config() is None
    cfg = DeftConfig.from_env({"DEFT_PLANNER": " waves=8, split_launches=true,block_m=128 "})
    planner = cfg.planner_config()
    assert (planner.waves, planner.split_launches, planner.block_m) == (8.0, True, 128)
    assert planner.num_warps == 4  # untouched fields keep their defaults
