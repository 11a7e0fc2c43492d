"""The token head (`BLTTokenHead`) and source patching of byte-ified models.

References are independent of the head's sorted-vocabulary search: next-token probabilities from transformers'
`LlamaForCausalLM` and the formulas of `token_head.py` evaluated by enumerating the vocabulary in Python.
"""

from __future__ import annotations

import math

import pytest
import torch

from blt_hf import BLTConfig
from blt_hf.training.byteify import byteify_model, start_token_id, teacher_states, token_lengths, window_bytes
from tests.test_byteify import DATA, TINY_LOCAL, assert_greedy_decoding_is_exact, save_tiny_llama

FALLBACK = 0.05


@pytest.fixture(scope="module")
def tied_source(tmp_path_factory):
    """A tiny random Llama with tied embeddings, scaled so that its next-token distribution is peaked (token ends
    are then decisive)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tied-llama"), tied=True, embedding_scale=8.0)


@pytest.fixture(scope="module")
def headed(tied_source):
    folder, tokenizer, _ = tied_source
    model, vocabulary = byteify_model(folder, tokenizer, token_head=True, **TINY_LOCAL)
    return model.eval(), vocabulary


def spelled_log_probs(token_probs, vocabulary, prefix: bytes, byte_probs, first: bool):
    """`token_head.py`'s formulas by enumeration: p(next byte) [vocab] before the fallback mix."""
    spelled = torch.zeros_like(byte_probs)
    pairs = list(zip(vocabulary.token_bytes, token_probs, strict=True))
    begins = sum(float(p) for t, p in pairs if t and t.startswith(prefix))
    ends = sum(float(p) for t, p in pairs if t == prefix)
    if not first and begins == 0:
        return byte_probs
    for token, p in pairs:
        if token is None:
            if first:
                spelled[2] += float(p)  # tokens without bytes end the text
        elif token.startswith(prefix) and len(token) > len(prefix):
            spelled[4 + token[len(prefix)]] += float(p) / (1.0 if first else begins)
    if not first:
        spelled += ends / begins * byte_probs
    return spelled


def test_token_head_spells_the_llamas_next_token_distribution_in_bytes(tied_source, headed):
    _, tokenizer, llama = tied_source
    model, vocabulary = headed
    text = DATA.read_bytes()[300:420]
    ids, lengths = token_lengths(tokenizer, vocabulary, text)
    byte_ids = torch.tensor([window_bytes(ids, vocabulary)])
    token_ids = torch.tensor([[start_token_id(tokenizer)] + ids])
    with torch.no_grad():
        token_probs = torch.softmax(llama(token_ids).logits[0].double(), -1)  # transformers' Llama, final norm, head
        states = teacher_states(llama, token_ids)
        out = model(byte_ids, patch_lengths=torch.tensor([[1] + lengths]), patch_states=states)
        byte_probs = torch.softmax(model.lm_head(model.model(byte_ids, patch_lengths=torch.tensor([[1] + lengths]),
                                                             patch_states=states).last_hidden_state).double(), -1)
    log_probs = out.logits[0].double()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(len(log_probs), dtype=torch.float64), atol=1e-4)
    position = 1  # byte 0 is BOS; token k's bytes read the Llama's prediction after token k - 1
    for k, length in enumerate(lengths):
        token = vocabulary.token_bytes[ids[k]]
        for j in range(length):
            reads = position - 1 + j  # the byte predicting this one
            expected = spelled_log_probs(token_probs[k], vocabulary, token[:j], byte_probs[0, reads], j == 0)
            expected = ((1 - FALLBACK) * expected + FALLBACK * byte_probs[0, reads]).log()
            assert torch.allclose(log_probs[reads], expected, atol=2e-4), (k, j)
        position += length


