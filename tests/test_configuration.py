"""BLTConfig: defaults of the released 1B shape, validation naming the field, serialization round trip."""

import json

import pytest

from blt_hf import BLTConfig


def test_defaults_match_the_released_1b_shape():
    config = BLTConfig()
    assert (config.encoder_config.hidden_size, config.encoder_config.num_hidden_layers) == (1024, 1)
    assert (config.global_config.hidden_size, config.global_config.num_hidden_layers) == (2048, 25)
    assert (config.decoder_config.num_hidden_layers, config.decoder_config.cross_attn_all_layers) == (9, True)
    assert config.encoder_hash_byte_group_size == [3, 4, 5, 6, 7, 8]
    assert config.encoder_hash_byte_group_vocab == 500002 and config.encoder_hash_byte_group_nb_functions == 1
    assert config.patching_threshold == 1.335442066192627 and config.cross_attn_k == 2
    assert config.patcher_config.rope_parameters["rope_theta"] == 10000.0
    assert config.global_config.rope_parameters["rope_theta"] == 500000.0
    assert not config.needs_global_projection
    assert BLTConfig(cross_attn_k=4, encoder_config=dict(hidden_size=1280, num_attention_heads=20),
                     decoder_config=dict(hidden_size=1280, num_attention_heads=20),
                     global_config=dict(hidden_size=4096, num_attention_heads=32)).needs_global_projection


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(encoder_config=dict(hidden_size=100)), "encoder_config.num_attention_heads"),
        (dict(global_config=dict(num_attention_heads=16, num_key_value_heads=6)), "global_config.num_key_value_heads"),
        (dict(patcher_config=dict(hidden_size=770)), "patcher_config.num_attention_heads"),
        (dict(cross_attn_k=3, global_config=dict(use_input_projection=False)), "BLTConfig.cross_attn_k"),
        (dict(patching_mode="bpe"), "BLTConfig.patching_mode"),
        (dict(encoder_config=dict(sliding_window=0)), "encoder_config.sliding_window"),
        (dict(decoder_config=dict(sliding_window=-3)), "decoder_config.sliding_window"),
        (dict(decoder_config=dict(hidden_size=512, num_attention_heads=8)), "BLTConfig.decoder_config"),
        (dict(max_patch_length=0), "BLTConfig.max_patch_length"),
        (dict(patching_mode="static", patch_size=0), "BLTConfig.patch_size"),
        (dict(encoder_hash_byte_group_nb_functions=12), "BLTConfig.encoder_hash_byte_group_nb_functions"),
        (dict(encoder_hash_byte_group_size=[3, 0]), "BLTConfig.encoder_hash_byte_group_size"),
        (dict(patching_mode="entropy", has_patcher=False), "BLTConfig.has_patcher"),
        (dict(pad_token_id=7), "BLTConfig.pad_token_id"),
        (dict(fast_decoding="no"), "BLTConfig.fast_decoding"),
        (dict(fast_decoding=1), "BLTConfig.fast_decoding"),
        (dict(encoder_config=dict(cross_attn_num_heads=5)), "encoder_config.cross_attn_num_heads"),
        (dict(global_config=dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0})),
         "global_config.rope_parameters"),
    ],
)
def test_invalid_combinations_fail_at_construction_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        BLTConfig(**kwargs)


def test_config_round_trips_through_json(tmp_path):
    config = BLTConfig(
        patching_mode="static", patch_size=6, max_patch_length=9, cross_attn_k=3, fast_decoding=False,
        encoder_config=dict(hidden_size=64, num_attention_heads=4, cross_attn_all_layers=True),
        decoder_config=dict(hidden_size=64, num_attention_heads=4, patch_local_attention=True),
        global_config=dict(hidden_size=128, num_attention_heads=8, num_key_value_heads=2,
                           rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 1024}),
    )
    config.save_pretrained(tmp_path)
    loaded = BLTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.needs_global_projection and loaded.decoder_config.patch_local_attention
    assert loaded.global_config.rope_parameters["rope_type"] == "llama3"
    assert loaded.fast_decoding is False


def test_a_config_json_saved_before_fast_decoding_existed_loads_with_it_on(tmp_path):
    BLTConfig(patching_mode="static").save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.pop("fast_decoding", None)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert BLTConfig.from_pretrained(tmp_path).fast_decoding is True
