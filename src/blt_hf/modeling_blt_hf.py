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

import copy
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput, can_return_tuple

from .cache import BLTCache, SourceLookahead, select_patch
from .configuration_blt_hf import BOE_ID, BYTE_OFFSET, BLTConfig
from .decoding import fast_paths_eligible, slot_readouts
from .global_transformer import BLTGlobalTransformer
from .hashing import BLTHashNgramEmbedding, BLTVocabEmbedding
from .layers import project
from .local_decoder import BLTLocalDecoder
from .local_encoder import BLTLocalEncoder
from .masks import LocalAttentionPlan, PatchAttentionPlan
from .patcher import BLTPatcher
from .patching import (
    ChunkPatches,
    PatchingRule,
    PatchingState,
    compute_patch_starts,
    documents_from_positions,
    patch_begins,
    patch_lengths_from_starts,
    row_positions,
    row_start_flags,
    starts_from_patch_lengths,
)
from .pretrained import BLTPreTrainedModel, check_labels
from .speculative import check_speculative_bytes, self_speculative_decoding
from .stopping import StopBytesCriteria
from .token_head import BLTTokenHead


def refuse_attention_weights(kwargs) -> None:
    """BLT returns no attention weights (SDPA and patch-gather kernels compute none): say so rather than ignore it."""
    if kwargs.get("output_attentions"):
        raise ValueError("BLT does not return attention weights: output_attentions is not supported (use "
                         "output_hidden_states for the byte and patch states)")


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
    token_head_inputs: tuple[torch.Tensor, ...] | None = None


