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


# ---------------------------------------------------------------- n-grams keyed by a source vocabulary
_KEY_MODULI, _KEY_BASES, _KEY_LENGTH_SALT = (2147483647, 2147483629), (257, 263), 1000003


def _key_powers(max_bytes: int) -> list[tuple[int, int]]:
    return [tuple(pow(base, i, modulus) for base, modulus in zip(_KEY_BASES, _KEY_MODULI, strict=True))
            for i in range(max_bytes)]


def vocabulary_key(data: bytes) -> int:
    """The 62-bit key of a byte string that `BLTVocabEmbedding.lookup` computes for the same bytes."""
    parts = []
    for base, modulus in zip(_KEY_BASES, _KEY_MODULI, strict=True):
        h = sum((b + 1) * pow(base, i, modulus) for i, b in enumerate(reversed(data))) % modulus
        parts.append((h + len(data) * _KEY_LENGTH_SALT) % modulus)
    return parts[0] * (1 << 31) + parts[1]


class BLTVocabEmbedding(nn.Embedding):
    """N-gram embeddings keyed by a source tokenizer's vocabulary instead of a hash (for byte-ified models).

    Row r is the source model's embedding of token r. `lookup` finds, at each byte, the longest vocabulary token
    that ends there (at most `max_bytes` long, and no longer than the byte's place in its patch allows); BOS maps
    to `bos_row`, the source token it stands for, and special ids to `special_rows`
    (`BLTConfig.vocab_embedding_special_rows`: a chat model's markers). The table is buffers: `sorted_keys`
    (`vocabulary_key` of each row's bytes, sorted; rows without bytes hold unmatched negative keys) and
    `sorted_rows`.
    """

    def __init__(self, num_rows: int, embedding_dim: int, max_bytes: int, special_rows: list[int] | None = None):
        super().__init__(num_rows, embedding_dim)
        self.max_bytes = max_bytes
        self.special_rows = {i: r for i, r in enumerate(special_rows or []) if r >= 0}  # special id -> row
        self.register_buffer("sorted_keys", -1 - torch.arange(num_rows, dtype=torch.long).flip(0))
        self.register_buffer("sorted_rows", torch.arange(num_rows, dtype=torch.long).flip(0))
        self.register_buffer("bos_row", torch.tensor(-1, dtype=torch.long))
        self._powers = _key_powers(max_bytes)

    @torch.no_grad()
    def set_vocabulary(self, token_bytes: list[bytes | None], bos_row: int) -> None:
        """Key the rows by their tokens' bytes (None: never looked up). Raises on two tokens with one key."""
        if len(token_bytes) != self.num_embeddings:
            raise ValueError(f"{len(token_bytes)} tokens for {self.num_embeddings} vocabulary embedding rows")
        keys = []
        for row, data in enumerate(token_bytes):
            usable = data is not None and 0 < len(data) <= self.max_bytes
            keys.append(vocabulary_key(data) if usable else -1 - row)
        keys = torch.tensor(keys, dtype=torch.long)
        order = keys.argsort()
        sorted_keys = keys[order]
        clash = (sorted_keys[1:] == sorted_keys[:-1]) & (sorted_keys[1:] >= 0)
        if clash.any():
            raise ValueError("two vocabulary tokens share a key (duplicate byte strings in the vocabulary?)")
        self.sorted_keys.copy_(sorted_keys)
        self.sorted_rows.copy_(order)
        self.bos_row.fill_(bos_row)

    def lookup(self, ids: torch.Tensor, history: torch.Tensor | None, longest: torch.Tensor) -> torch.Tensor:
        """Row [B, n] of the longest vocabulary token ending at each byte and at most `longest` [B, n] bytes long
        (-1: none). ids [B, n] (byte + 4); history [B, >= max_bytes - 1]: the ids before them (0 = none)."""
        from .configuration_blt_hf import BOS_ID, BYTE_OFFSET

        batch, length = ids.shape
        reach = self.max_bytes - 1
        if history is None or history.shape[1] < reach:
            missing = reach - (0 if history is None else history.shape[1])
            history = torch.cat([ids.new_zeros(batch, missing)] + ([] if history is None else [history]), dim=1)
        window = torch.cat((history[:, history.shape[1] - reach :], ids), dim=1)
        found = torch.full_like(ids, -1)
        real = torch.ones_like(ids, dtype=torch.bool)
        hashes = [torch.zeros_like(ids), torch.zeros_like(ids)]
        last = self.sorted_keys.numel() - 1
        for size in range(1, self.max_bytes + 1):
            column = window[:, reach - size + 1 : reach - size + 1 + length]  # the byte `size - 1` before each
            real = real & (column >= BYTE_OFFSET)
            key = None
            for part, (modulus, power) in enumerate(zip(_KEY_MODULI, self._powers[size - 1], strict=True)):
                hashes[part] = (hashes[part] + (column - BYTE_OFFSET + 1) * power) % modulus
                salted = (hashes[part] + size * _KEY_LENGTH_SALT) % modulus
                key = salted if key is None else key * (1 << 31) + salted
            slot = torch.searchsorted(self.sorted_keys, key).clamp(max=last)
            hit = (self.sorted_keys[slot] == key) & real & (size <= longest)
            found = torch.where(hit, self.sorted_rows[slot], found)
        found = torch.where(ids == BOS_ID, self.bos_row, found)
        for special_id, row in self.special_rows.items():
            found = torch.where(ids == special_id, row, found)
        return found

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """Embedding rows [..., d] of `lookup` results (zeros for -1)."""
        return super().forward(rows.clamp(min=0)) * (rows >= 0).unsqueeze(-1).to(self.weight.dtype)
