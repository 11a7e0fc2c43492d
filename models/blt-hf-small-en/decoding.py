"""Fast paths of one-byte decoding steps, beside the plain formulas they must equal.

A decoding step feeds one byte per row through the small local stacks, so its cost is kernel launches, not flops.
Two shortcuts cut them, both exact rewrites of the formulas in `layers.py` (`tests/test_decode_fast_paths.py`):

* `fast_layer_step`: a `BLTTransformerLayer` on one fp32 byte, with q/k/v and gate/up as single matmuls over weights
  concatenated once per generation (RMSNorm weights folded in; `linear_rows` multiplies few rows in the faster
  orientation, `few_row_matmul`, more against a contiguous W^T) and the residual adds riding on the output matmuls;
  also on short chunks continuing a cache (`fused_layers_eligible`): a verification pass's bytes in the local
  stacks;
* `row_layer_step`: the same rewrite for the global transformer's one-patch steps, reading the layer's own weights
  (fused copies of its large matrices would cost as much memory as the model);
* `slot_readouts` / `read_slots`: a byte's cross-attention to the k slots of its patch folded into two small
  matrices made once per patch.

`fast_paths_eligible` is the one check that lets a stack call take them. The switch `BLTConfig.fast_decoding`
(carried by the caches) turns them off together with the other one-byte shortcuts: the unmasked attention step
(`masks.py`) and the patching rule's one-byte step (`patching.py`). `naive_layer` is the readable float64 reference
of a layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    BLTMLP,
    BLTCrossAttention,
    BLTRMSNorm,
    BLTSelfAttention,
    BLTTransformerLayer,
    few_row_matmul,
    small_batch_eligible,
)
from .module_calls import has_hooks


def fast_paths_eligible(hidden_states: torch.Tensor, cache) -> bool:
    """Whether a stack call may take the fast paths: one fp32 byte per row continuing a cache that allows them
    (`cache.fast_decoding`), without autograd or autocast."""
    return (
        cache is not None and cache.fast_decoding and hidden_states.shape[1] == 1
        and hidden_states.dtype == torch.float32 and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled(hidden_states.device.type)
    )


FUSED_CHUNK_BYTES = 32  # a short chunk continuing a cache (a verification; patches closed) takes the fused layers too


def fused_layers_eligible(hidden_states: torch.Tensor, cache) -> bool:
    """Whether a stack call may run its layers as `fast_layer_step`: a `fast_paths_eligible` one-byte step, or a
    short chunk (up to `FUSED_CHUNK_BYTES` bytes, or patches, per row) under the same conditions."""
    return (
        cache is not None and cache.fast_decoding and 1 <= hidden_states.shape[1] <= FUSED_CHUNK_BYTES
        and hidden_states.dtype == torch.float32 and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled(hidden_states.device.type)
    )


def plain_fp32(norms, linears, *others) -> bool:
    """Whether fused paths may read these modules' weights directly: plain `BLTRMSNorm`s and bias-free `nn.Linear`s
    in fp32, and nothing hooked on them or on `others`."""
    return (
        all(type(norm) is BLTRMSNorm for norm in norms)
        and all(type(linear) is nn.Linear and linear.bias is None for linear in linears)
        and all(p.dtype == torch.float32 for module in (*norms, *linears) for p in module.parameters())
        and not any(has_hooks(module) for module in (*others, *norms, *linears))
    )


def linear_rows(x: torch.Tensor, weights, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, in] @ W^T (+ residual [N, out]) for weights = (W [out, in], W^T [in, out] contiguous): few rows take
    `few_row_matmul`; more take one BLAS call on the contiguous W^T (10-25% faster than on a transposed view of W at
    8-128 rows on one of this project's machines)."""
    weight, transposed = weights
    if small_batch_eligible(x, weight):
        return few_row_matmul(x, weight, residual, transposed)
    return torch.mm(x, transposed) if residual is None else torch.addmm(residual, x, transposed)


