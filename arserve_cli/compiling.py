"""`arserve compile`: build the compiled step of model folders into the cache the server reads (docs/compiled.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arserve_cli.errors import FAILED, OK, BadInput, need

EXAMPLES = """examples:
  arserve compile exported/wavenet-fsdd                  # into $ARSERVE_COMPILE_CACHE (~/.cache/arserve/compiled)
  arserve compile exported/* --cache /var/cache/arserve  # every folder that declares a step program

A build is specific to this CPU and this torch: run it on the serving machine (it takes minutes and a C++
compiler). A server with ARSERVE_COMPILE=cached (or auto) then serves the "compiled" backend from it at once."""


def add_commands(sub, formatter) -> None:
    p = sub.add_parser("compile", help="compile models' step programs for this machine (the compiled backend)",
                       description="Compile the step program (step.pt2) of model folders with AOTInductor into "
                                   "the compile cache.", epilog=EXAMPLES, formatter_class=formatter)
    p.add_argument("folders", nargs="+", type=Path, help="model folders (each with manifest.json)")
    p.add_argument("--cache", type=Path, help="cache folder (ARSERVE_COMPILE_CACHE; default "
                                              "~/.cache/arserve/compiled)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while compiling (%(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    need("torch", "arserve compile")
    from app.runtime import compiled
    from app.runtime.config import get_settings
    from app.runtime.manifest import ArtifactError, load_manifest

    cache = args.cache or get_settings().compile_cache or compiled.default_cache()
    failed = []
    for folder in args.folders:
        try:
            m = load_manifest(folder)
        except ArtifactError as e:
            raise BadInput(str(e)) from None
        if m.step_program is None:
            print(f"{folder}: no step program declared (served through ONNX): skipped", file=sys.stderr)
            continue
        try:
            path = compiled.build(folder, m, cache, args.threads)
        except Exception as e:  # a compiler error, a torch without AOTInductor: named, the other folders go on
            print(f"{folder}: cannot compile: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(str(folder))
            continue
        print(f"{m.name}: {path}")
    return FAILED if failed else OK
