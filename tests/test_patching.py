"""Patching rules: hand-worked examples for every mode, parity with transformers' BltPatcher, and properties
(incremental prefix stability, batch == single, valid lengths, chunked == one pass)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blt_hf import BLTPatcher, PatchingRule, compute_patch_lengths
from blt_hf.patching import ChunkPatches, PatchingState, patch_lengths_from_starts, row_start_flags
from tests.utils import random_ids, separated_threshold, text_ids, tiny_hf_config, tiny_hf_model, tiny_model

H = torch.tensor([[9.0, 0.5, 2.0, 0.2, 0.3, 1.5, 0.1, 3.0]])  # H[p]: uncertainty about byte p + 1


def lengths_for(rule, ids, entropies=None):
    batch, n = ids.shape
    valid = torch.ones_like(ids, dtype=torch.bool)
    positions = torch.arange(n).expand(batch, -1)
    starts, next_starts, _ = rule(positions, valid, ids, entropies, PatchingState.initial(batch, ids.device))
    return patch_lengths_from_starts(row_start_flags(starts, next_starts, positions, valid), valid.sum(1))[0].tolist()


@pytest.mark.parametrize(
    "rule, expected",
    [
        # byte j >= 2 starts a patch when H[j-1] > 1: j = 3, 6 and the virtual position 8
        (PatchingRule(mode="entropy", threshold=1.0), [1, 2, 3, 2, 1]),
        # rises H[j-1] - H[j-2] > 0.5 at j = 3, 6, 8; byte 2 always starts (official convention)
        (PatchingRule(mode="entropy", threshold=0.5, monotonicity=True), [1, 1, 1, 3, 2, 1]),
        # rise > 0.5 and H > 1 at j = 6, 8; byte 2 starts, byte 3 never does (official convention)
        (PatchingRule(mode="entropy", threshold=1.0, threshold_add=0.5), [1, 1, 4, 2, 1]),
        # nothing over the threshold: only BOS and the forced start at byte 1, split every 2 bytes
        (PatchingRule(mode="entropy", threshold=100.0, max_patch_length=2), [1, 2, 2, 2, 2]),
        # BOS alone, then blocks of 3 from byte 1
        (PatchingRule(mode="static", patch_size=3), [1, 3, 3, 2]),
        (PatchingRule(mode="static", patch_size=3, max_patch_length=2), [1, 2, 1, 2, 1, 2]),
        (PatchingRule(mode="byte"), [1] * 9),
    ],
)
def test_hand_worked_examples(rule, expected):
    ids = random_ids(8, seed=0)
    assert lengths_for(rule, ids, H) == expected


def test_space_rule_hand_worked_example():
    # "ab  cd.e": a patch ends at the first space-like byte of a run; the second space opens the next patch
    assert lengths_for(PatchingRule(mode="space"), text_ids("ab  cd.e")) == [1, 3, 4, 2]
    # a UTF-8 lead byte (0xC3 of "é") counts as space-like and ends a patch; continuation bytes and digits do not
    assert lengths_for(PatchingRule(mode="space"), text_ids("x1é2")) == [1, 3, 3]


def _hf_patcher_pair(window, seed):
    hf = tiny_hf_model(tiny_hf_config(window=window), seed=seed).model.patcher
    ours = BLTPatcher(tiny_model(seed=seed, patcher_config=dict(sliding_window=window)).config.patcher_config)
    ours.load_state_dict(hf.state_dict())
    return hf, ours.eval()


@pytest.mark.parametrize("length, window", [(2, 512), (40, 512), (300, 32), (700, 64)])
def test_entropies_and_patch_lengths_match_transformers_blt_patcher(length, window):
    hf, ours = _hf_patcher_pair(window, seed=length)
    ids = random_ids(length, seed=length)
    with torch.no_grad():
        ref_entropies, _, _ = hf(ids, patch_size=4, threshold=1.0)
        entropies = ours(ids).entropies
        torch.testing.assert_close(entropies, ref_entropies, atol=1e-5, rtol=0)
        threshold = separated_threshold(ref_entropies[:, 1:]) if length > 2 else 1.0
        _, ref_lengths, _ = hf(ids, patch_size=4, threshold=threshold)
        lengths, _ = compute_patch_lengths(ids, None, PatchingRule(threshold=threshold), ours)
    ref, got = ref_lengths[0], lengths[0]
    assert set((ref.cumsum(0) - ref).tolist()) == set((got.cumsum(0) - got)[got > 0].tolist())


def test_chunked_patching_equals_one_pass():
    model = tiny_model(seed=1, patcher_config=dict(sliding_window=16))
    patcher = model.model.patcher
    ids = random_ids(500, seed=1, batch=2)
    with torch.no_grad():
        whole = patcher(ids).logits
        chunked = patcher(ids, chunk_size=37).logits
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    rule = PatchingRule(threshold=separated_threshold(patcher(ids).entropies[:, 1:]), max_patch_length=5)
    one, _ = compute_patch_lengths(ids, None, rule, patcher)
    many, _ = compute_patch_lengths(ids, None, rule, patcher, chunk_size=37)
    assert torch.equal(one, many)


def test_patcher_loss_is_the_next_byte_cross_entropy_and_bits_per_byte_its_base_2():
    patcher = tiny_model(seed=2).model.patcher
    ids = random_ids(64, seed=2)
    out = patcher(ids, labels=ids)
    manual = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(out.loss, manual)
    assert abs(patcher.bits_per_byte(ids) - manual.item() / torch.log(torch.tensor(2.0)).item()) < 1e-5


# ---------------------------------------------------------------- properties
MODES = ["entropy", "monotonic", "combined", "static", "space", "byte"]
PATCHER = tiny_model(seed=3, patcher_config=dict(sliding_window=16)).model.patcher


def _rule_for(mode, ids, max_patch_length, patch_size):
    """A rule whose thresholds sit in wide gaps of this text's entropies (or rises), so float noise cannot flip."""
    with torch.no_grad():
        entropies = PATCHER(ids).entropies[0]
    rises = entropies[1:] - entropies[:-1]
    kwargs = dict(max_patch_length=max_patch_length, patch_size=patch_size)
    if mode == "entropy":
        return PatchingRule(threshold=separated_threshold(entropies), **kwargs)
    if mode == "monotonic":
        return PatchingRule(threshold=separated_threshold(rises, 0.7), monotonicity=True, **kwargs)
    if mode == "combined":
        return PatchingRule(threshold=separated_threshold(entropies, 0.3),
                            threshold_add=separated_threshold(rises, 0.4), **kwargs)
    return PatchingRule(mode=mode, **kwargs)


