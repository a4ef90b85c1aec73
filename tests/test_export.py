"""qgen-export: bit-exact with the fake-quantized training weights, BatchNorm folding, sensing net,
metadata, post-training quantization warnings, and the command line."""

from __future__ import annotations

import math
import pickle
import struct
import warnings
from pathlib import Path

import pytest
import torch

from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from qgen_infer.cli.export import main as export_main
from qgen_infer.errors import QgenError
from qgen_infer.export import (
    PostTrainingQuantizationWarning,
    SensingStorageWarning,
    export_checkpoint,
)
from qgen_infer.format import PackedLayer, QgenFile, read_qgen, unpack_codes
from qgen_infer.format.schema import channel_axis
from qgen_infer.quant import dequantize

# The DCGAN cases take 3-16 s each on 2 busy cores: two stay in the default run (both
# granularities, an odd width), the other six run with ``-m slow``.
FAST_DCGAN = {(1, "channel"), (3, "tensor")}
CASES = [pytest.param(f, b, g, marks=() if f == "mlp" or (b, g) in FAST_DCGAN else pytest.mark.slow)
         for f in ("mlp", "dcgan") for b in (1, 2, 3, 4) for g in ("tensor", "channel")]


def decoded_weight(layer: PackedLayer, bits: int) -> torch.Tensor:
    codes = unpack_codes(layer.codes, layer.weight_shape, bits)
    return dequantize(codes, layer.scale, layer.zero, channel_axis(layer.kind))


@pytest.mark.parametrize(("family", "bits", "granularity"), CASES)
def test_exported_weights_are_bit_exact(family: str, bits: int, granularity: str,
                                        tiny_checkpoint, tmp_path: Path) -> None:
    ckpt_path = tiny_checkpoint(family, bits, granularity)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PostTrainingQuantizationWarning)
        result = export_checkpoint(ckpt_path, tmp_path / "m.qgen")
    assert not result.post_training and result.warnings == []
    qf = read_qgen(result.path)
    gen, _ = build_from_checkpoint(load_checkpoint(ckpt_path))
    modules = dict(gen.named_children())
    assert [layer.name for layer in qf.packed_layers] == \
        [n for n, m in modules.items() if hasattr(m, "quantized_weight")]
    for layer in qf.packed_layers:
        trained = modules[layer.name].quantized_weight().detach()
        assert torch.equal(decoded_weight(layer, bits), trained), layer.name


def _export_2bit_with(family: str, tiny_checkpoint, tmp_path: Path,
                      **quantizer: object) -> tuple[QgenFile, torch.nn.Module]:
    """The tiny 2-bit per-channel checkpoint with ``quantizer`` keys set in its config (as if
    trained so), exported: the file, and the checkpoint's generator. The settings must reach the
    file's config and quantizer, and every packed layer decode to the generator's
    fake-quantized weight bit for bit."""
    ckpt = load_checkpoint(tiny_checkpoint(family, 2, "channel"))
    ckpt["config"] = {**ckpt["config"], **quantizer}
    path = tmp_path / "model.pt"
    save_checkpoint(path, ckpt)
    qf = read_qgen(export_checkpoint(path, tmp_path / "m.qgen").path)
    for key, value in quantizer.items():
        assert qf.quantizer[key] == value and qf.config[key] == value, key
    gen, _ = build_from_checkpoint(load_checkpoint(path))
    modules = dict(gen.named_children())
    for layer in qf.packed_layers:
        trained = modules[layer.name].quantized_weight().detach()
        assert torch.equal(decoded_weight(layer, 2), trained), layer.name
    return qf, gen


@pytest.mark.parametrize("family", ["mlp", "dcgan"])
def test_overflow_rate_is_exported_bit_exact(family: str, tiny_checkpoint, tmp_path: Path) -> None:
    """A checkpoint trained with an overflow rate exports the weights training saw (the rate
    travels in the config) and records the rate in the quantizer metadata."""
    qf, _ = _export_2bit_with(family, tiny_checkpoint, tmp_path, overflow_rate=0.25)
    from qgen_infer.format.summary import render

    assert "overflow rate 0.25" in render(qf, 0, "m.qgen")
    clipped = 0
    for layer in qf.packed_layers:
        codes = unpack_codes(layer.codes, layer.weight_shape, 2)
        clipped += int(((codes == 0) | (codes == 3)).sum())
    assert clipped > 0


