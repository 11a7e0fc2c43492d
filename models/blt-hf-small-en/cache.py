"""One cache for incremental BLT generation, carried through `generate()` as `past_key_values`.

* `SlidingWindowCache` keeps, per layer, the keys/values of the last `window - 1` positions (patcher, local encoder,
  local decoder): per-byte work is O(window) however long the text grows.
* `PatchKVCache` keeps the global transformer's keys/values, one entry per closed patch, ragged across rows.
* `BLTCache` bundles them with the streaming state that is not K/V: the patching rule's state, the encoder states
  of the still-open patch, the decoder's current patch slots and the last bytes for the hash n-grams. Its state
  changes are its own methods: `advance` takes in a chunk the model has run.
"""

from __future__ import annotations

import torch

from .patching import ChunkPatches, PatchingState, move_kept_to_front


class SlidingWindowCache:
    """Per-layer keys/values of the last `window - 1` positions (all of them if window is None).

    Stored in preallocated buffers [B, Hkv, capacity, D] with a shared [start, end) span; appending is a write into
    free space and attending reads a view, so a decoding step copies nothing. When the buffer is full the live span
    is moved to the front (an O(window) copy every O(window) steps). fast_decoding: whether one-byte steps continuing
    it may take the shortcuts of `decoding.py` and the unmasked attention step (`BLTConfig.fast_decoding`).
    """

    def __init__(self, num_layers: int, window: int | None, fast_decoding: bool = True):
        self.window, self.fast_decoding = window, fast_decoding
        self.keep = None if window is None else window - 1
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._valid: torch.Tensor | None = None  # [B, capacity] False for padding
        self._segments: torch.Tensor | None = None  # [B, capacity] segment of each position
        self.start = self.end = 0  # live span of the buffers
        self._pending = 0  # positions written by the current call, committed at the next `begin`
        self.step_weights: dict[int, tuple | None] = {}  # per layer: `decoding.fuse_step_weights`

    def _commit(self) -> None:
        if self._pending:
            self.end += self._pending
            self._pending = 0
            if self.keep is not None:
                self.start = max(self.start, self.end - self.keep)
            if self._segments is not None and self.end > self.start:
                # positions of a finished segment are never attended again: drop them (all rows at once)
                segments = self._segments[:, self.start : self.end]
                alive = (segments == segments[:, -1:]) & self._valid[:, self.start : self.end]
                self.start += int(alive.long().argmax(1).min())

    @property
    def length(self) -> int:
        self._commit()
        return self.end - self.start

    @property
    def valid(self) -> torch.Tensor | None:
        self._commit()
        return None if self._valid is None else self._valid[:, self.start : self.end]

    def _relocate(self, capacity: int) -> None:
        """Move the live span to the front of (possibly larger) buffers."""
        span = slice(self.start, self.end)
        live = self.end - self.start

        def moved(buffer, dim):
            if buffer is None:
                return None
            shape = list(buffer.shape)
            shape[dim] = capacity
            fresh = buffer.new_zeros(shape)
            fresh.narrow(dim, 0, live).copy_(buffer.narrow(dim, span.start, live))
            return fresh

        self.keys = [moved(k, 2) for k in self.keys]
        self.values = [moved(v, 2) for v in self.values]
        self._valid, self._segments = moved(self._valid, 1), moved(self._segments, 1)
        self.start, self.end = 0, live

    def begin(self, new_valid: torch.Tensor, new_segments: torch.Tensor | None):
        """Start a call that appends n positions: returns (cached length, key validity, key segments) over
        cached + new positions."""
        self._commit()
        n = new_valid.shape[1]
        capacity = 0 if self._valid is None else self._valid.shape[1]
        if self.end + n > capacity:
            live = self.end - self.start
            needed = live + n
            # windowed: room for two windows, so relocations are rare; unbounded: grow geometrically
            new_capacity = max(2 * (self.keep + n), needed) if self.keep is not None else max(2 * capacity, needed, 64)
            if self._valid is None:
                self._valid = new_valid.new_zeros(new_valid.shape[0], new_capacity)
                if new_segments is not None:
                    self._segments = new_segments.new_zeros(new_segments.shape[0], new_capacity)
            else:
                self._relocate(capacity if needed <= capacity else new_capacity)
        if new_segments is not None and self._segments is None:
            self._segments = new_segments.new_zeros(self._valid.shape)
        self._valid[:, self.end : self.end + n] = new_valid
        if new_segments is not None:
            self._segments[:, self.end : self.end + n] = new_segments
        self._pending = n
        span = slice(self.start, self.end + n)
        segments = None if new_segments is None else self._segments[:, span]
        return self.end - self.start, self._valid[:, span], segments

    def update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor):
        """Write this call's keys/values [B, Hkv, n, D]; return views of all visible ones."""
        n = keys.shape[2]
        capacity = self._valid.shape[1]
        if self.keys[layer_idx] is None or self.keys[layer_idx].shape[2] != capacity:
            shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
            fresh_k, fresh_v = keys.new_zeros(shape), values.new_zeros(shape)
            if self.keys[layer_idx] is not None:  # never happens after `begin` relocated every layer
                raise RuntimeError("cache buffers out of sync")
            self.keys[layer_idx], self.values[layer_idx] = fresh_k, fresh_v
        self.keys[layer_idx].narrow(2, self.end, n).copy_(keys)
        self.values[layer_idx].narrow(2, self.end, n).copy_(values)
        start, visible = self.start, self.end + n - self.start
        return self.keys[layer_idx].narrow(2, start, visible), self.values[layer_idx].narrow(2, start, visible)

    def select_rows(self, index: torch.Tensor) -> None:
        self._commit()
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        if self._valid is not None:
            self._valid = self._valid.index_select(0, index)
        if self._segments is not None:
            self._segments = self._segments.index_select(0, index)


