"""The exported-artifact manifest: one schema, written by models/export.py and read by the service.

A model folder holds manifest.json plus the files it lists (with their sha256). Everything the service
needs to run a model — shapes, vocabulary, state tensors, graph input/output names — is here, so the
service never guesses and never imports model code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# 2: each state tensor says how a step changes it (`update`); a format-1 manifest reads as "replace" throughout.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StateTensor(_Strict):
    """One state tensor of `step` and how a step changes it (docs/state.md).

    update "replace": the step's output is the whole new tensor. update "slots": the step writes the tensor in
    place, and only at the slots the declaration names: along `slot_axis`, for each ring (start, size) of
    `rings`, the slot start + pos % size of each row (a KV cache is one ring as long as the model; WaveNet's
    queues are one ring per layer). A caller binds the same buffer as the step's input and output.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    shape: list[int | Literal["batch"]]  # "batch" first; the other dims are fixed
    dtype: Literal["float32", "int64"]
    update: Literal["replace", "slots"] = "replace"
    slot_axis: int | None = None  # "slots" only: the axis the rings lie along (>= 1)
    rings: list[tuple[int, int]] | None = None  # "slots" only: (start, size) of each ring, in order, disjoint

    @model_validator(mode="after")
    def _batch_first(self):
        if not self.shape or self.shape[0] != "batch" or "batch" in self.shape[1:]:
            raise ValueError(f"state tensor {self.name!r}: shape must be ['batch', ...], got {self.shape}")
        return self

    @model_validator(mode="after")
    def _slots_declared(self):
        if self.update == "replace":
            if self.slot_axis is not None or self.rings is not None:
                raise ValueError(f"state tensor {self.name!r}: slot_axis and rings belong to update 'slots' only")
            return self
        if self.slot_axis is None or not 1 <= self.slot_axis < len(self.shape):
            raise ValueError(f"state tensor {self.name!r}: slot_axis must name one of its axes after the batch's")
        end = 0
        for start, size in self.rings or []:
            if start < end or size < 1:
                raise ValueError(f"state tensor {self.name!r}: rings must be in order, disjoint and non-empty")
            end = start + size
        if not self.rings or end > self.shape[self.slot_axis]:
            raise ValueError(f"state tensor {self.name!r}: rings must fit in axis {self.slot_axis} "
                             f"({self.shape[self.slot_axis]} slots)")
        return self


class Vocabulary(_Strict):
    chars: str | None = None  # text: the characters, token i = chars[i]
    height: int | None = None  # images: x is the raster scan of a height x width image
    width: int | None = None
    sample_rate: int | None = None  # audio: 8-bit mu-law tokens at this rate
    mu: int | None = None


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class GraphIO(_Strict):
    """Input and output names of the exported graphs (ONNX and TorchScript use the same ones)."""

    score_inputs: list[str] = ["x"]
    score_outputs: list[str] = ["log_prob"]
    step_inputs: list[str]  # x_prev, pos, then the state tensors in order
    step_outputs: list[str]  # params, then the new state tensors in order


class MultiStep(_Strict):
    """An optional graph that generates several positions per call, drawing each token itself from random numbers
    the caller drew beforehand (models/multistep.py; docs/state.md). Only for models whose state is all
    "replace"; a server that does not use it generates one position per call, with the same samples."""

    file: str = "stepk.onnx"
    draw: Literal["bernoulli", "categorical", "mixture"]  # which random inputs it reads (lo/hi, or u, z, temperature)
    inputs: list[str]  # x_prev, pos, the state tensors, the draw's inputs, n
    outputs: list[str]  # tokens, params, pos_next, the new state tensors


