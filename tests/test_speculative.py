"""Speculative decoding: the BLTCache rollback (`crop`), self-speculative decoding (`speculative_bytes=k`) against
plain cached decoding and a full recompute, transformers' assisted and prompt-lookup decoding against greedy, the
speculative-sampling rule against the model's distribution, and the reused-cache mistake."""

import random
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from blt_hf import BLTForCausalLM, speculative
from tests.cache_checks import assert_same_cache
from tests.test_generation import MODES, build_model, left_padded_batch
from tests.utils import random_ids, text_ids

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "blt-hf-small-en"
GREEDY = dict(do_sample=False, eos_token_id=None, pad_token_id=0)


def full_recompute_greedy(model, ids, mask, new_tokens):
    """Greedy bytes by running the whole (left-padded) sequence without a cache at every step."""
    for _ in range(new_tokens):
        logits = model(ids, attention_mask=mask, use_cache=False).logits[:, -1]
        ids = torch.cat((ids, logits.argmax(-1, keepdim=True)), dim=1)
        mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
    return ids


@cache
def _model(mode, seed, fast_decoding=True):
    return build_model(mode, seed, fast_decoding=fast_decoding)


# ---------------------------------------------------------------- the rollback
ROLLBACK_CASES = [(mode, batch, seed) for mode in MODES for batch, seed in ((1, 0), (3, 1), (2, 2), (4, 3))]


@pytest.mark.parametrize("mode, batch, seed", ROLLBACK_CASES, ids=[f"{m}-b{b}-s{s}" for m, b, s in ROLLBACK_CASES])
def test_crop_after_a_rejected_draft_leaves_every_cache_field_as_plain_decoding_holds_it(mode, batch, seed):
    """A chunk of drafted bytes run through the model, then cropped to its first bytes, against feeding only
    those bytes one at a time: every cache field, and the logits of the bytes that follow."""
    model = _model(mode, seed)
    rng = random.Random(seed)
    total = 48
    ids, mask = left_padded_batch([rng.randint(2, 30) for _ in range(batch - 1)] + [total], seed)
    with torch.no_grad():
        for trial in range(4):
            prefill, chunk = rng.randint(3, 24), rng.randint(2, 12)
            rejected = rng.randint(1, chunk - 1) if trial else chunk - 1  # always one with a single byte kept
            rolled = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True).past_key_values
            plain = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True).past_key_values
            rolled.activate_past_recording()
            model(ids[:, prefill : prefill + chunk], attention_mask=mask[:, : prefill + chunk],
                  past_key_values=rolled, use_cache=True)
            rolled.crop(-rejected)
            for column in range(prefill, prefill + chunk - rejected):
                model(ids[:, column : column + 1], attention_mask=mask[:, : column + 1], past_key_values=plain,
                      use_cache=True)
            assert_same_cache(rolled, plain)
            after = prefill + chunk - rejected
            continued = [model(ids[:, after : after + 6], past_key_values=c, use_cache=True).logits
                         for c in (rolled, plain)]
            torch.testing.assert_close(continued[0], continued[1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["entropy", "static", "space"])
def test_crop_undoes_bytes_across_several_recorded_calls(mode):
    """transformers' assistant pattern: one-byte steps and chunks recorded, then cropped across call boundaries."""
    model = _model(mode, 3)
    ids = random_ids(40, seed=3, batch=2)
    with torch.no_grad():
        rolled = model(ids[:, :10], use_cache=True).past_key_values
        rolled.activate_past_recording()
        for start, stop in ((10, 11), (11, 12), (12, 17), (17, 18), (18, 22)):
            model(ids[:, start:stop], past_key_values=rolled, use_cache=True)
        rolled.crop(-8)  # all of the last two calls and 3 bytes of the 5-byte chunk
        plain = model(ids[:, :14], use_cache=True).past_key_values
        assert_same_cache(rolled, plain)
        with pytest.raises(ValueError, match="activate_past_recording"):
            rolled.crop(-1)  # the record is spent


def test_crop_to_a_length_keeps_that_many_columns_and_snapshot_restore_is_exact():
    model = _model("entropy", 5)
    ids = random_ids(30, seed=5, batch=2)
    with torch.no_grad():
        cache = model(ids[:, :12], use_cache=True).past_key_values
        snapshot = cache.snapshot()
        cache.activate_past_recording()
        model(ids[:, 12:20], past_key_values=cache, use_cache=True)
        cache.crop(15)  # legacy form: the number of columns to keep
        assert_same_cache(cache, model(ids[:, :15], use_cache=True).past_key_values)
        for column in range(15, 28):  # long enough for the window caches to relocate
            model(ids[:, column : column + 1], past_key_values=cache, use_cache=True)
        cache.restore(snapshot)
        assert_same_cache(cache, model(ids[:, :12], use_cache=True).past_key_values)


# ---------------------------------------------------------------- self-speculative decoding
GREEDY_CASES = [(mode, batch, seed) for mode in MODES for batch, seed in ((1, 0), (2, 1), (3, 2), (3, 3), (4, 7))]
GREEDY_PARAMS = [pytest.param(m, b, s, True, id=f"{m}-b{b}-s{s}") for m, b, s in GREEDY_CASES] + [
    pytest.param(m, 3, 3, False, id=f"{m}-b3-s3-reference") for m in MODES
]


@pytest.mark.parametrize("mode, batch, seed, fast_decoding", GREEDY_PARAMS)
def test_greedy_self_speculative_decoding_equals_plain_cached_decoding_and_a_full_recompute(mode, batch, seed,
                                                                                              fast_decoding):
    """Every k (and the adaptive schedule), left-padded rows; seeds 3 and 7 use the Block Transformer's
    patch-local decoder, seeds 1 and 7 max_patch_length."""
    model = _model(mode, seed, fast_decoding)
    rng = random.Random(seed)
    ids, mask = left_padded_batch([rng.randint(2, 14) for _ in range(batch - 1)] + [14], seed)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=36, **GREEDY)
        reference = full_recompute_greedy(model, ids, mask, 36)
        assert torch.equal(plain, reference)
        for k in (1, 3, 8, "auto") if fast_decoding else (3,):
            spec = model.generate(ids, attention_mask=mask, max_new_tokens=36, speculative_bytes=k, **GREEDY)
            assert torch.equal(spec, plain), f"k={k}"


