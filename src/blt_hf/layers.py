"""Shared building blocks of every BLT stack: RMSNorm, interleaved RoPE, SwiGLU MLP, self- and cross-attention.

Layers take plain sizes, never a config. Self-attention delegates the attention itself (windows, padding, caches) to
an attention plan from `masks.py`, built once per stack call and shared by its layers. The two cross-attentions
exploit BLT's structure: a patch only ever attends to its own bytes and a byte to the k slots of one patch, so both
run in O(bytes * k) memory instead of a dense bytes x patches mask.

These are the formulas. The autograd functions `_LeanRMSNorm`/`_LeanSwiGLU` compute the same values while saving less
for backward; the one-byte decoding rewrites live in `decoding.py`. Projections go through `project`, which
computes a product of few rows in the orientation this machine's BLAS runs faster (`few_row_matmul`) and is
`linear(x)` otherwise.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .module_calls import direct_call, has_hooks


def recompute_in_backward(function, *args):
    """Call `function`, keeping only its inputs for the backward pass (the rest is recomputed there).

    Used for the attention cores, whose intermediates (gathered keys, key blocks) are several times larger than
    their inputs while cheap to recompute.
    """
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
    return function(*args)


# Up to this many rows a product x @ W^T may run much faster in the other orientation, (W @ x^T)^T, depending on the
# CPU and its BLAS: on one of this project's machines (MKL on a 2-core VM) 2-4 rows of the benchmark's layer shapes
# ran 2-3.7x faster that way, on another (MKL, a 2-core AVX-512 Xeon) 2-4x *slower*. `few_row_matmul` therefore
# times both once per shape and thread count and keeps the faster (README, "Few-row matmuls").
SMALL_BATCH_ROWS = 4
# "auto" (measure), "weight_major" ((W @ x^T)^T) or "row_major" (x @ W^T) for every few-row product; the environment
# variable BLT_HF_FEW_ROW_MATMUL sets it at import.
FEW_ROW_ORIENTATION = os.environ.get("BLT_HF_FEW_ROW_MATMUL", "auto")
_orientation_choices: dict[tuple, bool] = {}


def small_batch_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `few_row_matmul` should compute x @ weight^T: fp32 on CPU, no autograd, at most `SMALL_BATCH_ROWS`
    rows."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
        and not torch.is_grad_enabled() and x.numel() <= SMALL_BATCH_ROWS * x.shape[-1] and x.numel() > 0
    )


def small_batch_matmul(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T (+ residual [..., out]) computed as (weight @ x^T)^T, the weight-major
    orientation (a single row is doubled to two: BLAS's matrix-vector path is slower still). Contiguous output."""
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1])
    if rows == 1:
        flat = torch.cat((flat, flat))
    if residual is None:
        out = torch.mm(weight, flat.t())
    else:
        base = residual.reshape(rows, weight.shape[0])
        out = torch.addmm((torch.cat((base, base)) if rows == 1 else base).t(), weight, flat.t())
    return out[:, :rows].t().contiguous().view(*x.shape[:-1], weight.shape[0])


