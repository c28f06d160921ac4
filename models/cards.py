"""The model-card table (docs/models.md), read from the shipped manifests: `python -m models.cards [exported]`.

Every figure comes from a manifest the trainer wrote (models/train.py), so the table cannot drift from the
artifacts; published anchors are quoted beside them for orientation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.runtime.manifest import load_manifest

# Published held-out NLL for the same data, as quoted in the training issue.
ANCHORS = {
    ("fvsbn", "binarized_mnist"): "97.45 (test)",
    ("nade", "binarized_mnist"): "88.33 (test)",
    ("made", "binarized_mnist"): "88.40 one mask, 8000 units (test); ~94.5 with 500 units (pytorch-made)",
    ("pixelcnn", "binarized_mnist"): "81.30 (test)",
    ("pixelrnn", "binarized_mnist"): "80.54 Row LSTM (test)",
    ("transformer", "tiny_shakespeare"): "1.47 nanoGPT 10M params; ~1.88 its CPU recipe (valid)",
    ("lstm", "tiny_shakespeare"): "1.47 nanoGPT 10M params (valid)",
    ("attnrnn", "tiny_shakespeare"): "1.47 nanoGPT 10M params (valid)",
    ("wavenet", "fsdd_8k_mulaw"): "7.2 bits unigram, 5.4 bigram (test)",
    # python -m models.ngram 1 2 8: add-one smoothed counts with k previous characters, as the MLP sees
    ("finite", "tiny_shakespeare"): "add-one n-gram, same k = 8: 3.668; its best order (k = 2): 2.071 (valid)",
    ("transformer", "binarized_mnist"): "no published figure at this size; PixelCNN 81.30 (test)",
}
DATA = {
    "binarized_mnist": "binarized MNIST (Larochelle & Murray), 50k/10k/10k",
    "tiny_shakespeare": "Tiny Shakespeare, 90/10 split",
    "fsdd_8k_mulaw": "FSDD 8 kHz mu-law 256, takes 0-4 test",
    "sklearn_digits_dequantized": "scikit-learn 8x8 digits, dequantized, 1197/300/300",
}


def _fmt(r: dict | None, audio: bool) -> str:
    if r is None:
        return "—"
    if audio:
        return f"{r['bits_per_dim']:.3f} bits/sample"
    return f"{r['nll']:.3f} {r['unit']} ({r['bits_per_dim']:.4f} bits/dim)"


def table(exported: Path) -> str:
    rows = [
        "| model | family | data | params | training | valid NLL | test NLL | published anchor |",
        "|---|---|---|---:|---|---|---|---|",
    ]
    for folder in sorted(p for p in exported.glob("[!.]*") if p.is_dir()):
        m = load_manifest(folder, verify=False)
        t, metrics = m.training, m.metrics
        dataset = metrics["valid"]["dataset"]
        audio = m.modality == "audio"
        rows.append(
            f"| `{m.name}` | {m.family} | {DATA.get(dataset, dataset)} | {t['parameters']:,} "
            f"| {t['steps']:,} steps, {t['wall_minutes']:.0f} min, 2-core CPU | {_fmt(metrics.get('valid'), audio)} "
            f"| {_fmt(metrics.get('test'), audio)} | {ANCHORS.get((m.family, dataset), '—')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "exported")))
