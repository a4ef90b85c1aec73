"""Smoke tests of the paper-reproduction scripts (paper/reproduce_mnist.py, reproduce_colour.py):
their planning, resume decisions, tables, comparison text, plots and model shipping, on small fake
results. Nothing is trained here."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PAPER = Path(__file__).resolve().parents[1] / "paper"
sys.path.insert(0, str(PAPER))

from paper_repro import commands, plan, tables  # noqa: E402
from paper_repro.colour_data import colour_sets, find_roots, stl10_folder  # noqa: E402
from paper_repro.execute import QueueOptions, describe_plan, next_action  # noqa: E402
from paper_repro.records import (  # noqa: E402
    FP32_EVAL,
    PACKED_ENGINE,
    EvalRecord,
    collect,
    save_record,
)
from paper_repro.status import RunState, eval_curve, trained_epochs  # noqa: E402


def _script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, PAPER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(spec: plan.RunSpec, psnr: float, ssim: float, epochs: int | None = None) -> EvalRecord:
    packed = spec.packed
    return EvalRecord.for_spec(
        spec, epochs=spec.epochs if epochs is None else epochs, psnr=psnr, ssim=ssim,
        images=1000, engine=PACKED_ENGINE if packed else FP32_EVAL,
        backend="cpu" if packed else "fake-quant fp32",
        stored_bytes=(130_000 * spec.bits if packed else 4_150_000), fp32_bytes=4_150_000,
        file_bytes=2_800_000 if packed else None)


def _fake_results(runs: Path, specs: list[plan.RunSpec], psnr: dict[int, float]) -> None:
    """Records for every m=25, s=100 run: PSNR by bit width (DCS under key 0)."""
    for spec in specs:
        if spec.m == 25 and spec.s in (100, None):
            key = 0 if spec.method == plan.DCS else spec.bits
            d = runs / "eval" / spec.name
            d.mkdir(parents=True)
            save_record(d / "eval.json", _record(spec, psnr[key], 0.5 + psnr[key] / 100))


def test_mnist_plan_order_and_names() -> None:
    specs = plan.mnist_plan(data_root="/data", epochs=60)
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 2 * (5 * 6 + 1)
    # the lead's paper/train_mnist_m25.sh folders come first, under the same names
    assert set(names[:6]) == {"mnist-m25-sdlss-1", "mnist-m25-sdlss-2", "mnist-m25-sdlss-3",
                              "mnist-m25-sdlss-4", "mnist-m25-sdlss-32", "mnist-m25-dcs-32"}
    # then the s sweep at 1 and 32 bits for m=25, then m=100
    tier1 = [s for s in specs if s.tier == 1]
    assert {s.bits for s in tier1} == {1, 32} and {s.m for s in tier1} == {25}
    assert names.index("mnist-m25-s10-sdlss-1") < names.index("mnist-m100-sdlss-1")
    assert names.index("mnist-m100-s200-sdlss-32") < names.index("mnist-m25-s10-sdlss-2")
    assert [s.tier for s in specs] == sorted(s.tier for s in specs)
    assert plan.select(specs, ["mnist-m100-dcs-*"])[0].name == "mnist-m100-dcs-32"


def test_commands_resume_and_engines(tmp_path: Path) -> None:
    specs = {s.name: s for s in plan.mnist_plan(data_root="/d", epochs=3, measurements=[25])}
    packed, dcs = specs["mnist-m25-s10-sdlss-2"], specs["mnist-m25-dcs-32"]
    p = commands.paths_for(tmp_path, packed)
    train = commands.train_command(packed, p, threads=1, resume=True)
    assert train[:3] == ["qgen-train", "--out", str(tmp_path / packed.name)]
    assert train[-1] == "--resume" and "-s" in train and "10" in train
    assert "-s" not in commands.train_command(dcs, commands.paths_for(tmp_path, dcs), threads=1,
                                              resume=False)
    steps = commands.eval_commands(packed, p, threads=1, backend="auto")
    assert [c[0] for c in steps] == ["qgen-export", "qgen-measure", "qgen-reconstruct"]
    assert all(str(tmp_path / "eval") in " ".join(c[2:]) for c in steps)  # run folder: read only
    dsteps = commands.eval_commands(dcs, commands.paths_for(tmp_path, dcs), threads=1,
                                    backend="auto")
    assert [c[0] for c in dsteps] == ["qgen-eval"]


def test_overflow_rate_names_and_commands(tmp_path: Path) -> None:
    specs = {s.name: s for s in plan.mnist_plan(data_root="/d", epochs=3, measurements=[25],
                                                overflow_rates={2: 0.05, 3: 0.025})}
    # the rate is part of the name: the max|w|-range runs keep theirs and are never mistaken
    assert "mnist-m25-sdlss-2" not in specs and "mnist-m25-sdlss-4" in specs
    two, three = specs["mnist-m25-sdlss-2-ovf05"], specs["mnist-m25-s10-sdlss-3-ovf2p5"]
    assert (two.overflow_rate, three.overflow_rate) == (0.05, 0.025)
    assert all(s.overflow_rate == 0 for s in specs.values() if s.bits in (1, 4, 32))
    train = commands.train_command(two, commands.paths_for(tmp_path, two), threads=1,
                                   resume=False)
    assert train[train.index("--overflow-rate") + 1] == "0.05"
    plain = specs["mnist-m25-sdlss-1"]
    assert "--overflow-rate" not in commands.train_command(
        plain, commands.paths_for(tmp_path, plain), threads=1, resume=False)
    assert "--device" not in train
    gpu = commands.train_command(two, commands.paths_for(tmp_path, two), threads=1,
                                 resume=True, device="cuda")
    assert gpu[gpu.index("--device") + 1] == "cuda" and gpu[-1] == "--resume"
    mnist = _script("reproduce_mnist")
    parse = mnist.build_parser().parse_args
    names = {s.name for s in mnist.plan(parse(["-m", "25"]))}
    assert "mnist-m25-sdlss-2-ovf05" in names  # the default rate at 2 bits
    names = {s.name for s in mnist.plan(parse(["-m", "25", "--overflow-rate", "2=0"]))}
    assert "mnist-m25-sdlss-2" in names
    for bad in ("1=0.1", "2=1.5", "2:0.1", "x=0.1"):
        with pytest.raises(SystemExit) as err:
            parse(["--overflow-rate", bad])
        assert err.value.code == 2


def test_status_and_next_action(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    (run / "log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # cut short by a crash
    assert trained_epochs(run) == 2
    spec = plan.mnist_plan(data_root=None, epochs=3, measurements=[25])[0]
    rec2 = _record(spec, 20.0, 0.8, epochs=2)
    assert tables.epochs_note(rec2) == "2 ep*/3"  # short of the target: marked in every table
    assert next_action(spec, RunState(2, 3, None), None, False) == "train"
    assert next_action(spec, RunState(2, 3, 123), None, False) == "busy"
    assert next_action(spec, RunState(2, 3, 123), None, True) == "evaluate"
    assert next_action(spec, RunState(2, 3, 123), rec2, True) == "busy"  # already scored at 2
    assert next_action(spec, RunState(3, 3, None), rec2, False) == "evaluate"  # stale record
    assert next_action(spec, RunState(3, 3, 99), _record(spec, 20, 0.8), False) == "done"
    # --score-only: nothing is trained; partial checkpoints are scored once
    assert next_action(spec, RunState(2, 3, None), None, False, score_only=True) == "evaluate"
    assert next_action(spec, RunState(2, 3, None), rec2, False, score_only=True) == "done"
    assert next_action(spec, RunState(0, 3, None), None, False, score_only=True) == "untrained"


def test_mnist_tables_and_comparison(tmp_path: Path) -> None:
    specs = plan.mnist_plan(data_root=None, epochs=60)
    _fake_results(tmp_path, specs, {1: 19.0, 2: 20.0, 3: 20.5, 4: 20.9, 32: 21.0, 0: 20.4})
    recs = collect(tmp_path, specs)
    assert len(recs) == 6
    results = tables.Results(specs, recs, {s.name: "not started" for s in specs})
    text = tables.mnist_report(results, ["- command: `x`"], ["mnist-figure3.png"])
    assert "| 1-bit SDLSS | 19.00 | 0.6900 | 60 ep | packed engine (cpu)" in text
    assert "qgen-eval (fp32 checkpoint)" in text
    # gaps and the SDLSS authors' level are computed from the records, never typed in
    assert "1-bit SDLSS (60 ep) is 2.00 dB below and 0.020 SSIM below 32-bit SDLSS" in text
    assert "about 2 dB and 0.07 SSIM below" in text
    assert "21.00 dB (60 ep) against the SDLSS authors' 21.3 dB (0.30 dB lower)" in text
    assert "m = 100, s = 100: no scored 32-bit SDLSS model yet" in text
    assert "| 10 | – |" in text and "`mnist-m100-sdlss-1`: not started" in text


def test_mnist_s_sweep_gap_sentence(tmp_path: Path) -> None:
    specs = plan.mnist_plan(data_root=None, epochs=40)
    psnr = {(32, 10): 17.5, (32, 100): 21.0, (1, 10): 15.0, (1, 100): 19.5}
    for spec in specs:
        if spec.m == 25 and (spec.bits, spec.s) in psnr:
            d = tmp_path / "eval" / spec.name
            d.mkdir(parents=True)
            save_record(d / "eval.json", _record(spec, psnr[(spec.bits, spec.s)], 0.8))
    results = tables.Results(specs, collect(tmp_path, specs), {})
    text = "\n".join(tables.mnist_comparison(results))
    assert ("m = 25, s sweep: 1-bit SDLSS is 2.50 (s = 10), 1.50 (s = 100) dB below 32-bit; "
            "PSNR rises with s at both widths") in text
    save_record(tmp_path / "eval" / "mnist-m25-s10-sdlss-1" / "eval.json",
                _record(next(s for s in specs if s.name == "mnist-m25-s10-sdlss-1"), 20.0, 0.8))
    results = tables.Results(specs, collect(tmp_path, specs), {})
    assert "does not rise monotonically" in "\n".join(tables.mnist_comparison(results))


def test_colour_table_against_paper(tmp_path: Path) -> None:
    sets = [plan.ColourSet("CIFAR10", "cifar10", "/c")]
    specs = plan.colour_plan(sets, epochs=20, m=25, s=100)
    assert [s.name for s in specs][-1] == "cifar10-m25-dcs-32"
    _fake_results(tmp_path, specs, {1: 21.0, 2: 21.5, 3: 21.8, 4: 22.0, 32: 22.5, 0: 22.4})
    results = tables.Results(specs, collect(tmp_path, specs), {})
    text = tables.colour_report(results, ["- date: today"], ["- CIFAR10"])
    assert "| CIFAR10 | 21.00, 0.7100 (20 ep) | 21.50, 0.7150 (20 ep) |" in text
    assert "4-bit SDLSS (20 ep) is 0.50 dB below 32-bit SDLSS (20 ep); paper on CIFAR10: " \
           "0.27 dB below" in text
    # Table 1's own CIFAR10 numbers give 0.77 dB (the paper's conclusion says 0.74)
    assert "1-bit SDLSS (20 ep) is 1.50 dB below 32-bit SDLSS (20 ep); paper on CIFAR10: " \
           "0.77 dB below" in text
    assert "| STL10 | 20.65, 0.5543 |" in text  # the paper's table, for reference


def test_colour_report_tables_the_eval_curves(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    # a resumed run repeats epoch 2 (the last record counts); a record without eval_psnr and a
    # line cut short by a crash are skipped
    (run / "log.jsonl").write_text(
        '{"epoch": 1, "eval_psnr": 15.0}\n{"epoch": 2, "eval_psnr": 16.0}\n'
        '{"epoch": 2, "eval_psnr": 16.5}\n{"epoch": 3}\n{"epoch": 4, "eval_psnr": 17.25}\n'
        '{"epoch": 5, "eval_ps')
    assert eval_curve(run) == {1: 15.0, 2: 16.5, 4: 17.25}
    assert eval_curve(tmp_path / "missing") == {}
    specs = plan.colour_plan([plan.ColourSet("CIFAR10", "cifar10", "/c")], epochs=4, m=25, s=100)
    text = tables.colour_report(tables.Results(specs, {}, {}, {specs[0].name: eval_curve(run)}),
                                [], [])
    assert "| run / epoch | 1 | 2 | 3 | 4 |" in text
    assert "| CIFAR10, 1-bit SDLSS | 15.00 | 16.50 |  | 17.25 |" in text
    assert "2-bit SDLSS |" not in text.split("## Eval PSNR")[1]  # no curve, no row
    assert "## Eval PSNR" not in tables.colour_report(tables.Results(specs, {}, {}), [], [])


def test_colour_learning_rate_names_and_commands(tmp_path: Path) -> None:
    sets = [plan.ColourSet("CIFAR10", "cifar10", "/c")]
    default = plan.colour_plan(sets, epochs=2, m=25, s=100)
    assert all(s.lr is None for s in default) and default[0].name == "cifar10-m25-sdlss-1"
    assert "--lr" not in commands.train_command(default[0], commands.paths_for(
        tmp_path, default[0]), threads=1, resume=False)
    specs = plan.colour_plan(sets, epochs=2, m=25, s=100, lr=2e-4)
    assert specs[0].name == "cifar10-m25-sdlss-1-lr0.0002" and specs[0].lr == 2e-4
    assert specs[-1].name == "cifar10-m25-dcs-32-lr0.0002" and specs[-1].lr == 2e-4
    train = commands.train_command(specs[-1], commands.paths_for(tmp_path, specs[-1]),
                                   threads=1, resume=False)
    assert float(train[train.index("--lr") + 1]) == 2e-4
    results = tables.Results(specs, {}, {})
    assert "Adam learning rate 0.0002; " in tables.colour_report(results, [], [])
    results = tables.Results(default, {}, {})
    assert "Adam learning rate qgen-train's default (0.0002); " in tables.colour_report(
        results, [], [])
    colour = _script("reproduce_colour")
    with pytest.raises(SystemExit) as exc:
        colour.main(["--runs", str(tmp_path), "--lr", "0", "--dry-run"])
    assert exc.value.code == 2


def test_colour_srec_data_pairs_names_and_commands(tmp_path: Path) -> None:
    sets = [plan.ColourSet("CIFAR10", "cifar10", "/c")]
    names = {}
    for flag, suffix, arg in ((None, "", None), (True, "-dp", "--srec-data-pairs"),
                              (False, "-nodp", "--no-srec-data-pairs")):
        specs = plan.colour_plan(sets, epochs=2, m=25, s=100, lr=5e-4, srec_data_pairs=flag)
        assert [s.name for s in specs][::len(specs) - 1] == [
            f"cifar10-m25-sdlss-1-lr0.0005{suffix}", f"cifar10-m25-dcs-32-lr0.0005{suffix}"]
        assert all(s.srec_data_pairs is flag for s in specs)
        names[flag] = {s.name for s in specs}
        for spec in specs:
            train = commands.train_command(spec, commands.paths_for(tmp_path, spec), threads=1,
                                           resume=True)
            flags = [a for a in train if "srec-data-pairs" in a]
            assert flags == ([arg] if arg else [])
        text = tables.colour_report(tables.Results(specs, {}, {}), [], [])
        want = {None: "S-REC loss: DCS's three pairs plus a data-data pair (qgen-train's "
                      "default for the DCGAN networks).",
                True: "S-REC loss: DCS's three pairs plus a data-data pair (--srec-data-pairs).",
                False: "S-REC loss: DCS's three pairs only (--no-srec-data-pairs)."}[flag]
        assert want in text
    assert not names[None] & names[True] and not names[True] & names[False]
    # the digits smoke-test fallback trains the MLP networks, whose defaults differ
    digits = plan.colour_plan([plan.ColourSet("digits (embedded)", "digits", None)], epochs=2,
                              m=25, s=100)
    text = tables.colour_report(tables.Results(digits, {}, {}), [], [])
    assert ("Adam learning rate qgen-train's default (0.001); S-REC loss: DCS's three pairs only "
            "(qgen-train's default for the MLP networks).") in text
    colour = _script("reproduce_colour")
    parse = colour.build_parser().parse_args
    assert [parse(a).srec_data_pairs for a in ([], ["--srec-data-pairs"],
                                               ["--no-srec-data-pairs"])] == [None, True, False]


def test_colour_data_sets(tmp_path: Path) -> None:
    assert colour_sets({}, tmp_path, convert=False)[0].dataset == "patches"
    stl = tmp_path / "stl"
    stl.mkdir()
    # two fake 96x96 STL10 images in the binary layout (uint8, column-major per channel)
    np.random.default_rng(0).integers(0, 256, 2 * 3 * 96 * 96, dtype=np.uint8).tofile(
        stl / "train_X.bin")
    roots = find_roots(tmp_path, {"cifar10": None, "svhn": None, "stl10": stl})
    out = stl10_folder(roots["stl10"], tmp_path / "stl64", out=lambda _: None)
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png"]
    sets = colour_sets(roots, tmp_path, convert=False)
    assert sets[0].dataset == "folder" and sets[0].label.startswith("STL10")


def test_scripts_dry_run_report_and_ship(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mnist = _script("reproduce_mnist")
    runs, results, models = tmp_path / "runs", tmp_path / "results", tmp_path / "models"
    base = ["--runs", str(runs), "--results", str(results), "--epochs", "60"]
    assert mnist.main([*base, "--dry-run", "--only", "mnist-m25-sdlss-*"]) == 0
    out = capsys.readouterr().out
    assert "5 runs" in out and "qgen-train --out" in out and "qgen-reconstruct" in out
    specs = mnist.plan(mnist.build_parser().parse_args(base))
    _fake_results(runs, specs, {1: 19.0, 2: 20.0, 3: 20.5, 4: 20.9, 32: 21.0, 0: 20.4})
    spec1 = next(s for s in specs if s.name == "mnist-m25-sdlss-1")
    paths = commands.paths_for(runs, spec1)
    paths.qgen.write_bytes(b"fake")  # shipping copies the scored file as it is
    np.save(paths.truth, np.zeros((2, 1, 28, 28), np.float32))
    paths.recon_dir.mkdir()
    np.save(paths.recon_dir / "x_hat.npy", np.zeros((2, 1, 28, 28), np.float32))
    (paths.recon_dir / "metrics.json").write_text(json.dumps(
        {"per_image": [{"psnr": 19.0, "ssim": 0.7}, {"psnr": 18.0, "ssim": 0.6}]}))
    assert mnist.main([*base, "--report-only", "--ship-models", str(models)]) == 0
    report = (results / "mnist-figure3.md").read_text()
    assert "- machine: " in report and "- date: " in report and "--report-only" in report
    assert "rate (Hubara et al." in report and "2-bit r = 0.05" in report
    # hand-written notes after the marker survive a rebuild; the generated part is rewritten
    from paper_repro.provenance import NOTES_MARKER
    (results / "mnist-figure3.md").write_text(report + "\n" + NOTES_MARKER + "\n## My notes\n")
    assert mnist.main([*base, "--report-only"]) == 0
    rebuilt = (results / "mnist-figure3.md").read_text()
    assert rebuilt.endswith(NOTES_MARKER + "\n## My notes\n") and rebuilt.count("## My notes") == 1
    assert rebuilt.count("# MNIST: Q-GEN Figure 3") == 1
    assert (results / "mnist-figure3.png").stat().st_size > 0
    assert (results / "mnist-figure4-m25.png").stat().st_size > 0
    assert (models / "mnist-m25-1bit.qgen").read_bytes() == b"fake"
    assert "| `mnist-m25-1bit.qgen` | 1 | 25 | 100 | 60 ep | 19.00 |" in capsys.readouterr().out

    colour = _script("reproduce_colour")
    assert colour.main(["--runs", str(runs), "--results", str(results), "--report-only"]) == 0
    text = (results / "colour-table1.md").read_text()
    assert "patches (embedded)" in text and "NOT one of the paper's data sets" in text


def test_describe_plan_lists_commands(tmp_path: Path) -> None:
    specs = plan.mnist_plan(data_root=None, epochs=2, measurements=[25], sparsities=[100],
                            bits=[1])
    lines = describe_plan(specs, QueueOptions(tmp_path))
    assert "not started -> train" in lines[0] and lines[1].strip().startswith("qgen-train")


@pytest.mark.slow  # 35 s on 2 busy cores, a third of the default run
def test_gpu_colour_script_smoke_on_cpu(tmp_path: Path) -> None:
    """paper/gpu_colour.sh end to end with its CPU knobs (the tiny embedded 'digits' set, one
    1-bit model, one epoch): the wrappers, the queue, the scoring pass and the archive work on a
    machine without a GPU, so a GPU session only meets GPU problems."""
    import subprocess
    import tarfile

    env = {**os.environ, "QGEN_COLOUR_INSTALL": "0", "QGEN_COLOUR_DEVICE": "cpu",
           "QGEN_COLOUR_DATA_ROOT": "",  # not the CIFAR-10 copy beside the checkout
           "QGEN_COLOUR_FALLBACK": "digits", "QGEN_COLOUR_EPOCHS": "1",
           "QGEN_COLOUR_BITS": "1", "QGEN_COLOUR_LANES": "1", "QGEN_COLOUR_SECONDS": "300",
           "QGEN_COLOUR_BACKEND": "reference", "QGEN_COLOUR_LR": "5e-4",
           "QGEN_COLOUR_SREC_DATA_PAIRS": "1", "PYTHON": sys.executable}
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(PAPER / "gpu_colour.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (out / "queue.log").read_text()
    assert "queue rc=0" in log and "report rc=0" in log, log[-2000:]
    assert "data: none named: the embedded 'digits' set" in log
    table = (out / "colour-table1.md").read_text()
    assert "digits (embedded)" in table and "1 ep" in table
    assert "Adam learning rate 0.0005; S-REC loss: DCS's three pairs plus a data-data pair " \
           "(--srec-data-pairs)." in table
    assert (out / "runs" / "digits-m100-sdlss-1-lr0.0005-dp" / "log.jsonl").is_file()
    with tarfile.open(out / "colour-runs.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("model.qgen") for n in names)
    assert not any(n.endswith("model.pt") for n in names)  # checkpoints stay behind


def test_colour_precision_names_commands_and_note(tmp_path: Path) -> None:
    sets = [plan.ColourSet("CIFAR10", "cifar10", "/c")]
    default = plan.colour_plan(sets, epochs=2, m=100, s=100)
    assert default[0].name == "cifar10-m100-sdlss-1" and default[0].precision is None
    assert "--precision" not in commands.train_command(
        default[0], commands.paths_for(tmp_path, default[0]), threads=1, resume=False)
    assert "Training precision: fp32." in tables.colour_report(
        tables.Results(default, {}, {}), [], [])
    specs = plan.colour_plan(sets, epochs=2, m=100, s=100, precision="bf16")
    assert [specs[0].name, specs[-1].name] == ["cifar10-m100-sdlss-1-bf16",
                                               "cifar10-m100-dcs-32-bf16"]
    for spec in specs:
        train = commands.train_command(spec, commands.paths_for(tmp_path, spec), threads=1,
                                       resume=True)
        assert train[train.index("--precision") + 1] == "bf16" and train[-1] == "--resume"
    assert "Training precision: bf16 (--precision bf16" in tables.colour_report(
        tables.Results(specs, {}, {}), [], [])


def test_cifar10_jpeg_copy_is_named_in_the_tables(tmp_path: Path) -> None:
    from paper_repro.colour_data import cifar10_label, colour_sets

    copy = tmp_path / "jpeg"
    (copy / "train" / "cat").mkdir(parents=True)
    (copy / "test" / "cat").mkdir(parents=True)
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "data_batch_1.bin").write_bytes(b"")
    assert cifar10_label(copy) == "CIFAR10 (JPEG copy)"
    assert cifar10_label(binary) == "CIFAR10"
    (sets,) = colour_sets({"cifar10": copy}, tmp_path, convert=False)
    assert sets.label == "CIFAR10 (JPEG copy)" and sets.dataset == "cifar10"
    specs = plan.colour_plan([sets], epochs=2, m=100, s=100)
    assert specs[0].name == "cifar10-m100-sdlss-1"  # the label's first word names the runs


# -- scoring runs that are still training: reproduce_colour.py --snapshots ---------------------


@pytest.fixture(autouse=True)
def _scoring_keeps_pytest_as_it_was(monkeypatch: pytest.MonkeyPatch):
    """--snapshots renices its process and sets torch's thread count, meant for a process of
    its own: here the niceness is counted, not applied, and the thread count put back, so the
    tests that follow in this pytest process keep their priority and threads."""
    import torch

    level = [os.nice(0)]

    def nice(increment: int) -> int:
        level[0] += increment
        return level[0]

    monkeypatch.setattr(os, "nice", nice)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tiny_run(folder: Path, epochs: int, seed: int = 0, bits: int = 4,
              image_shape: list[int] | None = None) -> Path:
    """A run folder as qgen-train leaves it after ``epochs`` epochs: a tiny real checkpoint,
    log.jsonl (one line per epoch with the trainer's eval) and config.json."""
    from conftest import make_checkpoint

    from qgen_infer.checkpoint import load_checkpoint, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    make_checkpoint(folder / "model.pt", bits=bits, seed=seed, image_shape=image_shape)
    ckpt = load_checkpoint(folder / "model.pt")
    ckpt["train"].update(epochs=epochs, step=390 * epochs, wall_time_s=1500.0 * epochs)
    ckpt["solver"]["latent_dim"] = ckpt["config"]["latent_dim"]  # as qgen-train records it
    ckpt.pop("format"), ckpt.pop("version")
    save_checkpoint(folder / "model.pt", ckpt)
    (folder / "log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "step": 390 * e, "wall_time_s": 1500.0 * e,
                    "eval_psnr": 15.0 + e, "eval_ssim": 0.2 + e / 100}) + "\n"
        for e in range(1, epochs + 1)))
    (folder / "config.json").write_text(json.dumps({"device": "cpu", "threads": 1}))
    return folder


