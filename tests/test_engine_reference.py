"""The reference engine: a loaded .qgen generator equals the fake-quantized checkpoint generator
(eval mode) in output and in d/dz, for every bit width, both granularities, MLP and DCGAN; the
backend registry; and the engine's structural checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import qgen_infer
from qgen_infer.checkpoint import build_from_checkpoint, load_checkpoint
from qgen_infer.engine import (
    PackedConv2d,
    PackedConvTranspose2d,
    PackedLinear,
    ReferenceBackend,
    get_backend,
    registry,
)
from qgen_infer.errors import FormatError, QgenError
from qgen_infer.export import export_checkpoint
from qgen_infer.format import FORMAT_VERSION

# The DCGAN cases take 3-16 s each on 2 busy cores: two stay in the default run (both
# granularities, an odd width), the other six run with ``-m slow``.
FAST_DCGAN = {(1, "channel"), (3, "tensor")}
CASES = [pytest.param(f, b, g, marks=() if f == "mlp" or (b, g) in FAST_DCGAN else pytest.mark.slow)
         for f in ("mlp", "dcgan") for b in (1, 2, 3, 4) for g in ("tensor", "channel")]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """``exported(family, bits, granularity)`` -> (qgen path, checkpoint path), cached."""
    cache: dict = {}

    def get(family: str, bits: int, granularity: str) -> tuple[Path, Path]:
        key = (family, bits, granularity)
        if key not in cache:
            ckpt = tiny_checkpoint(*key)
            out = tmp_path_factory.mktemp("qgen") / "m.qgen"
            cache[key] = (export_checkpoint(ckpt, out).path, ckpt)
        return cache[key]

    return get


def _weighted_sum(x: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per output element (a plain sum would hide permutations)."""
    w = torch.sin(torch.arange(x[0].numel(), dtype=torch.float32)).reshape(x.shape[1:])
    return (x * w).sum()


@pytest.mark.parametrize(("family", "bits", "granularity"), CASES)
def test_generator_and_gradient_match_checkpoint(family, bits, granularity, exported) -> None:
    qgen_path, ckpt_path = exported(family, bits, granularity)
    model = qgen_infer.load(qgen_path, backend="reference")
    gen, _ = build_from_checkpoint(load_checkpoint(ckpt_path))
    torch.manual_seed(bits)
    z = torch.randn(5, model.config["latent_dim"])
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    x_packed, x_ckpt = model.generator(z1), gen(z2)
    assert x_packed.shape == x_ckpt.shape == (5, *model.config["image_shape"])
    torch.testing.assert_close(x_packed, x_ckpt, rtol=1e-5, atol=1e-6)
    (g_packed,) = torch.autograd.grad(_weighted_sum(x_packed), z1)
    (g_ckpt,) = torch.autograd.grad(_weighted_sum(x_ckpt), z2)
    torch.testing.assert_close(g_packed, g_ckpt, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["mlp", "dcgan"])
def test_reference_weights_are_the_fake_quantized_ones(family, exported) -> None:
    qgen_path, ckpt_path = exported(family, 3, "channel")
    model = qgen_infer.load(qgen_path, backend="reference")
    gen, _ = build_from_checkpoint(load_checkpoint(ckpt_path))
    for name, module in model.generator.named_children():
        if not isinstance(module, (PackedLinear, PackedConv2d, PackedConvTranspose2d)):
            continue
        w = getattr(gen, name).quantized_weight().detach()
        if isinstance(module, PackedConvTranspose2d):
            w = w.permute(2, 3, 1, 0)  # [kh, kw, C_out, C_in]
        elif module.view_kind == "conv2d_per_pixel":  # the flipped kernel, per pixel
            w = w.flip(2, 3).permute(2, 3, 0, 1)  # [kh', kw', C_out, C_in]
        assert torch.equal(module.prepared, w.reshape(module.matrix_shape[0], -1)), name
        assert module.matrix_weight().shape == module.matrix_shape


def test_model_fields_and_sensing(exported) -> None:
    qgen_path, ckpt_path = exported("dcgan", 2, "tensor")
    model = qgen_infer.load(qgen_path, backend="reference", device="cpu")
    assert model.bits == 2 and model.backend.name == "reference"
    assert model.solver["method"] == "sdlss" and model.solver["steps"] == 3
    assert model.metadata["quantizer"]["trained_bits"] == 2
    assert model.metadata["format_version"] == FORMAT_VERSION
    _, sense = build_from_checkpoint(load_checkpoint(ckpt_path))
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.sensing(x), sense(x), rtol=1e-5, atol=1e-6)
    # the solver's end-to-end gradient: d/dz ||y - A(G(z))||² flows through packed weights
    z = torch.randn(2, model.config["latent_dim"], requires_grad=True)
    loss = (model.sensing(model.generator(z)) - 1).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.shape == z.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


