"""`arserve sample`, `arserve score`, `arserve models`: through app/client.py, against a running server (--url) or
in-process, when MODEL is a model folder: the same app then runs on a private port for the one command."""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from arserve_cli import inputs, output
from arserve_cli.errors import BadInput, CLIError, ServerError

DEFAULT_URL = "http://127.0.0.1:8000"

SAMPLE_EXAMPLES = """examples:
  arserve sample lstm-shakespeare --prompt "ROMEO:" --max-len 300 --seed 1    # text streams to stdout
  arserve sample nade-mnist -o digit.png                # an image: ASCII art on stdout, the PNG in digit.png
  arserve sample wavenet-fsdd --max-len 8000 -o digit.wav --url http://gpu-box:8000
  arserve sample exported/igpt-mnist --temperature 0.8 --json   # a model folder: in-process, no server

MODEL is a model name served at --url, or a model folder (with manifest.json) run in-process."""

SCORE_EXAMPLES = """examples:
  arserve score nade-mnist digit.png other.png          # one row per input: log p(x) in nats, bits per dim
  arserve score lstm-shakespeare --text "To be, or not to be" speech.txt
  arserve score wavenet-fsdd clip.wav --truncate --per-position --json
  arserve score exported/made2000-mnist batch.npy       # rows of a [N, 784] array; in-process

Inputs: .txt (text models: the characters; others: numbers), .npy (one x or a batch of rows), images (.png and
other formats: the model's size, grayscale, >= 128 is ink), .wav (PCM at the model's sample rate)."""

MODELS_EXAMPLES = """examples:
  arserve models                                        # what the server at $ARSERVE_URL serves
  arserve models --model-dir exported --json            # read the folders' manifests, no server"""


def _url_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"the server (ARSERVE_URL; default {DEFAULT_URL})")


def add_commands(sub, formatter) -> None:
    p = sub.add_parser("sample", help="draw a sample (streamed) from a served model or a model folder",
                       description="Draw one sample token by token (GET /sample).", epilog=SAMPLE_EXAMPLES,
                       formatter_class=formatter)
    p.add_argument("model", help="a model name (at --url) or a model folder (in-process)")
    _url_option(p)
    p.add_argument("--seed", type=int, help="same seed and options, same sample (default: random, reported)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (%(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass; 1 = off")
    p.add_argument("--max-len", type=int, help="most tokens to generate (text and audio; default: to the end)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--prompt", help="text models: text to continue")
    group.add_argument("--prefix", help="tokens to continue, comma-separated (e.g. 0,1,1)")
    p.add_argument("--chunk", type=int, default=16, help="tokens per streamed event (%(default)s)")
    p.add_argument("--backend", choices=["onnx", "torchscript", "compiled"], help="default: the model's configured one")
    p.add_argument("-o", "--output", type=Path, help="write the sample: .png for images, .wav for audio, text, "
                                                     "or .npy tokens")
    p.add_argument("--json", action="store_true", help="print the done event (JSON) instead of the sample")
    p.set_defaults(run=sample)

    p = sub.add_parser("score", help="log-likelihood of files (text, .npy, images, WAV) under a model",
                       description="Score inputs with POST /logprob: exact log p(x) in nats and bits per dim.",
                       epilog=SCORE_EXAMPLES, formatter_class=formatter)
    p.add_argument("model", help="a model name (at --url) or a model folder (in-process)")
    p.add_argument("files", nargs="*", type=Path, help="inputs: .txt, .npy, images, .wav")
    p.add_argument("--text", action="append", default=[], help="a string to score (text models; repeatable)")
    _url_option(p)
    p.add_argument("--per-position", action="store_true", help="also report each position's log-prob (JSON)")
    p.add_argument("--prefix-len", type=int, default=0, help="score only x[k:] given x[:k] (%(default)s)")
    p.add_argument("--truncate", action="store_true", help="cut inputs longer than the model's length")
    p.add_argument("--backend", choices=["onnx", "torchscript", "compiled"], help="default: the model's configured one")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=score)

    p = sub.add_parser("models", help="list the models a server serves, or the model folders under a directory",
                       description="List models: name, family, modality, length, revision, held-out NLL.",
                       epilog=MODELS_EXAMPLES, formatter_class=formatter)
    _url_option(p)
    p.add_argument("--model-dir", type=Path, help="read the manifests in this folder instead of asking a server")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=list_models)


