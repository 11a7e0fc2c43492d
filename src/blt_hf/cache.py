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
    """Per-layer keys/values [B, Hkv, c, D] of the last `window - 1` positions (all of them if window is None)."""

    def __init__(self, num_layers: int, window: int | None):
        self.window = window
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.valid: torch.Tensor | None = None  # [B, c] False for padding
        self.segments: torch.Tensor | None = None  # [B, c] segment of each cached position

    @property
    def length(self) -> int:
        return 0 if self.valid is None else self.valid.shape[1]

    def _keep(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        if self.window is None:
            return x
        keep = self.window - 1
        return x.narrow(dim, x.shape[dim] - keep, keep) if x.shape[dim] > keep else x

    def set_metadata(self, key_valid: torch.Tensor, key_segments: torch.Tensor | None) -> None:
        self.valid = self._keep(key_valid, 1)
        self.segments = None if key_segments is None else self._keep(key_segments, 1)

    def update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor):
        """Append this call's keys/values; return all visible ones, keep only the window's worth."""
        if self.keys[layer_idx] is not None:
            keys = torch.cat((self.keys[layer_idx], keys), dim=2)
            values = torch.cat((self.values[layer_idx], values), dim=2)
        self.keys[layer_idx], self.values[layer_idx] = self._keep(keys, 2), self._keep(values, 2)
        return keys, values

    def select_rows(self, index: torch.Tensor) -> None:
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        if self.valid is not None:
            self.valid = self.valid.index_select(0, index)
        if self.segments is not None:
            self.segments = self.segments.index_select(0, index)


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
        return self

    def batch_repeat_interleave(self, repeats: int) -> None:
        index = torch.arange(self.num_bytes.shape[0], device=self.num_bytes.device).repeat_interleave(repeats)
        self.reorder_cache(index)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)