class CountingBackend(ReferenceBackend):
    name = "counting"

    def __init__(self) -> None:
        self.calls = {"prepare": 0, "gemm": 0, "gemm_t": 0}

    def prepare(self, weight):
        self.calls["prepare"] += 1
        return super().prepare(weight)

    def gemm(self, x, prepared, epilogue=None):
        self.calls["gemm"] += 1
        return super().gemm(x, prepared, epilogue)

    def gemm_t(self, g, prepared):
        self.calls["gemm_t"] += 1
        return super().gemm_t(g, prepared)


def test_lazy_backend_module_is_used(exported, monkeypatch) -> None:
    fake = types.ModuleType("fake_cpu_backend")
    fake.is_available = lambda: True
    fake.create_backend = CountingBackend
    monkeypatch.setitem(sys.modules, "fake_cpu_backend", fake)
    monkeypatch.setitem(registry.LAZY_BACKENDS, "cpu", "fake_cpu_backend")
    model = qgen_infer.load(exported("dcgan", 4, "channel")[0], backend="cpu")
    calls = model.backend.calls
    assert calls == {"prepare": 4, "gemm": 0, "gemm_t": 0}
    z = torch.randn(3, model.config["latent_dim"], requires_grad=True)
    _weighted_sum(model.generator(z)).backward()
    assert calls["gemm"] == 4 and calls["gemm_t"] == 4  # backward runs the transposed product
    assert registry.auto_backend_name("cpu") == "cpu"


def test_unknown_and_unavailable_backends(monkeypatch, exported) -> None:
    with pytest.raises(QgenError, match="unknown backend 'cuda9'"):
        get_backend("cuda9")
    monkeypatch.setitem(registry.LAZY_BACKENDS, "cpu", "qgen_infer.engine._no_such_backend")
    with pytest.raises(QgenError, match="backend 'cpu' is not available"):
        get_backend("cpu")
    assert registry.auto_backend_name("cpu") == "reference"
    assert get_backend("auto").name == "reference"
    fake = types.ModuleType("fake_off")
    fake.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "fake_off", fake)
    monkeypatch.setitem(registry.LAZY_BACKENDS, "triton", "fake_off")
    with pytest.raises(QgenError, match="backend 'triton' is not available"):
        qgen_infer.load(exported("mlp", 1, "tensor")[0], backend="triton")
    with pytest.raises(QgenError, match="device"):
        qgen_infer.load(exported("mlp", 1, "tensor")[0], device="tpu:7")


def _rewrite_config(src: Path, dst: Path, **changes) -> None:
    """Edit the config metadata of a valid file and re-sign it (a consistent checksum), so only
    the edit is wrong."""
    import struct

    from qgen_infer.format.writer import checksum

    blob = src.read_bytes()
    (n,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8:8 + n])
    config = json.loads(header["__metadata__"]["config"])
    config.update(changes)
    header["__metadata__"]["config"] = json.dumps(config)
    header["__metadata__"]["checksum"] = checksum(blob[8 + n:], header["__metadata__"])
    raw = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n:])


@pytest.mark.parametrize(("changes", "words"), [
    ({"latent_dim": 11}, "expects 10 input features"),
    ({"image_shape": [1, 5, 5]}, "image_shape is [1, 5, 5]"),
    ({"measurements": 8}, "sensing tensors do not fit"),
    ({"family": "vae"}, "family must be one of"),
    ({"bits": 2}, "disagree"),
])
def test_inconsistent_files_are_format_errors(changes, words, exported, tmp_path: Path) -> None:
    bad = tmp_path / "bad.qgen"
    _rewrite_config(exported("mlp", 3, "tensor")[0], bad, **changes)
    with pytest.raises(FormatError, match=words.replace("[", r"\[")) as info:
        qgen_infer.load(bad)
    assert "\n" not in str(info.value)


