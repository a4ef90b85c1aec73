#!/usr/bin/env python
"""Compile the fused solver-step kernel (``kernels/fused_step.py``) for a GPU target on a machine
without one, for the shipped MNIST models' shapes, and report what a GPU run would meet first:
the compile time, registers per thread and spills (Triton's bundled ``ptxas -v``), the shared
memory the launch needs and the size of the PTX. No GPU time.

    python bench/fused_step_resources.py [--arch 90] [--bits 1 4] [--warps 4 8]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
import time
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qgen_infer.kernels import fused_step

# MNIST MLP: latent 784 -> 500 -> 500 -> 784 image -> 500 -> 500 -> 25 measurements
WIDTHS = dict(D=784, H1=500, H2=500, P=784, S1=500, S2=500, M=25)


def compile_step(bits: int, dot: str, warps: int, arch: int, rows: int):
    fn = fused_step.mlp_step_kernel
    consts = dict(BITS=bits, ACT1=2, ACT2=2, ACT3=3, HA1=False, HA2=False, HA3=False,
                  HB1=True, HB2=True, HB3=True, SACT1=2, SACT2=2, SACT3=0, SB1=True, SB2=True,
                  SB3=True, SPARSE=True, PROJECT=True, BLOCK_M=rows,
                  BLOCK_N=fused_step.BLOCK_N, BLOCK_K=fused_step.BLOCK_K,
                  BLOCK_D=triton.next_power_of_2(WIDTHS["D"]), BLOCK_R=32,
                  DOT_DTYPE=tl.float16 if dot == "fp16" else tl.float32,
                  DOT_PRECISION="tf32" if dot == "fp16" else "ieee", USE_DOT=rows >= 16)
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr") or re.fullmatch(r"(w|sc|ze|al|be|v|b)\d", name):
            dense = re.fullmatch(r"v\d", name) and dot == "fp16"
            signature[name] = "*i32" if re.fullmatch(r"w\d", name) else (
                "*fp16" if dense else "*fp32")
        elif name in ("step_size", "eps") or re.fullmatch(r"(sl|t)\d", name):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    t0 = time.perf_counter()
    out = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    return out, time.perf_counter() - t0


def ptxas_report(ptx: str, arch: int) -> str:
    """``registers, spill stores/loads`` from ``ptxas -v`` on the kernel's PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    suffix = "a" if arch == 90 else ""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.ptx"
        path.write_text(ptx)
        res = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", str(path), "-o",
                              str(Path(d) / "k.cubin")], capture_output=True, text=True)
    text = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (f"{regs[1] if regs else '?'} | "
            f"{f'{spill[1]} / {spill[2]}' if spill else '?'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--bits", type=int, nargs="+", default=[1, 4])
    p.add_argument("--dots", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    p.add_argument("--warps", type=int, nargs="+", default=[fused_step.NUM_WARPS])
    p.add_argument("--rows", type=int, nargs="+", default=[fused_step.BLOCK_M],
                   help="batch rows per program (< 16: FMA products)")
    args = p.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, mlp_step_kernel at the MNIST widths "
          f"{WIDTHS}\n")
    print("| rows | bits | dot operands | warps | compile s (this CPU) | registers | "
          "spill B st / ld | shared memory (B) | PTX lines |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for rows in args.rows:
        for bits in args.bits:
            for dot in args.dots:
                for warps in args.warps:
                    k, secs = compile_step(bits, dot, warps, args.arch, rows)
                    ptx = k.asm["ptx"]
                    print(f"| {rows} | {bits} | {dot} | {warps} | {secs:.1f} | "
                          f"{ptxas_report(ptx, args.arch)} | {k.metadata.shared} | "
                          f"{ptx.count(chr(10))} |", flush=True)


if __name__ == "__main__":
    main()
