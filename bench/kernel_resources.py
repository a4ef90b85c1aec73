#!/usr/bin/env python
"""Compile the packed GEMM kernel for a GPU target on a machine without one, and count in the
compiled PTX the async copies (``cp.async``), global loads and matrix instructions, with the
shared memory the launch needs. No GPU time; Triton's bundled
``ptxas`` does the compiling. Used to compare the two code decodes (``word_decode``) before a
GPU run can time them.

    python bench/kernel_resources.py [--arch 90] [--bits 1 4]
"""

from __future__ import annotations

import argparse
import re

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qgen_infer.kernels import gemm

SIGNATURE = dict(x_ptr="*fp16", w_ptr="*i32", scale_ptr="*fp32", zero_ptr="*fp32",
                 alpha_ptr="*fp32", beta_ptr="*fp32", out_ptr="*fp16", M="i32", N="i32", K="i32",
                 ldw="i32", stride_xm="i32", stride_xk="i32", k_per_split="i32",
                 negative_slope="fp32")
TILES = [(64, 64, 64, 4, 4), (128, 128, 64, 8, 3), (16, 64, 128, 4, 3)]  # BM, BN, BK, warps, st


def compile_dot(bits: int, tile: tuple[int, ...], word_decode: bool, arch: int):
    bm, bn, bk, warps, stages = tile
    fn = gemm.gemm_kpack_dot_kernel
    consts = dict(BITS=bits, HAS_ALPHA=True, HAS_BETA=True, ACT=2, PARTIAL=False, BLOCK_M=bm,
                  BLOCK_N=bn, BLOCK_K=bk, DOT_DTYPE=tl.float16, DOT_PRECISION="tf32", GROUP=8,
                  WORD_DECODE=word_decode)
    src = ASTSource(fn=fn, signature={**SIGNATURE, **{k: "constexpr" for k in consts}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    p.add_argument("--bits", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, gemm dot kernel, fp16 activations\n")
    print("| bits | tile (BMxBNxBK, warps, stages) | decode | cp.async | ld.global | mma | "
          "PTX lines | shared memory (B) |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for bits in args.bits:
        for tile in TILES:
            for wd in (False, True):
                ptx = compile_dot(bits, tile, wd, args.arch)
                text = ptx.asm["ptx"]
                print(f"| {bits} | {'x'.join(map(str, tile[:3]))}, {tile[3]}, {tile[4]} | "
                      f"{'word' if wd else 'per code'} | {len(re.findall(r'cp.async', text))} | "
                      f"{len(re.findall(r'ld.global', text))} | "
                      f"{len(re.findall(r'wgmma|mma.sync', text))} | {text.count(chr(10))} | "
                      f"{ptx.metadata.shared} |")


if __name__ == "__main__":
    main()
