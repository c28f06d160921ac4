"""Re-export a model folder from its own weights, in the current artifact format.

    python -m models.upgrade exported/wavenet-fsdd [exported/igpt-mnist ...]

For artifacts written by an older exporter (e.g. manifest format 1, whose state is copied in and out of every
step): the model is rebuilt from the manifest's family and config with the weights inside its model.pt, then
exported again, through the same parity gate, with the manifest's name, data description, training record and
metrics. The folder is replaced only if the export succeeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.runtime.manifest import ArtifactError, load_manifest
from models.export import ExportError, export_model
from models.runtimes import EagerRuntime

KEPT = ("name", "modality", "shape", "description", "training", "metrics")


def upgrade(folder: str | Path) -> None:
    m = load_manifest(folder)
    meta = {k: getattr(m, k) for k in KEPT}
    meta["vocabulary"] = m.vocabulary.model_dump(exclude_none=True)
    model = EagerRuntime.from_folder(folder).model
    export_model(model, folder, meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Re-export model folders from their own weights (current format).")
    ap.add_argument("folders", nargs="+", help="exported model folders, e.g. exported/wavenet-fsdd")
    args = ap.parse_args(argv)
    for folder in args.folders:
        try:
            upgrade(folder)
        except (ArtifactError, ExportError) as e:
            print(f"upgrade of {folder} failed: {e}", file=sys.stderr)
            return 1
        print(f"upgraded {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
