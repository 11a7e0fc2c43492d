"""FLOP accounting against hand counts, against torch's FlopCounterMode on real forwards, and realised FLOPs
against the analytic value for static patching."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blt_hf import BLTConfig
from blt_hf.evaluation.flops import (
    flops_for_sequence,
    llama_flops_per_token,
    paper_flops_per_byte,
    realised_flops,
    uniform_patch_lengths,
)
from tests.utils import random_ids, separated_threshold, tiny_model


def small_config():
    local = dict(hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=16, sliding_window=4)
    return BLTConfig(
        cross_attn_k=2, encoder_hash_byte_group_vocab=7,
        patcher_config=dict(local, vocab_size=260),
        encoder_config=dict(local, cross_attn_all_layers=False),
        decoder_config=dict(local, cross_attn_all_layers=True),
        global_config=dict(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                           intermediate_size=32),
    )


def test_exact_counts_match_a_hand_count():
    # 6 bytes in patches [1 | 2 | 3] (+ the virtual next position): 3 real patches
    flops = flops_for_sequence(small_config(), 6, [1, 2, 3, 1])
    # local layer per byte: q,k,v,o 4*8*8 MACs + SwiGLU 3*8*16 MACs = 640 MACs = 1280 FLOPs; windowed contexts
    # 1+2+3+4+4+4 = 18, each costing QK^T + AV = 2 * 2 * 8 FLOPs
    assert flops.local_encoder == 6 * 1280 + 18 * 32 == 8256
    assert flops.local_decoder == 8256
    assert flops.byte_head == 2 * 8 * 260 * 6
    # global per patch: q,o 2*16*16 + k,v 2*16*8 (one KV head) + SwiGLU 3*16*32 = 2304 MACs; contexts 1+2+3
    assert flops.global_transformer == 3 * 2 * 2304 + 6 * 2 * 2 * 16 == 14208
    # encoder cross-attention: q,o of 2 slots per patch, k,v of every byte, 2 slots x 6 bytes scores, pooling proj
    assert flops.encoder_cross_attention == 2 * 2 * 2 * 64 * 3 + 2 * 2 * 64 * 6 + 2 * 2 * 8 * 2 * 6 + 2 * 8 * 16 * 3
    # decoder cross-attention: q,o per byte, k,v of 2 slots per patch, 2 slots per byte, projection from global
    assert flops.decoder_cross_attention == 2 * 2 * 64 * 6 + 2 * 2 * 64 * 2 * 3 + 2 * 2 * 8 * 2 * 6 + 2 * 16 * 2 * 8 * 3
    assert flops.entropy_model == 8256 + 2 * 8 * 260 * 6
    assert flops.total == 8256 * 2 + 24960 + 14208 + 4224 + 4992


def test_the_papers_formula_matches_a_hand_count():
    per_byte = paper_flops_per_byte(small_config(), bytes_per_patch=2, context_bytes=6)
    # global: Attention(1, 8, 2, m=3) = 4*8*2*(3+1)/2 = 128; QKVO(1, 16, 1) = 2*2*2*256 = 2048;
    # FFN(1, 16, 4) = 2*2*16*4*16 = 4096; divided by n_p = 2
    assert per_byte.global_transformer == (128 + 2048 + 4096) / 2
    # decoder: Attention(1, 4, 2, m=4) = 4*4*2*5/2 = 80; QKVO(1, 8, 1) = 512; FFN(1, 8) = 1024; head 2*8*256
    assert per_byte.local_decoder == 80 + 512 + 1024
    assert per_byte.byte_head == 2 * 8 * 256
    # decoder cross-attention: Attention(1, 4, 2, m=k=2) = 4*4*2*3/2 = 48; QKVO(1, 8, r=k/n_p=1) = 512
    assert per_byte.decoder_cross_attention == 48 + 512
    # encoder cross-attention (one layer: cross_attn_all_layers=False): CrossAttn(1, 4, 2, m=n_p=2, r=n_p/k=1) =
    # Attention(1, 4, 2, 2) + QKVO(1, 8, 1) = 48 + 512, times k/n_p = 1
    assert per_byte.encoder_cross_attention == 48 + 512
    # entropy model (a Transformer at its window w=4, 256-way head): Attention(1, 4, 2, m=4) = 80; QKVO(1, 8, 1) = 512;
    # FFN(1, 8) = 1024; de-embedding 2*8*256 = 4096
    assert per_byte.entropy_model == 80 + 512 + 1024 + 4096
    assert per_byte.total == per_byte.global_transformer + 2 * (80 + 512 + 1024) + 4096 + 2 * (48 + 512)

    # n_p = 4 (r != 1): encoder CrossAttn(1, 4, 2, m=4, r=4/2=2) = 80 + 3*2*2*64 = 848, times k/n_p = 1/2;
    # decoder CrossAttn(1, 4, 2, m=2, r=2/4) = 48 + 1.5*2*2*64 = 432
    per_byte = paper_flops_per_byte(small_config(), bytes_per_patch=4, context_bytes=8)
    assert per_byte.encoder_cross_attention == 848 / 2
    assert per_byte.decoder_cross_attention == 432
    # global: Attention(1, 8, 2, m=8/4=2) = 4*8*2*3/2 = 96; QKVO and FFN as above; divided by n_p = 4
    assert per_byte.global_transformer == (96 + 2048 + 4096) / 4
    assert per_byte.entropy_model == 80 + 512 + 1024 + 4096  # the window, not the context, bounds its attention


def test_llama_with_the_same_layers_costs_its_layers_per_token():
    config = small_config()
    per_token = llama_flops_per_token(config.global_config, context=3, vocab=260)
    assert per_token == 2 * 2304 + (6 / 3) * 2 * 2 * 16 + 2 * 16 * 260


@pytest.mark.parametrize("patch_size", [3, 4, 6])
def test_realised_flops_of_static_patching_equal_the_analytic_value(patch_size):
    model = tiny_model(seed=0, patching_mode="static", patch_size=patch_size, has_patcher=False)
    ids = random_ids(101, seed=1, batch=2)
    with torch.no_grad():
        lengths = model(ids, output_patch_lengths=True, use_cache=False).patch_lengths
    realised = realised_flops(model.config, lengths)
    analytic = flops_for_sequence(model.config, 101, uniform_patch_lengths(101, patch_size))
    assert realised["bytes"] == 202 and realised["patches"] == 2 * (1 + -(-100 // patch_size))
    assert realised["flops"]["total"] == 2 * analytic.total
    assert realised["flops_per_byte"]["global_transformer"] == pytest.approx(analytic.global_transformer / 101)


# the nn.Linear modules of each stack, by name prefix under BLTForCausalLM (the forwards of model.local_encoder and
# model.patcher are never called, only their layers', so FlopCounterMode has no entry of its own for them)
STACK_MODULES = {
    "entropy_model": ("model.patcher.",),
    "local_encoder": ("model.local_encoder.layers.",),
    "encoder_cross_attention": ("model.local_encoder.cross_attn_layers.",
                                "model.local_encoder.patch_embedding_projection"),
    "global_transformer": ("model.global_transformer.",),
    "decoder_cross_attention": ("model.local_decoder.cross_attn_layers.",
                                "model.local_decoder.patch_embedding_projection"),
    "local_decoder": ("model.local_decoder.layers.",),
    "byte_head": ("lm_head",),
}


def counted_flops_by_stack(model, ids) -> dict:
    """FlopCounterMode's FLOPs of one forward, summed per stack over the module hierarchy it reports."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, use_cache=False)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    per_linear = {name: counts.get(f"{root}.{name}", 0) for name, module in model.named_modules()
                  if isinstance(module, torch.nn.Linear)}
    # everything counted ran in an nn.Linear: FlopCounterMode has no formula for CPU SDPA (the self-attention
    # cores), and the cross-attention cores are elementwise products and sums, which it does not count
    assert counter.get_total_flops() == sum(per_linear.values())
    by_stack = {stack: sum(v for name, v in per_linear.items() if name.startswith(prefixes))
                for stack, prefixes in STACK_MODULES.items()}
    assert sum(by_stack.values()) == counter.get_total_flops()  # each nn.Linear belongs to exactly one stack
    return by_stack


