"""Training data for BLT on `datasets`: text -> bytes -> packed rows -> patches, and the collator.

    docs = text_dataset(files=["a.txt", "b.txt"])                 # or any datasets.Dataset with a text column
    rows = pack_documents(docs, row_length=2048)                   # input_ids, position_ids, attention_mask
    rows = add_patch_lengths(rows, model)                          # patch_lengths from the model's own patcher
    trainer = Trainer(model, args, train_dataset=rows, data_collator=BLTDataCollator())

Every document becomes BOS + its UTF-8 bytes; rows of exactly `row_length` bytes are filled greedily, and a
document longer than the room left continues in the next row behind a fresh BOS (each piece is patched and
attended as a document of its own). `position_ids` restart at 0 at every BOS, which tells the model where
documents begin: no attention crosses them in the entropy model, the local stacks or the global transformer.
Patches are computed once, in batches, by the same patching rule and entropy model the model uses, and cached by
`datasets` like any other `map`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from ..configuration_blt_hf import BOE_ID, BOS_ID, BYTE_OFFSET
from ..patching import PatchingRule, compute_patch_lengths
from ..tools.extras import require


def text_dataset(files=None, dataset=None, text_column: str = "text", split_paragraphs: bool = False):
    """A `datasets.Dataset` with one document per row in column "text": one per file (or per blank-line-separated
    paragraph with `split_paragraphs`) as the file's raw bytes, or the `text_column` of a given dataset."""
    require("datasets")
    from datasets import Dataset

    if dataset is not None:
        if text_column not in dataset.column_names:
            raise ValueError(f"dataset has no column {text_column!r}; it has {dataset.column_names}")
        return dataset.select_columns([text_column]).rename_column(text_column, "text") if text_column != "text" \
            else dataset.select_columns(["text"])
    texts = []
    for name in files or []:
        data = Path(name).read_bytes()  # bytes as they are: a byte model scores any file, UTF-8 or not
        pieces = [p.strip() for p in data.split(b"\n\n")] if split_paragraphs else [data]
        texts.extend(p for p in pieces if p)
    if not texts:
        raise ValueError("no text: give files or a dataset")
    return Dataset.from_dict({"text": texts})


def _pack_batch(batch, row_length: int, keep_partial: bool):
    rows, positions, masks = [], [], []
    row, position = [], []

    def close_row():
        nonlocal row, position
        pad = row_length - len(row)
        rows.append(row + [BOE_ID] * pad)
        positions.append(position + [0] * pad)
        masks.append([1] * len(row) + [0] * pad)
        row, position = [], []

    for text in batch["text"]:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        while True:
            room = row_length - len(row)
            if room < 2:  # no room for BOS + one byte
                close_row()
                continue
            piece = data[: room - 1]
            data = data[room - 1 :]
            row += [BOS_ID] + [b + BYTE_OFFSET for b in piece]
            position += list(range(len(piece) + 1))
            if len(row) == row_length:
                close_row()
            if not data:
                break
    if row and keep_partial:
        close_row()
    return {"input_ids": rows, "position_ids": positions, "attention_mask": masks}


def pack_documents(dataset, row_length: int, keep_partial: bool = True, batch_size: int = 1000, num_proc=None):
    """Pack the "text" documents into rows of `row_length` byte ids (see the module docstring)."""
    if row_length < 2:
        raise ValueError(f"row_length must be >= 2, got {row_length}")
    return dataset.map(
        _pack_batch, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
        fn_kwargs={"row_length": row_length, "keep_partial": keep_partial}, num_proc=num_proc,
        desc=f"packing documents into rows of {row_length} bytes",
    )


def _patching_fingerprint(rule: PatchingRule, patcher) -> str:
    digest = hashlib.sha256(json.dumps(rule.__dict__, sort_keys=True).encode())
    if patcher is not None and rule.needs_entropies:
        for name, tensor in sorted(patcher.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def add_patch_lengths(dataset, model, batch_size: int = 16, chunk_size: int | None = 8192):
    """Add "patch_lengths" (zeros stripped) to packed rows, computed by `model`'s patching rule and entropy model.
    Cached by `datasets` under a fingerprint of the rule and the entropy-model weights."""
    base = getattr(model, "model", model)
    rule, patcher = PatchingRule.from_config(base.config), base.patcher

    def patch(batch):
        ids = torch.tensor(batch["input_ids"])
        mask = torch.tensor(batch["attention_mask"]) if "attention_mask" in batch else None
        positions = torch.tensor(batch["position_ids"]) if "position_ids" in batch else None
        if patcher is not None:
            device = next(patcher.parameters()).device
            ids = ids.to(device)
            mask = mask.to(device) if mask is not None else None
            positions = positions.to(device) if positions is not None else None
        lengths, _ = compute_patch_lengths(ids, mask, rule, patcher, chunk_size, positions)
        return {"patch_lengths": [[n for n in row if n > 0] for row in lengths.tolist()]}

    fingerprint = f"{dataset._fingerprint}-patches-{_patching_fingerprint(rule, patcher)}"
    return dataset.map(patch, batched=True, batch_size=batch_size, new_fingerprint=fingerprint,
                       desc="computing patches")


def rows_fingerprint(files, row_length: int, split_paragraphs: bool = False, model=None, dataset=None,
                     text_column: str = "text") -> str:
    """A key for packed rows: the files' contents (or the `datasets` fingerprint of `dataset` and its
    `text_column`), the packing settings and (with `model`) its patching."""
    digest = hashlib.sha256(json.dumps([row_length, split_paragraphs]).encode())
    for name in files:
        digest.update(hashlib.sha256(Path(name).read_bytes()).digest())
    if dataset is not None:
        digest.update(json.dumps(["dataset", dataset._fingerprint, text_column]).encode())
    if model is not None:
        base = getattr(model, "model", model)
        digest.update(_patching_fingerprint(PatchingRule.from_config(base.config), base.patcher).encode())
    return digest.hexdigest()[:20]


def cached_rows(folder: str | Path, build):
    """`build()`'s dataset, saved under `folder` the first time (atomically) and loaded from there afterwards, so a
    resumed or repeated run does not pack and patch again."""
    require("datasets")
    from datasets import load_from_disk

    folder = Path(folder)
    if not folder.is_dir():
        scratch = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(scratch, ignore_errors=True)
        build().save_to_disk(str(scratch))
        os.replace(scratch, folder)
    return load_from_disk(str(folder))


class BLTDataCollator:
    """Stack packed rows into tensors: input_ids, attention_mask, position_ids, patch_lengths (zero-padded), and
    labels = input_ids with -100 on padding and on every document's BOS (a prediction across documents)."""

    def __init__(self, pad_id: int = BOE_ID):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)

        def stack(key, fill):
            return torch.tensor([list(f[key]) + [fill] * (width - len(f[key])) for f in features], dtype=torch.long)

        ids = stack("input_ids", self.pad_id)
        mask = stack("attention_mask", 0) if "attention_mask" in features[0] else (ids != self.pad_id).long()
        batch = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in features[0]:
            batch["position_ids"] = stack("position_ids", 0)
        labels = ids.masked_fill(mask == 0, -100)
        labels = labels.masked_fill(ids == BOS_ID, -100)
        batch["labels"] = labels
        if "patch_lengths" in features[0]:
            patches = max(len(f["patch_lengths"]) for f in features)
            batch["patch_lengths"] = torch.tensor(
                [list(f["patch_lengths"]) + [0] * (patches - len(f["patch_lengths"])) for f in features],
                dtype=torch.long,
            )
        return batch
