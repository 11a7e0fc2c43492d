"""Logit parity with transformers' `BltForCausalLM`, the independent reference, on random tiny models whose weights
are moved into blt_hf by the production converter."""

import pytest
import torch

from blt_hf.convert.transformers_blt import from_transformers, to_transformers
from tests.utils import random_ids, separated_threshold, tiny_hf_config, tiny_hf_model

VARIANTS = {
    "gqa": dict(global_heads=4, global_kv_heads=2, local_kv_heads=2),
    "global_input_projection": dict(cross_attn_k=3, global_hidden=64),
    "decoder_cross_attention_first_layer_only": dict(decoder_cross_all=False, decoder_layers=3),
    "window_shorter_than_sequence": dict(window=16),
    "hash_3_to_8_two_functions": dict(hash_functions=2),
    "encoder_cross_attention_every_layer": dict(encoder_layers=2, encoder_cross_all=True),
}
LENGTHS = [1, 2, 5, 64, 300, 700]


def _pair(variant: str, seed: int = 0):
    hf = tiny_hf_model(tiny_hf_config(**VARIANTS[variant]), seed=seed)
    return hf, from_transformers(hf)


def _set_threshold(hf, ours, ids):
    with torch.no_grad():
        entropies, _, _ = hf.model.patcher(ids, patch_size=4, threshold=1.0)
    threshold = separated_threshold(entropies[:, 1:]) if ids.shape[1] > 2 else 1.0
    hf.config.patching_threshold = threshold
    ours.config.patching_threshold = threshold
    return threshold


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_match_transformers_blt(variant, length):
    hf, ours = _pair(variant, seed=length)
    ids = random_ids(length, seed=length)
    threshold = _set_threshold(hf, ours, ids)
    with torch.no_grad():
        _, hf_patch_lengths, _ = hf.model.patcher(ids, patch_size=4, threshold=threshold)
        given_reference = hf(ids, patch_lengths=hf_patch_lengths, labels=ids)
        given_ours = ours(ids, patch_lengths=hf_patch_lengths, labels=ids)
        torch.testing.assert_close(given_ours.logits, given_reference.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(given_ours.loss, given_reference.loss, atol=1e-5, rtol=0, equal_nan=length == 1)

        self_reference = hf(ids, labels=ids)
        self_ours = ours(ids, labels=ids, output_patch_lengths=True)
        torch.testing.assert_close(self_ours.logits, self_reference.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(self_ours.loss, self_reference.loss, atol=1e-5, rtol=0, equal_nan=length == 1)
    # same boundaries: ours in the official convention (sum = n + 1), transformers' sums to n and marks a start at
    # the virtual position n with a trailing zero-length patch
    ours_lengths, ref_lengths = self_ours.patch_lengths[0], hf_patch_lengths[0]
    assert int(ours_lengths.sum()) == length + 1 and int(ref_lengths.sum()) == length
    ours_starts = set((ours_lengths.cumsum(0) - ours_lengths)[ours_lengths > 0].tolist())
    ref_starts = set((ref_lengths.cumsum(0) - ref_lengths).tolist())
    assert ours_starts == ref_starts

def test_patching_is_variable_in_parity_inputs():
    """The parity inputs must exercise real multi-byte patches, not one byte per patch."""
    hf, ours = _pair("gqa")
    ids = random_ids(300, seed=3)
    threshold = _set_threshold(hf, ours, ids)
    with torch.no_grad():
        _, lengths, _ = hf.model.patcher(ids, patch_size=4, threshold=threshold)
    assert lengths.max() >= 3 and (lengths == 1).any()


def test_round_trip_to_transformers_and_back_is_exact():
    hf, ours = _pair("global_input_projection", seed=5)
    back = from_transformers(to_transformers(ours))
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert back.config.to_dict() == ours.config.to_dict()
