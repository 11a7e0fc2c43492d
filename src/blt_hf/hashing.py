"""Hash n-gram embeddings of the released BLT models.

For every n in `group_sizes` and hash function f, the n-gram ending at each byte is hashed with a polynomial
h = sum_k w_k * p_f^k over the ids (byte + 4) of the window, oldest first, in int64 with silent wrap-around, then
reduced with a floor-mod by the table size. Windows reaching before the sequence see id 0 (BOE). One embedding
table per (f, n), fused into a single `nn.Embedding` in the order f-major, n-minor; lookups are summed, unscaled,
onto the byte embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_blt_hf import HASH_PRIMES


def _wrapping_powers(prime: int, count: int) -> list[int]:
    """prime^0 .. prime^(count-1) modulo 2^64, as signed int64 values (what int64 arithmetic wraps to)."""
    powers, value = [], 1
    for _ in range(count):
        powers.append(value - (1 << 64) if value >= (1 << 63) else value)
        value = (value * prime) % (1 << 64)
    return powers


def hash_coefficients(group_sizes, num_functions: int) -> torch.Tensor:
    """[F, W, G] int64: coefficient of window slot w (W = max n, last slot = current byte) for function f, size n."""
    width = max(group_sizes)
    coefficients = torch.zeros(num_functions, width, len(group_sizes), dtype=torch.int64)
    for f in range(num_functions):
        powers = _wrapping_powers(HASH_PRIMES[f], width)
        for g, n in enumerate(group_sizes):
            coefficients[f, width - n :, g] = torch.tensor(powers[:n], dtype=torch.int64)
    return coefficients


def hash_ngram_ids(
    ids: torch.Tensor, history: torch.Tensor | None, group_sizes, num_functions: int, table_size: int,
    coefficients: torch.Tensor | None = None, documents: torch.Tensor | None = None,
    table_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row ids into the fused hash table for every byte: [B, T] -> [B, T, F * G].

    history [B, max(n) - 1]: the ids right before `ids` (zeros at the start of a sequence). documents [B, T]: in
    rows packing documents, n-grams never reach into the previous document (its bytes count as id 0).
    """
    width = max(group_sizes)
    if history is None:
        history = ids.new_zeros(ids.shape[0], width - 1)
    windows = torch.cat((history, ids), dim=1).unfold(1, width, 1)  # [B, T, W]
    if documents is not None:
        padded = torch.cat((documents.new_full((documents.shape[0], width - 1), -1), documents), dim=1)
        same_document = padded.unfold(1, width, 1) == documents[..., None]
        windows = torch.where(same_document, windows, 0)
    if coefficients is None:
        coefficients = hash_coefficients(group_sizes, num_functions).to(ids.device)
    hashes = (windows[:, :, None, :, None] * coefficients).sum(3)  # [B, T, F, G], wraps
    if table_offsets is None:
        table_offsets = hash_table_offsets(len(group_sizes), num_functions, table_size, ids.device)
    return (hashes % table_size + table_offsets).flatten(2)


def hash_table_offsets(num_group_sizes: int, num_functions: int, table_size: int, device=None) -> torch.Tensor:
    """[F, G] int64: first row of each (function, n-gram size) table in the fused embedding."""
    index = torch.arange(num_functions * num_group_sizes, device=device).view(num_functions, num_group_sizes)
    return index * table_size


class BLTHashNgramEmbedding(nn.Embedding):
    """The fused hash n-gram tables (`encoder_hash_tok_embedding`): rows = table_size * F * G."""

    def __init__(self, group_sizes, num_functions: int, table_size: int, embedding_dim: int):
        super().__init__(table_size * num_functions * len(group_sizes), embedding_dim)
        self.group_sizes, self.num_functions, self.table_size = list(group_sizes), num_functions, table_size
        self._coefficients = {}  # device -> (hash_coefficients(...), hash_table_offsets(...)), computed once

    def forward(self, ids: torch.Tensor, history: torch.Tensor | None = None, documents=None) -> torch.Tensor:
        """Sum of all hash embeddings of each byte's n-grams: [B, T] -> [B, T, d]."""
        batch, length = ids.shape
        if self.num_functions == 0 or length == 0:
            return self.weight.new_zeros(batch, length, self.embedding_dim)
        if ids.device not in self._coefficients:
            self._coefficients[ids.device] = (
                hash_coefficients(self.group_sizes, self.num_functions).to(ids.device),
                hash_table_offsets(len(self.group_sizes), self.num_functions, self.table_size, ids.device),
            )
        coefficients, table_offsets = self._coefficients[ids.device]
        rows = hash_ngram_ids(
            ids, history, self.group_sizes, self.num_functions, self.table_size, coefficients, documents,
            table_offsets,
        )
        return F.embedding_bag(rows.reshape(batch * length, -1), self.weight, mode="sum").view(batch, length, -1)
