"""One cache for incremental BLT generation, carried through `generate()` as `past_key_values`.

* `SlidingWindowCache` keeps, per layer, the keys/values of the last `window - 1` positions (patcher, local encoder,
  local decoder): per-byte work is O(window) however long the text grows, and so is its memory (its buffers shrink
  to the window, or to one patch for the patch-local decoder, right after a prefill).
* `PatchKVCache` keeps the global transformer's keys/values, one entry per closed patch, ragged across rows;
  `PatchKVRows` is a view of some of its rows (a decoding step runs the global model only on the rows closing a
  patch).
* `BLTCache` bundles them with the streaming state that is not K/V: the patching rule's state, the encoder states
  of the still-open patch, the decoder's current patch slots and the last bytes for the hash n-grams. Its state
  changes are its own methods: `advance` takes in a chunk the model has run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from .patching import ChunkPatches, PatchingState, move_kept_to_front, row_positions


class SlidingWindowCache:
    """Per-layer keys/values of the last `window - 1` positions (all of them if window is None).

    Stored in preallocated buffers [B, Hkv, capacity, D] with a shared [start, end) span; appending is a write into
    free space and attending reads a view, so a decoding step copies nothing. When the buffer is full the live span
    is moved to the front, in place (an O(window) copy every `slack` steps). A call of n positions gets capacity
    `min(bound, 2 * live) + max(n, slack)`, where bound is the most positions alive between calls (window - 1, or
    `span_limit`: the patch-local decoder sees only its patch); `trim` shrinks the buffers of a prefill to that
    right after it, so the prompt's length never sets the memory held while decoding. fast_decoding: whether
    one-byte steps continuing it may take the shortcuts of `decoding.py` and the unmasked attention step
    (`BLTConfig.fast_decoding`).
    """

    def __init__(self, num_layers: int, window: int | None, fast_decoding: bool = True, span_limit: int | None = None):
        self.window, self.fast_decoding = window, fast_decoding
        self.keep = None if window is None else window - 1
        self.span_limit = span_limit  # positions alive between calls never exceed it (None: the window bounds)
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._valid: torch.Tensor | None = None  # [B, capacity] False for padding
        self._segments: torch.Tensor | None = None  # [B, capacity] segment of each position
        self.start = self.end = 0  # live span of the buffers
        self._pending = 0  # positions written by the current call, committed at the next `begin`
        self.step_weights: dict[int, tuple | None] = {}  # per layer: `decoding.fuse_step_weights`
        self.snapshotted = False  # once a snapshot exists, the live span moves into new buffers, never in place

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
        """Move the live span to the front of the buffers: in place at the same capacity (in pieces that do not
        overlap, so that a decoding run allocates nothing) unless a snapshot may still read the old positions, else
        into new buffers of `capacity`."""
        start, live = self.start, self.end - self.start

        def moved(buffer, dim):
            if buffer is None:
                return None
            if buffer.shape[dim] == capacity and start > 0 and not self.snapshotted:
                for begin in range(0, live, start):
                    size = min(start, live - begin)
                    buffer.narrow(dim, begin, size).copy_(buffer.narrow(dim, start + begin, size))
                return buffer
            shape = list(buffer.shape)
            shape[dim] = capacity
            fresh = buffer.new_zeros(shape)
            fresh.narrow(dim, 0, live).copy_(buffer.narrow(dim, start, live))
            return fresh

        self.keys = [moved(k, 2) for k in self.keys]
        self.values = [moved(v, 2) for v in self.values]
        self._valid, self._segments = moved(self._valid, 1), moved(self._segments, 1)
        self.start, self.end = 0, live

    @property
    def bound(self) -> int | None:
        """Most positions alive between calls (None: unbounded)."""
        limits = [limit for limit in (self.keep, self.span_limit) if limit is not None]
        return min(limits) if limits else None

    @property
    def capacity(self) -> int:
        """Positions the buffers hold (live or free)."""
        return 0 if self._valid is None else self._valid.shape[1]

    def nbytes(self) -> int:
        """Bytes held by the buffers (keys, values, validity, segments)."""
        tensors = [*self.keys, *self.values, self._valid, self._segments]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _capacity_for(self, n: int, live: int) -> int:
        """Capacity for calls of n positions under a bound: min(bound, 2 * live) (growing geometrically up to the
        bound) plus room for max(n, slack) positions, slack = max(16, bound / 8) steps between moves of the live
        span; never less than live + n (a span beyond the bound: patch lengths given by hand)."""
        bound = self.bound
        return max(min(bound, 2 * live) + max(n, 16, bound // 8), live + n)

    def trim(self) -> None:
        """Size the buffers for decoding steps (after a prefill): shrink them to at most `bound` plus slack, and
        make room for the next step when they are full (else every step rolled back to here would move the live
        span again). Not once snapshotted: a rollback may still need the positions before the live span."""
        self._commit()
        if self.bound is not None and self._valid is not None and not self.snapshotted:
            target = self._capacity_for(1, self.end - self.start)
            if self.capacity > target or self.end == self.capacity:
                self._relocate(target)

    def begin(self, new_valid: torch.Tensor, new_segments: torch.Tensor | None):
        """Start a call that appends n positions: returns (cached length, key validity, key segments) over
        cached + new positions."""
        self._commit()
        n = new_valid.shape[1]
        capacity = self.capacity
        live = self.end - self.start
        bound = self.bound
        # bounded: room for `slack` more calls of n positions before the live span moves; unbounded: grow
        # geometrically. A span beyond the bound (patch lengths given by hand) still fits.
        target = None if bound is None else self._capacity_for(n, live)
        largest = None if bound is None else self._capacity_for(n, bound)
        if self.end + n > capacity or (largest is not None and capacity > max(largest, live + n)):
            new_capacity = target if target is not None else max(2 * capacity, live + n, 64)
            if self._valid is None:
                self._valid = new_valid.new_zeros(new_valid.shape[0], new_capacity)
                if new_segments is not None:
                    self._segments = new_segments.new_zeros(new_segments.shape[0], new_capacity)
            else:
                self._relocate(capacity if target is None and live + n <= capacity else new_capacity)
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

    def snapshot(self) -> tuple:
        """The live span and the buffers holding it. Appending writes only past `end` and relocating makes new
        buffers (from now on: `snapshotted`), so `restore` of this is exact after any later calls
        (`BLTCache.snapshot`)."""
        self._commit()
        self.snapshotted = True
        return list(self.keys), list(self.values), self._valid, self._segments, self.start, self.end

    def restore(self, snapshot: tuple) -> None:
        keys, values, self._valid, self._segments, self.start, self.end = snapshot
        self.keys, self.values, self._pending = list(keys), list(values), 0

    def drop_last(self, count: int, call_length: int, live_before: int) -> None:
        """Forget the last `count` positions of the last call, which appended `call_length` positions to
        `live_before` live ones: the span is then what a call of `call_length - count` positions would have left."""
        self._commit()
        call_start = self.end - call_length
        if call_start - live_before < 0 or count > call_length:
            raise RuntimeError("cannot roll this window cache back: its positions were not kept")
        self.start, self.end, self._pending = call_start - live_before, call_start, call_length - count
        self._commit()

    def select_rows(self, index: torch.Tensor) -> None:
        self._commit()
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        if self._valid is not None:
            self._valid = self._valid.index_select(0, index)
        if self._segments is not None:
            self._segments = self._segments.index_select(0, index)


class PatchKVCache:
    """Global-transformer keys/values in buffers [B, Hkv, capacity, D]; row b holds `lengths[b]` patches.
    fast_decoding: as `SlidingWindowCache`'s. Its layers run unfused (`global_transformer.py` says why)."""

    def __init__(self, num_layers: int, batch_size: int, device, fast_decoding: bool = True):
        self.fast_decoding = fast_decoding
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_length = 0  # host copy of lengths.max()

    def _grown(self, buffer, new, needed):
        """buffer (or None) with room for `needed` patches per row, grown to 1.25x what is needed (the memory held
        stays within 1.25x the patches, and a quarter more patches fit before the next copy); new [*, Hkv, *, D]
        gives the shape."""
        if buffer is None or buffer.shape[2] < needed:
            capacity = max(needed + needed // 4, 16)
            grown = new.new_zeros(self.lengths.shape[0], new.shape[1], capacity, new.shape[3])
            if buffer is not None:
                grown[:, :, : buffer.shape[2]] = buffer
            buffer = grown
        return buffer

    def _write(self, buffer, new):
        """Write new [B, Hkv, m, D] at each row's own offset (all m slots: those past a row's new patches land
        beyond its length, where nothing reads them and the next write goes)."""
        batch, heads, num_new, dim = new.shape
        buffer = self._grown(buffer, new, self.max_length + num_new)
        rows = torch.arange(batch, device=new.device)[:, None]
        cols = self.lengths[:, None] + torch.arange(num_new, device=new.device)
        buffer.transpose(1, 2)[rows, cols] = new.transpose(1, 2)
        return buffer

    def update(self, layer_idx, keys, values, new_counts):
        """Write this call's keys/values [B, Hkv, m, D] (row b's first new_counts[b] are real); return views of
        all visible ones."""
        self.keys[layer_idx] = self._write(self.keys[layer_idx], keys)
        self.values[layer_idx] = self._write(self.values[layer_idx], values)
        visible = self.max_length + keys.shape[2]
        return self.keys[layer_idx][:, :, :visible], self.values[layer_idx][:, :, :visible]

    def advance(self, new_counts: torch.Tensor) -> None:
        self.lengths = self.lengths + new_counts
        self.max_length = int(self.lengths.max()) if self.lengths.numel() else 0

    def snapshot(self) -> tuple:
        """Buffers and lengths: writes land at offsets >= lengths and growing makes new buffers, so `restore` of
        this is exact after any later calls."""
        return list(self.keys), list(self.values), self.lengths, self.max_length

    def restore(self, snapshot: tuple) -> None:
        keys, values, self.lengths, self.max_length = snapshot
        self.keys, self.values = list(keys), list(values)

    def set_lengths(self, lengths: torch.Tensor) -> None:
        """Keep `lengths` [B] patches per row (at most what the buffers hold): the later ones are forgotten."""
        self.lengths = lengths
        self.max_length = int(lengths.max()) if lengths.numel() else 0

    def select_rows(self, index: torch.Tensor) -> None:
        self.keys = [None if k is None else k.index_select(0, index) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, index) for v in self.values]
        self.lengths = self.lengths.index_select(0, index)
        self.max_length = int(self.lengths.max()) if self.lengths.numel() else 0

    def rows(self, index: torch.Tensor) -> PatchKVRows:
        """A view of rows `index` [k] that each add one patch (for `PatchAttentionPlan`)."""
        return PatchKVRows(self, index)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)


