"""Checkpoint plumbing for the converters: safe weight reading, declarative key tables, atomic folder writes.

* Weights are read with safetensors, or with `torch.load(weights_only=True)`; nothing is ever unpickled freely.
* A key table maps source names to blt_hf names. `{}` stands for a layer index; a target of None means "known and
  dropped on purpose". A source key no table entry matches, or a target left unfilled, is an error listing them.
* Outputs are written to a temporary folder beside the destination and renamed into place at the end; an existing
  non-empty destination is refused, never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..pretrained import read_json_file, read_safetensors


def load_state_dict(folder: str | Path, stem: str = "model", allow_torch_files: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of `<stem>.safetensors` (single or sharded), or of `consolidated.pth` / `<stem>.bin` unless
    `allow_torch_files` is False. Torch files are read with `weights_only=True`: any other pickled object is refused."""
    folder = Path(folder)
    state = read_safetensors(folder, stem) if folder.is_dir() else None
    if state is not None:
        return state
    if not allow_torch_files:
        raise ValueError(
            f"{folder} has no .safetensors weights ({stem}.safetensors or its index; other formats are not read, "
            "for safety)"
        )
    for name in ("consolidated.pth", f"{stem}.bin", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            loaded = _load_torch_file(path)
            if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
                loaded = loaded["model"]
            if not isinstance(loaded, dict):
                raise ValueError(f"{path} must hold a state dict (name -> tensor), got a {type(loaded).__name__}")
            return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{folder} has no weights ({stem}.safetensors, its index, consolidated.pth or {stem}.bin)")


def _load_torch_file(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line), "")
        raise ValueError(
            f"{path} holds pickled objects other than tensors and plain containers; refusing to load it "
            f"(nothing is ever unpickled freely). {reason}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable torch checkpoint (truncated or damaged?): {error}") from None


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
    raise_problems(source, [("missing", missing), ("unexpected", unexpected),
                            ("shapes that disagree with the config", wrong)], shown=20)


def raise_problems(source: str, problems: list[tuple[str, list]], shown: int) -> None:
    """One ValueError naming `source` and each non-empty (label, items) pair, with its first `shown` items."""
    found = [f"{label} {items[:shown]}" for label, items in problems if items]
    if found:
        raise ValueError(f"{source}: " + "; ".join(found))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Build modules in `dtype` (floating dtypes only; None or an integer dtype keeps the current default)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype is not None and dtype.is_floating_point else previous)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def check_destination(destination: str | Path) -> None:
    """An output folder must not exist yet, or be empty: converters never overwrite a previous result. A file in
    its path (so that no folder can be made there) is named before anything runs."""
    destination = Path(destination).expanduser()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ValueError(f"{destination} exists and is not an empty folder")
    blocking = next((parent for parent in destination.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{blocking} is a file, so the output folder {destination} cannot be made")


def write_folder_atomically(destination: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(folder)` on a fresh temporary folder beside `destination`, then rename it into place; on any
    failure the temporary folder is removed and `destination` is left as it was."""
    destination = Path(destination)
    check_destination(destination)
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
    """The JSON object in `path`; ValueError naming the file when it is missing or not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    return read_json_file(path)