def test_batchnorm_and_bias_are_folded(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint("dcgan", 4, "tensor"))
    gen, _ = build_from_checkpoint(ckpt)
    qf = read_qgen(export_checkpoint(tiny_checkpoint("dcgan", 4, "tensor"),
                                     tmp_path / "m.qgen").path)
    layers = {layer.name: layer for layer in qf.packed_layers}
    bn = gen.bn1
    alpha = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(layers["up1"].alpha, alpha, rtol=1e-6)
    assert torch.allclose(layers["up1"].beta, bn.bias - alpha * bn.running_mean, atol=1e-6)
    assert layers["up1"].batchnorm == "bn1" and layers["up1"].activation == "relu"
    # fc -> reshape [C, 4, 4] -> bn0: each BN channel covers 16 consecutive features
    bn0 = gen.bn0
    alpha0 = bn0.weight / torch.sqrt(bn0.running_var + bn0.eps)
    assert torch.allclose(layers["fc"].alpha, alpha0.repeat_interleave(16), rtol=1e-6)
    # conv_out has a bias and no BatchNorm: alpha 1, beta = bias
    assert torch.equal(layers["conv_out"].alpha, torch.ones(3))
    assert torch.equal(layers["conv_out"].beta, gen.conv_out.bias.detach())
    assert layers["conv_out"].activation == "tanh"


def test_metadata_solver_and_sensing(tiny_checkpoint, tmp_path: Path) -> None:
    path = tiny_checkpoint("dcgan", 3, "channel")
    qf = read_qgen(export_checkpoint(path, tmp_path / "m.qgen").path)
    assert qf.solver == {"method": "sdlss", "sparsity": 10, "steps": 3, "project": True,
                         "step_size": pytest.approx(math.exp(-2.5))}
    assert qf.quantizer == {"scheme": "linear_quantize", "granularity": "channel",
                            "overflow_rate": 0.0, "trained_bits": 3,
                            "trained_granularity": "channel", "post_training": False}
    assert qf.training["epochs"] == 1 and qf.config["bits"] == 3
    # the stored sensing net is the spectrally normalised one, computed in eval mode
    from qgen_infer.models import build_sensing

    _, sense = build_from_checkpoint(load_checkpoint(path))
    plain = build_sensing(qf.config, spectral_norm=False)
    plain.load_state_dict(qf.sensing)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), sense(x), rtol=1e-5, atol=1e-6)
    assert not any("parametrizations" in k for k in qf.sensing)


@pytest.mark.parametrize(("bits", "granularity"), [(2, None), (4, "channel")])
def test_post_training_quantization_warns_and_is_recorded(bits, granularity, tiny_checkpoint,
                                                          tmp_path: Path) -> None:
    with pytest.warns(PostTrainingQuantizationWarning, match="post-training"):
        result = export_checkpoint(tiny_checkpoint("mlp", 4, "tensor"), tmp_path / "m.qgen",
                                   bits=bits, granularity=granularity)
    qf = read_qgen(result.path)
    assert qf.quantizer["post_training"] and qf.quantizer["trained_bits"] == 4
    assert qf.bits == bits


def test_full_precision_checkpoint_needs_bits(tiny_checkpoint, tmp_path: Path) -> None:
    path = tiny_checkpoint("mlp", 32, "tensor")
    with pytest.raises(QgenError, match="--bits"):
        export_checkpoint(path, tmp_path / "m.qgen")
    with pytest.warns(PostTrainingQuantizationWarning):
        assert export_checkpoint(path, tmp_path / "m.qgen", bits=1).bits == 1


