"""Bits per byte: summed next-byte cross-entropy over every target byte, in bits, divided by their count."""

from __future__ import annotations

import math

import torch

from .data import BLTDataCollator


@torch.no_grad()
def bits_per_byte(model, rows, batch_size: int = 8) -> dict:
    """Held-out bits per byte of a `BLTForCausalLM` or `BLTPatcher` on packed rows (see `blt_hf.data`).

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
            if "use_cache" in model.forward.__code__.co_varnames:
                inputs["use_cache"] = False
            logits = model(**inputs).logits
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
