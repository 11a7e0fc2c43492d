"""FLOP accounting for BLT: what a byte costs, per stack, analytically and as realised on actual patches.

Conventions: forward FLOPs, 2 per multiply-accumulate; embedding and hash lookups cost nothing; training costs
3x forward (backward = 2x forward); softmax, norms and other elementwise work are not counted (as in the paper).
The entropy model is reported separately: the paper treats it as preprocessing and leaves it out of FLOP matching.

* `paper_flops_per_byte(config, bytes_per_patch, context_bytes)`: the paper's formula (Pagnoni et al., 2024,
  appendix): global transformer per patch / n_p, local encoder and decoder per byte with windowed contexts,
  cross-attention terms, a 256-way byte head.
* `flops_for_sequence(config, num_bytes, patch_lengths)`: exact matmul counts of blt_hf's computation for one
  sequence with the given patches (GQA, actual FFN widths, windows, causal contexts, the k patch slots; an open
  last patch is not run), split by stack. With `decoder_config.patch_local_attention` the decoder's attention
  contexts are counted as for the plain windowed decoder, an upper bound.
  `realised_flops(config, patch_lengths_batch)` sums it over a batch of
  real patches, e.g. those an evaluation or a generation produced
  (`model(..., output_patch_lengths=True).patch_lengths`).
* `llama_flops_per_token(global_config, context, vocab)`: a Llama with the same transformer layers run on every
  token (bytes for a byte-level Llama).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import accumulate

import torch


@dataclass
class FlopsBreakdown:
    """Forward FLOPs split by stack; `per_byte(n)` divides by n bytes."""

    entropy_model: float = 0.0
    local_encoder: float = 0.0
    encoder_cross_attention: float = 0.0
    global_transformer: float = 0.0
    decoder_cross_attention: float = 0.0
    local_decoder: float = 0.0
    byte_head: float = 0.0

    @property
    def total(self) -> float:
        """Everything but the entropy model (the paper's accounting)."""
        return sum(v for k, v in asdict(self).items() if k != "entropy_model")

    def __add__(self, other: FlopsBreakdown) -> FlopsBreakdown:
        return FlopsBreakdown(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def scaled(self, factor: float) -> FlopsBreakdown:
        return FlopsBreakdown(**{k: v * factor for k, v in asdict(self).items()})

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "total_with_entropy_model": self.total + self.entropy_model}


# ------------------------------------------------------------------ the paper's formula
def _paper_attention(layers, head_dim, heads, context):
    return 4 * layers * head_dim * heads * (context + 1) / 2


def _paper_qkvo(layers, hidden, ratio):
    return (ratio + 1) * 2 * 2 * layers * hidden**2


def _paper_ffn(layers, hidden, multiplier=4):
    return 2 * layers * 2 * hidden * multiplier * hidden


def _paper_transformer(hidden, layers, heads, context, vocab):
    head_dim = hidden // heads
    return (_paper_attention(layers, head_dim, heads, context) + _paper_qkvo(layers, hidden, 1)
            + _paper_ffn(layers, hidden) + 2 * hidden * vocab)


def _paper_cross_attention(hidden, layers, heads, context, ratio):
    head_dim = hidden // heads
    return _paper_attention(layers, head_dim, heads, context) + _paper_qkvo(layers, head_dim * heads, ratio)


def paper_flops_per_byte(config, bytes_per_patch: float, context_bytes: int) -> FlopsBreakdown:
    """The paper's per-byte inference FLOPs for a BLT config at a mean patch size n_p and a context of n_ctx bytes."""
    n_p, k = bytes_per_patch, config.cross_attn_k
    enc, glob, dec, pat = config.encoder_config, config.global_config, config.decoder_config, config.patcher_config
    window_enc = min(enc.sliding_window or context_bytes, context_bytes)
    window_dec = min(dec.sliding_window or context_bytes, context_bytes)
    enc_cross_layers = enc.num_hidden_layers if enc.cross_attn_all_layers else 1
    dec_cross_layers = dec.num_hidden_layers if dec.cross_attn_all_layers else 1
    window_pat = min(pat.sliding_window or context_bytes, context_bytes)
    return FlopsBreakdown(
        entropy_model=_paper_transformer(pat.hidden_size, pat.num_hidden_layers, pat.num_attention_heads, window_pat,
                                         256),
        global_transformer=_paper_transformer(glob.hidden_size, glob.num_hidden_layers, glob.num_attention_heads,
                                              context_bytes / n_p, 0) / n_p,
        local_encoder=_paper_transformer(enc.hidden_size, enc.num_hidden_layers, enc.num_attention_heads,
                                         window_enc, 0),
        local_decoder=_paper_transformer(dec.hidden_size, dec.num_hidden_layers, dec.num_attention_heads,
                                         window_dec, 0),
        byte_head=2 * dec.hidden_size * 256,
        encoder_cross_attention=_paper_cross_attention(enc.hidden_size, enc_cross_layers, enc.cross_attn_num_heads,
                                                       n_p, n_p / k) * k / n_p,
        decoder_cross_attention=_paper_cross_attention(dec.hidden_size, dec_cross_layers, dec.cross_attn_num_heads,
                                                       k, k / n_p),
    )


# ------------------------------------------------------------------ exact counts of blt_hf's computation
def _layer_flops(hidden, heads, kv_heads, intermediate, total_context):
    """A pre-norm transformer layer over tokens whose visible contexts sum to `total_context` (per token: q, k, v, o
    projections and the SwiGLU, plus QK^T and AV over its context)."""
    head_dim = hidden // heads
    projections = 2 * hidden * (2 * hidden + 2 * kv_heads * head_dim) + 2 * 3 * hidden * intermediate
    return projections, 2 * 2 * heads * head_dim * total_context


def _contexts(count: int, window: int | None) -> int:
    """Sum over positions 0..count-1 of the causal context size (capped by the window)."""
    if window is None or window >= count:
        return count * (count + 1) // 2
    return window * (window + 1) // 2 + (count - window) * window


def flops_for_sequence(config, num_bytes: int, patch_lengths) -> FlopsBreakdown:
    """Exact forward FLOPs of blt_hf on one sequence of `num_bytes` bytes with these patches (official convention:
    lengths sum to num_bytes + 1, the last patch holding the virtual next position).

    Only patches that close inside the sequence (the position after their last byte starts a new patch) are pooled,
    run through the global transformer and read by the decoder: a last patch holding real bytes and the virtual
    position is still open (its next byte is unknown), and no byte needs it yet, so it costs nothing there."""
    lengths = [int(n) for n in patch_lengths if int(n) > 0]
    if sum(lengths) not in (num_bytes, num_bytes + 1):
        raise ValueError(f"patch lengths sum to {sum(lengths)}, expected {num_bytes} or {num_bytes + 1}")
    patches = sum(end <= num_bytes for end in accumulate(lengths))  # closed patches
    k = config.cross_attn_k
    enc, glob, dec, pat = config.encoder_config, config.global_config, config.decoder_config, config.patcher_config
    out = FlopsBreakdown()

    def stack(cfg, count, window):
        per_token, attention_unit = _layer_flops(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                                 cfg.intermediate_size, 1)
        context = _contexts(count, window)
        return cfg.num_hidden_layers * (per_token * count + attention_unit * context)

    if config.has_patcher and config.patching_mode in ("entropy", "boundary"):
        out.entropy_model = stack(pat, num_bytes, pat.sliding_window) + 2 * pat.hidden_size * pat.vocab_size * num_bytes
    out.local_encoder = stack(enc, num_bytes, enc.sliding_window)
    out.local_decoder = stack(dec, num_bytes, dec.sliding_window)
    out.byte_head = 2 * dec.hidden_size * config.vocab_size * num_bytes
    out.global_transformer = stack(glob, patches, None)
    if config.needs_global_projection:
        out.global_transformer += 2 * config.global_input_size * glob.hidden_size * patches

    d_enc, d_dec = enc.hidden_size, dec.hidden_size
    enc_cross = enc.num_hidden_layers if enc.cross_attn_all_layers else 1
    enc_pools = enc_cross if enc.cross_attn_repool_each_layer else 1
    heads, kv = enc.cross_attn_num_heads, enc.cross_attn_num_key_value_heads
    head_dim = d_enc // heads
    per_layer = (
        2 * 2 * k * d_enc * d_enc * patches  # q and o projections of the k slots
        + 2 * 2 * d_enc * kv * head_dim * num_bytes  # k and v projections of the patch bytes
        + 2 * 2 * heads * head_dim * k * num_bytes  # each slot scores and sums its patch's bytes
    )
    out.encoder_cross_attention = enc_cross * per_layer + enc_pools * 2 * d_enc * k * d_enc * patches

    dec_cross = dec.num_hidden_layers if dec.cross_attn_all_layers else 1
    heads, kv = dec.cross_attn_num_heads, dec.cross_attn_num_key_value_heads
    head_dim = d_dec // heads
    per_layer = (
        2 * 2 * d_dec * d_dec * num_bytes  # q and o projections of the bytes
        + 2 * 2 * d_dec * kv * head_dim * k * patches  # k and v projections of each patch's k slots
        + 2 * 2 * heads * head_dim * k * num_bytes  # each byte scores and sums k slots
    )
    out.decoder_cross_attention = dec_cross * per_layer + 2 * glob.hidden_size * k * d_dec * patches
    return out


def real_patch_count(num_bytes: int, patch_lengths) -> int:
    """Patches holding at least one real byte (not just the virtual next position)."""
    count, position = 0, 0
    for n in (int(n) for n in patch_lengths if int(n) > 0):
        count += position < num_bytes
        position += n
    return count


def realised_flops(config, patch_lengths: torch.Tensor, num_bytes: torch.Tensor | None = None) -> dict:
    """Forward FLOPs of a batch of sequences with the patches they actually got: totals, per byte, per stack.

    patch_lengths [B, P] in the official convention (as `BLTModel` outputs them); num_bytes [B] defaults to
    each row's sum - 1."""
    lengths = torch.as_tensor(patch_lengths)
    counts = lengths.sum(1) - 1 if num_bytes is None else torch.as_tensor(num_bytes)
    total, patches = FlopsBreakdown(), 0
    for row, count in zip(lengths.tolist(), counts.tolist(), strict=True):
        total = total + flops_for_sequence(config, int(count), row)
        patches += real_patch_count(int(count), row)
    all_bytes = int(counts.sum())
    return {
        "bytes": all_bytes,
        "patches": patches,
        "bytes_per_patch": all_bytes / max(patches, 1),
        "flops": total.as_dict(),
        "flops_per_byte": total.scaled(1 / max(all_bytes, 1)).as_dict(),
    }


@torch.no_grad()
def realised_flops_of_sequences(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
    """Realised FLOPs of sequences (a batch of generations, say) under the patches the model's own rule gives them:
    the same patches incremental decoding produced, since boundaries of a prefix never move."""
    from ..patching import PatchingRule, compute_patch_lengths

    base = getattr(model, "model", model)
    lengths, _ = compute_patch_lengths(input_ids, attention_mask, PatchingRule.from_config(base.config), base.patcher)
    counts = None if attention_mask is None else attention_mask.sum(1)
    return realised_flops(base.config, lengths, counts)


def uniform_patch_lengths(num_bytes: int, patch_size: int) -> list[int]:
    """BOS alone, then patches of `patch_size` (official convention: sums to num_bytes + 1)."""
    lengths, remaining = [1], num_bytes  # num_bytes - 1 real bytes after BOS, plus the virtual position
    while remaining > 0:
        lengths.append(min(patch_size, remaining))
        remaining -= lengths[-1]
    return lengths


def llama_flops_per_token(global_config, context: int, vocab: int) -> float:
    """A Llama with these transformer layers, run on every token of a `context`-token sequence, per token."""
    per_token, attention_unit = _layer_flops(global_config.hidden_size, global_config.num_attention_heads,
                                             global_config.num_key_value_heads, global_config.intermediate_size, 1)
    layers = global_config.num_hidden_layers
    attention = attention_unit * _contexts(context, None) / context
    return layers * (per_token + attention) + 2 * global_config.hidden_size * vocab


def training_flops_per_byte(config, patch_size: int, context_bytes: int) -> float:
    """3 x forward FLOPs per byte (the paper's accounting, no entropy model), exact counts, uniform patches."""
    forward = flops_for_sequence(config, context_bytes, uniform_patch_lengths(context_bytes, patch_size))
    return 3 * forward.total / context_bytes
