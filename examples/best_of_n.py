"""Best-of-n: sample n answers to one prompt in one batch and keep the most likely one.

All n requests share the whole prompt (a fork of width n); each answer is scored by its mean
token log-probability.

    python examples/best_of_n.py --url http://127.0.0.1:30000 --n 16
    python examples/best_of_n.py --engine --model-path M --engine-arg load_format=dummy
"""
from __future__ import annotations

import argparse

from _common import DecodeClock, add_common_args, make_client, mean_logprob, sampling, short

PROMPT = ("You are a careful assistant. Write a short, vivid opening sentence for a mystery "
          "novel set in a lighthouse during a storm.\nSentence:")


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--n", type=int, default=16, help="candidates")
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args(argv)
    client = make_client(args)
    clock = DecodeClock()
    try:
        client.generate([args.prompt], sampling_params=sampling(args, max_new_tokens=1))
        with clock.measure(f"{args.n} candidates") as box:
            box["outputs"] = client.generate(
                [args.prompt] * args.n, sampling_params=sampling(args), return_logprob=True)
        scored = sorted(((mean_logprob(o), o["text"]) for o in box["outputs"]), reverse=True)
        print(f"best-of-{args.n}: {args.n} samples of one prompt, ranked by mean logprob")
        for rank, (score, text) in enumerate(scored[:3], 1):
            print(f"  #{rank} ({score:.3f}) {short(text, 80)!r}")
        print(f"  worst ({scored[-1][0]:.3f}) {short(scored[-1][1], 80)!r}")
        print(clock.report("decode"))
    finally:
        client.close()


if __name__ == "__main__":
    main()
