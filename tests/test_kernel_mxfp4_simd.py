"""The LLVM-IR MXFP4 decoders (AVX-512 permute, x86 byte shuffle, NEON tbl, portable arithmetic: those this CPU
runs), against the reference."""

from __future__ import annotations

import hashlib
import platform
import re
from pathlib import Path

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir
from numba import njit
from numba.core.errors import TypingError

from gptoss_np.kernels import mxfp4, mxfp4_simd

DECODERS = {"permute": mxfp4_simd._decode_by_permute, "shuffle": mxfp4_simd._decode_by_shuffle,
            "tbl": mxfp4_simd._decode_by_tbl, "arithmetic": mxfp4_simd._decode_by_arithmetic}
for name, feature in (("permute", "avx512f"), ("shuffle", "ssse3"), ("tbl", "neon")):
    if not mxfp4_simd._compiles_for(feature):
        del DECODERS[name]  # an instruction this CPU lacks


@pytest.fixture(scope="module", params=list(DECODERS))
def kernels(request):
    """(dot, dequantize) njit functions over whole matrices built on one decoder."""
    row_dot, dequantize_row, _ = mxfp4_simd._intrinsics(DECODERS[request.param], 1, 1)

    @njit
    def dot(blocks, scales, x_even, x_odd, out):
        for n in range(blocks.shape[0]):
            out[n] = row_dot(blocks[n], scales[n], x_even, x_odd)

    @njit
    def dequantize(blocks, scales, out):
        for n in range(blocks.shape[0]):
            dequantize_row(blocks[n], scales[n], out[n])

    return dot, dequantize


def test_every_byte_and_every_scale_dequantizes_exactly(kernels):
    _, dequantize = kernels
    blocks = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 16), (256, 1, 1))  # [256 rows, 16 blocks, 16]
    scales = np.repeat(np.arange(256, dtype=np.uint8), 16).reshape(256, 16)  # row r: scale r everywhere
    scales = np.roll(scales, 1, axis=1) + np.arange(16, dtype=np.uint8)  # ... and each block a different one
    out = np.full((256, 512), np.nan, np.float32)
    dequantize(blocks, scales, out)
    with np.errstate(over="ignore"):  # scale bytes >= 253 overflow float32 for the largest values
        np.testing.assert_array_equal(out, mxfp4.dequantize(blocks, scales))


@pytest.mark.parametrize("N, groups", [(1, 1), (7, 3), (64, 36), (5, 90)])  # 90: gpt-oss, 22 rounds of 4 and 2
def test_row_dot_matches_reference(kernels, N, groups):
    dot, _ = kernels
    rng = np.random.default_rng(N * groups)
    blocks = rng.integers(0, 256, (N, groups, 16), dtype=np.uint8)
    scales = rng.integers(100, 150, (N, groups), dtype=np.uint8)
    x = rng.standard_normal(groups * 32).astype(np.float32)
    out = np.full(N, np.nan, np.float32)
    dot(blocks, scales, np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2]), out)
    ref = mxfp4.matmul_ref(x[None].astype(np.float64), blocks, scales)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("rows, tokens, rest", [(4, 4, 0), (4, 4, 1), (4, 4, 3), (2, 8, 5), (3, 2, 0)])
