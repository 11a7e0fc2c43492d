"""FLOP accounting against hand counts, and realised FLOPs against the analytic value for static patching."""

import pytest
import torch

from blt_hf import BLTConfig
from blt_hf.flops import (
    flops_for_sequence,
    llama_flops_per_token,
    paper_flops_per_byte,
    realised_flops,
    uniform_patch_lengths,
)
from tests.utils import random_ids, tiny_model


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


def test_longer_patches_make_bytes_cheaper():
    config = small_config()
    short = flops_for_sequence(config, 600, uniform_patch_lengths(600, 2)).total
    long = flops_for_sequence(config, 600, uniform_patch_lengths(600, 8)).total
    assert long < short


def test_realised_flops_of_a_generation_use_the_patches_decoding_produced():
    from blt_hf.flops import realised_flops_of_sequences

    model = tiny_model(seed=3, patching_threshold=5.2)
    prompt = random_ids(20, seed=3)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=30, do_sample=False, eos_token_id=None)
        lengths = model(generated, output_patch_lengths=True, use_cache=False).patch_lengths
    realised = realised_flops_of_sequences(model, generated)
    assert realised == realised_flops(model.config, lengths)
    assert realised["bytes"] == 50 and realised["flops"]["entropy_model"] > 0
