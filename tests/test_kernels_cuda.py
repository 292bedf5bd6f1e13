"""The CUDA kernels without a GPU: every kernel compiled to PTX for sm_90, and the simulator tests.

PTX: numba-cuda compiles through NVRTC, which needs no GPU (`pip install -e ".[cudasim]"` installs
numba-cuda with its NVRTC wheel). Simulator: tests/cuda_sim runs in a subprocess with
NUMBA_ENABLE_CUDASIM=1, since the simulator is chosen when numba is first imported; its failures
fail `test_simulator` here, with the subprocess's report in the message.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

C1, C2, C3, C4 = "[::1]", "[:, ::1]", "[:, :, ::1]", "[:, :, :, ::1]"
F32, I32, I64 = "float32", "int32", "int64"

# kernel -> its signature with the dtypes the CUDA backend passes
SIGNATURES = {
    "mxfp4_cuda._gemv_kernel": (f"{F32}{C2}", I64, f"{I32}{C1}", f"uint64{C3}", f"uint8{C3}", f"{F32}{C2}", F32, F32,
                                I64, "boolean", f"{F32}{C2}", f"{F32}{C2}", f"{F32}{C2}"),
    "mxfp4_cuda._grouped_matmul_kernel": (f"{F32}{C2}", I64, f"{I32}{C1}", f"{I32}{C1}", f"uint32{C4}", f"uint8{C3}",
                                          f"{F32}{C2}", f"{F32}{C2}"),
    "mxfp4_cuda._dequantize_kernel": (f"uint64{C4}", f"uint8{C3}", f"{I32}{C1}", f"{F32}{C3}"),
    "mxfp4_cuda._dequantize_16_kernel": (f"uint64{C4}", f"uint8{C3}", f"{I32}{C1}", f"{I32}{C1}", "boolean",
                                         f"uint64{C3}"),
    "mxfp4_cuda._largest_scales_kernel": (f"uint8{C2}", f"{I32}{C1}", f"{I32}{C1}"),
    "fp16x2_cuda._split_rows_kernel": (f"{F32}{C2}", f"{I32}{C1}", f"float16{C2}", f"{I32}{C1}"),
    "fp16x2_cuda._sum_rows_kernel": (f"{F32}{C2}", f"{I32}{C1}", f"{I32}{C1}", f"{I32}{C1}", f"{I32}{C1}",
                                     f"{F32}{C2}", f"{F32}{C2}"),
    "bf16_cuda._gemv_kernel": (f"{F32}{C2}", f"uint64{C2}", f"{F32}{C1}", f"{F32}{C2}", "boolean", f"{F32}{C1}", F32,
                               "boolean", f"{F32}{C2}", I64, f"{F32}{C2}"),
    "bf16_cuda._widen_rows_kernel": (f"uint16{C2}", f"{I64}{C1}", f"{F32}{C2}"),
    "bf16x3_cuda._split_rows_kernel": (f"{F32}{C2}", f"{I32}{C1}", f"uint16{C2}"),
    "bf16x3_cuda._sum_rows_kernel": (f"{F32}{C2}", f"{I32}{C1}", f"{I32}{C1}", f"{F32}{C2}", f"{F32}{C2}", "boolean",
                                     f"{F32}{C2}"),
    "attention_cuda._partial_kernel": (f"{F32}{C3}", f"{F32}{C1}", f"{F32}{C1}", f"{I64}{C1}", f"{I64}{C1}", I64,
                                       F32, I64, I64, f"{F32}{C3}", f"{F32}{C3}", f"{F32}{C4}"),
    "attention_cuda._combine_kernel": (f"{F32}{C3}", f"{F32}{C3}", f"{F32}{C4}", f"{F32}{C1}", f"{F32}{C3}"),
    "norm_rope_cuda._rmsnorm_kernel": (f"{F32}{C2}", f"{F32}{C1}", F32, f"{F32}{C2}"),
    "norm_rope_cuda._rope_tables_kernel": (f"{F32}{C1}", F32, f"{I64}{C1}", f"{F32}{C2}", f"{F32}{C2}"),
    "norm_rope_cuda._rope_kernel": (f"{F32}{C3}", f"{F32}{C2}", f"{F32}{C2}", f"{F32}{C3}"),
    "kv_cache_cuda._write_one_kernel": (f"{F32}{C3}", f"{F32}{C3}", f"{I64}{C1}", f"{F32}{C3}", f"{F32}{C3}",
                                        f"{I64}{C1}"),
    "moe_cuda._route_kernel": (f"{F32}{C2}", f"{I32}{C2}", f"{F32}{C2}"),
    "moe_cuda._sort_pairs_kernel": (f"{I32}{C1}", f"{I32}{C1}", f"{I32}{C1}"),
    "moe_cuda._swiglu_kernel": (f"{F32}{C2}", F32, F32, f"{F32}{C2}"),
    "moe_cuda._combine_kernel": (f"{F32}{C2}", f"{F32}{C2}", f"{F32}{C2}", "boolean", f"{F32}{C2}"),
    "sampling_cuda._argmax_kernel": (f"{F32}{C1}", f"{I32}{C1}", "boolean", f"{F32}{C1}", f"{I32}{C1}"),
    "sampling_cuda._sample_kernel": (f"{F32}{C1}", f"{I32}{C1}", f"{I32}{C1}", "boolean", f"{I32}{C1}", F32, I64, F32,
                                     F32, F32, f"{I32}{C1}"),
}

# kernel -> the most threads per block its launcher asks for, from its module's constants
BLOCK_THREADS = {
    "mxfp4_cuda._gemv_kernel": lambda m: m.GEMV_LANES * m.GEMV_WARPS,
    "mxfp4_cuda._grouped_matmul_kernel": lambda m: m.TILE_THREADS[0] * m.TILE_THREADS[1],
    "mxfp4_cuda._dequantize_kernel": lambda m: m.DEQUANT_THREADS,
    "mxfp4_cuda._dequantize_16_kernel": lambda m: m.DEQUANT_THREADS,
    "mxfp4_cuda._largest_scales_kernel": lambda m: m.DEQUANT_THREADS,
    "fp16x2_cuda._split_rows_kernel": lambda m: m.SPLIT_THREADS,
    "fp16x2_cuda._sum_rows_kernel": lambda m: m.THREADS,
    "bf16_cuda._gemv_kernel": lambda m: m.GEMV_LANES * m.GEMV_WARPS,
    "bf16_cuda._widen_rows_kernel": lambda m: m.WIDEN_THREADS,
    "bf16x3_cuda._split_rows_kernel": lambda m: m.THREADS,
    "bf16x3_cuda._sum_rows_kernel": lambda m: m.THREADS,
    "attention_cuda._partial_kernel": lambda m: m.THREADS,
    "attention_cuda._combine_kernel": lambda m: m.MAX_DH,  # power_of_two(head dim)
    "norm_rope_cuda._rmsnorm_kernel": lambda m: m.THREADS,
    "norm_rope_cuda._rope_tables_kernel": lambda m: m.THREADS,
    "norm_rope_cuda._rope_kernel": lambda m: m.THREADS,
    "kv_cache_cuda._write_one_kernel": lambda m: m.THREADS,
    "moe_cuda._route_kernel": lambda m: m.ROUTE_THREADS,
    "moe_cuda._sort_pairs_kernel": lambda m: m.SORT_THREADS,
    "moe_cuda._swiglu_kernel": lambda m: m.THREADS,
    "moe_cuda._combine_kernel": lambda m: m.THREADS,
    "sampling_cuda._argmax_kernel": lambda m: m.THREADS,
    "sampling_cuda._sample_kernel": lambda m: m.THREADS,
}
# kernels allowed a stack frame: libdevice's sinf / cosf reduce large arguments (Payne-Hanek) in a
# local array; the tables are made once a step
STACK_ALLOWED = {"norm_rope_cuda._rope_tables_kernel"}
# kernels allowed float64 arithmetic (a GPU runs it at 1/64 of float32's rate on most cards, and a
# stray Python float or int in a float32 expression makes it): these run once a step, on few values
FLOAT64_ALLOWED = {"norm_rope_cuda._rope_tables_kernel", "sampling_cuda._sample_kernel"}
REGISTERS_PER_BLOCK = 65536  # sm_90's register file per SM, the most one block may use
STATIC_SMEM = 48 * 1024  # the most shared memory a kernel may declare statically


def test_every_kernel_has_a_signature():
    found = set()
    for path in (ROOT / "kernels").glob("*_cuda.py"):
        module = importlib.import_module(f"gptoss_np.kernels.{path.stem}")
        found |= {f"{path.stem}.{name}" for name in vars(module) if name.startswith("_") and name.endswith("_kernel")}
    assert found == set(SIGNATURES) == set(BLOCK_THREADS)


NVRTC_WHEELS = {"nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12"}  # what numba-cuda's [cu13] and [cu12] extras install


@pytest.fixture(scope="module")
def compile_ptx():
    """numba.cuda.compile_ptx for sm_90, with device functions compiled for sm_90 too (numba-cuda asks
    the current device for their compute capability, and this machine has none)."""
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install -e '.[cudasim]')")
    import numba.cuda.dispatcher as dispatcher

    from gptoss_np.kernels import common_cuda  # noqa: F401 (with NumPy 2.5, numba-cuda compiles after it)

    class Sm90:
        compute_capability = (9, 0)

    @cuda.jit
    def probe(x):
        x[0] = 1

    try:
        cuda.compile_ptx(probe, "(float32[::1],)", cc=(9, 0))
    except ImportError as e:  # NvrtcSupportError: numba-cuda installed without its [cu12]/[cu13] extra
        if NVRTC_WHEELS & {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}:
            raise  # the library is installed (as CI installs it) yet did not load: a failure, not a skip
        pytest.skip(f"NVRTC is not available to numba-cuda: {e}")
    patch = pytest.MonkeyPatch()
    patch.setattr(dispatcher, "get_current_device", lambda: Sm90())
    yield lambda kernel, signature: cuda.compile_ptx(kernel, signature, cc=(9, 0))[0]
    patch.undo()


def assemble_sm90(ptx: str) -> tuple[bytes, str]:
    """The kernel in `ptx` assembled for sm_90 by the ptxas inside nvJitLink (installed with
    numba-cuda's NVRTC): (the cubin, ptxas's report)."""
    nvjitlink = pytest.importorskip("cuda.bindings.nvjitlink", reason="cuda-bindings has no nvJitLink")
    handle = nvjitlink.create(2, ["-arch=sm_90", "-verbose"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel")
        nvjitlink.complete(handle)
        cubin, log = bytearray(nvjitlink.get_linked_cubin_size(handle)), bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_linked_cubin(handle, cubin)
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    return bytes(cubin), log.decode()


def machine_code_usage(ptx: str) -> dict:
    """Registers per thread, stack, static shared and local memory bytes of the kernel in `ptx` on sm_90."""
    log = assemble_sm90(ptx)[1]
    found = re.search(r"used (\d+) registers, .*?(\d+) stack, (\d+) bytes smem, .*?(\d+) bytes lmem", log)
    assert found, log
    return dict(zip(("registers", "stack", "smem", "lmem"), map(int, found.groups())))


@pytest.mark.parametrize("name", list(SIGNATURES))
def test_kernel_compiles_to_ptx_for_sm90(name, compile_ptx, record_property):
    """The PTX, then the machine code: no float64 arithmetic, no local memory (accumulators kept in
    registers, no spills), and a block of the most threads its launcher asks for fits sm_90's
    registers and static shared memory (the CUDA simulator checks none of these)."""
    module_name, kernel_name = name.split(".")
    module = importlib.import_module(f"gptoss_np.kernels.{module_name}")
    ptx = compile_ptx(getattr(module, kernel_name), "(" + ", ".join(SIGNATURES[name]) + ",)")
    assert ".target sm_90" in ptx and ".entry" in ptx
    float64 = sorted(set(re.findall(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b", ptx[ptx.index(".entry"):])))
    assert not float64 or name in FLOAT64_ALLOWED, float64
    usage = machine_code_usage(ptx)
    record_property("sm90", usage)
    threads = BLOCK_THREADS[name](module)
    assert usage["lmem"] == 0 and (usage["stack"] == 0 or name in STACK_ALLOWED), usage
    assert threads * usage["registers"] <= REGISTERS_PER_BLOCK, (threads, usage)
    assert usage["smem"] <= STATIC_SMEM, usage


def test_kernels_compile_where_numpy_has_no_row_stack(compile_ptx):
    """NumPy 2.5 (the GPU machine's) removed np.row_stack, which numba-cuda 0.30 overloads as it compiles
    its first kernel: importing the kernels gives NumPy the alias back (here a NumPy made to lack it, in
    a fresh Python that has compiled nothing yet)."""
    code = """if True:
        import numpy as np
        if hasattr(np, "row_stack"):
            del np.row_stack
        from numba import cuda
        from gptoss_np.kernels import kv_cache_cuda
        print(".entry" in cuda.compile_ptx(kv_cache_cuda._write_one_kernel, {!r}, cc=(9, 0))[0])
        """.format("(" + ", ".join(SIGNATURES["kv_cache_cuda._write_one_kernel"]) + ",)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.split() == ["True"], run.stderr[-3000:]


def test_simulator(simulator_run):
    """tests/cuda_sim in Numba's CUDA simulator (a subprocess: NUMBA_ENABLE_CUDASIM must be set
    before numba is imported), run in the background while the rest of the suite runs (conftest).
    Every kernel of SIGNATURES must have been launched there."""
    run = simulator_run
    assert run.returncode == 0, f"simulator tests failed:\n{run.stdout[-20000:]}\n{run.stderr[-5000:]}"
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
    not_run = set(SIGNATURES) - run.launched
    assert not not_run, f"kernels that no simulator test launched: {sorted(not_run)}"


def test_sass_report_finds_innermost_loops(bench_script):
    """bench/sass.py's loop finder on a disassembly shaped as nvdisasm prints it: a loop nested in
    another is reported alone, with its instructions by opcode; forward branches are not loops."""
    sass = bench_script("sass")
    text = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IMAD R2, R2, 0x2, RZ ;
.L_x_1:
        /*0020*/                   LDG.E R3, desc[UR4][R4.64] ;
        /*0030*/                   FFMA R5, R3, R3, R5 ;
        /*0040*/              @!P0 BRA `(.L_x_2) ;
        /*0050*/                   IADD3 R6, R6, 0x1, RZ ;
.L_x_2:
        /*0060*/               @P1 BRA `(.L_x_1) ;
        /*0070*/               @P2 BRA `(.L_x_0) ;
        /*0080*/                   EXIT ;
"""
    loops = sass.loops(text)
    assert [(loop["start"], loop["end"]) for loop in loops] == [(0x20, 0x60)]
    assert loops[0]["opcodes"] == {"LDG": 1, "FFMA": 1, "BRA": 2, "IADD3": 1}