def global_states(model, ids, lengths):
    """Global outputs [P, d] of the closed patches of `lengths` (teacher-forced, no cache)."""
    captured = {}
    handle = model.model.global_transformer.register_forward_hook(
        lambda module, args, output: captured.update(states=output[0]))
    try:
        with torch.no_grad():
            model.model(ids, patch_lengths=torch.tensor([lengths]), use_cache=False)
    finally:
        handle.remove()
    return captured["states"][0]


def reference_source_starts(model, vocabulary, byte_values: list[int], threshold: float) -> list[int]:
    """Source patching by brute force: after each byte, the global output of the last closed patch (teacher-forced
    with the patch lengths cut so far), the token-end odds of the open patch's bytes by enumerating the vocabulary,
    and the rule. Returns the positions (BOS = 0) that start patches."""
    closed, open_patch, starts = [1], [], [0, 1]
    for i, value in enumerate(byte_values[:-1]):
        open_patch.append(value)
        ids = torch.tensor([[1] + [v + 4 for v in byte_values[: i + 1]]])
        state = global_states(model, ids, closed + [len(open_patch)])[len(closed) - 1]
        with torch.no_grad():
            token_probs = torch.softmax(torch.nn.functional.linear(
                model.model.token_head.norm(state), model.model.encoder_vocab_embedding.weight).double(), -1)
        prefix = bytes(open_patch)
        ends = sum(float(p) for t, p in zip(vocabulary.token_bytes, token_probs, strict=True) if t == prefix)
        longer = sum(float(p) for t, p in zip(vocabulary.token_bytes, token_probs, strict=True)
                     if t and t.startswith(prefix) and len(t) > len(prefix))
        odds = math.inf if longer == 0 else math.log(max(ends, 1e-300)) - math.log(longer)
        if odds > threshold:
            closed.append(len(open_patch))
            open_patch = []
            starts.append(i + 2)
    return starts


@pytest.fixture
def source_patched(headed):
    model, vocabulary = headed
    model.config.patching_mode, model.config.patching_threshold = "source", 0.0
    try:
        yield model, vocabulary
    finally:
        model.config.patching_mode = "boundary"


def test_source_patching_cuts_where_the_llamas_token_end_odds_say(source_patched):
    model, vocabulary = source_patched
    values = list(DATA.read_bytes()[1000:1036])
    ids = torch.tensor([[1] + [v + 4 for v in values]])
    expected = reference_source_starts(model, vocabulary, values, 0.0)
    with torch.no_grad():
        out = model(ids, output_patch_lengths=True, use_cache=False)
    lengths = out.patch_lengths[0]
    starts = (lengths.cumsum(0) - lengths)[lengths > 0].tolist()
    assert [s for s in starts if s < len(values) + 1] == expected
    assert 2 < len(expected) < len(values)  # neither one patch nor one byte per patch
    given = [b - a for a, b in zip(expected, expected[1:] + [len(values) + 1], strict=True)]
    with torch.no_grad():
        forced = model(ids, patch_lengths=torch.tensor([given]), use_cache=False).logits
    assert torch.allclose(out.logits[:, :-1], forced[:, :-1], atol=1e-4)


@pytest.mark.parametrize("mode", ["source", "source-lookahead", "boundary"])
def test_token_head_decodes_exactly_with_the_cache(source_patched, mode):
    """Cached greedy generation == uncached == recomputing each row alone, with left padding."""
    model, _ = source_patched
    model.config.patching_mode = mode.split("-")[0]
    model.config.patching_lookahead, model.config.patching_lookahead_min_end = mode.endswith("lookahead"), 0.05
    text = DATA.read_bytes()
    try:
        assert_greedy_decoding_is_exact(
            model, [[1] + [b + 4 for b in text[:14]], [1] + [b + 4 for b in text[200:208]]], 10)
    finally:
        model.config.patching_lookahead = False


