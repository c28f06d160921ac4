"""Exit codes and the errors that carry them: every failure names its problem and maps to one code."""

from __future__ import annotations

OK = 0
FAILED = 1  # `verify`: an artifact fails a property; `sample`: the stream ended in an error event
USAGE = 2  # bad arguments (argparse)
BAD_INPUT = 3  # a file, recipe, checkpoint or artifact that cannot be used; the server refused the request (4xx)
SERVER = 4  # the server cannot be reached, is not ready, or failed (5xx)
MISSING = 5  # the subcommand needs a package that is not installed (torch, the training code in models/)
STOPPED = 143  # `train` stopped by SIGTERM / SIGINT after saving last.pt: the same command resumes it

EXIT_CODES = {
    OK: "success",
    FAILED: "verify: an artifact fails a property; sample: the stream ended in an error event",
    USAGE: "bad arguments or options",
    BAD_INPUT: "an input, recipe, checkpoint or artifact that cannot be used, or a request the server refused (4xx)",
    SERVER: "the server cannot be reached, is not ready, or failed (5xx)",
    MISSING: "the subcommand needs a package that is not installed (torch, models/)",
    STOPPED: "train: stopped by SIGTERM/SIGINT after saving its checkpoint; run the same command to resume",
}


class CLIError(Exception):
    code = FAILED


class BadInput(CLIError):
    code = BAD_INPUT


class ServerError(CLIError):
    code = SERVER


class Missing(CLIError):
    code = MISSING


def need(module: str, what: str):
    """Import a package a subcommand needs, or fail with MISSING naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Missing(f"{what} needs {e.name or module}, which is not installed "
                      f"(pip install -e '.[dev]' from the repository installs everything)") from None