class PatchKVRows:
    """Rows `index` [k] of a `PatchKVCache`, each adding one patch: the global transformer runs on these rows only
    (a decoding step's rows that close a patch), reading and writing the parent's buffers at their own lengths."""

    def __init__(self, parent: PatchKVCache, index: torch.Tensor):
        self.parent, self.index = parent, index
        self.fast_decoding = parent.fast_decoding
        self.lengths = parent.lengths.index_select(0, index)
        self.max_length = int(self.lengths.max()) if index.numel() else 0

    def _write(self, buffers, layer_idx, new):
        buffer = buffers[layer_idx] = self.parent._grown(buffers[layer_idx], new, self.parent.max_length + 1)
        buffer.transpose(1, 2)[self.index, self.lengths] = new[:, :, 0]
        return buffer[:, :, : self.max_length + 1].index_select(0, self.index)

    def update(self, layer_idx, keys, values, new_counts):
        """keys/values [k, Hkv, 1, D] -> the rows' keys/values [k, Hkv, max_length + 1, D] (new_counts: all 1)."""
        parent = self.parent
        return self._write(parent.keys, layer_idx, keys), self._write(parent.values, layer_idx, values)

    def advance(self, new_counts: torch.Tensor) -> None:
        self.parent.advance(torch.zeros_like(self.parent.lengths).index_add_(0, self.index, new_counts))