def test_import_is_light_and_engine_never_imports_training(exported) -> None:
    path = exported("mlp", 2, "tensor")[0]
    code = (
        "import sys, qgen_infer\n"
        "assert 'torch' not in sys.modules, 'import qgen_infer pulled in torch'\n"
        f"m = qgen_infer.load({str(path)!r})\n"
        "bad = [k for k in sys.modules if k.startswith('qgen_infer.train')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# (C_out, C_in, kernel, padding, dilation, stride): per pixel when stride 1, C_out < C_in and
# p <= d*(k-1); the rest im2col. Odd sizes, even and 1x1 kernels, asymmetric padding.
CONV_CASES = [(3, 8, (3, 3), (1, 1), (1, 1), (1, 1)), (3, 8, (3, 3), (0, 2), (1, 1), (1, 1)),
              (2, 5, (2, 4), (1, 0), (1, 1), (1, 1)), (3, 7, (3, 3), (2, 1), (2, 1), (1, 1)),
              (1, 4, (1, 1), (0, 0), (1, 1), (1, 1)), (3, 8, (3, 3), (3, 1), (1, 1), (1, 1)),
              (8, 3, (3, 3), (1, 1), (1, 1), (1, 1)), (3, 8, (3, 3), (1, 1), (1, 1), (2, 2))]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_packed_conv2d_both_forms_equal_torch(case, backend: str) -> None:
    """A packed Conv2d equals ``F.conv2d`` on its dequantized weight, forward and input
    gradient, in whichever form it picked, and the per-pixel form is picked exactly when it
    reads less and exists."""
    import torch.nn.functional as F

    from qgen_infer.engine import backend_available, get_backend
    from qgen_infer.format import PackedLayer, pack_codes

    if not backend_available(backend):
        pytest.skip(f"the {backend} backend is not available here")
    c_out, c_in, kernel, padding, dilation, stride = case
    gen = torch.Generator().manual_seed(sum(kernel) + c_out * c_in)
    shape = (c_out, c_in, *kernel)
    codes = torch.randint(0, 8, shape, generator=gen, dtype=torch.uint8)
    scale, zero = torch.rand(c_out, generator=gen) + 0.1, torch.rand(c_out, generator=gen) * 7
    alpha, beta = torch.rand(c_out, generator=gen) + 0.5, torch.randn(c_out, generator=gen)
    layer = PackedLayer("conv", "conv2d", shape, pack_codes(codes, 3), scale, zero, alpha, beta,
                        "leaky_relu", 0.2, stride, padding, (0, 0), dilation)
    module = PackedConv2d(layer, 3, get_backend(backend))
    per_pixel = stride == (1, 1) and c_out < c_in and all(
        p <= d * (k - 1) for k, p, d in zip(kernel, padding, dilation, strict=True))
    assert module.view_kind == ("conv2d_per_pixel" if per_pixel else "conv2d")
    weight = (scale[:, None, None, None] * (codes.double() - zero[:, None, None, None])).float()
    x = torch.randn(2, c_in, 9, 7, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = module(x)
    pre = F.conv2d(x_ref, weight, None, stride, padding, dilation)
    y_ref = F.leaky_relu(alpha[:, None, None] * pre + beta[:, None, None], 0.2)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    g = torch.randn(y.shape, generator=gen)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-4)


# (C_in, C_out, kernel, stride, padding, output_padding, dilation)
CONV_T_CASES = [(8, 4, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1)),
                (5, 3, (3, 4), (2, 1), (0, 2), (1, 0), (1, 1)),
                (3, 6, (3, 3), (3, 2), (2, 1), (2, 1), (2, 1)),
                (4, 1, (1, 1), (1, 1), (0, 0), (0, 0), (1, 1))]


