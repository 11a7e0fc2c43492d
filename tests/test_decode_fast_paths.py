"""The shortcuts that make one-byte decoding steps cheap compute exactly what the general paths do.

* one-byte decoding steps of the local-stack layers run q/k/v and gate/up as single matmuls over concatenated
  weights kept by the cache (RMSNorm weights folded in): checked against the plain formulas in float64, with a new
  cache after in-place weight updates and reloads, with hooks on the inner linears (which must still run) and in
  float64 (which takes the general path);
* a decoding byte reads its patch's k slots through two small matrices folded from the slots and the
  cross-attention's weights: equal to the cross-attention's plain formulas, refused under hooks and other dtypes,
  and used by real decoding;
* a decoding step attends to its cached keys without a mask only when all of them are visible;
* the patching rule's one-byte step equals running the rule over the whole chunk, in every mode;
* `BLTConfig.fast_decoding=False` runs none of these shortcuts and generates the same bytes (the teacher-forced
  parity suite also runs with it, in tests/test_generation.py).
"""

import sys

import pytest
import torch
import torch.nn.functional as F

from blt_hf import PatchingRule, decoding
from blt_hf.cache import PatchKVCache, SlidingWindowCache
from blt_hf.decoding import naive_layer, read_slots, slot_readout
from blt_hf.layers import BLTCrossAttention, BLTRotaryEmbedding, BLTTransformerLayer
from blt_hf.masks import LocalAttentionPlan, PatchAttentionPlan, dense_window_mask
from blt_hf.patching import PatchingState
from tests.utils import random_ids, tiny_model

HIDDEN, HEADS, KV_HEADS, FFN = 32, 4, 2, 48


class _RopeConfig:
    head_dim = HIDDEN // HEADS
    rope_parameters = {"rope_theta": 10000.0}


def _layer(seed=0):
    torch.manual_seed(seed)
    layer = BLTTransformerLayer(HIDDEN, HEADS, KV_HEADS, FFN, 1e-5, layer_idx=0).eval()
    with torch.no_grad():
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.add_(torch.randn(HIDDEN) * 0.3)
    return layer


def _reference(layer, x):
    """The layer's formula in float64 (`decoding.naive_layer`): causal attention, no window."""
    return naive_layer(layer, x)


def _decode(layer, x, prefill=3):
    """A prefill of `prefill` positions, then one-byte steps through a fresh cache, each step taking the path a
    stack would (`decoding.fast_paths_eligible`): outputs [B, T, d], cache."""
    rope = BLTRotaryEmbedding(_RopeConfig())
    cache = SlidingWindowCache(1, None)
    outputs = []
    with torch.no_grad():
        for begin, end in [(0, prefill)] + [(j, j + 1) for j in range(prefill, x.shape[1])]:
            chunk = x[:, begin:end]
            positions = torch.arange(begin, end).expand(x.shape[0], -1)
            plan = LocalAttentionPlan(None, torch.ones(chunk.shape[:2], dtype=torch.bool), cache=cache)
            if decoding.fast_paths_eligible(chunk, cache):
                outputs.append(decoding.fast_layer_step(layer, chunk, rope(positions), plan))
            else:
                outputs.append(layer(chunk, rope(positions), plan))
    return torch.cat(outputs, 1), cache


def test_fused_decoding_steps_match_the_plain_formula():
    layer = _layer()
    x = torch.randn(2, 9, HIDDEN)
    out, cache = _decode(layer, x)
    assert cache.step_weights[0] is not None  # the steps ran fused
    torch.testing.assert_close(out.double(), _reference(layer, x), atol=1e-5, rtol=0)


def test_a_new_cache_decodes_with_the_current_weights():
    layer = _layer()
    x = torch.randn(1, 6, HIDDEN)
    _decode(layer, x)
    with torch.no_grad():  # an optimizer-style in-place update of one projection of each fused group
        layer.self_attn.k_proj.weight.mul_(-2.0)
        layer.mlp.up_proj.weight.add_(0.5)
    torch.testing.assert_close(_decode(layer, x)[0].double(), _reference(layer, x), atol=1e-5, rtol=0)
    layer.load_state_dict(_layer(seed=1).state_dict())  # a reload
    torch.testing.assert_close(_decode(layer, x)[0].double(), _reference(layer, x), atol=1e-5, rtol=0)


