"""The user's surface held consistent: every command's ``--help`` (each option explained, each
default stated once, one name per meaning across the seven commands, old spellings still
accepted but not shown), the README's commands written in that scheme, and the public Python
API (``__all__``, signatures, reprs, ``qgen_infer.measure``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import qgen_infer
from qgen_infer.cli import common, measure, reconstruct
from qgen_infer.errors import QgenError
from qgen_infer.export import export_checkpoint

REPO = Path(__file__).resolve().parents[1]
# every console script setup.py installs, so that a new command is held to the scheme too
COMMANDS = {name: importlib.import_module(f"qgen_infer.cli.{module}") for name, module in
            re.findall(r'"(qgen-[a-z]+)=qgen_infer\.cli\.(\w+):main"',
                       (REPO / "setup.py").read_text())}
# one spelling per meaning: an option with any of these strings has exactly these, wherever
# it appears (so -s is always the sparsity, -m always the number of measurements)
SHARED_FLAGS = [["-T", "--steps"], ["-s", "--sparsity"], ["-m", "--measurements"]]
COMPUTING = ("qgen-train", "qgen-eval", "qgen-measure", "qgen-reconstruct", "qgen-demo")
MODEL_INPUT = {"qgen-eval": "MODEL.pt", "qgen-export": "MODEL.pt", "qgen-info": "MODEL.qgen",
               "qgen-measure": "MODEL.qgen", "qgen-reconstruct": "MODEL.qgen"}


def test_the_seven_commands_and_any_later_one_are_walked() -> None:
    assert set(COMMANDS) >= {"qgen-train", "qgen-demo", *MODEL_INPUT}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def _help_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._expand_help(action)


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_every_option_is_explained_and_its_default_stated_once(prog: str) -> None:
    parser = COMMANDS[prog].build_parser()
    assert parser.prog == prog and parser.description
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{prog} {name}: no help"
        text = _help_of(parser, action)
        assert "(default: None)" not in text and "(default: False)" not in text, (prog, text)
        assert text.lower().count("(default") <= 1, f"{prog} {name}: {text}"
        if action.option_strings and action.default is not None and action.default is not False:
            assert "default" in text.lower(), f"{prog} {name}: default {action.default} unstated"


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_one_name_per_meaning(prog: str) -> None:
    parser = COMMANDS[prog].build_parser()
    by_flag = {s: a for a in _options(parser) for s in a.option_strings}
    for flags in SHARED_FLAGS:
        for flag in flags:
            if flag in by_flag:
                assert by_flag[flag].option_strings == flags, (prog, flag)
    shown = set(by_flag)
    assert "--model" not in shown and "--json" not in shown  # inputs are positional
    # -o is the output wherever there is one (--out FILE or --out-dir DIR), and nothing else
    outputs = [a for a in _options(parser) if {"--out", "--out-dir"} & set(a.option_strings)]
    assert [a.option_strings[0] for a in outputs] == ["-o"] * len(outputs), prog
    assert "-o" not in by_flag or by_flag["-o"] in outputs, prog
    if prog in MODEL_INPUT:  # the model is the first positional, named by its file type
        first = next(a for a in _options(parser) if not a.option_strings)
        assert (first.dest, first.metavar) == ("model", MODEL_INPUT[prog])
    for action in _options(parser):  # a model input, in any command, says which kind of file
        if action.dest == "model" and not action.option_strings:
            assert action.metavar in ("MODEL.pt", "MODEL.qgen"), prog
    for action in _options(parser):
        if "--out" in action.option_strings:  # --out names a file, --out-dir a folder
            assert action.metavar.startswith("FILE"), prog
        if "--out-dir" in action.option_strings:
            assert action.metavar == "DIR", prog
        if "--measurements" in action.option_strings:  # -m is a count wherever it appears
            assert action.option_strings == ["-m", "--measurements"] and action.type is int
    if prog in COMPUTING:
        assert "--threads" in shown, prog
    if "--data" in shown:
        assert by_flag["--data"].choices == common.DATASET_NAMES


def test_dataset_names_are_the_libraries() -> None:
    from qgen_infer.data import DATASETS

    assert common.DATASET_NAMES == DATASETS


@pytest.mark.parametrize("prog,old,new", [
    ("qgen-reconstruct", ["--model", "m.qgen", "--measurements", "y.npy", "--out", "r"],
     ["m.qgen", "y.npy", "--out-dir", "r"]),
    ("qgen-reconstruct", ["m.qgen", "--measurements", "y.npy", "--out=r"],
     ["m.qgen", "y.npy", "--out-dir", "r"]),
    ("qgen-reconstruct", ["--measurements=y.npy", "--model", "m.qgen", "--out-dir", "r"],
     ["m.qgen", "y.npy", "--out-dir", "r"]),
    ("qgen-measure", ["--model", "m.qgen", "--data", "digits", "--out", "y.npy"],
     ["m.qgen", "--data", "digits", "--out", "y.npy"]),
    ("qgen-train", ["--out", "runs/a", "--epochs", "2"], ["--out-dir", "runs/a", "--epochs", "2"]),
    ("qgen-eval", ["model.pt", "--json", "r.json"], ["model.pt", "--out", "r.json"]),
    ("qgen-demo", ["--out", "d"], ["--out-dir", "d"]),
])
def test_old_spellings_still_parse(prog: str, old: list[str], new: list[str]) -> None:
    parser = COMMANDS[prog].build_parser()
    assert vars(parser.parse_args(old)) == vars(parser.parse_args(new))
    assert "--model" not in parser.format_help()


def test_a_missing_input_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert reconstruct.main(["m.qgen", "--out-dir", "r"]) == 2
    err = capsys.readouterr().err
    assert "Y.npy" in err and "required" in err


def _readme_commands() -> list[list[str]]:
    """The qgen-* command lines of the README's code blocks (continuations joined)."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" #")[0]) for line in lines
            if line.strip().split(" ")[0] in COMMANDS]


