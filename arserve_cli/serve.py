"""`arserve serve`: what `make serve` runs (python -m app.serve), with the service's settings as flags too."""

from __future__ import annotations

import argparse
import os

from arserve_cli.errors import need

EXAMPLES = """examples:
  arserve serve                                        # ./exported on 127.0.0.1:8000, as `make serve`
  arserve serve --model-dir my-models --host 127.0.0.1 --port 8001
  arserve serve --workers 4 --verify-on-load off       # four processes; trust the artifacts

Every ARSERVE_* environment variable still applies (see the README's settings table); a flag given here
overrides its variable. Host and port default to $ARSERVE_HOST and $ARSERVE_PORT, as in `make serve`."""


def add_commands(sub, formatter) -> None:
    p = sub.add_parser("serve", help="serve every model folder under a directory over HTTP (uvicorn)",
                       description="Serve every model folder under --model-dir: POST /logprob, GET /sample, "
                                   "GET /models, /healthz, /readyz, /metrics.",
                       epilog=EXAMPLES, formatter_class=formatter)
    p.add_argument("--model-dir", help="folder of exported models, one sub-folder each (ARSERVE_MODEL_DIR; "
                                       "default ./exported)")
    p.add_argument("--host", help="address to bind (ARSERVE_HOST; default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, help="port to bind (ARSERVE_PORT; default 8000)")
    p.add_argument("--workers", type=int, default=1, help="server processes, each loads every model; 1 runs make "
                                                         "serve's launcher with its connection guards "
                                                         "(%(default)s)")
    p.add_argument("--backend", choices=["auto", "onnx", "torchscript", "compiled"],
                   help="default backend (ARSERVE_DEFAULT_BACKEND; default auto: compiled where the model ships a "
                        "step program, else onnx)")
    p.add_argument("--verify-on-load", choices=["fast", "off"],
                   help="conformance checks as each model loads (ARSERVE_VERIFY_ON_LOAD; default fast)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="server log level (ARSERVE_LOG_LEVEL; default info)")
    p.set_defaults(run=run)


# flag -> the setting it overrides; set in the environment so that every worker process reads the same
SETTINGS = {"model_dir": "ARSERVE_MODEL_DIR", "backend": "ARSERVE_DEFAULT_BACKEND",
            "verify_on_load": "ARSERVE_VERIFY_ON_LOAD", "log_level": "ARSERVE_LOG_LEVEL"}


def run(args: argparse.Namespace) -> int:
    for flag, var in SETTINGS.items():
        value = getattr(args, flag)
        if value is not None:
            os.environ[var] = str(value)
    uvicorn = need("uvicorn", "arserve serve")
    if args.workers == 1:  # make serve's launcher: connection limits, header timeouts, the drain on SIGTERM
        from app import serve

        serve.main([*(["--host", args.host] if args.host else []), *(["--port", str(args.port)] if args.port else [])])
        return 0
    # Several processes: uvicorn's supervisor, each worker importing the app (and reading the settings) itself.
    # Its workers run the same protocol and loop as the launcher, but without its connection guards.
    host = args.host or os.environ.get("ARSERVE_HOST", "127.0.0.1")
    port = args.port or int(os.environ.get("ARSERVE_PORT", "8000"))
    uvicorn.run("app.main:app", host=host, port=port, workers=args.workers, http="h11", loop="asyncio",
                log_level=args.log_level or "info")
    return 0
