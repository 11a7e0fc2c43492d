"""Attention plans: who may attend to whom, computed once per stack call and shared by all its layers.

* `LocalAttentionPlan`: causal sliding-window self-attention over bytes (patcher, local encoder, local decoder),
  with padding, optional segments (packed documents, patch-local decoding) and a cache of the last `window - 1`
  keys. Long inputs are split into blocks of `window` queries that each see two key blocks, so the cost is
  O(T * window), never O(T^2).
* `PatchAttentionPlan`: causal self-attention over patches (global transformer) with a ragged per-row cache.

All attention runs through `torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import recompute_in_backward


def _sdpa(q, k, v, mask=None, is_causal=False):
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
    )


def dense_window_mask(
    num_queries: int,
    query_offset: int,
    window: int | None,
    key_valid: torch.Tensor,
    key_segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask [B, 1, n, L]: query i sits at key index `query_offset + i`.

    A key is visible when it is not in the future, within the window, valid (not padding) and in the same segment.
    Every query also sees itself, so padded queries never produce NaN.
    """
    device = key_valid.device
    query_pos = torch.arange(num_queries, device=device)[:, None] + query_offset
    key_pos = torch.arange(key_valid.shape[1], device=device)[None, :]
    allowed = key_pos <= query_pos
    if window is not None:
        allowed = allowed & (key_pos > query_pos - window)
    allowed = allowed[None] & key_valid[:, None, :]
    if key_segments is not None:
        query_segments = key_segments[:, query_offset:]
        allowed = allowed & (query_segments[:, :, None] == key_segments[:, None, :])
    allowed = allowed | (key_pos == query_pos)[None]
    return allowed[:, None]


