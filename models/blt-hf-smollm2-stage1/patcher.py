"""`BLTPatcher`: the entropy model, a small byte-level causal LM with sliding-window attention.

Usable on its own (next-byte logits, entropies, loss / bits-per-byte) and inside `BLTModel`, where its next-byte
entropies decide where patches start. Inputs longer than `chunk_size` run chunk by chunk through a sliding-window
cache, which gives the same result as one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .cache import SlidingWindowCache
from .configuration_blt_hf import BLTPatcherConfig
from .decoding import fast_layer_step, fused_layers_eligible
from .layers import BLTRMSNorm, BLTRotaryEmbedding, BLTTransformerLayer, project
from .masks import LocalAttentionPlan
from .patching import chunks, documents_from_positions, entropy_from_logits
from .pretrained import BLTPreTrainedModel, check_labels


@dataclass
class BLTPatcherOutput(ModelOutput):
    """loss: mean next-byte cross-entropy (nats), plus the boundary loss when `boundary_labels` are given;
    logits [B, T, V] (fp32); entropies [B, T] in nats; boundary_logits [B, T] (with a boundary head): does the
    byte after each one start a patch; boundary_loss: their mean binary cross-entropy against `boundary_labels`."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    past_key_values: BLTPatcherCache | None = None
    boundary_logits: torch.Tensor | None = None
    boundary_loss: torch.Tensor | None = None


class BLTPatcherCache(SlidingWindowCache):
    """Sliding-window cache of a standalone patcher, with the count of real bytes seen per row."""

    def __init__(self, num_layers: int, window: int | None, fast_decoding: bool = True):
        super().__init__(num_layers, window, fast_decoding)
        self.num_bytes: torch.Tensor | None = None

    def count_bytes(self, new_valid: torch.Tensor) -> None:
        """Add the real bytes of a call (new_valid [B, n]) to `num_bytes`."""
        counted = new_valid.sum(1)
        self.num_bytes = counted if self.num_bytes is None else self.num_bytes + counted