def row_major_matmul(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None,
                     transposed: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ weight[out, in]^T (+ residual [..., out]) as BLAS's plain product, against `transposed` (a
    contiguous weight^T) when given."""
    flat = x.reshape(-1, x.shape[-1])
    right = weight.t() if transposed is None else transposed
    base = None if residual is None else residual.reshape(-1, weight.shape[0])
    out = torch.mm(flat, right) if base is None else torch.addmm(base, flat, right)
    return out.view(*x.shape[:-1], weight.shape[0])


def faster_of(first, second, repeats: int = 5) -> bool:
    """Whether `first()` runs faster than `second()`: each run once to warm up, then `repeats` interleaved timings,
    compared by their minimum (the least disturbed run on a shared machine)."""
    first(), second()
    times = ([], [])
    for _ in range(repeats):
        for function, spent in zip((first, second), times, strict=True):
            begin = time.perf_counter()
            function()
            spent.append(time.perf_counter() - begin)
    return min(times[0]) < min(times[1])


def weight_major_is_faster(rows: int, weight: torch.Tensor, transposed: torch.Tensor | None = None) -> bool:
    """Whether `small_batch_matmul` beats `row_major_matmul` for `rows` rows times this weight: `FEW_ROW_ORIENTATION`
    unless "auto", else measured on the weight itself the first time a shape (and thread count) comes up."""
    if FEW_ROW_ORIENTATION != "auto":
        if FEW_ROW_ORIENTATION not in ("weight_major", "row_major"):
            raise ValueError(f"BLT_HF_FEW_ROW_MATMUL must be auto, weight_major or row_major, got "
                             f"{FEW_ROW_ORIENTATION!r}")
        return FEW_ROW_ORIENTATION == "weight_major"
    key = (rows, *weight.shape, transposed is not None, torch.get_num_threads())
    choice = _orientation_choices.get(key)
    if choice is None:
        x = torch.full((rows, weight.shape[1]), 0.5)  # not random: sampling's generator stays untouched
        choice = _orientation_choices[key] = faster_of(lambda: small_batch_matmul(x, weight),
                                                       lambda: row_major_matmul(x, weight, transposed=transposed))
    return choice


def few_row_matmul(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None,
                   transposed: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T (+ residual) for a `small_batch_eligible` x, in the orientation this machine runs faster for the
    shape (`weight_major_is_faster`)."""
    if weight_major_is_faster(x.numel() // x.shape[-1], weight, transposed):
        return small_batch_matmul(x, weight, residual)
    return row_major_matmul(x, weight, residual, transposed)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.linear(x, weight) without bias, through `few_row_matmul` where `small_batch_eligible`."""
    return few_row_matmul(x, weight) if small_batch_eligible(x, weight) else F.linear(x, weight)


def project(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` (via `direct_call`); a plain bias-free `nn.Linear` on few fp32 CPU rows without autograd takes
    `few_row_matmul`."""
    if (type(module) is nn.Linear and module.bias is None and small_batch_eligible(x, module.weight)
            and not has_hooks(module)):
        return few_row_matmul(x, module.weight)
    return direct_call(module, x)


class _LeanRMSNorm(torch.autograd.Function):
    """weight * x * rsqrt(mean(x^2) + eps), saving only x and the per-row scale for backward (fp32 inputs)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, scale)
        return weight * (x * scale)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, scale = ctx.saved_tensors
        normed = x * scale
        grad_weight = (grad_out * normed).flatten(0, -2).sum(0)
        grad_normed = grad_out * weight
        grad_x = scale * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x, grad_weight, None


class BLTRMSNorm(nn.Module):
    """RMSNorm computed in fp32, scaled by a learned weight (no bias)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        if input_dtype == torch.float32 and self.weight.dtype == torch.float32:
            if torch.is_grad_enabled():
                return _LeanRMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
            return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon)
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class BLTRotaryEmbedding(nn.Module):
    """RoPE over adjacent pairs (x[2i], x[2i+1]), the layout of the released BLT weights (not Llama-HF's halves).

    `config` is a stack config with `head_dim` and `rope_parameters` ("default" or "llama3" scaling).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        inv_freq, self.attention_scaling = self.compute_inv_freq()
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def compute_inv_freq(self) -> tuple[torch.Tensor, float]:
        params = self.config.rope_parameters
        if params.get("rope_type", "default") == "default":
            dim = self.config.head_dim
            inv_freq = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
            return inv_freq, 1.0
        return ROPE_INIT_FUNCTIONS[params["rope_type"]](self.config, None)

    @torch.no_grad()
    def forward(self, positions: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """positions [B, T] -> rotations e^(i * position * freq) as complex64 [B, T, 1, head_dim / 2] (the 1
        broadcasts over heads)."""
        angles = positions[..., None, None].float() * self.inv_freq.to(positions.device)
        return torch.polar(torch.full_like(angles, self.attention_scaling), angles)


def apply_rotary(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, T, H, D] by `rotations` [B, T, 1, D / 2] (complex)."""
    fp32 = x.dtype == torch.float32
    pairs = torch.view_as_complex((x if fp32 else x.float()).reshape(*x.shape[:-1], -1, 2))
    rotated = torch.view_as_real(pairs * rotations).view(x.shape)
    return rotated if fp32 else rotated.type_as(x)


class _LeanSwiGLU(torch.autograd.Function):
    """down(silu(x W_gate^T) * (x W_up^T)), saving x and the two projections only: the SiLU and the product are
    recomputed in backward (same matmuls, half the activation memory)."""

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        gate, up = F.linear(x, w_gate), F.linear(x, w_up)
        ctx.save_for_backward(x, gate, up, w_gate, w_up, w_down)
        return F.linear(F.silu(gate) * up, w_down)

    @staticmethod
    def backward(ctx, grad_out):
        x, gate, up, w_gate, w_up, w_down = ctx.saved_tensors
        sigmoid = torch.sigmoid(gate)
        silu = gate * sigmoid
        grad_hidden = grad_out @ w_down
        grad_w_down = grad_out.flatten(0, -2).T @ (silu * up).flatten(0, -2)
        grad_up = grad_hidden * silu
        grad_gate = grad_hidden * up * sigmoid * (1 + gate * (1 - sigmoid))
        grad_x = grad_gate @ w_gate + grad_up @ w_up
        flat_x = x.flatten(0, -2)
        return grad_x, grad_gate.flatten(0, -2).T @ flat_x, grad_up.flatten(0, -2).T @ flat_x, grad_w_down


class BLTMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = self.gate_proj, self.up_proj, self.down_proj
        plain = all(type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks
                    for m in (gate, up, down))
        # training outside autocast (weights and x share a dtype): the autograd function that saves less
        if plain and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return _LeanSwiGLU.apply(x, gate.weight, up.weight, down.weight)
        return project(down, F.silu(project(gate, x)) * project(up, x))


class BLTSelfAttention(nn.Module):
    """Multi-head self-attention with GQA and RoPE; masking and caching are the attention plan's job."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, layer_idx: int):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, hidden_states, rotations, attention_plan) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        heads, kv_heads, dim = self.num_heads, self.num_kv_heads, self.head_dim
        q = apply_rotary(project(self.q_proj, hidden_states).view(batch, length, heads, dim), rotations)
        k = apply_rotary(project(self.k_proj, hidden_states).view(batch, length, kv_heads, dim), rotations)
        v = project(self.v_proj, hidden_states).view(batch, length, kv_heads, dim)
        out = attention_plan(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.layer_idx)  # [B, H, T, D]
        return project(self.o_proj, out.transpose(1, 2).reshape(batch, length, -1))


class BLTTransformerLayer(GradientCheckpointingLayer):
    """Pre-norm block: h = x + attn(norm(x)); out = h + mlp(norm(h)).

    One-byte decoding steps of the local stacks run it as `decoding.fast_layer_step`, an exact rewrite in fewer kernels.
    """

    def __init__(self, hidden_size, num_heads, num_kv_heads, intermediate_size, rms_norm_eps, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = BLTSelfAttention(hidden_size, num_heads, num_kv_heads, layer_idx)
        self.mlp = BLTMLP(hidden_size, intermediate_size)
        self.input_layernorm = BLTRMSNorm(hidden_size, eps=rms_norm_eps)
        self.post_attention_layernorm = BLTRMSNorm(hidden_size, eps=rms_norm_eps)

    def forward(self, hidden_states, rotations, attention_plan) -> torch.Tensor:
        normed = direct_call(self.input_layernorm, hidden_states)
        attention = direct_call(self.self_attn, normed, rotations, attention_plan)
        hidden_states = hidden_states + attention
        return hidden_states + direct_call(self.mlp, direct_call(self.post_attention_layernorm, hidden_states))

    @classmethod
    def from_config(cls, config, layer_idx: int) -> BLTTransformerLayer:
        return cls(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.rms_norm_eps, layer_idx,
        )


def segment_softmax_weights(scores: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of `scores` [B, L, ...] over the positions of each segment; `segment` [B, L] in 0..num_segments-1."""
    index = segment.view(*segment.shape, *([1] * (scores.dim() - 2))).expand_as(scores)
    shape = (scores.shape[0], num_segments, *scores.shape[2:])
    with torch.no_grad():
        seg_max = scores.new_full(shape, float("-inf")).scatter_reduce(1, index, scores, "amax", include_self=True)
    weights = torch.exp(scores - seg_max.gather(1, index))
    denominators = scores.new_zeros(shape).scatter_add(1, index, weights)
    return weights / denominators.gather(1, index)