def test_lookahead_cuts_survive_beam_search_and_rollbacks(source_patched):
    """A pending cut travels with the cache: cached beam search (reordered caches) == uncached; prompt-lookup and
    self-speculative decoding (crop / snapshot rollbacks) == plain greedy decoding."""
    model, _ = source_patched
    model.config.patching_lookahead, model.config.patching_lookahead_min_end = True, 0.05
    text = DATA.read_bytes()
    prompt = torch.tensor([[1] + [b + 4 for b in text[:12] + text[:12]]])  # repeats: prompt lookup finds drafts
    options = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    try:
        with torch.no_grad():
            beams = dict(num_beams=3, num_return_sequences=2, **options)
            assert torch.equal(model.generate(prompt, **beams), model.generate(prompt, use_cache=False, **beams))
            greedy = model.generate(prompt, **options)
            assert torch.equal(model.generate(prompt, prompt_lookup_num_tokens=4, **options), greedy)
            assert torch.equal(model.generate(prompt, speculative_bytes=3, **options), greedy)
    finally:
        model.config.patching_lookahead = False


def test_token_head_and_source_patching_refuse_configs_and_sources_that_cannot_work(tied_source, tmp_path):
    with pytest.raises(ValueError, match="token_head"):
        BLTConfig(patching_mode="source")
    with pytest.raises(ValueError, match="vocab_embedding_rows"):
        BLTConfig(token_head=True)
    with pytest.raises(ValueError, match="token_head_fallback"):
        BLTConfig(token_head=True, vocab_embedding_rows=8, token_head_fallback=1.0)
    with pytest.raises(ValueError, match="patching_lookahead"):
        BLTConfig(patching_lookahead=True)  # entropy patching has no token-end odds to look ahead with
    with pytest.raises(ValueError, match="patching_lookahead_min_end"):
        BLTConfig(patching_mode="source", token_head=True, vocab_embedding_rows=8, patching_lookahead=True,
                  patching_lookahead_min_end=0.0)
    _, tokenizer, _ = tied_source
    untied, _, _ = save_tiny_llama(tmp_path / "untied", tokenizer)
    with pytest.raises(ValueError, match="tied word embeddings"):
        byteify_model(untied, tokenizer, token_head=True, **TINY_LOCAL)


def test_auto_patching_picks_source_patching_for_a_tied_llama_and_the_boundary_predictor_otherwise(tied_source,
                                                                                                   tmp_path):
    folder, tokenizer, llama = tied_source
    model, _ = byteify_model(folder, tokenizer, patching="auto", **TINY_LOCAL)
    assert model.config.patching_mode == "source" and model.model.token_head is not None
    assert model.model.patcher is None  # no boundary predictor to train or ship
    assert torch.equal(model.model.token_head.norm.weight, llama.model.norm.weight)
    untied, _, _ = save_tiny_llama(tmp_path / "untied", tokenizer)
    model, _ = byteify_model(untied, tokenizer, patching="auto", **TINY_LOCAL)
    assert model.config.patching_mode == "boundary" and model.model.token_head is None


def test_the_byteified_demo_shows_every_byte_once_split_at_the_models_own_patches(source_patched):
    from blt_hf.tools.demo_byteified import show_patches

    model, _ = source_patched
    shown = show_patches(model, "Byte-level models read text.")
    assert shown.replace("|", "") == "Byte-level models read text." and "|" in shown


