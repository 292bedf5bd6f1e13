"""The mixture-of-experts feed-forward layer.

Each token's router picks its k best experts and weighs them by a softmax over those k logits
(exact routing, the default); for long prompts a budgeted expert-choice dispatch can replace it
(dispatch.py; decided on the host, computed by either backend).
An expert is W_down . swiglu(W_gate_up . x + b_gate_up) + b_down with MXFP4 weights.
The backend chooses how tokens reach their experts (`ops.experts`):
- by_expert_groups (CPU): one token (decode) runs its own k experts in one kernel call per projection;
  several tokens are grouped by expert on the host: each expert chosen by anyone runs once over all
  its tokens (the work shape that prefill needs), and its outputs are added back weighted.
- by_pairs (GPU): every (token, slot) pair p = t * k + a at once, grouped by expert on the device
  (only long prompts' cuBLAS path reads the group sizes on the host); each token then sums its k
  weighted rows.
Both give the same answer. The expert-choice dispatch's pairs, decided on the host, run as `grouped`
on the CPU and through the grouped matmul on the GPU (`ops.dispatched_experts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import dispatch
from .dispatch import DispatchRule
from .kernels.moe import route_ref

EXACT = DispatchRule("exact")

# T tokens, D hidden, E experts, A active experts per token, I expert hidden size


@dataclass
class MoEWeights:
    router: np.ndarray  # [E, D]
    router_bias: np.ndarray  # [E]
    gate_up_blocks: np.ndarray  # [E, 2I, D/32, 16] uint8, rows alternate gate, up
    gate_up_scales: np.ndarray  # [E, 2I, D/32] uint8
    gate_up_bias: np.ndarray  # [E, 2I]
    down_blocks: np.ndarray  # [E, D, I/32, 16] uint8
    down_scales: np.ndarray  # [E, D, I/32] uint8
    down_bias: np.ndarray  # [E, D]


def moe(ops, w: MoEWeights, x, k: int, limit: float, alpha: float, rule: DispatchRule = EXACT, trace=None,
        residual=None):
    """x [T, D] -> [T, D], plus `residual` [T, D] if given (added by the last op, as the block's skip
    connection). `rule` picks exact top-k or budgeted expert-choice dispatch (dispatch.py); `trace` (a
    trace.Trace) records the routing."""
    E = w.router.shape[0]
    logits = ops.linear(x, w.router, w.router_bias)  # [T, E]
    budget = rule.budget(x.shape[0], k, E)
    if budget is None:
        experts, weights = ops.route(logits, k)  # [T, A], [T, A]
        if trace is not None:
            chosen = ops.to_numpy(experts)
            trace.routing(ops.to_numpy(logits), chosen, np.bincount(chosen.ravel(), minlength=E))
        return ops.experts(w, x, experts, weights, limit, alpha, residual)
    host_logits = ops.to_numpy(logits)
    d = dispatch.expert_choice(host_logits, k, budget)
    if trace is not None:
        exact_experts, _ = route_ref(host_logits, k)
        trace.routing(host_logits, exact_experts, d.tokens_per_expert, d.dropped, d.unrouted)
    return ops.dispatched_experts(w, x, d, limit, alpha, residual)


def by_pairs(ops, w: MoEWeights, x, experts, weights, limit: float, alpha: float, residual=None):
    """x [T, D], experts / weights [T, A] -> [T, D] (+ residual), all pairs at once on the device."""
    A = experts.shape[1]
    plan = ops.pair_plan(experts, w.router.shape[0])  # the pairs grouped by expert
    h = ops.mxfp4_experts(x, A, w.gate_up_blocks, w.gate_up_scales, w.gate_up_bias, plan,
                          swiglu=(limit, alpha))  # [T*A, I]: gate_up, then the clamped SwiGLU
    y = ops.mxfp4_experts(h, 1, w.down_blocks, w.down_scales, w.down_bias, plan)  # [T*A, D]
    return ops.combine(y, weights, residual)  # [T, D]


def by_expert_groups(ops, w: MoEWeights, x, experts, weights, limit: float, alpha: float):
    """x [T, D], experts / weights [T, A] -> [T, D], experts grouped on the host."""
    if x.shape[0] == 1:
        return _one_token(ops, w, x, experts[0], weights[0], limit, alpha)
    return grouped(ops, w, x, dispatch.from_top_k(experts, weights, w.router.shape[0]), limit, alpha)


def _one_token(ops, w, x, experts, weights, limit, alpha):
    """x [1, D], experts / weights [A]."""
    xs = np.repeat(x, len(experts), axis=0)  # [A, D]
    h = ops.mxfp4_pairs(xs, w.gate_up_blocks, w.gate_up_scales, experts) + w.gate_up_bias[experts]  # [A, 2I]
    h = ops.swiglu(h, limit, alpha)  # [A, I]
    y = ops.mxfp4_pairs(h, w.down_blocks, w.down_scales, experts) + w.down_bias[experts]  # [A, D]
    return weights[None, :] @ y  # [1, D]


def grouped(ops, w, x, d: dispatch.Dispatch, limit, alpha):
    """x [T, D] -> [T, D]: each expert with work runs once over its tokens, outputs added back weighted."""
    out = np.zeros_like(x)
    for e, pairs in d.groups():
        tokens = d.tokens[pairs]  # each token at most once per expert
        h = ops.mxfp4_matmul(x[tokens], w.gate_up_blocks[e], w.gate_up_scales[e]) + w.gate_up_bias[e]  # [n, 2I]
        h = ops.swiglu(h, limit, alpha)  # [n, I]
        y = ops.mxfp4_matmul(h, w.down_blocks[e], w.down_scales[e]) + w.down_bias[e]  # [n, D]
        out[tokens] += d.weights[pairs, None] * y
    return out
