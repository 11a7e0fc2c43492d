"""Patch boundary rules: where a new patch starts, batched over rows and incremental over bytes.

Conventions of the released models, followed in every mode:
* byte 0 (BOS) is a patch of its own and byte 1 always starts the next patch;
* whether byte j >= 2 starts a patch depends only on bytes < j (for entropy: on H(j-1), the entropy model's
  uncertainty about byte j), so a prefix's boundaries never change when bytes are appended;
* a sequence of n bytes also has a virtual position n ("the next byte"): if it starts a patch, the patch holding
  byte n-1 is complete and the decoder may read it when predicting byte n.

Patch lengths follow the official convention (include the virtual position): a row of n bytes has lengths summing
to n + 1, right-padded with zeros. Lengths summing to n (transformers' Blt) are accepted as input too; then a
trailing zero-length patch marks a start at the virtual position.

The rule for byte j >= 2 (positions row-local):
* entropy:       H(j-1) > θ
* monotonicity:  H(j-1) - H(j-2) > θ, and byte 2 always starts a patch (official code)
* θ + θ_add:     H(j-1) - H(j-2) > θ_add and H(j-1) > θ, byte 2 starts and byte 3 never does (official code)
* boundary:      B(j-1) > θ, B the patcher's boundary logit (does the next byte start a patch)
* source:        E(j-1) > θ, E the token head's log-odds that the open patch's bytes are a whole source token
* static:        (j - 1) % patch_size == 0: BOS alone, then blocks of patch_size bytes
* space:         byte j-1 is the first of a run of space-like bytes, or a special id (official rule)
* byte:          always
`max_patch_length` then splits every patch the rule made into pieces of that length, from its start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .configuration_blt_hf import BYTE_OFFSET


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Next-byte entropy in nats, computed in fp32: [..., V] -> [...]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def is_space_like(ids: torch.Tensor) -> torch.Tensor:
    """The official space-like byte test on ids (byte + 4): not a letter, digit or UTF-8 continuation byte."""
    b = ids - BYTE_OFFSET
    return (
        (b < ord("0"))
        | ((ord("9") < b) & (b < ord("A")))
        | ((ord("Z") < b) & (b < ord("a")))
        | ((ord("z") < b) & (b < 0x80))
        | (b >= 0xC0)
    )


def row_positions(valid: torch.Tensor, bytes_before: torch.Tensor | None = None) -> torch.Tensor:
    """Row-local position [B, n] of each column: real bytes count on from `bytes_before` [B] (0 when None); padding
    takes the position of the real byte before it (0 before the first)."""
    counted = valid.long().cumsum(1) - 1
    return (counted if bytes_before is None else bytes_before[:, None] + counted).clamp(min=0)


def previous_is_real(valid: torch.Tensor) -> torch.Tensor:
    """[B, n]: whether the column before each one holds a real byte (False in column 0)."""
    return torch.cat((torch.zeros_like(valid[:, :1]), valid[:, :-1]), dim=1)


def chunks(
    valid: torch.Tensor, chunk_size: int | None, bytes_before: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Split [B, n] columns into chunks of `chunk_size` (one chunk when None): yields (columns, positions [B, c]),
    positions continuing `bytes_before` [B] real bytes per row."""
    length = valid.shape[1]
    step = chunk_size or max(length, 1)
    for begin in range(0, length, step):
        columns = slice(begin, begin + step)
        yield columns, row_positions(valid[:, columns], bytes_before)
        bytes_before = bytes_before + valid[:, columns].sum(1)


def patch_begins(starts: torch.Tensor, positions: torch.Tensor, begun: torch.Tensor) -> torch.Tensor:
    """Position [B, n] where each byte's patch began, from start flags [B, n] (False on padding) and row-local
    positions, continuing the open patch that began at `begun` [B]."""
    return torch.maximum(torch.where(starts, positions, -1).cummax(1).values, begun[:, None])