def test_token_head_tables_follow_the_cache_through_chunks_of_any_length(source_patched):
    """One-byte steps, a multi-byte chunk, then one-byte steps again continuing one cache: every logit equals the
    uncached forward of the whole sequence, and the token table the next step reads is its current patch's."""
    model, _ = source_patched
    model.config.patching_mode = "boundary"
    torch.manual_seed(1)
    with torch.no_grad():  # a boundary head with decisive logits, so that the chunks close patches
        model.model.patcher.boundary_head.weight.normal_(0, 2.0)
        model.model.patcher.boundary_head.bias.fill_(-4.0)
    ids = torch.tensor([[1] + [b + 4 for b in DATA.read_bytes()[:40]]])
    pieces = [(0, 12), (12, 13), (13, 14), (14, 15), (15, 27), (27, 28), (28, 29), (29, 30), (30, 41)]
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache, logits = None, []
        for begin, end in pieces:
            out = model(ids[:, begin:end], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits)
            table = model.model.token_head.token_cumulative(cache.current_patch_state,
                                                            model.model.encoder_vocab_embedding.weight)
            assert torch.equal(model.model._current_cumulative(cache), table), (begin, end)  # what the next step reads
        patches = model(ids, use_cache=False, output_patch_lengths=True).patch_lengths
    assert torch.allclose(torch.cat(logits, dim=1), full, atol=1e-4)
    assert int((patches > 0).sum()) > 8  # the chunks closed patches


def reference_lookahead(model, vocabulary, byte_values: list[int], threshold: float, min_end: float):
    """Look-ahead source patching by brute force, teacher-forced: after each byte, the token-end probability of the
    open patch by enumerating the vocabulary under the last closed patch's global output; where it reaches
    `min_end`, the next byte's distribution mixes "the token goes on" with the closed patch's own first-byte
    distribution, and the next byte keeps the cut when the odds of the cut given it exceed `threshold`. Returns
    the log-probabilities [n, vocab] predicted after each byte and the positions (BOS = 0) that start patches."""
    fallback = float(torch.sigmoid(model.model.token_head.fallback_logit.detach()))
    weight = model.model.encoder_vocab_embedding.weight

    def token_probs(state):
        with torch.no_grad():
            logits = torch.nn.functional.linear(model.model.token_head.norm(state), weight)
        return torch.softmax(logits.double(), -1)

    def byte_probs(sequence, lengths):  # the local decoder's q after the last byte, patches given
        with torch.no_grad():
            hidden = model.model(torch.tensor([sequence + [4]]), patch_lengths=torch.tensor([lengths]),
                                 use_cache=False).last_hidden_state
            return torch.softmax(model.lm_head(hidden[0, -2]).double(), -1)

    closed, open_patch, starts, pending, predicted = [1], [], [0, 1], None, []
    for i, value in enumerate(byte_values):
        if pending is not None:
            continuing, ending, first = pending
            b = value + 4
            odds = math.inf if continuing[b] == 0 else math.log(max(ending * float(first[b]), 1e-300)) - math.log(
                float(continuing[b]))
            if odds > threshold:
                closed, open_patch = closed + [len(open_patch)], []
                starts.append(i + 1)
        open_patch.append(value)
        sequence = [1] + [v + 4 for v in byte_values[: i + 1]]
        states = global_states(model, torch.tensor([sequence + [4]]), closed + [len(open_patch), 1])
        before = token_probs(states[len(closed) - 1])
        prefix = bytes(open_patch)
        pairs = list(zip(vocabulary.token_bytes, before, strict=True))
        begins = sum(float(p) for t, p in pairs if t and t.startswith(prefix))
        ends = sum(float(p) for t, p in pairs if t == prefix)
        end_probability = ends / begins if begins > 0 else 1.0
        if end_probability >= min_end:  # cut speculatively: the closed patch predicts what follows it
            q = byte_probs(sequence, closed + [len(open_patch), 1])
            first = spelled_log_probs(token_probs(states[len(closed)]), vocabulary, b"", q, True)
            spelled = spelled_log_probs(before, vocabulary, prefix, first, False)
            continuing = spelled_log_probs(before, vocabulary, prefix, torch.zeros_like(q), False)
            pending = (continuing, end_probability, first)
        else:
            q = byte_probs(sequence, closed + [len(open_patch) + 1])
            spelled = spelled_log_probs(before, vocabulary, prefix, q, False)
            pending = None
        predicted.append(((1 - fallback) * spelled + fallback * q).log())
    return torch.stack(predicted), starts


