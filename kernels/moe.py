"""Mixture-of-experts pieces: router top-k, the clamped SwiGLU (NumPy references), and the router as a
Numba CPU kernel (a plain loop: at decode NumPy's per-call overhead is most of the cost)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def route_ref(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Router logits [T, E] -> chosen experts [T, k] (best first; at ties the lower expert first, NaN
    last) and weights [T, k]: softmax over the k."""
    experts = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    chosen = np.take_along_axis(logits, experts, axis=-1)
    weights = np.exp(chosen - chosen[:, :1])
    return experts, (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def swiglu_ref(gate_up: np.ndarray, limit: float, alpha: float) -> np.ndarray:
    """[T, 2I] with gate in even and up in odd columns -> [T, I]:
    g = min(gate, limit), u = clip(up, -limit, limit), (u + 1) * g * sigmoid(alpha * g)."""
    gate = np.minimum(gate_up[:, 0::2], np.float32(limit))
    up = np.clip(gate_up[:, 1::2], np.float32(-limit), np.float32(limit))
    with np.errstate(over="ignore"):  # exp overflows to inf for very negative gates: sigmoid -> 0
        return (up + 1) * (gate / (1 + np.exp(-np.float32(alpha) * gate)))


@njit(cache=True)
def route(logits: np.ndarray, k: int):
    """route_ref as a loop: each row's k largest logits by insertion (k is small), then their softmax."""
    T, E = logits.shape
    experts = np.empty((T, k), np.int64)
    weights = np.empty((T, k), np.float32)
    for t in range(T):
        n = 0  # experts[t, :n] holds the best so far, best first
        for e in range(E):
            v = logits[t, e]
            if n == k and v <= logits[t, experts[t, k - 1]]:
                continue
            i = min(n, k - 1)
            while i > 0 and logits[t, experts[t, i - 1]] < v:
                experts[t, i] = experts[t, i - 1]
                i -= 1
            experts[t, i] = e
            n = min(n + 1, k)
        top = logits[t, experts[t, 0]]
        total = np.float32(0)
        for a in range(k):
            weights[t, a] = math.exp(logits[t, experts[t, a]] - top)
            total += weights[t, a]
        for a in range(k):
            weights[t, a] /= total
    return experts, weights

