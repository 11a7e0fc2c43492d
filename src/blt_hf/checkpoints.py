"""Checkpoint plumbing for the converters: safe weight reading, declarative key tables, atomic folder writes.

* Weights are read with safetensors, or with `torch.load(weights_only=True)`; nothing is ever unpickled freely.
* A key table maps source names to blt_hf names. `{}` stands for a layer index; a target of None means "known and
  dropped on purpose". A source key no table entry matches, or a target left unfilled, is an error listing them.
* Outputs are written to a temporary folder beside the destination and renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def load_state_dict(folder: str | Path, stem: str = "model") -> dict[str, torch.Tensor]:
    """All tensors of `<stem>.safetensors` (single or sharded), or of `consolidated.pth` / `<stem>.bin`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ValueError(f"{folder}: shards listed in {index.name} are missing: {missing}")
        state = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise ValueError(f"{folder}: tensors listed in {index.name} are absent from the shards: {absent[:10]}")
        return state
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return load_file(single)
    for name in ("consolidated.pth", f"{stem}.bin", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
                loaded = loaded["model"]
            return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{folder} has no weights ({stem}.safetensors, its index, consolidated.pth or {stem}.bin)")


def _template(key: str) -> tuple[str, list[str]]:
    numbers = re.findall(r"(?<=\.)\d+(?=\.)", key)
    return re.sub(r"(?<=\.)\d+(?=\.)", "{}", key), numbers


def map_keys(state: dict[str, torch.Tensor], table: dict[str, str | None], source: str) -> dict[str, torch.Tensor]:
    """Rename `state` with `table` (templates with `{}` for layer indices; None = drop). Unknown keys are errors."""
    out, unknown = {}, []
    for key, tensor in state.items():
        template, numbers = _template(key)
        if template not in table:
            unknown.append(key)
            continue
        target = table[template]
        if target is not None:
            out[target.format(*numbers)] = tensor
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} tensors have no mapping: {sorted(unknown)[:20]}")
    return out


def check_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """`state` must hold exactly the tensors of `expected` (a state dict), with the same shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing[:20]}")
    if unexpected:
        problems.append(f"unexpected {unexpected[:20]}")
    if wrong:
        problems.append(f"shapes that disagree with the config {wrong[:20]}")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


def write_folder_atomically(destination: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(folder)` on a fresh temporary folder beside `destination`, then rename it into place."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(f"{destination} exists and is not an empty folder")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        write(scratch)
        if destination.exists():
            destination.rmdir()
        os.replace(scratch, destination)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return json.loads(path.read_text())
