"""Byte Latent Transformer (Pagnoni et al., 2024) for transformers: `BLTModel` and `BLTForCausalLM`.

One forward handles a chunk of new bytes, continuing a `BLTCache` when given one, so training (a whole sequence,
no cache), prefill, chunked prefill and one-byte decoding steps are the same code:

1. patching: every byte learns whether it starts a patch, and whether the byte after it does (`patching.py`);
2. byte states: byte + hash n-gram embeddings through the local encoder (windowed attention);
3. patches closed in this chunk (a patch closes when the byte after it starts a new one) are pooled into patch
   vectors and run through the global transformer, continuing its per-row patch cache;
4. every byte reads the global state of the last patch closed at or before its target's position and the local
   decoder predicts the next byte.

Rows may be padded on the left (or on the right, without continuing the cache); each row gives exactly the logits
it gives alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from .cache import BLTCache, PatchingState
from .configuration_blt_hf import BOE_ID, BLTConfig
from .global_transformer import BLTGlobalTransformer
from .hashing import BLTHashNgramEmbedding
from .local_decoder import BLTLocalDecoder
from .local_encoder import BLTLocalEncoder
from .masks import LocalAttentionPlan, PatchAttentionPlan
from .patcher import BLTPatcher
from .patching import (
    PatchingRule,
    compute_patch_starts,
    documents_from_positions,
    patch_lengths_from_starts,
    row_start_flags,
    starts_from_patch_lengths,
)
from .pretrained import BLTPreTrainedModel, check_labels


@dataclass
class BLTModelOutput(ModelOutput):
    """last_hidden_state [B, n, d_dec]: decoder states after the final norm.

    patch_lengths [B, P]: the patches of this call's bytes (official convention, summing to bytes + 1), when
    `output_patch_lengths=True` on a fresh sequence. hidden_states: embeddings and every local-encoder and
    local-decoder layer output; global_hidden_states: every global layer output for the patches closed here.
    """

    last_hidden_state: torch.Tensor | None = None
    past_key_values: BLTCache | None = None
    patch_lengths: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    global_hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class BLTCausalLMOutput(CausalLMOutputWithPast):
    patch_lengths: torch.Tensor | None = None
    global_hidden_states: tuple[torch.Tensor, ...] | None = None


def _compact(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of each row to the front: values [B, L, ...], keep [B, L] -> ([B, K, ...], valid)."""
    counts = keep.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    slot = torch.where(keep, keep.long().cumsum(1) - 1, width)
    index = slot.view(*slot.shape, *([1] * (values.dim() - 2))).expand_as(values)
    out = values.new_zeros(values.shape[0], width + 1, *values.shape[2:]).scatter(1, index, values)
    valid = torch.arange(width, device=keep.device)[None] < counts[:, None]
    return out[:, :width], valid


