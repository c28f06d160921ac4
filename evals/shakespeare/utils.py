"""Loads this folder's JSON-lines data for the task YAMLs (`custom_dataset`): no hub, no download."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rows(name: str) -> list[dict]:
    with open(HERE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _dataset(name: str):
    import datasets  # lm-eval's own dependency

    return {"test": datasets.Dataset.from_list(_rows(name))}


def load_ppl(**kwargs):
    return _dataset("ppl.jsonl")


def load_next_line(**kwargs):
    return _dataset("next_line.jsonl")