@pytest.mark.parametrize("case", CONV_T_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_packed_conv_transpose2d_equals_torch(case, backend: str) -> None:
    """A packed ConvTranspose2d (per-pixel product, channels-last col2im) equals
    ``F.conv_transpose2d`` on its dequantized weight, forward and input gradient, for strides,
    paddings, output paddings and dilations that differ per axis, with per-channel scales."""
    import torch.nn.functional as F

    from qgen_infer.engine import backend_available, get_backend
    from qgen_infer.format import PackedLayer, pack_codes

    if not backend_available(backend):
        pytest.skip(f"the {backend} backend is not available here")
    c_in, c_out, kernel, stride, padding, out_pad, dilation = case
    gen = torch.Generator().manual_seed(c_in * 10 + c_out)
    shape = (c_in, c_out, *kernel)
    codes = torch.randint(0, 4, shape, generator=gen, dtype=torch.uint8)
    scale, zero = torch.rand(c_out, generator=gen) + 0.1, torch.rand(c_out, generator=gen) * 3
    alpha, beta = torch.rand(c_out, generator=gen) + 0.5, torch.randn(c_out, generator=gen)
    layer = PackedLayer("up", "conv_transpose2d", shape, pack_codes(codes, 2), scale, zero,
                        alpha, beta, "tanh", 0.01, stride, padding, out_pad, dilation)
    module = PackedConvTranspose2d(layer, 2, get_backend(backend))
    weight = (scale[None, :, None, None] * (codes.double() - zero[None, :, None, None])).float()
    x = torch.randn(2, c_in, 5, 6, generator=gen, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y = module(x)
    pre = F.conv_transpose2d(x_ref, weight, None, stride, padding, out_pad, 1, dilation)
    y_ref = torch.tanh(alpha[:, None, None] * pre + beta[:, None, None])
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    g = torch.randn(y.shape, generator=gen)
    (gx,) = torch.autograd.grad(y, x, g)
    (gx_ref,) = torch.autograd.grad(y_ref, x_ref, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CONV_T_CASES, ids=lambda c: "-".join(map(str, c)))
def test_col2im_methods_agree(case) -> None:
    """The tap-by-tap col2im (CPU) and the transpose + ``F.fold`` one (GPU default) give the same
    sums and the same gradients."""
    from qgen_infer.engine.packed_ops import col2im_channels_last

    c_in, c_out, kernel, stride, padding, out_pad, dilation = case
    gen = torch.Generator().manual_seed(c_out)
    h, w = 5, 6
    out = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in
           zip((h, w), stride, padding, dilation, kernel, out_pad, strict=True)]
    cols = torch.randn(2, h, w, *kernel, c_out, generator=gen, dtype=torch.float64)
    g = torch.randn(2, *out, c_out, generator=gen, dtype=torch.float64)
    results = []
    for method in ("taps", "fold"):
        c = cols.clone().requires_grad_(True)
        y = col2im_channels_last(c, tuple(out), padding, stride, dilation, method)
        (gc,) = torch.autograd.grad(y, c, g)
        results.append((y, gc))
    torch.testing.assert_close(results[0], results[1])
    with pytest.raises(ValueError, match="taps or fold"):
        col2im_channels_last(cols, tuple(out), padding, stride, dilation, "scatter")


@pytest.mark.parametrize("family", ["mlp", "dcgan"])
def test_dense_baseline_is_the_same_generator(family, exported) -> None:
    """The benchmarks' dense torch baseline (``qgen_infer/engine/dense_baseline.py``) computes
    what the packed generator computes, forward and input gradient, for the MLP and the DCGAN
    (BatchNorm folded, per-channel scales)."""
    from qgen_infer.engine.dense_baseline import dense_generator

    qgen_path, _ = exported(family, 3, "channel")
    model = qgen_infer.load(qgen_path, backend="reference")
    dense = dense_generator(model)
    z = torch.randn(4, model.config["latent_dim"], generator=torch.Generator().manual_seed(5))
    z1, z2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    x_packed, x_dense = model.generator(z1), dense(z2)
    torch.testing.assert_close(x_dense, x_packed, rtol=1e-5, atol=1e-5)
    g = torch.randn(x_packed.shape, generator=torch.Generator().manual_seed(6))
    (g1,) = torch.autograd.grad(x_packed, z1, g)
    (g2,) = torch.autograd.grad(x_dense, z2, g)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)


_MMAP_PROBE = """
import ctypes, sys
import qgen_infer

libc = ctypes.CDLL("libc.so.6")
libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc.mallinfo2.restype = Info

def mmapped_by_16_mib() -> int:
    before = libc.mallinfo2().hblks
    block = libc.malloc(16 << 20)
    grew = libc.mallinfo2().hblks - before
    libc.free(block)
    return grew

libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD at glibc's default, fixed (no adaptive rise)
assert mmapped_by_16_mib() == 1, "glibc did not mmap a 16 MiB block at the default threshold"
qgen_infer.load(sys.argv[1], backend="reference")
print(mmapped_by_16_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
@pytest.mark.parametrize(("setting", "mmapped"), [(None, "0"), ("0", "1")])
def test_cpu_load_keeps_freed_blocks_in_the_process(setting, mmapped, exported) -> None:
    """``qgen_infer.load`` on the CPU raises glibc's mmap threshold (as training does), so the
    solver's multi-MiB activations come from the heap instead of fresh page-faulted mmaps;
    ``QGEN_KEEP_FREED_MEMORY=0`` leaves the threshold where it was."""
    path, _ = exported("mlp", 1, "tensor")
    env = {k: v for k, v in os.environ.items() if k != "QGEN_KEEP_FREED_MEMORY"}
    if setting is not None:
        env["QGEN_KEEP_FREED_MEMORY"] = setting
    out = subprocess.run([sys.executable, "-c", _MMAP_PROBE, str(path)], check=True, env=env,
                         timeout=120, capture_output=True, text=True).stdout
    assert out.split()[-1] == mmapped
