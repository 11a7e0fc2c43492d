"""One cache for incremental BLT generation, carried through `generate()` as `past_key_values`.

* `SlidingWindowCache` keeps, per layer, the keys/values of the last `window - 1` positions (patcher, local encoder,
  local decoder): per-byte work is O(window) however long the text grows.
* `PatchKVCache` keeps the global transformer's keys/values, one entry per closed patch, ragged across rows.
* `BLTCache` bundles them with the streaming state that is not K/V: the patching rule's state, the encoder states
  of the still-open patch, the decoder's current patch slots and the last bytes for the hash n-grams.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SlidingWindowCache:
    """Per-layer keys/values of the last `window - 1` positions (all of them if window is None).

    Stored in preallocated buffers [B, Hkv, capacity, D] with a shared [start, end) span; appending is a write into
    free space and attending reads a view, so a decoding step copies nothing. When the buffer is full the live span
    is moved to the front (an O(window) copy every O(window) steps).
    """

    def __init__(self, num_layers: int, window: int | None):
        self.window = window
        self.keep = None if window is None else window - 1
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._valid: torch.Tensor | None = None  # [B, capacity] False for padding
        self._segments: torch.Tensor | None = None  # [B, capacity] segment of each position
        self.start = self.end = 0  # live span of the buffers
        self._pending = 0  # positions written by the current call, committed at the next `begin`
        self.step_weights: dict[int, tuple | None] = {}  # per layer: fused weights of one-byte steps (layers.py)

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

    @property
    def segments(self) -> torch.Tensor | None:
        self._commit()
        return None if self._segments is None else self._segments[:, self.start : self.end]

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


@dataclass
class PatchingState:
    """What the patching rule needs to continue a row: all [B]."""

    pending_start: torch.Tensor  # does the next byte start a patch
    prev_entropy: torch.Tensor  # entropy at the last byte seen
    prev_id: torch.Tensor  # id of the last byte seen
    rule_patch_start: torch.Tensor  # position where the rule (before max_patch_length splits) last started a patch

    @classmethod
    def initial(cls, batch_size: int, device) -> PatchingState:
        return cls(
            pending_start=torch.ones(batch_size, dtype=torch.bool, device=device),
            prev_entropy=torch.zeros(batch_size, device=device),
            prev_id=torch.zeros(batch_size, dtype=torch.long, device=device),
            rule_patch_start=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def select_rows(self, index: torch.Tensor) -> PatchingState:
        return PatchingState(*(t.index_select(0, index) for t in vars(self).values()))


class BLTCache:
    """Everything BLT needs to continue a batch of byte sequences without recomputing them.

    Not a `transformers.Cache`: `BLTForCausalLM` tells `generate()` not to build a `DynamicCache`.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, config, batch_size: int, device):
        encoder, decoder = config.encoder_config, config.decoder_config
        self.patcher = (
            SlidingWindowCache(config.patcher_config.num_hidden_layers, config.patcher_config.sliding_window)
            if config.has_patcher and config.patching_mode == "entropy"
            else None
        )
        self.encoder = SlidingWindowCache(encoder.num_hidden_layers, encoder.sliding_window)
        self.global_ = PatchKVCache(config.global_config.num_hidden_layers, batch_size, device)
        self.decoder = SlidingWindowCache(decoder.num_hidden_layers, decoder.sliding_window)
        self.patching = PatchingState.initial(batch_size, device)
        history = max(config.encoder_hash_byte_group_size) - 1
        self.byte_history = torch.zeros(batch_size, history, dtype=torch.long, device=device)
        self.num_bytes = torch.zeros(batch_size, dtype=torch.long, device=device)  # real bytes seen per row
        self.seen_tokens = 0  # columns of input_ids consumed (padding included)
        self.open_patch_states: list[torch.Tensor] | None = None  # per encoder cross layer [B, o, d]
        self.open_patch_valid: torch.Tensor | None = None  # [B, o]
        self.current_patch_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per decoder cross layer
        self.current_patch_readouts: list | None = None  # their one-byte decoding form (`slot_readout`), if made
        self.continuable = True  # False once a row had padding after real bytes (right padding)

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

    def reorder_cache(self, beam_idx: torch.Tensor) -> BLTCache:
        """Select/reorder batch rows in place (beam search, `num_return_sequences` expansion)."""
        for sub in (self.patcher, self.encoder, self.global_, self.decoder):
            if sub is not None:
                sub.select_rows(beam_idx)
        self.patching = self.patching.select_rows(beam_idx)
        self.byte_history = self.byte_history.index_select(0, beam_idx)
        self.num_bytes = self.num_bytes.index_select(0, beam_idx)
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