def move_kept_to_front(values: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept entries of each row to the front: values [B, L, ...], keep [B, L] -> ([B, K, ...], valid)."""
    counts = keep.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    slot = torch.where(keep, keep.long().cumsum(1) - 1, width)
    index = slot.view(*slot.shape, *([1] * (values.dim() - 2))).expand_as(values)
    out = values.new_zeros(values.shape[0], width + 1, *values.shape[2:]).scatter(1, index, values)
    valid = torch.arange(width, device=keep.device)[None] < counts[:, None]
    return out[:, :width], valid


def _previous(values: torch.Tensor, valid: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """values of the previous real byte in the row: shift right, filling from `carried` at the row's first byte."""
    shifted = torch.cat((carried[:, None], values[:, :-1]), dim=1)
    return torch.where(previous_is_real(valid), shifted, carried[:, None])


def _last_valid(values: torch.Tensor, valid: torch.Tensor, carried: torch.Tensor) -> torch.Tensor:
    """value at each row's last real byte, or `carried` for rows without any."""
    index = torch.arange(valid.shape[1], device=valid.device)
    last = torch.where(valid, index, -1).max(dim=1).values
    picked = values.gather(1, last.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(last >= 0, picked, carried)


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


@dataclass(frozen=True)
class PatchingRule:
    """The patch-start rule of a `BLTConfig`, applied chunk by chunk."""

    mode: str = "entropy"
    threshold: float = 1.335442066192627
    threshold_add: float | None = None
    monotonicity: bool = False
    patch_size: int = 4
    max_patch_length: int | None = None

    @classmethod
    def from_config(cls, config, **overrides) -> PatchingRule:
        values = dict(
            mode=config.patching_mode,
            threshold=float(config.patching_threshold),
            threshold_add=None if config.patching_threshold_add is None else float(config.patching_threshold_add),
            monotonicity=config.monotonicity,
            patch_size=config.patch_size,
            max_patch_length=config.max_patch_length,
        )
        values.update(overrides)
        return cls(**values)

    @property
    def needs_entropies(self) -> bool:
        """Whether the rule reads a score per byte from the patcher: next-byte entropy, or the boundary logit."""
        return self.mode in ("entropy", "boundary")

    def rule_starts_next(self, positions, ids, prev_ids, entropies, prev_entropies) -> torch.Tensor:
        """Does the rule start a patch at position p + 1, for each byte at position p. All [B, n]."""
        p = positions
        if self.mode == "byte":
            return torch.ones_like(p, dtype=torch.bool)
        if self.mode == "static":
            return p % self.patch_size == 0
        if self.mode == "space":
            return (p == 0) | (is_space_like(ids) & ~is_space_like(prev_ids)) | (ids < BYTE_OFFSET)
        if self.mode in ("boundary", "source"):
            return (p == 0) | (entropies > self.threshold)
        rise = entropies - prev_entropies
        if self.monotonicity:
            return (p <= 1) | (rise > self.threshold)
        if self.threshold_add is not None:
            return (p <= 1) | ((p >= 3) & (rise > self.threshold_add) & (entropies > self.threshold))
        return (p == 0) | (entropies > self.threshold)

    def __call__(self, positions, valid, ids, entropies, state: PatchingState, document_positions=None,
                 one_byte_step: bool = True):
        """Patch starts for a chunk of bytes continuing `state`.

        positions/valid/ids/entropies: [B, n] (entropies may be None unless the mode needs them).
        document_positions [B, n]: for rows packing several documents, each byte's position in its document (0 at
        each document's BOS); every document then starts with a patch of its own, as if it were alone.
        Returns (starts [B, n]: does each byte start a patch; next_starts [B, n]: does the position after each
        byte start one; the updated state). one_byte_step=False (`BLTConfig.fast_decoding` off) runs one byte per
        row through the chunk formulas instead of `_step`.
        """
        if entropies is None:
            entropies = torch.zeros(positions.shape, device=positions.device)
        entropies = entropies.float()
        if one_byte_step and positions.shape[1] == 1 and document_positions is None:
            return self._step(positions, valid, ids, entropies, state)
        rule_positions = positions if document_positions is None else document_positions
        prev_ids = _previous(ids, valid, state.prev_id)
        prev_entropies = _previous(entropies, valid, state.prev_entropy)
        rule_next = self.rule_starts_next(rule_positions, ids, prev_ids, entropies, prev_entropies) & valid
        if document_positions is not None:  # the byte before a document's BOS closes its patch
            next_opens = (document_positions[:, 1:] == 0) & valid[:, 1:]
            next_is_document = torch.cat((next_opens, torch.zeros_like(valid[:, :1])), dim=1)
            rule_next = rule_next | (next_is_document & valid)
        candidates = torch.where(rule_next, positions + 1, -1)
        with_state = torch.cat((state.rule_patch_start[:, None], candidates), dim=1)
        rule_start_at_next = torch.cummax(with_state, dim=1).values[:, 1:]
        next_starts = self._split_long_patches(rule_next, positions, rule_start_at_next, valid)
        starts = _previous(next_starts, valid, state.pending_start) & valid
        new_state = PatchingState(
            pending_start=_last_valid(next_starts, valid, state.pending_start),
            prev_entropy=_last_valid(entropies, valid, state.prev_entropy),
            prev_id=_last_valid(ids, valid, state.prev_id),
            rule_patch_start=_last_valid(rule_start_at_next, valid, state.rule_patch_start),
        )
        return starts, next_starts, new_state

    def _split_long_patches(self, rule_next, positions, rule_start_at_next, valid):
        """next_starts: the rule's starts plus a start every `max_patch_length` bytes from each rule start."""
        if self.max_patch_length is None:
            return rule_next
        offset = positions + 1 - rule_start_at_next
        return (rule_next | ((offset > 0) & (offset % self.max_patch_length == 0))) & valid

    def _step(self, positions, valid, ids, entropies, state: PatchingState):
        """`__call__` for one byte per row (a decoding step), in a fraction of the kernels: the previous real byte
        is the carried state, and each row's last real byte is the new one where it is real."""
        rule_next = self.rule_starts_next(
            positions, ids, state.prev_id[:, None], entropies, state.prev_entropy[:, None]
        ) & valid
        rule_start_at_next = torch.maximum(state.rule_patch_start[:, None], torch.where(rule_next, positions + 1, -1))
        next_starts = self._split_long_patches(rule_next, positions, rule_start_at_next, valid)
        real = valid[:, 0]
        new_state = PatchingState(
            pending_start=torch.where(real, next_starts[:, 0], state.pending_start),
            prev_entropy=torch.where(real, entropies[:, 0], state.prev_entropy),
            prev_id=torch.where(real, ids[:, 0], state.prev_id),
            rule_patch_start=torch.where(real, rule_start_at_next[:, 0], state.rule_patch_start),
        )
        return state.pending_start[:, None] & valid, next_starts, new_state


def starts_from_patch_lengths(patch_lengths: torch.Tensor, num_bytes: torch.Tensor) -> torch.Tensor:
    """Validated patch lengths [B, P] -> start flags [B, N + 1] over row-local positions 0..N (N = max bytes).

    Position num_bytes[b] is the row's virtual next position. Raises ValueError for lengths that cannot describe
    a causal BLT patching of the row.
    """
    if patch_lengths.dim() != 2 or patch_lengths.shape[0] != num_bytes.shape[0]:
        raise ValueError(
            f"patch_lengths must have shape [batch, num_patches] with batch {num_bytes.shape[0]}, "
            f"got {tuple(patch_lengths.shape)}"
        )
    if patch_lengths.is_floating_point() or patch_lengths.dtype == torch.bool or patch_lengths.is_complex():
        raise ValueError(f"patch_lengths must be an integer tensor, got dtype {patch_lengths.dtype}")
    lengths = patch_lengths.long().to(num_bytes.device)
    if (lengths < 0).any():
        raise ValueError(f"patch_lengths contain negative lengths: {lengths[(lengths < 0).any(1)].tolist()}")
    totals = lengths.sum(1)
    bad = (totals != num_bytes) & (totals != num_bytes + 1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"patch_lengths of row {row} sum to {int(totals[row])}, but the row has {int(num_bytes[row])} bytes: "
            f"they must sum to the number of bytes (+1 with the virtual next position)"
        )
    nonzero = lengths > 0
    later_nonzero = nonzero.flip(1).cumsum(1).flip(1) - nonzero.long() > 0
    if ((~nonzero) & later_nonzero).any():
        raise ValueError(
            "patch_lengths have a zero-length patch before a non-empty one; only trailing zeros are allowed"
        )
    has_bytes = num_bytes > 0
    if (has_bytes & (lengths[:, 0] != 1)).any():
        raise ValueError(
            "the first patch must be exactly one byte (BOS alone): each byte reads the patch before its "
            "target's patch, so a longer first patch would leak future bytes; "
            f"got first lengths {lengths[:, 0].tolist()}"
        )
    begins = lengths.cumsum(1) - lengths
    is_start = nonzero | ((begins == num_bytes[:, None]) & (totals == num_bytes)[:, None])
    max_bytes = int(num_bytes.max()) if num_bytes.numel() else 0
    starts = torch.zeros(lengths.shape[0], max_bytes + 2, dtype=torch.long, device=lengths.device)
    starts.scatter_reduce_(1, begins.clamp(max=max_bytes + 1), is_start.long(), "amax")
    return starts[:, : max_bytes + 1].bool()


def patch_lengths_from_starts(starts: torch.Tensor, num_bytes: torch.Tensor) -> torch.Tensor:
    """Start flags [B, N + 1] over positions 0..N -> lengths [B, P] summing to num_bytes + 1, zero right-padded."""
    positions = torch.arange(starts.shape[1], device=starts.device)[None]
    inside = positions <= num_bytes[:, None]
    starts = starts & inside
    patch_index = starts.long().cumsum(1) - 1
    num_patches = int(starts.sum(1).max()) if starts.numel() else 0
    lengths = torch.zeros(starts.shape[0], num_patches + 1, dtype=torch.long, device=starts.device)
    lengths.scatter_add_(1, torch.where(inside & (patch_index >= 0), patch_index, num_patches), inside.long())
    return lengths[:, :num_patches]


def compute_patch_starts(rule, ids, positions, valid, state, *, patcher=None, patcher_cache=None, documents=None,
                         document_positions=None, one_byte_step: bool = True, scores=None):
    """Run the entropy model if the rule needs it, then the rule (source patching: on the model's `scores`).
    Returns (starts, next_starts, state, entropies).

    The entropy model runs outside autocast (in its own dtype, fp32 in checkpoints loaded at any dtype), so patch
    boundaries do not depend on the precision the rest of the model runs at."""
    entropies = None
    if rule.mode == "source":  # the model's token head scores the bytes (`BLTModel._source_end_scores`)
        if scores is None:
            raise ValueError("source patching reads the model's token head after each byte: run the model (one byte "
                             "at a time, as BLTForCausalLM does), not the patching rule alone")
        entropies = scores
    elif rule.needs_entropies:
        if patcher is None:
            raise ValueError(f"{rule.mode} patching needs the patcher model, but no patcher is available")
        with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
            if rule.mode == "boundary":  # the boundary logit takes the entropy's place in the rule
                entropies = patcher.boundary_logits(ids, positions, valid, patcher_cache, segments=documents)
            else:
                logits = patcher.next_byte_logits(ids, positions, valid, patcher_cache, segments=documents)
                entropies = entropy_from_logits(logits)
    starts, next_starts, state = rule(positions, valid, ids, entropies, state, document_positions, one_byte_step)
    return starts, next_starts, state, entropies


def row_start_flags(starts, next_starts, positions, valid) -> torch.Tensor:
    """Per-byte flags [B, n] of a fresh sequence -> start flags [B, N + 1] over row-local positions 0..N."""
    batch, length = starts.shape
    flags = torch.zeros(batch, length + 2, dtype=torch.long, device=starts.device)
    dummy = length + 1
    flags.scatter_add_(1, torch.where(valid, positions, dummy), starts.long())
    flags.scatter_add_(1, torch.where(valid, positions + 1, dummy), next_starts.long())
    return flags[:, : length + 1] > 0


def documents_from_positions(position_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Document index [B, n] of each byte of rows packing documents, from per-document positions (0 at each BOS).
    Raises ValueError unless every row starts a document and positions count up by one inside each document."""
    if position_ids.shape != valid.shape:
        raise ValueError(f"position_ids must have the shape of input_ids {tuple(valid.shape)}")
    position_ids = position_ids.long()
    starts = (position_ids == 0) & valid
    prev_valid = previous_is_real(valid)
    previous = torch.cat((position_ids[:, :1], position_ids[:, :-1]), dim=1)
    continues = valid & prev_valid & ~starts
    if (continues & (position_ids != previous + 1)).any() or (valid & ~prev_valid & ~starts).any():
        raise ValueError(
            "position_ids must count 0, 1, 2, ... inside each packed document and start at 0 on each row's first byte"
        )
    return (starts.long().cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def compute_patch_lengths(input_ids, attention_mask=None, rule=None, patcher=None, chunk_size: int | None = None,
                          position_ids=None):
    """Patch lengths [B, P] (official convention) and entropies [B, n] (None unless entropy mode) of fresh rows.

    Left or right padding via `attention_mask`; packed documents via `position_ids` (0 at each document's BOS).
    Long rows run in chunks of `chunk_size` bytes through the entropy model's sliding-window cache, with the same
    result as one pass.
    """
    batch, length = input_ids.shape
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    ids = torch.where(valid, input_ids, 0)
    documents = None if position_ids is None else documents_from_positions(position_ids, valid)
    state = PatchingState.initial(batch, input_ids.device)
    cache = None
    if patcher is not None and rule.needs_entropies and chunk_size is not None and length > chunk_size:
        cache = patcher.new_cache()
    all_starts, all_next, all_entropies = [], [], []
    no_bytes_yet = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
    for chunk, positions in chunks(valid, chunk_size if cache is not None else None, no_bytes_yet):
        starts, next_starts, state, entropies = compute_patch_starts(
            rule, ids[:, chunk], positions, valid[:, chunk], state, patcher=patcher, patcher_cache=cache,
            documents=None if documents is None else documents[:, chunk],
            document_positions=None if position_ids is None else position_ids[:, chunk].long(),
        )
        all_starts.append(starts)
        all_next.append(next_starts)
        all_entropies.append(entropies)
    if not all_starts:
        return torch.ones(batch, 1, dtype=torch.long, device=input_ids.device), None
    starts, next_starts = torch.cat(all_starts, 1), torch.cat(all_next, 1)
    positions = row_positions(valid)
    lengths = patch_lengths_from_starts(row_start_flags(starts, next_starts, positions, valid), valid.sum(1))
    entropies = torch.cat(all_entropies, 1) if all_entropies[0] is not None else None
    return lengths, entropies


@dataclass
class ChunkPatches:
    """The patch arithmetic of a chunk of new bytes, counted from the patch open when the chunk began.

    starts/next_starts/valid [B, n]: does each byte start a patch, does the position after it; which are real.
    patches_before [B]: patches closed before the chunk. state: the patching rule's state after the chunk.
    rule / entropies: the rule that made the starts and the entropies it read (so that `BLTCache.crop` can redo it
    on a prefix of the chunk); None when given patch lengths made them.
    Derived: closes [B, n] (the byte ends a patch); new_patches [B] (patches closed in the chunk) and num_new
    (their max); local_patch [B, n] (0 = the patch open when the chunk began, +1 at each start); decoder_patch
    [B, n] (the patch each byte reads, in [current patch, patches closed in the chunk]).
    """

    starts: torch.Tensor
    next_starts: torch.Tensor
    valid: torch.Tensor
    patches_before: torch.Tensor
    state: PatchingState | None = None
    rule: PatchingRule | None = None
    entropies: torch.Tensor | None = None
    closes: torch.Tensor = field(init=False)
    new_patches: torch.Tensor = field(init=False)
    num_new: int = field(init=False)
    local_patch: torch.Tensor = field(init=False)
    decoder_patch: torch.Tensor = field(init=False)

    def __post_init__(self):
        valid = self.valid
        self.closes = self.next_starts & valid
        self.new_patches = self.closes.sum(1)
        self.num_new = int(self.new_patches.max()) if valid.shape[0] else 0
        if valid.shape[1] == 1:  # a decoding step: its byte belongs to the patch open when the step began
            self.local_patch, self.decoder_patch = torch.zeros_like(valid, dtype=torch.long), self.closes.long()
        else:
            first_byte = valid & ~previous_is_real(valid)
            self.local_patch = (self.starts & ~first_byte).long().cumsum(1)
            self.decoder_patch = torch.where(valid, self.local_patch + self.closes.long(), 0)

    def encoder_byte_patch(self, open_valid: torch.Tensor | None) -> torch.Tensor:
        """The closed patch (0..num_new-1, or num_new for none) of each byte of [still-open bytes from earlier
        chunks (open_valid [B, o]), this chunk's bytes]: what the encoder pools into patch vectors."""
        in_closed = self.valid & (self.local_patch < self.new_patches[:, None])
        chunk_patch = torch.where(in_closed, self.local_patch, self.num_new)
        if open_valid is None:
            return chunk_patch
        open_patch = torch.where(open_valid & (self.new_patches[:, None] > 0), 0, self.num_new)
        return torch.cat((open_patch, chunk_patch), dim=1)

    def still_open(self, open_valid: torch.Tensor | None) -> torch.Tensor:
        """Which bytes of [earlier open bytes (open_valid [B, o]), this chunk's bytes] belong to the patch still
        open after the chunk."""
        keep_chunk = self.valid & (self.local_patch == self.new_patches[:, None])
        if open_valid is None:
            return keep_chunk
        return torch.cat((open_valid & (self.new_patches[:, None] == 0), keep_chunk), dim=1)

    def at_closed_patches(self, values: torch.Tensor) -> torch.Tensor:
        """values [B, n] at the last byte of each patch closed in the chunk: [B, num_new]."""
        return move_kept_to_front(values, self.closes)[0]

    def decoder_segments(self) -> torch.Tensor:
        """Global index [B, n] of the patch each byte reads (patch-local decoder attention)."""
        return self.patches_before[:, None] + self.decoder_patch - 1
