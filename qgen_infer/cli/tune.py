"""``qgen-tune``: time the Triton kernel configs a model's reconstruction uses and keep the best.

Run time never tunes (``qgen_infer.kernels.configs``: a deterministic rule plus the tables shipped
for Hopper); this command is the one place that does, on purpose, and writes what it finds to
the user's config cache, which every later run reads first.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

from qgen_infer.cli.common import ArgumentParser, int_in, run_cli
from qgen_infer.errors import QgenError

DESCRIPTION = """\
Autotune the packed Triton kernels for one model on this GPU: run one solver step of a
reconstruction at each batch size and precision given, timing every candidate launch config of
every product the step uses (a few compiles each: minutes on a fresh machine), and write the
fastest correct config per product to the user's cache. Later qgen-reconstruct runs on this GPU
use those configs instead of the built-in rule; nothing is tuned at run time otherwise.
"""

EPILOG = """\
examples:
  qgen-tune models/mnist-m25-1bit.qgen
  qgen-tune m.qgen --batch-size 256 1 --precision fp32 fp16 --out tuned.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="qgen-tune", description=DESCRIPTION, epilog=EPILOG)
    p.add_input("model", metavar="MODEL.qgen", old_flag="--model",
                help="packed model file whose products are tuned")
    p.add_argument("--batch-size", type=int_in(1, 65535), nargs="+", default=[256],
                   help="batch sizes to tune for (configs are kept per power-of-two bucket)")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), nargs="+",
                   default=["fp32", "fp16"], help="activation precisions to tune for")
    p.add_argument("-o", "--out", metavar="FILE.json", default=None,
                   help="config file to write (default: $QGEN_TRITON_CONFIGS, else "
                        "~/.cache/qgen_infer/triton-configs.json, which every run reads)")
    return p


def _body(argv: Sequence[str] | None) -> int:
    # first: --help and usage errors return before torch is imported
    args = build_parser().parse_args(argv)
    import torch

    if not Path(args.model).is_file():
        raise QgenError(f"{args.model}: no such file")
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        raise QgenError("qgen-tune times kernels on a CUDA device, and this machine has none "
                        "(or TRITON_INTERPRET=1 is set)")
    from qgen_infer.kernels import configs

    os.environ[configs.AUTOTUNE_ENV] = "1"
    if args.out is not None:
        os.environ["QGEN_TRITON_CONFIGS"] = str(Path(args.out).resolve())
    configs.reset_cache()
    from tqdm import tqdm

    from qgen_infer.engine import load
    from qgen_infer.reconstruction import reconstruct

    model = load(args.model, backend="triton", device="cuda")
    m = int(model.config["measurements"])
    jobs = [(p, b) for p in args.precision for b in args.batch_size]
    t0 = time.perf_counter()
    for precision, batch in tqdm(jobs, desc="qgen-tune", unit="case"):
        y = torch.randn(batch, m, generator=torch.Generator().manual_seed(0))
        reconstruct(model, y.numpy(), steps=1, batch_size=batch, cuda_graph=False,
                    precision=precision)
    torch.cuda.synchronize()
    path = configs.user_cache_path()
    print(f"tuned {len(jobs)} case(s) in {time.perf_counter() - t0:.0f} s; configs in {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("qgen-tune", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
