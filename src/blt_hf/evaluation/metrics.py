"""Bits per byte: summed next-byte cross-entropy over every target byte, in bits, divided by their count.

`bits_per_byte` scores packed rows; `evaluate_bits_per_byte` scores text files with a checkpoint folder and adds the
FLOPs per byte the model actually spent (`blt-hf eval-bpb`).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch

from ..training.data import BLTDataCollator


@torch.no_grad()
def bits_per_byte(model, rows, batch_size: int = 8) -> dict:
    """Held-out bits per byte of a `BLTForCausalLM` or `BLTPatcher` on packed rows (see `blt_hf.training.data`).

    Every real byte after a BOS is a target (BOS itself, padding and cross-document targets are not). Returns
    {"bits_per_byte", "nats_per_byte", "bytes"}.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    collator = BLTDataCollator()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            labels = batch.pop("labels").to(device)
            inputs = {k: v.to(device) for k, v in batch.items()}
            if "use_cache" in inspect.signature(model.forward).parameters:
                inputs["use_cache"] = False
            logits = model(**inputs, return_dict=True).logits
            targets = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                reduction="sum",
            )
            total += losses.item()
            count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    nats = total / max(count, 1)
    return {"bits_per_byte": nats / math.log(2), "nats_per_byte": nats, "bytes": count}


def load_model_and_tokenizer(model_dir: str):
    """A `BLTForCausalLM` in eval mode and a `BLTTokenizer` attached to it (its entropy model patches)."""
    from ..modeling_blt_hf import BLTForCausalLM
    from ..pretrained import looks_like_a_local_path
    from ..tokenization_blt_hf import BLTTokenizer

    try:
        model = BLTForCausalLM.from_pretrained(model_dir).eval()
    except (OSError, ValueError) as error:
        if looks_like_a_local_path(model_dir):  # the local-path checks say what is wrong with the folder
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(f"{model_dir}: no such checkpoint folder here, and loading it from the Hub failed: "
                      f"{first_line}") from error
    tokenizer = BLTTokenizer().attach_model(model)
    return model, tokenizer


def check_files(files) -> None:
    """FileNotFoundError for the first of `files` that is not a readable file."""
    for name in files:
        if not Path(name).is_file():
            raise FileNotFoundError(f"{name}: no such file" + (" (a folder)" if Path(name).is_dir() else ""))


def evaluate_bits_per_byte(model_dir, files, row_length=2048, batch_size=8, split_paragraphs=False) -> dict:
    """Bits per byte of text files (one document per file or paragraph) and the FLOPs per byte actually spent."""
    from ..training.data import add_patch_lengths, pack_documents, text_dataset
    from .flops import llama_flops_per_token, realised_flops

    check_files(files)  # before loading the model
    model, _ = load_model_and_tokenizer(model_dir)
    rows = add_patch_lengths(pack_documents(text_dataset(files=files, split_paragraphs=split_paragraphs), row_length),
                             model)
    result = bits_per_byte(model, rows, batch_size)
    lengths = torch.zeros(len(rows), max(len(r) for r in rows["patch_lengths"]), dtype=torch.long)
    for i, row in enumerate(rows["patch_lengths"]):
        lengths[i, : len(row)] = torch.tensor(row)
    flops = realised_flops(model.config, lengths, torch.tensor([sum(m) for m in rows["attention_mask"]]))
    result.update(
        files=len(files), bytes_per_patch=flops["bytes_per_patch"], forward_flops_per_byte=flops["flops_per_byte"],
        # a byte-level Llama built from the same transformer layers as the global model, run on every byte
        llama_same_layers_forward_flops_per_byte=llama_flops_per_token(model.config.global_config, row_length, 260),
    )
    return result