def test_cli_export(tiny_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w2.qgen"
    assert export_main([str(tiny_checkpoint("mlp", 4, "tensor")), "--bits", "2", "--out",
                        str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "2-bit" in captured.out
    assert captured.err.startswith("qgen-export: warning: post-training")
    assert read_qgen(out).bits == 2


def test_cli_export_default_output(tiny_checkpoint, tmp_path: Path) -> None:
    src = tiny_checkpoint("mlp", 1, "tensor")
    copy = tmp_path / "model.pt"
    copy.write_bytes(src.read_bytes())
    assert export_main([str(copy)]) == 0
    assert read_qgen(tmp_path / "model-w1.qgen").bits == 1
    # another width from the same checkpoint gets its own default file, no "exists" collision
    assert export_main([str(copy), "--bits", "2"]) == 0
    assert read_qgen(tmp_path / "model-w2.qgen").bits == 2
    assert read_qgen(tmp_path / "model-w1.qgen").bits == 1


def test_cli_export_reports_missing_bits_before_the_output(
        tiny_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 32-bit checkpoint without --bits: that is the error, even when the output exists."""
    out = tmp_path / "m.qgen"
    out.write_bytes(b"somebody's file")
    assert export_main([str(tiny_checkpoint("mlp", 32, "tensor")), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--bits" in err and "exists" not in err and err.count("\n") == 1, err
    assert out.read_bytes() == b"somebody's file"


def test_cli_export_refuses_to_overwrite_without_force(
        tiny_checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tiny_checkpoint("mlp", 1, "tensor")
    out = tmp_path / "m.qgen"
    out.write_bytes(b"somebody's file")
    assert export_main([str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qgen-export: error: ") and "--force" in err and err.count("\n") == 1
    assert out.read_bytes() == b"somebody's file"  # untouched
    assert export_main([str(src), "--out", str(out), "--force"]) == 0
    assert read_qgen(out).bits == 1
    # the checkpoint itself is never an output, --force or not
    before = src.read_bytes()
    assert export_main([str(src), "--out", str(src), "--force"]) == 2
    assert "checkpoint itself" in capsys.readouterr().err
    assert src.read_bytes() == before
    assert export_main([str(src), "--out", str(tmp_path), "--force"]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_cli_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "bit for bit" in text and "--granularity" in text and "post-training" in text


@pytest.mark.parametrize("argv_tail", [["--bits", "5"], ["--granularity", "row"]])
def test_cli_bad_flags_exit_2(argv_tail, tiny_checkpoint, capsys) -> None:
    assert export_main([str(tiny_checkpoint("mlp", 4, "tensor")), *argv_tail]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_user_errors_are_one_line(tiny_checkpoint, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        [str(tmp_path / "missing.pt")],
        [str(tiny_checkpoint("mlp", 4, "tensor")), "--out", str(tmp_path / "no" / "m.qgen")],
        [str(tiny_checkpoint("mlp", 32, "tensor"))],
    ]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    cases.append([str(garbage)])
    for argv in cases:
        assert export_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("qgen-export: error: ") and err.count("\n") == 1, err


class _Payload:
    """Unpickling this would create a marker file; torch.load(weights_only=True) must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_never_runs(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    save_checkpoint(path, {"config": {}, "solver": {}, "generator": {}, "sensing": {},
                           "log_step_size": torch.tensor(0.0), "train": _Payload(marker)})
    assert export_main([str(path)]) == 2
    assert not marker.exists()
    assert "not a readable qgen checkpoint" in capsys.readouterr().err
    assert pickle.HIGHEST_PROTOCOL  # the payload really is a pickle-level object


def _with_precision(src: Path, folder: Path, precision: str | None,
                    sensing_scale: float = 1.0) -> Path:
    """A copy of the checkpoint ``src`` recorded as trained with ``--precision precision``
    (None: no record, as checkpoints from before the flag), its sensing weights scaled."""
    ckpt = load_checkpoint(src)
    settings = ckpt.setdefault("train", {}).setdefault("settings", {})
    settings.pop("precision", None)
    if precision is not None:
        settings["precision"] = precision
    ckpt["sensing"] = {k: v * sensing_scale if k.endswith("weight") else v
                       for k, v in ckpt["sensing"].items()}
    path = folder / f"{precision}-{sensing_scale:g}.pt"
    save_checkpoint(path, ckpt)
    return path


@pytest.mark.parametrize(("precision", "requested", "stored"), [
    ("bf16", "auto", "fp16"), ("fp32", "auto", "fp32"), (None, "auto", "fp32"),
    ("bf16", "fp32", "fp32"), ("fp32", "fp16", "fp16")])
def test_sensing_dtype_follows_the_training_precision(precision, requested, stored,
                                                      tiny_checkpoint, tmp_path: Path) -> None:
    """auto stores A in float16 only for a bf16-trained checkpoint; the file's version says it
    (3 for float16, 2 otherwise, so older readers keep reading float32 files)."""
    src = _with_precision(tiny_checkpoint("mlp", 2, "tensor"), tmp_path, precision)
    result = export_checkpoint(src, tmp_path / "m.qgen", sensing_dtype=requested)
    qf = read_qgen(result.path)
    reference = read_qgen(export_checkpoint(src, tmp_path / "ref.qgen",
                                            sensing_dtype="fp32").path)
    assert result.sensing_dtype == qf.sensing_dtype == stored
    assert qf.format_version == (3 if stored == "fp16" else 2)
    want = torch.float16 if stored == "fp16" else torch.float32
    for name, value in qf.sensing.items():
        assert value.dtype == want
        assert torch.equal(value, reference.sensing[name].to(want))  # rounded once, from fp32
    for a, b in zip(qf.packed_layers, reference.packed_layers, strict=True):
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)


def test_float16_sensing_halves_the_file_and_computes_in_fp32(tiny_checkpoint,
                                                              tmp_path: Path) -> None:
    import qgen_infer

    src = _with_precision(tiny_checkpoint("dcgan", 1, "tensor"), tmp_path, "bf16")
    half = export_checkpoint(src, tmp_path / "h.qgen")
    full = export_checkpoint(src, tmp_path / "f.qgen", sensing_dtype="fp32")
    sensing_bytes = sum(v.nbytes for v in read_qgen(full.path).sensing.values())
    # half the sensing bytes, give or take the header's offsets and alignment padding
    assert abs(full.file_bytes - half.file_bytes - sensing_bytes // 2) < 256
    h, f = qgen_infer.load(half.path), qgen_infer.load(full.path)
    assert all(p.dtype == torch.float32 for p in h.sensing.parameters())
    for (name, ph), pf in zip(h.sensing.state_dict().items(), f.sensing.state_dict().values(),
                              strict=True):
        assert torch.equal(ph, pf.half().float()), name
    x = torch.rand(3, *h.config["image_shape"]) * 2 - 1
    assert torch.allclose(qgen_infer.measure(h, x), qgen_infer.measure(f, x), rtol=2e-3,
                          atol=1e-4)


def test_float16_sensing_out_of_range(tiny_checkpoint, tmp_path: Path, capsys) -> None:
    """Weights beyond float16's range: an explicit fp16 is one error line; auto keeps fp32 and
    says so."""
    src = _with_precision(tiny_checkpoint("mlp", 2, "tensor"), tmp_path, "bf16",
                          sensing_scale=1e6)
    with pytest.raises(QgenError, match="beyond float16's range"):
        export_checkpoint(src, tmp_path / "x.qgen", sensing_dtype="fp16")
    with pytest.warns(SensingStorageWarning, match="stored as fp32") as caught:
        export_checkpoint(src, tmp_path / "w.qgen")
    assert not any(isinstance(w.message, PostTrainingQuantizationWarning) for w in caught)
    assert export_main([str(src), "--sensing-dtype", "fp16", "-o", str(tmp_path / "y.qgen")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beyond float16's range" in err
    assert not (tmp_path / "y.qgen").exists()
    assert export_main([str(src), "-o", str(tmp_path / "z.qgen")]) == 0
    captured = capsys.readouterr()
    assert "stored as fp32" in captured.err and "sensing net fp32" in captured.out
    assert read_qgen(tmp_path / "z.qgen").format_version == 2


@pytest.mark.parametrize("family", ["mlp", "dcgan"])
def test_mid_rise_grid_is_exported_bit_exact_and_runs_in_the_engine(
        family: str, tiny_checkpoint, tmp_path: Path) -> None:
    """A checkpoint trained on the mid-rise grid exports the weights training saw with the
    format as it is (zero 2^(k-1) - 1/2 per row), records the grid, and the packed generator of
    every CPU backend equals the checkpoint's."""
    import qgen_infer
    from qgen_infer.engine.registry import backend_available
    from qgen_infer.format.summary import render

    qf, gen = _export_2bit_with(family, tiny_checkpoint, tmp_path, grid="mid-rise")
    assert "mid-rise grid" in render(qf, 0, "m.qgen")
    for layer in qf.packed_layers:
        assert torch.equal(layer.zero, torch.full_like(layer.zero, 1.5)), layer.name
    z = torch.randn(3, qf.config["latent_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = gen(z)
    backends = ["reference"] + (["cpu"] if backend_available("cpu") else [])
    for backend in backends:
        model = qgen_infer.load(tmp_path / "m.qgen", backend=backend)
        with torch.no_grad():
            torch.testing.assert_close(model.generator(z), want, rtol=1e-4, atol=1e-5,
                                       msg=backend)


def test_the_default_grid_is_written_nowhere(tiny_checkpoint, tmp_path: Path) -> None:
    """Files of mid-tread runs keep the bytes they had before the grid option existed: the
    config and the quantizer metadata name no grid (absent means mid-tread), and a checkpoint
    from before the option (no "grid" in its config) exports to the same file."""
    ckpt = load_checkpoint(tiny_checkpoint("mlp", 2, "tensor"))
    files = []
    for name, grid in (("old", None), ("new", "mid-tread")):
        config = {k: v for k, v in ckpt["config"].items() if k != "grid"}
        ckpt["config"] = config if grid is None else {**config, "grid": grid}
        save_checkpoint(tmp_path / f"{name}.pt", ckpt)
        files.append(export_checkpoint(tmp_path / f"{name}.pt", tmp_path / f"{name}.qgen").path)
    assert files[0].read_bytes() == files[1].read_bytes()
    qf = read_qgen(files[1])
    assert "grid" not in qf.config and "grid" not in qf.quantizer


def test_one_checkpoint_exports_to_the_same_bytes(tiny_checkpoint, tmp_path: Path) -> None:
    """safetensors orders header keys by a hash map, differently per call; the writer sorts
    them, so a file can be checked against a recorded sha256 by exporting again."""
    ckpt = tiny_checkpoint("dcgan", 3, "channel")
    first = export_checkpoint(ckpt, tmp_path / "a.qgen").path.read_bytes()
    for i in range(3):
        assert export_checkpoint(ckpt, tmp_path / f"{i}.qgen").path.read_bytes() == first
    (header_len,) = struct.unpack_from("<Q", first)
    assert (8 + header_len) % 8 == 0  # the data region stays 8-byte aligned
