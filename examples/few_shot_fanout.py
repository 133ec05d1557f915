"""Few-shot fan-out: one long few-shot prefix, many questions decoded against it at once.

The prefix is run once (cached in SGLang's radix tree, as ``sgl.fork`` does), then all questions
are sent in one batch: each request = shared prefix + its own question. With DeFT the prefix's
KV is read once per decode step for the whole batch instead of once per question.

    python examples/few_shot_fanout.py --url http://127.0.0.1:30000 --width 32
    python examples/few_shot_fanout.py --engine --model-path M --engine-arg load_format=dummy
"""
from __future__ import annotations

import argparse

from _common import DecodeClock, add_common_args, make_client, sampling, short

EXAMPLE = ("Q: What is {a} plus {b}?\nA: Let's add. {a} + {b} = {c}. The answer is {c}.\n\n")


def few_shot_prefix(shots: int) -> str:
    """A few-shot prompt of ``shots`` worked additions."""
    body = "".join(EXAMPLE.format(a=i * 7 % 97, b=i * 13 % 89, c=i * 7 % 97 + i * 13 % 89)
                   for i in range(shots))
    return "Solve each problem step by step.\n\n" + body


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--shots", type=int, default=60, help="worked examples in the prefix")
    parser.add_argument("--width", type=int, default=32, help="questions decoded at once")
    args = parser.parse_args(argv)
    client = make_client(args)
    clock = DecodeClock()
    try:
        prefix = few_shot_prefix(args.shots)
        client.generate([prefix], sampling_params=sampling(args, max_new_tokens=1))
        questions = [f"Q: What is {100 + i} plus {200 + 3 * i}?\nA:" for i in range(args.width)]
        with clock.measure(f"fan-out x{args.width}") as box:
            box["outputs"] = client.generate([prefix + q for q in questions],
                                             sampling_params=sampling(args))
        outputs = box["outputs"]
        print(f"few-shot fan-out: prefix of {args.shots} examples "
              f"(~{outputs[0]['meta_info'].get('cached_tokens', '?')} cached tokens per request), "
              f"{args.width} questions decoded in one batch")
        for q, out in list(zip(questions, outputs))[:3]:
            print(f"  {short(q, 40)!r} -> {short(out['text'], 60)!r}")
        print(clock.report("decode"))
    finally:
        client.close()


if __name__ == "__main__":
    main()