@dataclass
class BLTCausalLMOutput(CausalLMOutputWithPast):
    patch_lengths: torch.Tensor | None = None
    global_hidden_states: tuple[torch.Tensor, ...] | None = None


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
        # the hash embedding is the encoder's input but the model's parameter: transformers' Blt names it so
        self.encoder_hash_tok_embedding = BLTHashNgramEmbedding(
            config.encoder_hash_byte_group_size,
            config.encoder_hash_byte_group_nb_functions,
            config.encoder_hash_byte_group_vocab,
            config.encoder_config.hidden_size,
        )
        self.encoder_vocab_embedding = None  # a byte-ified model's source vocabulary rows (`blt-hf byteify`)
        if config.vocab_embedding_rows:
            self.encoder_vocab_embedding = BLTVocabEmbedding(
                config.vocab_embedding_rows, config.global_config.hidden_size, config.vocab_embedding_max_bytes,
                config.vocab_embedding_special_rows,
            )
        self.token_head = None  # a byte-ified model's source next-token distribution, spelled out in bytes
        if config.token_head:
            self.token_head = BLTTokenHead(config.global_config.hidden_size, config.vocab_embedding_rows,
                                           config.vocab_embedding_max_bytes, config.global_config.rms_norm_eps,
                                           config.token_head_fallback, config.vocab_size)
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
    def _check_input_ids(self, input_ids) -> torch.Tensor:
        """Checked byte ids (other integer dtypes than int64/int32 as int64)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a [batch, length] tensor of byte ids")
        if input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dtype not in (torch.long, torch.int32):  # uint8 bytes, int16: compared and embedded as int64
            input_ids = input_ids.long()
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
        return input_ids

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
    @can_return_tuple
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
        patch_states: torch.Tensor | None = None,
        source_patch_ends: torch.Tensor | None = None,
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
        patch_states [B, >= P, d_global]: the global transformer's outputs for the patches, given instead of running
            it (stage-1 byte-ification with a frozen global transformer, `training.byteify`). Without a cache.
        source_patch_ends [B] bool: in a one-byte source-patching step, whether each row's patch ends at this byte,
            instead of the token head's decision (`BLTForCausalLM`'s look-ahead, `config.patching_lookahead`).
        """
        if inputs_embeds is not None:
            raise ValueError("BLT needs input_ids: its hash n-gram embeddings and patching read the byte ids")
        refuse_attention_weights(kwargs)
        input_ids = self._check_input_ids(input_ids)
        config = self.config
        batch, length = input_ids.shape
        device = input_ids.device
        if patch_states is not None and use_cache is None:
            use_cache = False  # given patch states describe a whole sequence: nothing to continue
        cache, use_cache = self._cache_to_continue(past_key_values, use_cache, position_ids, batch, device)
        if cache is not None and cache.record_past:
            cache.open_record()
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states

        valid = self._new_byte_mask(attention_mask, cache, batch, length, device)
        bytes_before = cache.num_bytes if cache is not None else torch.zeros(batch, dtype=torch.long, device=device)
        positions = row_positions(valid, bytes_before)
        num_bytes = bytes_before + valid.sum(1)
        columns = length + (cache.seen_tokens if cache is not None else 0)  # >= num_bytes: checked on the host first
        if columns > config.max_position_embeddings and int(num_bytes.max()) > config.max_position_embeddings:
            raise ValueError(
                f"sequence of {int(num_bytes.max())} bytes is longer than max_position_embeddings="
                f"{config.max_position_embeddings}"
            )
        ids = torch.where(valid, input_ids, BOE_ID)  # padding never enters hashes, patching or attention
        documents = document_positions = None
        if position_ids is not None:
            document_positions = position_ids.to(device).long()
            documents = documents_from_positions(document_positions, valid)

        # 1. patching: where the chunk's patches start and which close
        patches = self._chunk_patches(ids, positions, valid, cache, patch_lengths, documents=documents,
                                      document_positions=document_positions, source_ends=source_patch_ends)

        # 2. byte states
        history = cache.byte_history if cache is not None else None
        hash_reach = max(config.encoder_hash_byte_group_size) - 1
        hash_history = None if history is None else history[:, history.shape[1] - hash_reach :]
        embeddings = self.local_encoder.embed_tokens(ids) + self.encoder_hash_tok_embedding(
            ids, hash_history, documents
        )
        begins = None  # where each byte's patch began: bounds the vocabulary tokens looked up inside it
        if self.encoder_vocab_embedding is not None:
            begun = cache.open_patch_begin if cache is not None else torch.zeros_like(num_bytes)
            begins = patch_begins(patches.starts, positions, begun)
        encoder_plan = LocalAttentionPlan(
            config.encoder_config.sliding_window, valid, documents, cache.encoder if cache is not None else None
        )
        byte_states, cross_states, encoder_hidden = self.local_encoder.encode_bytes(
            embeddings, positions, encoder_plan, output_hidden_states
        )

        # 3. patches closed in this chunk -> global transformer (in a decoding step, only on the rows closing one)
        global_hidden, new_patch_kv = None, None
        closing_rows = None
        if patch_states is not None:
            if cache is not None or patch_states.shape[:1] != (batch,) or patch_states.shape[1] < patches.num_new:
                raise ValueError(
                    f"patch_states must be [batch, >= {patches.num_new} patches, d_global] for a forward without "
                    f"a cache, got {tuple(patch_states.shape)}"
                )
            if patches.num_new > 0:
                new_patch_kv = self.local_decoder.patch_keys_values(patch_states[:, : patches.num_new])
        elif patches.num_new > 0:
            closing_rows = None if output_hidden_states else self._closing_rows(patches, cache)
            states, open_valid = cross_states, None
            if cache is not None:
                states, open_valid = cache.with_open_patch(cross_states, closing_rows), cache.open_patch_valid
            byte_patch = patches.encoder_byte_patch(open_valid)
            if closing_rows is not None:
                byte_patch = byte_patch.index_select(0, closing_rows)
            patch_vectors = self.local_encoder.encode_patches(states, byte_patch, patches.num_new)
            if closing_rows is not None:  # one patch per row, each at its own position in the global cache
                global_plan = PatchAttentionPlan(1, torch.ones_like(closing_rows), cache.global_.rows(closing_rows))
            else:
                global_plan = PatchAttentionPlan(
                    patches.num_new, patches.new_patches, cache.global_ if cache is not None else None,
                    None if documents is None else patches.at_closed_patches(documents),
                )
            vocab_vectors = None
            if begins is not None:  # only when patches close (most decoding steps skip the lookup)
                vocab_rows = self.encoder_vocab_embedding.lookup(ids, history, positions - begins + 1)
                vocab_vectors = self.encoder_vocab_embedding.embed(patches.at_closed_patches(vocab_rows))
                if closing_rows is not None:
                    vocab_vectors = vocab_vectors.index_select(0, closing_rows)
            patch_states, global_hidden = self.global_transformer(
                patch_vectors, global_plan, output_hidden_states, vocab_vectors
            )
            new_patch_kv = self.local_decoder.patch_keys_values(patch_states)
        state_table = head_inputs = cumulative = None
        if config.token_head:
            state_table = self._patch_state_table(cache, patch_states, closing_rows, patches.num_new, batch)
            if length == 1 and cache is not None:
                cumulative = self._step_cumulative(cache, state_table, closing_rows)
            head_inputs = (state_table, cumulative, patches.decoder_patch,
                           *self._target_prefixes(ids, history, positions, begins, patches.closes))

        # 4. bytes read patch states and predict the next byte
        segments = patches.decoder_segments() if config.decoder_config.patch_local_attention else documents
        decoder_plan = LocalAttentionPlan(
            config.decoder_config.sliding_window, valid, segments, cache.decoder if cache is not None else None
        )
        patch_kv, byte_patch, readouts = self._patches_to_read(cache, new_patch_kv, patches, byte_states, closing_rows)
        hidden, decoder_hidden = self.local_decoder(
            byte_states, positions, decoder_plan, patch_kv, byte_patch, output_hidden_states, readouts
        )

        if cache is not None:
            cache.advance(ids, num_bytes, patches, cross_states, patch_kv, readouts, begins, state_table)
            if cumulative is not None:  # the current patch's token table: one vocabulary softmax per patch
                index = patches.new_patches.view(-1, 1, 1).expand(-1, 1, cumulative.shape[2])
                cache.current_patch_cumulative = cumulative.gather(1, index)
        lengths_out = None
        if output_patch_lengths and int(bytes_before.max() if batch else 0) == 0:
            flags = row_start_flags(patches.starts, patches.next_starts, positions, valid)
            lengths_out = patch_lengths_from_starts(flags, num_bytes)
        all_hidden = tuple(encoder_hidden) + tuple(decoder_hidden) if output_hidden_states else None
        return BLTModelOutput(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache else None,
            patch_lengths=lengths_out,
            hidden_states=all_hidden,
            global_hidden_states=tuple(global_hidden) if global_hidden is not None else None,
            token_head_inputs=head_inputs,
        )

    def _patch_state_table(self, cache, new_states, closing_rows, num_new, batch) -> torch.Tensor:
        """Global states [B, 1 + m, d] of [the current patch (zeros before any), the m patches closed now]: the
        table `patches.decoder_patch` indexes, as the decoder's patch keys/values (`BLTTokenHead` reads it)."""
        current = cache.current_patch_state if cache is not None else None
        if current is None:
            hidden = self.config.global_config.hidden_size
            dtype = new_states.dtype if new_states is not None else self.dtype
            current = torch.zeros(batch, 1, hidden, dtype=dtype, device=self.device)
        if new_states is None or num_new == 0:
            return current
        if closing_rows is not None:  # one new patch, for these rows only
            return torch.cat((current, current.index_copy(0, closing_rows, new_states[:, :1].to(current.dtype))), 1)
        return torch.cat((current, new_states[:, :num_new].to(current.dtype)), 1)

    def _step_cumulative(self, cache, state_table, closing_rows) -> torch.Tensor:
        """`BLTTokenHead.token_cumulative` of a decoding step's state table, the current patch's taken from the
        cache (only the rows that closed a patch compute theirs)."""
        weight = self.encoder_vocab_embedding.weight
        current = self._current_cumulative(cache)
        if current is None:
            return self.token_head.token_cumulative(state_table, weight)
        if state_table.shape[1] == 1:
            return current
        if closing_rows is None:
            return torch.cat((current, self.token_head.token_cumulative(state_table[:, 1:], weight)), 1)
        closed = self.token_head.token_cumulative(state_table[:, 1:].index_select(0, closing_rows), weight)
        return torch.cat((current, current.index_copy(0, closing_rows, closed)), 1)

    def _current_cumulative(self, cache) -> torch.Tensor | None:
        """The cache's current-patch token table, made from its global state when the cache has none yet."""
        if cache.current_patch_cumulative is None and cache.current_patch_state is not None:
            cache.current_patch_cumulative = self.token_head.token_cumulative(
                cache.current_patch_state, self.encoder_vocab_embedding.weight)
        return cache.current_patch_cumulative

    def _target_prefixes(self, ids, history, positions, begins, closes):
        """For each byte, the part of the next byte's patch already seen: bytes [B, n, max_bytes] (values 0-255,
        garbage past the length) and lengths [B, n] (0 where the next byte starts a patch)."""
        width = self.config.vocab_embedding_max_bytes
        reach = width - 1
        lengths = torch.where(closes, 0, positions - begins + 1).clamp(min=0)
        past = ids.new_zeros(ids.shape[0], reach) if history is None else history[:, history.shape[1] - reach :]
        window = torch.cat((past, ids), dim=1)
        index = (torch.arange(ids.shape[1], device=ids.device)[:, None] + torch.arange(width, device=ids.device)
                 + reach + 1)[None] - lengths[..., None].clamp(max=width)
        prefix = window.gather(1, index.clamp(0, window.shape[1] - 1).flatten(1)).view(*ids.shape, width)
        return prefix - BYTE_OFFSET, lengths

    def draft_step(self, input_ids: torch.LongTensor, cache: BLTCache) -> torch.Tensor:
        """A self-speculative draft step (the Fast BLT paper's BLT-S): one real byte per row [B, 1] through the
        local encoder and decoder only, reading the decoder's current patch as if no patch closed: no entropy
        model, no patching, no global transformer. Returns decoder states [B, 1, d].

        It writes the byte into the encoder and decoder window caches and advances the byte counts, nothing else:
        take a `cache.snapshot()` before drafting and `cache.restore` it before verifying."""
        batch, device = input_ids.shape[0], input_ids.device
        valid = torch.ones(batch, 1, dtype=torch.bool, device=device)
        positions = cache.num_bytes[:, None]
        hash_reach = max(self.config.encoder_hash_byte_group_size) - 1
        embeddings = self.local_encoder.embed_tokens(input_ids) + self.encoder_hash_tok_embedding(
            input_ids, cache.byte_history[:, cache.byte_history.shape[1] - hash_reach :]
        )
        encoder_plan = LocalAttentionPlan(self.config.encoder_config.sliding_window, valid, None, cache.encoder)
        byte_states, _, _ = self.local_encoder.encode_bytes(embeddings, positions, encoder_plan)
        segments = None
        if self.config.decoder_config.patch_local_attention:  # the byte stays in the current decoder patch
            segments = (cache.num_patches - 1)[:, None]
        decoder_plan = LocalAttentionPlan(self.config.decoder_config.sliding_window, valid, segments, cache.decoder)
        patch_kv = self.local_decoder.patch_table(cache.current_patch_kv, None, batch, device, byte_states.dtype)
        readouts = None
        if fast_paths_eligible(byte_states, cache):
            if cache.current_patch_readouts is None:
                cache.current_patch_readouts = slot_readouts(self.local_decoder.cross_attn_layers, patch_kv)
            readouts = cache.current_patch_readouts
        byte_patch = torch.zeros(batch, 1, dtype=torch.long, device=device)
        hidden, _ = self.local_decoder(byte_states, positions, decoder_plan, patch_kv, byte_patch, False, readouts)
        cache.seen_tokens += 1
        cache.num_bytes = cache.num_bytes + 1
        history = torch.cat((cache.byte_history, input_ids), dim=1)
        cache.byte_history = history[:, history.shape[1] - cache.byte_history.shape[1] :]
        return hidden

    def _cache_to_continue(self, past_key_values, use_cache, position_ids, batch, device):
        """(the `BLTCache` this call continues or starts, or None; whether to return it)."""
        if position_ids is not None and (past_key_values is not None or use_cache):
            raise ValueError("position_ids (packed documents) are for forwards without a cache (use_cache=False)")
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training and position_ids is None
        cache = past_key_values
        if cache is not None and not isinstance(cache, BLTCache):
            raise ValueError(f"past_key_values must be a BLTCache, got {type(cache).__name__}")
        if cache is not None and not cache.continuable:
            raise ValueError(
                "this BLTCache was built from right-padded rows and cannot be continued; pad on the left to generate"
            )
        if cache is not None and cache.num_bytes.shape[0] != batch:
            raise ValueError(
                f"past_key_values holds {cache.num_bytes.shape[0]} rows but input_ids has {batch}: a cache continues "
                "the rows it was built on, one per sequence (beam search and num_return_sequences > 1 expand the "
                "rows: start them without a cache, or index the cache's rows with reorder_cache)"
            )
        if cache is None and use_cache:
            cache = BLTCache(self.config, batch, device)
        return cache, use_cache

    def _chunk_patches(self, ids, positions, valid, cache, patch_lengths=None, *, documents=None,
                       document_positions=None, source_ends=None) -> ChunkPatches:
        """Where the chunk's patches start: the patching rule (continuing the cache's state), or `patch_lengths`."""
        batch, device = ids.shape[0], ids.device
        patches_before = cache.num_patches if cache is not None else torch.zeros(batch, dtype=torch.long, device=device)
        state = entropies = None
        rule = self.patching_rule
        if patch_lengths is None or cache is not None:  # a cache continues with the rule afterwards
            initial = cache.patching if cache is not None else PatchingState.initial(batch, device)
            scores = None
            if rule.mode == "source":  # given lengths replace the token head's cuts: the rule then cuts nowhere
                scores = (self._source_end_scores(ids, positions, valid, cache, source_ends) if patch_lengths is None
                          else torch.full(ids.shape, -torch.inf, device=device))
            starts, next_starts, state, entropies = compute_patch_starts(
                rule, ids, positions, valid, initial, patcher=self.patcher,
                patcher_cache=cache.patcher if cache is not None else None, documents=documents,
                document_positions=document_positions, one_byte_step=self.config.fast_decoding, scores=scores,
            )
        if patch_lengths is not None:
            starts, next_starts, pending_start = self._starts_from_lengths(
                patch_lengths, positions, valid, cache, document_positions
            )
            if state is not None:
                state = replace(state, pending_start=pending_start)
                if rule.mode == "source":  # the rule saw no cuts: the last patch starts where the lengths say
                    last_start = torch.where(next_starts, positions + 1, torch.where(starts, positions, -1)).amax(1)
                    state = replace(state, rule_patch_start=torch.where(
                        last_start >= 0, last_start, state.rule_patch_start))
        if cache is None:
            return ChunkPatches(starts, next_starts, valid, patches_before)
        return ChunkPatches(starts, next_starts, valid, patches_before, state,
                            rule if patch_lengths is None else None, entropies)

    def _source_end_scores(self, ids, positions, valid, cache, source_ends=None) -> torch.Tensor:
        """Source patching's score [B, 1] of a one-byte step: the token head's log-odds that the open patch's bytes
        (this one included) are a whole token, under the global state that predicts that token (source_ends [B]:
        decided by the caller instead, +-inf)."""
        if cache is None or ids.shape[1] != 1:
            raise ValueError("source patching decides after each byte with the global states so far: run one byte "
                             "at a time with a cache (BLTForCausalLM does this for longer inputs)")
        if source_ends is not None:
            return torch.where(source_ends.view(-1, 1).bool(), torch.inf, -torch.inf)
        current = self._current_cumulative(cache)
        if current is None:  # only BOS so far: the rule starts the next patch anyway
            return torch.zeros(ids.shape, device=ids.device)
        prefix, lengths = self._open_patch_prefix(ids, positions, valid, cache)
        return self.token_head.end_logits(current, prefix, lengths)

    def _open_patch_prefix(self, ids, positions, valid, cache):
        """The open patch's bytes with a one-byte step's byte: prefix [B, 1, max_bytes] and lengths [B, 1]."""
        starts = cache.patching.pending_start[:, None] & valid
        begins = patch_begins(starts, positions, cache.open_patch_begin)
        return self._target_prefixes(ids, cache.byte_history, positions, begins, torch.zeros_like(valid))

    @staticmethod
    def _starts_from_lengths(patch_lengths, positions, valid, cache, document_positions):
        """Per-byte (starts, next_starts) of given patch lengths, and whether each row's next byte starts a patch."""
        if cache is not None and cache.num_bytes.any():
            raise ValueError("patch_lengths can only be given for a fresh sequence, not to continue a cache")
        num_bytes = valid.sum(1)
        row_starts = starts_from_patch_lengths(patch_lengths, num_bytes)
        local = positions.clamp(max=row_starts.shape[1] - 2)
        starts = row_starts.gather(1, local) & valid
        next_starts = row_starts.gather(1, local + 1) & valid
        pending_start = row_starts.gather(1, num_bytes.clamp(max=row_starts.shape[1] - 1)[:, None]).squeeze(1)
        if document_positions is not None and (valid & (document_positions <= 1) & ~starts).any():
            raise ValueError(
                "patch_lengths let a patch span two packed documents: each document's BOS must be a patch "
                "of its own and its next byte must start a patch"
            )
        return starts, next_starts, pending_start

    @staticmethod
    def _closing_rows(patches: ChunkPatches, cache) -> torch.Tensor | None:
        """In a decoding step where some rows but not all close a patch, those rows [k]; else None (dense path)."""
        if cache is None or cache.current_patch_kv is None or patches.valid.shape[1] != 1:
            return None
        rows = patches.closes[:, 0].nonzero().flatten()
        return rows if rows.numel() < patches.valid.shape[0] else None

    def _patches_to_read(self, cache, new_patch_kv, patches: ChunkPatches, byte_states, closing_rows=None):
        """The decoder's patch table (per cross layer keys/values of [current patch, patches closed now]), the
        patch each byte reads in it, and slot readouts for an eligible one-byte step (else None). A decoding step
        reads one patch per row: the table is cut to it. closing_rows [k]: new_patch_kv holds only these rows'
        patches (`_closing_rows`); they replace those rows' current patch, and so do their slot readouts."""
        if closing_rows is not None:
            patch_kv = [(ck.index_copy(0, closing_rows, nk[:, :1]), cv.index_copy(0, closing_rows, nv[:, :1]))
                        for (ck, cv), (nk, nv) in zip(cache.current_patch_kv, new_patch_kv, strict=True)]
            readouts = None
            if fast_paths_eligible(byte_states, cache):
                current, new = cache.current_patch_readouts, None
                if current is not None:
                    new = slot_readouts(self.local_decoder.cross_attn_layers, new_patch_kv)
                if new is not None:
                    readouts = [(score.index_copy(0, closing_rows, new_score),
                                 out.index_copy(0, closing_rows, new_out), eps, slots)
                                for (score, out, eps, slots), (new_score, new_out, *_)
                                in zip(current, new, strict=True)]
                else:
                    readouts = slot_readouts(self.local_decoder.cross_attn_layers, patch_kv)
            return patch_kv, torch.zeros_like(patches.decoder_patch), readouts
        current = cache.current_patch_kv if cache is not None else None
        patch_kv = self.local_decoder.patch_table(current, new_patch_kv, byte_states.shape[0], byte_states.device,
                                                  byte_states.dtype)
        byte_patch, readouts = patches.decoder_patch, None
        if byte_states.shape[1] == 1 and cache is not None:
            if patches.num_new > 0:
                patch_kv, byte_patch = select_patch(patch_kv, byte_patch), torch.zeros_like(byte_patch)
            if fast_paths_eligible(byte_states, cache):
                readouts = cache.current_patch_readouts if patches.num_new == 0 else None
                if readouts is None:
                    readouts = slot_readouts(self.local_decoder.cross_attn_layers, patch_kv)
        return patch_kv, byte_patch, readouts


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

    @can_return_tuple
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
        patch_states: torch.Tensor | None = None,
        **kwargs,
    ) -> BLTCausalLMOutput:
        r"""Next-byte logits [B, n, vocab] (fp32); with `labels`, the causal-LM loss (labels shifted inside,
        -100 ignored, `num_items_in_batch` honoured). See `BLTModel.forward` for the other arguments.

        A cached call asking only for the last logits (`logits_to_keep`, as `generate` does) on more bytes than the
        local windows runs in window-sized chunks (`prefill_chunk`): the same logits, with peak memory set by the
        window rather than the prompt."""
        refuse_attention_weights(kwargs)
        if (self.config.patching_mode == "source" and patch_lengths is None and patch_states is None
                and input_ids is not None):
            input_ids = self.model._check_input_ids(input_ids)  # before the byte-by-byte loop reads the shape
            # a single byte without a cache is a whole sequence too: the token head still decides byte by byte
            if input_ids.shape[1] > 1 or self.config.patching_lookahead or past_key_values is None:
                return self._forward_byte_by_byte(input_ids, attention_mask, past_key_values, labels, use_cache,
                                                  logits_to_keep, output_patch_lengths, output_hidden_states,
                                                  **kwargs)
        chunk = self.prefill_chunk(input_ids, past_key_values, use_cache, logits_to_keep, labels, patch_lengths,
                                   position_ids, output_hidden_states, output_patch_lengths)
        if chunk is not None:
            cache, length = past_key_values, input_ids.shape[1]
            offset = attention_mask.shape[1] - length if attention_mask is not None else 0
            for stop in range(length % chunk or chunk, length + 1, chunk):  # the last chunk is a full one
                begin = max(stop - chunk, 0)
                mask = attention_mask[:, offset + begin : offset + stop] if attention_mask is not None else None
                result = self(input_ids[:, begin:stop], attention_mask=mask, past_key_values=cache, use_cache=True,
                              return_dict=True,
                              logits_to_keep=logits_to_keep if stop == length else 1)
                cache = result.past_key_values
            return result
        outputs = self.model(
            return_dict=True,
            input_ids=input_ids,
            patch_lengths=patch_lengths,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_patch_lengths=output_patch_lengths,
            inputs_embeds=inputs_embeds,
            patch_states=patch_states,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        else:
            keep = logits_to_keep
        logits = project(self.lm_head, hidden[:, keep]).float()
        if self.model.token_head is not None:
            logits = self._spell_source_tokens(outputs.token_head_inputs, keep, logits)
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

    def _forward_byte_by_byte(self, input_ids, attention_mask, past_key_values, labels, use_cache, logits_to_keep,
                              output_patch_lengths, output_hidden_states=None, **kwargs) -> BLTCausalLMOutput:
        """`forward` in source patching, whose every boundary depends on the global states before it: one-byte
        steps through a cache (a fresh one unless given), the same outputs as one call would give. Hidden states
        are those of one more pass on the patches the steps chose."""
        batch, length = input_ids.shape
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_hidden_states and past_key_values is not None and past_key_values.seen_tokens > 0:
            raise ValueError("output_hidden_states in source patching needs the whole sequence in one call, not a "
                             "cache that continues one: its hidden states come from a pass on the chosen patches")
        if attention_mask is not None and attention_mask.shape[1] not in (length, length + (
                past_key_values.seen_tokens if past_key_values is not None else 0)):
            raise ValueError(f"attention_mask has {attention_mask.shape[1]} columns for {length} new bytes")
        offset = attention_mask.shape[1] - length if attention_mask is not None else 0
        keep_from = 0
        if isinstance(logits_to_keep, int) and logits_to_keep:
            keep_from = max(length - logits_to_keep, 0)
        cache, logits, next_starts = past_key_values, [], []
        fresh = past_key_values is None or past_key_values.seen_tokens == 0
        if cache is None:
            cache = BLTCache(self.config, batch, input_ids.device)
        for column in range(length):
            mask = None if attention_mask is None else attention_mask[:, offset + column : offset + column + 1]
            byte = input_ids[:, column : column + 1]
            if self.config.patching_lookahead:
                step, confirmed = self._source_lookahead_step(byte, mask, cache)
                if confirmed is not None and column > 0:
                    next_starts[-1] = confirmed  # the previous byte's cut, decided with this byte
            else:
                step = self(byte, attention_mask=mask, past_key_values=cache, use_cache=True, return_dict=True)
            if column >= keep_from:
                logits.append(step.logits)
            next_starts.append(cache.patching.pending_start)
        logits = torch.cat(logits, dim=1)
        if not isinstance(logits_to_keep, int):
            logits = logits[:, logits_to_keep]
        loss = None
        if labels is not None:
            check_labels(labels, input_ids, self.vocab_size)
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        lengths_out = None
        if (output_patch_lengths or output_hidden_states) and fresh:
            valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else (
                attention_mask[:, offset:].bool())
            positions = row_positions(valid)
            starts = (positions == 0) & valid
            flags = row_start_flags(starts, torch.stack(next_starts, 1) & valid, positions, valid)
            lengths_out = patch_lengths_from_starts(flags, valid.sum(1))
        hidden_states = global_hidden_states = None
        if output_hidden_states:
            states = self.model(input_ids, patch_lengths=lengths_out, attention_mask=attention_mask, use_cache=False,
                                output_hidden_states=True, return_dict=True)
            hidden_states, global_hidden_states = states.hidden_states, states.global_hidden_states
        return BLTCausalLMOutput(loss=loss, logits=logits, past_key_values=cache if use_cache is not False else None,
                                 patch_lengths=lengths_out if output_patch_lengths else None,
                                 hidden_states=hidden_states, global_hidden_states=global_hidden_states)

    def _spell_source_tokens(self, head_inputs, keep, byte_logits) -> torch.Tensor:
        """The token head's next-byte log-probabilities for the kept positions (`BLTTokenHead`)."""
        return self.model.token_head(*self._token_head_arguments(head_inputs, keep), byte_logits)

    def _token_head_arguments(self, head_inputs, keep):
        """(cumulative, reads, prefix, lengths) of `BLTTokenHead.parts` for the kept positions."""
        table, cumulative, reads, prefix, lengths = head_inputs
        reads, prefix, lengths = reads[:, keep], prefix[:, keep], lengths[:, keep]
        if cumulative is None:
            if reads.shape[1] < table.shape[1]:  # fewer bytes than patches (generation): one state per byte
                table = table.gather(1, reads[..., None].expand(-1, -1, table.shape[2]))
                reads = torch.arange(reads.shape[1], device=reads.device).expand_as(reads)
            cumulative = self.model.token_head.token_cumulative(table, self.model.encoder_vocab_embedding.weight)
        return cumulative, reads, prefix, lengths

    def _source_lookahead_step(self, input_ids, attention_mask, cache: BLTCache):
        """One byte [B, 1] of source patching with look-ahead (`config.patching_lookahead`) through `cache`.

        First this byte confirms or undoes the cuts the last step made speculatively (`_confirm_source_cuts`).
        Then the byte runs, closing the open patch where the token head gives "the token ends here" a probability
        of at least `patching_lookahead_min_end`; for those rows the next byte's prediction is the mixture of
        "the token goes on" (the open patch's token table) and "it ended" (the new patch's own prediction), and
        the cut waits for the next byte. Returns the output and, when a cut was pending, whether each row's
        previous byte ended a patch (else None)."""
        model, head = self.model, self.model.token_head
        recording = cache.record_past
        if recording:  # crop() undoes this whole step, the confirmation included: one record for it
            records, before_step = list(cache._records), cache.snapshot()
        confirmed = self._confirm_source_cuts(input_ids, cache)
        valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                 else attention_mask[:, -1:].bool())
        token_table = model._current_cumulative(cache)
        speculate, before, open_parts = None, None, None
        if token_table is not None:  # a patch is open after BOS: how likely its bytes are a whole token
            positions = row_positions(valid, cache.num_bytes)
            prefix, lengths = model._open_patch_prefix(input_ids, positions, valid, cache)
            open_parts = head.parts(token_table, torch.zeros_like(lengths), prefix, lengths)
            _, ending, known = open_parts
            speculate = (torch.where(known, ending, 1.0) >= self.config.patching_lookahead_min_end)[:, 0] & valid[:, 0]
            if bool(speculate.any()):
                before = cache.snapshot()
        outputs = model(input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True,
                        source_patch_ends=speculate, return_dict=True)
        byte_logits = self.lm_head(outputs.last_hidden_state).float()
        q = torch.softmax(byte_logits, dim=-1).double()
        spelled = head.spell(head.parts(*self._token_head_arguments(outputs.token_head_inputs, slice(None))), q)
        if before is not None:
            # rows that cut: `spelled` is the new patch's first-byte distribution, what follows a whole token
            lookahead = head.spell(open_parts, spelled)
            continuing, ending, known = open_parts
            end_scores = torch.log(ending[..., None] * spelled) - torch.log(continuing)
            end_scores = torch.where((continuing > 0) & known[..., None], end_scores, torch.inf)
            cache.source_lookahead = SourceLookahead(
                before, input_ids, None if attention_mask is None else attention_mask[:, -1:], speculate,
                end_scores[:, 0].float())
            spelled = torch.where(speculate[:, None, None], lookahead, spelled)
        if recording:
            cache._records = [*records, {"before": before_step, "columns": 1}]
        logits = head.mix(spelled, byte_logits)
        return BLTCausalLMOutput(logits=logits, past_key_values=cache), confirmed

    def _confirm_source_cuts(self, input_ids, cache: BLTCache) -> torch.Tensor | None:
        """Settle the cuts the last step made speculatively (`SourceLookahead`), now that its next byte
        (`input_ids` [B, 1]) is known: a cut stays where its log-odds given that byte exceed `patching_threshold`;
        if any row's does not, the last step is redone from before it, those rows without their cut. Returns
        whether each row's patch ended at the last byte (None when no cut was pending)."""
        pending = cache.source_lookahead
        if pending is None:
            return None
        cache.source_lookahead = None
        scores = pending.end_scores.gather(1, input_ids[:, :1].to(pending.end_scores.device)).squeeze(1)
        kept = pending.speculated & (scores > self.config.patching_threshold)
        if bool((pending.speculated & ~kept).any()):
            records = cache._records
            cache.restore(pending.before)
            if cache.record_past:  # rewriting the undone positions must leave the recorded snapshots intact
                cache._records = records
                cache.own_buffers()
            self.model(pending.input_ids, attention_mask=pending.attention_mask, past_key_values=cache,
                       use_cache=True, source_patch_ends=kept, return_dict=True)
        return cache.patching.pending_start

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """transformers' `generate`, plus exact self-speculative decoding: `speculative_bytes=k` (a generate kwarg
        or a `generation_config` attribute; "auto" adapts k) drafts k bytes per step with the local stacks and
        verifies them in one pass of the full model (`speculative.py`); greedy output is plain greedy decoding's
        and sampled output follows the model's distribution. A `past_key_values` must continue the prompt: a
        cache that has already seen the prompt's bytes (or others) is refused."""
        config = generation_config if generation_config is not None else self.generation_config
        speculative = kwargs.pop("speculative_bytes", getattr(config, "speculative_bytes", None))
        cache = kwargs.get("past_key_values")
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("BLT needs input_ids: its hash n-gram embeddings and patching read the byte ids")
        refuse_attention_weights({"output_attentions": kwargs.get("output_attentions", config.output_attentions)})
        self._check_generation_ids(config, kwargs)
        if isinstance(cache, BLTCache) and isinstance(prompt, torch.Tensor) and prompt.dim() == 2:
            self._check_cache_continues(cache, prompt, kwargs.get("attention_mask"))
            expanded = max(kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1,
                           kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1)
            if expanded > 1:
                raise ValueError(
                    "past_key_values holds one row per prompt, but num_beams / num_return_sequences > 1 expand the "
                    "rows before decoding: start beam search and multiple returned sequences without a cache"
                )
        if speculative is None or speculative == 0:
            return super().generate(inputs, generation_config, **kwargs)
        speculative = check_speculative_bytes(speculative)
        if kwargs.get("assistant_model") is not None or kwargs.get("prompt_lookup_num_tokens"):
            raise ValueError(
                "speculative_bytes (self-speculation) cannot be combined with assistant_model or "
                "prompt_lookup_num_tokens: use one of them"
            )
        for name in ("num_beams", "num_return_sequences"):
            if (kwargs.get(name) or getattr(config, name, 1) or 1) > 1:
                raise ValueError(f"speculative_bytes decodes one sequence per row: {name} must be 1")
        if kwargs.get("custom_generate") is not None:
            raise ValueError("speculative_bytes cannot be combined with custom_generate")
        decoding = partial(self_speculative_decoding, speculative_bytes=speculative,
                           speculative_streamer=kwargs.get("streamer"))
        return super().generate(inputs, generation_config, custom_generate=decoding, **kwargs)

    def _check_generation_ids(self, config, kwargs) -> None:
        """eos/pad/bos ids given to generate (or in its config) must be ids of this model's vocabulary: an EOS the
        model can never produce would silently never stop a row."""
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            value = kwargs[name] if name in kwargs else getattr(config, name, None)
            if isinstance(value, torch.Tensor):
                value = value.tolist()
            values = value if isinstance(value, (list, tuple)) else [value]
            vocab = self.config.vocab_size
            bad = [v for v in values if v is not None and (not isinstance(v, int) or not 0 <= v < vocab)]
            if bad:
                raise ValueError(f"{name} must be a byte-vocabulary id in 0..{vocab - 1} (EOS is 2, "
                                 f"padding 0), got {value!r}")

    @staticmethod
    def _check_cache_continues(cache: BLTCache, prompt: torch.Tensor, attention_mask=None) -> None:
        """A cache passed to generate() must have seen fewer columns than the prompt, and the last bytes it saw
        must be the prompt's at those columns (a cache returned by an earlier call holds that call's output)."""
        if cache.num_bytes.shape[0] != prompt.shape[0]:
            raise ValueError(
                f"past_key_values holds {cache.num_bytes.shape[0]} rows but the prompt has {prompt.shape[0]}: a cache "
                "continues the rows it was built on"
            )
        seen = cache.get_seq_length()
        if seen >= prompt.shape[1]:
            raise ValueError(
                f"past_key_values has already seen {seen} byte columns but the prompt has {prompt.shape[1]}: "
                "a cache continues only the sequence it was built on. Pass that sequence plus new bytes (e.g. the "
                "previous generate() output), or a fresh cache"
            )
        width = min(seen, cache.byte_history.shape[1])
        if width:  # (the rows were checked above)
            expected = prompt[:, seen - width : seen].to(cache.byte_history.device)
            if attention_mask is not None and attention_mask.shape[1] == prompt.shape[1]:
                real = attention_mask[:, seen - width : seen].to(expected.device).bool()
                expected = torch.where(real, expected, BOE_ID)
            if not torch.equal(cache.byte_history[:, -width:], expected):
                raise ValueError(
                    "the prompt does not continue the bytes past_key_values has seen: pass the sequence the cache "
                    "was built on plus new bytes, or a fresh cache"
                )

    def prefill_chunk(self, input_ids, past_key_values, use_cache, logits_to_keep, labels=None, patch_lengths=None,
                      position_ids=None, output_hidden_states=None, output_patch_lengths=False) -> int | None:
        """Chunk size for a cached call that needs only its last `logits_to_keep` logits, when it is longer than
        the chunk: the largest local window (None: run in one piece)."""
        config = self.config
        if (labels is not None or patch_lengths is not None or position_ids is not None or output_hidden_states
                or output_patch_lengths or input_ids is None or not isinstance(logits_to_keep, int)
                or logits_to_keep < 1):
            return None
        if use_cache is False or (past_key_values is None and not (use_cache or config.use_cache) or self.training):
            return None
        windows = [config.encoder_config.sliding_window, config.decoder_config.sliding_window]
        if self.model.patcher is not None and config.patching_mode in ("entropy", "boundary"):
            windows.append(config.patcher_config.sliding_window)
        if any(window is None for window in windows):
            return None
        chunk = max(windows)
        return chunk if input_ids.shape[1] > chunk and logits_to_keep <= chunk else None

    def _get_stopping_criteria(self, generation_config, stopping_criteria, tokenizer=None, **kwargs):
        """transformers' criteria, with `stop_strings` matched on bytes (`stopping.StopBytesCriteria`): its own
        criterion reads each vocabulary token's text, which a lone byte of "é" does not have. No tokenizer needed."""
        if generation_config.stop_strings is None:
            return super()._get_stopping_criteria(generation_config, stopping_criteria, tokenizer, **kwargs)
        stop_bytes = StopBytesCriteria(generation_config.stop_strings)
        without = copy.copy(generation_config)
        without.stop_strings = None
        criteria = super()._get_stopping_criteria(without, stopping_criteria, tokenizer, **kwargs)
        criteria.append(stop_bytes)
        return criteria

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
            if generation_config.is_assistant:  # transformers' assisted decoding crops the assistant's cache
                cache.activate_past_recording()
            return
        if generation_config.use_cache is False:
            return
        if generation_config.cache_implementation is not None:
            raise ValueError("BLT carries its own BLTCache; cache_implementation is not supported")
        expand = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        model_kwargs["past_key_values"] = BLTCache(self.config, batch_size * expand, self.device)
        if generation_config.is_assistant:
            model_kwargs["past_key_values"].activate_past_recording()

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
        for name in ("logits_to_keep", "output_hidden_states"):
            if name in kwargs:
                inputs[name] = kwargs[name]
        return inputs

    def _reorder_cache(self, past_key_values, beam_idx):
        return past_key_values.reorder_cache(beam_idx)


__all__ = ["BLTModel", "BLTForCausalLM", "BLTModelOutput", "BLTCausalLMOutput"]