def longest_patch(config) -> int | None:
    """The most bytes a patch can hold under the config's patching rule (None: no bound)."""
    limits = [config.max_patch_length]
    if config.patching_mode == "static":
        limits.append(config.patch_size)
    elif config.patching_mode == "byte":
        limits.append(1)
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def select_patch(patch_kv, patch_index: torch.Tensor):
    """Per decoder cross layer, keys/values [B, P, ...] -> [B, 1, ...] at patch_index [B] (or [B, 1])."""
    index = patch_index.view(-1, 1, 1, 1, 1)
    return [
        (k.gather(1, index.expand(-1, 1, *k.shape[2:])), v.gather(1, index.expand(-1, 1, *v.shape[2:])))
        for k, v in patch_kv
    ]


@dataclass(frozen=True)
class SourceLookahead:
    """A source-patching cut not yet confirmed (`BLTConfig.patching_lookahead`): the last step closed the patches
    of rows `speculated` [B]; the next byte b keeps a row's cut when `end_scores[row, b]` (the log-odds of the cut
    after seeing b, [B, vocab]) exceeds the threshold, else the step is redone from `before` (a `BLTCache.snapshot`)
    on `input_ids` [B, 1] (and `attention_mask`, that step's column or None) without that row's cut."""

    before: dict
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    speculated: torch.Tensor
    end_scores: torch.Tensor


