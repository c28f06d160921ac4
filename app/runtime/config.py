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

BackendName = Literal["onnx", "torchscript", "compiled"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARSERVE_", frozen=True)

    model_dir: Path = Path("exported")  # one sub-folder per exported model (manifest.json + artifacts)
    # Backend of every model not named in model_backends. "auto": "compiled" where the model ships a step program
    # (its step built for this CPU at first load, ONNX Runtime meanwhile and wherever it cannot be built), else
    # "onnx" (docs/compiled.md).
    default_backend: BackendName | Literal["auto"] = "auto"
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
    # POST /logprob's work budget and batcher (docs/scoring.md)
    max_scored_positions: int = Field(262144, ge=1)  # inputs x tokens one POST /logprob may score; over it: 413
    model_max_scored_positions: dict[str, int] = {}  # per-model override, JSON: {"fvsbn-mnist": 1048576}
    score_chunk_positions: int = Field(32768, ge=1)  # most positions in one log_prob call: bounds its memory
    score_batch_rows: int = Field(64, ge=1)  # most rows (from any number of requests) merged into one log_prob call
    score_batch_delay_ms: float = Field(0.0, ge=0, le=1000)  # wait this long for company before scoring a lone request
    # ----- hardening (docs/security.md) -----
    host: str = "127.0.0.1"  # `python -m app.serve` binds here; 0.0.0.0 exposes it (the container does)
    port: int = Field(8000, ge=0, le=65535)  # `python -m app.serve` listens here
    api_keys: str = ""  # comma-separated bearer tokens; set (or api_keys_file), every model route needs one
    api_keys_file: Path | None = None  # a file of bearer tokens, one per line (# comments and blank lines skipped)
    metrics_require_key: bool = False  # true: /metrics needs a key too (/healthz and /readyz never do)
    docs: bool = True  # false: no /docs, /redoc, /openapi.json
    cors_origins: str = ""  # comma-separated origins allowed by CORS ("*" for any); empty = CORS off
    max_body_bytes: int = Field(8 * 2**20, ge=1024)  # request body cap (413), checked while reading
    body_timeout_s: float = Field(30.0, gt=0)  # longest a request body may take to arrive (408)
    max_connections: int = Field(1000, ge=1)  # open connections at most (capped below the fd limit at start)
    keep_alive_s: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    header_timeout_s: float = Field(10.0, gt=0)  # a connection must send a request's headers within this
    max_streams_per_client: int = Field(8, ge=1)  # GET and POST /sample running at once per client address
    trusted_proxies: str = ""  # comma-separated IPs/CIDRs whose X-Forwarded-For names the client
    stream_stall_s: float = Field(30.0, gt=0)  # a stream whose reader blocks it this long ends (error `stalled`)
    drain_s: float = Field(10.0, ge=0)  # on SIGTERM, running requests get this long before `shutting_down`
    require_all_models: bool = False  # true: /readyz stays 503 while any model folder was skipped
    # Conformance checks (app/engine/verify.py, FAST budget) on each backend as it loads: a model that fails is
    # refused, its property named in the log and in /readyz's "skipped". "off" trusts the artifacts.
    verify_on_load: Literal["fast", "off"] = "fast"
    # ----- memory (docs/security.md, "Memory") -----
    malloc_arena_max: int = Field(2, ge=0)  # glibc malloc arenas at most (python -m app.serve); 0: glibc's 8 per core
    malloc_trim_s: float = Field(30.0, ge=0)  # hand the memory malloc holds free back to the OS this often; 0: never
    malloc_mmap_threshold: int = Field(262144, ge=0)  # bigger blocks get a mmap of their own (app.serve); 0: glibc's
    # ----- the compiled step (docs/compiled.md): what the "compiled" backend does where no build is cached -----
    compile: Literal["auto", "cached", "off"] = "auto"  # auto: build in the background; cached: use only builds
    compile_cache: Path | None = None  # where builds live (default ~/.cache/arserve/compiled); one per CPU + torch

    def backend_for(self, model: str) -> BackendName | Literal["auto"]:
        return self.model_backends.get(model, self.default_backend)

    def scored_positions_for(self, model: str) -> int:
        return self.model_max_scored_positions.get(model, self.max_scored_positions)

    def api_key_list(self) -> list[str]:
        keys = _split(self.api_keys)
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            keys += [k.strip() for k in lines if k.strip() and not k.lstrip().startswith("#")]
        return keys

    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)

    def trusted_proxy_list(self) -> list[str]:
        return _split(self.trusted_proxies)


def _split(csv: str) -> list[str]:
    return [s.strip() for s in csv.split(",") if s.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
