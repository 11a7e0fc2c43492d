"""Byte-ifying a Llama: the converted global transformer computes exactly what Llama's decoder layers compute."""

import json

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from blt_hf import BLTConfig, BLTForCausalLM, BLTPatcher, BLTPatcherConfig
from blt_hf.cache import PatchKVCache
from blt_hf.convert.llama import convert_llama, halves_to_pairs, pairs_to_halves
from blt_hf.masks import PatchAttentionPlan
from tests.utils import fail_after_the_weights, perturb_norms, random_ids, tiny_model

LLAMAS = {
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "llama3_rope_scaling": dict(
        num_attention_heads=4, num_key_value_heads=1,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ),
    "tied_embeddings": dict(num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True),
}


def tiny_llama(variant, seed=0):
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
                         max_position_embeddings=256, rms_norm_eps=1e-5, **LLAMAS[variant])
    torch.manual_seed(seed)
    return perturb_norms(LlamaForCausalLM(config), seed).eval()


def llama_layers(llama, vectors, cache=None):
    """Llama's decoder layers on input vectors, without its final norm."""
    norm, llama.model.norm = llama.model.norm, torch.nn.Identity()
    try:
        return llama.model(inputs_embeds=vectors, past_key_values=cache, use_cache=cache is not None).last_hidden_state
    finally:
        llama.model.norm = norm


def blt_global(blt, vectors, cache=None):
    batch, count, _ = vectors.shape
    plan = PatchAttentionPlan(count, torch.full((batch,), count), cache)
    return blt.model.global_transformer(vectors, plan)[0]


@pytest.mark.parametrize("variant", sorted(LLAMAS))
def test_converted_global_transformer_matches_llama_layers(tmp_path, variant):
    llama = tiny_llama(variant, seed=1)
    llama.save_pretrained(tmp_path / "llama", max_shard_size="100KB")  # sharded safetensors
    assert (tmp_path / "llama" / "model.safetensors.index.json").is_file()
    convert_llama(tmp_path / "llama", tmp_path / "blt", cross_attn_k=2, local_heads=2, decoder_layers=2,
                  hash_vocab=97, patching_mode="space", has_patcher=False)
    blt = BLTForCausalLM.from_pretrained(tmp_path / "blt").eval()
    assert not blt.config.needs_global_projection  # 2 x 32 = 64: patch vectors enter the Llama layers directly
    torch.manual_seed(2)
    vectors = torch.randn(2, 90, 64)
    with torch.no_grad():
        reference = llama_layers(llama, vectors)
        torch.testing.assert_close(blt_global(blt, vectors), reference, atol=1e-4, rtol=0)
        # incrementally: one patch at a time through both caches
        llama_cache, patch_cache, ours, theirs = DynamicCache(config=llama.config), PatchKVCache(3, 2, "cpu"), [], []
        for step in range(20):
            piece = vectors[:, step : step + 1]
            ours.append(blt_global(blt, piece, patch_cache))
            theirs.append(llama_layers(llama, piece, llama_cache))
        torch.testing.assert_close(torch.cat(ours, 1), torch.cat(theirs, 1), atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.cat(ours, 1), reference[:, :20], atol=1e-4, rtol=0)
    # the converted BLT is a working model: loss and cached generation equal to recomputation
    ids = random_ids(40, seed=2)
    with torch.no_grad():
        assert torch.isfinite(blt(ids, labels=ids).loss)
        cached = blt.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        uncached = blt.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, use_cache=False)
    assert torch.equal(cached, uncached)


def test_rope_layout_permutation_round_trips():
    weight = torch.arange(4 * 8 * 3, dtype=torch.float32).view(32, 3)
    assert torch.equal(pairs_to_halves(halves_to_pairs(weight, 4), 4), weight)
    # head 0, pair 1 = rows (1, 1 + 4) of the halves layout
    assert torch.equal(halves_to_pairs(weight, 4)[2:4], weight[[1, 5]])


def test_projection_is_added_when_patch_vectors_do_not_match_the_llama_width(tmp_path):
    tiny_llama("gqa").save_pretrained(tmp_path / "llama")
    model = convert_llama(tmp_path / "llama", tmp_path / "blt", cross_attn_k=3, local_hidden_size=32,
                          local_heads=2, hash_vocab=97, patching_mode="byte", has_patcher=False)
    assert model.config.needs_global_projection
    assert model.model.global_transformer.token_embedding_projection.weight.shape == (64, 96)


