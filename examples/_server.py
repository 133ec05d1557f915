"""Loopback SGLang servers for the end-to-end drivers (``e2e_compare.py``,
``benchmarks/soak.py``): the command and environment of each launch, start, health, stop."""
from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time

SERVER_FLAGS = {
    "stock": ["-m", "sglang.launch_server", "--attention-backend", "triton"],
    "stock_flashinfer": ["-m", "sglang.launch_server", "--attention-backend", "flashinfer"],
    "deft": ["-m", "sglang.launch_server", "--attention-backend", "deft"],
    "deft_module": ["-m", "deft_sglang.launch_server"],
    "deft_eager": ["-m", "sglang.launch_server", "--attention-backend", "deft"],
    "deft_shadow": ["-m", "sglang.launch_server", "--attention-backend", "deft"],
    "deft_host_advance": ["-m", "sglang.launch_server", "--attention-backend", "deft"],
}
LAUNCH_ENV = {"deft": {"DEFT_STATS_INTERVAL": "200"},
              "deft_eager": {"DEFT_CUDA_GRAPH": "disable", "DEFT_STATS_INTERVAL": "200"},
              "deft_shadow": {"DEFT_SHADOW_CHECK": "1", "DEFT_STATS_INTERVAL": "20"},
              "deft_host_advance": {"DEFT_GRAPH_TAIL_ADVANCE": "host",
                                    "DEFT_STATS_INTERVAL": "200"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DEFT_ENABLE"}
    env.update(LAUNCH_ENV.get(name, {}))
    return env


def start_server(name: str, args, port: int) -> tuple[subprocess.Popen, list, str]:
    cmd = [sys.executable, *SERVER_FLAGS[name], "--model-path", args.model_path,
           "--load-format", "dummy", "--port", str(port), "--host", "127.0.0.1",
           *shlex.split(args.extra_server_args)]
    log_path = os.path.join(args.out, f"{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=launch_env(name))
    return proc, cmd, log_path


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} (see its log)")
        try:
            if requests.get(url + "/health_generate", timeout=30).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(3)
    raise TimeoutError(f"server not healthy after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    try:
        from sglang.srt.utils import kill_process_tree
        kill_process_tree(proc.pid)
    except Exception:
        proc.kill()
    proc.wait(timeout=120)
