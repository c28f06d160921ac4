"""docs/cli.md from the `arserve` parser itself, so the page always says what the command does.

    .venv/bin/python docs/make_cli_docs.py          # rewrite docs/cli.md
    .venv/bin/python docs/make_cli_docs.py --check  # exit 1 if docs/cli.md is out of date (tests run this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: arserve_cli/ lives at the repository root

from arserve_cli.errors import EXIT_CODES  # noqa: E402
from arserve_cli.main import build_parser  # noqa: E402

PAGE = ROOT / "docs" / "cli.md"
INTRO = """# The `arserve` command

← [arserve](../README.md)

One command with subcommands, installed with the project (`pip install -e .` puts `arserve` on the PATH;
`python -m arserve_cli` is the same). `serve`, `sample`, `score`, `models` and `verify` need only the service's
dependencies; `train` and `export` also need torch and the training code in `models/` (a missing one exits 5,
naming it). Writing and serving a model of your own, step by step: [own-model.md](own-model.md).

This page is generated from the parser by `docs/make_cli_docs.py`; a test fails when it is out of date.
"""


def render() -> str:
    parser = build_parser()
    parts = [INTRO, "## Exit codes\n", "| code | meaning |", "|---|---|"]
    parts += [f"| {code} | {what} |" for code, what in EXIT_CODES.items()]
    parts += ["", "## arserve --help\n", "```text", parser.format_help().rstrip(), "```", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## arserve {name}\n", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run docs/make_cli_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