class BLTCache:
    """Everything BLT needs to continue a batch of byte sequences without recomputing them.

    Not a `transformers.Cache`: `BLTForCausalLM` tells `generate()` not to build a `DynamicCache`. It carries the
    config's `fast_decoding` switch to its window caches.
    """

    is_compileable = False
    is_croppable = True  # `crop` rolls back the calls made since `activate_past_recording`
    layers: tuple = ()  # no transformers cache layers (read by `DeferredStopCheck.finish`)

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
        self.global_ = PatchKVCache(config.global_config.num_hidden_layers, batch_size, device, self.fast_decoding)
        # the patch-local decoder sees only the bytes read from one patch: at most the longest patch
        span = longest_patch(config) if decoder.patch_local_attention else None
        self.decoder = SlidingWindowCache(decoder.num_hidden_layers, decoder.sliding_window, self.fast_decoding, span)
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
        self.current_patch_state: torch.Tensor | None = None  # [B, 1, d_global]: its global state (token head)
        self.current_patch_cumulative: torch.Tensor | None = None  # [B, 1, tokens + 1]: its token head table
        self.source_lookahead: SourceLookahead | None = None  # a cut the next byte confirms or undoes
        self.continuable = True  # False once a row had padding after real bytes (right padding)
        self.open_patch_begin = torch.zeros(batch_size, dtype=torch.long, device=device)  # position it began at
        self.record_past = False  # `activate_past_recording`: calls are recorded so that `crop` can undo them
        self._records: list[dict] = []

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

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per part of the cache: the window caches' buffers, the global patch cache, the rest (open
        patch states, the decoder's current patch and its readouts, streaming state)."""
        small = [*(self.open_patch_states or []), *(t for kv in self.current_patch_kv or [] for t in kv),
                 *(t for readout in self.current_patch_readouts or [] for t in readout[:2]),
                 *(t for t in (self.current_patch_state, self.current_patch_cumulative) if t is not None)]
        return {
            "patcher": self.patcher.nbytes() if self.patcher is not None else 0,
            "encoder": self.encoder.nbytes(),
            "decoder": self.decoder.nbytes(),
            "global": self.global_.nbytes(),
            "patch_states": sum(t.numel() * t.element_size() for t in small),
        }

    def with_open_patch(self, cross_states: list[torch.Tensor], rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per encoder cross layer, [the still-open patch's earlier states, this chunk's states]: [B, o + n, d]
        (only rows `rows` [k] when given)."""
        if rows is not None:
            cross_states = [s.index_select(0, rows) for s in cross_states]
        if self.open_patch_states is None:
            return list(cross_states)
        open_states = self.open_patch_states if rows is None else [o.index_select(0, rows)
                                                                   for o in self.open_patch_states]
        return [torch.cat((o, s), dim=1) for o, s in zip(open_states, cross_states, strict=True)]

    # ---------------------------------------------------------------- rollback (speculative decoding)
    _STATE = ("patching", "byte_history", "num_bytes", "seen_tokens", "open_patch_states", "open_patch_valid",
              "current_patch_kv", "current_patch_readouts", "current_patch_state", "current_patch_cumulative",
              "continuable", "open_patch_begin", "source_lookahead")

    def _windows(self) -> dict[str, SlidingWindowCache]:
        caches = {"encoder": self.encoder, "decoder": self.decoder}
        if self.patcher is not None:
            caches["patcher"] = self.patcher
        return caches

    def snapshot(self) -> dict:
        """Everything that `restore` needs to bring the cache back to now, in O(1): the streaming state tensors
        are replaced (never written in place) by later calls, and the window and patch caches only write past
        their live spans or into new buffers."""
        return {
            "state": {name: getattr(self, name) for name in self._STATE},
            "windows": {name: cache.snapshot() for name, cache in self._windows().items()},
            "global": self.global_.snapshot(),
        }

    def restore(self, snapshot: dict) -> None:
        """Back to the moment of `snapshot` (forgets the recorded calls made since)."""
        for name, value in snapshot["state"].items():
            setattr(self, name, value)
        for name, cache in self._windows().items():
            cache.restore(snapshot["windows"][name])
        self.global_.restore(snapshot["global"])
        self._records = []

    def own_buffers(self) -> None:
        """Give the window and patch caches copies of their buffers: calls after a `restore` then rewrite the
        positions they undo without touching snapshots taken before the restore."""
        for window_cache in self._windows().values():
            window_cache.snapshotted = True
            if window_cache.capacity:
                window_cache._relocate(window_cache.capacity)
        self.global_.keys = [None if k is None else k.clone() for k in self.global_.keys]
        self.global_.values = [None if v is None else v.clone() for v in self.global_.values]

    def activate_past_recording(self) -> None:
        """Record every following call so that `crop` can undo any number of its last bytes (transformers'
        assisted and prompt-lookup decoding call this, then `crop` after each verification)."""
        self.record_past = True
        self._records = []

    def open_record(self) -> None:
        """Called by the model at the start of a call continuing this cache while recording."""
        if self.record_past:
            self._records.append({"before": self.snapshot()})

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last `-tokens_to_remove` columns of the recorded calls (transformers' convention: negative =
        how many to remove; a positive value is the number of columns to keep). The cache is then exactly what
        the calls without those columns would have left. Clears the record."""
        remove = self.seen_tokens - tokens_to_remove if tokens_to_remove > 0 else -tokens_to_remove
        if remove < 0:
            raise ValueError(f"cannot crop a cache of {self.seen_tokens} columns to {tokens_to_remove}")
        while remove > 0:
            if not self._records or "columns" not in self._records[-1]:
                raise ValueError(
                    f"cannot remove {remove} more columns: only calls made after activate_past_recording() can "
                    "be undone"
                )
            record = self._records.pop()
            if remove >= record["columns"]:
                remove -= record["columns"]
                records = self._records
                self.restore(record["before"])
                self._records = records
            else:
                self._keep_first(record, record["columns"] - remove)
                remove = 0
        self._records = []

    def _keep_first(self, record: dict, keep: int) -> None:
        """Undo the last call (`record`) but for its first `keep` columns."""
        patches: ChunkPatches = record["patches"]
        if patches.rule is None:
            raise ValueError("a call given patch_lengths cannot be partly undone")
        before = record["before"]
        columns = record["columns"]
        for name, cache in self._windows().items():
            start, end = before["windows"][name][4:]
            cache.drop_last(columns - keep, columns, end - start)
        for name, value in before["state"].items():
            setattr(self, name, value)
        valid, ids = patches.valid[:, :keep], record["ids"][:, :keep]
        positions = row_positions(valid, self.num_bytes)
        entropies = None if patches.entropies is None else patches.entropies[:, :keep]
        starts, next_starts, state = patches.rule(positions, valid, ids, entropies, self.patching, None,
                                                  self.fast_decoding)
        prefix = ChunkPatches(patches.starts[:, :keep], patches.next_starts[:, :keep], valid,
                              patches.patches_before, state)
        self.global_.set_lengths(patches.patches_before + prefix.new_patches)
        patch_kv = record["patch_kv"]
        if keep == 1 or prefix.num_new == 0:  # what a one-byte call, or a call closing no patch, would carry
            patch_kv = select_patch(patch_kv, prefix.new_patches)
        begins = record["patch_begins"]
        self.advance(ids, self.num_bytes + valid.sum(1), prefix, [s[:, :keep] for s in record["cross_states"]],
                     patch_kv, patch_begins=None if begins is None else begins[:, :keep],
                     state_table=record["state_table"])

    def advance(self, ids, num_bytes, patches: ChunkPatches, cross_states, patch_kv, slot_readouts=None,
                patch_begins=None, state_table=None) -> None:
        """Take in a chunk the model has run: ids [B, n] (padding as BOE), num_bytes [B] real bytes seen after it,
        its patches, the encoder states each cross-attention read, the decoder's patch table (already one patch per
        row in a one-byte step), the slot readouts made of that patch, if any, and where each byte's patch began
        (`patching.patch_begins`, when the model tracks it) and the global states of [current patch, patches closed
        now] (`BLTModel._patch_state_table`, with a token head)."""
        if self.record_past and self._records and "columns" not in self._records[-1]:
            self._records[-1].update(columns=ids.shape[1], ids=ids, patches=patches, cross_states=cross_states,
                                     patch_kv=patch_kv, patch_begins=patch_begins, state_table=state_table)
        if state_table is not None:
            index = patches.new_patches.view(-1, 1, 1).expand(-1, 1, state_table.shape[2])
            self.current_patch_state = state_table.gather(1, index)
            self.current_patch_cumulative = None  # remade from the state when next needed (the model sets it)
        if patch_begins is not None:
            self.open_patch_begin = patch_begins[:, -1]
        valid = patches.valid
        if ids.shape[1] > 1 and bool((valid[:, :-1] & ~valid[:, 1:]).any()):
            self.continuable = False  # right padding: a row's next bytes would not follow its last real one
        self.seen_tokens += ids.shape[1]
        if ids.shape[1] > 1:  # after a prefill (chunk), the window caches shrink to what decoding needs
            for window_cache in (self.patcher, self.encoder, self.decoder):
                if window_cache is not None:
                    window_cache.trim()
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
        self._records = []
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
        if self.current_patch_state is not None:
            self.current_patch_state = self.current_patch_state.index_select(0, beam_idx)
        if self.current_patch_cumulative is not None:
            self.current_patch_cumulative = self.current_patch_cumulative.index_select(0, beam_idx)
        pending = self.source_lookahead
        if pending is not None:
            self.source_lookahead = replace(
                pending, before=self._reordered_snapshot(pending.before, beam_idx),
                input_ids=pending.input_ids.index_select(0, beam_idx),
                attention_mask=None if pending.attention_mask is None else pending.attention_mask.index_select(
                    0, beam_idx),
                speculated=pending.speculated.index_select(0, beam_idx),
                end_scores=pending.end_scores.index_select(0, beam_idx))
        return self

    def _reordered_snapshot(self, snapshot: dict, index: torch.Tensor) -> dict:
        """`snapshot` with its rows selected by `index`, made on a copy of this cache (this one is untouched)."""
        other = copy.copy(self)
        other.patcher, other.encoder, other.decoder, other.global_ = (
            copy.copy(part) for part in (self.patcher, self.encoder, self.decoder, self.global_))
        other.restore(snapshot)
        return other.reorder_cache(index).snapshot()

    def batch_repeat_interleave(self, repeats: int) -> None:
        index = torch.arange(self.num_bytes.shape[0], device=self.num_bytes.device).repeat_interleave(repeats)
        self.reorder_cache(index)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)
