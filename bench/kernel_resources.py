#!/usr/bin/env python
"""Compile the packed GEMM kernels for a GPU target on a machine without one, and count in the
compiled PTX the async copies (``cp.async``), global loads, matrix instructions, shared-memory
traffic outside the copies (``st.shared`` / ``ld.shared``: layout conversions) and barriers, with
the shared memory the launch needs. No GPU time; Triton's bundled ``ptxas`` does the compiling.
Used to compare code decodes (``word_decode``) and the two products (``gemm``, ``gemm_t``)
before a GPU run can time them.

    python bench/kernel_resources.py [--arch 90] [--bits 1 4] [--ops gemm gemm_t]
"""

from __future__ import annotations

import argparse
import re

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qgen_infer.kernels import gemm, gemm_t

SIGNATURE = dict(x_ptr="*fp16", w_ptr="*i32", scale_ptr="*fp32", zero_ptr="*fp32",
                 alpha_ptr="*fp32", beta_ptr="*fp32", out_ptr="*fp16", M="i32", N="i32", K="i32",
                 ldw="i32", stride_xm="i32", stride_xk="i32", k_per_split="i32",
                 negative_slope="fp32")
SIGNATURE_T = dict(g_ptr="*fp16", w_ptr="*i32", scale_ptr="*fp32", zero_ptr="*fp32",
                   out_ptr="*fp16", y_ptr="*fp16", alpha_ptr="*fp32", M="i32", N="i32", K="i32",
                   ldw="i32", stride_gm="i32", stride_gn="i32", stride_ym="i32", stride_yn="i32",
                   n_per_split="i32", negative_slope="fp32")
TILES = [(64, 64, 64, 4, 4), (128, 128, 64, 8, 3), (16, 64, 128, 4, 3)]  # BM, BN, BK, warps, st


def compile_dot(op: str, bits: int, tile: tuple[int, ...], word_decode: bool, arch: int):
    """The ``dot`` kernel of ``op`` with leaky-ReLU epilogue (``gemm``) or prologue (``gemm_t``:
    the input gradient through it), fp16 activations."""
    bm, bn, bk, warps, stages = tile
    consts = dict(BITS=bits, HAS_ALPHA=True, ACT=2, PARTIAL=False, BLOCK_M=bm, BLOCK_N=bn,
                  BLOCK_K=bk, DOT_DTYPE=tl.float16, DOT_PRECISION="tf32", GROUP=8,
                  WORD_DECODE=word_decode)
    if op == "gemm":
        fn, signature = gemm.gemm_kpack_dot_kernel, SIGNATURE
        consts["HAS_BETA"] = True
    else:
        fn, signature = gemm_t.gemm_t_kpack_dot_kernel, SIGNATURE_T
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in consts}},
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    p.add_argument("--bits", type=int, nargs="+", default=[1, 4])
    p.add_argument("--ops", nargs="+", default=["gemm"], choices=["gemm", "gemm_t"])
    args = p.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, dot kernels, fp16 activations\n")
    print("| op | bits | tile (BMxBNxBK, warps, stages) | decode | cp.async | ld.global | mma | "
          "st.shared | ld.shared | bar.sync | PTX lines | shared memory (B) |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for op in args.ops:
        for bits in args.bits:
            for tile in TILES:
                for wd in (False, True):
                    ptx = compile_dot(op, bits, tile, wd, args.arch)
                    text = ptx.asm["ptx"]
                    counts = [len(re.findall(pat, text)) for pat in (
                        r"cp\.async\.", r"ld\.global", r"wgmma|mma\.sync", r"st\.shared",
                        r"ld\.shared", r"bar\.sync")]
                    print(f"| {op} | {bits} | {'x'.join(map(str, tile[:3]))}, {tile[3]}, "
                          f"{tile[4]} | {'word' if wd else 'per code'} | "
                          + " | ".join(map(str, counts))
                          + f" | {text.count(chr(10))} | {ptx.metadata.shared} |")


if __name__ == "__main__":
    main()