def test_readme_commands_use_the_current_names() -> None:
    commands = _readme_commands()
    assert {c[0] for c in commands} >= {"qgen-train", "qgen-export", "qgen-measure",
                                        "qgen-reconstruct", "qgen-eval", "qgen-info"}
    for argv in commands:
        parser = COMMANDS[argv[0]].build_parser()
        parser.parse_args(argv[1:])  # exits (a test error) if the line does not parse
        # no old spelling: the parse is the same with the renames switched off
        parser._renamed, parser._input_flags = {}, [None] * len(parser._input_flags)
        parser.allow_abbrev = False  # --out would otherwise abbreviate --out-dir
        parser.parse_args(argv[1:])


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_help_does_not_import_torch(prog: str) -> None:
    module = COMMANDS[prog].__name__
    code = (f"import io, sys, contextlib\nfrom {module} import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['--help']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_resume_help_names_the_one_rule() -> None:
    """qgen-train --resume's help lists the flags of train/config.py's RESUME_MAY_CHANGE (the
    rule the trainer enforces); what it never takes from the checkpoint is a part of those."""
    from qgen_infer.train.config import RESUME_LOCAL, RESUME_MAY_CHANGE

    parser = COMMANDS["qgen-train"].build_parser()
    resume = next(a for a in _options(parser) if a.dest == "resume")
    flags = {a.dest: a.option_strings[-1] for a in _options(parser) if a.option_strings}
    named = set(re.findall(r"--[a-z-]+", resume.help)) - {"--out-dir"}
    assert named == {flags[d] for d in RESUME_MAY_CHANGE if d in flags and d != "out"}
    assert RESUME_LOCAL <= RESUME_MAY_CHANGE


def test_qgen_info_reads_a_file_without_torch() -> None:
    """The file, fully validated, and its summary: numpy views, no torch (a fraction of a
    second); only --dispatch, which asks the engine, imports it."""
    model = REPO / "models" / "mnist-m25-1bit.qgen"
    code = ("import io, sys, contextlib\nfrom qgen_infer.cli.info import main\n"
            "out = io.StringIO()\n"
            f"with contextlib.redirect_stdout(out):\n    assert main([{str(model)!r}]) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert '32.0x smaller than fp32 weights' in out.getvalue(), out.getvalue()\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the Python API ---------------------------------------------------------------------------

def test_public_names_and_signatures() -> None:
    assert sorted(dir(qgen_infer)) == sorted(qgen_infer.__all__) == sorted([
        "DataError", "FormatError", "QgenError", "__version__", "load", "measure", "psnr",
        "reconstruct", "ssim"])
    for name in ("load", "measure", "reconstruct", "psnr", "ssim"):
        assert inspect.getdoc(getattr(qgen_infer, name)), name
    load = inspect.signature(qgen_infer.load).parameters
    assert list(load) == ["path", "backend", "device"] and load["backend"].default == "auto"
    meas = inspect.signature(qgen_infer.measure).parameters
    assert list(meas) == ["model", "x", "noise_std", "seed"]
    assert (meas["noise_std"].default, meas["seed"].default) == (0.0, None)
    rec = inspect.signature(qgen_infer.reconstruct).parameters
    keywords = {n for n, p in rec.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords >= {"steps", "restarts", "sparsity", "step_size", "batch_size", "seed",
                        "project", "cuda_graph", "precision", "on_batch"}
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rec.values())
    with pytest.raises(AttributeError):
        qgen_infer.no_such_name  # noqa: B018
    # the CLI's default split of a data set is the library's
    from qgen_infer.data import load_split

    split = inspect.signature(load_split).parameters["split"].default
    assert split == measure.build_parser().get_default("split") == "eval"


@pytest.fixture(scope="module")
def model_file(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_checkpoint(tiny_checkpoint("mlp", 2, "tensor"),
                             tmp_path_factory.mktemp("surface") / "m.qgen").path


def test_reprs_are_readable(model_file: Path) -> None:
    model = qgen_infer.load(model_file, backend="reference")
    text = repr(model)
    assert text.startswith("QgenModel(") and "bits=2" in text and "'reference'" in text
    assert "0x" not in text and "\n" not in text and str(model_file) in text
    assert repr(model.backend) == "ReferenceBackend()"
    if _has_cpu():
        cpu = qgen_infer.load(model_file, backend="cpu")
        assert repr(cpu.backend).startswith("CpuBackend(isa=") and "'cpu'" in repr(cpu)


def _has_cpu() -> bool:
    from qgen_infer.engine import backend_available

    return backend_available("cpu")


def _images(model: Any, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, *model.config["image_shape"])).astype(np.float32)


def test_measure_is_the_sensing_network_plus_seeded_noise(model_file: Path) -> None:
    model = qgen_infer.load(model_file, backend="reference")
    x = _images(model, 5)
    with torch.no_grad():
        clean = model.sensing(torch.from_numpy(x))
    y = qgen_infer.measure(model, x)
    assert y.dtype == torch.float32 and torch.equal(y, clean)
    # batch 1 (another matmul shape: equal up to float rounding)
    torch.testing.assert_close(qgen_infer.measure(model, torch.from_numpy(x[:1])), clean[:1],
                               rtol=1e-6, atol=1e-7)
    noisy = qgen_infer.measure(model, x, noise_std=0.5, seed=3)
    want = clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, want)
    assert torch.equal(noisy, qgen_infer.measure(model, x, noise_std=0.5, seed=3))
    assert not torch.equal(noisy, qgen_infer.measure(model, x, noise_std=0.5, seed=4))


@pytest.mark.parametrize("x,kwargs,match", [
    ("ints", {}, "float"), ("shape", {}, "shape"), ("nan", {}, "NaN"),
    ("ok", {"noise_std": -1.0}, "noise_std"), ("ok", {"noise_std": float("inf")}, "noise_std"),
    ("ok", {"seed": -1}, "seed"), ("empty", {}, "no images"),
])
def test_measure_refuses_bad_input(model_file: Path, x: str, kwargs: dict[str, Any],
                                   match: str) -> None:
    model = qgen_infer.load(model_file, backend="reference")
    good = _images(model, 2)
    arrays = {"ok": good, "ints": (good * 100).astype(np.int64), "shape": good[:, :, :-1],
              "nan": np.where(good > 0.9, np.nan, good).astype(np.float32),
              "empty": good[:0]}
    with pytest.raises(QgenError, match=match):
        qgen_infer.measure(model, arrays[x], **kwargs)


def test_measure_cli_equals_the_api(model_file: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    model = qgen_infer.load(model_file, backend="reference")
    x = _images(model, 3)
    np.save(tmp_path / "x.npy", x)
    assert measure.main([str(model_file), "--images", str(tmp_path / "x.npy"), "--noise-std",
                         "0.25", "--seed", "7", "--out", str(tmp_path / "y.npy")]) == 0
    assert "y std" in capsys.readouterr().out
    want = qgen_infer.measure(model, x, noise_std=0.25, seed=7).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def test_data_flag_errors_name_the_flags(model_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "y.npy")
    assert measure.main([str(model_file), "--data", "mnist", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-root" in err and "root=" not in err, err
    assert measure.main([str(model_file), "--data", "digits", "--data-root", str(tmp_path),
                         "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop --data-root" in err, err
    assert not Path(out).exists()


def test_reconstruct_outputs_say_what_they_scored(model_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    model = qgen_infer.load(model_file, backend="reference")
    x = _images(model, 3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", qgen_infer.measure(model, x).numpy())
    out = tmp_path / "rec"
    argv = [str(model_file), str(tmp_path / "y.npy"), "--truth", str(tmp_path / "x.npy"),
            "--out-dir", str(out), "--backend", "reference", "--quiet", "--steps", "1"]
    assert reconstruct.main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["inputs"] == {"measurements": str(tmp_path / "y.npy"),
                                             "truth": str(tmp_path / "x.npy")}
    assert metrics["grid"] == {"file": "grid.png", "images": "the first 3 of 3 (indices 0-2)",
                               "columns": ["truth", "recon"]}
    with Image.open(out / "grid.png") as grid:  # the title widens even a 3-image grid
        assert grid.width >= 6 * len("2-bit reference: images 0-2 of 3")
