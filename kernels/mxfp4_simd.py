"""MXFP4 decoding written in LLVM vector IR, as Numba intrinsics for the CPU kernels in mxfp4.py.

Numba compiles integer arithmetic on 64-bit lanes, so a nibble decode written in Python runs at about
one element a cycle (bench/NOTES.md). These intrinsics spell the decode with explicit vector types:
  row_dot(blocks, scales, x_even, x_odd) -> float32   one row of W times x
        blocks uint8 [K/32, 16] and scales uint8 [K/32] (one row, as on disk), x_even / x_odd float32
        [K/2]: x's even and odd elements, so a byte's low and high nibbles meet contiguous x. It keeps
        ROW_SUMS independent sums and asks for the blocks PREFETCH_BYTES ahead of the one it decodes;
  dequantize_row(blocks, scales, out)                 the row as float32 out [K];
  tile_dot(blocks, scales, x_even, x_odd, out, n0, t0)  a tile of W [N, K/32, 16] times x [T, K]:
        out [N, T] at rows n0 .. n0 + TILE_ROWS, tokens t0 .. t0 + TILE_TOKENS (fewer at x's end).
        Each block of a row is decoded once for all the tile's tokens, the sums stay in registers
        (TILE_ROWS x TILE_TOKENS vectors of 16), and the blocks PREFETCH_BYTES ahead are asked for:
        prefill's matmul for a few dozen tokens, where BLAS on dequantized tiles is slow.
A 32-value block is 16 bytes: their low nibbles become 16 lanes, their high nibbles 16 more. A nibble
becomes twice its FP4 value (0, +-1, 2, 3, 4, 6, 8, 12) times the block's scale 2**(s - 127) and the
1/2 (from a 256-entry table), by one of four decoders:
  _decode_by_permute     AVX-512: the 16 values times the scale in one vector, each lane's value picked
                         by the float permute (vpermps): one multiply a block, one permute a half;
  _decode_by_shuffle     a 16-entry byte table looked up by the x86 byte shuffle (SSSE3 pshufb), one
                         instruction for 16 nibbles, then converted to float and scaled;
  _decode_by_tbl         the same by AArch64's table lookup (NEON tbl); run in CI by an emulated
                         AArch64 CPU (tests/test_aarch64.py);
  _decode_by_arithmetic  portable IR: the magnitudes are the 4-bit fields of one 32-bit constant,
                         shifted by 4 * (nibble & 7); the sign bit is OR'ed into the float.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba.core import cgutils, config, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_BYTES = ir.VectorType(_I8, 16)  # one block's 16 bytes, or its 16 nibbles of one half
_INTS = ir.VectorType(_I32, 16)
_FLOATS = ir.VectorType(_F32, 16)
_FAST = ("fast",)  # fast-math flags: sums may be reassociated (vector lanes, then one horizontal sum)

_TWICE_FP4 = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12]  # by nibble
_TWICE_FP4_FIELDS = 0xC8643210  # magnitude m's value in bits 4m .. 4m+3
# 2**(s - 128) for every e8m0 byte s: the block scale times 1/2 (the decoders' tables hold twice FP4)
HALF_SCALE = np.ldexp(np.float32(1.0), np.arange(256) - 128).astype(np.float32)


def _splat(value, vector_type):
    return ir.Constant(vector_type, [value] * vector_type.count)


# The decoders: (builder, <16 x i8> a block's bytes, float scale) -> (<16 x float> the low nibbles'
# weights, the high nibbles'), each twice its FP4 value times scale.

def _decode_by_permute(builder, packed, scale):
    """The 16 values times the scale in one vector, each lane's picked by the AVX-512 float permute
    (vpermps), which reads only the low 4 bits of each 32-bit index."""
    vpermps = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_FLOATS, [_FLOATS, _INTS]), "llvm.x86.avx512.permvar.sf.512")
    table = builder.fmul(ir.Constant(_FLOATS, [float(v) for v in _TWICE_FP4]), _splat_value(builder, scale),
                         flags=_FAST)
    indices = builder.zext(packed, _INTS)  # low nibble in bits 0-3, high in 4-7
    return (builder.call(vpermps, [table, indices]),
            builder.call(vpermps, [table, builder.lshr(indices, _splat(4, _INTS))]))


def _byte_table_decoder(lookup: str):
    """A decoder that looks the nibbles up in a 16-byte table by the instruction behind the LLVM
    intrinsic `lookup` (table, indices) -> bytes, then converts and scales them."""

    def decode(builder, packed, scale):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_BYTES, [_BYTES, _BYTES]), lookup)
        table, scale = ir.Constant(_BYTES, _TWICE_FP4), _splat_value(builder, scale)
        return tuple(builder.fmul(builder.sitofp(builder.call(function, [table, nibbles]), _FLOATS), scale,
                                  flags=_FAST) for nibbles in _nibbles(builder, packed))

    return decode


_decode_by_shuffle = _byte_table_decoder("llvm.x86.ssse3.pshuf.b.128")  # x86's byte shuffle, SSSE3 pshufb
_decode_by_tbl = _byte_table_decoder("llvm.aarch64.neon.tbl1.v16i8")  # AArch64's table lookup, NEON tbl


def _decode_by_arithmetic(builder, packed, scale):
    """Portable IR: a magnitude is a 4-bit field of one 32-bit constant; the sign bit is OR'ed in."""
    decoded, scale = [], _splat_value(builder, scale)
    for nibbles in _nibbles(builder, packed):
        n = builder.zext(nibbles, _INTS)
        shift = builder.shl(builder.and_(n, _splat(7, _INTS)), _splat(2, _INTS))
        magnitude = builder.and_(builder.lshr(_splat(_TWICE_FP4_FIELDS, _INTS), shift), _splat(15, _INTS))
        sign = builder.shl(builder.and_(n, _splat(8, _INTS)), _splat(28, _INTS))
        value = builder.bitcast(builder.uitofp(magnitude, _FLOATS), _INTS)
        decoded.append(builder.fmul(builder.bitcast(builder.or_(value, sign), _FLOATS), scale, flags=_FAST))
    return tuple(decoded)


