"""Public API: enable / disable / is_enabled, the plugin, launch_server, spawned children."""
import multiprocessing
import os
import pickle
import subprocess
import sys

import pytest

import deft_sglang



@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("DEFT_ENABLE", raising=False)
    yield
    deft_sglang.disable()
    from deft_sglang import patches
    for owner in list(patches.owners()):
        patches.revert_all(owner)


def test_import_is_cheap_and_does_not_import_sglang():
    code = ("import sys, deft_sglang, deft_sglang.config, deft_sglang.kernels; "
            "assert 'sglang' not in sys.modules, 'sglang imported'; "
            "assert callable(deft_sglang.enable) and deft_sglang.__version__; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_enable_disable(clean_env, sglang):
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    from deft_sglang import patches

    assert not deft_sglang.is_enabled()
    deft_sglang.enable()
    deft_sglang.enable()  # idempotent
    assert deft_sglang.is_enabled() and os.environ["DEFT_ENABLE"] == "1"
    assert all(patches.applied().values()) and "deft" in ATTENTION_BACKENDS
    deft_sglang.disable()
    assert not deft_sglang.is_enabled() and "DEFT_ENABLE" not in os.environ
    assert not any(patches.applied().values()) and "deft" not in ATTENTION_BACKENDS


def test_enable_validates_config_first(clean_env, sglang, monkeypatch):
    from deft_sglang import patches

    monkeypatch.setenv("DEFT_CUDA_GRAPH", "sometimes")
    with pytest.raises(ValueError, match="DEFT_CUDA_GRAPH"):
        deft_sglang.enable()
    assert not deft_sglang.is_enabled() and not any(patches.applied().values())


def test_enable_refuses_other_sglang_versions(clean_env, sglang, monkeypatch):
    from deft_sglang.patches import SGLangCompatError, _base

    monkeypatch.setattr(_base, "installed_sglang_version", lambda: "0.5.9")
    with pytest.raises(SGLangCompatError, match=r"0\.5\.17"):
        deft_sglang.enable()
    assert not deft_sglang.is_enabled()


def test_plugin_register_keeps_the_name_after_disable(clean_env, sglang, monkeypatch):
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    from deft_sglang import patches, plugin

    plugin.register()
    assert "deft" in ATTENTION_BACKENDS and not deft_sglang.is_enabled()
    deft_sglang.enable()
    deft_sglang.disable()
    assert "deft" in ATTENTION_BACKENDS  # the plugin still holds it
    patches.revert_all("plugin")
    assert "deft" not in ATTENTION_BACKENDS
    monkeypatch.setenv("DEFT_ENABLE", "1")  # a child of an enable()d parent
    plugin.register()
    assert deft_sglang.is_enabled()


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "deft"]
    if not eps:
        pytest.skip("deft-sglang is not pip-installed in this environment")
    assert eps[0].value == "deft_sglang.plugin:register"
    scripts = [ep for ep in entry_points(group="console_scripts") if ep.name == "deft-sglang"]
    assert scripts and scripts[0].value == "deft_sglang.launch_server:main"


def test_launch_server_main_enables_deft(clean_env, sglang, monkeypatch):
    import sglang.launch_server as stock_launch
    import sglang.srt.utils as sgl_utils

    from deft_sglang import launch_server

    from .sim import tiny_model_dir

    model = tiny_model_dir()
    seen = {}
    monkeypatch.setattr(stock_launch, "run_server", lambda args: seen.setdefault("args", args))
    monkeypatch.setattr(sgl_utils, "kill_process_tree", lambda *a, **k: None)
    launch_server.main(["--model-path", model, "--load-format", "dummy", "--device", "cuda"])
    args = seen["args"]
    assert args.get_attention_backends() == ("deft", "deft")
    assert args.cuda_graph_config.decode.backend == "full"
    assert deft_sglang.is_enabled()
    assert pickle.loads(pickle.dumps(args)).get_attention_backends() == ("deft", "deft")


def test_spawned_child_inherits_enable(clean_env, sglang):
    from importlib.metadata import entry_points

    if not [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "deft"]:
        pytest.skip("deft-sglang is not pip-installed (no plugin entry point)")
    from . import _child

    deft_sglang.enable()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child.scheduler_like_entry, args=(queue,))
    proc.start()
    try:
        report = queue.get(timeout=240)
    finally:
        proc.join(timeout=60)
    assert report["env"] == "1" and report["registered"] and report["enabled"]
    assert all(report["applied"].values()) and report["owners"] == ["plugin"]


@pytest.mark.parametrize("module", ["sglang.launch_server", "deft_sglang.launch_server"])
def test_cli_help_lists_deft(module, sglang):
    """After pip install the plugin makes ``deft`` a valid --attention-backend of SGLang's CLI."""
    from importlib.metadata import entry_points

    if module.startswith("sglang") and not [
            ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "deft"]:
        pytest.skip("deft-sglang is not pip-installed (no plugin entry point)")
    env = {k: v for k, v in os.environ.items() if k != "DEFT_ENABLE"}
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                         text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    text = " ".join(out.stdout.split())
    start = text.index("--attention-backend")
    assert "deft" in text[start:start + 600]
