"""Triton kernels on bit-packed k-bit weights (k = 1..4), installed as ``qgen_infer.kernels``.

Modules (import them explicitly; importing this package imports neither triton nor torch.cuda):

* ``layout``  -- the GPU layout ``kpack`` (codes packed along K into int32 words, 3 bits as
  2+1 planes, rows padded to 16 words) and ``PackedKWords``, repacked once from the canonical
  uint8 codes; pure torch.
* ``common``  -- the Triton helpers every kernel shares: the two decodes of ``kpack``
  (``load_codes``, one load per code; ``load_code_tile``, one load per word, split in
  registers) and ``apply_epilogue`` (alpha, beta, activation).
* ``configs`` -- launch configs: the interpreter's fixed config, the deterministic rule, the
  tables shipped in ``tuned/`` (``sm_90.json`` for Hopper), the user's JSON cache and the
  autotuner, which runs only when asked (``qgen-tune``, ``--autotune``).
* ``gemm``    -- ``y = act(alpha * (x Wᵀ) + beta)``: tensor-core tile kernel and GEMV kernel.
* ``gemm_t``  -- ``g' = g W`` (the input gradient): tensor-core tile kernel and GEMV kernel.
* ``splitk``  -- the split-K reduction with the forward epilogue.
* ``conv``    -- packed conv2d / conv_transpose2d as implicit GEMM (each the other's input
  gradient), fused epilogue.
* ``fused_step`` -- one whole solver step of the MLP model (generator and sensing net forward and
  back, residual, proximal update, hard threshold, projection) in one launch.
* ``ops``     -- ``torch.library`` custom ops ``qgen_infer::packed_gemm`` / ``packed_gemm_t`` with
  fake (meta) kernels and autograd, so the solver loop can be compiled or graph-captured.

Every kernel here is registered with its plain-torch reference in
``qgen_infer/engine/kernel_registry.py`` (device helpers live in ``common`` or start with ``_``).
"""
