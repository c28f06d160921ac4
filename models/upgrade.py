"""Re-export a model folder from its own weights, in the current artifact format.

    python -m models.upgrade exported/wavenet-fsdd [exported/igpt-mnist ...]
    python -m models.upgrade --step-graph exported/transformer-shakespeare exported/igpt-mnist

For artifacts written by an older exporter (e.g. manifest format 1, whose state is copied in and out of every
step): the model is rebuilt from the manifest's family and config with the weights inside its model.pt, then
exported again, through the same parity gate, with the manifest's name, data description, training record and
metrics. The folder is replaced only if the export succeeds.

With --step-graph only step.onnx is rewritten (models/stepgraph.py), in place of a full export: its weights stay
where they are (ranges of model.pt and weights.bin), every other file keeps its bytes, and the rewritten graph
passes the exporter's parity gate before the folder's step.onnx and the manifest's entry for it are replaced.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import onnx

from app.runtime.manifest import MANIFEST, ArtifactError, FileEntry, load_manifest, sha256_file
from models.export import ExportError, _replace_dir, export_model, verify
from models.runtimes import EagerRuntime
from models.stepgraph import fuse_step_graph

KEPT = ("name", "modality", "shape", "description", "training", "metrics")


def upgrade(folder: str | Path) -> None:
    m = load_manifest(folder)
    meta = {k: getattr(m, k) for k in KEPT}
    meta["vocabulary"] = m.vocabulary.model_dump(exclude_none=True)
    model = EagerRuntime.from_folder(folder).model
    export_model(model, folder, meta)


def upgrade_step_graph(folder: str | Path) -> list[str]:
    """Rewrite the folder's step.onnx alone (models/stepgraph.py), through the parity gate; returns the rewrites
    made (none: the folder is left as it was)."""
    folder = Path(folder)
    m = load_manifest(folder)
    step = onnx.load(str(folder / "step.onnx"), load_external_data=False)  # weights stay ranges of their files
    done = fuse_step_graph(step.graph)
    if not done:
        return []
    build = Path(tempfile.mkdtemp(prefix=f".{folder.name}.step-", dir=folder.parent))
    try:
        build.chmod(0o755)
        for f in folder.iterdir():
            if f.is_file():
                shutil.copy2(f, build / f.name)
        onnx.save_model(step, str(build / "step.onnx"))
        parity = verify(EagerRuntime.from_folder(folder).model, build, m.state, m.step_program)
        files = dict(m.files)
        new = build / "step.onnx"
        files["step.onnx"] = FileEntry(sha256=sha256_file(new), bytes=new.stat().st_size)
        step_graph = {"rewrites": done, "created_utc": datetime.now(UTC).isoformat(timespec="seconds")}
        export = {**m.export, "parity": {**m.export.get("parity", {}), **parity}, "step_graph": step_graph}
        manifest = m.model_copy(update={"files": files, "export": export})
        (build / MANIFEST).write_text(manifest.model_dump_json(indent=2, exclude_unset=True) + "\n")
        load_manifest(build)  # every sha256 checks out
        _replace_dir(build, folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Re-export model folders from their own weights (current format).")
    ap.add_argument("folders", nargs="+", help="exported model folders, e.g. exported/wavenet-fsdd")
    ap.add_argument("--step-graph", action="store_true", help="only rewrite step.onnx (models/stepgraph.py)")
    args = ap.parse_args(argv)
    for folder in args.folders:
        try:
            if args.step_graph:
                done = upgrade_step_graph(folder)
                print(f"{folder}: step.onnx " + (f"rewritten ({', '.join(done)})" if done else "already rewritten"))
                continue
            upgrade(folder)
        except (ArtifactError, ExportError) as e:
            print(f"upgrade of {folder} failed: {e}", file=sys.stderr)
            return 1
        print(f"upgraded {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