def test_rows_of_a_batch_accept_different_numbers_of_bytes_and_still_match_plain_decoding():
    model = _model("entropy", 4)
    ids, mask = left_padded_batch([5, 17, 11, 9], seed=4)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=50, **GREEDY)
        spec = model.generate(ids, attention_mask=mask, max_new_tokens=50, speculative_bytes=6, **GREEDY)
    assert torch.equal(spec, plain)
    stats = model.speculative_stats
    assert stats["uneven_steps"] > 0 and stats["accepted"] > 0 and stats["new_bytes"] == 50


@pytest.mark.parametrize("mode", ["entropy", "static"])
def test_speculative_generate_returns_the_cache_plain_generate_returns(mode):
    model = _model(mode, 6)
    ids, mask = left_padded_batch([8, 15, 12], seed=6)
    with torch.no_grad():
        outputs = [model.generate(ids, attention_mask=mask, max_new_tokens=33, return_dict_in_generate=True,
                                  output_scores=True, **GREEDY, **extra)
                   for extra in ({}, {"speculative_bytes": 5})]
    plain, spec = outputs
    assert torch.equal(spec.sequences, plain.sequences)
    assert len(spec.scores) == len(plain.scores) == 33
    torch.testing.assert_close(torch.stack(spec.scores), torch.stack(plain.scores), atol=1e-4, rtol=0)
    assert_same_cache(spec.past_key_values, plain.past_key_values)


def test_speculative_decoding_stops_rows_at_eos_and_honours_logits_processors_like_plain_decoding():
    model = _model("space", 8)
    ids, mask = left_padded_batch([9, 21, 14], seed=8)
    options = dict(do_sample=False, pad_token_id=0, repetition_penalty=1.3, no_repeat_ngram_size=3)
    with torch.no_grad():
        free = model.generate(ids, attention_mask=mask, max_new_tokens=40, eos_token_id=None, **options)
        continuation = free[:, ids.shape[1] :]
        eos = sorted({int(continuation[0, 4]), int(continuation[2, 15])})
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=40, eos_token_id=eos, **options)
        spec = model.generate(ids, attention_mask=mask, max_new_tokens=40, eos_token_id=eos, speculative_bytes=4,
                              **options)
    assert torch.equal(spec, plain)
    assert (plain[:, -1] == 0).any()  # some row stopped early and was padded


