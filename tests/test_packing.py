"""Rows packing several documents (position_ids restart at each BOS): every document sees only itself."""

import pytest
import torch

from blt_hf import PatchingRule, compute_patch_lengths
from tests.test_generation import build_model
from tests.utils import random_ids

DOCUMENT_LENGTHS = [30, 7, 2, 50]


def packed_row(seed=0, pad=5):
    docs = [random_ids(n, seed=seed + i)[0] for i, n in enumerate(DOCUMENT_LENGTHS)]
    ids = torch.cat(docs + [torch.zeros(pad, dtype=torch.long)])[None]
    positions = torch.cat([torch.arange(len(d)) for d in docs] + [torch.zeros(pad, dtype=torch.long)])[None]
    mask = torch.ones_like(ids)
    mask[:, ids.shape[1] - pad :] = 0
    return docs, ids, positions, mask


@pytest.mark.parametrize("mode", ["entropy", "monotonic", "static", "space", "byte"])
@pytest.mark.parametrize("seed", [0, 3])
def test_each_packed_document_gets_its_logits_alone(mode, seed):
    """Every byte whose target lies in its own document gets exactly its logits alone. (A document's last byte
    targets the next document's BOS, a target the collator masks; its patch is closed by the boundary, so it reads
    that patch.)"""
    model = build_model(mode, seed, decoder_config=dict(sliding_window=5 + seed, patch_local_attention=seed == 3))
    docs, ids, positions, mask = packed_row(seed)
    with torch.no_grad():
        packed = model(ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[0]
        offset = 0
        for index, doc in enumerate(docs):
            alone = model(doc[None], use_cache=False).logits[0]
            own_targets = len(doc) if index == len(docs) - 1 else len(doc) - 1
            torch.testing.assert_close(packed[offset : offset + own_targets], alone[:own_targets], atol=1e-4, rtol=0)
            offset += len(doc)


@pytest.mark.parametrize("mode", ["entropy", "static", "space"])
def test_packed_patches_are_each_documents_patches_and_feed_back_exactly(mode):
    model = build_model(mode, 1)
    docs, ids, positions, mask = packed_row(1)
    rule = PatchingRule.from_config(model.config)
    lengths, _ = compute_patch_lengths(ids, mask, rule, model.model.patcher, position_ids=positions)
    expected, offset = set(), 0
    for doc in docs:
        doc_lengths, _ = compute_patch_lengths(doc[None], None, rule, model.model.patcher)
        doc_lengths = doc_lengths[0][doc_lengths[0] > 0]
        expected |= {offset + s for s in (doc_lengths.cumsum(0) - doc_lengths).tolist() if s < len(doc)}
        offset += len(doc)
    got = lengths[0][lengths[0] > 0]
    starts = set((got.cumsum(0) - got).tolist())
    assert {s for s in starts if s < offset} == expected
    with torch.no_grad():
        given = model(ids, attention_mask=mask, position_ids=positions, patch_lengths=lengths, use_cache=False)
        own = model(ids, attention_mask=mask, position_ids=positions, use_cache=False)
    torch.testing.assert_close(given.logits, own.logits, atol=0, rtol=0)


def test_patcher_alone_keeps_packed_documents_apart():
    patcher = build_model("entropy", 2).model.patcher
    docs, ids, positions, mask = packed_row(2)
    with torch.no_grad():
        packed = patcher(ids, mask, position_ids=positions).logits[0]
        offset = 0
        for doc in docs:
            torch.testing.assert_close(packed[offset : offset + len(doc)], patcher(doc[None]).logits[0],
                                       atol=1e-5, rtol=0)
            offset += len(doc)


def test_patches_spanning_documents_and_broken_positions_are_rejected():
    model = build_model("byte", 4)
    _, ids, positions, mask = packed_row(4, pad=0)
    spanning = torch.tensor([[1, 1, 28, 2, 5, 1, 1, 1, 49, 1]])  # 28 + 2 runs across the first document's end
    with pytest.raises(ValueError, match="span two packed documents"):
        model(ids, position_ids=positions, patch_lengths=spanning, use_cache=False)
    broken = positions.clone()
    broken[0, 10] = 3
    with pytest.raises(ValueError, match="position_ids must count"):
        model(ids, position_ids=broken, use_cache=False)
    with pytest.raises(ValueError, match="without a cache"):
        model(ids, position_ids=positions, use_cache=True)
