"""The CPU engine on AArch64, where its MXFP4 decode is NEON's table lookup (kernels/mxfp4_simd.py), run
by an AArch64 Python under qemu-user: `bash tests/aarch64/setup.sh DIR` builds one, and
GPTOSS_AARCH64_PYTHON=DIR/python names it (.ci/run does both). Without it these tests are skipped: an
x86 machine runs the x86 decoders only, and the other tests compile the ARM one without running it.
The oracle is the same: transformers, run here on x86 in float32, and the NumPy references."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import hf_logits, rel_err
from gptoss_np import synthetic

PYTHON = os.environ.get("GPTOSS_AARCH64_PYTHON")
pytestmark = pytest.mark.skipif(not PYTHON, reason="needs an AArch64 Python: bash tests/aarch64/setup.sh DIR, "
                                                   "then GPTOSS_AARCH64_PYTHON=DIR/python")
REPO = Path(__file__).resolve().parent.parent
TOL = 1e-4  # relative error on float32 logits


@pytest.fixture(scope="module")
def aarch64(tmp_path_factory):
    """aarch64(args, cwd) -> the AArch64 Python's completed run, with this checkout's gptoss_np importable
    (a tree of links laid out as pip installs it: kernels/ as gptoss_np.kernels) and a fresh Numba cache."""
    assert Path(PYTHON).exists(), f"GPTOSS_AARCH64_PYTHON={PYTHON} is not there (tests/aarch64/setup.sh builds it)"
    where = tmp_path_factory.mktemp("aarch64")
    package = where / "src" / "gptoss_np"
    package.mkdir(parents=True)
    for path in (REPO / "gptoss_np").iterdir():
        if path.name != "__pycache__":
            (package / path.name).symlink_to(path)
    (package / "kernels").symlink_to(REPO / "kernels")
    env = os.environ | {"PYTHONPATH": str(where / "src"), "NUMBA_CACHE_DIR": str(where / "numba"),
                        "PYTHONDONTWRITEBYTECODE": "1"}

    def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        done = subprocess.run([PYTHON, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done
    return run


def test_the_mxfp4_decoders_on_aarch64(aarch64):
    """tests/test_kernel_mxfp4_simd.py on AArch64: NEON's decoder is the one chosen, and it and the
    portable one give the NumPy reference's weights, dot products and tiles."""
    done = aarch64(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_kernel_mxfp4_simd.py"], REPO / "tests")
    assert " passed" in done.stdout and " skipped" not in done.stdout, done.stdout[-3000:]


ENGINE = """
import json, sys
import numpy as np
import gptoss_np
from gptoss_np.kernels import mxfp4_simd

folder, out = sys.argv[1], sys.argv[2]
ids = np.load(out + "/ids.npy")
model = gptoss_np.load(folder)
np.save(out + "/prefill.npy", model.logits(ids))
cache = model.new_cache(8)
steps = [model.forward(ids[:40], cache, all_logits=True)] + [model.forward(ids[t:t + 1], cache)
                                                             for t in range(40, len(ids))]
np.save(out + "/decode.npy", np.concatenate(steps))
print(json.dumps({"decoder": mxfp4_simd.DECODER.__qualname__, "tbl": mxfp4_simd.DECODER is mxfp4_simd._decode_by_tbl,
                  "greedy": list(model.generate(ids[:30], 16))}))
"""


def test_the_cpu_engine_on_aarch64_matches_transformers(aarch64, hf_model, tmp_path):
    """A checkpoint whose expert rows hold 8 MXFP4 blocks: a 100-token prompt's experts run the tile
    kernel (partial tiles too), decoding runs the row GEMV; logits and a greedy continuation are
    transformers'."""
    import torch
    config = synthetic.config_dict("tiny", hidden_size=256, intermediate_size=256, head_dim=32,
                                   num_attention_heads=8, num_key_value_heads=2)
    folder = synthetic.write_checkpoint(tmp_path / "checkpoint", config, seed=4)
    ids = np.random.default_rng(9).integers(0, config["vocab_size"], 100)
    np.save(tmp_path / "ids.npy", ids)
    done = aarch64(["-c", ENGINE, str(folder), str(tmp_path)], tmp_path)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["tbl"], result["decoder"]
    hf = hf_model(folder)
    ref = hf_logits(hf, ids)
    assert rel_err(np.load(tmp_path / "prefill.npy"), ref) <= TOL
    assert rel_err(np.load(tmp_path / "decode.npy"), ref) <= TOL
    with torch.no_grad():
        out = hf.generate(torch.tensor(ids[:30])[None], max_new_tokens=16, do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    assert result["greedy"] == out[0, 30:].tolist()