def test_without_an_eos_rows_stopped_by_a_criterion_keep_their_greedy_bytes_as_in_plain_decoding():
    """transformers pads finished rows only when an EOS criterion is present; without one a row stopped by another
    criterion keeps decoding until every row has stopped, and speculation must give it the same greedy bytes."""
    from transformers import StoppingCriteriaList

    from tests.test_generation import StopAfterByte

    model = _model("entropy", 5)
    ids, mask = left_padded_batch([9, 5, 12], seed=5)
    options = dict(do_sample=False, pad_token_id=0, eos_token_id=None, max_new_tokens=30)
    with torch.no_grad():
        free = model.generate(ids, attention_mask=mask, **options)
        stop = StoppingCriteriaList([StopAfterByte(int(free[0, ids.shape[1] + 8]))])
        plain = model.generate(ids, attention_mask=mask, stopping_criteria=stop, **options)
        spec = model.generate(ids, attention_mask=mask, stopping_criteria=stop, speculative_bytes=3, **options)
    assert torch.equal(spec, plain)
    assert torch.equal(plain, free[:, : plain.shape[1]])  # nothing padded: row 0 went on after its stop


def test_greedy_self_speculative_decoding_on_the_shipped_model_equals_plain_decoding():
    model = BLTForCausalLM.from_pretrained(SHIPPED).eval()
    texts = ["The quick brown fox jumps over the lazy dog. ", "Permission is hereby granted, free of charge, to "]
    rows = [text_ids(t)[0] for t in texts]
    ids, mask = torch.zeros(2, 60, dtype=torch.long), torch.zeros(2, 60, dtype=torch.long)
    for row, r in enumerate(rows):
        ids[row, 60 - len(r) :], mask[row, 60 - len(r) :] = r, 1
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=64, **GREEDY)
        for k in (4, 8):
            assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=64, speculative_bytes=k,
                                              **GREEDY), plain)
            assert model.speculative_stats["accepted"] > model.speculative_stats["drafted"] // 3


def test_speculative_bytes_from_the_generation_config_and_clear_errors():
    model = _model("static", 9)
    ids = random_ids(10, seed=9)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=20, **GREEDY)
        model.generation_config.speculative_bytes = 3
        try:
            assert torch.equal(model.generate(ids, max_new_tokens=20, **GREEDY), plain)
            assert model.speculative_stats["verify_passes"] < 20
        finally:
            del model.generation_config.speculative_bytes
        for bad, message in [(dict(speculative_bytes=0.5), "positive int"),
                             (dict(speculative_bytes=2, num_beams=2), "num_beams"),
                             (dict(speculative_bytes=2, prompt_lookup_num_tokens=3), "cannot be combined"),
                             (dict(speculative_bytes=2, use_cache=False), "needs the cache")]:
            with pytest.raises(ValueError, match=message):
                model.generate(ids, max_new_tokens=5, **GREEDY, **bad)


# ---------------------------------------------------------------- speculative sampling
def _sample_pairs(model, prompt, rows, acceptance=None, monkeypatch=None):
    if acceptance is not None:
        monkeypatch.setattr(speculative, "speculative_acceptance", acceptance)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(prompt.expand(rows, -1), max_new_tokens=3, do_sample=True, temperature=0.6,
                             top_k=0, speculative_bytes=2, eos_token_id=None, pad_token_id=0)
    return out[:, prompt.shape[1] : prompt.shape[1] + 2]


def _chi_square_p_value(model, prompt, pairs) -> float:
    """Chi-square test of the sampled (first, second) new bytes against the model's exact joint probabilities
    (at the same temperature); cells with small expected counts are pooled."""
    with torch.no_grad():
        first = torch.softmax(model(prompt).logits[0, -1] / 0.6, dim=-1)
        extended = torch.cat((prompt.expand(first.shape[0], -1), torch.arange(first.shape[0])[:, None]), dim=1)
        second = torch.softmax(model(extended).logits[:, -1] / 0.6, dim=-1)
    joint = (first[:, None] * second).flatten().double()
    counts = torch.bincount(pairs[:, 0] * first.shape[0] + pairs[:, 1], minlength=joint.numel()).double()
    expected = joint * pairs.shape[0]
    big = expected >= 5
    observed = torch.cat((counts[big], counts[~big].sum()[None]))
    expected = torch.cat((expected[big], expected[~big].sum()[None]))
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = observed.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(statistic / 2)))


def _sampling_model():
    # byte patching: every byte closes a patch, so every draft reads a stale patch and differs from the model
    return _model("byte", 2)


def test_speculative_sampling_follows_the_model_distribution():
    model, prompt = _sampling_model(), random_ids(6, seed=2)
    pairs = _sample_pairs(model, prompt, 6000)
    assert model.speculative_stats["uneven_steps"] > 0  # some rows kept their draft, others drew a replacement
    assert _chi_square_p_value(model, prompt, pairs) > 1e-3