def test_tile_dot_writes_its_tile_and_nothing_else(decoder, rows, tokens, rest):
    """The middle row tile, the second token tile: whole, or the last one of `rest` tokens."""
    *_, tile_dot = mxfp4_simd._intrinsics(DECODERS[decoder], rows, tokens)

    @njit
    def one_tile(blocks, scales, x_even, x_odd, out, n0, t0):
        tile_dot(blocks, scales, x_even, x_odd, out, n0, t0)

    rng = np.random.default_rng(rows * 10 + tokens + rest)
    N, T, groups = rows * 3, tokens + (rest or 2 * tokens), 5
    blocks = rng.integers(0, 256, (N, groups, 16), dtype=np.uint8)
    scales = rng.integers(100, 150, (N, groups), dtype=np.uint8)
    x = rng.standard_normal((T, groups * 32)).astype(np.float32)
    ref = mxfp4.matmul_ref(x.astype(np.float64), blocks, scales).T  # [N, T]
    out = np.full((N, T), np.nan, np.float32)
    n0, t0 = rows, tokens
    one_tile(blocks, scales, np.ascontiguousarray(x[:, 0::2]), np.ascontiguousarray(x[:, 1::2]), out, n0, t0)
    tile = (slice(n0, n0 + rows), slice(t0, t0 + (rest or tokens)))
    np.testing.assert_allclose(out[tile], ref[tile], rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    out[tile] = np.nan
    assert np.isnan(out).all()  # nothing outside the tile was written


def test_the_cpu_decoders_are_used_where_numba_compiles_for_them(monkeypatch):
    x86 = platform.machine() in ("x86_64", "AMD64")
    assert mxfp4_simd._compiles_for("neon") == (platform.machine() in ("aarch64", "arm64"))
    expected = (mxfp4_simd._decode_by_permute if mxfp4_simd._compiles_for("avx512f") else
                mxfp4_simd._decode_by_shuffle if mxfp4_simd._compiles_for("ssse3") else
                mxfp4_simd._decode_by_tbl if mxfp4_simd._compiles_for("neon") else
                mxfp4_simd._decode_by_arithmetic)
    assert mxfp4_simd.DECODER is expected
    config = mxfp4_simd.config
    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    assert mxfp4_simd._compiles_for("ssse3") == x86  # the host's features: every x86-64 CPU in use has SSSE3
    monkeypatch.setattr(config, "CPU_NAME", "generic")  # NUMBA_CPU_NAME=generic: baseline x86-64, no SSSE3
    assert not mxfp4_simd._compiles_for("ssse3")
    monkeypatch.setattr(config, "CPU_FEATURES", "+sse2,+ssse3")
    assert mxfp4_simd._compiles_for("ssse3") == x86


@pytest.mark.parametrize("decoder, triple, features, instruction", [
    ("permute", "x86_64-unknown-linux-gnu", "+avx512f", "vperm[ds]"),  # vpermd where the result is stored
    ("shuffle", "x86_64-unknown-linux-gnu", "+ssse3", "pshufb"),
    ("tbl", "aarch64-unknown-linux-gnu", "+neon", "tbl"),
    ("tbl", "arm64-apple-darwin", "+neon", "tbl"),
    ("arithmetic", "aarch64-unknown-linux-gnu", "+neon", "ushl"),
])
def test_each_decoder_compiles_for_its_cpu(decoder, triple, features, instruction):
    """Machine code for every decoder's CPU, whatever CPU runs the tests (NEON's tbl runs only on an
    ARM CPU, real or emulated, as in tests/test_aarch64.py; the tests above run it there): a block's
    bytes and scale -> its 32 weights."""
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    module = ir.Module(name="decode")
    module.triple = triple
    signature = ir.FunctionType(ir.VoidType(), [mxfp4_simd._BYTES.as_pointer(), mxfp4_simd._F32,
                                                mxfp4_simd._FLOATS.as_pointer()])
    function = ir.Function(module, signature, name="decode")
    packed, scale, out = function.args
    builder = ir.IRBuilder(function.append_basic_block())
    low, high = getattr(mxfp4_simd, f"_decode_by_{decoder}")(builder, builder.load(packed), scale)
    builder.store(low, out)
    builder.store(high, builder.gep(out, [ir.Constant(ir.IntType(64), 1)]))
    builder.ret_void()
    machine = llvm.Target.from_triple(triple).create_target_machine(features=features, opt=2)
    assembly = machine.emit_assembly(llvm.parse_assembly(str(module)))
    assert re.search(rf"\b{instruction}\b", assembly), assembly


def test_wrong_array_types_fail_to_compile():
    @njit
    def call(blocks, scales, x):
        return mxfp4_simd.row_dot(blocks, scales, x, x)

    blocks, scales = np.zeros((2, 16), np.uint8), np.zeros(2, np.uint8)
    with pytest.raises(TypingError, match="argument 2 must be a C-contiguous 1-d float32 array"):
        call(blocks, scales, np.zeros(64, np.float64))
    with pytest.raises(TypingError, match="argument 2 must be a C-contiguous"):
        call(blocks, scales, np.zeros(64, np.float32)[::2])


def test_the_cached_kernels_know_this_version_of_the_intrinsics():
    """mxfp4.py's kernels inline these intrinsics, but Numba's cache of them is keyed on mxfp4.py's text:
    a change here must change mxfp4.py too (its MXFP4_SIMD_SHA256), or a cache from before it is used."""
    sha = hashlib.sha256(Path(mxfp4_simd.__file__).read_bytes()).hexdigest()
    assert mxfp4.MXFP4_SIMD_SHA256 == sha, f"set MXFP4_SIMD_SHA256 in kernels/mxfp4.py to {sha!r}"
