"""What every command-line tool shares: one-line errors, exit codes, Ctrl-C, help that states
each default once, and the old spellings of renamed options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from qgen_infer.errors import QgenError
from qgen_infer.signals import ignore_further_sigterm

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


# The data set names of qgen_infer.data.DATASETS, here so that building a parser (and --help)
# does not import torch; tests/test_cli_surface.py holds the two equal.
DATASET_NAMES = ("mnist", "cifar10", "svhn", "stl10", "folder", "digits", "patches")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default stated once: appended as "(default: X)" unless the help text
    already says what the default is (argparse's ArgumentDefaultsHelpFormatter appends it
    regardless, which printed "(default: as trained) (default: None)"). A default of None or
    False means "not given" and is not printed. The description and the epilog's examples are
    printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False  # not 0 or 0.0, which == False
        if (unset or action.default == argparse.SUPPRESS or "default" in text.lower()
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def _rewrite(argv: list[str], renamed: dict[str, str]) -> list[str]:
    """``argv`` with each old option spelling replaced by its current one (``--out X`` and
    ``--out=X`` alike); nothing after a bare ``--`` is touched."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        flag, eq, value = arg.partition("=")
        out.append(renamed[flag] + eq + value if flag in renamed else arg)
    return out


def _take_option(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``, and the value (None when absent; the
    last one wins, as with argparse)."""
    rest: list[str] = []
    value, i = None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return rest + argv[i:], value
        if arg == flag and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
        else:
            rest.append(arg)
        i += 1
    return rest, value


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error convention (one line, exit 2), each default stated
    once, and old option spellings kept working without being shown:

    * ``add_input(dest, old_flag=...)``: a required input file, positional in the order the
      data flows (the model first); ``old_flag`` (e.g. ``--model``) is still accepted.
    * ``rename(old, new)``: ``old`` (e.g. ``--out`` where the option now is ``--out-dir``) is
      read as ``new``.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._renamed: dict[str, str] = {}
        self._input_flags: list[str | None] = []

    def add_input(self, dest: str, *, help: str, metavar: str,
                  old_flag: str | None = None) -> None:
        self.add_argument(dest, metavar=metavar, help=help)
        self._input_flags.append(old_flag)

    def rename(self, old: str, new: str) -> None:
        self._renamed[old] = new

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        argv = _rewrite(list(sys.argv[1:] if args is None else args), self._renamed)
        # inputs given by their old flags become positionals again: those before the first
        # input given positionally go in front, the others after everything (argparse fills
        # positionals in order wherever they stand between options)
        front: list[str] = []
        back: list[str] = []
        positional_seen = False
        for flag in self._input_flags:
            value = None
            if flag is not None:
                argv, value = _take_option(argv, flag)
            if value is None:
                positional_seen = True
            else:
                (back if positional_seen else front).append(value)
        return super().parse_known_args(front + argv + back, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {' '.join(message.split())} "
                                   f"(run '{self.prog} --help' for the options)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``, else argparse's one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside [{low}, {high}]")
        return value
    parse.__name__ = "integer"  # named in argparse's messages
    return parse


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` if
    ``low_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        above = value > low if low_open else value >= low
        if not (above and value <= high):  # NaN fails both comparisons
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{value} is outside {bracket}{low:g}, {high:g}]")
        return value
    parse.__name__ = "number"
    return parse


def _resource_error(exc: BaseException) -> str | None:
    """The one-line message for a failure of the machine rather than of the code: a file that
    cannot be read or written, or memory that ran out (numpy's and torch's allocators)."""
    if isinstance(exc, OSError):
        where = f" {str(exc.filename)!r}" if exc.filename is not None else ""
        return f"cannot access{where} ({exc.strerror or type(exc).__name__})"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        first = " ".join(str(exc).split())[:200] or type(exc).__name__
        return f"out of memory ({first}); use a smaller batch or fewer images"
    return None


def run_cli(prog: str, body: Callable[[Sequence[str] | None], int | None],
            argv: Sequence[str] | None = None) -> int:
    """Run ``body(argv)`` and return its exit code: a :class:`QgenError`, a file the system
    refuses (``OSError``) or exhausted memory becomes one line and code 2, Ctrl-C 130,
    argparse's own exits keep their codes (so ``main()`` always returns)."""
    try:
        code = body(argv)
    except SystemExit as exc:  # argparse's --help and usage errors: keep their codes
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    except QgenError as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        while True:  # the SIGTERM of the same stop can land in this very clause: once more
            try:
                ignore_further_sigterm()
                break
            except KeyboardInterrupt:
                continue  # raised by the handler, which ignores both signals from then on
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError, RuntimeError) as exc:
        message = _resource_error(exc)
        if message is None:  # a bug, not the user's input: keep the traceback
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(code or 0)


def check_data_flags(dataset: str | None, root: str | None) -> None:
    """``--data`` / ``--data-root`` mistakes named by their flags, before a loader reports them
    in the words of its Python arguments (``root=``)."""
    from qgen_infer.data import dataset_info

    info = dataset_info(dataset)  # an unknown name: argparse's choices caught it already
    if info["embedded"] and root is not None:
        raise QgenError(f"--data {info['name']} is embedded in the package and takes no "
                        f"--data-root (got {root!r}); drop --data-root")
    if not info["embedded"] and root is None:
        raise QgenError(f"--data {info['name']} needs --data-root DIR, the folder holding its "
                        f"files ({info['description']})")
