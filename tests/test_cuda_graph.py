"""cuda_graph.GraphDecoder's bookkeeping, on the CPU: NumPy stands in for CuPy and a stand-in for CUDA
graphs (cuda_sim.sim.StandInGraph) reruns the recorded step. The static-shape step is idempotent for a
given token and position, so recording it by running it once and replaying it by running it again
does what a real graph does (tests/test_gpu.py checks real graphs on a GPU)."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import gptoss_np
from conftest import hf_logits, rel_err
from cuda_sim.sim import numpy_as_cupy, stand_in_graphs


@pytest.fixture
def cuda_graph(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", numpy_as_cupy(device_arrays=False))  # for the CPU backend
    monkeypatch.delitem(sys.modules, "gptoss_np.cuda_graph", raising=False)
    return importlib.import_module("gptoss_np.cuda_graph")


def test_graph_decoder_replays_its_recorded_step(cuda_graph, checkpoint_dir, hf_model, monkeypatch):
    folder = checkpoint_dir("tiny")
    model = gptoss_np.load(folder)
    model.ops.graphs = True
    ids = np.random.default_rng(8).integers(0, model.config.vocab_size, 30)  # past the window of 8
    cache = model.new_cache(len(ids))
    recorded = stand_in_graphs(monkeypatch, cuda_graph)
    parts = [model.forward(ids[:10], cache, all_logits=True)]
    decode = cuda_graph.GraphDecoder(model, cache)
    for t in range(10, len(ids)):  # step 1 op by op, step 2 recorded and replayed, the rest replayed
        parts.append(decode(int(ids[t])).copy())
        assert cache.length == t + 1
    assert len(recorded) == 1 and recorded[0].launches == len(ids) - 11
    assert rel_err(np.concatenate(parts), hf_logits(hf_model(folder), ids)) <= 1e-4
    with pytest.raises(ValueError, match="KV cache is full"):
        decode(0)


def test_a_failed_capture_falls_back_to_op_by_op(cuda_graph, checkpoint_dir, hf_model, caplog):
    folder = checkpoint_dir("tiny")
    model = gptoss_np.load(folder)
    model.ops.graphs = True
    ids = np.random.default_rng(9).integers(0, model.config.vocab_size, 6)
    cache = model.new_cache(len(ids))
    model.forward(ids[:3], cache)
    decode = cuda_graph.GraphDecoder(model, cache)
    stepped = [decode(int(t)).copy() for t in ids[3:]]  # the shim's stream refuses to capture
    assert "CUDA graph capture failed" in caplog.text and not model.ops.graphs and decode.graph is None
    assert cache.length == len(ids)
    assert rel_err(np.concatenate(stepped), hf_logits(hf_model(folder), ids)[3:]) <= 1e-4


class CapturingStream:
    """A stream that records: begin_capture / end_capture as CUDA has them, where a capture that an
    op broke can only be ended with an error."""

    def __init__(self):
        self.capturing, self.broken, self.ended = False, False, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        self.capturing = True

    def end_capture(self):
        self.capturing, self.ended = False, self.ended + 1
        if self.broken:
            raise RuntimeError("cudaErrorStreamCaptureInvalidated: operation failed due to a previous error during capture")
        return "graph"


def test_capture_returns_the_graph_and_reports_the_first_error(cuda_graph, monkeypatch):
    stream = CapturingStream()
    monkeypatch.setattr(cuda_graph, "_capture_stream", lambda: stream)
    assert cuda_graph.capture(lambda: "logits") == ("graph", "logits", [])

    def host_sync():
        stream.broken = True
        raise RuntimeError("cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing")

    with pytest.raises(RuntimeError, match="StreamCaptureUnsupported"):  # the cause, not the invalidated capture
        cuda_graph.capture(host_sync)
    assert stream.ended == 2 and not stream.capturing