def test_the_distribution_check_rejects_a_biased_acceptance_rule(monkeypatch):
    """The same check fails for a rule that keeps every draft (the draft model's distribution) and for one that
    resamples rejected bytes from p instead of max(p - q, 0)."""
    model, prompt = _sampling_model(), random_ids(6, seed=2)
    original = speculative.speculative_acceptance

    def keep_all(target, draft, drafts):
        accepted, replacement = original(target, draft, drafts)
        return torch.full_like(accepted, drafts.shape[1]), replacement

    def resample_from_p(target, draft, drafts):
        accepted, _ = original(target, draft, drafts)
        return accepted, torch.multinomial(target.flatten(0, 1), 1).view(drafts.shape[0], -1)

    for biased in (keep_all, resample_from_p):
        pairs = _sample_pairs(model, prompt, 6000, biased, monkeypatch)
        assert _chi_square_p_value(model, prompt, pairs) < 1e-3, biased.__name__


# ---------------------------------------------------------------- transformers' assisted and prompt-lookup paths
def _tiny_byte_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("mode", ["entropy", "static", "space", "byte"])
def test_assisted_decoding_with_the_model_itself_or_a_small_byte_llama_equals_greedy(mode):
    model = _model(mode, 10 + MODES.index(mode))
    ids = random_ids(15, seed=10)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=40, **GREEDY)
        for assistant in (model, _tiny_byte_llama()):
            assisted = model.generate(ids, max_new_tokens=40, assistant_model=assistant, **GREEDY)
            assert torch.equal(assisted, plain), type(assistant).__name__


@pytest.mark.parametrize("mode", ["entropy", "space"])
def test_prompt_lookup_decoding_equals_greedy(mode):
    model = _model(mode, 12)
    ids = text_ids("abcabcabd abcabcabd abcabcabd abcab")  # repeats, so that lookups find candidates
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=40, **GREEDY)
        looked_up = model.generate(ids, max_new_tokens=40, prompt_lookup_num_tokens=4, **GREEDY)
    assert torch.equal(looked_up, plain)


# ---------------------------------------------------------------- the reused-cache mistake
def test_generate_refuses_a_cache_that_already_saw_the_prompt_or_other_bytes():
    model = _model("entropy", 13)
    ids = random_ids(20, seed=13)
    with torch.no_grad():
        first = model.generate(ids, max_new_tokens=10, return_dict_in_generate=True, **GREEDY)
        cache = first.past_key_values
        with pytest.raises(ValueError, match="already seen"):
            model.generate(ids, past_key_values=cache, max_new_tokens=10, **GREEDY)
        other = first.sequences.clone()
        other[:, 25] = (other[:, 25] - 4 + 1) % 256 + 4  # a byte the cache saw differs
        with pytest.raises(ValueError, match="does not continue"):
            model.generate(torch.cat((other, ids[:, :3]), dim=1), past_key_values=cache, max_new_tokens=5, **GREEDY)
        # the right use: the sequence the cache was built on, plus new bytes
        longer = torch.cat((first.sequences, ids[:, 1:4]), dim=1)
        continued = model.generate(longer, past_key_values=cache, max_new_tokens=10, **GREEDY)
        fresh = model.generate(longer, max_new_tokens=10, **GREEDY)
    assert torch.equal(continued, fresh)


# ---------------------------------------------------------------- the fused layers of a verification pass
def test_short_chunks_continuing_a_cache_run_fused_layers_equal_to_the_layer_formula():
    """A verification pass runs the local stacks' layers fused (`decoding.fused_layers_eligible`): chunks of 2..7
    bytes after a prefill, against the layer's formula in float64 (GQA, norms away from 1)."""
    from blt_hf import decoding
    from blt_hf.cache import SlidingWindowCache
    from blt_hf.layers import BLTRotaryEmbedding, BLTTransformerLayer
    from blt_hf.masks import LocalAttentionPlan

    class RopeConfig:
        head_dim = 8
        rope_parameters = {"rope_theta": 10000.0}

    torch.manual_seed(0)
    layer = BLTTransformerLayer(32, 4, 2, 48, 1e-5, layer_idx=0).eval()
    with torch.no_grad():
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.add_(torch.randn(32) * 0.3)
    rope, cache = BLTRotaryEmbedding(RopeConfig()), SlidingWindowCache(1, None)
    x = torch.randn(2, 3 + 2 + 7 + 4, 32)
    outputs, fused_chunks = [], 0
    with torch.no_grad():
        for begin, end in ((0, 3), (3, 5), (5, 12), (12, 16)):
            chunk = x[:, begin:end]
            plan = LocalAttentionPlan(None, torch.ones(chunk.shape[:2], dtype=torch.bool), cache=cache)
            rotations = rope(torch.arange(begin, end).expand(2, -1))
            if decoding.fused_layers_eligible(chunk, cache):
                fused_chunks += 1
                outputs.append(decoding.fast_layer_step(layer, chunk, rotations, plan))
            else:
                outputs.append(layer(chunk, rotations, plan))
    assert fused_chunks == 4 and cache.step_weights[0] is not None
    torch.testing.assert_close(torch.cat(outputs, 1).double(), decoding.naive_layer(layer, x), atol=1e-5, rtol=0)
    assert not decoding.fused_layers_eligible(torch.zeros(1, decoding.FUSED_CHUNK_BYTES + 1, 32), cache)