class BLTPatcher(BLTPreTrainedModel):
    config_class = BLTPatcherConfig
    base_model_prefix = "patcher"
    main_input_name = "input_ids"

    def __init__(self, config: BLTPatcherConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            BLTTransformerLayer.from_config(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = BLTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.boundary_head = nn.Linear(config.hidden_size, 1) if config.boundary_head else None
        self.rotary_emb = BLTRotaryEmbedding(config)
        self.loss_type = "ForCausalLM"  # labels are shifted inside: Trainer counts num_items_in_batch accordingly
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def new_cache(self, fast_decoding: bool = True) -> BLTPatcherCache:
        """An empty sliding-window cache for `forward`/`next_byte_logits` to continue."""
        return BLTPatcherCache(self.config.num_hidden_layers, self.config.sliding_window, fast_decoding)

    def byte_states(self, ids, positions, valid, cache: SlidingWindowCache | None = None, segments=None):
        """ids/positions/valid [B, n] (positions row-local) -> normed states [B, n, d]; `segments` [B, n] keeps
        packed documents apart."""
        plan = LocalAttentionPlan(self.config.sliding_window, valid, segments, cache=cache)
        hidden = self.embed_tokens(ids)
        rotations = self.rotary_emb(positions)
        fast = fused_layers_eligible(hidden, cache)
        for layer in self.layers:
            hidden = fast_layer_step(layer, hidden, rotations, plan) if fast else layer(hidden, rotations, plan)
        return self.norm(hidden)

    def next_byte_logits(self, ids, positions, valid, cache: SlidingWindowCache | None = None, segments=None):
        """Next-byte logits [B, n, V] (fp32) of `byte_states`."""
        return project(self.lm_head, self.byte_states(ids, positions, valid, cache, segments)).float()

    def boundary_logits(self, ids, positions, valid, cache: SlidingWindowCache | None = None, segments=None):
        """Logits [B, n] (fp32) that the byte after each one starts a patch (needs `boundary_head`)."""
        if self.boundary_head is None:
            raise ValueError("this patcher has no boundary head (patcher_config.boundary_head=False)")
        states = self.byte_states(ids, positions, valid, cache, segments)
        return self.boundary_head(states).squeeze(-1).float()

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: BLTPatcherCache | None = None,
        use_cache: bool | None = None,
        chunk_size: int | None = None,
        boundary_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> BLTPatcherOutput:
        """Next-byte logits and entropies; with `labels`, the causal-LM loss (shifted inside, -100 ignored,
        `num_items_in_batch` honoured).

        Left or right padding via `attention_mask`; positions restart at each row's first real byte. Rows packing
        several documents pass `position_ids` (0 at each document's BOS): documents never attend to each other.
        `chunk_size` runs long inputs in chunks through a cache (same result, bounded memory).
        boundary_labels [B, T] (with a boundary head): 1 where the byte after this one starts a patch, 0 where it
        does not, -100 to ignore; their binary cross-entropy is added to the loss.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids must be in 0..{self.config.vocab_size - 1}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        batch, length = input_ids.shape
        valid = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask[:, -length:].to(input_ids.device).bool()
        )
        documents = None
        if position_ids is not None:
            if past_key_values is not None or use_cache or chunk_size is not None:
                raise ValueError("position_ids (packed documents) cannot be combined with a cache or chunking")
            documents = documents_from_positions(position_ids.to(input_ids.device), valid)
        if use_cache and past_key_values is None:
            past_key_values = self.new_cache()
        cache = past_key_values
        if chunk_size is not None and cache is None and length > chunk_size:
            cache = self.new_cache()
        seen = cache.num_bytes if cache is not None and cache.num_bytes is not None else input_ids.new_zeros(batch)
        ids = torch.where(valid, input_ids, 0)
        states = [
            self.byte_states(ids[:, columns], positions, valid[:, columns], cache, documents)
            for columns, positions in chunks(valid, chunk_size, seen)
        ]
        if cache is not None and length:
            cache.count_bytes(valid)
        width = self.config.hidden_size
        states = torch.cat(states, dim=1) if states else self.embed_tokens.weight.new_zeros(batch, 0, width)
        logits = project(self.lm_head, states).float()
        boundary_logits = self.boundary_head(states).squeeze(-1).float() if self.boundary_head is not None else None
        loss = boundary_loss = None
        if labels is not None:
            check_labels(labels, input_ids, self.config.vocab_size)
            loss = self.loss_function(logits, labels.to(logits.device), self.config.vocab_size, **kwargs)
        if boundary_labels is not None:
            if boundary_logits is None:
                raise ValueError("boundary_labels need a boundary head (patcher_config.boundary_head=True)")
            if boundary_labels.shape != input_ids.shape:
                raise ValueError(f"boundary_labels must have the shape of input_ids {tuple(input_ids.shape)}")
            counted = boundary_labels != -100
            boundary_loss = nn.functional.binary_cross_entropy_with_logits(
                boundary_logits[counted], boundary_labels[counted].float()
            )
            loss = boundary_loss if loss is None else loss + boundary_loss
        return BLTPatcherOutput(
            loss=loss,
            logits=logits,
            entropies=entropy_from_logits(logits),
            past_key_values=past_key_values,
            boundary_logits=boundary_logits,
            boundary_loss=boundary_loss,
        )

    @torch.no_grad()
    def bits_per_byte(self, input_ids, attention_mask=None, chunk_size: int | None = None) -> float:
        """Mean next-byte cross-entropy over real bytes (BOS excluded as a target), in bits."""
        labels = input_ids.masked_fill(attention_mask == 0, -100) if attention_mask is not None else input_ids
        return self(input_ids, attention_mask, labels=labels, chunk_size=chunk_size).loss.item() / math.log(2)
