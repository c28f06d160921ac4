"""docs/settings.md lists every setting the server reads, and nothing it does not: the page stays true."""

from __future__ import annotations

import re

from conftest import ROOT


def test_settings_page_lists_every_setting():
    from app.runtime.config import Settings

    documented = set(re.findall(r"^\| `(ARSERVE_[A-Z0-9_]+)`", (ROOT / "docs" / "settings.md").read_text(), re.M))
    fields = {f"ARSERVE_{name.upper()}" for name in Settings.model_fields}
    assert fields - documented == set(), "settings missing from docs/settings.md"
    assert documented - fields == set(), "docs/settings.md documents settings the server does not read"