# ----- reaching the model -----------------------------------------------------------------------------


@contextlib.contextmanager
def connect(model: str, url: str | None) -> Iterator[tuple[object, str]]:
    """(client, model name): for a model folder, an in-process server of that folder alone."""
    from app.client import ArserveClient

    url = server_url(url)
    folder = Path(model)
    if (folder / "manifest.json").is_file():
        with local_server(folder) as (local_url, name):
            with ArserveClient(local_url, timeout=600) as client:
                yield client, name
        return
    if os.sep in model or model.startswith("."):
        raise BadInput(f"{model}: not a model folder (no manifest.json there) and not a model name")
    with ArserveClient(url, timeout=600) as client:
        yield client, model


def server_url(flag: str | None) -> str:
    return flag or os.environ.get("ARSERVE_URL", DEFAULT_URL)


@contextlib.contextmanager
def local_server(folder: Path) -> Iterator[tuple[str, str]]:
    """The app on 127.0.0.1 (a free port) in a thread, serving only `folder`; yields (url, model name).
    ARSERVE_* settings apply, as for `arserve serve`."""
    import uvicorn

    from app.main import create_app
    from app.runtime.config import Settings
    from app.runtime.manifest import ArtifactError, load_manifest

    try:
        name = load_manifest(folder, verify=False).name
    except ArtifactError as e:
        raise BadInput(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="arserve-") as tmp:
        (Path(tmp) / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        app = create_app(Settings(model_dir=Path(tmp), log_level=os.environ.get("ARSERVE_LOG_LEVEL", "warning")))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="arserve-local")
        thread.start()
        try:
            registry = app.state.registry
            while not (server.started and registry.loaded):
                if not thread.is_alive():
                    raise ServerError(f"the in-process server for {folder} stopped while starting")
                time.sleep(0.05)
            if name not in registry.models:
                raise BadInput(f"{folder} was refused: {registry.skipped.get(folder.name, 'see the log')}")
            yield f"http://127.0.0.1:{port}", name
        finally:
            server.should_exit = True
            thread.join(30)
            sock.close()


def _call(fn, *args, **kwargs):
    """A client call; HTTP errors and unreachable servers become CLI errors with the server's own message."""
    import httpx

    from app.client import ArserveError

    try:
        return fn(*args, **kwargs)
    except ArserveError as e:  # status 200: an error event after the stream started
        kind = CLIError if e.status == 200 else BadInput if 400 <= e.status < 500 else ServerError
        raise kind(f"{e.code}: {e.message}") from None
    except httpx.TransportError as e:
        raise ServerError(f"cannot reach the server: {e} (start one with `arserve serve`, or pass --url)") from None


def _model_info(client, name: str) -> dict:
    for m in _call(client.models):
        if m["name"] == name:
            return m
    known = sorted(m["name"] for m in _call(client.models))
    raise BadInput(f"model: no model named {name!r}; served: {known}")


# ----- sample -----------------------------------------------------------------------------------------


def sample(args: argparse.Namespace) -> int:
    params = {k: getattr(args, k) for k in ("seed", "temperature", "top_k", "top_p", "max_len", "prompt", "prefix",
                                            "chunk", "backend")}
    with connect(args.model, args.url) as (client, name):
        info = _model_info(client, name)
        stream_text = info["modality"] == "text" and not args.json
        if stream_text and args.prompt:
            sys.stdout.write(args.prompt)
        done = _call(_stream, client, name, params, stream_text)
    if args.output:
        _write_sample(args.output, done)
    if args.json:
        output.dump(done)
        return 0
    if stream_text:
        sys.stdout.write("\n")
    elif info["modality"] == "binary_image":
        print(ascii_image(done["tokens"], info, args.prefix))
    elif not args.output:
        print(" ".join(str(t) for t in done["tokens"]))
    print(f"# {name} revision {done['revision']} ({done['backend']}): {done['num_tokens']} tokens, "
          f"log p = {done['logprob']:.4f} nats, seed {done['seed']}, {done['finish_reason']}"
          + (f", written to {args.output}" if args.output else ""), file=sys.stderr)
    return 0