def test_checkpoint_writes_are_atomic_so_one_open_reads_one_checkpoint(tmp_path: Path) -> None:
    """What the snapshot relies on: qgen-train's save replaces model.pt by a rename, so a file
    opened before a new save still reads the complete older checkpoint."""
    import io

    import torch

    run = _tiny_run(tmp_path / "r", epochs=1)
    with open(run / "model.pt", "rb") as reader:
        _tiny_run(run, epochs=2, seed=1)  # a new epoch lands while the copy is being read
        old = torch.load(io.BytesIO(reader.read()), weights_only=True)
    assert old["train"]["epochs"] == 1
    assert torch.load(run / "model.pt", weights_only=True)["train"]["epochs"] == 2


def test_snapshot_copies_checks_and_cuts_the_log(tmp_path: Path) -> None:
    from paper_repro.snapshot import SnapshotError, load_info, snapshot_run

    run, snap = _tiny_run(tmp_path / "run", epochs=2), tmp_path / "snap" / "run"
    assert snapshot_run(tmp_path / "missing", tmp_path / "snap" / "missing") is None
    assert not (tmp_path / "snap" / "missing").exists()
    info = snapshot_run(run, snap)
    assert (info.epochs, info.step, info.wall_time_s) == (2, 780, 3000.0)
    assert (snap / "model.pt").read_bytes() == (run / "model.pt").read_bytes()
    assert load_info(snap) == info and (snap / "config.json").is_file()
    # the trainer appended epoch 3's line before its checkpoint was copied: cut to the copy's 2
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "eval_psnr": 18.0}) + "\n")
    (snap / SNAP_SOURCE).unlink()  # force a fresh copy of the same checkpoint
    snapshot_run(run, snap)
    assert trained_epochs(snap) == 2 and eval_curve(snap) == {1: 16.0, 2: 17.0}
    # unchanged source: not copied again (the snapshot file keeps its inode)
    inode = (snap / "model.pt").stat().st_ino
    assert snapshot_run(run, snap) == load_info(snap)
    assert (snap / "model.pt").stat().st_ino == inode
    # a checkpoint whose log line has not landed yet gets a line from the checkpoint itself
    lagging = _tiny_run(tmp_path / "lag", epochs=2)
    (lagging / "log.jsonl").write_text(json.dumps({"epoch": 1, "eval_psnr": 16.0}) + "\n")
    snapshot_run(lagging, tmp_path / "snap" / "lag")
    assert trained_epochs(tmp_path / "snap" / "lag") == 2
    # a corrupt checkpoint: one line naming the source, the earlier good snapshot kept
    good = (snap / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(SnapshotError) as err:
        snapshot_run(run, snap)
    assert "\n" not in str(err.value) and str(run / "model.pt") in str(err.value)
    assert (snap / "model.pt").read_bytes() == good
    assert not any(p.name.startswith(".model.pt") for p in snap.iterdir())


SNAP_SOURCE = "source.json"


def _fake_evaluate(spec, paths, opts):  # type: ignore[no-untyped-def]
    """The queue's scoring step without the qgen-* processes: a record for the snapshot's
    checkpoint (epochs from it; PSNR falling with fewer bits), and 4 images for the grid."""
    import torch

    epochs = torch.load(paths.checkpoint, weights_only=True)["train"]["epochs"]
    psnr = 20.0 + {1: 0.0, 2: 0.4, 3: 0.7, 4: 0.9, 32: 1.2}[spec.bits]
    paths.eval_dir.mkdir(parents=True, exist_ok=True)
    if spec.packed:
        paths.recon_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(spec.bits)
        np.save(paths.truth, rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))
        np.save(paths.recon_dir / "x_hat.npy", rng.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float32))
        (paths.recon_dir / "metrics.json").write_text(json.dumps(
            {"per_image": [{"psnr": psnr, "ssim": 0.5}] * 4}))
        paths.qgen.write_bytes(f"packed {spec.bits}-bit, epoch {epochs}".encode())
    return EvalRecord.for_spec(
        spec, epochs=epochs, psnr=psnr, ssim=0.5 + spec.bits / 1000, images=1000,
        engine=PACKED_ENGINE if spec.packed else FP32_EVAL,
        backend="cpu" if spec.packed else "fake-quant fp32", stored_bytes=1000 * spec.bits,
        fp32_bytes=32_000, file_bytes=50_000 if spec.packed else None, commands=[])