def test_a_streamer_receives_the_speculative_bytes_as_they_are_accepted():
    import io
    from contextlib import redirect_stdout

    from transformers import TextStreamer

    from blt_hf import BLTTokenizer

    model, tokenizer = _model("space", 14), BLTTokenizer()
    ids = torch.tensor([tokenizer.encode("Streaming bytes:")])
    stream = io.StringIO()
    with torch.no_grad(), redirect_stdout(stream):
        out = model.generate(ids, max_new_tokens=30, speculative_bytes=4,
                             streamer=TextStreamer(tokenizer, skip_special_tokens=True), **GREEDY)
    assert torch.equal(out, model.generate(ids, max_new_tokens=30, **GREEDY))
    assert stream.getvalue().strip() == tokenizer.decode(out[0], skip_special_tokens=True).strip()


def test_generation_never_copies_the_global_weights_into_fused_step_weights(monkeypatch):
    """Decoding fuses the small local layers' weights once per generation, never the global transformer's: copying
    those costs more at the first patch than fused steps would save (`global_transformer.py`). The few patches a
    step or a verification closes still match the full recompute (ragged rows continuing the patch cache)."""
    from blt_hf import decoding
    from blt_hf.cache import PatchKVCache
    from blt_hf.masks import PatchAttentionPlan

    model = _model("entropy", 0)
    global_layers = set(map(id, model.model.global_transformer.layers))
    fused = []
    real_fuse = decoding.fuse_step_weights
    monkeypatch.setattr(decoding, "fuse_step_weights", lambda layer: fused.append(id(layer)) or real_fuse(layer))
    ids = torch.randint(4, 260, (2, 12))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=12, **GREEDY)
    assert fused and not global_layers & set(fused)  # the local layers did fuse

    global_transformer, config = model.model.global_transformer, model.config
    torch.manual_seed(0)
    calls = [(torch.randn(2, 3, config.global_input_size), torch.tensor([3, 2])),
             (torch.randn(2, 2, config.global_input_size), torch.tensor([1, 2])),
             (torch.randn(2, 1, config.global_input_size), torch.tensor([1, 1]))]
    cache = PatchKVCache(config.global_config.num_hidden_layers, 2, "cpu")
    history = [[], []]
    with torch.no_grad():
        for vectors, counts in calls:
            states = global_transformer(vectors, PatchAttentionPlan(vectors.shape[1], counts, cache))[0]
            for row in range(2):
                history[row].append(vectors[row, : counts[row]])
                full = torch.cat(history[row])[None]
                recomputed = global_transformer(full, PatchAttentionPlan(full.shape[1], torch.tensor([full.shape[1]]),
                                                                         None))[0]
                torch.testing.assert_close(states[row, : counts[row]], recomputed[0, -int(counts[row]):],
                                           atol=1e-5, rtol=0)
    assert torch.equal(cache.lengths, torch.tensor([5, 5]))


def test_steps_rolled_back_to_a_prefill_that_filled_the_window_buffers_write_in_place():
    """A prefill as long as the windows leaves room for the next byte: steps taken again and again from its
    snapshot (as speculative decoding does) write into the same buffers instead of moving every window cache's live
    span at each step."""
    model = BLTForCausalLM.from_pretrained(SHIPPED).eval()  # windows of 256 bytes
    ids = random_ids(256, seed=5)
    with torch.no_grad():
        cache = model(ids[:, :-1], use_cache=True).past_key_values  # 255 bytes: every window's live span is full
        snapshot = cache.snapshot()
        windows = (cache.patcher, cache.encoder, cache.decoder)
        buffers = [window.keys[0] for window in windows]
        for _ in range(3):
            cache.restore(snapshot)
            model(ids[:, -1:], past_key_values=cache, use_cache=True)
            assert all(window.keys[0] is buffer for window, buffer in zip(windows, buffers, strict=True))
