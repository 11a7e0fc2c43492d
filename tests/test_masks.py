"""Sliding-window attention plans against a plain eager reference with an explicit mask."""

import pytest
import torch

from blt_hf.cache import SlidingWindowCache
from blt_hf.masks import LocalAttentionPlan, blocked_window_attention, dense_window_mask


def eager_reference(q, k, v, query_offset, window, key_valid, key_segments=None):
    """softmax(q k^T / sqrt(d) + mask) v, one query at a time, with the rule written out."""
    batch, heads, n, dim = q.shape
    groups = heads // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = torch.zeros_like(q)
    for b in range(batch):
        for i in range(n):
            qpos = query_offset + i
            keys = [
                j for j in range(k.shape[2])
                if (j == qpos) or (
                    j <= qpos and (window is None or j > qpos - window) and bool(key_valid[b, j])
                    and (key_segments is None or key_segments[b, j] == key_segments[b, qpos])
                )
            ]
            scores = (q[b, :, i, None] * k[b, :, keys]).sum(-1) / dim**0.5
            out[b, :, i] = (scores.softmax(-1)[..., None] * v[b, :, keys]).sum(1)
    return out


@pytest.mark.parametrize("window, n, offset", [(8, 40, 0), (64, 200, 0), (64, 150, 63), (9, 30, 5), (128, 100, 127)])
@pytest.mark.parametrize("segments", [False, True])
def test_blocked_window_attention_matches_the_eager_reference(window, n, offset, segments):
    torch.manual_seed(window + n)
    batch, heads, kv_heads, dim = 2, 4, 2, 8
    q = torch.randn(batch, heads, n, dim)
    k, v = torch.randn(batch, kv_heads, offset + n, dim), torch.randn(batch, kv_heads, offset + n, dim)
    key_valid = torch.ones(batch, offset + n, dtype=torch.bool)
    key_valid[1, : offset + 7] = False  # left padding in row 1
    key_segments = torch.randint(0, 3, (batch, offset + n)).cummax(1).values if segments else None
    expected = eager_reference(q, k, v, offset, window, key_valid, key_segments)
    got = blocked_window_attention(q, k, v, offset, window, key_valid, key_segments)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    mask = dense_window_mask(n, offset, window, key_valid, key_segments)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 6, 64])
def test_cached_chunks_equal_one_pass(window):
    """Feeding a sequence in chunks through a sliding-window cache gives the one-pass attention."""
    torch.manual_seed(1)
    batch, heads, dim, n = 2, 2, 8, 150
    q, k, v = (torch.randn(batch, heads, n, dim) for _ in range(3))
    valid = torch.ones(batch, n, dtype=torch.bool)
    valid[0, :11] = False
    whole = LocalAttentionPlan(window, valid)(q, k, v, 0)
    cache = SlidingWindowCache(num_layers=1, window=window)
    pieces = []
    for start, stop in [(0, 13), (13, 14), (14, 90), (90, 150)]:
        plan = LocalAttentionPlan(window, valid[:, start:stop], cache=cache)
        pieces.append(plan(q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], 0))
        if window is not None:
            assert cache.length <= window - 1
    torch.testing.assert_close(torch.cat(pieces, 2)[:, :, 11:], whole[:, :, 11:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(pieces, 2)[1], whole[1], atol=1e-5, rtol=1e-5)
