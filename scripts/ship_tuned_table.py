"""Write ``kernels/tuned/sm_90.json``, the launch-config table shipped for Hopper (H100 / H200).

    python scripts/ship_tuned_table.py                       # the rule's entries only
    python scripts/ship_tuned_table.py OUTDIR/triton-configs.json ...   # plus measured ones

Every entry says where it comes from (``source``):

* ``rule``: ``configs.heuristic_ladder`` for 132 SMs at M = 256 (``qgen-reconstruct``'s default
  batch; 1,000 images make batches of 256 and 232, one bucket) for the products of the shipped
  MNIST models (``models/``: 784 -> 500 -> 500 -> 784), each op, width and fp16/fp32; no time
  (``time_us`` null): nothing was timed. Pinning them keeps a Hopper run on one known config per
  product however the rule evolves.
* ``qgen-tune``: the entries of the files named on the command line (written by ``qgen-tune``
  or ``bench/gpu_suite.sh`` on a Hopper GPU), with their measured ``time_us``; they replace the
  rule's entry for the same key. Only files whose device is a Hopper GPU (``H100``/``H200``)
  are taken.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qgen_infer.kernels import configs  # noqa: E402

ARCH = "sm_90"
HOPPER_SMS = 132
BATCH = 256
# (N, K) of the shipped MNIST generator's layers: fc1, fc2, fc3
MNIST_LAYERS = ((500, 784), (500, 500), (784, 500))
DTYPES = {"float16": 2, "float32": 4}
OUT = ROOT / "kernels" / "tuned" / f"{ARCH}.json"


def rule_entries() -> list[dict]:
    out = []
    for n, k in MNIST_LAYERS:
        for op in configs.OPS:
            out_dim, red_dim = (n, k) if op == "gemm" else (k, n)
            for dtype, nbytes in DTYPES.items():
                cfg = configs.heuristic_ladder(BATCH, out_dim, red_dim, op, sms=HOPPER_SMS,
                                               act_bytes=nbytes)[0]
                for bits in (1, 2, 3, 4):
                    out.append({"device": ARCH, "op": op, "bits": bits, "dtype": dtype,
                                "m_bucket": configs.bucket_m(BATCH), "n": n, "k": k,
                                "time_us": None, "source": "rule", "config": asdict(cfg)})
    return out


def measured_entries(path: Path) -> list[dict]:
    out = []
    for e in json.loads(path.read_text())["entries"]:
        configs.parse_entry(e)
        if not any(h in e["device"] for h in ("H100", "H200")):
            continue
        out.append({**e, "device": ARCH, "source": f"qgen-tune on {e['device']} ({path.name})"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measured", nargs="*", type=Path, help="config files written by qgen-tune")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    entries = {configs.parse_entry(e)[0]: e for e in rule_entries()}
    for f in args.measured:
        for e in measured_entries(f):
            entries[configs.parse_entry(e)[0]] = e
    doc = {"format": configs.FORMAT, "version": configs.VERSION,
           "about": "Launch configs for Hopper (sm_90), shipped with qgen-infer; written by "
                    "scripts/ship_tuned_table.py, whose docstring says what each source means.",
           "entries": sorted(entries.values(), key=lambda e: (e["op"], e["bits"], e["dtype"],
                                                               e["n"], e["k"], e["m_bucket"]))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    measured = sum(e["time_us"] is not None for e in doc["entries"])
    print(f"{args.out}: {len(doc['entries'])} entries, {measured} measured")


if __name__ == "__main__":
    main()