def test_hooks_on_inner_linears_still_run_in_decoding_steps():
    layer = _layer()
    x = torch.randn(1, 5, HIDDEN)
    plain, _ = _decode(layer, x)
    calls = []

    def silence(module, inputs, output):
        calls.append(module)
        return torch.zeros_like(output)

    handles = [layer.self_attn.v_proj.register_forward_hook(silence),
               layer.mlp.up_proj.register_forward_hook(silence)]
    hooked, cache = _decode(layer, x, prefill=3)
    for handle in handles:
        handle.remove()
    assert cache.step_weights[0] is None  # hooked layers take the general path
    assert calls == [layer.self_attn.v_proj, layer.mlp.up_proj] * 3  # the prefill and both one-byte steps
    # zero values and a zero "up" branch leave only the residual stream
    torch.testing.assert_close(hooked, x, atol=1e-6, rtol=0)
    assert not torch.allclose(plain, x, atol=1e-3)


def test_float64_layers_decode_through_the_general_path():
    layer = _layer().double()
    x = torch.randn(2, 6, HIDDEN, dtype=torch.float64)
    out, cache = _decode(layer, x)
    assert cache.step_weights == {}  # the fused step is fp32 only
    torch.testing.assert_close(out, _reference(layer, x), atol=1e-6, rtol=0)  # rotations are complex64


def _cross_attention(seed=0):
    torch.manual_seed(seed)
    cross = BLTCrossAttention(HIDDEN, HEADS, KV_HEADS, 1e-5).eval()
    with torch.no_grad():
        for norm in (cross.q_norm, cross.k_norm):
            norm.weight.add_(torch.randn(HIDDEN) * 0.3)
    return cross


def test_slot_readout_gives_the_cross_attention_output():
    cross, slots = _cross_attention(), 3
    with torch.no_grad():
        keys, values = cross.patch_keys_values(torch.randn(4, 1, slots, HIDDEN) * 2)  # one patch per row
        byte_states = torch.randn(4, 1, HIDDEN) * 3
        readout = slot_readout(cross, keys, values)
        expected = byte_states + cross.bytes_from_patches(byte_states, keys, values, torch.zeros(4, 1).long())
        torch.testing.assert_close(read_slots(byte_states, readout), expected, atol=2e-5, rtol=0)


def test_slot_readout_is_refused_under_hooks_and_for_other_dtypes():
    cross = _cross_attention()
    keys, values = cross.patch_keys_values(torch.randn(1, 1, 2, HIDDEN))
    handle = cross.o_proj.register_forward_hook(lambda *args: None)
    assert slot_readout(cross, keys, values) is None
    handle.remove()
    assert slot_readout(cross, keys, values) is not None
    assert slot_readout(cross.double(), keys.double(), values.double()) is None


