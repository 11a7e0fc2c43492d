"""`stop_strings` for a byte vocabulary: each stop string's UTF-8 bytes matched against the end of every row.

transformers' `StopStringCriteria` matches the text of each vocabulary token, and a lone byte of a multi-byte
character has no text, so a stop string such as "é" or "→" would never stop a byte model. Here a stop string is its
byte ids and a row stops when its last bytes are one of them (one comparison per stop-string length, all rows at
once). It needs no tokenizer: byte ids are fixed.
"""

from __future__ import annotations

import torch
from transformers.generation.stopping_criteria import StoppingCriteria

from .configuration_blt_hf import BYTE_OFFSET


def stop_string_ids(stop_strings: str | list[str] | tuple[str, ...]) -> list[list[int]]:
    """The byte ids of each stop string (UTF-8, lone surrogates kept as the tokenizer keeps them)."""
    if isinstance(stop_strings, str):
        stop_strings = [stop_strings]
    if not isinstance(stop_strings, (list, tuple)) or not stop_strings:
        raise ValueError(f"stop_strings must be a string or a non-empty list of strings, got {stop_strings!r}")
    bad = [s for s in stop_strings if not isinstance(s, str) or not s]
    if bad:
        raise ValueError(f"stop_strings must be non-empty strings, got {bad!r}")
    return [[byte + BYTE_OFFSET for byte in s.encode("utf-8", "surrogatepass")] for s in stop_strings]


class StopBytesCriteria(StoppingCriteria):
    """Stops a row as soon as its sequence ends with the bytes of one of `stop_strings`."""

    def __init__(self, stop_strings: str | list[str] | tuple[str, ...]):
        by_length: dict[int, list[list[int]]] = {}
        for ids in stop_string_ids(stop_strings):
            by_length.setdefault(len(ids), []).append(ids)
        self.stop_ids = {length: torch.tensor(group) for length, group in sorted(by_length.items())}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs) -> torch.Tensor:
        stopped = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for length, targets in self.stop_ids.items():
            if input_ids.shape[1] < length:
                break
            tails = input_ids[:, None, -length:]  # [batch, 1, length] against [stop strings, length]
            stopped |= (tails == targets.to(input_ids.device)).all(-1).any(-1)
        return stopped
