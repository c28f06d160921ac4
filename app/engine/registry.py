"""The loaded models: every folder under ARSERVE_MODEL_DIR, verified, each with its own worker thread for
streams (app/engine/worker.py) and its own scoring thread for POST /logprob (app/engine/scoring.py).

A folder that cannot be trusted (no manifest, invalid manifest, sha256 mismatch, a backend that fails to
load) is logged and skipped; the others are served. Each model's configured backend is loaded at startup;
the other one on the first request that asks for it, on the thread that serves it. Each backend is checked for
conformance as it loads (app/engine/verify.py, unless ARSERVE_VERIFY_ON_LOAD=off): an artifact that is not a
correct autoregressive model is refused with the property it fails.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from app.engine.errors import invalid, model_not_found, unavailable
from app.engine.scoring import Scorer
from app.engine.verify import FAST, verify_backend
from app.engine.worker import ModelWorker
from app.runtime import backends
from app.runtime.backends import Backend
from app.runtime.config import BackendName, Settings
from app.runtime.manifest import ArtifactError, Manifest, load_manifest, revision
from app.runtime.metrics import Metrics

log = logging.getLogger("arserve")


class ServedModel:
    def __init__(self, folder: Path, manifest: Manifest, settings: Settings, metrics: Metrics):
        self.folder, self.manifest, self.settings = folder, manifest, settings
        self.name = manifest.name
        self.revision = revision(folder)  # in /models and every response: a replaced model is never silently new
        self.available = backends.available(manifest)
        self.default_backend = settings.backend_for(self.name)
        if self.default_backend in ("auto", "compiled") and "compiled" not in self.available:  # no step program
            if self.default_backend == "compiled":
                log.info("%s declares no step program: its default backend is onnx", self.name)
            self.default_backend = "onnx"
        elif self.default_backend == "auto":
            self.default_backend = "compiled"
        if self.default_backend not in self.available:
            raise ArtifactError(f"{folder}: configured backend {self.default_backend!r} has no files here "
                                f"(available: {self.available})")
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self.backend(self.default_backend)  # fail at startup, not on the first request
        self.worker = ModelWorker(self.name, self.backend, metrics, settings.max_batch)
        self.scorer = Scorer(self.name, self.backend, manifest, settings, metrics, self.default_backend)
        metrics.add_model(self.name)

    def backend(self, name: str) -> Backend:
        with self._lock:
            if name not in self._backends:
                self._backends[name] = self._load(name)
            return self._backends[name]

    def _load(self, name: str) -> Backend:
        threads = self.settings.torch_threads if name == "torchscript" else self.settings.ort_intra_op_threads
        try:
            backend = backends.load(name, self.folder, self.manifest, threads, self.settings)
        except backends.MissingDependency as e:  # the same for every model: no traceback
            log.error("cannot load the %s backend of %s: %s", name, self.name, e)
            raise unavailable("backend_unavailable", f"backend: {name} cannot load for {self.name}: {e}",
                              field="backend") from None
        except Exception as e:
            log.exception("cannot load the %s backend of %s", name, self.name)
            raise unavailable("backend_unavailable", f"backend: {name} failed to load for {self.name}: {e}",
                              field="backend") from None
        if self.settings.verify_on_load == "fast":
            report = verify_backend(backend, self.manifest, FAST, why_no_data="not checked at load")
            if not report.ok:
                log.error("refusing %s: %s", self.folder, report.message())
                raise unavailable("nonconforming_model", f"backend: {report.message()}", field="backend")
        return backend

    def pick_backend(self, requested: BackendName | None) -> BackendName:
        name = requested or self.default_backend
        if name not in self.available:
            raise invalid("backend", f"model {self.name} ships no {name} artifact (available: {self.available})")
        return name

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        out = m.model_dump(exclude={"io", "export", "format_version"})
        out["training"] = _without_paths(out["training"])
        out["metrics"] = _without_paths(out["metrics"])
        out["backends"] = self.available
        out["revision"] = self.revision
        out["default_backend"] = self.default_backend
        if "compiled" in self.available:  # "compiled", "building", "onnx: why not", or not loaded yet
            loaded = self._backends.get("compiled")
            out["compiled_step"] = getattr(loaded, "status", "not loaded")
        return out


def _without_paths(d: Any) -> Any:
    """Drop absolute filesystem paths (e.g. a training data folder): /models must not reveal the server's disk."""
    if isinstance(d, dict):
        return {k: _without_paths(v) for k, v in d.items() if not (isinstance(v, str) and _is_path(v))}
    if isinstance(d, list):
        return [_without_paths(v) for v in d if not (isinstance(v, str) and _is_path(v))]
    return d


