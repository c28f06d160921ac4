"""`arserve train` and `arserve export`: the training code (models/, torch), imported only when they run.

A family defined outside models/ (see docs/own-model.md) comes in with --plugin: a Python file or module whose
ARModel subclasses join the family registry for this run, so that recipes and checkpoints can name them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

from arserve_cli.errors import BadInput, need

TRAIN_EXAMPLES = """examples:
  arserve train nade-mnist                           # models/recipes/nade-mnist.toml; exports to exported/
  arserve train models/recipes/nade-mnist.toml --no-export
  arserve train examples/ema-shakespeare.toml --plugin examples/ema_mlp.py --runs runs --no-export

Training resumes from <runs>/<name>/last.pt when it exists; SIGTERM or Ctrl-C saves it and exits 143."""

EXPORT_EXAMPLES = """examples:
  arserve export runs/nade-mnist/final.pt exported/nade-mnist
  arserve export runs/ema-shakespeare/final.pt my-models/ema-shakespeare --plugin examples/ema_mlp.py

The exporter checks eager vs TorchScript vs ONNX Runtime before writing and leaves OUT_DIR untouched if they
disagree; run `arserve verify OUT_DIR` afterwards for the black-box conformance check."""


def add_commands(sub, formatter) -> None:
    p = sub.add_parser("train", help="train (or resume) a model from a TOML recipe, then evaluate and export it",
                       description="Train a model from a recipe: a path, or the name of one in models/recipes/.",
                       epilog=TRAIN_EXAMPLES, formatter_class=formatter)
    p.add_argument("recipe", help="a TOML recipe file, or a name in models/recipes/ (e.g. nade-mnist)")
    _plugin_option(p)
    p.add_argument("--runs", help="checkpoints and logs go to RUNS/<name>/ (default: runs/ in the repository)")
    p.add_argument("--exported", help="export the final model to EXPORTED/<name>/ (default: exported/)")
    p.add_argument("--no-export", action="store_true", help="stop after the final checkpoint (final.pt)")
    p.add_argument("--finish-only", action="store_true", help="skip training: evaluate best.pt and export it")
    p.set_defaults(run=train)

    p = sub.add_parser("export", help="export a checkpoint to TorchScript + ONNX + manifest.json",
                       description="Export a training checkpoint to an artifact folder the server loads.",
                       epilog=EXPORT_EXAMPLES, formatter_class=formatter)
    p.add_argument("checkpoint", help="a checkpoint written by training (e.g. runs/<name>/final.pt)")
    p.add_argument("out_dir", help="the model's folder, e.g. exported/<name> (replaced only on success)")
    _plugin_option(p)
    p.set_defaults(run=export)


def _plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                   help="a .py file or module defining a model family outside models/ (repeatable)")


def load_plugins(specs: list[str]) -> list[str]:
    """Import each plugin and add its ARModel subclasses to models.REGISTRY; returns the families added."""
    models = need("models", "training and export")
    from models.base import ARModel

    added = []
    for spec in specs:
        module = _import(spec)
        classes = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, ARModel)
                   and c.__module__ == module.__name__ and c.family]
        if not classes:
            raise BadInput(f"--plugin {spec}: defines no ARModel subclass with a `family` name")
        for cls in classes:
            taken = models.REGISTRY.get(cls.family)
            if taken is not None and taken is not cls:
                raise BadInput(f"--plugin {spec}: family {cls.family!r} is already {taken.__module__}."
                               f"{taken.__name__}; pick another name")
            models.REGISTRY[cls.family] = cls
            added.append(cls.family)
    return added


def _import(spec: str):
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise BadInput(f"--plugin {spec}: no such file")
        name = f"arserve_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise BadInput(f"--plugin {spec}: importing it raised {type(e).__name__}: {e}") from e
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise BadInput(f"--plugin {spec}: not a file and not an importable module ({e})") from None


def _recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    models = need("models", "arserve train")
    named = Path(models.__file__).parent / "recipes" / f"{recipe}.toml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in named.parent.glob("*.toml"))
    raise BadInput(f"no recipe file {recipe!r} and no recipe of that name in {named.parent} (known: {known})")


def train(args: argparse.Namespace) -> int:
    need("torch", "arserve train")
    load_plugins(args.plugin)
    train_mod = need("models.train", "arserve train")
    from models.data import DataUnavailable

    path = _recipe_path(args.recipe)
    try:
        train_mod.Recipe.load(path)  # a bad recipe fails here, naming the file, before any work
    except (TypeError, ValueError, KeyError) as e:
        raise BadInput(f"{path}: not a valid recipe: {e}") from None
    argv = [str(path)]
    for flag in ("runs", "exported"):
        if getattr(args, flag):
            argv += [f"--{flag}", getattr(args, flag)]
    argv += ["--no-export"] * args.no_export + ["--finish-only"] * args.finish_only
    try:
        train_mod.main(argv)
    except DataUnavailable as e:
        raise BadInput(str(e)) from None
    return 0


def export(args: argparse.Namespace) -> int:
    need("torch", "arserve export")
    load_plugins(args.plugin)
    from models.checkpoint import CheckpointError
    from models.export import ExportError, export_checkpoint

    try:
        manifest = export_checkpoint(args.checkpoint, args.out_dir)
    except (CheckpointError, ExportError) as e:
        raise BadInput(str(e)) from None
    parity = manifest.export["parity"]
    print(f"exported {manifest.name} ({manifest.family}) to {args.out_dir}: eager, TorchScript and ONNX Runtime "
          f"agree (log_prob max diff {parity['log_prob_max_abs_diff']}); next: arserve verify {args.out_dir}")
    return 0
