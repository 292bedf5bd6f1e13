"""Which (token, expert) pairs a mixture-of-experts layer computes, and with which weights.

Two ways to decide, both returning a `Dispatch` whose pairs are grouped by expert, so each expert
runs once over its group:

- exact routing (`from_top_k` of the router's top-k, ops.route): every token runs its own top-k
  experts, weighted by a softmax over those k router logits. This is gpt-oss as trained, and the
  default.
- `expert_choice`: every expert takes at most `tokens_per_expert` tokens, a fixed compute budget
  (the ZML seed's dispatch, used for long prompts). Tokens rank their experts by router logit;
  an expert prefers the tokens that rank it first, then second, ..., and among equal ranks the
  higher logit; it keeps its first `tokens_per_expert`. Each token then keeps at most k of the
  experts that took it (its best-ranked ones) and its weights are a softmax over the logits of
  the experts it kept. When the budget drops nothing, this is exactly exact routing.

How this differs from the seed's `dispatchTokens`: the seed scores a (token, expert) pair as
`logit ** rank` (rank 1 = first choice). That favours first choices only for values in (0, 1), such
as probabilities, but the seed passes raw router logits: a logit of 2 at rank 1 scores 2 while 1.5 at
rank 3 scores 3.4, and a negative logit changes sign with the rank's parity. It then normalises with
a softmax over all E experts in which the experts not kept count as logit 0, so even when nothing is
dropped the weights are not the top-k softmax. Here first choices always win, and the weights
renormalise over the experts actually kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# N tokens, E experts, k experts per token, P pairs computed


@dataclass
class Dispatch:
    tokens: np.ndarray  # [P] token of each pair, pairs grouped by expert
    weights: np.ndarray  # [P] float32 routing weight of each pair
    starts: np.ndarray  # [E + 1] pairs of expert e are starts[e]:starts[e + 1]
    dropped: int  # pairs of exact top-k routing that are not computed
    unrouted: int  # tokens left with no expert at all (their MoE output is zero)

    def groups(self):
        """(expert, its pairs' slice) for every expert with work."""
        for e in np.flatnonzero(np.diff(self.starts)):
            yield int(e), slice(int(self.starts[e]), int(self.starts[e + 1]))

    @property
    def tokens_per_expert(self) -> np.ndarray:
        return np.diff(self.starts)

    def as_slots(self, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """The pairs in the (token, slot) layout of exact routing, for backends built on it:
        row [P] = token * k + slot of each pair (still grouped by expert), and weights [N, k] with 0
        in the slots a token did not fill; k = the most pairs of any token."""
        counts = np.bincount(self.tokens, minlength=n_tokens)  # [N]
        k = max(1, int(counts.max(initial=0)))
        by_token = np.argsort(self.tokens, kind="stable")
        first = np.cumsum(counts) - counts  # where each token's pairs start in by_token
        slot = np.empty_like(self.tokens)
        slot[by_token] = np.arange(len(self.tokens)) - first[self.tokens[by_token]]
        weights = np.zeros((n_tokens, k), np.float32)
        weights[self.tokens, slot] = self.weights
        return self.tokens * k + slot, weights


MODES = ("exact", "expert_choice", "auto")


@dataclass(frozen=True)
class DispatchRule:
    """How a layer routes several tokens: "exact" top-k (the default), "expert_choice" with a budget
    of `tokens_per_expert(ratio, N, k, E)` tokens per expert, or "auto": expert choice when the seed's
    rule says the budget saves work (`seed_prefers_expert_choice`), else exact. One token (decode)
    always runs its own k experts."""

    mode: str = "exact"
    tokens_per_expert_ratio: float = 2.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"moe_dispatch must be one of {MODES}, got {self.mode!r}")
        if not self.tokens_per_expert_ratio > 0:
            raise ValueError(f"tokens_per_expert_ratio must be positive, got {self.tokens_per_expert_ratio!r}")

    def budget(self, n_tokens: int, k: int, n_experts: int) -> int | None:
        """Tokens per expert for expert-choice dispatch of n_tokens, or None for exact routing."""
        if self.mode == "exact" or n_tokens == 1:
            return None
        budget = tokens_per_expert(self.tokens_per_expert_ratio, n_tokens, k, n_experts)
        if self.mode == "auto" and not seed_prefers_expert_choice(budget, n_tokens):
            return None
        return budget


def tokens_per_expert(ratio: float, n_tokens: int, k: int, n_experts: int) -> int:
    """The seed's budget: ratio * N * k / E tokens per expert, rounded up to a multiple of 8."""
    return 8 * math.ceil(ratio * n_tokens * k / n_experts / 8)


def seed_prefers_expert_choice(budget: int, n_tokens: int) -> bool:
    """The seed's automatic rule: use the budgeted dispatch when 3 * budget <= 2 * N."""
    return 3 * budget <= 2 * n_tokens


def expert_choice(logits: np.ndarray, k: int, budget: int) -> Dispatch:
    """Each expert takes at most `budget` tokens, first choices first; each token keeps <= k."""
    N, E = logits.shape
    ranks = _ranks(logits)
    taken = np.zeros((N, E), dtype=bool)
    for e in range(E):
        # by rank, then by logit (lexsort sorts by the last key first)
        preferred = np.lexsort((-logits[:, e], ranks[:, e]))[:budget]
        taken[preferred, e] = True
    # a token keeps its k best-ranked experts among those that took it
    rank_if_taken = np.where(taken, ranks, E)
    kth = np.sort(rank_if_taken, axis=1)[:, min(k, E) - 1:min(k, E)]  # [N, 1]
    kept = taken & (rank_if_taken <= kth)
    dropped = int(np.count_nonzero((ranks < k) & ~kept))
    return _dispatch(logits, kept, dropped)


def from_top_k(experts: np.ndarray, weights: np.ndarray, n_experts: int) -> Dispatch:
    """The Dispatch of routing already chosen: experts / weights [N, k] from the router's top-k."""
    k = experts.shape[1]
    order = np.argsort(experts.ravel(), kind="stable")  # (token, slot) pairs by expert, tokens ascending
    starts = np.searchsorted(experts.ravel()[order], np.arange(n_experts + 1))
    return Dispatch(tokens=order // k, weights=weights.ravel()[order].astype(np.float32), starts=starts,
                    dropped=0, unrouted=0)


def _ranks(logits: np.ndarray) -> np.ndarray:
    """[N, E]: the rank of each expert in each token's preference (0 = highest logit)."""
    order = np.argsort(-logits, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(logits.shape[1])[None, :], axis=1)
    return ranks


def _dispatch(logits: np.ndarray, kept: np.ndarray, dropped: int) -> Dispatch:
    """Pairs where `kept` [N, E] is true, grouped by expert, with per-token softmax weights."""
    E = logits.shape[1]
    masked = np.where(kept, logits, -np.inf)
    top = masked.max(axis=1, keepdims=True)
    unrouted = ~kept.any(axis=1)
    w = np.exp(masked - np.where(unrouted[:, None], 0.0, top))  # exp(-inf) = 0 off the kept pairs
    w /= np.maximum(w.sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    experts, tokens = np.nonzero(kept.T)  # expert-major: grouped by expert, tokens ascending
    starts = np.searchsorted(experts, np.arange(E + 1))
    return Dispatch(tokens=tokens, weights=w[tokens, experts].astype(np.float32), starts=starts,
                    dropped=dropped, unrouted=int(unrouted.sum()))