def test_sass_loops_on_uniform_predicates(bench_script):
    """sm_90 predicates branches on uniform predicates too (@UP0, @!UP1): such a backward branch closes
    a loop, and such an instruction is one of its instructions."""
    sass = bench_script("sass")
    text = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R3, desc[UR4][R4.64] ;
        /*0020*/              @UP1 FFMA R5, R3, R3, R5 ;
        /*0030*/             @!UP0 BRA `(.L_x_0) ;
        /*0040*/                   EXIT ;
"""
    loops = sass.loops(text)
    assert [(loop["start"], loop["end"]) for loop in loops] == [(0x10, 0x30)]
    assert loops[0]["opcodes"] == {"LDG": 1, "FFMA": 1, "BRA": 1}


def test_sass_command_line(bench_script, monkeypatch, tmp_path):
    """--all reports every kernel of SIGNATURES (without dumps); a kernel named alone, with its --dump."""
    sass = bench_script("sass")
    reported = []
    monkeypatch.setattr(sass, "report", lambda name, dump=None: reported.append((name, dump)))
    sass.main(["--all", "--dump", str(tmp_path / "x.sass")])
    assert reported == [(name, None) for name in sass.SIGNATURES]
    reported.clear()
    sass.main(["bf16_cuda._gemv_kernel", "--dump", str(tmp_path / "x.sass")])
    assert reported == [("bf16_cuda._gemv_kernel", tmp_path / "x.sass")]


def test_sass_report_of_a_kernel(bench_script, monkeypatch, tmp_path, capsys):
    """A kernel's line (threads, registers, memory) and its loops' lines, each with its instructions by
    opcode; the disassembly stood in for (no nvdisasm here)."""
    sass = bench_script("sass")
    text = """
.L_x_0:
        /*0010*/                   LDG.E R3, desc[UR4][R4.64] ;
        /*0020*/                   FFMA R5, R3, R3, R5 ;
        /*0030*/                   FFMA R6, R3, R3, R6 ;
        /*0040*/               @P0 BRA `(.L_x_0) ;
"""
    monkeypatch.setattr(sass, "compile_ptx", lambda name: "ptx")
    monkeypatch.setattr(sass, "machine_code_usage", lambda ptx: dict(registers=40, smem=0, stack=0, lmem=0))
    monkeypatch.setattr(sass, "sass", lambda ptx, path: text)
    sass.report("bf16_cuda._gemv_kernel", tmp_path / "dump.sass")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bf16_cuda._gemv_kernel: ") and "40 registers" in out[0]
    assert out[1:] == ["  loop 0x0010-0x0040: 4 instructions (FFMA 2, LDG 1, BRA 1)"]
    assert (tmp_path / "dump.sass").read_text() == text
