"""Run in a *spawned* process (as SGLang starts its schedulers) by test_api.py."""


def scheduler_like_entry(queue):
    """What ``run_scheduler_process`` does first (``load_plugins()``), then report DeFT's state."""
    import os

    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.plugins import load_plugins

    load_plugins()
    import deft_sglang
    from deft_sglang import patches

    queue.put({"env": os.environ.get("DEFT_ENABLE"), "registered": "deft" in ATTENTION_BACKENDS,
               "enabled": deft_sglang.is_enabled(), "applied": patches.applied(),
               "owners": sorted(patches.owners())})