def test_lookahead_source_patching_equals_its_brute_force_definition(source_patched):
    model, vocabulary = source_patched
    values = list(DATA.read_bytes()[1000:1030])
    ids = torch.tensor([[1] + [v + 4 for v in values]])
    model.config.patching_lookahead, model.config.patching_lookahead_min_end = True, 0.05
    try:
        expected, expected_starts = reference_lookahead(model, vocabulary, values, 0.0, 0.05)
        with torch.no_grad():
            out = model(ids, output_patch_lengths=True, use_cache=False)
        model.config.patching_lookahead = False
        with torch.no_grad():
            plain = model(ids, output_patch_lengths=True, use_cache=False)
    finally:
        model.config.patching_lookahead = False
    lengths = out.patch_lengths[0]
    starts = (lengths.cumsum(0) - lengths)[lengths > 0].tolist()
    assert [s for s in starts if s < len(values) + 1] == expected_starts
    assert torch.allclose(out.logits[0, 1:].double(), expected, atol=2e-4)
    assert not torch.equal(out.patch_lengths, plain.patch_lengths)  # the look-ahead changed some cuts
    assert torch.allclose(out.logits.exp().sum(-1), torch.ones(1, len(values) + 1), atol=1e-4)


def test_a_pending_cut_survives_reordering_and_cropping(source_patched):
    """Rows whose last byte was cut speculatively: reordering the cache and then undoing the cuts, or undoing them
    while recording, cropping and keeping them, gives the logits of recomputing the sequences from scratch."""
    model, _ = source_patched
    model.config.patching_lookahead, model.config.patching_lookahead_min_end = True, 0.05
    text = DATA.read_bytes()
    try:
        with torch.no_grad():
            for end in range(20, 60):  # two prompts whose last bytes both got a speculative cut
                prompts = torch.tensor([[1] + [b + 4 for b in text[end - 16 : end]],
                                        [1] + [b + 4 for b in text[end + 84 : end + 100]]])
                cache = model(prompts, use_cache=True).past_key_values
                if bool(cache.source_lookahead.speculated.all()):
                    break
            else:
                raise AssertionError("no prompts with pending cuts on both rows")
            scores = cache.source_lookahead.end_scores[:, 4:260]
            undo, keep = scores.argmin(1)[:, None] + 4, scores.argmax(1)[:, None] + 4
            assert bool((scores.gather(1, undo - 4) <= 0).all() and (scores.gather(1, keep - 4) > 0).all())

            cache.reorder_cache(torch.tensor([1, 0]))
            swapped = torch.cat((prompts.flip(0), undo.flip(0)), 1)
            logits = model(undo.flip(0), past_key_values=cache, use_cache=True).logits[:, -1]
            assert torch.allclose(logits, model(swapped, use_cache=False).logits[:, -1], atol=1e-4)

            cache = model(prompts, use_cache=True).past_key_values
            cache.activate_past_recording()
            model(undo, past_key_values=cache, use_cache=True)
            cache.crop(-1)
            logits = model(keep, past_key_values=cache, use_cache=True).logits[:, -1]
            kept = torch.cat((prompts, keep), 1)
            assert torch.allclose(logits, model(kept, use_cache=False).logits[:, -1], atol=1e-4)
    finally:
        model.config.patching_lookahead = False


def test_source_patching_takes_given_patch_lengths_with_or_without_a_cache(source_patched):
    """Given patch lengths replace the token head's cuts: the default (cached) call gives the uncached logits."""
    model, vocabulary = source_patched
    values = list(DATA.read_bytes()[1000:1030])
    ids = torch.tensor([[1] + [v + 4 for v in values]])
    given = torch.tensor([[1, 3, 5, 2, 7, 4, 10]])
    assert int(given.sum()) == ids.shape[1] + 1
    with torch.no_grad():
        uncached = model(ids, patch_lengths=given, use_cache=False).logits
        cached = model(ids, patch_lengths=given)
    assert torch.allclose(cached.logits, uncached, atol=1e-5)
    assert cached.past_key_values is not None and int(cached.past_key_values.num_bytes[0]) == ids.shape[1]


