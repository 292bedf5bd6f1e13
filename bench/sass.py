"""The sm_90 machine code of a CUDA kernel, without a GPU: registers, and each loop's instructions.

    pip install nvidia-cuda-nvdisasm      # once: the disassembler (numba-cuda[cu13] brings nvJitLink)
    python3 bench/sass.py mxfp4_cuda._gemv_kernel [--dump out.sass]
    python3 bench/sass.py --all           # every kernel's registers and innermost loops

The kernel is compiled as tests/test_kernels_cuda.py compiles it (its signature there), assembled for
sm_90 by nvJitLink, and disassembled by nvdisasm. A loop is a backward branch; for each innermost
loop the table gives its instructions by opcode. What it predicts: an SM issues about 4 warp
instructions a cycle and an H100 streams about 11 bytes a cycle an SM from memory (3 TB/s over 132
SMs at 1.98 GHz), so a streaming kernel's loop must cost fewer than ~11 lane instructions a byte it
reads, or it is bound by instruction issue rather than by memory.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_kernels_cuda import BLOCK_THREADS, SIGNATURES, assemble_sm90, machine_code_usage  # noqa: E402

LINE = re.compile(r"/\*([0-9a-f]+)\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
LABEL = re.compile(r"^(\.L_x_\d+):")


def nvdisasm() -> str:
    found = list(Path(sysconfig.get_paths()["purelib"]).glob("nvidia/cu*/bin/nvdisasm"))
    if not found:
        sys.exit("nvdisasm not found: pip install nvidia-cuda-nvdisasm")
    return str(found[0])


def compile_ptx(name: str) -> str:
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher

    class Sm90:
        compute_capability = (9, 0)

    dispatcher.get_current_device = lambda: Sm90()  # device functions for sm_90 too (no GPU here)
    module_name, kernel_name = name.split(".")
    kernel = getattr(importlib.import_module(f"gptoss_np.kernels.{module_name}"), kernel_name)
    return cuda.compile_ptx(kernel, "(" + ", ".join(SIGNATURES[name]) + ",)", cc=(9, 0))[0]


def sass(ptx: str, path: Path) -> str:
    path.write_bytes(assemble_sm90(ptx)[0])
    return subprocess.run([nvdisasm(), "-c", str(path)], capture_output=True, text=True, check=True).stdout


def loops(text: str) -> list[dict]:
    """Innermost loops of the disassembly: [{start, end, opcodes: Counter}] in address order."""
    labels, code = {}, []  # label -> address; (address, opcode, operands)
    pending = []
    for line in text.splitlines():
        label = LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        m = LINE.search(line)
        if m:
            address = int(m.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            code.append((address, m.group(3), m.group(4)))
    spans = []
    for address, opcode, operands in code:
        target = re.search(r"`\((\.L_x_\d+)\)", operands)
        if opcode.startswith("BRA") and target and labels.get(target.group(1), address + 1) <= address:
            spans.append((labels[target.group(1)], address))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return [{"start": start, "end": end,
             "opcodes": Counter(op.split(".")[0] for a, op, _ in code if start <= a <= end)}
            for start, end in sorted(inner)]


def report(name: str, dump: Path | None = None) -> None:
    ptx = compile_ptx(name)
    usage = machine_code_usage(ptx)
    module = importlib.import_module(f"gptoss_np.kernels.{name.split('.')[0]}")
    path = Path(f"/tmp/{name}.cubin")
    text = sass(ptx, path)
    if dump:
        dump.write_text(text)
    print(f"{name}: {BLOCK_THREADS[name](module)} threads a block, {usage['registers']} registers, "
          f"{usage['smem']} B shared, {usage['stack']} B stack, {usage['lmem']} B local")
    for loop in loops(text):
        ops = loop["opcodes"]
        top = ", ".join(f"{op} {n}" for op, n in ops.most_common(12))
        print(f"  loop {loop['start']:#06x}-{loop['end']:#06x}: {sum(ops.values())} instructions ({top})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kernel", nargs="?", choices=list(SIGNATURES), help="module._kernel")
    parser.add_argument("--all", action="store_true", help="every kernel")
    parser.add_argument("--dump", type=Path, help="write the whole disassembly here")
    args = parser.parse_args(argv)
    if not args.all and not args.kernel:
        parser.error("name a kernel or pass --all")
    for name in SIGNATURES if args.all else [args.kernel]:
        report(name, None if args.all else args.dump)


if __name__ == "__main__":
    main()
