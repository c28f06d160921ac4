"""schemathesis over the live OpenAPI spec of a real server with small limits (ARSERVE_MAX_LENGTH=64, 4 inputs,
an API key): no 5xx, and every answer conforms to the spec (status code, content type, schema).

The spec's `model` fields are narrowed to the served models' names, so that generated requests reach the models
instead of stopping at 404; everything else is schemathesis' own. Bounded: MAX_EXAMPLES per operation and
MAX_TIME in all. Marked `fuzz` (minutes): skipped unless asked for with `pytest -m fuzz` (.ci/run does).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.fuzz

MAX_EXAMPLES, MAX_TIME_S = 40, 150
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    if "fuzz" not in (request.config.getoption("-m") or ""):
        pytest.skip("fuzz: run with `pytest -m fuzz` (.ci/run does)")


def narrowed(spec: dict, models: list[str]) -> dict:
    """The spec with every `model` field (query parameter or body property) an enum of the served models."""
    enum = {"type": "string", "enum": models}
    for schema in spec["components"]["schemas"].values():
        if "model" in schema.get("properties", {}) and schema.get("title", "").endswith(("Request", "Body")):
            schema["properties"]["model"] = enum
    for methods in spec["paths"].values():
        for op in methods.values():
            for param in op.get("parameters", []):
                if param["name"] == "model":
                    param["schema"] = enum
    return spec


def test_schemathesis_finds_no_server_error_and_no_schema_violation(artifacts, tmp_path):
    from bench.common import server_process

    key = "fuzz-key"
    env = {"ARSERVE_MAX_LENGTH": "64", "ARSERVE_MAX_BATCH": "4", "ARSERVE_API_KEYS": key,
           "ARSERVE_MAX_CONCURRENT_STREAMS": "4", "ARSERVE_REQUEST_TIMEOUT_S": "20"}
    with server_process(artifacts, **env) as (url, proc):
        auth = {"Authorization": f"Bearer {key}"}
        models = sorted(m["name"] for m in httpx.get(f"{url}/models", headers=auth, timeout=30).json()["models"])
        spec = narrowed(httpx.get(f"{url}/openapi.json", timeout=30).json(), models)
        (tmp_path / "openapi.json").write_text(json.dumps(spec))
        cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", str(tmp_path / "openapi.json"), "--url", url,
               "-H", f"Authorization: Bearer {key}", "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
               "--max-time", str(MAX_TIME_S), "--seed", "12", "--workers", "1", "--request-timeout", "30",
               "--no-shrink", "--report", "json", "--report-dir", str(tmp_path)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_TIME_S + 120, cwd=tmp_path)  # its cache too
        proc.log.seek(0)
        log = proc.log.read()
    print(r.stdout[-1500:])
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-4000:]