class BLTModel(BLTPreTrainedModel):
    def __init__(self, config: BLTConfig):
        super().__init__(config)
        self.local_encoder = BLTLocalEncoder(config.encoder_config, config.vocab_size, config.cross_attn_k)
        self.global_transformer = BLTGlobalTransformer(
            config.global_config, config.global_input_size, config.needs_global_projection
        )
        self.local_decoder = BLTLocalDecoder(
            config.decoder_config, config.global_config.hidden_size, config.cross_attn_k
        )
        self.encoder_hash_tok_embedding = BLTHashNgramEmbedding(
            config.encoder_hash_byte_group_size,
            config.encoder_hash_byte_group_nb_functions,
            config.encoder_hash_byte_group_vocab,
            config.encoder_config.hidden_size,
        )
        self.patcher = None
        if config.has_patcher:
            self.patcher = BLTPatcher(config.patcher_config)
            self.patcher.requires_grad_(False)  # the entropy model is trained separately
        self.post_init()

    def get_input_embeddings(self):
        return self.local_encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.local_encoder.embed_tokens = value

    @property
    def patching_rule(self) -> PatchingRule:
        return PatchingRule.from_config(self.config)

    # ---------------------------------------------------------------- input checks
    def _check_input_ids(self, input_ids):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a [batch, length] tensor of byte ids")
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids has shape {list(input_ids.shape)}: give at least one row of at least one byte id "
                "(a sequence starts with BOS = 1)"
            )
        lowest, highest = torch.aminmax(input_ids) if input_ids.numel() else (0, 0)
        if lowest < 0 or highest >= self.config.vocab_size:
            bad = input_ids[(input_ids < 0) | (input_ids >= self.config.vocab_size)]
            raise ValueError(
                f"input_ids must be in 0..{self.config.vocab_size - 1} (byte b has id b + 4; 0-3 are special ids), "
                f"got {bad[:5].tolist()}"
            )

    def _new_byte_mask(self, attention_mask, cache, batch, length, device) -> torch.Tensor:
        if attention_mask is None:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch:
            raise ValueError(f"attention_mask must be [batch, length], got shape {tuple(attention_mask.shape)}")
        seen = cache.seen_tokens if cache is not None else 0
        if attention_mask.shape[1] not in (length, seen + length):
            raise ValueError(
                f"attention_mask has {attention_mask.shape[1]} columns; expected {length} (this call's bytes) or "
                f"{seen + length} (cached + new bytes)"
            )
        mask = attention_mask[:, -length:]
        if length == 1:  # a decoding step: no host sync
            return mask.to(device).bool()
        if mask.is_complex() or bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real byte)")
        valid = mask.to(device).bool()
        started = valid.long().cummax(1).values.bool()
        if (started & ~valid & valid.flip(1).long().cummax(1).values.flip(1).bool()).any():
            raise ValueError("attention_mask has padding between real bytes; pad only on the left or on the right")
        return valid

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        patch_lengths: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: BLTCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_patch_lengths: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BLTModelOutput:
        r"""
        input_ids [B, n]: byte ids (byte + 4; BOS = 1 first in each sequence).
        patch_lengths [B, P]: patches of each row's real bytes (see `patching.py`); computed by the model's own
            patching rule when not given. Only for a fresh sequence (no cached bytes).
        attention_mask [B, n] or [B, cached + n]: 0 for padding (left, or right without continuing the cache).
        position_ids [B, n]: for rows packing several documents, each byte's position in its document (0 at each
            document's BOS). Documents then never see each other: not in the entropy model, the hash n-grams, the
            local attention or the global transformer, and no patch spans two of them. Not with a cache.
        past_key_values: a `BLTCache` to continue; returned updated when `use_cache`.
        """
        if inputs_embeds is not None:
            raise ValueError("BLT needs input_ids: its hash n-gram embeddings and patching read the byte ids")
        self._check_input_ids(input_ids)
        config = self.config
        batch, length = input_ids.shape
        device = input_ids.device
        if position_ids is not None and (past_key_values is not None or use_cache):
            raise ValueError("position_ids (packed documents) are for forwards without a cache (use_cache=False)")
        if use_cache is None:
            use_cache = config.use_cache and not self.training and position_ids is None
        cache = past_key_values
        if cache is not None and not isinstance(cache, BLTCache):
            raise ValueError(f"past_key_values must be a BLTCache, got {type(cache).__name__}")
        if cache is not None and not cache.continuable:
            raise ValueError(
                "this BLTCache was built from right-padded rows and cannot be continued; pad on the left to generate"
            )
        if cache is None and use_cache:
            cache = BLTCache(config, batch, device)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states

        valid = self._new_byte_mask(attention_mask, cache, batch, length, device)
        bytes_before = cache.num_bytes if cache is not None else torch.zeros(batch, dtype=torch.long, device=device)
        patches_before = cache.num_patches if cache is not None else torch.zeros_like(bytes_before)
        positions = (bytes_before[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
        num_bytes = bytes_before + valid.sum(1)
        columns = length + (cache.seen_tokens if cache is not None else 0)  # >= num_bytes: checked on the host first
        if columns > config.max_position_embeddings and int(num_bytes.max()) > config.max_position_embeddings:
            raise ValueError(
                f"sequence of {int(num_bytes.max())} bytes is longer than max_position_embeddings="
                f"{config.max_position_embeddings}"
            )
        ids = torch.where(valid, input_ids, BOE_ID)  # padding never enters hashes, patching or attention
        if cache is not None and length > 1 and bool((valid[:, :-1] & ~valid[:, 1:]).any()):
            cache.continuable = False
        documents = document_positions = None
        if position_ids is not None:
            document_positions = position_ids.to(device).long()
            documents = documents_from_positions(document_positions, valid)

        # 1. patch starts
        starts, next_starts = self._patch_starts(
            ids, positions, valid, patch_lengths, cache, batch, device, documents, document_positions
        )
        closes = next_starts & valid
        new_patches = closes.sum(1)  # patches closed in this chunk, per row
        num_new = int(new_patches.max()) if batch else 0
        if length == 1:  # a decoding step: its byte belongs to the patch open when the step began
            local_patch, decoder_patch = torch.zeros_like(ids), closes.long()
        else:
            first_byte = valid & ~torch.cat((torch.zeros_like(valid[:, :1]), valid[:, :-1]), dim=1)
            local_patch = (starts & ~first_byte).long().cumsum(1)  # 0 = the patch open when this chunk began
            decoder_patch = torch.where(valid, local_patch + closes.long(), 0)  # into [current patch, new ones...]

        # 2. byte states
        history = cache.byte_history if cache is not None else None
        embeddings = self.local_encoder.embed_tokens(ids) + self.encoder_hash_tok_embedding(ids, history, documents)
        encoder_plan = LocalAttentionPlan(
            config.encoder_config.sliding_window, valid, documents, cache.encoder if cache is not None else None
        )
        byte_states, cross_states, encoder_hidden = self.local_encoder.encode_bytes(
            embeddings, positions, encoder_plan, output_hidden_states
        )

        # 3. patches closed in this chunk -> global transformer
        open_states, open_valid = (
            (cache.open_patch_states, cache.open_patch_valid)
            if cache is not None and cache.open_patch_states is not None
            else (None, None)
        )
        global_hidden, new_patch_kv = None, None
        if num_new > 0:
            chunk_patch = torch.where(valid & (local_patch < new_patches[:, None]), local_patch, num_new)
            byte_patch, states = chunk_patch, cross_states
            if open_states is not None:
                open_patch = torch.where(open_valid & (new_patches[:, None] > 0), 0, num_new)
                byte_patch = torch.cat((open_patch, chunk_patch), dim=1)
                states = [torch.cat((o, s), dim=1) for o, s in zip(open_states, cross_states, strict=True)]
            patch_vectors = self.local_encoder.encode_patches(states, byte_patch, num_new)
            patch_documents = None if documents is None else _compact(documents, closes)[0]
            global_plan = PatchAttentionPlan(
                num_new, new_patches, cache.global_ if cache is not None else None, patch_documents
            )
            patch_states, global_hidden = self.global_transformer(patch_vectors, global_plan, output_hidden_states)
            new_patch_kv = self.local_decoder.patch_keys_values(patch_states)

        # 4. bytes read patch states and predict the next byte
        patch_kv = self._decoder_patch_table(cache, new_patch_kv, batch, device, embeddings.dtype)
        segments = documents
        if config.decoder_config.patch_local_attention:
            segments = patches_before[:, None] + decoder_patch - 1  # global index of the patch each byte reads
        decoder_plan = LocalAttentionPlan(
            config.decoder_config.sliding_window, valid, segments, cache.decoder if cache is not None else None
        )
        slot_readouts = None
        if length == 1 and cache is not None:  # a decoding step reads one patch per row: the next current patch
            if num_new > 0:
                patch_kv, decoder_patch = self._select_patches(patch_kv, decoder_patch), torch.zeros_like(ids)
            if not torch.is_grad_enabled() and not torch.is_autocast_enabled(device.type):
                slot_readouts = cache.current_patch_readouts if num_new == 0 else None
                if slot_readouts is None:
                    slot_readouts = self.local_decoder.slot_readouts(patch_kv)
        hidden, decoder_hidden = self.local_decoder(
            byte_states, positions, decoder_plan, patch_kv, decoder_patch, output_hidden_states, slot_readouts
        )

        if cache is not None:
            self._update_cache(
                cache, ids, valid, num_bytes, length, local_patch, new_patches, num_new, cross_states, patch_kv
            )
            if slot_readouts is not None:  # read from the patch that is now the current one
                cache.current_patch_readouts = slot_readouts
        lengths_out = None
        if output_patch_lengths and int(bytes_before.max() if batch else 0) == 0:
            lengths_out = patch_lengths_from_starts(row_start_flags(starts, next_starts, positions, valid), num_bytes)
        all_hidden = tuple(encoder_hidden) + tuple(decoder_hidden) if output_hidden_states else None
        return BLTModelOutput(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache else None,
            patch_lengths=lengths_out,
            hidden_states=all_hidden,
            global_hidden_states=tuple(global_hidden) if global_hidden is not None else None,
        )

    def _patch_starts(self, ids, positions, valid, patch_lengths, cache, batch, device, documents=None,
                      document_positions=None):
        """starts [B, n]: byte starts a patch; next_starts [B, n]: the position after the byte starts one."""
        rule = self.patching_rule
        run_rule = patch_lengths is None or cache is not None  # a cache continues with the rule afterwards
        state = cache.patching if cache is not None else PatchingState.initial(batch, device)
        if run_rule:
            starts, next_starts, new_state, _ = compute_patch_starts(
                rule, ids, positions, valid, state, self.patcher, cache.patcher if cache is not None else None,
                documents, document_positions,
            )
            if cache is not None:
                cache.patching = new_state
        if patch_lengths is not None:
            if cache is not None and cache.num_bytes.any():
                raise ValueError("patch_lengths can only be given for a fresh sequence, not to continue a cache")
            num_bytes = valid.sum(1)
            row_starts = starts_from_patch_lengths(patch_lengths, num_bytes)
            local = positions.clamp(max=row_starts.shape[1] - 2)
            starts = row_starts.gather(1, local) & valid
            next_starts = row_starts.gather(1, local + 1) & valid
            if cache is not None:
                last = num_bytes.clamp(max=row_starts.shape[1] - 1)
                cache.patching.pending_start = row_starts.gather(1, last[:, None]).squeeze(1)
            if document_positions is not None:
                opening = valid & (document_positions <= 1)
                if (opening & ~starts).any():
                    raise ValueError(
                        "patch_lengths let a patch span two packed documents: each document's BOS must be a patch "
                        "of its own and its next byte must start a patch"
                    )
        return starts, next_starts

    def _decoder_patch_table(self, cache, new_patch_kv, batch, device, dtype):
        """Per decoder cross layer: keys/values [B, 1 + m, k, H, D] of [current patch, patches closed now]."""
        decoder = self.local_decoder
        if cache is not None and cache.current_patch_kv is not None:
            current = cache.current_patch_kv
        else:
            layer = decoder.cross_attn_layers[0]
            shape = (batch, 1, decoder.cross_attn_k, layer.num_heads, layer.head_dim)
            zeros = torch.zeros(shape, device=device, dtype=dtype)
            current = [(zeros, zeros)] * len(decoder.cross_attn_layers)
        if new_patch_kv is None:
            return current
        return [
            (torch.cat((ck, nk), 1), torch.cat((cv, nv), 1))
            for (ck, cv), (nk, nv) in zip(current, new_patch_kv, strict=True)
        ]

    @staticmethod
    def _select_patches(patch_kv, patch_index):
        """Per decoder cross layer, keys/values [B, P, ...] -> [B, 1, ...] at patch_index [B, 1]."""
        index = patch_index.view(-1, 1, 1, 1, 1)
        return [
            (k.gather(1, index.expand(-1, 1, *k.shape[2:])), v.gather(1, index.expand(-1, 1, *v.shape[2:])))
            for k, v in patch_kv
        ]

    def _update_cache(
        self, cache, ids, valid, num_bytes, length, local_patch, new_patches, num_new, cross_states, patch_kv
    ):
        cache.seen_tokens += length
        cache.num_bytes = num_bytes
        history = torch.cat((cache.byte_history, ids), dim=1)
        cache.byte_history = history[:, history.shape[1] - cache.byte_history.shape[1] :]
        if num_new == 0:  # no row closed a patch (most decoding steps): the open patch just grows
            if cache.open_patch_states is None:
                cache.open_patch_states, cache.open_patch_valid = list(cross_states), valid
            else:
                cache.open_patch_states = [
                    torch.cat((o, s), dim=1) for o, s in zip(cache.open_patch_states, cross_states, strict=True)
                ]
                cache.open_patch_valid = torch.cat((cache.open_patch_valid, valid), dim=1)
            if cache.current_patch_kv is None:
                cache.current_patch_kv = patch_kv
            return
        # the still-open patch: earlier open bytes if nothing closed, plus this chunk's bytes after the last close
        keep_chunk = valid & (local_patch == new_patches[:, None])
        if cache.open_patch_states is not None:
            keep = torch.cat((cache.open_patch_valid & (new_patches[:, None] == 0), keep_chunk), dim=1)
            states = [torch.cat((o, s), dim=1) for o, s in zip(cache.open_patch_states, cross_states, strict=True)]
        else:
            keep, states = keep_chunk, cross_states
        compacted = [_compact(s, keep) for s in states]
        cache.open_patch_states = [c[0] for c in compacted]
        cache.open_patch_valid = compacted[0][1]
        # the decoder's current patch: the last one closed (unchanged where nothing closed); one-byte steps have
        # selected it already
        cache.current_patch_kv = patch_kv if length == 1 else self._select_patches(patch_kv, new_patches)
        cache.current_patch_readouts = None


class BLTForCausalLM(BLTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.local_encoder.embed_tokens.weight"}

    def __init__(self, config: BLTConfig):
        super().__init__(config)
        self.model = BLTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.decoder_config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.local_encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.model.local_encoder.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a DynamicCache: BLT carries its own BLTCache

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        patch_lengths: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: BLTCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        output_patch_lengths: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BLTCausalLMOutput:
        r"""Next-byte logits [B, n, vocab] (fp32); with `labels`, the causal-LM loss (labels shifted inside,
        -100 ignored, `num_items_in_batch` honoured). See `BLTModel.forward` for the other arguments."""
        outputs = self.model(
            input_ids=input_ids,
            patch_lengths=patch_lengths,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_patch_lengths=output_patch_lengths,
            inputs_embeds=inputs_embeds,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden).float()
        loss = None
        if labels is not None:
            check_labels(labels, input_ids, self.vocab_size)
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return BLTCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            patch_lengths=outputs.patch_lengths,
            global_hidden_states=outputs.global_hidden_states,
        )

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        """generate() refuses up front an empty prompt, and a prompt plus `max_new_tokens` longer than
        `max_position_embeddings` (rather than failing midway and losing the bytes generated so far)."""
        if input_ids_length == 0:
            raise ValueError("generate needs a prompt of at least one byte id (BOS = 1 to start from nothing)")
        limit = self.config.max_position_embeddings
        if generation_config.max_length > limit:
            new_tokens = generation_config.max_length - input_ids_length
            raise ValueError(
                f"a prompt of {input_ids_length} bytes plus max_new_tokens={new_tokens} is longer than "
                f"max_position_embeddings={limit}; set max_new_tokens <= {max(limit - input_ids_length, 0)}"
            )
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, *args):
        """generate(): an empty `BLTCache` (never a DynamicCache) unless the user passed one or use_cache=False."""
        mask = model_kwargs.get("attention_mask")
        if mask is not None and not bool(mask.bool().any(1).all()):
            empty = (~mask.bool().any(1)).nonzero().flatten().tolist()
            raise ValueError(f"prompt rows {empty[:5]} are all padding (attention_mask 0): nothing to continue")
        cache = model_kwargs.get("past_key_values")
        if cache is not None:
            if not isinstance(cache, BLTCache):
                raise ValueError(f"past_key_values must be a BLTCache, got {type(cache).__name__}")
            cache._is_user_defined = True
            return
        if generation_config.use_cache is False:
            return
        if generation_config.cache_implementation is not None:
            raise ValueError("BLT carries its own BLTCache; cache_implementation is not supported")
        expand = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        model_kwargs["past_key_values"] = BLTCache(self.config, batch_size * expand, self.device)

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, use_cache=True, next_sequence_length=None,
        **kwargs,
    ):
        """Feed only the bytes the cache has not seen yet (generate passes the whole sequence, or just a chunk)."""
        if next_sequence_length is not None:
            input_ids = input_ids[:, -next_sequence_length:] if next_sequence_length else input_ids
        elif past_key_values is not None and input_ids.shape[1] > past_key_values.get_seq_length():
            input_ids = input_ids[:, past_key_values.get_seq_length() :]
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "past_key_values": past_key_values,
            "use_cache": use_cache,
        }
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    def _reorder_cache(self, past_key_values, beam_idx):
        return past_key_values.reorder_cache(beam_idx)


__all__ = ["BLTModel", "BLTForCausalLM", "BLTModelOutput", "BLTCausalLMOutput"]
