"""Incremental decoding through one BLTCache: teacher-forced exactness against the full forward, generate() with
and without the cache against a plain full-recompute loop, GenerationMixin features, bounded memory."""

import io
import random
from contextlib import redirect_stdout

import pytest
import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextStreamer

from blt_hf import BLTCache, BLTTokenizer
from tests.utils import calibrate_patching, random_ids, tiny_model

MODES = ["entropy", "monotonic", "combined", "static", "space", "byte", "boundary"]


def vocabulary_of_random_rows(seed: int) -> list[bytes]:
    """A byte-ified model's vocabulary for random test rows: every single byte, and the 2- and 3-grams of the rows
    `left_padded_batch` makes for this seed, so that longer tokens are found inside patches too."""
    strings = {bytes([b]) for b in range(256)}
    for row in range(4):
        data = bytes(int(i) - 4 for i in random_ids(40, seed=seed * 10 + row)[0, 1:])
        strings |= {data[i : i + n] for n in (2, 3) for i in range(len(data) - n + 1)}
    return sorted(strings)


def build_model(mode, seed, **extra):
    """A tiny model with short windows (so caches trim) and thresholds away from this seed's entropies.
    "boundary": the byte-ified setting (boundary head, source vocabulary rows of a random vocabulary)."""
    vocabulary = vocabulary_of_random_rows(seed) if mode == "boundary" else None
    overrides = dict(
        patching_mode="static" if mode == "static" else mode if mode in ("space", "byte", "boundary") else "entropy",
        has_patcher=True,
        patch_size=2 + seed % 3,
        monotonicity=mode == "monotonic",
        max_patch_length=[None, 3, 7][seed % 3],
        encoder_config=dict(sliding_window=6, num_hidden_layers=1 + seed % 2, cross_attn_all_layers=seed % 2 == 1),
        decoder_config=dict(sliding_window=5 + seed % 4, patch_local_attention=seed % 4 == 3),
        patcher_config=dict(sliding_window=7, boundary_head=mode == "boundary"),
    )
    if vocabulary is not None:
        overrides.update(vocab_embedding_rows=len(vocabulary) + 1, vocab_embedding_max_bytes=3)
    overrides.update(extra)
    model = tiny_model(seed=seed, **overrides)
    if vocabulary is not None:
        model.model.encoder_vocab_embedding.set_vocabulary(vocabulary + [None], len(vocabulary))
    calibrate_patching(model, mode, [random_ids(200, seed=1000 + seed)[0]], entropy_quantile=0.4, rise_quantile=0.8)
    return model


def left_padded_batch(lengths, seed):
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = random_ids(n, seed=seed * 10 + row)[0]
        mask[row, width - n :] = 1
    return ids, mask


CASES = [(mode, batch, seed) for mode in MODES for batch in (1, 2, 3, 4) for seed in range(9)]
# fast_decoding=False (the plain formulas everywhere) on a subset: every mode, batch 1-4 with left padding, and
# seeds 0-3, which cover every max_patch_length, one and all encoder cross layers and the patch-local decoder
REFERENCE_CASES = [(mode, batch, seed) for mode in MODES for batch, seed in ((1, 0), (2, 1), (3, 2), (4, 3))]
PARITY_PARAMS = [pytest.param(m, b, s, True, id=f"{m}-b{b}-s{s}") for m, b, s in CASES] + [
    pytest.param(m, b, s, False, id=f"{m}-b{b}-s{s}-reference") for m, b, s in REFERENCE_CASES
]


@pytest.mark.parametrize("mode, batch, seed, fast_decoding", PARITY_PARAMS)
def test_incremental_logits_equal_the_full_forward(mode, batch, seed, fast_decoding):
    model = build_model(mode, seed, fast_decoding=fast_decoding)
    rng = random.Random(seed)
    total = rng.randint(12, 36)
    ids, mask = left_padded_batch([rng.randint(2, total) for _ in range(batch - 1)] + [total], seed)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
        cache, pieces, position = None, [], 0
        prefill = rng.randint(1, total - 1)
        steps = [prefill] + [rng.choice([1, 1, 1, 2, 5]) for _ in range(total)]
        for step in steps:
            if position >= total:
                break
            stop = min(total, position + step)
            out = model(ids[:, position:stop], attention_mask=mask[:, :stop], past_key_values=cache, use_cache=True)
            cache, position = out.past_key_values, stop
            pieces.append(out.logits)
    incremental = torch.cat(pieces, dim=1)
    real = mask.bool()
    torch.testing.assert_close(incremental[real], full[real], atol=1e-4, rtol=0)
    assert cache.get_seq_length() == total


