"""The shortcuts that make one-byte decoding steps cheap compute exactly what the general paths do.

* one-byte decoding steps of the local-stack layers run q/k/v and gate/up as single matmuls over concatenated
  weights kept by the cache: checked against the plain formulas in float64, with a new cache after in-place
  weight updates and reloads, and with hooks on the inner linears (which must still run);
* a decoding step attends to its cached keys without a mask only when all of them are visible;
* the patching rule's one-byte step equals running the rule over the whole chunk, in every mode.
"""

import pytest
import torch
import torch.nn.functional as F

from blt_hf import PatchingRule
from blt_hf.cache import PatchingState, SlidingWindowCache
from blt_hf.layers import BLTRotaryEmbedding, BLTTransformerLayer
from blt_hf.masks import LocalAttentionPlan, dense_window_mask

HIDDEN, HEADS, KV_HEADS, FFN = 32, 4, 2, 48


class _RopeConfig:
    head_dim = HIDDEN // HEADS
    rope_parameters = {"rope_theta": 10000.0}


def _layer(seed=0):
    torch.manual_seed(seed)
    layer = BLTTransformerLayer(HIDDEN, HEADS, KV_HEADS, FFN, 1e-5, layer_idx=0, fused_decoding=True).eval()
    with torch.no_grad():
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.add_(torch.randn(HIDDEN) * 0.3)
    return layer