def blocked_window_attention(q, k, v, query_offset, window, key_valid, key_segments=None) -> torch.Tensor:
    """Sliding-window attention in blocks of `window / 2` queries; each block attends to 1.5 * window keys.

    q [B, H, n, D]; k, v [B, Hkv, L, D] with L = query_offset + n; key_valid/key_segments [B, L].
    """
    batch, heads, n, dim = q.shape
    kv_heads = k.shape[1]
    w = window
    size = w // 2 if w % 2 == 0 and w >= 64 else w  # query block; half-window blocks waste least compute
    ratio = w // size
    front = w - query_offset  # align so that new query i sits at key index w + i
    if front >= 0:
        k, v = F.pad(k, (0, 0, front, 0)), F.pad(v, (0, 0, front, 0))
        key_valid = F.pad(key_valid, (front, 0), value=False)
        if key_segments is not None:
            key_segments = F.pad(key_segments, (front, 0), value=-1)
    else:
        k, v, key_valid = k[:, :, -front:], v[:, :, -front:], key_valid[:, -front:]
        key_segments = key_segments[:, -front:] if key_segments is not None else None
    num_blocks = -(-n // size)
    tail = num_blocks * size - n
    q = F.pad(q, (0, 0, 0, tail))
    k, v = F.pad(k, (0, 0, 0, tail)), F.pad(v, (0, 0, 0, tail))
    key_valid = F.pad(key_valid, (0, tail), value=False)

    def key_blocks(x):  # [B, C, w + n', ...] -> [B, C, nb, w + size, ...]: the keys each query block may see
        x = x.view(*x.shape[:2], num_blocks + ratio, size, *x.shape[3:])
        return torch.cat([x[:, :, j : j + num_blocks] for j in range(ratio + 1)], dim=3)

    span = w + size
    keys = key_blocks(k).transpose(1, 2).reshape(batch * num_blocks, kv_heads, span, dim)
    values = key_blocks(v).transpose(1, 2).reshape(batch * num_blocks, kv_heads, span, dim)
    queries = q.view(batch, heads, num_blocks, size, dim).transpose(1, 2).reshape(batch * num_blocks, heads, size, dim)

    query_idx = torch.arange(size, device=q.device)[:, None]
    key_idx = torch.arange(span, device=q.device)[None, :]
    band = (key_idx > query_idx) & (key_idx <= query_idx + w)
    valid_blocks = key_blocks(key_valid[:, None]).squeeze(1)  # [B, nb, span]
    allowed = band[None, None] & valid_blocks[:, :, None, :]
    if key_segments is not None:
        key_segments = F.pad(key_segments, (0, tail), value=-1)
        segment_blocks = key_blocks(key_segments[:, None]).squeeze(1)  # [B, nb, span]
        query_segments = segment_blocks[:, :, w:]
        allowed = allowed & (query_segments[..., :, None] == segment_blocks[..., None, :])
    allowed = allowed | (key_idx == query_idx + w)[None, None]
    out = _sdpa(queries, keys, values, allowed.view(batch * num_blocks, 1, size, span))
    out = out.view(batch, num_blocks, heads, size, dim).transpose(1, 2).reshape(batch, heads, num_blocks * size, dim)
    return out[:, :, :n]


class LocalAttentionPlan:
    """Causal (sliding-window) self-attention of `n` new bytes, optionally continuing a `SlidingWindowCache`.

    new_valid [B, n]: False for padding. new_segments [B, n]: bytes attend only within their segment.
    """

    def __init__(self, window, new_valid, new_segments=None, cache=None):
        self.window, self.cache = window, cache
        self.num_new = new_valid.shape[1]
        if cache is not None:
            self.query_offset, key_valid, key_segments = cache.begin(new_valid, new_segments)
        else:
            self.query_offset, key_valid, key_segments = 0, new_valid, new_segments
        self.key_valid, self.key_segments = key_valid, key_segments
        self.is_plain_causal = (
            self.query_offset == 0
            and new_segments is None
            and bool(new_valid.all())
            and (window is None or window >= self.num_new)
        )
        # a decoding step: one new byte, and the cache holds only keys within its window; unmasked when none of
        # them is padding or in another segment (a shortcut of `BLTConfig.fast_decoding`)
        self.sees_all_keys = cache is not None and cache.fast_decoding and self.num_new == 1 and cache.window == window
        if self.sees_all_keys:
            visible = key_valid if key_segments is None else key_valid & (key_segments == key_segments[:, -1:])
            self.sees_all_keys = bool(visible.all())
        self.use_blocks = not self.is_plain_causal and window is not None and self.num_new > window
        self.mask = None
        if not self.is_plain_causal and not self.use_blocks and not self.sees_all_keys:
            self.mask = dense_window_mask(self.num_new, self.query_offset, window, key_valid, key_segments)

    def __call__(self, q, k, v, layer_idx: int) -> torch.Tensor:
        if self.cache is not None:
            k, v = self.cache.update(layer_idx, k, v)
        if self.is_plain_causal:
            return _sdpa(q, k, v, is_causal=True)
        if self.sees_all_keys:
            return _sdpa(q, k, v)
        if self.use_blocks:
            args = (q, k, v, self.query_offset, self.window, self.key_valid, self.key_segments)
            if self.num_new > 2 * self.window:  # long inputs: key blocks are ~3x the keys, keep only q, k, v
                return recompute_in_backward(blocked_window_attention, *args)
            return blocked_window_attention(*args)
        return _sdpa(q, k, v, self.mask)


class PatchAttentionPlan:
    """Causal self-attention over patches for the global transformer.

    new_counts [B]: how many of the `m` new patch positions are real in each row (the rest is right padding).
    With a `PatchKVCache`, row b's new patches continue after its own `cache.lengths[b]` earlier patches.
    segments [B, m] (no cache): patches attend only within their segment (packed documents).
    """

    def __init__(self, num_new: int, new_counts: torch.Tensor, cache=None, segments=None):
        self.cache, self.num_new, self.new_counts = cache, num_new, new_counts
        self.mask = None
        device = new_counts.device
        if cache is not None and cache.max_length > 0:
            query_pos = cache.lengths[:, None] + torch.arange(num_new, device=device)[None]
            key_pos = torch.arange(cache.max_length + num_new, device=device)
            self.mask = (key_pos[None, None, :] <= query_pos[:, :, None])[:, None]  # [B, 1, m, L]
        elif segments is not None:
            index = torch.arange(num_new, device=device)
            causal = index[None, :] <= index[:, None]
            same = segments[:, :, None] == segments[:, None, :]
            self.mask = ((causal[None] & same) | torch.eye(num_new, dtype=torch.bool, device=device)[None])[:, None]

    def positions(self) -> torch.Tensor:
        offset = self.cache.lengths[:, None] if self.cache is not None else 0
        return offset + torch.arange(self.num_new, device=self.new_counts.device)[None].expand(
            self.new_counts.shape[0], -1
        )

    def __call__(self, q, k, v, layer_idx: int) -> torch.Tensor:
        if self.cache is not None:
            k, v = self.cache.update(layer_idx, k, v, self.new_counts)
        if self.mask is None:
            return _sdpa(q, k, v, is_causal=True)
        return _sdpa(q, k, v, self.mask[..., : k.shape[2]])
