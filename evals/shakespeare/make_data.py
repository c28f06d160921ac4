"""Writes this folder's two small lm-evaluation-harness tasks from Tiny Shakespeare's validation split.

    python evals/shakespeare/make_data.py ../shared/data/text/tinyshakespeare.txt

The split is the one the shipped text models were validated on (the last 10% of the characters), so the
tasks measure held-out text. Writes only beside this file (the data folder may be read-only); deterministic.

- ppl.jsonl: passages (whole speeches of at most 240 characters) for a rolling perplexity task;
- next_line.jsonl: a speech's opening and four candidate next lines, one of them the real one (multiple choice).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_CHARS = 240  # under the character Transformer's context of 256, with the start token


def speeches(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    valid = text[int(0.9 * len(text)):]
    blocks = [b.strip("\n") for b in valid.split("\n\n")][1:-1]  # the first and last may be cut mid-speech
    return [b for b in blocks if b.count("\n") >= 2]


def write(name: str, rows: list[dict]) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(path: Path) -> None:
    rng = random.Random(0)
    blocks = speeches(path)
    short = [b for b in blocks if 80 <= len(b) <= MAX_CHARS]
    write("ppl.jsonl", [{"text": b} for b in rng.sample(short, 24)])
    lines = [line for b in blocks for line in b.split("\n")[1:] if 20 <= len(line) <= 60]
    rows = []
    for b in rng.sample([b for b in blocks if b.count("\n") >= 3 and len(b) <= 400], 40):
        first = b.split("\n")
        context, gold = "\n".join(first[:-1]) + "\n", first[-1]
        if not 20 <= len(gold) <= 60 or len(context) > 180:
            continue
        choices = [gold, *rng.sample([line for line in lines if line != gold], 3)]
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "gold": choices.index(gold)})
    write("next_line.jsonl", rows[:20])


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data" / "text" /
              "tinyshakespeare.txt"))
