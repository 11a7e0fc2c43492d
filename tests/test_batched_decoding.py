"""Batched decoding: each row of a ragged batch generates exactly what it generates alone while the global transformer
runs only on the rows that close a patch; window caches hold the window (not the prompt) after prefill; memory stays
flat over a long batched generation."""

import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from blt_hf import BLTCache
from blt_hf.cache import PatchKVCache
from blt_hf.modeling_blt_hf import BLTModel
from tests.test_generation import build_model, left_padded_batch

SETTINGS = {
    "entropy": dict(mode="entropy", extra=dict(max_patch_length=None)),
    "static": dict(mode="static", extra=dict(patch_size=4, max_patch_length=None)),
    "patch_local": dict(mode="static", extra=dict(patch_size=4, max_patch_length=None,
                                                  decoder_config=dict(sliding_window=12, patch_local_attention=True))),
    "entropy_patch_local": dict(mode="entropy", extra=dict(max_patch_length=5, decoder_config=dict(
        sliding_window=9, patch_local_attention=True))),
}


def build(setting, seed=21):
    return build_model(SETTINGS[setting]["mode"], seed, **SETTINGS[setting]["extra"])


def count_gathered_steps(monkeypatch):
    """Count decoding steps that ran the global transformer on a subset of rows, and the rows they ran on."""
    seen = {"steps": 0, "rows": 0}
    original = PatchKVCache.rows

    def rows(self, index):
        seen["steps"] += 1
        seen["rows"] += index.numel()
        return original(self, index)

    monkeypatch.setattr(PatchKVCache, "rows", rows)
    return seen


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_ragged_batch_rows_generate_what_they_generate_alone_with_early_eos(setting, monkeypatch):
    model = build(setting)
    ids, mask = left_padded_batch([7, 26, 15, 19], seed=21)
    with torch.no_grad():
        free = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, eos_token_id=None)
    continuation = free[:, ids.shape[1]:]
    eos = sorted({int(continuation[0, 5]), int(continuation[2, 17])})  # rows stop at different steps
    gathered = count_gathered_steps(monkeypatch)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, eos_token_id=eos)
    assert gathered["steps"] > 0  # some steps ran the global model on some rows only
    lengths = []
    for row in range(ids.shape[0]):
        with torch.no_grad():
            alone = model.generate(ids[row:row + 1, mask[row].bool()], max_new_tokens=40, do_sample=False,
                                   eos_token_id=eos)
        expected = alone[0, int(mask[row].sum()):]
        new = batched[row, ids.shape[1]:]
        assert torch.equal(new[:len(expected)], expected), f"row {row}"
        assert (new[len(expected):] == model.config.pad_token_id).all()
        lengths.append(len(expected))
    assert min(lengths) < max(lengths)  # rows finished at different steps


def greedy_steps(model, cache, last, mask, steps):
    """Greedy one-byte steps continuing `cache` from the bytes `last` [B, 1]: the new bytes [B, steps]."""
    out = []
    for _ in range(steps):
        mask = torch.cat((mask, torch.ones_like(last)), dim=1)
        logits = model(last, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
        last = logits.argmax(-1, keepdim=True)
        out.append(last)
    return torch.cat(out, dim=1), mask


@pytest.mark.parametrize("setting", ["entropy", "patch_local"])
def test_a_reordered_cache_continues_each_row_as_its_source_row_alone(setting):
    model = build(setting, seed=22)
    ids, mask = left_padded_batch([11, 24, 17], seed=22)
    with torch.no_grad():
        cache = model(ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True).past_key_values
        first, mask_now = greedy_steps(model, cache, ids[:, -1:], mask[:, :-1], 9)  # open patches, mid-patch rows
        order = torch.tensor([2, 0, 0, 1])
        cache.reorder_cache(order)
        rest, _ = greedy_steps(model, cache, first[order, -1:], mask_now[order], 25)
        for row, source in enumerate(order.tolist()):
            alone = model.generate(ids[source:source + 1, mask[source].bool()], max_new_tokens=9 + 25,
                                   do_sample=False, eos_token_id=None)
            expected = alone[0, int(mask[source].sum()):]
            assert torch.equal(torch.cat((first[source], rest[row])), expected), f"row {row}"


WINDOWS = dict(patcher_config=dict(sliding_window=20), encoder_config=dict(sliding_window=18),
               decoder_config=dict(sliding_window=16))


@pytest.mark.parametrize("prompt", [30, 300])
def test_window_cache_buffers_after_prefill_hold_the_window_not_the_prompt(prompt, monkeypatch):
    model = build_model("entropy", 23, max_patch_length=None, **WINDOWS)
    ids, mask = left_padded_batch([prompt, prompt - 7, 9], seed=23)
    chunk_lengths = []
    original = BLTModel.forward

    def forward(self, input_ids=None, **kwargs):
        chunk_lengths.append(input_ids.shape[1])
        return original(self, input_ids, **kwargs)

    monkeypatch.setattr(BLTModel, "forward", forward)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        full = model(ids, attention_mask=mask, use_cache=False).logits[:, -1]
    torch.testing.assert_close(out.logits[:, -1], full, atol=1e-4, rtol=0)
    assert max(chunk_lengths[:-1]) <= 20  # the prompt ran in chunks of the largest window
    cache = out.past_key_values
    for name, window in (("patcher", 20), ("encoder", 18), ("decoder", 16)):
        buffers = getattr(cache, name)
        bound = window - 1
        assert buffers.capacity == bound + max(16, bound // 8), name  # whatever the prompt's length
        assert buffers.keys[0].shape[2] == buffers.capacity


def test_patch_local_decoder_cache_is_sized_by_the_longest_patch():
    model = build("patch_local", seed=24)  # static patches of 4, decoder window 12
    ids, mask = left_padded_batch([40, 33], seed=24)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=None,
                             return_dict_in_generate=True)
    decoder = out.past_key_values.decoder
    assert decoder.bound == 4 and decoder.capacity == 4 + 16 < model.config.decoder_config.sliding_window - 1 + 16


class CacheRecorder(StoppingCriteria):
    """Records the bytes each part of a (user-passed) cache holds after every step; never stops."""

    def __init__(self, cache):
        self.cache, self.records = cache, []

    def __call__(self, input_ids, scores, **kwargs):
        self.records.append((self.cache.memory_bytes(), int(self.cache.num_patches.max())))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


@pytest.mark.parametrize("setting", ["entropy", "patch_local"])
def test_memory_stays_flat_over_a_long_batched_generation(setting):
    model = build(setting, seed=25)
    ids, mask = left_padded_batch([60, 45, 12, 33], seed=25)
    cache = BLTCache(model.config, ids.shape[0], ids.device)
    recorder = CacheRecorder(cache)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, past_key_values=cache, max_new_tokens=500, min_new_tokens=500,
                       do_sample=True, top_k=40, eos_token_id=None, stopping_criteria=StoppingCriteriaList([recorder]))
    assert len(recorder.records) == 500
    for part in ("patcher", "encoder", "decoder"):  # window caches: the same bytes from step 50 to the last
        assert len({memory[part] for memory, _ in recorder.records[50:]}) == 1, part
    for memory, patches in recorder.records:  # the global cache grows with the patches only (at most 1.25x)
        per_patch = 2 * 2 * model.config.global_config.hidden_size * 4 * ids.shape[0]  # k + v, 2 layers, fp32
        assert memory["global"] <= per_patch * max(patches + 1 + (patches + 1) // 4, 16)
        assert memory["patch_states"] < 64 * 1024
