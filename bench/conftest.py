"""Benchmark runs end with the ratio tables of ``bench/make_cpu_report.py``.

pytest-benchmark's own table compares each case with the fastest case of its group, which is
not the comparison that matters here: after a run of ``bench/test_bench_cpu.py`` this prints,
per shape and batch, the packed kernel's time beside torch fp32 / bf16 and ggml, with the
speed-ups ×fp32 and ×ggml taken within the same run (the fastest round of each case).
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)  # absent without pytest-benchmark
    runs = [b for b in getattr(session, "benchmarks", []) if b]
    kernel_runs = [b.as_dict(include_data=False) for b in runs if "impl" in (b.params or {})]
    if not kernel_runs or config.getoption("benchmark_disable", False):
        return
    import make_cpu_report  # bench/ is on sys.path (rootdir-relative imports, as ggml_ref)

    terminalreporter.write_sep("=", "packed kernels against torch and ggml (make_cpu_report)")
    terminalreporter.write_line(make_cpu_report.report({"benchmarks": kernel_runs}))
