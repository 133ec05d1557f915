"""Tree-of-thought search: nested forks, each level branching from the best thoughts so far.

Level 0 is the question; every kept node forks ``--breadth`` thoughts; the ``--beam`` most
likely thoughts (mean token logprob) of a level are expanded at the next one, ``--depth``
levels deep. Every request of a level shares the question and its ancestors' thoughts with its
siblings and cousins: a KV tree several levels deep, which DeFT decodes reading each shared
token once per step.

Two ways to run it:

* batched ``/generate`` calls, one per level (works with ``--url`` and ``--engine``);
* ``--dsl`` (with ``--url``): SGLang's frontend language with nested ``s.fork(...)``.

    python examples/tree_of_thought.py --url http://127.0.0.1:30000 --depth 3 --breadth 4
    python examples/tree_of_thought.py --url http://127.0.0.1:30000 --dsl
    python examples/tree_of_thought.py --engine --model-path M --engine-arg load_format=dummy
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from _common import DecodeClock, add_common_args, make_client, mean_logprob, sampling, short

QUESTION = ("Question: Using the numbers 4, 7, 8 and 9 exactly once with + - * /, reach 24. "
            "Think step by step; each step proposes one operation.\n")


@dataclass
class Node:
    """A thought: the full text so far, its score and its path of step labels."""

    text: str
    score: float = 0.0
    path: list = field(default_factory=list)


def expand_level(client, frontier, args, clock, level: int) -> list:
    """Fork ``breadth`` thoughts from every node of ``frontier`` in one batched call."""
    prompts, parents = [], []
    for node in frontier:
        for i in range(args.breadth):
            label = f"{level}.{i + 1}"
            prompts.append(node.text + f"Step {label}:")
            parents.append((node, label))
    with clock.measure(f"level {level}: {len(prompts)} thoughts") as box:
        box["outputs"] = client.generate(prompts, sampling_params=sampling(args),
                                         return_logprob=True)
    children = [Node(prompt + out["text"] + "\n", mean_logprob(out), parent.path + [label])
                for prompt, (parent, label), out in zip(prompts, parents, box["outputs"])]
    return sorted(children, key=lambda n: n.score, reverse=True)


def run_batched(args) -> None:
    client = make_client(args)
    clock = DecodeClock()
    try:
        client.generate([args.question], sampling_params=sampling(args, max_new_tokens=1))
        frontier, requests = [Node(args.question)], 0
        for level in range(1, args.depth + 1):
            children = expand_level(client, frontier, args, clock, level)
            requests += len(children)
            frontier = children[: args.beam]
        best = frontier[0]
        print(f"tree of thought: depth {args.depth}, breadth {args.breadth}, beam {args.beam}: "
              f"{requests} thought requests in {args.depth} levels of nested forks")
        print(f"  best path {' > '.join(best.path)} (score {best.score:.3f}): "
              f"{short(best.text[len(args.question):], 90)!r}")
        print(clock.report("decode"))
    finally:
        client.close()


def run_dsl(args) -> None:
    """The same search written with SGLang's frontend language (nested forks, no pruning)."""
    import sglang as sgl

    sgl.set_default_backend(sgl.RuntimeEndpoint(args.url))

    def grow(state, depth: int) -> list:
        """Fork ``breadth`` thoughts below ``state``, recursively; returns every thought state."""
        if depth == 0:
            return []
        forks = state.fork(args.breadth)
        for i, branch in enumerate(forks):
            branch += f"Step {args.depth - depth + 1}.{i + 1}:" + sgl.gen(
                "thought", max_tokens=args.max_new_tokens, temperature=args.temperature,
                ignore_eos=args.ignore_eos) + "\n"
        states = list(forks)
        for branch in forks:
            states += grow(branch, depth - 1)
        return states

    @sgl.function
    def tree_of_thought(s, question):
        s += question
        thoughts = [t["thought"] for t in grow(s, args.depth)]  # waits for every fork
        s["best"] = max(thoughts, key=len)

    start = time.perf_counter()
    state = tree_of_thought.run(question=args.question)
    state.sync()
    elapsed = time.perf_counter() - start
    requests = sum(args.breadth ** d for d in range(1, args.depth + 1))
    print(f"tree of thought (frontend language): depth {args.depth}, breadth {args.breadth}: "
          f"{requests} forked thought requests in {elapsed:.2f} s (prefill + decode)")


def main(argv=None) -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--breadth", type=int, default=4)
    parser.add_argument("--beam", type=int, default=4, help="nodes kept per level (batched mode)")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--dsl", action="store_true", help="use sgl.function + s.fork (--url only)")
    parser.set_defaults(max_new_tokens=32)
    args = parser.parse_args(argv)
    if args.dsl:
        if not args.url:
            raise SystemExit("--dsl needs --url (the frontend language talks to a server)")
        run_dsl(args)
    else:
        run_batched(args)


if __name__ == "__main__":
    main()
