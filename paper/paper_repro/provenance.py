"""Command, machine and date: the stamp every results file carries."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path


def command_line(argv: list[str] | None = None) -> str:
    """How this script was invoked, quoted so it can be pasted back into a shell."""
    args = sys.argv if argv is None else argv
    return "python " + " ".join(shlex.quote(a) for a in args)


def cpu_model() -> str:
    """The CPU's model name, as the engine's CPU dispatcher keys its cost table by it."""
    from qgen_infer.engine.cpu_dispatch import cpu_model_name

    return cpu_model_name()


def machine() -> str:
    """CPU, cores, OS and library versions (no host name: the tables get committed)."""
    import torch

    import qgen_infer

    return (f"{cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"qgen-infer {qgen_infer.__version__}")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def stamp(argv: list[str] | None = None) -> list[str]:
    """Markdown lines: command, machine, date."""
    return [f"- command: `{command_line(argv)}`", f"- machine: {machine()}",
            f"- date: {utc_now()}"]


NOTES_MARKER = "<!-- written by hand below this line: kept when the report is rebuilt -->"


def write_keeping_notes(path: Path, generated: str) -> None:
    """Write ``generated`` to ``path``, keeping everything from :data:`NOTES_MARKER` on (hand
    written sections: how the runs were made, side experiments) from the file already there."""
    notes = ""
    if path.exists():
        old = path.read_text()
        at = old.find(NOTES_MARKER)
        if at >= 0:
            notes = old[at:]
    path.write_text(generated.rstrip("\n") + "\n\n" + notes if notes else generated)