class StepProgram(_Strict):
    """An optional second form of `step` for runtimes that compile it (docs/compiled.md): a torch.export
    ExportedProgram with the weights as explicit inputs, so that the file holds no weight twice.

    It is called as program(x_prev, pos, state, weights), state the manifest's state tensors in order and
    weights the tensors of `weights_file`'s (TorchScript) state dict named in `weights`, in order; it writes the
    "slots" tensors in place and returns params, then the new value of each "replace" tensor."""

    file: str = "step.pt2"
    weights_file: str = "model.pt"
    weights: list[str]


class Manifest(_Strict):
    format_version: Literal[1, 2] = FORMAT_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    family: str
    modality: Literal["binary_image", "text", "audio", "vector"]
    description: str = ""
    length: int = Field(ge=1)  # fixed length D, or the maximum length of variable-length models
    variable_length: bool
    shape: list[int]  # shape of one full-length x, e.g. [28, 28] or [256]
    token_dtype: Literal["int64", "float32"]
    vocab_size: int | None = Field(ge=2)  # None for continuous data (RNADE)
    num_params: int = Field(ge=2)  # width of what `step` returns: logits or mixture parameters
    distribution: Literal["bernoulli", "categorical", "gaussian_mixture"]
    vocabulary: Vocabulary = Vocabulary()
    state: list[StateTensor]
    io: GraphIO
    files: dict[str, FileEntry]
    config: dict[str, Any]
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    export: dict[str, Any] = {}
    multi_step: MultiStep | None = None  # optional, format 2 with or without it
    step_program: StepProgram | None = None  # optional in format 2: older manifests have none

    @model_validator(mode="after")
    def _consistent(self):
        n = 1
        for d in self.shape:
            n *= d
        if n != self.length:
            raise ValueError(f"shape {self.shape} holds {n} values but length is {self.length}")
        if (self.vocab_size is None) != (self.distribution == "gaussian_mixture"):
            raise ValueError("vocab_size must be null exactly for gaussian_mixture models")
        if self.modality == "text" and not self.vocabulary.chars:
            raise ValueError("text models need vocabulary.chars")
        if self.modality == "text" and len(self.vocabulary.chars) != self.vocab_size:
            raise ValueError("vocabulary.chars must hold vocab_size characters")
        if self.modality == "audio" and not (self.vocabulary.sample_rate and self.vocabulary.mu):
            raise ValueError("audio models need vocabulary.sample_rate and vocabulary.mu")
        if self.format_version == 1 and any(s.update != "replace" for s in self.state):
            raise ValueError("format 1 has no in-place state: every state tensor is replaced whole")
        if len(self.io.step_inputs) != 2 + len(self.state) or len(self.io.step_outputs) != 1 + len(self.state):
            raise ValueError("io.step_inputs/step_outputs must list x_prev, pos / params plus every state tensor")
        if self.multi_step is not None:
            if self.files and self.multi_step.file not in self.files:
                raise ValueError(f"multi_step.file {self.multi_step.file!r} is not listed in files")
            if any(s.update != "replace" for s in self.state):
                raise ValueError("multi_step needs every state tensor replaced whole (a stopped row keeps its state)")
        if self.step_program and not {self.step_program.file, self.step_program.weights_file} <= set(self.files):
            raise ValueError("step_program names files that `files` does not list")
        return self


class ArtifactError(Exception):
    """An exported model folder that cannot be trusted: missing files, bad manifest, sha256 mismatch."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(folder: str | Path, verify: bool = True) -> Manifest:
    """Read and validate folder/manifest.json; with verify, check every listed file's size and sha256."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST}")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: invalid manifest: {e}") from None
    if verify:
        for name, entry in manifest.files.items():
            f = folder / name
            if not f.is_file():
                raise ArtifactError(f"{folder}: manifest lists {name} but the file is missing")
            if f.stat().st_size != entry.bytes or sha256_file(f) != entry.sha256:
                raise ArtifactError(f"{f}: sha256 mismatch (the file was changed or corrupted)")
    return manifest


def revision(folder: str | Path) -> str:
    """A short hash of manifest.json, which holds the sha256 of every file: a replaced model gets a new one."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()[:12]