def full_recompute_greedy(model, ids, new_tokens):
    for _ in range(new_tokens):
        logits = model(ids, use_cache=False).logits[:, -1]
        ids = torch.cat((ids, logits.argmax(-1, keepdim=True)), dim=1)
    return ids


@pytest.mark.parametrize("fast_decoding", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_generate_with_cache_equals_without_and_a_full_recompute_loop(mode, fast_decoding):
    model = build_model(mode, seed=4, fast_decoding=fast_decoding)
    ids = random_ids(17, seed=4, batch=2)
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=None)
        uncached = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=None, use_cache=False)
        reference = full_recompute_greedy(model, ids, 40)
    assert torch.equal(cached, reference) and torch.equal(uncached, reference)


def test_left_padded_batch_generates_what_each_prompt_generates_alone_with_per_row_eos():
    model = build_model("entropy", seed=5)
    ids, mask = left_padded_batch([9, 23, 15], seed=5)
    with torch.no_grad():
        free = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=None)
    # EOS ids taken from the rows' own continuations, so that rows stop at different steps (or not at all)
    continuation = free[:, ids.shape[1] :]
    eos = sorted({int(continuation[0, 3]), int(continuation[1, 12])})
    stops = [next((i for i, t in enumerate(row.tolist()) if t in eos), None) for row in continuation]
    assert len(set(stops)) > 1 and min(s for s in stops if s is not None) < 29
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False, eos_token_id=eos)
        for row in range(3):
            alone = model.generate(ids[row : row + 1, ~(mask[row] == 0)], max_new_tokens=30, do_sample=False,
                                   eos_token_id=eos)
            new = batched[row, ids.shape[1] :]
            expected = alone[0, mask[row].sum() :]
            assert torch.equal(new[: len(expected)], expected)
            assert (new[len(expected) :] == model.config.pad_token_id).all()
            if stops[row] is not None:  # stopped right after its EOS, padded from there on
                assert len(expected) == stops[row] + 1 and int(expected[-1]) in eos
            else:
                assert len(expected) == 30


@pytest.mark.parametrize("kwargs", [
    dict(do_sample=True, temperature=0.7, top_k=20),
    dict(do_sample=True, top_p=0.8),
    dict(do_sample=True, num_return_sequences=3),
    dict(do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=3),
    dict(do_sample=False, num_beams=3),
    dict(do_sample=False, num_beams=2, num_return_sequences=2),
])
def test_generation_options_give_the_same_output_with_and_without_cache(kwargs):
    model = build_model("entropy", seed=6)
    ids, mask = left_padded_batch([12, 20], seed=6)
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        with torch.no_grad():
            outputs.append(model.generate(ids, attention_mask=mask, max_new_tokens=25, use_cache=use_cache,
                                          eos_token_id=None, **kwargs))
    assert torch.equal(outputs[0], outputs[1])
    assert outputs[0].shape[1] == ids.shape[1] + 25


class StopAfterByte(StoppingCriteria):
    def __init__(self, byte_id):
        self.byte_id = byte_id

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.byte_id


def test_logits_processors_stopping_criteria_streamer_and_dict_outputs():
    model = build_model("space", seed=7)
    tok = BLTTokenizer()
    ids = torch.tensor([tok.encode("Streaming bytes:")])

    class BanByte:
        def __call__(self, input_ids, scores):
            scores[:, 101] = -float("inf")  # never "a"
            return scores

    stream = io.StringIO()
    with torch.no_grad(), redirect_stdout(stream):
        first = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=None,
                               logits_processor=LogitsProcessorList([BanByte()]),
                               streamer=TextStreamer(tok, skip_special_tokens=True))
    new = first[0, ids.shape[1] :]
    assert 101 not in new.tolist()
    assert stream.getvalue().strip() == tok.decode(first[0], skip_special_tokens=True).strip()
    stop_byte = int(new[10])
    with torch.no_grad():
        stopped = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=None,
                                 logits_processor=LogitsProcessorList([BanByte()]),
                                 stopping_criteria=StoppingCriteriaList([StopAfterByte(stop_byte)]))
        result = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, output_scores=True,
                                return_dict_in_generate=True)
    first_stop = new.tolist().index(stop_byte)
    assert stopped.shape[1] == ids.shape[1] + first_stop + 1
    assert isinstance(result.past_key_values, BLTCache) and len(result.scores) == 8
    assert result.past_key_values.get_seq_length() == ids.shape[1] + 7