class BLTCrossAttention(nn.Module):
    """Cross-attention between bytes and the k slots of patches, with RMSNorm on queries and keys/values, no RoPE.

    The module returns `attention + queries`; callers add the queries once more, a doubled residual that the
    released weights were trained with.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, rms_norm_eps: float):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)
        self.q_norm = BLTRMSNorm(hidden_size, eps=rms_norm_eps)
        self.k_norm = BLTRMSNorm(hidden_size, eps=rms_norm_eps)

    def _keys_values(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states [..., d] -> keys, values [..., H, D] (kv heads repeated up to the query heads)."""
        states = direct_call(self.k_norm, states)
        shape = (*states.shape[:-1], self.num_kv_heads, self.head_dim)
        keys, values = project(self.k_proj, states).view(shape), project(self.v_proj, states).view(shape)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            keys, values = keys.repeat_interleave(groups, dim=-2), values.repeat_interleave(groups, dim=-2)
        return keys, values

    def _queries(self, states: torch.Tensor) -> torch.Tensor:
        queries = project(self.q_proj, direct_call(self.q_norm, states))
        return queries.view(*states.shape[:-1], self.num_heads, self.head_dim)

    def forward(self, *inputs, mode: str):
        """Dispatch to one of the three uses; going through `forward` lets module hooks (FSDP unsharding,
        accelerate device placement) see every use. mode: "patches_from_bytes", "patch_keys_values" or
        "bytes_from_patches"."""
        if mode not in ("patches_from_bytes", "patch_keys_values", "bytes_from_patches"):
            raise ValueError(f"unknown cross-attention mode {mode!r}")
        return getattr(self, mode)(*inputs)

    @classmethod
    def for_layers(cls, config, count: int) -> nn.ModuleList:
        """`count` cross-attentions with a local stack config's sizes."""
        return nn.ModuleList(
            cls(config.hidden_size, config.cross_attn_num_heads, config.cross_attn_num_key_value_heads,
                config.rms_norm_eps)
            for _ in range(count)
        )

    def patches_from_bytes(
        self, patch_queries: torch.Tensor, byte_states: torch.Tensor, byte_patch: torch.Tensor
    ) -> torch.Tensor:
        """Each patch's k query slots attend to the bytes of that patch.

        patch_queries [B, P, k, d]; byte_states [B, L, d]; byte_patch [B, L] in 0..P, where P marks bytes that
        belong to no patch here. Returns [B, P, k, d]. A patch without bytes gets a zero attention output.
        """
        num_patches = patch_queries.shape[1]
        queries = self._queries(patch_queries)  # [B, P, k, H, D]
        keys, values = self._keys_values(byte_states)  # [B, L, H, D]
        pooled = recompute_in_backward(_pool_bytes_into_patches, queries, keys, values, byte_patch)
        out = project(self.o_proj, pooled[:, :num_patches].flatten(-2))
        return out + patch_queries

    def patch_keys_values(self, patch_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patch_slots [B, P, k, d] -> keys, values [B, P, k, H, D] for `bytes_from_patches`."""
        return self._keys_values(patch_slots)

    def bytes_from_patches(
        self, byte_states: torch.Tensor, patch_keys: torch.Tensor, patch_values: torch.Tensor, byte_patch: torch.Tensor
    ) -> torch.Tensor:
        """Each byte attends to the k slots of one patch.

        byte_states [B, L, d]; patch_keys/values [B, P, k, H, D]; byte_patch [B, L] in 0..P-1. Returns [B, L, d].
        """
        queries = self._queries(byte_states)  # [B, L, H, D]
        out = recompute_in_backward(_read_patch_slots, queries, patch_keys, patch_values, byte_patch)
        return project(self.o_proj, out.flatten(-2)) + byte_states


def _pool_bytes_into_patches(queries, keys, values, byte_patch):
    """queries [B, P, k, H, D] of each patch; keys/values [B, L, H, D] of bytes; byte_patch [B, L] in 0..P.
    Returns [B, P + 1, k, H, D]: for each patch slot, the softmax-weighted values of that patch's bytes."""
    batch, num_patches = queries.shape[:2]
    gather_index = byte_patch.clamp(max=num_patches - 1).view(batch, -1, 1, 1, 1)
    per_byte_queries = queries.gather(1, gather_index.expand(-1, -1, *queries.shape[2:]))  # [B, L, k, H, D]
    scores = (per_byte_queries * keys[:, :, None]).sum(-1) * queries.shape[-1] ** -0.5  # [B, L, k, H]
    weights = segment_softmax_weights(scores, byte_patch, num_patches + 1)
    weighted = weights[..., None] * values[:, :, None]  # [B, L, k, H, D]
    index = byte_patch.view(batch, -1, 1, 1, 1).expand_as(weighted)
    return weighted.new_zeros(batch, num_patches + 1, *weighted.shape[2:]).scatter_add(1, index, weighted)


def _read_patch_slots(queries, patch_keys, patch_values, byte_patch):
    """queries [B, L, H, D] of bytes; patch_keys/values [B, P, k, H, D]; byte_patch [B, L] -> [B, L, H, D]."""
    batch, length = byte_patch.shape
    if patch_keys.shape[1] == 1:  # one patch (a decoding step has selected its byte's): every byte reads it
        keys, values = patch_keys, patch_values
    else:
        index = byte_patch.view(batch, length, 1, 1, 1).expand(-1, -1, *patch_keys.shape[2:])
        keys, values = patch_keys.gather(1, index), patch_values.gather(1, index)  # [B, L, k, H, D]
    scores = (queries[:, :, None] * keys).sum(-1) * queries.shape[-1] ** -0.5  # [B, L, k, H]
    weights = torch.softmax(scores, dim=2, dtype=torch.float32).to(values.dtype)
    return (weights[..., None] * values).sum(2)
