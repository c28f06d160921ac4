"""The playground's files, without a browser (the browser tests are tests/test_playground.py, `-m browser`):
served at / and /playground and under /static with the right types, every ES module import resolvable, no
other host named, and every file shipped in the package (pyproject's package-data)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "app" / "http" / "static"
FILES = sorted(p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file())
TYPES = {".html": "text/html", ".css": "text/css", ".js": "javascript", ".svg": "image/svg+xml"}


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/playground"])
async def test_the_page_is_served_with_a_self_only_policy(client, path):
    r = await client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script type=\"module\" src=\"/static/js/main.js\">" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]


@pytest.mark.anyio
@pytest.mark.parametrize("name", FILES)
async def test_every_static_file_is_served_with_its_type(client, name):
    r = await client.get(f"/static/{name}")
    assert r.status_code == 200
    assert TYPES[Path(name).suffix] in r.headers["content-type"]  # browsers refuse modules served as text/plain


def test_every_module_import_resolves():
    imports = 0
    for js in (STATIC / "js").glob("*.js"):
        for target in re.findall(r"""^import .* from '(\.[^']+)';$""", js.read_text(), re.M):
            assert (js.parent / target).is_file(), f"{js.name} imports {target}"
            imports += 1
    assert imports > 10


@pytest.mark.parametrize("name", FILES)
def test_no_file_names_another_host(name):
    text = (STATIC / name).read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name
    assert not re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", text)


def test_every_static_file_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app.http"]
    for name in FILES:
        path = PurePosixPath(f"static/{name}")
        covered = any(len(path.parts) == len(PurePosixPath(g).parts) and path.match(g) for g in globs)  # no **
        assert covered, f"static/{name} is not in package-data"
