"""`arserve`: the parser, the dispatch to subcommands, and the mapping from errors to exit codes."""

from __future__ import annotations

import argparse
import sys

from arserve_cli import compiling, errors, remote, serve, training, verify

EPILOG = """examples:
  arserve serve                                   # every model in ./exported on port 8000 (= make serve)
  arserve models --url http://127.0.0.1:8000      # what a running server serves
  arserve sample lstm-shakespeare --prompt "ROMEO:" --max-len 200
  arserve score nade-mnist digit.png              # log p(x) of an image, against the running server
  arserve verify exported/nade-mnist              # is this artifact a correct autoregressive model?
  arserve compile exported/wavenet-fsdd           # its step compiled for this machine (backend "compiled")
  arserve train nade-mnist                        # models/recipes/nade-mnist.toml, then export

exit codes:
""" + "\n".join(f"  {code:<3} {what}" for code, what in errors.EXIT_CODES.items())


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines; a fixed width so that docs/cli.md (generated) reads the same everywhere."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32, width=100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arserve", formatter_class=Formatter, epilog=EPILOG,
        description="Serve, train, export, verify and query exact-likelihood autoregressive models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, training, remote, verify, compiling):
        module.add_commands(sub, Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or errors.OK
    except errors.CLIError as e:
        print(f"arserve {args.command}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print(f"arserve {args.command}: interrupted", file=sys.stderr)
        return 130
