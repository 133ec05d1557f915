"""Shared CLI and client code of the deft-sglang examples.

Every example runs either against a running server (``--url http://host:port``; start it with
``python -m deft_sglang.launch_server --model-path M`` or
``python -m sglang.launch_server --model-path M --attention-backend deft``) or in-process
(``--engine --model-path M``: ``deft_sglang.enable()`` then ``sgl.Engine``).
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the connection / engine / sampling flags every example shares."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running SGLang server, e.g. http://127.0.0.1:30000")
    where.add_argument("--engine", action="store_true",
                       help="start an in-process sgl.Engine with DeFT enabled")
    parser.add_argument("--model-path", help="model for --engine")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra sgl.Engine argument (repeatable), e.g. load_format=dummy")
    parser.add_argument("--no-deft", action="store_true",
                        help="with --engine: stock SGLang (for comparison)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--ignore-eos", action="store_true",
                        help="always generate --max-new-tokens (useful with dummy weights)")
    parser.add_argument("--timeout", type=float, default=600.0, help="HTTP timeout (s)")
    return parser


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def engine_kwargs(pairs: Sequence[str]) -> dict:
    """``["load_format=dummy", "mem_fraction_static=0.5"]`` -> dict with JSON-parsed values."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--engine-arg expects KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


class Client:
    """Batched generation against a server or an in-process engine (same result format)."""

    def generate(self, prompts: Optional[Sequence[str]] = None, *,
                 input_ids: Optional[Sequence[Sequence[int]]] = None,
                 sampling_params: Any = None, **extra) -> list[dict]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HTTPClient(Client):
    """POST /generate on a running SGLang server."""

    def __init__(self, url: str, timeout: float = 600.0):
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.timeout = timeout

    def generate(self, prompts=None, *, input_ids=None, sampling_params=None, **extra):
        payload = {"sampling_params": sampling_params or {}, **extra}
        if prompts is not None:
            payload["text"] = list(prompts)
        else:
            payload["input_ids"] = [list(map(int, ids)) for ids in input_ids]
        response = self.session.post(self.url + "/generate", json=payload, timeout=self.timeout)
        response.raise_for_status()
        result = response.json()
        return result if isinstance(result, list) else [result]

    def flush_cache(self) -> None:
        self.session.post(self.url + "/flush_cache", timeout=self.timeout)

    def close(self) -> None:
        self.session.close()


class EngineClient(Client):
    """An in-process ``sgl.Engine`` (DeFT enabled unless ``deft=False``)."""

    def __init__(self, model_path: str, deft: bool = True, **kwargs):
        import sglang as sgl

        if deft:
            import deft_sglang
            deft_sglang.enable()
        self.engine = sgl.Engine(model_path=model_path, **kwargs)

    def generate(self, prompts=None, *, input_ids=None, sampling_params=None, **extra):
        kwargs = dict(sampling_params=sampling_params or {}, **extra)
        if prompts is not None:
            result = self.engine.generate(prompt=list(prompts), **kwargs)
        else:
            result = self.engine.generate(input_ids=[list(map(int, i)) for i in input_ids],
                                          **kwargs)
        return result if isinstance(result, list) else [result]

    def flush_cache(self) -> None:
        self.engine.flush_cache()

    def close(self) -> None:
        self.engine.shutdown()


def make_client(args: argparse.Namespace) -> Client:
    """The client the common flags ask for."""
    if args.url:
        return HTTPClient(args.url, timeout=args.timeout)
    if not args.model_path:
        raise SystemExit("--engine needs --model-path")
    return EngineClient(args.model_path, deft=not args.no_deft, **engine_kwargs(args.engine_arg))


def sampling(args: argparse.Namespace, **overrides) -> dict:
    """Sampling parameters from the common flags."""
    params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
              "ignore_eos": bool(args.ignore_eos)}
    params.update(overrides)
    return params


@dataclass
class DecodeClock:
    """Accumulates generated tokens and the wall time of the calls that generated them."""

    tokens: int = 0
    seconds: float = 0.0
    calls: list = field(default_factory=list)

    @contextmanager
    def measure(self, label: str):
        start = time.perf_counter()
        box: dict = {}
        yield box
        elapsed = time.perf_counter() - start
        outputs = box.get("outputs", [])
        tokens = sum(completion_tokens(o) for o in outputs)
        self.tokens += tokens
        self.seconds += elapsed
        self.calls.append((label, len(outputs), tokens, elapsed))

    def report(self, what: str) -> str:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        lines = [f"{what}: {self.tokens} generated tokens in {self.seconds:.2f} s "
                 f"({rate:.1f} tok/s, {len(self.calls)} batched calls)"]
        for label, n, tokens, elapsed in self.calls:
            lines.append(f"  {label:<28} {n:>4} requests {tokens:>6} tokens {elapsed:7.2f} s")
        return "\n".join(lines)


def completion_tokens(output: dict) -> int:
    """Generated tokens of one /generate result."""
    meta = output.get("meta_info", {})
    if "completion_tokens" in meta:
        return int(meta["completion_tokens"])
    return len(output.get("output_ids", []) or [])


def mean_logprob(output: dict) -> float:
    """Average log-probability of the generated tokens (needs return_logprob=True)."""
    entries = output.get("meta_info", {}).get("output_token_logprobs") or []
    values = [e[0] for e in entries if e and e[0] is not None]
    return sum(values) / len(values) if values else float("-inf")


def short(text: str, width: int = 100) -> str:
    """One line, at most ``width`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