def _stream(client, name: str, params: dict, stream_text: bool) -> dict:
    """The done event's data; text goes to stdout as the token events arrive."""
    for event in client.sample(name, **params):
        if event.event == "token" and stream_text:
            sys.stdout.write(event.data.get("text", ""))
            sys.stdout.flush()
        elif event.event == "done":
            return event.data
    raise ServerError("the stream ended without a done event")


def ascii_image(tokens: list, info: dict, prefix: str | None) -> str:
    pixels = ([int(t) for t in prefix.split(",")] if prefix else []) + [int(t) for t in tokens]
    w = info["vocabulary"]["width"]
    return "\n".join("".join("#" if p else "." for p in pixels[r : r + w]) for r in range(0, len(pixels), w))


def _write_sample(path: Path, done: dict) -> None:
    for key in ("png", "wav"):
        if key in done:
            path.write_bytes(base64.b64decode(done[key].split(",", 1)[1]))
            return
    if "text" in done:
        path.write_text(done["text"], encoding="utf-8")
        return
    import numpy as np

    np.save(path, np.asarray(done["tokens"]))


# ----- score ------------------------------------------------------------------------------------------

BATCH = 32  # inputs per request (the server's ARSERVE_MAX_BATCH defaults to 64)


def score(args: argparse.Namespace) -> int:
    if not args.files and not args.text:
        raise BadInput("nothing to score: give files, or --text")
    with connect(args.model, args.url) as (client, name):
        info = _model_info(client, name)
        if args.text and info["modality"] != "text":
            raise BadInput(f"--text: {name} is a {info['modality']} model; give files")
        items = [(f"--text[{i}]", t) for i, t in enumerate(args.text)]
        for path in args.files:
            items += inputs.read(path, info, args.truncate)
        results, answer = [], {}
        for i in range(0, len(items), BATCH):
            group = items[i : i + BATCH]
            answer = _call(client.logprob, name, [x for _, x in group], per_position=args.per_position,
                           prefix_len=args.prefix_len, backend=args.backend)
            results += [{"input": label, **r} for (label, _), r in zip(group, answer["results"], strict=True)]
    if args.json:
        output.dump({"model": name, "revision": answer["revision"], "backend": answer["backend"],
                     "results": results})
        return 0
    output.table(["input", "logprob (nats)", "bits/dim", "positions"],
                 [[r["input"], r["logprob"], r["bits_per_dim"], r["num_positions"]] for r in results])
    print(f"# {name} revision {answer['revision']} ({answer['backend']})", file=sys.stderr)
    return 0


# ----- models -----------------------------------------------------------------------------------------


def list_models(args: argparse.Namespace) -> int:
    if args.model_dir:
        found, problems = _read_folders(args.model_dir)
    else:
        from app.client import ArserveClient

        with ArserveClient(server_url(args.url)) as client:
            found, problems = _call(client.models), {}
    if args.json:
        output.dump({"models": found, "problems": problems})
        return 0
    output.table(["name", "family", "modality", "length", "vocab", "revision", "held-out NLL", "backends"],
                 [[m["name"], m["family"], m["modality"], m["length"], m["vocab_size"], m["revision"],
                   _headline(m["metrics"]), ",".join(m.get("backends", []))] for m in found])
    for folder, why in problems.items():
        print(f"# {folder}: {why}", file=sys.stderr)
    return 0


def _read_folders(root: Path) -> tuple[list[dict], dict[str, str]]:
    from app.runtime.backends import available
    from app.runtime.manifest import ArtifactError, load_manifest, revision

    if not root.is_dir():
        raise BadInput(f"--model-dir {root}: no such folder")
    found, problems = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            m = load_manifest(folder, verify=True)
        except ArtifactError as e:
            problems[folder.name] = str(e)
            continue
        found.append({**m.model_dump(exclude={"io", "export", "format_version", "training"}),
                      "revision": revision(folder), "backends": available(m)})
    return found, problems


def _headline(metrics: dict) -> str | None:
    for split in ("test", "valid"):
        r = metrics.get(split)
        if isinstance(r, dict) and "nll" in r:
            return f"{r['nll']:.4g} {r.get('unit', 'nats')} ({split})"
    return None