class PatchKVCache:
    """Global-transformer keys/values in buffers [B, Hkv, capacity, D]; row b holds `lengths[b]` patches."""

    def __init__(self, num_layers: int, batch_size: int, device):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_length = 0  # host copy of lengths.max()

    def _write(self, buffer, new, new_counts):
        batch, heads, num_new, dim = new.shape
        needed = self.max_length + num_new
        if buffer is None or buffer.shape[2] < needed:
            capacity = max(needed, 2 * (0 if buffer is None else buffer.shape[2]), 16)
            grown = new.new_zeros(batch, heads, capacity, dim)
            if buffer is not None:
                grown[:, :, : buffer.shape[2]] = buffer
            buffer = grown
        slot = torch.arange(num_new, device=new.device)[None]
        write = slot < new_counts[:, None]
        rows = torch.arange(batch, device=new.device)[:, None].expand(-1, num_new)[write]
        cols = (self.lengths[:, None] + slot)[write]
        buffer.transpose(1, 2)[rows, cols] = new.transpose(1, 2)[write]
        return buffer

    def update(self, layer_idx, keys, values, new_counts):
        self.keys[layer_idx] = self._write(self.keys[layer_idx], keys, new_counts)
        self.values[layer_idx] = self._write(self.values[layer_idx], values, new_counts)
        visible = self.max_length + keys.shape[2]
        return self.keys[layer_idx][:, :, :visible], self.values[layer_idx][:, :, :visible]

    def advance(self, new_counts: torch.Tensor) -> None:
        self.lengths = self.lengths + new_counts
        self.max_length = int(self.lengths.max()) if self.lengths.numel() else 0

    def select_rows(self, index: torch.Tensor) -> None:
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        self.lengths = self.lengths.index_select(0, index)
        self.max_length = int(self.lengths.max()) if self.lengths.numel() else 0


def select_patch(patch_kv, patch_index: torch.Tensor):
    """Per decoder cross layer, keys/values [B, P, ...] -> [B, 1, ...] at patch_index [B] (or [B, 1])."""
    index = patch_index.view(-1, 1, 1, 1, 1)
    return [
        (k.gather(1, index.expand(-1, 1, *k.shape[2:])), v.gather(1, index.expand(-1, 1, *v.shape[2:])))
        for k, v in patch_kv
    ]