def rms_scale(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) of each row of x [B, 1, d], as [B, 1, 1]: one batched matmul and one rsqrt."""
    return torch.baddbmm(eps, x, x.mT, alpha=1 / x.shape[-1]).rsqrt_()


# ---------------------------------------------------------------- fused one-byte layer step
def fast_layer_step(layer: BLTTransformerLayer, hidden_states, rotations, attention_plan) -> torch.Tensor:
    """`layer(hidden_states, rotations, attention_plan)` for a `fast_paths_eligible` call: the fused form unless the
    layer is hooked or its weights refuse (`fuse_step_weights`, made at the cache's first step and kept by it)."""
    prepared = attention_plan.cache.step_weights
    if layer.layer_idx not in prepared:
        prepared[layer.layer_idx] = fuse_step_weights(layer)
    weights = prepared[layer.layer_idx]
    if weights is None or has_hooks(layer):
        return layer(hidden_states, rotations, attention_plan)
    return fused_layer_step(layer, hidden_states, rotations, attention_plan, weights)


def fuse_step_weights(layer: BLTTransformerLayer):
    """The (qkv, o, gate_up, down) weights, each as ([out, in], its contiguous transpose) for `linear_rows`, with the
    RMSNorm weights folded into qkv and gate_up, and eps; None (plain path) for non-fp32 weights, hooks, biases or
    wrapped modules."""
    attention, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
               mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    if (type(attention) is not BLTSelfAttention or type(mlp) is not BLTMLP
            or not plain_fp32(norms, linears, attention, mlp)
            or norms[0].variance_epsilon != norms[1].variance_epsilon):
        return None
    q, k, v, o, gate, up, down = (linear.weight.detach() for linear in linears)
    attention_norm, mlp_norm = (norm.weight.detach() for norm in norms)
    eps = torch.tensor(norms[0].variance_epsilon, device=q.device)
    qkv, gate_up = torch.cat((q, k, v)) * attention_norm, torch.cat((gate, up)) * mlp_norm
    return *((w, w.t().contiguous()) for w in (qkv, o, gate_up, down)), eps


def fused_layer_step(layer: BLTTransformerLayer, hidden_states, rotations, attention_plan, weights) -> torch.Tensor:
    """The layer on one fp32 byte per row [B, 1, d], in as few kernels as the formulas allow: each RMSNorm is a
    per-row scale (its weight lives in the next matmul) and the residual adds ride on the output matmuls."""
    qkv_weights, o_weights, gate_up_weights, down_weights, eps = weights
    heads, kv_heads, dim = layer.self_attn.num_heads, layer.self_attn.num_kv_heads, layer.self_attn.head_dim
    batch, length, width = hidden_states.shape
    if length > 1:
        return _fused_chunk_step(layer, hidden_states, rotations, attention_plan, weights)
    qkv = linear_rows((hidden_states * rms_scale(hidden_states, eps)).view(batch, width), qkv_weights)
    rotary = (heads + kv_heads) * dim
    qk = torch.view_as_complex(qkv[:, :rotary].view(batch, heads + kv_heads, dim // 2, 2))
    qk = torch.view_as_real(qk * rotations.view(batch, 1, dim // 2))
    q, k = qk[:, :heads].view(batch, heads, 1, dim), qk[:, heads:].view(batch, kv_heads, 1, dim)
    out = attention_plan(q, k, qkv[:, rotary:].view(batch, kv_heads, 1, dim), layer.layer_idx)
    hidden = linear_rows(out.reshape(batch, heads * dim), o_weights, hidden_states.view(batch, width))
    gate_up = linear_rows(hidden * rms_scale(hidden.view(batch, 1, width), eps).view(batch, 1), gate_up_weights)
    inner = gate_up.shape[1] // 2
    activated = F.silu(gate_up[:, :inner]).mul_(gate_up[:, inner:])
    return linear_rows(activated, down_weights, hidden).view(batch, 1, width)


def row_step_eligible(layer: BLTTransformerLayer) -> bool:
    """Whether `row_layer_step` may read the layer's weights: plain modules, fp32, bias-free, nothing hooked."""
    attention, mlp = layer.self_attn, layer.mlp
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    linears = (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
               mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return (type(attention) is BLTSelfAttention and type(mlp) is BLTMLP and not has_hooks(layer)
            and plain_fp32(norms, linears, attention, mlp)
            and norms[0].variance_epsilon == norms[1].variance_epsilon)


def _rows_times(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [N, in] @ weight^T (+ residual): `few_row_matmul` for few rows, else one BLAS call on the transposed view."""
    if small_batch_eligible(x, weight):
        return few_row_matmul(x, weight, residual)
    return torch.mm(x, weight.t()) if residual is None else torch.addmm(residual, x, weight.t())


def row_layer_step(layer: BLTTransformerLayer, hidden_states, rotations, attention_plan) -> torch.Tensor:
    """The layer on one fp32 position per row [B, 1, d] reading its own weights, no fused copies (for the global
    transformer's large layers, where copies would cost as much memory as the model): each RMSNorm a per-row scale
    times its weight, the residual adds riding on the output matmuls, RoPE on q and k as complex products. For a
    `row_step_eligible` layer."""
    attention, mlp = layer.self_attn, layer.mlp
    heads, kv_heads, dim = attention.num_heads, attention.num_kv_heads, attention.head_dim
    batch, _, width = hidden_states.shape
    eps = torch.tensor(layer.input_layernorm.variance_epsilon, device=hidden_states.device)
    flat = hidden_states.view(batch, width)
    normed = flat * rms_scale(hidden_states, eps).view(batch, 1) * layer.input_layernorm.weight
    turn = rotations.view(batch, 1, dim // 2)
    q = torch.view_as_real(torch.view_as_complex(_rows_times(normed, attention.q_proj.weight)
                                                 .view(batch, heads, dim // 2, 2)) * turn)
    k = torch.view_as_real(torch.view_as_complex(_rows_times(normed, attention.k_proj.weight)
                                                 .view(batch, kv_heads, dim // 2, 2)) * turn)
    v = _rows_times(normed, attention.v_proj.weight).view(batch, kv_heads, 1, dim)
    out = attention_plan(q.view(batch, heads, 1, dim), k.view(batch, kv_heads, 1, dim), v, layer.layer_idx)
    hidden = _rows_times(out.reshape(batch, heads * dim), attention.o_proj.weight, flat)
    mlp_norm = layer.post_attention_layernorm.weight
    normed = hidden * rms_scale(hidden.view(batch, 1, width), eps).view(batch, 1) * mlp_norm
    activated = F.silu(_rows_times(normed, mlp.gate_proj.weight)).mul_(_rows_times(normed, mlp.up_proj.weight))
    return _rows_times(activated, mlp.down_proj.weight, hidden).view(batch, 1, width)


def _fused_chunk_step(layer, hidden_states, rotations, attention_plan, weights) -> torch.Tensor:
    """`fused_layer_step` on n > 1 bytes per row [B, n, d] (rotations [B, n, 1, D / 2])."""
    qkv_weights, o_weights, gate_up_weights, down_weights, eps = weights
    heads, kv_heads, dim = layer.self_attn.num_heads, layer.self_attn.num_kv_heads, layer.self_attn.head_dim
    batch, length, width = hidden_states.shape
    flat = hidden_states.reshape(batch * length, width)
    qkv = linear_rows(flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + eps), qkv_weights)
    rotary = (heads + kv_heads) * dim
    qk = torch.view_as_complex(qkv[:, :rotary].reshape(batch, length, heads + kv_heads, dim // 2, 2))
    qk = torch.view_as_real(qk * rotations.view(batch, length, 1, dim // 2))
    q = qk[:, :, :heads].reshape(batch, length, heads, dim).transpose(1, 2)
    k = qk[:, :, heads:].reshape(batch, length, kv_heads, dim).transpose(1, 2)
    v = qkv[:, rotary:].reshape(batch, length, kv_heads, dim).transpose(1, 2)
    out = attention_plan(q, k, v, layer.layer_idx)  # [B, H, n, D]
    hidden = linear_rows(out.transpose(1, 2).reshape(batch * length, heads * dim), o_weights, flat)
    gate_up = linear_rows(hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps), gate_up_weights)
    inner = gate_up.shape[1] // 2
    activated = F.silu(gate_up[:, :inner]).mul_(gate_up[:, inner:])
    return linear_rows(activated, down_weights, hidden).view(batch, length, width)


# ---------------------------------------------------------------- slot readouts of the decoder's current patch
def slot_readout(cross_attention: BLTCrossAttention, patch_keys: torch.Tensor, patch_values: torch.Tensor):
    """One patch per row (keys/values [B, 1, k, H, D]) folded into the matrices of `read_slots`, or None when the
    plain formulas must run (hooks, biases, wrapped modules, non-fp32 weights).

    A byte's scores are linear in its normed state and its output linear in the slot weights, so q_norm's weight,
    q_proj and the 1/sqrt(D) scale fold into scores = x_normed @ U (U [B, d, k * H]) and values and o_proj into
    out = weights @ Z (Z [B, k * H, d]): per byte, two small matmuls instead of two d x d ones.
    """
    q_norm, q_proj, o_proj = cross_attention.q_norm, cross_attention.q_proj, cross_attention.o_proj
    if not plain_fp32((q_norm,), (q_proj, o_proj), cross_attention):
        return None
    batch, _, slots, heads, dim = patch_keys.shape
    width = q_proj.in_features
    # one batched matmul per matrix, over heads: U[b, :, k, h] = W_q,h^T keys[b, k, h], Z[b, k, h] = values W_o,h
    q_weight = (q_proj.weight.detach() * (q_norm.weight.detach() * dim**-0.5)).view(heads, dim, width)
    keys = patch_keys[:, 0].permute(2, 3, 0, 1).reshape(heads, dim, batch * slots)
    scores = torch.bmm(q_weight.transpose(1, 2), keys)  # [H, d, B * k]
    score_matrix = scores.view(heads, width, batch, slots).permute(2, 1, 3, 0).reshape(batch, width, -1)
    o_weight = o_proj.weight.detach().view(width, heads, dim).permute(1, 2, 0)  # [H, D, d]
    values = patch_values[:, 0].permute(2, 0, 1, 3).reshape(heads, batch * slots, dim)
    outputs = torch.bmm(values, o_weight)  # [H, B * k, d]
    output_matrix = outputs.view(heads, batch, slots, width).permute(1, 2, 0, 3).reshape(batch, -1, width)
    eps = torch.tensor(q_norm.variance_epsilon, device=patch_keys.device)
    return score_matrix, output_matrix, eps, slots


def slot_readouts(cross_attn_layers, patch_kv) -> list | None:
    """Per cross-attention layer, the `slot_readout` of one patch per row, or None if any layer refuses."""
    readouts = [slot_readout(cross_attention, keys, values)
                for (keys, values), cross_attention in zip(patch_kv, cross_attn_layers, strict=True)]
    return None if any(readout is None for readout in readouts) else readouts


def read_slots(byte_states: torch.Tensor, readout) -> torch.Tensor:
    """One byte per row [B, 1, d] reads its patch through a `slot_readout`; returns
    byte_states + bytes_from_patches(byte_states, ...) (the doubled residual included)."""
    score_matrix, output_matrix, eps, slots = readout
    batch = byte_states.shape[0]
    scores = torch.bmm(byte_states * rms_scale(byte_states, eps), score_matrix)  # [B, 1, k * H]
    weights = torch.softmax(scores.view(batch, slots, -1), dim=1)  # over the k slots, per head
    return torch.baddbmm(byte_states, weights.view(batch, 1, -1), output_matrix, beta=2)


# ---------------------------------------------------------------- the readable reference
def naive_layer(layer: BLTTransformerLayer, x: torch.Tensor, rope_theta: float = 10000.0) -> torch.Tensor:
    """A `BLTTransformerLayer` on x [B, T, d] in float64, from its separate projection weights, written out: causal
    attention without a window, positions 0..T-1, default RoPE over adjacent pairs."""
    w = {name: p.detach().double() for name, p in layer.named_parameters()}
    attention = layer.self_attn
    heads, kv_heads, dim = attention.num_heads, attention.num_kv_heads, attention.head_dim
    eps = layer.input_layernorm.variance_epsilon
    x = x.double()
    batch, length, width = x.shape
    positions = torch.arange(length).expand(batch, -1)

    def norm(h, weight):
        return weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)

    def rope(t):  # t [B, T, H, D]; adjacent pairs rotated by position * theta^(-2i/D)
        freqs = 1.0 / (rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = positions[..., None, None].double() * freqs
        pairs = torch.view_as_complex(t.reshape(*t.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2)

    h = norm(x, w["input_layernorm.weight"])
    q = rope((h @ w["self_attn.q_proj.weight"].T).view(batch, length, heads, dim)).transpose(1, 2)
    k = rope((h @ w["self_attn.k_proj.weight"].T).view(batch, length, kv_heads, dim)).transpose(1, 2)
    v = (h @ w["self_attn.v_proj.weight"].T).view(batch, length, kv_heads, dim).transpose(1, 2)
    k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
    scores = q @ k.transpose(-1, -2) / dim**0.5
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
    x = x + attended @ w["self_attn.o_proj.weight"].T
    h = norm(x, w["post_attention_layernorm.weight"])
    gated = F.silu(h @ w["mlp.gate_proj.weight"].T) * (h @ w["mlp.up_proj.weight"].T)
    return x + gated @ w["mlp.down_proj.weight"].T
