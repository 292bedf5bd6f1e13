"""Decode steps replayed from a CUDA graph: one launch per token instead of hundreds.

A decode step launches about 10 kernels per layer (~240 for gpt-oss-20b), and from Python each
launch costs more host time than the GPU needs to run most of them. So the step is recorded once
(CUDA stream capture) and then replayed. What makes a step replayable:
  - static shapes: the cache attends over its whole buffers (KVCache.static_shapes), so no shape
    depends on the position;
  - the token and its position live in device buffers that the recorded step reads; before each
    replay the host writes them (two small fills on the caller's stream);
  - every kernel launches on CuPy's current stream (kernels/common_cuda.stream_of), so Numba's
    launches are recorded with CuPy's;
  - every buffer allocated while recording is kept for the graph's life: each replay writes to
    those addresses, so the memory pool must never hand them to anyone else.
The first step runs op by op (it compiles every kernel, since nothing may compile while recording),
the second is recorded and replayed, later ones replay. If recording fails (an op that cannot be
captured, an old driver), a warning says why, and this model decodes op by op from then on.
"""

from __future__ import annotations

import logging

import cupy as cp

log = logging.getLogger(__name__)


class GraphDecoder:
    """decode(token) -> logits [1, V] of the next position, for one sequence's `cache`.

    The logits array is the graph's own output: read it before the next call."""

    def __init__(self, model, cache):
        if cache.length == 0:
            raise ValueError("GraphDecoder continues a sequence: prefill the prompt into the cache first")
        self.model, self.cache = model, cache
        cache.static_shapes = True
        self.token = cp.zeros(1, cp.int64)  # [1] the token to run, read by the graph
        self.position = cp.zeros(1, cp.int64)  # [1] its position
        self.graph = None
        self.logits = None  # [1, V], written by each replay
        self.kept = []  # the memory allocated while recording
        self.steps = 0

    def __call__(self, token: int):
        cache = self.cache
        if cache.capacity is not None and cache.length >= cache.capacity:
            raise ValueError(f"the KV cache is full ({cache.capacity} tokens); make a larger one to decode further")
        self.token.fill(token)
        self.position.fill(cache.length)
        self.steps += 1
        if self.graph is None and self.steps > 1 and self.model.ops.graphs:
            self._record()
        if self.graph is None:  # the first step, or recording failed
            return self.model.forward(self.token, cache, positions=self.position)
        self.graph.launch(cp.cuda.get_current_stream())
        cache.length += 1
        return self.logits

    def _record(self):
        """Capture one step (capture executes nothing); on failure, decode op by op from now on."""
        length = self.cache.length
        try:
            self.graph, self.logits, self.kept = capture(
                lambda: self.model.forward(self.token, self.cache, positions=self.position))
        except Exception as e:  # a capture that fails leaves nothing behind
            self.model.ops.graphs = False
            log.warning("CUDA graph capture failed, decoding op by op from now on: %s: %s", type(e).__name__, e)
        self.cache.length = length  # the recorded step has not run yet


def capture(fn):
    """Record fn()'s GPU work as a CUDA graph, on a side stream: returns (graph, fn's result, the
    memory allocated while recording, which the caller keeps as long as it replays the graph)."""
    pool = cp.get_default_memory_pool()
    kept = []

    def keep(size):
        memory = pool.malloc(size)
        kept.append(memory)
        return memory

    stream = _capture_stream()
    with stream, cp.cuda.using_allocator(keep):
        stream.begin_capture()
        try:
            result = fn()
        except BaseException:
            try:  # end the capture, which the error has usually invalidated; the first error says why
                stream.end_capture()
            except Exception:
                pass
            raise
        graph = stream.end_capture()
    return graph, result, kept


_capture_streams = {}  # device id -> the side stream that records graphs


def _capture_stream():
    """One non-blocking side stream per device for every capture (the default stream cannot capture),
    so that the memory of finished decoders returns to one arena of the memory pool."""
    device = cp.cuda.Device().id
    if device not in _capture_streams:
        _capture_streams[device] = cp.cuda.Stream(non_blocking=True)
    return _capture_streams[device]
