"""Shared fixtures: synthetic checkpoints in the real on-disk format, and transformers as the oracle."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest

from gptoss_np import synthetic

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# Checkpoints that differ in what the engine must get right. Each is (config.json overrides,
# rope style, shards); all derive from the "tiny" preset.
CHECKPOINTS = {
    # GQA 2:1, 8 experts top-2, window 8, YaRN with original context 64 (tests run past it)
    "tiny": ({}, "scaling", 1),
    # GQA 4:1, 16 experts top-4, 3 layers, newer rope_parameters, truncated YaRN ramp, sharded; an RMSNorm
    # eps that counts and SwiGLU's limit and alpha not gpt-oss's
    "gqa4_sharded": (dict(num_attention_heads=8, num_key_value_heads=2, head_dim=32, hidden_size=96,
                          intermediate_size=32, num_hidden_layers=3, num_local_experts=16,
                          num_experts_per_tok=4, sliding_window=16, rms_norm_eps=0.3, swiglu_limit=5.0,
                          swiglu_alpha=3.0,
                          rope_scaling={"rope_type": "yarn", "factor": 8.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                        "original_max_position_embeddings": 48, "truncate": True},
                          max_position_embeddings=384), "parameters", 3),
    # no GQA, every expert active, no attention bias, tied embeddings, plain RoPE, all full attention
    "mha_tied": (dict(num_attention_heads=4, num_key_value_heads=4, head_dim=16, hidden_size=64,
                      intermediate_size=96, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=4,
                      attention_bias=False, tie_word_embeddings=True, rope_scaling={"rope_type": "default"},
                      rope_theta=10000.0,
                      layer_types=["full_attention", "full_attention"]), "scaling", 1),
    # one expert per token, all sliding layers with window 5, no RoPE settings (gpt-oss's YaRN default)
    "top1_sliding": (dict(num_local_experts=6, num_experts_per_tok=1, sliding_window=5, rope_scaling=None,
                          layer_types=["sliding_attention", "sliding_attention"]), "scaling", 2),
    # window 1 on every layer: a token sees only itself (and the sinks), each ring buffer has one slot.
    # Compare it with transformers' forward over whole sequences, not its generate(): with its cache, at
    # window 1, that continued otherwise than its own forward's argmax (5.24; 2 of 4 random configs)
    "window1": (dict(sliding_window=1, layer_types=["sliding_attention", "sliding_attention"]), "scaling", 1),
}


def write(folder, name: str, seed: int = 0):
    overrides, rope_style, shards = CHECKPOINTS[name]
    config = synthetic.config_dict("tiny", rope_style=rope_style, **overrides)
    if config.get("rope_scaling", "absent") is None:
        del config["rope_scaling"]
    return synthetic.write_checkpoint(folder, config, seed=seed, shards=shards)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory):
    """checkpoint_dir(name) -> folder of that synthetic checkpoint (written once per session)."""
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = write(tmp_path_factory.mktemp(name), name)
        return made[name]
    return get


@pytest.fixture(scope="session")
def bench_script():
    """bench_script(name) -> the script bench/<name>.py, loaded as a module (bench/ is not a package)."""
    if str(BENCH) not in sys.path:  # as `python bench/<name>.py` has it: the scripts import bench/provenance.py
        sys.path.append(str(BENCH))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A gptoss_np cache folder of this test session (the built tokenizer lands here once)."""
    return tmp_path_factory.mktemp("gptoss_np_cache")


O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # tiktoken's expected hash


@pytest.fixture(scope="session")
def o200k_base_tiktoken() -> bytes:
    """The o200k_base.tiktoken file that tiktoken and openai-harmony download, from bpe-openai's copy (offline)."""
    import gzip
    import hashlib
    import importlib.resources
    pytest.importorskip("bpe_openai")
    data = gzip.decompress((importlib.resources.files("bpe_openai.data") / "o200k_base.tiktoken.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == O200K_BASE_SHA256
    return data


@pytest.fixture(scope="session")
def tok(cache_dir):
    """The o200k_harmony tokenizer, built offline once per session."""
    from gptoss_np.tokenizer import Tokenizer
    return Tokenizer.o200k_harmony(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def hf_model():
    """hf_model(folder) -> transformers' GptOssForCausalLM on the CPU in float32, eager attention."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    loaded = {}

    def get(folder):
        if folder not in loaded:
            loaded[folder] = load_hf(folder)
        return loaded[folder]
    return get


def load_hf(folder, device: str = "cpu"):
    """transformers' GptOssForCausalLM from `folder` in float32 with eager attention, on `device`.

    transformers 5.17 (the device machine's) dequantizes the MXFP4 experts to bf16 whatever dtype is
    asked for, and then runs the experts in bf16: 7e-3 relative error on the tiny checkpoint's logits.
    The dequantized values are exact in bf16, so widening the model makes every product float32 again
    (a no-op from the versions that dequantize to the asked dtype, such as 5.24)."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager",
        quantization_config=transformers.Mxfp4Config(dequantize=True))
    return model.to(device=device, dtype=torch.float32).eval()


def hf_logits(model, ids) -> np.ndarray:
    """transformers' logits for one sequence of ids, on the model's device, as a float32 NumPy array."""
    import torch
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), device=model.device)[None]).logits[0].float().cpu().numpy()