def _reference(layer, x):
    """The layer's formula in float64, from its separate projection weights: causal attention, no window."""
    w = {name: p.detach().double() for name, p in layer.named_parameters()}
    x = x.double()
    dim = HIDDEN // HEADS
    batch, length, _ = x.shape
    positions = torch.arange(length).expand(batch, -1)

    def norm(h, weight):
        return weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)

    def rope(t):  # t [B, T, H, D]; adjacent pairs rotated by position * theta^(-2i/D)
        freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = positions[..., None, None].double() * freqs
        pairs = torch.view_as_complex(t.reshape(*t.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)

    h = norm(x, w["input_layernorm.weight"])
    q = rope((h @ w["self_attn.q_proj.weight"].T).view(batch, length, HEADS, dim)).transpose(1, 2)
    k = rope((h @ w["self_attn.k_proj.weight"].T).view(batch, length, KV_HEADS, dim)).transpose(1, 2)
    v = (h @ w["self_attn.v_proj.weight"].T).view(batch, length, KV_HEADS, dim).transpose(1, 2)
    k, v = k.repeat_interleave(HEADS // KV_HEADS, 1), v.repeat_interleave(HEADS // KV_HEADS, 1)
    scores = q @ k.transpose(-1, -2) / dim**0.5
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    attention = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, HIDDEN)
    x = x + attention @ w["self_attn.o_proj.weight"].T
    h = norm(x, w["post_attention_layernorm.weight"])
    gated = F.silu(h @ w["mlp.gate_proj.weight"].T) * (h @ w["mlp.up_proj.weight"].T)
    return x + gated @ w["mlp.down_proj.weight"].T


def _decode(layer, x, prefill=3):
    """A prefill of `prefill` positions, then one-byte steps through a fresh cache: outputs [B, T, d], cache."""
    rope = BLTRotaryEmbedding(_RopeConfig())
    cache = SlidingWindowCache(1, None)
    outputs = []
    with torch.no_grad():
        for begin, end in [(0, prefill)] + [(j, j + 1) for j in range(prefill, x.shape[1])]:
            chunk = x[:, begin:end]
            positions = torch.arange(begin, end).expand(x.shape[0], -1)
            plan = LocalAttentionPlan(None, torch.ones(chunk.shape[:2], dtype=torch.bool), cache=cache)
            outputs.append(layer(chunk, rope(positions), plan))
    return torch.cat(outputs, 1), cache


def test_fused_decoding_steps_match_the_plain_formula():
    layer = _layer()
    x = torch.randn(2, 9, HIDDEN)
    out, cache = _decode(layer, x)
    assert cache.step_weights[0] is not None  # the steps ran fused
    torch.testing.assert_close(out.double(), _reference(layer, x), atol=1e-5, rtol=0)


def test_a_new_cache_decodes_with_the_current_weights():
    layer = _layer()
    x = torch.randn(1, 6, HIDDEN)
    _decode(layer, x)
    with torch.no_grad():  # an optimizer-style in-place update of one projection of each fused group
        layer.self_attn.k_proj.weight.mul_(-2.0)
        layer.mlp.up_proj.weight.add_(0.5)
    torch.testing.assert_close(_decode(layer, x)[0].double(), _reference(layer, x), atol=1e-5, rtol=0)
    layer.load_state_dict(_layer(seed=1).state_dict())  # a reload
    torch.testing.assert_close(_decode(layer, x)[0].double(), _reference(layer, x), atol=1e-5, rtol=0)


def test_hooks_on_inner_linears_still_run_in_decoding_steps():
    layer = _layer()
    x = torch.randn(1, 5, HIDDEN)
    plain, _ = _decode(layer, x)
    calls = []

    def silence(module, inputs, output):
        calls.append(module)
        return torch.zeros_like(output)

    handles = [layer.self_attn.v_proj.register_forward_hook(silence),
               layer.mlp.up_proj.register_forward_hook(silence)]
    hooked, cache = _decode(layer, x, prefill=3)
    for handle in handles:
        handle.remove()
    assert cache.step_weights[0] is None  # hooked layers take the general path
    assert calls == [layer.self_attn.v_proj, layer.mlp.up_proj] * 3  # the prefill and both one-byte steps
    # zero values and a zero "up" branch leave only the residual stream
    torch.testing.assert_close(hooked, x, atol=1e-6, rtol=0)
    assert not torch.allclose(plain, x, atol=1e-3)


@pytest.mark.parametrize("padded", [False, True])
def test_decoding_step_is_unmasked_only_when_every_cached_key_is_visible(padded):
    torch.manual_seed(0)
    window, cached = 6, 9
    cache = SlidingWindowCache(1, window)
    valid = torch.ones(2, cached, dtype=torch.bool)
    if padded:
        valid[1, :5] = False  # row 1 is left-padded: its last padding key (index 4) is still in the window
    prefill = LocalAttentionPlan(window, valid, cache=cache)
    prefill(*(torch.randn(2, 2, cached, 8) for _ in range(3)), 0)
    step = LocalAttentionPlan(window, torch.ones(2, 1, dtype=torch.bool), cache=cache)
    assert step.sees_all_keys is not padded
    q, k, v = (torch.randn(2, 2, 1, 8) for _ in range(3))
    keys_valid = step.key_valid.clone()
    out = step(q, k, v, 0)
    keys, values = cache.keys[0][:, :, cache.start : cache.end + 1], cache.values[0][:, :, cache.start : cache.end + 1]
    mask = dense_window_mask(1, keys.shape[2] - 1, window, keys_valid)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


RULES = [
    PatchingRule(mode="entropy", threshold=1.0),
    PatchingRule(mode="entropy", threshold=1.0, max_patch_length=3),
    PatchingRule(mode="entropy", threshold=0.4, monotonicity=True),
    PatchingRule(mode="entropy", threshold=1.0, threshold_add=0.3, max_patch_length=4),
    PatchingRule(mode="static", patch_size=3, max_patch_length=2),
    PatchingRule(mode="space"),
    PatchingRule(mode="byte"),
]


def _rule_id(rule):
    return f"{rule.mode}-{rule.monotonicity}-{rule.threshold_add}-{rule.max_patch_length}"


@pytest.mark.parametrize("rule", RULES, ids=_rule_id)
def test_one_byte_rule_steps_equal_the_whole_chunk(rule):
    torch.manual_seed(0)
    batch, length = 4, 30
    pad = torch.tensor([0, 3, 7, 12])
    valid = torch.arange(length)[None] >= pad[:, None]  # left padding of different lengths
    ids = torch.where(valid, torch.randint(4, 260, (batch, length)), 0)
    ids[:, :4] = torch.tensor([32 + 4, 97 + 4, 98 + 4, 46 + 4])  # some space-like bytes for the space rule
    entropies = torch.rand(batch, length) * 2
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    state = PatchingState.initial(batch, ids.device)
    whole_starts, whole_next, whole_state = rule(positions, valid, ids, entropies, state)
    starts, next_starts = [], []
    for j in range(length):
        s, n, state = rule(positions[:, j : j + 1], valid[:, j : j + 1], ids[:, j : j + 1],
                           entropies[:, j : j + 1], state)
        starts.append(s)
        next_starts.append(n)
    assert torch.equal(torch.cat(starts, 1), whole_starts)
    assert torch.equal(torch.cat(next_starts, 1), whole_next)
    for name, value in vars(whole_state).items():
        assert torch.equal(getattr(state, name), value), name