def save_donor(folder, kind):
    """A folder to copy the entropy model from: a standalone `BLTPatcher` or a whole BLT. Returns its patcher."""
    if kind == "standalone_patcher":
        torch.manual_seed(5)
        config = BLTPatcherConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=48, sliding_window=20)
        patcher = perturb_norms(BLTPatcher(config), seed=5).eval()
        patcher.save_pretrained(folder)
        return patcher
    donor = tiny_model(seed=4, patching_threshold=5.0)
    donor.save_pretrained(folder)
    return donor.model.patcher


@pytest.mark.parametrize("kind", ["standalone_patcher", "blt_folder"])
def test_command_line_copies_the_entropy_model_exactly(tmp_path, kind):
    from blt_hf.tools.cli import main

    source_patcher = save_donor(tmp_path / "donor", kind)
    tiny_llama("gqa").save_pretrained(tmp_path / "llama")
    assert main(["convert-llama", str(tmp_path / "llama"), str(tmp_path / "blt"), "--patcher", str(tmp_path / "donor"),
                 "--local-heads", "2", "--hash-vocab", "97", "--decoder-layers", "1"]) == 0
    blt = BLTForCausalLM.from_pretrained(tmp_path / "blt").eval()
    copied = blt.model.patcher.state_dict()
    assert copied.keys() == source_patcher.state_dict().keys()
    for name, tensor in source_patcher.state_dict().items():
        assert torch.equal(copied[name], tensor), name
    for field in ("num_hidden_layers", "num_key_value_heads", "intermediate_size", "sliding_window"):
        assert getattr(blt.config.patcher_config, field) == getattr(source_patcher.config, field), field
    ids = random_ids(60, seed=5)
    with torch.no_grad():
        assert torch.equal(blt.model.patcher(ids).entropies, source_patcher(ids).entropies)
    # a BLT source also hands over its patching settings
    assert blt.config.patching_threshold == (5.0 if kind == "blt_folder" else BLTConfig().patching_threshold)