def _snapshot_setup(tmp_path: Path, runs_epochs: dict[str, int]) -> tuple[Path, list[str]]:
    """Fake CIFAR-10 run folders (bits suffix -> epochs) and the --snapshots command line."""
    runs, snaps, results = tmp_path / "runs", tmp_path / "snaps", tmp_path / "results"
    data = tmp_path / "cifar"
    (data / "train" / "cat").mkdir(parents=True)  # the JPEG copy's layout; never read here
    (data / "test" / "cat").mkdir(parents=True)
    for suffix, epochs in runs_epochs.items():
        _tiny_run(runs / f"cifar10-m100-sdlss-{suffix}-bf16", epochs=epochs)
    return runs, ["--cifar10", str(data), "--runs", str(runs), "--snapshots", str(snaps),
                  "--results", str(results), "--epochs", "12", "--precision", "bf16"]


def test_colour_snapshots_report_partial_and_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from paper_repro import execute

    monkeypatch.setattr(execute, "_evaluate", _fake_evaluate)
    colour = _script("reproduce_colour")
    runs, argv = _snapshot_setup(tmp_path, {"32": 2, "1": 1, "4": 12})
    results = tmp_path / "results"
    (runs / "cifar10-m100-sdlss-2-ovf05-bf16").mkdir()
    (runs / "cifar10-m100-sdlss-2-ovf05-bf16" / "model.pt").write_bytes(b"not a checkpoint")
    assert colour.main(argv) == 1  # one run failed; the others are still scored and reported
    assert os.nice(0) >= 10  # scoring (and the qgen-* steps it starts) yields to the training
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "cifar10-m100-sdlss-2-ovf05-bf16: " in failed[0]  # one line
    assert "is not a readable qgen checkpoint" in failed[0] and "Traceback" not in err
    text = (results / "cifar10-table1.md").read_text()
    assert "**Status: PARTIAL: 1 of 6 models finished; 3 scored.**" in text
    assert ("| 1-bit SDLSS | 22.07 | 0.6787 | 20.00 | 0.5010 | -2.07 | partial: epoch 1/12 "
            "| 390 | 0.42 h | packed engine (cpu) |") in text
    assert "| 4-bit SDLSS | 22.57 | 0.7060 | 20.90 | 0.5040 | -1.67 | 12/12 epochs | 4,680 |" \
           in text
    assert "| 32-bit SDLSS | 22.84 | 0.7259 | 21.20 | 0.5320 | -1.64 | partial: epoch 2/12 " \
           "| 780 | 0.83 h | qgen-eval (fp32 checkpoint) |" in text
    assert "| 3-bit SDLSS | 22.51 | 0.7036 | – | – | – | not scored: not started |" in text
    assert "- `cifar10-m100-sdlss-2-ovf05-bf16`: ERROR: " in text
    assert "| 2-bit SDLSS | 22.29 | 0.6961 | – | – | – | not scored: ERROR (see Not scored) |" \
           in text
    # the gaps against the aims, from the records
    assert "- 32-bit SDLSS within 1 dB of the paper's 22.84: ours 21.20 dB (partial: epoch " \
           "2/12) is 1.64 dB below it: not met so far (partial run: not a verdict)." in text
    assert "- 4-bit SDLSS (12/12 epochs) is 0.30 dB below our 32-bit SDLSS (partial: epoch " \
           "2/12); aim: at most 0.3 dB below: met so far (partial runs: not a verdict)." in text
    assert "- 1-bit SDLSS (partial: epoch 1/12) is 1.20 dB below our 32-bit SDLSS (partial: " \
           "epoch 2/12); aim: at most 0.8 dB below: not met so far" in text
    assert "1,000 held-out images" in text
    assert "- gaps ordered by bit width (1-bit 1.20, 4-bit 0.30 dB): yes." in text
    # the trainer's eval of the same epoch beside the score
    assert "| 1-bit SDLSS | 1 | 16.000 | 0.2100 | 20.000 | 0.5010 | +4.000 | +0.2910 |" in text
    assert "| CIFAR10 (JPEG copy), 32-bit SDLSS | 16.00 | 17.00 |" in text
    for png in ("cifar10-eval-curves.png", "cifar10-grid-1bit-sdlss.png",
                "cifar10-grid-4bit-sdlss.png"):
        assert (results / png).stat().st_size > 0 and f"]({png})" in text
    assert not (results / "cifar10-grid-32bit-sdlss.png").exists()  # no fp32 images faked
    assert sorted(p.name for p in (runs / "cifar10-m100-sdlss-1-bf16").iterdir()) == [
        "config.json", "log.jsonl", "model.pt"]  # the run folders are only read
    assert not (runs / "eval").exists()