def attention_core_flops(config, num_bytes: int, patch_lengths) -> dict:
    """QK^T and AV of every attention, from first principles: each query head spends head_dim multiply-adds on the
    score and head_dim on the value of every key it sees (2 FLOPs each), whatever the number of KV heads."""
    lengths = [n for n in patch_lengths if n > 0]
    assert sum(lengths) == num_bytes + 1
    closed = len(lengths) - 1  # every patch but the one holding the virtual next position has closed

    def per_query_key(cfg, heads):
        return 2 * 2 * heads * (cfg.hidden_size // heads)

    def self_attention(cfg, count, window):
        visible = sum(min(i + 1, window or count) for i in range(count))  # causal, at most `window` keys
        return cfg.num_hidden_layers * per_query_key(cfg, cfg.num_attention_heads) * visible

    enc, dec, glob, pat = config.encoder_config, config.decoder_config, config.global_config, config.patcher_config
    enc_layers = enc.num_hidden_layers if enc.cross_attn_all_layers else 1
    dec_layers = dec.num_hidden_layers if dec.cross_attn_all_layers else 1
    k = config.cross_attn_k
    return {
        "entropy_model": self_attention(pat, num_bytes, pat.sliding_window) if config.patching_mode == "entropy" else 0,
        "local_encoder": self_attention(enc, num_bytes, enc.sliding_window),
        # the k slots of each patch score every byte of the patch; every byte is scored by its patch's k slots
        "encoder_cross_attention": enc_layers * per_query_key(enc, enc.cross_attn_num_heads) * k * num_bytes,
        "global_transformer": self_attention(glob, closed, None),  # full causal context over patches
        # every byte scores the k slots of one patch
        "decoder_cross_attention": dec_layers * per_query_key(dec, dec.cross_attn_num_heads) * k * num_bytes,
        "local_decoder": self_attention(dec, num_bytes, dec.sliding_window),
        "byte_head": 0,
    }


FORWARDS = {
    # static patches whose last one is still open (1 + 74 * 4 + 2 real bytes); GQA in the global transformer
    "static_open_last_patch": (299, dict(patching_mode="static", patch_size=4, has_patcher=False,
                                         global_config=dict(num_key_value_heads=2))),
    # every patch closed (1 + 100 * 3); k * d_enc != d_global (input projection), cross-attention and re-pooling
    # at every encoder layer, GQA in the global transformer and the local stacks
    "static_projected": (301, dict(patching_mode="static", patch_size=3, has_patcher=False, cross_attn_k=3,
                                   encoder_config=dict(num_hidden_layers=2, num_key_value_heads=2,
                                                       cross_attn_all_layers=True, cross_attn_repool_each_layer=True),
                                   decoder_config=dict(num_key_value_heads=2),
                                   global_config=dict(num_key_value_heads=1))),
    # entropy patches from the entropy model
    "entropy": (300, dict(patching_mode="entropy", global_config=dict(num_key_value_heads=2))),
}


@pytest.mark.parametrize("case", sorted(FORWARDS))
def test_exact_counts_match_torch_flop_counter_stack_by_stack(case):
    num_bytes, overrides = FORWARDS[case]
    model = tiny_model(seed=5, **overrides)
    config = model.config
    assert config.encoder_config.sliding_window < num_bytes and config.decoder_config.sliding_window < num_bytes
    assert config.decoder_config.cross_attn_all_layers and config.decoder_config.num_hidden_layers > 1
    ids = random_ids(num_bytes, seed=6)
    if config.patching_mode == "entropy":
        assert config.patcher_config.sliding_window < num_bytes
        with torch.no_grad():
            config.patching_threshold = separated_threshold(model.model.patcher(ids).entropies, 0.6)
    with torch.no_grad():
        lengths = model(ids, output_patch_lengths=True, use_cache=False).patch_lengths[0].tolist()
    assert 1 < num_bytes / (len(lengths) - 1) < 8  # real multi-byte patches
    if case == "static_open_last_patch":
        assert lengths[-1] > 1  # the last patch holds real bytes and the virtual position
    counted = counted_flops_by_stack(model, ids)
    analytic = flops_for_sequence(config, num_bytes, lengths).as_dict()
    cores = attention_core_flops(config, num_bytes, lengths)
    expected = {stack: analytic[stack] - cores[stack] for stack in STACK_MODULES}
    assert counted == expected
    assert (counted["entropy_model"] > 0) == (config.patching_mode == "entropy")


def test_longer_patches_make_bytes_cheaper():
    config = small_config()
    short = flops_for_sequence(config, 600, uniform_patch_lengths(600, 2)).total
    long = flops_for_sequence(config, 600, uniform_patch_lengths(600, 8)).total
    assert long < short


def test_realised_flops_of_a_generation_use_the_patches_decoding_produced():
    from blt_hf.evaluation.flops import realised_flops_of_sequences

    model = tiny_model(seed=3, patching_threshold=5.2)
    prompt = random_ids(20, seed=3)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None)
        lengths = model(generated, output_patch_lengths=True, use_cache=False).patch_lengths
    realised = realised_flops_of_sequences(model, generated)
    assert realised == realised_flops(model.config, lengths)
    assert realised["bytes"] == 50 and realised["flops"]["entropy_model"] > 0
