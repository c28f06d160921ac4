"""Train one model from a recipe file, resumably: `python -m models.train models/recipes/nade-mnist.toml`.

One loop for every family (the contract makes the loss -log_prob(x).mean()). Progress bar, periodic
validation, a checkpoint at each validation (runs/<name>/last.pt to resume, best.pt selected on the
validation split), a wall-time budget that survives restarts, then a final report: the best checkpoint is
evaluated once on the test split (where the dataset has one) and exported to exported/<name>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import signal
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import models
from models.base import ARModel
from models.checkpoint import load_checkpoint, save_checkpoint
from models.datasets import DATASETS, Dataset

log = logging.getLogger("arserve.train")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05  # cosine decay to lr * min_lr_ratio at max_steps
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int = 10_000
    max_minutes: float = 60.0  # wall-time budget, summed over resumed runs
    eval_every: int = 500
    eval_limit: int = 2000  # validation examples (or windows) scored during training; all at the end
    seq_len: int = 256  # crop length for text and audio
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    dataset: str
    description: str = ""
    model: dict = field(default_factory=dict)
    train: TrainConfig = TrainConfig()

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        raw = tomllib.loads(Path(path).read_text())
        raw["train"] = TrainConfig(**raw.get("train", {}))
        return cls(**raw)


def lr_at(step: int, elapsed: float, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay over whichever budget runs out first: steps or wall time (this
    machine is shared, so a fixed step count may not fit the time and the decay must still finish)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = max((step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps), elapsed / (cfg.max_minutes * 60))
    t = min(1.0, t)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def hardware() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, no GPU ({platform.platform()})"


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path):
        self.recipe, self.cfg, self.run_dir = recipe, recipe.train, run_dir
        self.data: Dataset = DATASETS[recipe.dataset]()
        torch.manual_seed(self.cfg.seed)
        self.model: ARModel = models.build(recipe.family, recipe.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.step, self.elapsed, self.best = 0, 0.0, math.inf
        self.stop_requested = False
        self.history: list[dict] = []

    # ----- checkpoints -------------------------------------------------------------------------

    def meta(self, metrics: dict | None = None) -> dict:
        r = self.recipe
        return {
            **self.data.meta(self.model),
            "name": r.name,
            "description": r.description,
            "training": {
                "recipe": {"family": r.family, "dataset": r.dataset, "model": r.model, "train": vars(self.cfg)},
                "steps": self.step,
                "wall_minutes": round(self.elapsed / 60, 1),
                "hardware": hardware(),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "history": self.history,
            },
            "metrics": metrics or {},
        }

    def save(self, name: str) -> None:
        train_state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "best": self.best,
            "optimizer": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        tmp = self.run_dir / f"{name}.tmp"
        save_checkpoint(tmp, self.model, self.meta(), train_state)
        tmp.replace(self.run_dir / f"{name}.pt")  # atomic: a kill never leaves half a checkpoint

    def resume(self) -> bool:
        path = self.run_dir / "last.pt"
        if not path.is_file():
            return False
        model, _, st = load_checkpoint(path)
        self.model.load_state_dict(model.state_dict())
        self.opt.load_state_dict(st["optimizer"])
        self.rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        self.step, self.elapsed, self.best, self.history = st["step"], st["elapsed"], st["best"], st["history"]
        log.info("resumed %s at step %d (%.1f min, best valid %.4f)", self.recipe.name, self.step,
                 self.elapsed / 60, self.best)
        return True

    # ----- the loop ----------------------------------------------------------------------------

    def loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return -(self.model.log_prob(x) * mask).sum() / mask.sum()

    def run(self) -> None:
        cfg = self.cfg
        budget = cfg.max_minutes * 60
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.recipe.name, mininterval=10)
        t0 = time.time() - self.elapsed
        while self.step < cfg.max_steps and self.elapsed < budget:
            self.model.train()
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, self.elapsed, cfg)
            x, mask = self.data.train_batch(self.rng, cfg.batch_size, cfg.seq_len)
            loss = self.loss(x, mask)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            self.elapsed = time.time() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_at(self.step, self.elapsed, cfg):.1e}")
            if self.step % cfg.eval_every == 0 or self.step >= cfg.max_steps or self.elapsed >= budget:
                self.validate()
            if self.stop_requested:  # SIGTERM/SIGINT: keep every finished step, resume later from last.pt
                self.save("last")
                log.info("stopped at step %d (%.1f min); resume with the same command", self.step,
                         self.elapsed / 60)
                raise SystemExit(143)
        bar.close()

    def validate(self) -> None:
        v = self.data.evaluate(self.model, "valid", limit=self.cfg.eval_limit)
        self.history.append({"step": self.step, "minutes": round(self.elapsed / 60, 2), "valid": v["nll"]})
        log.info("step %d valid %.4f %s", self.step, v["nll"], v["unit"])
        if v["nll"] < self.best:
            self.best = v["nll"]
            self.save("best")
        self.save("last")

    # ----- the end -----------------------------------------------------------------------------

    def finish(self, export_dir: Path | None) -> dict:
        """Evaluate the best checkpoint on every split once, record the metrics, export."""
        model, _, st = load_checkpoint(self.run_dir / "best.pt")
        self.model = model.eval()
        self.step, self.elapsed, self.history = st["step"], st["elapsed"], st["history"]
        metrics = {split: self.data.evaluate(self.model, split) for split in self.data.held_out_splits()}
        metrics["check_slice"] = self.data.check_slice(self.model)
        metrics["selected_on"] = "valid"
        save_checkpoint(self.run_dir / "final.pt", self.model, self.meta(metrics), None)
        (self.run_dir / "report.json").write_text(json.dumps(self.meta(metrics), indent=2))
        if export_dir is not None:
            from models.export import export_checkpoint

            export_checkpoint(self.run_dir / "final.pt", export_dir)
        return metrics


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="a TOML recipe, e.g. models/recipes/nade-mnist.toml")
    ap.add_argument("--runs", default=str(REPO / "runs"), help="where checkpoints and logs go")
    ap.add_argument("--exported", default=str(REPO / "exported"), help="export the final model under this folder")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--finish-only", action="store_true", help="skip training; evaluate and export best.pt")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)

    recipe = Recipe.load(args.recipe)
    torch.set_num_threads(recipe.train.threads)
    run_dir = Path(args.runs) / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(recipe, run_dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(trainer, "stop_requested", True))
    if not args.finish_only:
        trainer.resume()
        trainer.run()
    metrics = trainer.finish(None if args.no_export else Path(args.exported) / recipe.name)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