def model_like_weights(kind: str, rng, N: int, K: int) -> np.ndarray:
    """[N, K] float32 weights of the two kinds the model multiplies: dequantized MXFP4 ("mxfp4", block
    scales 2**-17 .. 2**2) or bf16 widened ("bf16")."""
    from gptoss_np.kernels import bf16, mxfp4
    if kind == "mxfp4":
        blocks = rng.integers(0, 256, (N, K // 32, 16), dtype=np.uint8)
        return mxfp4.dequantize(blocks, rng.integers(110, 130, (N, K // 32), dtype=np.uint8))
    return bf16.bf16_to_f32(bf16.f32_to_bf16(rng.standard_normal((N, K), dtype=np.float32)))


def rewrite_tensors(folder, change) -> None:
    """Rewrite `folder`'s model.safetensors with change(tensors) applied to {name: (dtype, array)} (the
    arrays are copies, not views of the file being replaced)."""
    from gptoss_np.safetensors_io import SafetensorsFile, write
    f = SafetensorsFile(folder / "model.safetensors")
    tensors = {name: (info.dtype, np.array(f.get(name))) for name, info in f.tensors.items()}
    change(tensors)
    (folder / "model.safetensors").unlink()
    write(folder / "model.safetensors", tensors)


def random_config(rng) -> dict:
    """config.json overrides for a random small model, beyond CHECKPOINTS' shapes and options: head dims
    from 2 to 128, one expert or all of them a token, windows from 1, either RoPE, RMSNorm's epsilon and
    SwiGLU's alpha (which transformers reads too), ..."""
    G, L, E = int(rng.choice([1, 2, 4])), int(rng.integers(1, 4)), int(rng.integers(1, 13))
    k = int(rng.integers(1, E + 1))
    yarn = {"rope_type": "yarn", "factor": float(rng.choice([2.0, 32.0])), "beta_fast": float(rng.choice([8.0, 32.0])),
            "beta_slow": float(rng.choice([1.0, 2.0])), "truncate": bool(rng.integers(0, 2)),
            "original_max_position_embeddings": int(rng.choice([16, 64, 4096]))}
    return dict(num_attention_heads=G * int(rng.integers(1, 5)), num_key_value_heads=G,
                head_dim=int(rng.choice([2, 6, 8, 12, 20, 64, 128])), hidden_size=32 * int(rng.integers(1, 11)),
                intermediate_size=32 * int(rng.integers(1, 8)), num_hidden_layers=L, num_local_experts=E,
                num_experts_per_tok=k, experts_per_token=k, sliding_window=int(rng.integers(1, 21)),
                layer_types=[str(rng.choice(["sliding_attention", "full_attention"])) for _ in range(L)],
                rope_scaling=yarn if rng.integers(0, 2) else {"rope_type": "default"},
                rope_theta=float(rng.choice([1e4, 1.5e5])), attention_bias=bool(rng.integers(0, 2)),
                tie_word_embeddings=bool(rng.integers(0, 2)), swiglu_limit=float(rng.choice([1.5, 7.0, 20.0])),
                vocab_size=int(rng.choice([97, 512, 1000])), max_position_embeddings=512,
                rms_norm_eps=float(rng.choice([1e-6, 1e-5, 0.3])), swiglu_alpha=float(rng.choice([0.9, 1.702, 3.0])))


def random_checkpoint(folder, seed: int):
    """A random small model (random_config, RoPE settings in either style, one or two shards) written to
    `folder`, the same for a seed."""
    rng = np.random.default_rng(seed)
    style = str(rng.choice(["scaling", "parameters"]))
    return synthetic.write_checkpoint(folder, synthetic.config_dict("tiny", rope_style=style, **random_config(rng)),
                                      seed=seed, shards=int(rng.integers(1, 3)))


def assert_greedy(tokens, logits, tol: float) -> None:
    """Each token is the argmax of its step's logits [len(tokens), V], but where the two best of them tie
    within `tol` (relative to the largest logit): there a greedy pick may go either way."""
    for step, (token, row) in enumerate(zip(tokens, logits)):
        second, best = np.sort(row)[-2:]
        assert token == row.argmax() or best - second <= tol * np.abs(row).max(), (step, token, int(row.argmax()))


class FixedUniform:
    """A stand-in for a NumPy Generator whose every uniform draw is `u` (sampling's draws at chosen points)."""

    def __init__(self, u: float):
        self.u = u

    def random(self) -> float:
        return self.u


def fake_clock(monkeypatch, module) -> list:
    """The module's time.perf_counter made a clock that moves only when the test moves it: now[0] seconds."""
    now = [0.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def completion_ids(tok, *messages: tuple[str, str | None, str], end: str = "<|return|>") -> list[int]:
    """The ids an assistant writes after `<|start|>assistant`: (channel, recipient or None, text) messages,
    the last ended by `end`."""
    ids = []
    for i, (channel, recipient, text) in enumerate(messages):
        if i:
            ids += [tok.start, *tok.encode("assistant")]
        ids += [tok.channel, *tok.encode(channel)]
        if recipient:
            ids += tok.encode(f" to={recipient} ") + [tok.special_id("<|constrain|>"), *tok.encode("json")]
        ids += [tok.message, *tok.encode(text), tok.end]
    ids[-1] = tok.special_id(end)
    return ids


# tests/cuda_sim in Numba's CUDA simulator: about 4.5 minutes on one core of the 2-core dev box (the
# simulator's threads take turns under the GIL). tests/test_kernels_cuda.py's test_simulator reports
# it; it starts as soon as that test is collected and runs in the background while the rest of the
# suite runs on the other core, and the test is moved to the end to wait for it.
SIMULATOR_TEST = "tests/test_kernels_cuda.py::test_simulator"
SIMULATOR_TIMEOUT_S = 900
simulator_key = pytest.StashKey["SimulatorRun"]()


class SimulatorRun:
    """`pytest tests/cuda_sim` with NUMBA_ENABLE_CUDASIM=1 (set before numba is imported, hence a
    subprocess), started now; its output goes to temporary files, which no pipe can fill."""

    def __init__(self):
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.launched = tempfile.NamedTemporaryFile("r", suffix=".txt")  # the kernels it launched, one a line
        self.deadline = time.monotonic() + SIMULATOR_TIMEOUT_S
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda_sim"], cwd=ROOT,
            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "GPTOSS_SIM_LAUNCHED": self.launched.name},
            stdout=self.out, stderr=self.err, text=True)

    def result(self) -> subprocess.CompletedProcess:
        """The finished run, waited for up to SIMULATOR_TIMEOUT_S from its start (then stopped: TimeoutExpired)."""
        try:
            self.process.wait(max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        self.out.seek(0)
        self.err.seek(0)
        run = subprocess.CompletedProcess(self.process.args, self.process.returncode, self.out.read(), self.err.read())
        run.launched = set(self.launched.read().split())  # "module.kernel" of every kernel launched
        return run

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(config, items):
    found = [item for item in items if item.nodeid.endswith(SIMULATOR_TEST)]
    if found and not config.option.collectonly and importlib.util.find_spec("numba.cuda") is not None:
        items.remove(found[0])
        items.append(found[0])
        config.stash[simulator_key] = SimulatorRun()


def pytest_unconfigure(config):
    """A run cut short (-x, Ctrl-C) does not leave the simulator running."""
    run = config.stash.get(simulator_key, None)
    if run is not None:
        run.stop()


@pytest.fixture
def simulator_run(request) -> subprocess.CompletedProcess:
    """The finished run of tests/cuda_sim in the simulator (started when the session was collected)."""
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install -e '.[cudasim]')")
    if simulator_key not in request.config.stash:
        request.config.stash[simulator_key] = SimulatorRun()
    return request.config.stash[simulator_key].result()


# ------------------------------------------------------------------ skips in CI
# .ci/run sets GPTOSS_SKIPS_ALLOWED. Then a test may skip only if it is marked gpu (CI has no GPU) or its
# id starts with one of the variable's space-separated prefixes (what .ci/run knows this machine lacks);
# any other skip (a test-only package missing, a skip added to get past a failure) fails the run.
SKIPS_ALLOWED = os.environ.get("GPTOSS_SKIPS_ALLOWED")
unexpected_skips: list[str] = []
# the ids of the tests marked gpu. Not "gpu" in report.keywords: keywords hold the names of a test's
# parametrize ids and folders too, so test_x[gpu] or tests/gpu/... would pass as marked
gpu_marked: set[str] = set()


def _check_skip(report, marked_gpu: bool) -> None:
    if SKIPS_ALLOWED is None or not report.skipped or marked_gpu or report.nodeid.startswith(
            tuple(SKIPS_ALLOWED.split())):
        return
    why = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    unexpected_skips.append(f"{report.nodeid or 'a module'}: {why}")


def pytest_itemcollected(item):
    if item.get_closest_marker("gpu") is not None:
        gpu_marked.add(item.nodeid)


def pytest_runtest_logreport(report):
    _check_skip(report, report.nodeid in gpu_marked)


def pytest_collectreport(report):
    _check_skip(report, False)  # a module skipped whole (importorskip at its top)


def pytest_sessionfinish(session, exitstatus):
    if unexpected_skips and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if unexpected_skips:
        terminalreporter.section("skips that GPTOSS_SKIPS_ALLOWED does not allow (tests/conftest.py)", red=True)
        for line in unexpected_skips:
            terminalreporter.line(line)