def _patch_lengths(rule, ids, mask=None):
    return compute_patch_lengths(ids, mask, rule, PATCHER if rule.needs_entropies else None)[0]


def _starts(lengths):
    lengths = lengths[lengths > 0]
    return (lengths.cumsum(0) - lengths).tolist()


texts = st.binary(min_size=0, max_size=120)
property_settings = settings(max_examples=40, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow])


@property_settings
@given(data=texts, cut=st.integers(0, 120), mode=st.sampled_from(MODES),
       max_patch_length=st.one_of(st.none(), st.integers(1, 6)), patch_size=st.integers(1, 5))
def test_boundaries_of_a_prefix_never_change_when_bytes_are_appended(data, cut, mode, max_patch_length, patch_size):
    ids = torch.tensor([[1] + [b + 4 for b in data]])
    prefix = ids[:, : 1 + min(cut, len(data))]
    rule = _rule_for(mode, ids, max_patch_length, patch_size)
    full_starts = _starts(_patch_lengths(rule, ids)[0])
    prefix_starts = _starts(_patch_lengths(rule, prefix)[0])
    n = prefix.shape[1]
    assert prefix_starts == [s for s in full_starts if s <= n]


@property_settings
@given(rows=st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=4), mode=st.sampled_from(MODES),
       side=st.sampled_from(["left", "right"]), max_patch_length=st.one_of(st.none(), st.integers(1, 4)))
def test_padded_batch_patches_each_row_as_alone_with_valid_lengths(rows, mode, side, max_patch_length):
    encoded = [torch.tensor([1] + [b + 4 for b in row]) for row in rows]
    rule = _rule_for(mode, torch.cat(encoded)[None], max_patch_length, 3)
    width = max(len(r) for r in encoded)
    ids = torch.full((len(rows), width), 9)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(encoded):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    batched = _patch_lengths(rule, ids, mask)
    for i, row in enumerate(encoded):
        alone = _patch_lengths(rule, row[None])[0]
        got = batched[i]
        assert got[got > 0].tolist() == alone[alone > 0].tolist()
        assert int(got.sum()) == len(row) + 1 and got[0] == 1
        nonzero = (got > 0).long()
        assert torch.equal(nonzero, torch.sort(nonzero, descending=True).values)  # zeros only trail


def test_chunk_patches_count_from_the_patch_open_when_the_chunk_began():
    # 6 bytes continuing an open patch (2 earlier bytes) after 3 closed patches: bytes 1 and 3 close patches, the
    # patch starting at byte 4 stays open
    t = lambda *rows: torch.tensor(rows)  # noqa: E731
    valid = torch.ones(1, 6, dtype=torch.bool)
    patches = ChunkPatches(t([0, 0, 1, 0, 1, 0]).bool(), t([0, 1, 0, 1, 0, 0]).bool(), valid, t(3))
    assert patches.new_patches.tolist() == [2] and patches.num_new == 2
    assert patches.local_patch.tolist() == [[0, 0, 1, 1, 2, 2]]
    assert patches.decoder_patch.tolist() == [[0, 1, 1, 2, 2, 2]]  # in [current patch, the 2 closed here]
    assert patches.decoder_segments().tolist() == [[2, 3, 3, 4, 4, 4]]  # global patch indices
    open_valid = t([True, True])
    assert patches.encoder_byte_patch(None).tolist() == [[0, 0, 1, 1, 2, 2]]  # 2 = in no closed patch
    assert patches.encoder_byte_patch(open_valid).tolist() == [[0, 0, 0, 0, 1, 1, 2, 2]]
    assert patches.still_open(open_valid).tolist() == [[False, False, False, False, False, False, True, True]]
    assert patches.at_closed_patches(t([10, 11, 12, 13, 14, 15])).tolist() == [[11, 13]]
    # a decoding step: each byte belongs to the patch open when the step began; a closing byte reads the new patch
    step = ChunkPatches(t([False], [True]), t([True], [False]), t([True], [True]), t(4, 5))
    assert step.new_patches.tolist() == [1, 0] and step.num_new == 1
    assert step.local_patch.tolist() == [[0], [0]] and step.decoder_patch.tolist() == [[1], [0]]