def _nibbles(builder, packed):
    """<16 x i8> bytes -> (their low nibbles, their high nibbles)."""
    return builder.and_(packed, _splat(15, _BYTES)), builder.lshr(packed, _splat(4, _BYTES))


def _splat_value(builder, scalar):
    """<16 x float> of one float value."""
    one = builder.insert_element(ir.Constant(_FLOATS, ir.Undefined), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(_INTS, [0] * 16))


def _compiles_for(feature: str) -> bool:
    """Whether Numba generates code for a CPU with `feature`: "ssse3" or "avx512f" (x86), "neon" (every
    AArch64 CPU has it). A NUMBA_CPU_NAME without a NUMBA_CPU_FEATURES list that names an x86 feature
    counts as without it."""
    triple = llvm.get_process_triple()
    if feature == "neon":
        return triple.startswith(("aarch64", "arm64"))
    if not triple.startswith(("x86_64", "i686")):
        return False
    if config.CPU_NAME or config.CPU_FEATURES:
        return f"+{feature}" in (config.CPU_FEATURES or "")
    return bool(llvm.get_host_cpu_features().get(feature))


def _check_args(name, args, expected):
    for i, (arg, (dtype, ndim)) in enumerate(zip(args, expected)):
        if not (isinstance(arg, types.Array) and arg.dtype == dtype and arg.ndim == ndim and arg.layout == "C"):
            raise TypingError(f"{name}: argument {i} must be a C-contiguous {ndim}-d {dtype} array, not {arg}")


