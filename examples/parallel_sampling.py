"""Parallel sampling with ``n > 1``: SGLang expands one request into n samples of one prompt.

SGLang prefills the prompt once, then decodes the n continuations as a fork (they share the
prompt's KV in the radix tree), which DeFT reads once per step for all n.

    python examples/parallel_sampling.py --url http://127.0.0.1:30000 --n 8 --prompts 4
    python examples/parallel_sampling.py --engine --model-path M --engine-arg load_format=dummy
"""
from __future__ import annotations

import argparse

from _common import DecodeClock, add_common_args, make_client, sampling, short

TOPICS = ["the ocean at night", "a city built on stilts", "the first snowfall",
          "an abandoned observatory", "a market on the moon", "a clock that runs backwards"]


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (sampling n)")
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts")
    args = parser.parse_args(argv)
    client = make_client(args)
    clock = DecodeClock()
    prompts = [f"Write two sentences about {TOPICS[i % len(TOPICS)]} (variant {i}):\n"
               for i in range(args.prompts)]
    try:
        with clock.measure(f"{args.prompts} prompts x n={args.n}") as box:
            box["outputs"] = client.generate(prompts, sampling_params=sampling(args, n=args.n))
        outputs = box["outputs"]
        print(f"parallel sampling: {args.prompts} prompts x n={args.n} -> {len(outputs)} samples")
        for i, out in enumerate(outputs[: min(len(outputs), args.n)]):
            print(f"  prompt 0 sample {i}: {short(out['text'], 80)!r}")
        print(clock.report("prefill+decode"))
    finally:
        client.close()


if __name__ == "__main__":
    main()
