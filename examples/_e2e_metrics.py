"""Token / logprob comparison of two servers' greedy outputs (used by ``e2e_compare.py``).

Dummy weights give near-flat logits, so a greedy argmax can flip on rounding noise. The checks:

* token equality: share of positions where both servers chose the same token;
* before a request's first differing token, the chosen tokens' logprobs must agree
  (max / mean absolute difference = the numerical noise between the two backends);
* at the first differing token, stock's top-2 gap must be within that noise (a near tie) and,
  typically, DeFT picked stock's second choice. A real bug cannot hide behind noise (logprobs
  before divergence would differ), nor noise pass for a bug (gaps would be large).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Generation:
    """One request's greedy output: tokens, their logprobs, and the top-2 per position."""

    tokens: list
    logprobs: list
    top2: list  # per position: [(logprob, token_id), (logprob, token_id)]

    @classmethod
    def from_result(cls, result: dict) -> "Generation":
        meta = result.get("meta_info", {})
        chosen = meta.get("output_token_logprobs") or []
        tops = meta.get("output_top_logprobs") or [[] for _ in chosen]
        tokens = [int(entry[1]) for entry in chosen]
        logprobs = [float(entry[0]) if entry[0] is not None else float("nan") for entry in chosen]
        top2 = [[(float(t[0]), int(t[1])) for t in (top or [])[:2]] for top in tops]
        if not tokens and "output_ids" in result:
            tokens = [int(t) for t in result["output_ids"]]
        return cls(tokens, logprobs, top2)


def first_divergence(a: Generation, b: Generation) -> Optional[int]:
    """First position where the tokens differ (or where one output is longer), else None."""
    for i, (x, y) in enumerate(zip(a.tokens, b.tokens)):
        if x != y:
            return i
    return None if len(a.tokens) == len(b.tokens) else min(len(a.tokens), len(b.tokens))


@dataclass
class Comparison:
    """Aggregate comparison of a candidate server's outputs against stock's."""

    requests: int = 0
    positions: int = 0
    equal_positions: int = 0
    positions_before_divergence: int = 0
    identical_requests: int = 0
    abs_diffs: list = field(default_factory=list)
    divergences: list = field(default_factory=list)

    def summary(self, noise_factor: float = 2.0, noise_floor: float = 1e-3) -> dict:
        """Numbers for the report, with the two verdicts."""
        noise = max(self.abs_diffs) if self.abs_diffs else 0.0
        bound = noise_factor * noise + noise_floor
        gaps = [d["stock_top2_gap"] for d in self.divergences if d["stock_top2_gap"] is not None]
        within = sum(1 for g in gaps if g <= bound)
        equal_pct = 100.0 * self.equal_positions / max(self.positions, 1)
        return {
            "requests": self.requests,
            "tokens": self.positions,
            "token_equal_pct": round(equal_pct, 4),
            "tokens_before_first_divergence_pct": round(
                100.0 * self.positions_before_divergence / max(self.positions, 1), 4),
            "identical_requests": self.identical_requests,
            "logprob_abs_diff_before_divergence": {
                "max": noise, "mean": sum(self.abs_diffs) / max(len(self.abs_diffs), 1),
                "count": len(self.abs_diffs)},
            "divergences": len(self.divergences),
            "divergence_noise_bound": bound,
            "divergence_gaps_within_noise": within,
            "divergence_max_stock_top2_gap": max(gaps) if gaps else None,
            "divergence_swapped_top2": sum(1 for d in self.divergences if d["swapped_top2"]),
            "pass_token_equality_99": equal_pct >= 99.0,
            "pass_divergences_are_noise": within == len(gaps),
            "divergence_details": self.divergences[:50],
        }


def _divergence_record(index: int, pos: int, stock: Generation, cand: Generation) -> dict:
    top2 = stock.top2[pos] if pos < len(stock.top2) else []
    gap = top2[0][0] - top2[1][0] if len(top2) >= 2 else None
    cand_token = cand.tokens[pos] if pos < len(cand.tokens) else None
    return {
        "request": index, "position": pos,
        "stock_token": stock.tokens[pos] if pos < len(stock.tokens) else None,
        "candidate_token": cand_token, "stock_top2": top2,
        "candidate_top2": cand.top2[pos] if pos < len(cand.top2) else [],
        "stock_top2_gap": gap,
        "swapped_top2": len(top2) >= 2 and cand_token == top2[1][1],
    }


def compare(stock: list, candidate: list) -> Comparison:
    """Compare two lists of :class:`Generation` (same requests, same order)."""
    if len(stock) != len(candidate):
        raise ValueError(f"{len(stock)} stock results vs {len(candidate)} candidate results")
    out = Comparison(requests=len(stock))
    for index, (s, c) in enumerate(zip(stock, candidate)):
        n = max(len(s.tokens), len(c.tokens))
        out.positions += n
        out.equal_positions += sum(1 for x, y in zip(s.tokens, c.tokens) if x == y)
        pos = first_divergence(s, c)
        agree = n if pos is None else pos
        out.positions_before_divergence += agree
        out.abs_diffs += [abs(a - b) for a, b in zip(s.logprobs[:agree], c.logprobs[:agree])]
        if pos is None:
            out.identical_requests += 1
        else:
            out.divergences.append(_divergence_record(index, pos, s, c))
    return out
