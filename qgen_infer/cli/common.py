"""What every command-line tool shares: one-line errors, exit codes, Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from qgen_infer.errors import QgenError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the description and the epilog's examples printed as
    written (argparse would otherwise refill them into one paragraph)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error convention (one line, exit 2) and defaults shown."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n"
                                   f"(run '{self.prog} --help' for the options)\n")


def run_cli(prog: str, body: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Run ``body(argv)`` and return its exit code: a :class:`QgenError` becomes one line and
    code 2, Ctrl-C 130, argparse's own exits keep their codes (so ``main()`` always returns)."""
    try:
        code = body(argv)
    except SystemExit as exc:  # argparse's --help and usage errors: keep their codes
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    except QgenError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


def default_eval_size(dataset: str | None, count: int) -> int:
    """Held-out images when the user names none: the data set's default (MNIST: the last 1,000),
    else 10% of the ``count`` images loaded."""
    from qgen_infer.data import dataset_info

    default = dataset_info(dataset)["eval_size"]
    return int(default) if default is not None else max(1, round(0.1 * count))