class _Packed:
    """Code generation over MXFP4 arguments (blocks [..., G, 16], scales [..., G] first): pointers into
    the Numba arrays, vector loads, and the decode of one block by its index among all blocks."""

    def __init__(self, context, builder, signature, args, decode):
        self.builder, self.decode = builder, decode
        arrays = [context.make_array(t)(context, builder, a)
                  for t, a in zip(signature.args, args) if isinstance(t, types.Array)]
        self.data = [a.data for a in arrays]
        self.shapes = [cgutils.unpack_tuple(builder, a.shape) for a in arrays]
        self.blocks_per_row = self.shapes[1][-1]  # G = K/32
        table = context.insert_unique_const(builder.module, "gptoss_np_mxfp4_half_scale",
                                            ir.Constant(ir.ArrayType(_F32, 256), HALF_SCALE.tolist()))
        self.half_scale = builder.bitcast(table, _F32.as_pointer())

    def load(self, pointer, offset, vector_type):
        address = self.builder.gep(pointer, [offset])
        return self.builder.load(self.builder.bitcast(address, vector_type.as_pointer()), align=1)

    def block(self, index):
        """Block `index` (row * G + g) -> <16 x float> (low nibbles' weights, high nibbles')."""
        b = self.builder
        packed = self.load(self.data[0], b.mul(index, ir.Constant(index.type, 16)), _BYTES)
        s = b.zext(b.load(b.gep(self.data[1], [index])), index.type)
        return self.decode(b, packed, b.load(b.gep(self.half_scale, [s])))

    def prefetch(self, index):
        """A hint to load the cache line PREFETCH_BYTES past block `index` (for reading, into every cache
        level); never faults, so it may point past the blocks' end."""
        b, pointer = self.builder, _I8.as_pointer()
        function = b.module.declare_intrinsic(
            "llvm.prefetch", [pointer], ir.FunctionType(ir.VoidType(), [pointer, _I32, _I32, _I32]))
        offset = b.add(b.mul(index, ir.Constant(index.type, 16)), ir.Constant(index.type, PREFETCH_BYTES))
        address = b.gep(b.bitcast(self.data[0], pointer), [offset])
        b.call(function, [address, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _horizontal_sum(builder, v):
    n = v.type.count
    while n > 1:
        n //= 2
        low = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        high = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n, 2 * n))))
        v = builder.fadd(low, high, flags=_FAST)
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _intrinsics(decode, rows: int, tokens: int):
    """(row_dot, dequantize_row, tile_dot) built on one decoder, tile_dot for rows x tokens tiles."""

    @intrinsic
    def row_dot(typingctx, blocks, scales, x_even, x_odd):
        args = (blocks, scales, x_even, x_odd)
        _check_args("row_dot", args, [(types.uint8, 2), (types.uint8, 1), (types.float32, 1), (types.float32, 1)])

        def codegen(context, builder, signature, llvm_args):
            b = builder
            row = _Packed(context, builder, signature, llvm_args, decode)
            G = row.blocks_per_row
            const = lambda v: ir.Constant(G.type, v)  # noqa: E731
            sums = [cgutils.alloca_once_value(b, ir.Constant(_FLOATS, None)) for _ in range(ROW_SUMS)]  # 16 lanes

            def add_block(g, acc):  # acc += the block's 32 weights times x's, by lane
                low, high = row.block(g)
                g16 = b.mul(g, const(16))
                a = b.fadd(b.load(acc), b.fmul(low, row.load(row.data[2], g16, _FLOATS), flags=_FAST), flags=_FAST)
                b.store(b.fadd(a, b.fmul(high, row.load(row.data[3], g16, _FLOATS), flags=_FAST), flags=_FAST), acc)

            rounds = b.udiv(G, const(ROW_SUMS))
            with cgutils.for_range(b, rounds) as loop:  # block ROW_SUMS * i + j goes to sum j
                row.prefetch(b.mul(loop.index, const(ROW_SUMS)))  # a round's blocks are one cache line
                for j, acc in enumerate(sums):
                    add_block(b.add(b.mul(loop.index, const(ROW_SUMS)), const(j)), acc)
            with cgutils.for_range_slice(b, b.mul(rounds, const(ROW_SUMS)), G, const(1)) as (g, _):
                add_block(g, sums[0])
            total = b.load(sums[0])
            for acc in sums[1:]:
                total = b.fadd(total, b.load(acc), flags=_FAST)
            return _horizontal_sum(b, total)

        return types.float32(*args), codegen

    @intrinsic
    def dequantize_row(typingctx, blocks, scales, out):
        args = (blocks, scales, out)
        _check_args("dequantize_row", args, [(types.uint8, 2), (types.uint8, 1), (types.float32, 1)])

        def codegen(context, builder, signature, llvm_args):
            row = _Packed(context, builder, signature, llvm_args, decode)
            interleave = ir.Constant(ir.VectorType(_I32, 32), [i // 2 + 16 * (i % 2) for i in range(32)])
            with cgutils.for_range(builder, row.blocks_per_row) as loop:
                g = loop.index
                low, high = row.block(g)
                values = builder.shuffle_vector(low, high, interleave)  # element 2j low nibble j, 2j+1 high
                address = builder.gep(row.data[2], [builder.mul(g, ir.Constant(g.type, 32))])
                builder.store(values, builder.bitcast(address, values.type.as_pointer()), align=1)
            return context.get_dummy_value()

        return types.none(*args), codegen

    @intrinsic
    def tile_dot(typingctx, blocks, scales, x_even, x_odd, out, n0, t0):
        args = (blocks, scales, x_even, x_odd, out)
        _check_args("tile_dot", args, [(types.uint8, 3), (types.uint8, 2), (types.float32, 2), (types.float32, 2),
                                       (types.float32, 2)])
        if not (isinstance(n0, types.Integer) and isinstance(t0, types.Integer)):
            raise TypingError(f"tile_dot: n0 and t0 must be integers, not {n0}, {t0}")

        def codegen(context, builder, signature, llvm_args):
            b = builder
            m = _Packed(context, builder, signature, llvm_args, decode)
            n0, t0 = (context.cast(b, v, t, types.intp) for v, t in zip(llvm_args[5:], signature.args[5:]))
            half_k, width = m.shapes[2][1], m.shapes[4][1]  # x_even [T, K/2], out [N, T]
            G = m.blocks_per_row
            const = lambda v: ir.Constant(n0.type, v)  # noqa: E731

            def tile(count):  # the code for a tile of `count` tokens
                acc = [[cgutils.alloca_once_value(b, ir.Constant(_FLOATS, None)) for _ in range(count)]
                       for _ in range(rows)]
                with cgutils.for_range(b, G) as loop:
                    g = loop.index
                    weights = []  # per row: (low, high)
                    for r in range(rows):
                        index = b.add(b.mul(b.add(n0, const(r)), G), g)
                        m.prefetch(index)
                        weights.append(m.block(index))
                    for t in range(count):
                        offset = b.add(b.mul(b.add(t0, const(t)), half_k), b.mul(g, const(16)))
                        x_lo, x_hi = m.load(m.data[2], offset, _FLOATS), m.load(m.data[3], offset, _FLOATS)
                        for r, (w_lo, w_hi) in enumerate(weights):
                            a = b.fadd(b.load(acc[r][t]), b.fmul(w_lo, x_lo, flags=_FAST), flags=_FAST)
                            b.store(b.fadd(a, b.fmul(w_hi, x_hi, flags=_FAST), flags=_FAST), acc[r][t])
                for r in range(rows):
                    for t in range(count):
                        index = b.add(b.mul(b.add(n0, const(r)), width), b.add(t0, const(t)))
                        b.store(_horizontal_sum(b, b.load(acc[r][t])), b.gep(m.data[4], [index]))

            # the last tile of x's rows may hold fewer tokens: code for each count, chosen by a switch
            whole, done = b.append_basic_block("whole_tile"), b.append_basic_block("tile_done")
            switch = b.switch(b.sub(width, t0), whole)
            for count in range(1, tokens):
                case = b.append_basic_block(f"tile_of_{count}")
                switch.add_case(const(count), case)
                b.position_at_end(case)
                tile(count)
                b.branch(done)
            b.position_at_end(whole)
            tile(tokens)
            b.branch(done)
            b.position_at_end(done)
            return context.get_dummy_value()

        return types.none(*args, n0, t0), codegen

    return row_dot, dequantize_row, tile_dot


# independent sums a row_dot keeps: with one, each block's FMA waited for the previous block's, and on
# an Intel Xeon the GEMV ran 6.6 GB/s of cold weights instead of 8.2 with four (bench/NOTES.md)
ROW_SUMS = 4
# how far ahead of the blocks it decodes a row_dot asks for the cache lines, once a round of ROW_SUMS
# blocks (one 64-byte line), and a tile_dot each block of a row: the hardware prefetcher alone left the
# decode GEMV, and tiles of a few tokens, waiting for memory (bench/NOTES.md)
PREFETCH_BYTES = 2048
DECODER = (_decode_by_permute if _compiles_for("avx512f") else _decode_by_shuffle if _compiles_for("ssse3") else
           _decode_by_tbl if _compiles_for("neon") else _decode_by_arithmetic)
# with AVX-512's 32 vector registers, a 4 x 4 tile (16 sums, 8 decoded vectors) ran best: each x vector
# loaded serves 4 rows; with 16 registers 1 x 4 did (bench/NOTES.md)
TILE_ROWS, TILE_TOKENS = (4, 4) if _compiles_for("avx512f") else (1, 4)
row_dot, dequantize_row, tile_dot = _intrinsics(DECODER, TILE_ROWS, TILE_TOKENS)