def test_colour_snapshots_resume_rebuild_and_ship(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paper_repro import execute

    calls: list[str] = []
    monkeypatch.setattr(execute, "_evaluate",
                        lambda *a: calls.append(a[0].name) or _fake_evaluate(*a))
    colour = _script("reproduce_colour")
    runs, argv = _snapshot_setup(tmp_path, {"1": 1, "4": 12})
    results = tmp_path / "results"
    assert colour.main(argv) == 0 and len(calls) == 2
    # a second call: nothing changed, nothing scored again; a new epoch is scored
    assert colour.main(argv) == 0 and len(calls) == 2
    _tiny_run(runs / "cifar10-m100-sdlss-1-bf16", epochs=3)
    assert colour.main(argv) == 0 and calls[2:] == ["cifar10-m100-sdlss-1-bf16"]
    assert "partial: epoch 3/12 | 1,170 |" in (results / "cifar10-table1.md").read_text()
    # --report-only rebuilds from the snapshots without reading the runs
    assert colour.main([*argv[:2], "--runs", str(tmp_path / "gone"), *argv[4:],
                        "--report-only"]) == 0
    # shipping: only the finished packed model, its row written between the README's markers
    from paper_repro.shipping import section_markers

    models = tmp_path / "models"
    models.mkdir()
    begin, end = section_markers("cifar10")
    (models / "README.md").write_text(f"# Models\n{begin}\npending: all\n{end}\nkept\n")
    assert colour.main([*argv, "--report-only", "--ship-models", str(models)]) == 0
    assert sorted(p.name for p in models.glob("*.qgen")) == ["cifar10-4bit.qgen"]
    assert (models / "cifar10-4bit.qgen").read_bytes() == b"packed 4-bit, epoch 12"
    readme = (models / "README.md").read_text()
    assert "pending: all" not in readme and readme.endswith(f"{end}\nkept\n")
    assert "| `cifar10-4bit.qgen` | 4 | 100 | 100 | 12 ep | 20.90 | 0.5040 |" in readme
    assert "- `cifar10-1bit.qgen`: pending (run `cifar10-m100-sdlss-1-bf16`, scored at epoch " \
           "3/12 so far)" in readme
    assert "- `cifar10-3bit.qgen`: pending (run `cifar10-m100-sdlss-3-bf16`, not scored yet)" \
           in readme


def test_colour_snapshots_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Mistakes are one line and exit 2, before anything is copied or scored."""
    colour = _script("reproduce_colour")
    runs = tmp_path / "runs"
    runs.mkdir()
    for args, words in (
            (["--runs", str(tmp_path / "missing"), "--snapshots", str(tmp_path / "s")],
             "is not a folder"),
            (["--runs", str(runs), "--snapshots", str(runs / "s")], "must be outside --runs"),
            (["--runs", str(runs), "--snapshots", str(tmp_path / "s"), "--dry-run"],
             "--dry-run and --snapshots"),
            (["--runs", str(runs), "--ship-models", str(tmp_path / "m")], "needs --snapshots")):
        with pytest.raises(SystemExit) as exc:
            colour.main(args)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert words in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "s").exists() and not (runs / "s").exists()


def test_row_report_aims_on_finished_runs() -> None:
    """Finished runs get plain verdicts; gaps out of bit-width order are said to be."""
    from paper_repro.row_report import RowResults, aims

    specs = plan.colour_plan([plan.ColourSet("CIFAR10", "cifar10", "/c")], epochs=12, m=100,
                             s=100)
    psnr = {1: 21.5, 2: 21.2, 4: 21.9, 32: 22.1}  # 2-bit below 1-bit: not ordered
    records = {s.name: _record(s, psnr[s.bits], 0.7) for s in specs
               if s.method == plan.SDLSS and s.bits in psnr}
    lines = aims(RowResults("CIFAR10", specs, records, {}, {}))
    assert lines[0] == ("- 32-bit SDLSS within 1 dB of the paper's 22.84: ours 22.10 dB "
                        "(12/12 epochs) is 0.74 dB below it: met.")
    assert "- 4-bit SDLSS (12/12 epochs) is 0.20 dB below our 32-bit SDLSS (12/12 epochs); " \
           "aim: at most 0.3 dB below: met." in lines
    assert "- 1-bit SDLSS (12/12 epochs) is 0.60 dB below our 32-bit SDLSS (12/12 epochs); " \
           "aim: at most 0.8 dB below: met." in lines
    assert lines[-1] == "- gaps ordered by bit width (1-bit 0.60, 2-bit 0.90, 4-bit 0.20 dB): no."
    assert aims(RowResults("CIFAR10", specs, {}, {}, {})) == [
        "- no scored 32-bit SDLSS model yet: no gap can be measured."]


def test_row_report_gap_intervals_from_the_images() -> None:
    """With every image's PSNR kept, each gap gets its paired 95% interval and each step of the
    bit-width ordering is said to be resolved by the images or not; numbers checked by hand."""
    from paper_repro.row_report import RowResults, aims, paired_difference

    specs = plan.colour_plan([plan.ColourSet("CIFAR10", "cifar10", "/c")], epochs=12, m=100,
                             s=100)
    base = [20.0, 22.0, 18.0, 24.0]  # 32-bit, image by image (mean 21.0)
    offsets = {32: [0.0] * 4,
               1: [-1.0, -1.2, -0.8, -1.0],  # mean -1.0, sd 0.1633: ± 0.16
               2: [-0.3, -0.9, 0.1, -0.5],  # mean -0.4, sd 0.4163: ± 0.41
               3: [-0.6, -0.4, -0.7, -0.3]}  # mean -0.5, sd 0.1826: ± 0.18
    records = {}
    for spec in specs:
        if spec.method == plan.SDLSS and spec.bits in offsets:
            per = [b + o for b, o in zip(base, offsets[spec.bits], strict=True)]
            rec = _record(spec, sum(per) / 4, 0.7)
            rec.images, rec.psnr_per_image = 4, per
            records[spec.name] = rec
    row = RowResults("CIFAR10", specs, records, {}, {})
    lines = aims(row)
    assert "- 1-bit SDLSS (12/12 epochs) is 1.00 dB below our 32-bit SDLSS (12/12 epochs), " \
           "± 0.16 dB over the images (95%); aim: at most 0.8 dB below: not met." in lines
    assert "- 2-bit SDLSS (12/12 epochs) is 0.40 dB below our 32-bit SDLSS (12/12 epochs), " \
           "± 0.41 dB over the images (95%)." in lines
    assert lines[-2] == "- gaps ordered by bit width (1-bit 1.00, 2-bit 0.40, 3-bit 0.50 dB): no."
    # 2 - 1: [0.7, 0.3, 0.9, 0.5], mean 0.6, sd 0.2582 -> ± 0.25; 3 - 2: [-0.3, 0.5, -0.8,
    # 0.2], mean -0.1, sd 0.5715 -> ± 0.56
    assert lines[-1] == (
        "- image by image, each width against the next narrower one (95% intervals over the "
        "eval images; one training run per width, so the spread between training runs is not "
        "in them): 2-bit minus 1-bit +0.60 ± 0.25 dB (resolved); 3-bit minus 2-bit -0.10 ± "
        "0.56 dB (not resolved by these images).")
    by_bits = {r.bits: r for r in records.values()}
    # a record without the images' PSNRs (older records), or of other images: no interval
    by_bits[2].psnr_per_image = None
    assert paired_difference(by_bits[32], by_bits[2]) is None
    by_bits[3].psnr_per_image = by_bits[3].psnr_per_image[:3]
    assert paired_difference(by_bits[32], by_bits[3]) is None
    lines = aims(row)
    assert "- 2-bit SDLSS (12/12 epochs) is 0.40 dB below our 32-bit SDLSS (12/12 epochs)." \
        in lines
    assert not any(line.startswith("- image by image") for line in lines)


@pytest.mark.slow  # 30 s on 2 busy cores: the real qgen-* processes, twice
def test_colour_snapshots_score_through_the_real_tools(tmp_path: Path) -> None:
    """--snapshots end to end with the real scoring steps (qgen-export -> qgen-measure ->
    qgen-reconstruct; qgen-eval for 32 bits) on tiny checkpoints shaped for the embedded
    'digits' set: the records, the report and both grids come from what the tools wrote."""
    runs, snaps, results = tmp_path / "runs", tmp_path / "snaps", tmp_path / "results"
    for bits in (1, 32):
        _tiny_run(runs / f"digits-m100-sdlss-{bits}", epochs=1, bits=bits,
                  image_shape=[1, 16, 16])
    colour = _script("reproduce_colour")
    assert colour.main(["--fallback", "digits", "--runs", str(runs), "--snapshots", str(snaps),
                        "--results", str(results), "--epochs", "2", "--bits", "1", "32",
                        "--backend", "reference"]) == 0
    text = (results / "digits-table1.md").read_text()
    metrics = json.loads((snaps / "eval" / "digits-m100-sdlss-1" / "recon" /
                          "metrics.json").read_text())
    assert metrics["summary"]["images"] == 297  # the digits eval split, all of it
    for bits in (1, 32):  # both scorers keep every image's PSNR for the paired intervals
        rec = json.loads((snaps / "eval" / f"digits-m100-sdlss-{bits}" / "eval.json").read_text())
        assert len(rec["psnr_per_image"]) == 297
        assert abs(sum(rec["psnr_per_image"]) / 297 - rec["psnr"]) < 1e-3
    psnr = f"{metrics['summary']['psnr']:.2f}"
    assert f"| 1-bit SDLSS | – | – | {psnr} |" in text  # no paper row for digits
    assert "| partial: epoch 1/2 | 390 | 0.42 h | packed engine (reference) |" in text
    assert "qgen-eval (fp32 checkpoint) |" in text and "297 held-out images" in text
    for png in ("digits-grid-1bit-sdlss.png", "digits-grid-32bit-sdlss.png"):
        assert (results / png).stat().st_size > 0


def test_packed_backend_names_tier_and_precision() -> None:
    from paper_repro.execute import backend_name

    assert backend_name({"backend": "reference", "settings": {"precision": "fp32"}}) == \
        "reference"
    assert backend_name({"backend": "cpu", "dispatch": {"isa": "avx512"},
                         "settings": {"precision": "bf16"}}) == "cpu, avx512, precision bf16"
    assert backend_name({"backend": "cpu", "dispatch": {"isa": "avx2"}}) == "cpu, avx2"


def test_colour_finetune_plan_names_commands_and_notes(tmp_path: Path) -> None:
    """--finetune-from E: the 32-bit run keeps its epoch E and comes first with DCS; the 1-4-bit
    runs start from that checkpoint for the remaining epochs (names -ftE), and every table says
    so."""
    from paper_repro.row_report import training_note

    sets = [plan.ColourSet("CIFAR10", "cifar10", "/c")]
    specs = plan.colour_plan(sets, epochs=12, m=100, s=100, overflow_rates={2: 0.05},
                             precision="bf16", finetune_from=8)
    assert [s.name for s in specs] == [
        "cifar10-m100-sdlss-32-bf16", "cifar10-m100-dcs-32-bf16", "cifar10-m100-sdlss-1-ft8-bf16",
        "cifar10-m100-sdlss-2-ovf05-ft8-bf16", "cifar10-m100-sdlss-3-ft8-bf16",
        "cifar10-m100-sdlss-4-ft8-bf16", "cifar10-m100-sdlss-32-ft8-bf16"]
    source, dcs, *tuned = specs
    control = tuned[-1]  # the same fine-tuning at 32 bits, after the 1-4-bit runs
    assert control.control and not any(s.control for s in specs[:-1])
    assert control.column == plan.CONTROL_COLUMN and source.column == "32-bit SDLSS"
    assert not control.packed and control.overflow_rate == 0.0
    assert source.keep_epochs == (8,) and source.epochs == 12 and source.init_from is None
    assert dcs.keep_epochs == () and dcs.init_from is None and dcs.epochs == 12
    assert {(s.init_from, s.init_epoch, s.epochs, s.lr) for s in tuned} == {
        (source.name, 8, 4, plan.FINETUNE_LR)}
    paths = commands.paths_for(tmp_path, source)
    train = commands.train_command(source, paths, threads=1, resume=True)
    assert train[train.index("--keep-epochs") + 1] == "8" and "--init-from" not in train
    one = tuned[0]
    train = commands.train_command(one, commands.paths_for(tmp_path, one), threads=1,
                                   resume=False)
    assert train[train.index("--init-from") + 1] == str(
        tmp_path / source.name / "model-epoch8.pt")
    assert train[train.index("--epochs") + 1] == "4" and float(
        train[train.index("--lr") + 1]) == plan.FINETUNE_LR
    # resuming its own checkpoint, a fine-tuned run no longer names where it started
    assert "--init-from" not in commands.train_command(
        one, commands.paths_for(tmp_path, one), threads=1, resume=True)
    # another fine-tuning rate is part of the names; from scratch nothing changes
    other = plan.colour_plan(sets, epochs=12, m=100, s=100, finetune_from=8, finetune_lr=5e-5)
    assert other[2].name == "cifar10-m100-sdlss-1-lr5e-05-ft8" and other[2].lr == 5e-5
    assert all(s.init_from is None and not s.keep_epochs
               for s in plan.colour_plan(sets, epochs=12, m=100, s=100))
    for bad in (0, 12, 13):
        with pytest.raises(ValueError, match="finetune_from"):
            plan.colour_plan(sets, epochs=12, m=100, s=100, finetune_from=bad)
    # tables: "8+4 ep", the row report's training note, and how the row was trained
    rec = _record(one, 21.0, 0.7)
    assert tables.epochs_note(rec) == "8+4 ep" and rec.init_epochs == 8
    assert training_note(rec) == "32-bit epoch 8 + 4/4 epochs"
    assert training_note(_record(one, 21.0, 0.7, epochs=2)) == (
        "partial: 32-bit epoch 8 + epoch 2/4")
    note = tables.settings_line(specs)
    assert ("The 1/2/3/4-bit SDLSS models are quantization-aware fine-tunings of the 32-bit "
            "SDLSS run's epoch-8 checkpoint (`cifar10-m100-sdlss-32-bf16`") in note
    assert "every model of the row has 12 epochs behind it" in note
    assert "Adam learning rate qgen-train's default (0.0002); " in note  # not the tunings' rate
    assert "fine-tunings" not in tables.settings_line(plan.colour_plan(sets, epochs=12, m=100,
                                                                       s=100))
    assert ("The 32-bit SDLSS control (`cifar10-m100-sdlss-32-ft8-bf16`) is the same "
            "fine-tuning at 32 bits") in note
    assert not any(s.control for s in plan.colour_plan(sets, epochs=12, m=100, s=100,
                                                       bits=(1, 4), finetune_from=8))


def test_row_report_gaps_against_the_32bit_control() -> None:
    """The control gets its own row and its own gap lines; the tables' 32-bit SDLSS stays the
    run from scratch."""
    from paper_repro.row_report import RowResults, aims, side_by_side

    specs = plan.colour_plan([plan.ColourSet("CIFAR10", "cifar10", "/c")], epochs=12, m=100,
                             s=100, finetune_from=8)
    psnr = {(32, False): 17.8, (32, True): 18.1, 1: 17.6, 4: 18.0}
    records = {}
    for spec in specs:
        key = (32, spec.control) if spec.bits == 32 and spec.method == plan.SDLSS else spec.bits
        if key in psnr:
            records[spec.name] = _record(spec, psnr[key], 0.4)
    control = next(r for r in records.values() if r.init_epochs and r.bits == 32)
    assert control.column == plan.CONTROL_COLUMN  # the record knows it from its start
    results = tables.Results(specs, records, {})
    assert results.get("CIFAR10", plan.SDLSS, 32, 100, 100).psnr == 17.8
    row = RowResults("CIFAR10", specs, records, {}, {})
    table = side_by_side(row)
    names = [line.split(" | ")[0].lstrip("| ") for line in table[2:]]
    assert names[4:7] == ["32-bit SDLSS", "32-bit SDLSS control", "32-bit DCS"]
    assert "| 32-bit SDLSS control | – | – | 18.10 | 0.4000 | – | 32-bit epoch 8 + 4/4 epochs" \
        in table[7]
    lines = aims(row)
    assert "- 4-bit SDLSS (32-bit epoch 8 + 4/4 epochs) is 0.20 dB above our 32-bit SDLSS " \
           "(12/12 epochs); aim: at most 0.3 dB below: met." in lines
    assert "- 4-bit SDLSS (32-bit epoch 8 + 4/4 epochs) is 0.10 dB below the 32-bit SDLSS " \
           "control (the same fine-tuning at 32 bits: quantization's cost alone) (32-bit " \
           "epoch 8 + 4/4 epochs); aim: at most 0.3 dB below: met." in lines
    assert "- 1-bit SDLSS (32-bit epoch 8 + 4/4 epochs) is 0.50 dB below the 32-bit SDLSS " \
           "control (the same fine-tuning at 32 bits: quantization's cost alone) (32-bit " \
           "epoch 8 + 4/4 epochs); aim: at most 0.8 dB below: met." in lines
    # a control short of its epochs: no score against finished widths, the curves instead
    control.epochs = 2
    by_name = {s.column: s.name for s in specs}
    curves = {by_name["1-bit SDLSS"]: {1: 17.3, 2: 17.45, 3: 17.6},
              by_name["4-bit SDLSS"]: {1: 17.5, 2: 17.76}, control.name: {1: 17.53, 2: 17.75}}
    lines = aims(RowResults("CIFAR10", specs, records, {}, {}, curves))
    assert not any("below the 32-bit SDLSS control" in line for line in lines)
    assert (
        "- against the 32-bit SDLSS control epoch by epoch (the training code's eval after each "
        "epoch, dB: like for like at every epoch the control has reached, 2 of 4): after "
        "fine-tuning epoch 1: 1-bit -0.23, 4-bit -0.03; after fine-tuning epoch 2: 1-bit -0.30, "
        "4-bit +0.01.") in lines


def test_finetune_waits_for_its_start_and_fails_without_a_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paper_repro import execute

    specs = plan.colour_plan([plan.ColourSet("CIFAR10", "cifar10", "/c")], epochs=3, m=100,
                             s=100, bits=[1, 32], finetune_from=1)
    source, one = specs[0], specs[2]
    opts = QueueOptions(tmp_path, poll_s=0.01)
    paths = commands.paths_for(tmp_path, one)
    said: list[str] = []
    progress = execute.Progress(1, said.append)
    monkeypatch.setattr(execute, "busy_folders", dict)  # nobody trains the source
    with pytest.raises(execute.StepFailed, match="nothing is training cifar10-m100-sdlss-32"):
        execute._wait_for_init(one, paths, opts, progress)
    # while the source trains, the run waits (once said), then starts when the epoch is kept
    kept = tmp_path / source.name / "model-epoch1.pt"
    polls = []

    def busy() -> dict[Path, int]:
        polls.append(1)
        if len(polls) == 3:
            kept.parent.mkdir(parents=True)
            kept.write_bytes(b"checkpoint")
        return {(tmp_path / source.name).resolve(): 123}

    monkeypatch.setattr(execute, "busy_folders", busy)
    execute._wait_for_init(one, paths, opts, progress)
    assert len(polls) == 3 and len(said) == 1
    assert "waiting for cifar10-m100-sdlss-32 to reach epoch 1" in said[0]
    # a source that went past the epoch without keeping it: said at once
    kept.unlink()
    (kept.parent / "log.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    with pytest.raises(execute.StepFailed, match="passed epoch 1 without keeping it "
                                                 r"\(it holds epoch 2\)"):
        execute._wait_for_init(one, paths, opts, progress)


def test_colour_finetune_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    colour = _script("reproduce_colour")
    for argv, needle in ((["--epochs", "12", "--finetune-from", "12"], "below --epochs"),
                         (["--finetune-from", "0"], "below --epochs"),
                         (["--finetune-lr", "0"], "--finetune-lr must be positive")):
        with pytest.raises(SystemExit) as exc:
            colour.main(["--runs", str(tmp_path), "--dry-run", *argv])
        assert exc.value.code == 2
        assert needle in capsys.readouterr().err


def test_a_stopped_queue_stops_children_that_ignore_sigint() -> None:
    """The queue passes its stop on as SIGTERM: a child started by a background queue has
    SIGINT ignored, and would otherwise train on unwatched."""
    import signal
    import subprocess

    from paper_repro import execute

    child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                              "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"])
    with execute._LIVE_LOCK:
        execute._LIVE.add(child)
    try:
        execute.interrupt_children()
        assert child.wait(timeout=10) == -signal.SIGTERM
    finally:
        child.kill()
        with execute._LIVE_LOCK:
            execute._LIVE.discard(child)


def test_a_run_stopped_by_a_signal_is_not_a_failure(tmp_path: Path, monkeypatch) -> None:
    """A qgen-* step that exits with 130 (stopped: Ctrl-C reached the process group, or
    SIGTERM) is reported as stopped, to be resumed, and leaves the queue's failures empty; any
    other exit code is a failure."""
    from paper_repro import execute

    log = tmp_path / "run.log"
    with pytest.raises(execute.StepStopped, match="rerun the queue to resume"):
        execute._run([sys.executable, "-c", "raise SystemExit(130)"], log)
    with pytest.raises(execute.StepFailed, match="exited with 3") as failed:
        execute._run([sys.executable, "-c", "raise SystemExit(3)"], log)
    assert not isinstance(failed.value, execute.StepStopped)

    def process(spec, opts, progress):
        if spec.bits == 1:
            raise execute.StepStopped("qgen-train was stopped (exit 130)")
        raise execute.StepFailed("qgen-train exited with 1")

    monkeypatch.setattr(execute, "process", process)
    specs = plan.colour_plan([plan.ColourSet("CIFAR10", "cifar10", "/c")], epochs=2, m=100,
                             s=100, bits=[1, 2])
    lines: list[str] = []
    failures = execute.run_queue(specs, QueueOptions(tmp_path), out=lines.append)
    assert [f.split(":")[0] for f in failures] == ["cifar10-m100-sdlss-2", "cifar10-m100-dcs-32"]
    assert any("cifar10-m100-sdlss-1: stopped: qgen-train was stopped" in line
               for line in lines), lines


def test_quantizer_error_script_measures_every_quantizer(tmp_path, capsys):
    """paper/quantizer_error.py on a tiny 32-bit DCGAN: one row per quantizer, errors that fall
    with the bit width on each grid, the mid-rise 2-bit grid off the mid-tread one, the table
    written where --out says; a quantized checkpoint is refused."""
    from conftest import make_checkpoint

    from qgen_infer.checkpoint import load_checkpoint

    script = _script("quantizer_error")
    ckpt = make_checkpoint(tmp_path / "model.pt", "dcgan", bits=32)
    out = tmp_path / "errors.md"
    assert script.main([str(ckpt), "--latents", "32", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    z = script.sample_latent(32, 12, 4, project=True, generator=torch.Generator().manual_seed(0))
    assert ((z != 0).sum(dim=1) == 4).all() and torch.allclose(z.norm(dim=1), torch.ones(32))
    rows = script.measure(load_checkpoint(ckpt), z)
    assert [(r["bits"], r["overflow_rate"], r["grid"]) for r in rows] == script.QUANTIZERS
    by = {(r["bits"], r["overflow_rate"], r["grid"]): r for r in rows}
    for grid in ("mid-tread", "mid-rise"):
        errors = [by[(b, 0.0, grid)]["weight_error"] for b in (2, 3, 4)]
        assert errors == sorted(errors, reverse=True) and errors[-1] < 0.05
    assert by[(2, 0.0, "mid-rise")]["weight_error"] != by[(2, 0.0, "mid-tread")]["weight_error"]
    assert len(text.splitlines()) > len(rows) and "| 2 | mid-rise | 0.05 |" in text
    with pytest.raises(SystemExit, match="32-bit"):
        script.main([str(make_checkpoint(tmp_path / "q.pt", "dcgan", bits=2))])
