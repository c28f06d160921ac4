"""Service settings, read from ARSERVE_* environment variables (pydantic-settings).

Every knob of the running server lives here, validated at startup, so that a typo in a deployment fails
loudly instead of serving with a silent default. The README's settings table mirrors this class.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BackendName = Literal["onnx", "torchscript"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARSERVE_", frozen=True)

    model_dir: Path = Path("exported")  # one sub-folder per exported model (manifest.json + artifacts)
    default_backend: BackendName = "onnx"  # backend of every model not named in model_backends
    model_backends: dict[str, BackendName] = {}  # per-model override, JSON: {"nade-mnist": "torchscript"}
    max_batch: int = Field(64, ge=1)  # inputs per POST /logprob
    max_length: int = Field(65536, ge=1)  # tokens one input may hold, or one sample may generate
    max_concurrent_streams: int = Field(32, ge=1)  # GET and POST /sample running at once; more get 429
    max_n: int = Field(16, ge=1)  # samples one request may ask for (`n`, native and OpenAI); each takes a stream slot
    max_chunk: int = Field(256, ge=1)  # largest `chunk` (tokens per SSE event) a client may ask for
    request_timeout_s: float = Field(60.0, gt=0)  # POST /logprob and POST /sample: longest wait for the model
    stream_timeout_s: float = Field(600.0, gt=0)  # GET /sample: longest a stream may run before an error event
    keepalive_s: float = Field(15.0, gt=0)  # an SSE comment this often while no token is ready (proxies)
    retry_after_s: int = Field(1, ge=0)  # the Retry-After header sent with 429 and 503
    ort_intra_op_threads: int = Field(1, ge=0)  # ONNX Runtime threads per session (0 = one per core)
    torch_threads: int = Field(1, ge=1)  # torch.set_num_threads for the TorchScript backend
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Conformance checks (app/engine/verify.py, FAST budget) on each backend as it loads: a model that fails is
    # refused, its property named in the log and in /readyz's "skipped". "off" trusts the artifacts.
    verify_on_load: Literal["fast", "off"] = "fast"

    def backend_for(self, model: str) -> BackendName:
        return self.model_backends.get(model, self.default_backend)


@lru_cache
def get_settings() -> Settings:
    return Settings()