def test_chunked_prefill_gives_the_same_generation():
    model = build_model("entropy", seed=8)
    ids, mask = left_padded_batch([40, 33], seed=8)
    with torch.no_grad():
        plain = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None)
        chunked = model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, eos_token_id=None,
                                 prefill_chunk_size=7)
    assert torch.equal(plain, chunked)


def test_a_user_cache_continues_a_prefilled_prompt():
    model = build_model("static", seed=9)
    ids = random_ids(30, seed=9)
    with torch.no_grad():
        cache = model(ids[:, :-1], use_cache=True).past_key_values
        continued = model.generate(ids, past_key_values=cache, max_new_tokens=15, do_sample=False, eos_token_id=None)
        fresh = model.generate(ids, max_new_tokens=15, do_sample=False, eos_token_id=None)
    assert torch.equal(continued, fresh)


def test_right_padded_cache_cannot_be_continued():
    model = build_model("byte", seed=10)
    ids = random_ids(10, seed=10, batch=2)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        cache = model(ids, attention_mask=mask, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="pad on the left"):
            model(ids[:, :1], past_key_values=cache, use_cache=True)


def test_block_transformer_decoder_attends_only_within_its_patch():
    """With patch_local_attention a byte's decoder states depend on no byte state of an earlier decoder patch."""
    from blt_hf.masks import LocalAttentionPlan

    model = build_model("static", seed=11, decoder_config=dict(sliding_window=64, patch_local_attention=True))
    decoder = model.model.local_decoder
    torch.manual_seed(0)
    states = torch.randn(1, 20, 32)
    byte_patch = torch.tensor([[1] * 5 + [2] * 7 + [3] * 8])  # indexes into the patch table below
    patch_kv = decoder.patch_keys_values(torch.randn(1, 4, 64))
    positions = torch.arange(20)[None]
    valid = torch.ones(1, 20, dtype=torch.bool)
    perturbed = states.clone()
    perturbed[:, :12] += 1.0  # change every byte of the first two decoder patches

    def run(x, segments):
        return decoder(x, positions, LocalAttentionPlan(64, valid, segments), patch_kv, byte_patch)[0]

    with torch.no_grad():
        local = run(states, byte_patch), run(perturbed, byte_patch)
        shared = run(states, None), run(perturbed, None)
    torch.testing.assert_close(local[0][:, 12:], local[1][:, 12:], atol=0, rtol=0)
    assert (shared[0][:, 12:] - shared[1][:, 12:]).abs().max() > 1e-3  # without it the change leaks through


def test_block_transformer_decoder_cache_is_dropped_at_each_patch_boundary():
    model = build_model("static", seed=11, patch_size=4, max_patch_length=None,
                        decoder_config=dict(sliding_window=64, patch_local_attention=True))
    ids = random_ids(60, seed=11)
    with torch.no_grad():
        out = model(ids[:, :20], use_cache=True)
        cache = out.past_key_values
        for position in range(20, 60):
            assert cache.local_cache_sizes()["decoder"] <= 4  # only the bytes of the current decoder patch
            out = model(ids[:, position : position + 1], past_key_values=cache, use_cache=True)
        full = model(ids, use_cache=False).logits
    torch.testing.assert_close(out.logits[:, -1], full[:, -1], atol=1e-4, rtol=0)


def _generate_and_check_local_caches_stay_bounded(mode: str, new_bytes: int) -> None:
    """Small windows and patches of at most 8 bytes: every local cache must stay that small at any length."""
    model = build_model(mode, seed=12, max_patch_length=8, encoder_config=dict(sliding_window=6),
                        decoder_config=dict(sliding_window=5))
    ids = random_ids(5, seed=12, batch=2)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_bytes, min_new_tokens=new_bytes, do_sample=True, top_k=50,
                             return_dict_in_generate=True, eos_token_id=None)
    cache = out.past_key_values
    assert out.sequences.shape[1] == 5 + new_bytes and cache.get_seq_length() == 4 + new_bytes
    sizes = cache.local_cache_sizes()
    assert sizes["patcher"] <= 6 and sizes["encoder"] <= 5 and sizes["decoder"] <= 4
    assert sizes["open_patch"] <= 8  # bounded by max_patch_length
    assert int(cache.num_patches.min()) >= (4 + new_bytes) // 8


