"""``python -m deft_sglang.launch_server <sglang launch_server flags>``: SGLang's server, DeFT on.

Equivalent to ``python -m sglang.launch_server`` after :func:`deft_sglang.enable`: DeFT decodes
(stock Triton prefill unless ``--attention-backend``/``--prefill-attention-backend`` says
otherwise), every other flag means what it means to SGLang.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run SGLang's HTTP (or gRPC/Ray, as the flags say) server with DeFT enabled.

    Parameters
    ----------
    argv : sequence of str, optional
        SGLang ``launch_server`` flags; defaults to ``sys.argv[1:]``.
    """
    import deft_sglang

    deft_sglang.enable()
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    server_args = prepare_server_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main()