def _is_path(s: str) -> bool:
    return s.startswith(("/", "~")) or (len(s) > 2 and s[1:3] in (":\\", ":/"))


class Registry:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, ServedModel] = {}
        self.skipped: dict[str, str] = {}  # folder name -> why
        self.loaded = False

    def load(self) -> None:
        """Load every model folder (blocking: run it off the event loop)."""
        root = self.settings.model_dir
        if not root.is_dir():
            log.error("model directory %s does not exist: serving no models", root)
        models: dict[str, ServedModel] = {}
        # dot-folders are exports in progress (models/export.py builds in .<name>.export-*, then renames)
        found = root.iterdir() if root.is_dir() else []
        folders = sorted(p for p in found if p.is_dir() and not p.name.startswith("."))
        for folder in folders:
            try:
                self._load_one(folder, models)
            except Exception as e:  # one bad folder must not take the others down
                why = str(e)
                if isinstance(e, PermissionError):  # e.g. a mounted folder checked out under umask 077
                    why += f" (the server runs as uid {os.getuid()}: make the files readable, chmod -R a+rX)"
                log.error("skipping %s: %s", folder, why)
                self.skipped[folder.name] = why
        for model in models.values():
            model.worker.start()
            model.scorer.start()
        self.models = models  # published whole: requests never see a half-loaded registry
        self.loaded = True
        log.info("serving %d model(s): %s", len(self.models), sorted(self.models))

    def _load_one(self, folder: Path, models: dict[str, ServedModel]) -> None:
        manifest = load_manifest(folder, verify=True)
        if manifest.name in models:
            raise ArtifactError(f"duplicate model name {manifest.name!r} (also in {models[manifest.name].folder})")
        models[manifest.name] = ServedModel(folder, manifest, self.settings, self.metrics)

    @property
    def ready(self) -> bool:
        """Loaded, serving a model, and (with ARSERVE_REQUIRE_ALL_MODELS) no folder skipped."""
        return self.loaded and bool(self.models) and not (self.settings.require_all_models and self.skipped)

    def skipped_reasons(self) -> dict[str, str]:
        """Why each folder was skipped, with file paths cut to their last part (the log has them whole)."""
        return {name: _PATH.sub(lambda m: m.group(1), why) for name, why in self.skipped.items()}

    def require_loaded(self) -> None:
        if not self.loaded:
            raise unavailable("not_ready", "models are still loading", self.settings.retry_after_s)

    def get(self, name: str) -> ServedModel:
        self.require_loaded()
        if name not in self.models:
            raise model_not_found(name, list(self.models))
        return self.models[name]

    def close(self, timeout: float = 2.0) -> None:
        """Stop every worker, waiting `timeout` in all (they are daemon threads: a busy one dies with the process)."""
        deadline = time.monotonic() + timeout
        for model in self.models.values():
            if model.worker.thread.is_alive():
                model.worker.stop(max(0.0, deadline - time.monotonic()))
            if model.scorer.thread.is_alive():
                model.scorer.stop(max(0.0, deadline - time.monotonic()))


_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])*([^\s'\"/\\]*)")