def test_wrong_inputs_fail_clearly_and_leave_nothing(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="'gpt2' checkpoint; expected a Llama"):
        convert_llama(tmp_path / "gpt2", tmp_path / "out")
    llama = tiny_llama("gqa")
    llama.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ValueError, match="shards listed in model.safetensors.index.json are missing"):
        convert_llama(tmp_path / "sharded", tmp_path / "out")
    llama.save_pretrained(tmp_path / "lying")
    config = json.loads((tmp_path / "lying" / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "lying" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shapes that disagree with the config"):
        convert_llama(tmp_path / "lying", tmp_path / "out", local_heads=2, hash_vocab=97, patching_mode="space",
                      has_patcher=False)  # no default-size entropy model to initialise
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_failure_while_writing_leaves_nothing_and_never_clobbers_the_destination(tmp_path, monkeypatch):
    from blt_hf import BLTTokenizer

    tiny_llama("gqa").save_pretrained(tmp_path / "llama")
    options = dict(local_heads=2, hash_vocab=97, patching_mode="space", has_patcher=False)

    with monkeypatch.context() as patch:
        patch.setattr(BLTTokenizer, "save_pretrained", fail_after_the_weights)
        with pytest.raises(OSError, match="disk full"):
            convert_llama(tmp_path / "llama", tmp_path / "out", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous.txt").write_text("an earlier conversion")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        convert_llama(tmp_path / "llama", tmp_path / "out", **options)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama", "out"]
    with pytest.raises(ValueError, match="previous.txt is a file, so the output folder .* cannot be made"):
        convert_llama(tmp_path / "llama", tmp_path / "out" / "previous.txt" / "model", **options)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]


def test_command_line_converts_a_llama_folder(tmp_path):
    import subprocess
    import sys

    tiny_llama("gqa").save_pretrained(tmp_path / "llama")
    result = subprocess.run(
        [sys.executable, "conversion/convert_llama.py", str(tmp_path / "llama"), str(tmp_path / "blt"),
         "--local-heads", "2", "--hash-vocab", "97", "--decoder-layers", "1", "--patching-mode", "space"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((tmp_path / "blt" / "config.json").read_text())
    assert config["global_config"]["num_key_value_heads"] == 2 and config["patching_mode"] == "space"
    assert config["decoder_config"]["num_hidden_layers"] == 1


@pytest.mark.parametrize("name, shape", [
    ("llama-3.1-8b", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, tie_word_embeddings=False)),
    ("llama-3.2-1b", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, tie_word_embeddings=True)),
])
def test_real_llama_shapes_map_onto_the_global_transformer_on_the_meta_device(name, shape):
    from blt_hf.convert.checkpoints import check_tensors
    from blt_hf.convert.llama import blt_config_for_llama, global_state_from_llama

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0 if "3.2" in name else 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(vocab_size=128256, max_position_embeddings=131072, rope_parameters=rope, **shape)
    with torch.device("meta"):
        llama = LlamaForCausalLM(config)
        state = global_state_from_llama(llama.state_dict(), config)
        blt = BLTForCausalLM(blt_config_for_llama(config, hash_vocab=500002, local_hidden_size=1024,
                                                  local_heads=16, decoder_layers=9))
    expected = {f"model.global_transformer.{k}": v for k, v in blt.model.global_transformer.state_dict().items()
                if not k.startswith("token_embedding_projection")}
    check_tensors(state, expected, name)
    assert blt.config.needs_global_projection == (shape["hidden_size"] != 2048)


def _broken_llama(tmp_path, name, damage):
    """A tiny Llama folder (single-file safetensors) after `damage(folder)`."""
    folder = tmp_path / name
    tiny_llama("gqa").save_pretrained(folder)
    damage(folder)
    return folder


def _edit_state(edit):
    def damage(folder):
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        edit(state)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    return damage


def _edit_config(edit):
    def damage(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(edit(config)))

    return damage


def _as_torch_file(content):
    def damage(folder):
        (folder / "model.safetensors").unlink()
        torch.save(content, folder / "pytorch_model.bin")

    return damage


def _truncate(name):
    def damage(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return damage


Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
BROKEN_LLAMAS = {
    "q_proj_not_fitting_the_heads": (_edit_state(lambda s: s.update({Q_PROJ: s[Q_PROJ][:-1]})),
                                     [Q_PROJ, "shapes that disagree with the config"]),
    "nan_weight": (_edit_state(lambda s: s[Q_PROJ].view(-1)[3:5].fill_(float("nan"))), ["NaN", Q_PROJ]),
    "integer_weight": (_edit_state(lambda s: s.update({Q_PROJ: s[Q_PROJ].long()})), ["not floating point", Q_PROJ]),
    "config_holding_a_list": (_edit_config(lambda c: [1, 2]), ["config.json", "must hold", "list"]),
    "heads_not_dividing_the_width": (_edit_config(lambda c: {**c, "num_attention_heads": 5}), ["config.json"]),
    "kv_heads_not_dividing_the_heads": (_edit_config(lambda c: {**c, "num_key_value_heads": 3}),
                                        ["does not fit together", "3 key/value heads"]),
    "width_the_weights_do_not_have": (_edit_config(lambda c: {**c, "hidden_size": 1024, "intermediate_size": 4096}),
                                      ["shapes that disagree with the config"]),
    "truncated_safetensors": (_truncate("model.safetensors"),
                              ["model.safetensors", "not a readable safetensors file", "truncated"]),
    "truncated_torch_file": (lambda f: (_as_torch_file(tiny_llama("gqa").state_dict())(f),
                                        _truncate("pytorch_model.bin")(f)),
                             ["pytorch_model.bin", "not a readable torch checkpoint"]),
    "torch_file_holding_a_list": (_as_torch_file([torch.zeros(2)]), ["pytorch_model.bin", "state dict", "list"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LLAMAS))
def test_a_broken_llama_fails_conversion_with_a_message_naming_it_and_leaves_nothing(tmp_path, case):
    damage, words = BROKEN_LLAMAS[case]
    folder = _broken_llama(tmp_path, "llama", damage)
    with pytest.raises(ValueError) as raised:
        convert_llama(folder, tmp_path / "out", local_heads=2, hash_vocab=97, patching_mode="space",
                      has_patcher=False)
    missing = [word for word in words if word not in str(raised.value)]
    assert not missing, f"{missing} not in {raised.value}"
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_shard_index_without_a_weight_map_of_names_is_named(tmp_path):
    llama = tiny_llama("gqa")
    llama.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": []}))
    with pytest.raises(ValueError, match="index.json: its weight_map must map tensor names to shard file names"):
        convert_llama(tmp_path / "sharded", tmp_path / "out")
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        convert_llama(tmp_path / "sharded", tmp_path / "out")
