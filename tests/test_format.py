"""The .qgen container: round trip, readable by safetensors itself, and a corpus of malformed files
(built here, programmatically) that must each end in one FormatError line -- in the library and as
exit code 2 from qgen-info -- never a traceback, a hang or a huge allocation."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from qgen_infer.checkpoint import load_checkpoint
from qgen_infer.cli.info import main as info_main
from qgen_infer.errors import FormatError
from qgen_infer.export import build_qgen_file
from qgen_infer.format import FORMAT_VERSION, bounded_json, read_qgen, serialize, write_qgen
from qgen_infer.format.writer import checksum, data_region


@pytest.fixture(scope="module")
def valid_blob(packed_blob) -> bytes:
    return packed_blob("mlp", 3, "channel")


@pytest.fixture(scope="module")
def valid_dcgan_blob(packed_blob) -> bytes:
    return packed_blob("dcgan", 2, "tensor")


def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header: dict | str, data: bytes, fix_checksum: bool = True) -> bytes:
    if isinstance(header, dict) and fix_checksum and "__metadata__" in header:
        header["__metadata__"]["checksum"] = checksum(data, header["__metadata__"])
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def with_metadata(blob: bytes, **changes: str | None) -> bytes:
    header, data = split(blob)
    for key, value in changes.items():
        if value is None:
            header["__metadata__"].pop(key)
        else:
            header["__metadata__"][key] = value
    return join(header, data, fix_checksum=False)


def edit_layers(blob: bytes, edit: Callable[[list], None]) -> bytes:
    header, data = split(blob)
    layers = json.loads(header["__metadata__"]["layers"])
    edit(layers)
    header["__metadata__"]["layers"] = json.dumps(layers)
    return join(header, data, fix_checksum=False)


def with_tensors(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    """Re-serialise with edited tensors and a *correct* checksum (so only the edit is wrong)."""
    header, _ = split(blob)
    tensors = safetensors.torch.load(blob)
    edit(tensors)
    meta = dict(header["__metadata__"])
    draft = safetensors.torch.save(tensors, meta)
    meta["checksum"] = checksum(bytes(data_region(draft)), meta)
    return safetensors.torch.save(tensors, meta)


def _set(name: str, value: torch.Tensor) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        tensors[name] = value
    return edit


def _scale_to(value: float) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        tensors["generator.fc1.scale"] = tensors["generator.fc1.scale"].clone()
        tensors["generator.fc1.scale"][0] = value
    return edit


def _overlapping(blob: bytes) -> bytes:
    header, data = split(blob)
    header["generator.fc1.beta"]["data_offsets"] = header["generator.fc1.alpha"]["data_offsets"]
    return join(header, data, fix_checksum=False)


def _out_of_range(blob: bytes) -> bytes:
    header, data = split(blob)
    start, end = header["generator.fc1.codes"]["data_offsets"]
    header["generator.fc1.codes"]["data_offsets"] = [start, end + 10**9]
    return join(header, data, fix_checksum=False)


def _duplicate_name(blob: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", blob)
    text = blob[8:8 + n].decode().rstrip()
    entry = '"generator.fc1.alpha":' + json.dumps(split(blob)[0]["generator.fc1.alpha"])
    return join(text[:-1] + "," + entry + "}", blob[8 + n:])


def _duplicate_metadata_key(blob: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", blob)
    text = blob[8:8 + n].decode().replace('"__metadata__": {', '"__metadata__": {"bits": "2", ')
    text = text.replace('"__metadata__":{', '"__metadata__":{"bits":"2",')
    assert '"bits":"2"' in text or '"bits": "2"' in text
    return join(text, blob[8 + n:])


def _absurd_sensing_shape(blob: bytes) -> bytes:
    header, data = split(blob)
    # a zero-byte tensor that safetensors accepts; its declared shape is what must be caught
    header["sensing.extra"] = {"dtype": "F32", "shape": [2**60, 0],
                               "data_offsets": [len(data), len(data)]}
    return join(header, data)


def _flip_data_byte(blob: bytes) -> bytes:
    raw = bytearray(blob)
    raw[-5] ^= 0x10
    return bytes(raw)


def _header_too_long(blob: bytes) -> bytes:
    return struct.pack("<Q", 2**40) + blob[8:]


def _header_past_end(blob: bytes) -> bytes:
    return struct.pack("<Q", len(blob)) + blob[8:]


def _nonzero_padding(blob: bytes) -> bytes:
    def edit(tensors: dict) -> None:
        codes = tensors["generator.fc1.codes"].clone()  # 12x10 3-bit codes: 360 of 384 bits
        codes[-1] |= 0x80
        tensors["generator.fc1.codes"] = codes
    return with_tensors(blob, edit)


# name -> (corrupt the valid MLP file, the words the error must contain)
CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty file": (lambda b: b"", "truncated"),
    "truncated length": (lambda b: b[:5], "truncated"),
    "truncated header": (lambda b: b[:60], "runs past the end"),
    "truncated data": (lambda b: b[:-7], "not a valid safetensors"),
    "header length beyond file": (_header_past_end, "runs past the end"),
    "header length absurd": (_header_too_long, "exceeds"),
    "not json header": (lambda b: join("[1, 2, 3]", b""), "not a JSON object"),
    "garbage header": (lambda b: join("{nope" + " " * 20, b""), "not a valid safetensors"),
    "overlapping offsets": (_overlapping, "not a valid safetensors"),
    "out of range offsets": (_out_of_range, "not a valid safetensors"),
    "duplicate tensor name": (_duplicate_name, "duplicate name 'generator.fc1.alpha'"),
    "duplicate metadata key": (_duplicate_metadata_key, "duplicate name 'bits'"),
    "deeply nested header": (lambda b: join('{"a":' + "[" * 100_000 + "}", b""),
                             "not a valid safetensors"),
    "no metadata": (lambda b: with_metadata(b, **dict.fromkeys(split(b)[0]["__metadata__"])),
                    "no qgen metadata"),
    "foreign format": (lambda b: with_metadata(b, format="gguf"), "not 'qgen'"),
    "unknown format version": (lambda b: with_metadata(b, format_version="4"),
                               "unsupported format version '4'"),
    "float16 sensing in a version-2 file": (
        lambda b: with_tensors(b, lambda t: t.update({"sensing.fc1.weight":
                                                      t["sensing.fc1.weight"].half()})),
        "'sensing.fc1.weight' has dtype F16, expected float32"),
    "bits 5": (lambda b: with_metadata(b, bits="5"), "bits must be one of"),
    "bits 0": (lambda b: with_metadata(b, bits="0"), "bits must be one of"),
    "bits text": (lambda b: with_metadata(b, bits="three"), "bits must be one of"),
    "unknown layout": (lambda b: with_metadata(b, layout="planes"), "unknown packed layout"),
    "missing metadata key": (lambda b: with_metadata(b, solver=None), "lacks solver"),
    "unknown metadata key": (lambda b: with_metadata(b, extra="1"), "unknown metadata keys"),
    "bad checksum form": (lambda b: with_metadata(b, checksum="md5:abc"), "checksum must be"),
    "checksum mismatch": (_flip_data_byte, "checksum mismatch"),
    "layers not json": (lambda b: with_metadata(b, layers="[{not json"), "not valid JSON"),
    "config not json": (lambda b: with_metadata(b, config="{'family': 'mlp'}"),
                        "not valid JSON"),
    "nan in json": (lambda b: edit_layers(b, lambda ls: ls[0].update(negative_slope=float("nan"))),
                    "not valid JSON"),
    "deeply nested metadata": (lambda b: with_metadata(b, training="[" * 100_000 + "]" * 100_000),
                               "nested 100000 levels"),
    "huge metadata value": (lambda b: with_metadata(b, training=json.dumps("x" * (2 << 20))),
                            "characters long"),
    "layers not a list": (lambda b: with_metadata(b, layers="{}"), "non-empty JSON list"),
    "config not an object": (lambda b: with_metadata(b, config="[]"), "must be a JSON object"),
    "unknown layer kind": (lambda b: edit_layers(b, lambda ls: ls[0].update(kind="lstm")),
                           "unknown kind 'lstm'"),
    "unknown layer key": (lambda b: edit_layers(b, lambda ls: ls[0].update(groups=2)),
                          "unknown keys ['groups']"),
    "bad layer name": (lambda b: edit_layers(b, lambda ls: ls[0].update(name="../x")),
                       "invalid name"),
    "duplicate layer name": (lambda b: edit_layers(b, lambda ls: ls[1].update(name="fc1")),
                             "duplicate layer name"),
    "unknown activation": (lambda b: edit_layers(b, lambda ls: ls[0].update(activation="gelu")),
                           "unknown activation 'gelu'"),
    "absurd weight shape": (lambda b: edit_layers(b, lambda ls: ls[0].update(
        weight_shape=[2**60, 0])), "weight_shape must be an integer in [1,"),
    "weight shape not ints": (lambda b: edit_layers(b, lambda ls: ls[0].update(
        weight_shape=[12.0, 10])), "weight_shape must be"),
    "wrong weight shape": (lambda b: edit_layers(b, lambda ls: ls[0].update(
        weight_shape=[12, 11])), "packed codes 'generator.fc1.codes' has shape"),
    "bad granularity": (lambda b: with_metadata(b, quantizer=json.dumps({"granularity": "row"})),
                        "granularity must be one of"),
    "wrong scale length": (lambda b: with_metadata(b, quantizer=json.dumps(
        {"granularity": "tensor"})), "'generator.fc1.scale' has shape [12], expected [1]"),
    "absurd sensing shape": (_absurd_sensing_shape, "unknown tensor 'sensing.extra'"),
    "missing tensor": (lambda b: with_tensors(b, lambda t: t.pop("generator.fc2.zero")),
                       "missing tensor 'generator.fc2.zero'"),
    "unknown tensor": (lambda b: with_tensors(b, _set("generator.fc9.codes",
                                                      torch.zeros(4, dtype=torch.uint8))),
                       "unknown tensor 'generator.fc9.codes'"),
    "codes wrong dtype": (lambda b: with_tensors(b, _set("generator.fc1.codes",
                                                         torch.zeros(12))),
                          "'generator.fc1.codes' has dtype F32, expected uint8"),
    "scale wrong dtype": (lambda b: with_tensors(b, _set("generator.fc1.scale",
                                                         torch.ones(12, dtype=torch.float64))),
                          "has dtype F64, expected float32"),
    "codes one word short": (lambda b: with_tensors(b, _set("generator.fc1.codes",
                                                            torch.zeros(44, dtype=torch.uint8))),
                             "has shape [44], expected [48]"),
    "nan scale": (lambda b: with_tensors(b, _scale_to(float("nan"))), "non-finite"),
    "inf scale": (lambda b: with_tensors(b, _scale_to(float("inf"))), "non-finite"),
    "zero scale": (lambda b: with_tensors(b, _scale_to(0.0)), "non-positive scales"),
    "nan zero": (lambda b: with_tensors(b, _set("generator.fc2.zero",
                                                torch.full((12,), float("nan")))), "non-finite"),
    "inf beta": (lambda b: with_tensors(b, _set("generator.fc3.beta",
                                                torch.full((36,), float("-inf")))), "non-finite"),
    "nan sensing": (lambda b: with_tensors(b, lambda t: t["sensing.fc1.weight"].fill_(
        float("nan"))), "'sensing.fc1.weight' holds non-finite"),
    "nonzero padding": (_nonzero_padding, "non-zero padding bits"),
}


def test_round_trip_and_plain_safetensors(tmp_path: Path, tiny_checkpoint) -> None:
    qf, _ = build_qgen_file(load_checkpoint(tiny_checkpoint("dcgan", 2, "channel")))
    path = tmp_path / "m.qgen"
    write_qgen(path, qf)
    back = read_qgen(path)
    assert back.bits == 2 and back.format_version == FORMAT_VERSION
    assert back.config == qf.config and back.solver == qf.solver
    assert [layer.description() for layer in back.layers] == \
        [layer.description() for layer in qf.layers]
    for a, b in zip(back.packed_layers, qf.packed_layers, strict=True):
        for field in ("codes", "scale", "zero", "alpha", "beta"):
            assert torch.equal(getattr(a, field), getattr(b, field))
    assert all(torch.equal(back.sensing[k], v) for k, v in qf.sensing.items())
    # the safetensors library alone reads it
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == "qgen"
        assert f.get_tensor("generator.up1.codes").dtype == torch.uint8
    assert set(safetensors.torch.load_file(path)) == set(split(path.read_bytes())[0]) - {
        "__metadata__"}


def test_codes_are_word_aligned_in_the_data_region(valid_dcgan_blob: bytes) -> None:
    header, _ = split(valid_dcgan_blob)
    for name, entry in header.items():
        if name.endswith(".codes"):
            start, end = entry["data_offsets"]
            assert start % 4 == 0 and (end - start) % 4 == 0


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_malformed_file_is_one_format_error(case: str, valid_blob: bytes, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    corrupt, words = CORRUPTIONS[case]
    path = tmp_path / "bad.qgen"
    path.write_bytes(corrupt(valid_blob))
    with pytest.raises(FormatError) as info:
        read_qgen(path)
    message = str(info.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 500
    assert info_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qgen-info: error: ") and words in err


def test_valid_blob_reads(valid_blob: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ok.qgen"
    path.write_bytes(valid_blob)
    assert read_qgen(path).bits == 3


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_byte_corruption_never_escapes(valid_blob: bytes, tmp_path: Path, data) -> None:
    raw = bytearray(valid_blob)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    path = tmp_path / "fuzz.qgen"
    path.write_bytes(bytes(raw[:cut]))
    try:
        read_qgen(path)
    except FormatError as exc:
        assert "\n" not in str(exc)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    for target in (tmp_path / "nope.qgen", tmp_path):
        with pytest.raises(FormatError, match="does not exist"):
            read_qgen(target)


def test_nesting_depth_ignores_brackets_in_strings() -> None:
    assert bounded_json.nesting_depth('{"a": "[[[[", "b": [1, [2]]}') == 3
    assert bounded_json.nesting_depth('"\\"[["') == 0
    assert bounded_json.loads('{"x": [1, 2]}', "x") == {"x": [1, 2]}
    with pytest.raises(FormatError, match="Infinity is not allowed"):
        bounded_json.loads("[Infinity]", "v")


@pytest.fixture(scope="module")
def f16_blob(tiny_checkpoint) -> bytes:
    """The valid MLP file with its sensing tensors stored as float16 (format version 3)."""
    qf, _ = build_qgen_file(load_checkpoint(tiny_checkpoint("mlp", 3, "channel")),
                            sensing_dtype="fp16")
    return serialize(qf)


def test_float16_sensing_round_trip(f16_blob: bytes, valid_blob: bytes, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, ref = tmp_path / "h.qgen", tmp_path / "f.qgen"
    path.write_bytes(f16_blob)
    ref.write_bytes(valid_blob)
    back, full = read_qgen(path), read_qgen(ref)
    assert back.format_version == 3 and back.sensing_dtype == "fp16"
    assert split(f16_blob)[0]["__metadata__"]["format_version"] == "3"
    for name, value in full.sensing.items():
        assert back.sensing[name].dtype == torch.float16
        assert torch.equal(back.sensing[name], value.half())
    numpy_view = read_qgen(path, tensors="numpy")  # qgen-info's torch-free path
    assert str(numpy_view.sensing["fc1.weight"].dtype) == "float16"
    assert info_main([str(path)]) == 0
    assert "fp16 in" in capsys.readouterr().out


F16_CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "float32 sensing in a version-3 file": (
        lambda b: with_tensors(b, lambda t: t.update({"sensing.fc2.bias":
                                                      t["sensing.fc2.bias"].float()})),
        "'sensing.fc2.bias' has dtype F32, expected float16"),
    "infinite float16 sensing": (
        lambda b: with_tensors(b, lambda t: t["sensing.fc1.weight"].fill_(float("inf"))),
        "'sensing.fc1.weight' holds non-finite"),
    "float16 generator tensor": (
        lambda b: with_tensors(b, _set("generator.fc1.alpha", torch.ones(12).half())),
        "'generator.fc1.alpha' has dtype F16, expected float32"),
    "version 3 told it is version 2": (lambda b: with_metadata(b, format_version="2"),
                                       "has dtype F16, expected float32"),
}


@pytest.mark.parametrize("case", sorted(F16_CORRUPTIONS))
def test_malformed_float16_file_is_one_format_error(case: str, f16_blob: bytes,
                                                    tmp_path: Path) -> None:
    corrupt, words = F16_CORRUPTIONS[case]
    path = tmp_path / "bad.qgen"
    path.write_bytes(corrupt(f16_blob))
    with pytest.raises(FormatError, match=None) as info:
        read_qgen(path)
    assert words in str(info.value) and "\n" not in str(info.value)
