"""Byte probabilities read off a source model's next-token distribution (byte-ified models, `config.token_head`).

The global transformer of a byte-ified Llama computes, for each patch, the Llama's hidden state; the Llama's final
norm and (tied) embedding matrix turn it into a distribution over the source vocabulary's next token. When patches
are tokens, the next byte's distribution follows exactly from it. A byte that predicts the next byte reads the
patch before the target byte's patch; `prefix` is the part of the target's patch already seen (empty when the
target starts a new patch). Over tokens t with p(t):

* target starts a patch:  p(b) = P(t begins with b) / P(t has bytes); tokens without bytes (specials) -> EOS;
* inside a patch, prefix s: p(b) = [P(t begins with s + b) + P(t = s) q(b)] / P(t begins with s), where q is the
  local decoder's own byte distribution: the source's "the token ends here" mass goes to q's guess of what
  follows (the next token is not known before its patch closes);
* no token begins with s (the patcher cut differently than the tokenizer would): q.

With look-ahead (`BLTConfig.patching_lookahead`) the model cuts speculatively where the prefix may be a whole token
and "what follows a whole token" is no longer q but the closed patch's own first-byte distribution
(`BLTForCausalLM._source_lookahead_step`): p(b) = [P(t begins with s + b) + P(t = s) p_next(b)] / P(t begins with s),
and the next byte b keeps the cut when log P(t = s) p_next(b) - log P(t begins with s + b) exceeds the threshold.

The result is mixed with q, p = (1 - w) p + w q, w = sigmoid(`fallback_logit`) (learned), so no byte has zero
probability. Computed exactly with a sorted-vocabulary table: tokens sorted by their bytes make every prefix a
contiguous range, found by binary search depth by depth, and each patch's probabilities summed once in that order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_blt_hf import BYTE_OFFSET, EOS_ID
from .layers import BLTRMSNorm, small_batch_linear


class BLTTokenHead(nn.Module):
    """The source model's final norm and its output rows' byte spellings (`token_bytes` [rows, max_bytes], -1
    after each token's end, all -1 for rows without bytes); the output matrix is the caller's (tied)."""

    def __init__(self, hidden_size: int, rows: int, max_bytes: int, eps: float, fallback: float,
                 vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.norm = BLTRMSNorm(hidden_size, eps)
        self.fallback_logit = nn.Parameter(torch.tensor(math.log(fallback / (1 - fallback))))
        self.register_buffer("token_bytes", torch.full((rows, max_bytes), -1, dtype=torch.int16))
        self.max_bytes = max_bytes
        self._table = None  # (version, sorted rows, sorted lengths, depth keys): built from token_bytes on use

    @torch.no_grad()
    def set_vocabulary(self, token_bytes: list[bytes | None]) -> None:
        """Each output row's bytes (None: a special token, or longer than max_bytes: never spelled)."""
        if len(token_bytes) != self.token_bytes.shape[0]:
            raise ValueError(f"{len(token_bytes)} tokens for {self.token_bytes.shape[0]} token head rows")
        table = torch.full_like(self.token_bytes, -1)
        for row, data in enumerate(token_bytes):
            if data is not None and 0 < len(data) <= self.max_bytes:
                table[row, : len(data)] = torch.tensor(list(data), dtype=torch.int16)
        self.token_bytes.copy_(table)
        self._table = None

    def _sorted_table(self):
        """All rows (those with bytes first, sorted by them), the spelled ones' lengths, and one nondecreasing key
        array over depths d: at sorted index t, d * stride + (start of the range of tokens sharing t's first d
        bytes) * 257 + (byte d of t) + 1 (0 where t has no byte d). The children of a range [lo, hi) at depth d are
        then found by binary search."""
        version = (self.token_bytes.data_ptr(), self.token_bytes._version, self.token_bytes.device)
        if self._table is not None and self._table[0] == version:
            return self._table[1:]
        data = self.token_bytes.long().cpu()
        lengths = (data >= 0).sum(1)
        spelled = torch.nonzero(lengths > 0).flatten().tolist()
        spelled.sort(key=lambda r: bytes(data[r, : lengths[r]].tolist()))
        unspelled = torch.nonzero(lengths == 0).flatten().tolist()
        rows = torch.tensor(spelled + unspelled, dtype=torch.long)  # spelled tokens sorted, then the rest
        sorted_bytes, sorted_lengths = data[rows[: len(spelled)]], lengths[rows[: len(spelled)]]
        count = len(spelled)
        stride = (count + 1) * 257
        keys = []
        for depth in range(self.max_bytes):
            prefix = sorted_bytes[:, :depth]
            if depth == 0:
                group_start = torch.zeros(count, dtype=torch.long)
            else:
                _, inverse, sizes = torch.unique_consecutive(prefix, dim=0, return_inverse=True, return_counts=True)
                group_start = (sizes.cumsum(0) - sizes)[inverse]
            keys.append(depth * stride + group_start * 257 + sorted_bytes[:, depth] + 1)
        device = self.token_bytes.device
        table = (rows.to(device), sorted_lengths.to(device), torch.cat(keys).to(device), count, stride)
        self._table = (version, *table)
        return table

    def token_cumulative(self, patch_states, output_weight) -> torch.Tensor:
        """[B, E, rows + 1] (fp64): each state's next-token probabilities summed in sorted-token order (spelled
        tokens first), from 0."""
        rows = self._sorted_table()[0]
        token_logits = small_batch_linear(self.norm(patch_states), output_weight).float()
        probs = torch.softmax(token_logits, dim=-1).index_select(-1, rows)
        return nn.functional.pad(probs.double().cumsum(-1), (1, 0))

    def prefix_ranges(self, prefix, prefix_length):
        """The sorted tokens [lo, hi) that begin with each prefix (empty when none does, as for a prefix holding a
        special id: byte values below 0)."""
        _, _, keys, count, stride = self._sorted_table()
        lo = torch.zeros_like(prefix_length)
        hi = torch.full_like(prefix_length, count)
        for depth in range(self.max_bytes - 1):
            active = depth < prefix_length
            if not bool(active.any()):
                break
            query = depth * stride + lo * 257 + prefix[..., depth].long().clamp(0, 255) + 1
            lo = torch.where(active, torch.searchsorted(keys, query) - depth * count, lo)
            hi = torch.where(active, torch.searchsorted(keys, query, right=True) - depth * count, hi)
        seen = torch.arange(prefix.shape[-1], device=prefix.device) < prefix_length[..., None]
        special = ((prefix < 0) & seen).any(-1)
        return lo, torch.where((prefix_length >= self.max_bytes) | special, lo, hi)  # none past max_bytes

    @staticmethod
    def _masses(cumulative, reads):
        """mass(lo, hi): P(sorted tokens lo..hi-1) under the state each byte reads (reads [B, n])."""
        table = cumulative.flatten(0, 1)
        entry = torch.arange(reads.shape[0], device=reads.device)[:, None] * cumulative.shape[1] + reads

        def mass(lo, hi):
            flat = entry.view(*entry.shape, *([1] * (lo.dim() - 2)))
            return (table[flat, hi] - table[flat, lo]).clamp(min=0)

        return mass

    def _ends(self, mass, lo, hi, prefix_length):
        """P(the token is exactly the prefix) [B, n]."""
        _, lengths, _, count, _ = self._sorted_table()
        exact = (hi > lo) & (lengths[lo.clamp(max=count - 1)] == prefix_length)
        return torch.where(exact, mass(lo, (lo + 1).clamp(max=count)), 0)

    def end_logits(self, cumulative, prefix, prefix_length) -> torch.Tensor:
        """log P(t = s) - log P(t begins with s, longer) [B, n] for prefixes s, each under its own distribution
        (`token_cumulative` [B, n, rows + 1]): the source model's odds that the token is complete (+inf where no
        token begins with s, 0 for an empty prefix)."""
        reads = torch.arange(prefix.shape[1], device=prefix.device).expand(prefix.shape[0], -1)
        mass = self._masses(cumulative, reads)
        lo, hi = self.prefix_ranges(prefix, prefix_length)
        ends = self._ends(mass, lo, hi, prefix_length)
        longer = mass(lo, hi) - ends
        odds = torch.log(ends.clamp(min=1e-300)) - torch.log(longer.clamp(min=1e-300))
        odds = torch.where(longer > 0, odds, torch.inf)
        return torch.where(prefix_length == 0, 0.0, odds).float()

    def parts(self, cumulative, reads, prefix, prefix_length):
        """The head's next-byte distribution in parts (fp64): p(b) = continuing(b) + ending * after(b), where
        `after` is what follows a whole token (see `spell`).

        cumulative [B, E, rows + 1]: `token_cumulative` of the global outputs the bytes read; reads [B, n]: the
        entry each byte reads; prefix [B, n, max_bytes] (byte values, any value past prefix_length) and
        prefix_length [B, n]: the seen part of the target's patch. Returns continuing [B, n, vocab] (the tokens
        that go on with byte b; at a patch start also the specials' mass on EOS), ending [B, n] (P(the token is
        exactly the prefix)) and known [B, n] (some token begins with the prefix)."""
        _, _, keys, count, stride = self._sorted_table()
        mass = self._masses(cumulative, reads)
        lo, hi = self.prefix_ranges(prefix, prefix_length)
        depth = prefix_length.clamp(max=self.max_bytes - 1)
        query = (depth * stride + lo * 257)[..., None] + torch.arange(1, 257, device=lo.device)  # byte b: key b + 1
        child_lo = torch.searchsorted(keys, query) - (depth * count)[..., None]
        child_hi = torch.searchsorted(keys, query, right=True) - (depth * count)[..., None]
        children = mass(child_lo, child_hi)  # [B, n, 256]
        prefix_mass = mass(lo, hi)
        ends = self._ends(mass, lo, hi, prefix_length)
        first = prefix_length == 0
        denominator = torch.where(first, 1.0, prefix_mass).clamp(min=1e-300)
        continuing = children.new_zeros(*children.shape[:-1], self.vocab_size)
        continuing[..., BYTE_OFFSET : BYTE_OFFSET + 256] = children / denominator[..., None]
        unspelled = mass(torch.full_like(reads, count), torch.full_like(reads, cumulative.shape[-1] - 1))
        continuing[..., EOS_ID] = torch.where(first, unspelled, 0)
        return continuing, ends / denominator, first | (prefix_mass > 0)

    @staticmethod
    def spell(parts, after) -> torch.Tensor:
        """p(b) [B, n, vocab] from `parts`, given `after` [B, n, vocab]: the distribution of the byte that follows
        a whole token (the local decoder's q; with look-ahead, the next patch's own first-byte distribution). No
        token beginning with the prefix (the patcher cut differently than the tokenizer would): `after`."""
        continuing, ending, known = parts
        return torch.where(known[..., None], continuing + ending[..., None] * after, after)

    def mix(self, spelled, byte_logits) -> torch.Tensor:
        """Log-probabilities [B, n, vocab]: (1 - w) spelled + w q, q the local decoder's own prediction."""
        q = torch.softmax(byte_logits.float(), dim=-1).double()
        fallback = torch.sigmoid(self.fallback_logit.double())
        return torch.log(((1 - fallback) * spelled + fallback * q).clamp(min=1e-300)).float()

    def forward(self, cumulative, reads, prefix, prefix_length, byte_logits):
        """Log-probabilities [B, n, vocab] of the next byte (arguments as in `parts`; byte_logits [B, n, vocab]:
        the local decoder's own prediction q, which also follows a whole token)."""
        q = torch.softmax(byte_logits.float(), dim=-1).double()
        return self.mix(self.spell(self.parts(cumulative, reads, prefix, prefix_length), q), byte_logits)