@pytest.mark.parametrize("mode", ["entropy", "static"])
def test_two_thousand_generated_bytes_keep_local_caches_within_their_windows(mode):
    # 2,000 bytes are over 300x the largest window: a cache that grew with the generated length would fail here
    _generate_and_check_local_caches_stay_bounded(mode, 2_000)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["entropy", "static"])
def test_twenty_thousand_generated_bytes_keep_local_caches_bounded(mode):
    _generate_and_check_local_caches_stay_bounded(mode, 20_000)


class ForceText:
    """A logits processor that makes row r generate `texts[r]`'s bytes (then EOS-free filler "."), whatever the
    model would have chosen."""

    def __init__(self, texts, prompt_width):
        self.targets = [list(t.encode("utf-8")) for t in texts]
        self.prompt_width = prompt_width

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_width
        forced = torch.tensor([t[step] if step < len(t) else ord(".") for t in self.targets]) + 4
        return torch.where(torch.arange(scores.shape[1]) == forced[:, None], 0.0, -float("inf"))


@pytest.mark.parametrize("speculative", [None, 3])
def test_stop_strings_with_multibyte_characters_stop_each_row_right_after_its_first_match(speculative):
    model = build_model("entropy", seed=5)
    tok = BLTTokenizer()
    texts = ["naïve café au lait → more", "an arrow → then é", "plain ascii, no stop in it at all"]
    stops = ["é", "→", "t al"]
    ids, mask = left_padded_batch([9, 5, 12], seed=5)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, eos_token_id=2,
                             pad_token_id=0, stop_strings=stops, tokenizer=tok, speculative_bytes=speculative,
                             logits_processor=LogitsProcessorList([ForceText(texts, ids.shape[1])]))
    expected = []
    for text in texts:  # reference: the first byte position where any stop string's bytes end
        data = text.encode("utf-8")
        ends = [data.find(s.encode("utf-8")) + len(s.encode("utf-8")) for s in stops if s.encode("utf-8") in data]
        expected.append(data[: min(ends)] if ends else None)
    assert out.shape[1] == ids.shape[1] + max(len(e) for e in expected)
    for row, want in enumerate(expected):
        new = out[row, ids.shape[1] :].tolist()
        assert new[: len(want)] == [b + 4 for b in want]
        assert set(new[len(want) :]) <= {0}
    assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == "naïve café"


def test_stop_strings_must_be_nonempty_strings():
    model = build_model("entropy", seed=5)
    ids = random_ids(6, seed=3)
    for bad in ([""], [3], []):
        with pytest.raises(ValueError, match="stop_strings"):
            model.generate(ids, max_new_tokens=3, stop_strings=bad)


def test_generate_returns_each_steps_hidden_states_as_the_full_forward_computes_them():
    model = build_model("entropy", seed=6)
    ids = random_ids(12, seed=6)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, eos_token_id=None, return_dict_in_generate=True,
                             output_hidden_states=True)
        full = model(out.sequences[:, :-1], output_hidden_states=True)
    assert len(out.hidden_states) == 4
    for step, states in enumerate(out.hidden_states):
        position = ids.shape[1] - 1 + step
        assert len(states) == len(full.hidden_states)
        for got, want in zip(states, full.hidden_states, strict=True):
            torch.testing.assert_close(got[:, -1], want[:, position], atol=1e-5, rtol=1e-5)


def test_resizing_to_the_byte_vocabulary_and_adding_existing_tokens_are_no_ops():
    model = build_model("entropy", seed=6)
    tok = BLTTokenizer()
    assert model.resize_token_embeddings(len(tok)) is model.get_input_embeddings()
    assert model.resize_token_embeddings(259, pad_to_multiple_of=130) is model.get_input_embeddings()
    assert tok.add_tokens(["a"]) == 0 and tok.add_special_tokens({"eos_token": "</s>"}) == 0 and len(tok) == 260


def test_byte_ids_of_any_integer_dtype_give_the_int64_logits():
    model = build_model("entropy", seed=6)
    ids = random_ids(12, seed=6)
    ids[0, 3] = 200  # above int8's range: uint8 must not wrap it, nor the vocabulary size
    with torch.no_grad():
        want = model(ids).logits
        for dtype in (torch.uint8, torch.int16, torch.int32):
            torch.testing.assert_close(model(ids.to(dtype)).logits, want, atol=0, rtol=0)
    tok = BLTTokenizer().attach_model(model)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(tok.patch_lengths(ids.to(dtype)), tok.patch_lengths(ids))