def test_decoding_reads_patches_through_slot_readouts_unless_the_decoder_is_hooked():
    model = tiny_model(seed=3, patching_mode="static", patch_size=3)
    ids = random_ids(10, seed=4)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
        assert plain.past_key_values.current_patch_readouts is not None
        modes = []
        hook = model.model.local_decoder.cross_attn_layers[0].register_forward_hook(
            lambda module, args, kwargs, output: modes.append(kwargs["mode"]), with_kwargs=True
        )
        hooked = model.generate(ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
        hook.remove()
    assert hooked.past_key_values.current_patch_readouts is None
    assert modes.count("bytes_from_patches") == 8  # the prefill and the seven one-byte steps ran the module
    assert torch.equal(hooked.sequences, plain.sequences)


def test_autocast_decoding_takes_the_general_paths():
    model = tiny_model(seed=3, patching_mode="static", patch_size=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = model.generate(random_ids(6, seed=4), max_new_tokens=3, do_sample=False,
                               return_dict_in_generate=True).past_key_values
    assert cache.current_patch_readouts is None
    assert cache.encoder.step_weights == {} and cache.decoder.step_weights == {}


def test_a_reordered_cache_reads_each_row_its_own_patch():
    model = tiny_model(seed=5, patching_mode="static", patch_size=2)
    ids = torch.cat((random_ids(9, seed=1), random_ids(9, seed=2)))
    swapped = ids.flip(0)
    with torch.no_grad():
        cache = model(ids[:, :6], use_cache=True).past_key_values
        model(ids[:, 6:7], past_key_values=cache, use_cache=True)  # closes patch 5-6: readouts of both rows
        cache.reorder_cache(torch.tensor([1, 0]))
        continued = model(swapped[:, 7:8], past_key_values=cache, use_cache=True).logits  # closes nothing
        full = model(swapped, use_cache=False).logits[:, 7:8]
    torch.testing.assert_close(continued, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_decoding_step_is_unmasked_only_when_every_cached_key_is_visible(padded):
    torch.manual_seed(0)
    window, cached = 6, 9
    cache = SlidingWindowCache(1, window)
    valid = torch.ones(2, cached, dtype=torch.bool)
    if padded:
        valid[1, :5] = False  # row 1 is left-padded: its last padding key (index 4) is still in the window
    prefill = LocalAttentionPlan(window, valid, cache=cache)
    prefill(*(torch.randn(2, 2, cached, 8) for _ in range(3)), 0)
    step = LocalAttentionPlan(window, torch.ones(2, 1, dtype=torch.bool), cache=cache)
    assert step.sees_all_keys is not padded
    q, k, v = (torch.randn(2, 2, 1, 8) for _ in range(3))
    keys_valid = step.key_valid.clone()
    out = step(q, k, v, 0)
    keys, values = cache.keys[0][:, :, cache.start : cache.end + 1], cache.values[0][:, :, cache.start : cache.end + 1]
    mask = dense_window_mask(1, keys.shape[2] - 1, window, keys_valid)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


RULES = [
    PatchingRule(mode="entropy", threshold=1.0),
    PatchingRule(mode="entropy", threshold=1.0, max_patch_length=3),
    PatchingRule(mode="entropy", threshold=0.4, monotonicity=True),
    PatchingRule(mode="entropy", threshold=1.0, threshold_add=0.3, max_patch_length=4),
    PatchingRule(mode="static", patch_size=3, max_patch_length=2),
    PatchingRule(mode="space"),
    PatchingRule(mode="byte"),
]


def _rule_id(rule):
    return f"{rule.mode}-{rule.monotonicity}-{rule.threshold_add}-{rule.max_patch_length}"


@pytest.mark.parametrize("rule", RULES, ids=_rule_id)
def test_one_byte_rule_steps_equal_the_whole_chunk(rule):
    torch.manual_seed(0)
    batch, length = 4, 30
    pad = torch.tensor([0, 3, 7, 12])
    valid = torch.arange(length)[None] >= pad[:, None]  # left padding of different lengths
    ids = torch.where(valid, torch.randint(4, 260, (batch, length)), 0)
    ids[:, :4] = torch.tensor([32 + 4, 97 + 4, 98 + 4, 46 + 4])  # some space-like bytes for the space rule
    entropies = torch.rand(batch, length) * 2
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    state = PatchingState.initial(batch, ids.device)
    whole_starts, whole_next, whole_state = rule(positions, valid, ids, entropies, state)
    starts, next_starts = [], []
    for j in range(length):
        s, n, state = rule(positions[:, j : j + 1], valid[:, j : j + 1], ids[:, j : j + 1],
                           entropies[:, j : j + 1], state)
        starts.append(s)
        next_starts.append(n)
    assert torch.equal(torch.cat(starts, 1), whole_starts)
    assert torch.equal(torch.cat(next_starts, 1), whole_next)
    for name, value in vars(whole_state).items():
        assert torch.equal(getattr(state, name), value), name


FAST_PATHS = ["fast_layer_step", "fused_layer_step", "slot_readouts", "read_slots"]


def _generate_recording_fast_paths(model, ids, monkeypatch, forbid: bool):
    """Greedy bytes, with each fast path (wherever blt_hf imported it) and the patching rule's one-byte step counted,
    or made to raise when `forbid`; and whether an attention plan chose an unmasked decoding step."""
    calls, unmasked = dict.fromkeys([*FAST_PATHS, "_step"], 0), []

    def recorded(name, original):
        def run(*args):
            if forbid:
                raise AssertionError(f"fast path {name} ran with fast_decoding=False")
            calls[name] += 1
            return original(*args)

        return run

    for name in FAST_PATHS:
        original = getattr(decoding, name)
        for module in [m for key, m in sys.modules.items() if key.startswith("blt_hf") and m is not None]:
            if getattr(module, name, None) is original:
                monkeypatch.setattr(module, name, recorded(name, original))
    monkeypatch.setattr(PatchingRule, "_step", recorded("_step", PatchingRule._step))
    plan_init = LocalAttentionPlan.__init__

    def recording_init(plan, *args, **kwargs):
        plan_init(plan, *args, **kwargs)
        unmasked.append(plan.sees_all_keys)

    monkeypatch.setattr(LocalAttentionPlan, "__init__", recording_init)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    monkeypatch.undo()
    return out, calls, any(unmasked)


@pytest.mark.parametrize("mode", ["entropy", "static"])
def test_fast_decoding_off_runs_no_fast_path_and_generates_the_same_bytes(mode, monkeypatch):
    model = tiny_model(seed=3, patching_mode=mode, patch_size=3, has_patcher=True)
    ids = random_ids(10, seed=4, batch=2)
    fast, calls, fast_unmasked = _generate_recording_fast_paths(model, ids, monkeypatch, forbid=False)
    assert all(count > 0 for count in calls.values()), calls  # the switch on: every fast path ran
    assert fast_unmasked
    model.config.fast_decoding = False
    plain, _, plain_unmasked = _generate_recording_fast_paths(model, ids, monkeypatch, forbid=True)
    assert not plain_unmasked
    assert torch.equal(plain, fast)


def _patch_steps(layer, x, step):
    """A prefill of 3 positions through a `PatchKVCache`, then one position per row at a time, each step run by
    `step(layer, chunk, rotations, plan)`: outputs [B, T, d]."""
    rope = BLTRotaryEmbedding(_RopeConfig())
    cache = PatchKVCache(1, x.shape[0], x.device)
    outputs = []
    with torch.no_grad():
        for begin, end in [(0, 3)] + [(j, j + 1) for j in range(3, x.shape[1])]:
            plan = PatchAttentionPlan(end - begin, torch.full((x.shape[0],), end - begin), cache)
            outputs.append(step(layer, x[:, begin:end], rope(plan.positions()), plan))
            cache.advance(plan.new_counts)
    return torch.cat(outputs, 1)


def test_one_patch_row_steps_match_the_plain_formula():
    layer = _layer()
    x = torch.randn(3, 8, HIDDEN)
    assert decoding.row_step_eligible(layer)

    def row_step(layer, chunk, rotations, plan):
        if chunk.shape[1] == 1:
            return decoding.row_layer_step(layer, chunk, rotations, plan)
        return layer(chunk, rotations, plan)

    torch.testing.assert_close(_patch_steps(layer, x, row_step).double(), _reference(layer, x), atol=1e-5, rtol=0)


def test_row_steps_are_refused_for_hooked_or_float64_layers():
    layer = _layer()
    handle = layer.mlp.down_proj.register_forward_hook(lambda module, args, out: out)
    assert not decoding.row_step_eligible(layer)
    handle.remove()
    assert decoding.row_step_eligible(layer) and not decoding.row_step_eligible(layer.double())


def test_the_global_transformer_decodes_patches_through_row_steps(monkeypatch):
    model = tiny_model(seed=5, patching_mode="static", patch_size=2)
    ids = random_ids(12, seed=6, batch=2)
    calls = []
    original = decoding.row_layer_step
    monkeypatch.setattr("blt_hf.global_transformer.row_layer_step",
                        lambda *args: calls.append(1) or original(*args))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
        assert calls  # decoding steps that closed a patch ran the row step
        full = ids
        for _ in range(8):  # the plain full recompute, one byte at a time
            logits = model(full, use_cache=False).logits[:, -1]
            full = torch.cat((full, logits.argmax(-1, keepdim=True)), 1)
    assert torch.equal(cached, full)