@pytest.mark.parametrize("lookahead", [False, True])
def test_source_patching_refuses_bad_ids_and_patch_lengths_clearly(source_patched, lookahead):
    model, _ = source_patched
    model.config.patching_lookahead = lookahead
    ids = torch.tensor([[1] + [b + 4 for b in b"the quick brown fox"]])
    try:
        with torch.no_grad():
            with pytest.raises(ValueError, match="at least one byte id"):
                model(torch.zeros(1, 0, dtype=torch.long))
            with pytest.raises(ValueError, match=r"\[batch, length\]"):
                model(ids[None])
            with pytest.raises(ValueError, match="must be in 0..259"):
                model(torch.tensor([[1, 70, 300, 80]]))
            with pytest.raises(ValueError, match="sum to 7"):
                model(ids, patch_lengths=torch.tensor([[3, 4]]))
            with pytest.raises(ValueError, match="negative lengths"):
                model(ids, patch_lengths=torch.tensor([[25, -4]]))
    finally:
        model.config.patching_lookahead = False


def test_source_patching_returns_the_hidden_states_of_its_own_patches(source_patched):
    """output_hidden_states: every local layer's states on the patches the token head cut (the reference's cuts)."""
    model, vocabulary = source_patched
    values = list(DATA.read_bytes()[1000:1036])
    ids = torch.tensor([[1] + [v + 4 for v in values]])
    expected = reference_source_starts(model, vocabulary, values, 0.0)
    given = [b - a for a, b in zip(expected, expected[1:] + [len(values) + 1], strict=True)]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        forced = model(ids, patch_lengths=torch.tensor([given]), use_cache=False, output_hidden_states=True)
        model.config.patching_lookahead = True
        try:
            ahead = model(ids, output_hidden_states=True, output_patch_lengths=True)
        finally:
            model.config.patching_lookahead = False
        with pytest.raises(ValueError, match="whole sequence in one call"):
            model(ids[:, -2:], past_key_values=out.past_key_values, output_hidden_states=True)
    layers = model.config.encoder_config.num_hidden_layers + model.config.decoder_config.num_hidden_layers
    assert out.hidden_states is not None and len(out.hidden_states) == len(forced.hidden_states) >= layers
    for state, reference in zip(out.hidden_states, forced.hidden_states, strict=True):
        assert state.shape[:2] == ids.shape and torch.allclose(state, reference, atol=1e-5)
    assert len(out.global_hidden_states) == len(forced.global_hidden_states)
    assert ahead.hidden_states is not None and ahead.patch_lengths is not None
    again = model(ids, patch_lengths=ahead.patch_lengths, use_cache=False, output_hidden_states=True)
    assert torch.allclose(ahead.hidden_states[-1], again.hidden_states[-1], atol=1e-5)


def test_source_patching_scores_a_lone_byte_without_a_cache(source_patched):
    """A one-byte sequence without a cache (e.g. generate(BOS, use_cache=False)) is scored like its first position
    in a longer uncached call and like a step through an explicitly given fresh cache."""
    from blt_hf import BLTCache

    model, _ = source_patched
    ids = torch.tensor([[1] + [b + 4 for b in b"the"]])
    with torch.no_grad():
        alone = model(ids[:, :1], use_cache=False).logits
        longer = model(ids, use_cache=False).logits
        stepped = model(ids[:, :1], past_key_values=BLTCache(model.config, 1, ids.device), use_cache=True).logits
        generated = model.generate(ids[:, :1], use_cache=False, max_new_tokens=4, do_sample=False, eos_token_id=None)
        cached = model.generate(ids[:, :1], max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert torch.allclose(alone[:, 0], longer[:, 0], atol=1e-5)
    assert torch.allclose(alone, stepped, atol=1e-5)
    assert torch.equal(generated, cached)