class BLTCache:
    """Everything BLT needs to continue a batch of byte sequences without recomputing them.

    Not a `transformers.Cache`: `BLTForCausalLM` tells `generate()` not to build a `DynamicCache`. It carries the
    config's `fast_decoding` switch to its window caches.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, config, batch_size: int, device):
        encoder, decoder = config.encoder_config, config.decoder_config
        self.fast_decoding = config.fast_decoding
        patcher = config.patcher_config
        self.patcher = (
            SlidingWindowCache(patcher.num_hidden_layers, patcher.sliding_window, self.fast_decoding)
            if config.has_patcher and config.patching_mode in ("entropy", "boundary")
            else None
        )
        self.encoder = SlidingWindowCache(encoder.num_hidden_layers, encoder.sliding_window, self.fast_decoding)
        self.global_ = PatchKVCache(config.global_config.num_hidden_layers, batch_size, device)
        self.decoder = SlidingWindowCache(decoder.num_hidden_layers, decoder.sliding_window, self.fast_decoding)
        self.patching = PatchingState.initial(batch_size, device)
        history = max(config.encoder_hash_byte_group_size) - 1
        if config.vocab_embedding_rows:
            history = max(history, config.vocab_embedding_max_bytes - 1)
        self.byte_history = torch.zeros(batch_size, history, dtype=torch.long, device=device)
        self.num_bytes = torch.zeros(batch_size, dtype=torch.long, device=device)  # real bytes seen per row
        self.seen_tokens = 0  # columns of input_ids consumed (padding included)
        self.open_patch_states: list[torch.Tensor] | None = None  # per encoder cross layer [B, o, d]
        self.open_patch_valid: torch.Tensor | None = None  # [B, o]
        self.current_patch_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per decoder cross layer
        self.current_patch_readouts: list | None = None  # their one-byte decoding form (`slot_readout`), if made
        self.continuable = True  # False once a row had padding after real bytes (right padding)
        self.open_patch_begin = torch.zeros(batch_size, dtype=torch.long, device=device)  # position it began at

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def num_patches(self) -> torch.Tensor:
        """Closed patches per row [B]."""
        return self.global_.lengths

    def local_cache_sizes(self) -> dict[str, int]:
        """Positions held by each windowed cache (bounded by the windows) and by the open patch."""
        return {
            "patcher": self.patcher.length if self.patcher is not None else 0,
            "encoder": self.encoder.length,
            "decoder": self.decoder.length,
            "open_patch": 0 if self.open_patch_valid is None else self.open_patch_valid.shape[1],
        }

    def with_open_patch(self, cross_states: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per encoder cross layer, [the still-open patch's earlier states, this chunk's states]: [B, o + n, d]."""
        if self.open_patch_states is None:
            return list(cross_states)
        return [torch.cat((o, s), dim=1) for o, s in zip(self.open_patch_states, cross_states, strict=True)]

    def advance(self, ids, num_bytes, patches: ChunkPatches, cross_states, patch_kv, slot_readouts=None,
                patch_begins=None) -> None:
        """Take in a chunk the model has run: ids [B, n] (padding as BOE), num_bytes [B] real bytes seen after it,
        its patches, the encoder states each cross-attention read, the decoder's patch table (already one patch per
        row in a one-byte step), the slot readouts made of that patch, if any, and where each byte's patch began
        (`patching.patch_begins`, when the model tracks it)."""
        if patch_begins is not None:
            self.open_patch_begin = patch_begins[:, -1]
        valid = patches.valid
        if ids.shape[1] > 1 and bool((valid[:, :-1] & ~valid[:, 1:]).any()):
            self.continuable = False  # right padding: a row's next bytes would not follow its last real one
        self.seen_tokens += ids.shape[1]
        self.num_bytes = num_bytes
        history = torch.cat((self.byte_history, ids), dim=1)
        self.byte_history = history[:, history.shape[1] - self.byte_history.shape[1] :]
        if patches.state is not None:
            self.patching = patches.state
        self.carry_open_patch(cross_states, patches)
        self.take_current_patch(patch_kv, patches)
        if slot_readouts is not None:
            self.current_patch_readouts = slot_readouts

    def carry_open_patch(self, cross_states, patches: ChunkPatches) -> None:
        """Keep the encoder states of the patch still open after the chunk: they pool into it when it closes."""
        if patches.num_new == 0:  # no row closed a patch (most decoding steps): the open patch just grows
            if self.open_patch_states is None:
                self.open_patch_states, self.open_patch_valid = list(cross_states), patches.valid
            else:
                self.open_patch_states = self.with_open_patch(cross_states)
                self.open_patch_valid = torch.cat((self.open_patch_valid, patches.valid), dim=1)
            return
        keep = patches.still_open(self.open_patch_valid)
        kept = [move_kept_to_front(states, keep) for states in self.with_open_patch(cross_states)]
        self.open_patch_states, self.open_patch_valid = [states for states, _ in kept], kept[0][1]

    def take_current_patch(self, patch_kv, patches: ChunkPatches) -> None:
        """The decoder's current patch becomes the last one closed (unchanged where nothing closed); its slot
        readouts are remade at the next step."""
        if patches.num_new == 0:
            if self.current_patch_kv is None:
                self.current_patch_kv = patch_kv
            return
        one_byte_step = patches.valid.shape[1] == 1  # the model has selected the patch already
        self.current_patch_kv = patch_kv if one_byte_step else select_patch(patch_kv, patches.new_patches)
        self.current_patch_readouts = None

    def reorder_cache(self, beam_idx: torch.Tensor) -> BLTCache:
        """Select/reorder batch rows in place (beam search, `num_return_sequences` expansion)."""
        for sub in (self.patcher, self.encoder, self.global_, self.decoder):
            if sub is not None:
                sub.select_rows(beam_idx)
        self.patching = self.patching.select_rows(beam_idx)
        self.byte_history = self.byte_history.index_select(0, beam_idx)
        self.num_bytes = self.num_bytes.index_select(0, beam_idx)
        self.open_patch_begin = self.open_patch_begin.index_select(0, beam_idx)
        if self.open_patch_states is not None:
            self.open_patch_states = [s.index_select(0, beam_idx) for s in self.open_patch_states]
            self.open_patch_valid = self.open_patch_valid.index_select(0, beam_idx)
        if self.current_patch_kv is not None:
            self.current_patch_kv = [(k.index_select(0, beam_idx), v.index_select(0, beam_idx))
                                     for k, v in self.current_patch_kv]
        self.current_patch_readouts = None  # remade from current_patch_kv at the next step
        return self

    def batch_repeat_interleave(self, repeats: int) -> None:
        index = torch.arange(self.num_bytes.shape[0], device=self.num_bytes.device).repeat_interleave(repeats)
        self.reorder_cache(index)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)
