"""Official checkpoint layouts (consolidated.pth + params.json, and the Hub mixin) convert into blt_hf folders that
give the logits of the same weights loaded through transformers' Blt; real 1B / 7B shapes on the meta device."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers.models.blt.modeling_blt import BltPatcher as TransformersBltPatcher

from blt_hf import BLTConfig, BLTForCausalLM, BLTPatcher
from blt_hf.convert.checkpoints import check_tensors, map_keys
from blt_hf.convert.meta import (
    BLT_KEY_TABLE,
    ENTROPY_KEY_TABLE,
    config_from_meta,
    convert_meta,
    convert_meta_entropy_model,
    entropy_config_from_meta,
    fuse_hash_tables,
)
from tests.utils import fail_after_the_weights, random_ids, separated_threshold, tiny_hf_config, tiny_hf_model

# transformers' documented renames (convert_blt_weights_to_hf.py), undone: transformers name -> official name
OFFICIAL_NAMES = [
    (".self_attn.", ".attention."), (".mlp.", ".feed_forward."), (".input_layernorm.", ".attention_norm."),
    (".post_attention_layernorm.", ".ffn_norm."), (".embed_tokens.", ".tok_embeddings."),
    (".q_norm.", ".cross_attn_norm_q."), (".k_norm.", ".cross_attn_norm_kv."), (".gate_proj.", ".w1."),
    (".down_proj.", ".w2."), (".up_proj.", ".w3."), (".q_proj.", ".wq."), (".k_proj.", ".wk."),
    (".v_proj.", ".wv."), (".o_proj.", ".wo."), (".lm_head.", ".output."),
]


def to_official(name):
    name = "." + name
    for ours, theirs in OFFICIAL_NAMES:
        name = name.replace(ours, theirs)
    return name[1:]


def official_checkpoint(hf_model):
    """The official BLT and entropy-model state dicts holding the weights of a transformers Blt."""
    blt, entropy = {}, {}
    tables = hf_model.config.encoder_hash_byte_group_nb_functions * len(hf_model.config.encoder_hash_byte_group_size)
    for name, tensor in hf_model.state_dict().items():
        tensor = tensor.clone()
        if name.startswith("model.patcher."):
            entropy[to_official(name[len("model.patcher."):])] = tensor
        elif name == "lm_head.weight":
            blt["local_decoder.output.weight"] = tensor
        elif name == "model.encoder_hash_tok_embedding.weight":
            for i, table in enumerate(tensor.chunk(tables)):
                blt[f"encoder_hash_tok_embedding.{i}.weight"] = table.clone()
        else:
            blt[to_official(name[len("model."):])] = tensor
    return blt, entropy


def official_args(hf_config):
    enc, dec, glob, pat = (hf_config.encoder_config, hf_config.decoder_config, hf_config.global_config,
                           hf_config.patcher_config)
    model = dict(
        vocab_size=260, dim_global=glob.hidden_size, n_layers_global=glob.num_hidden_layers,
        n_heads_global=glob.num_attention_heads, n_kv_heads_global=glob.num_key_value_heads,
        dim_local_encoder=enc.hidden_size, n_layers_local_encoder=enc.num_hidden_layers,
        n_heads_local_encoder=enc.num_attention_heads, dim_local_decoder=dec.hidden_size,
        n_layers_local_decoder=dec.num_hidden_layers, n_heads_local_decoder=dec.num_attention_heads,
        cross_attn_encoder=True, cross_attn_decoder=True, cross_attn_k=hf_config.cross_attn_k,
        cross_attn_nheads=enc.num_attention_heads, cross_attn_all_layers_encoder=enc.cross_attn_all_layers,
        cross_attn_all_layers_decoder=dec.cross_attn_all_layers, cross_attn_init_by_pooling=True,
        encoder_hash_byte_group_size=",".join(map(str, hf_config.encoder_hash_byte_group_size)),
        encoder_hash_byte_group_vocab=hf_config.encoder_hash_byte_group_vocab,
        encoder_hash_byte_group_nb_functions=hf_config.encoder_hash_byte_group_nb_functions,
        local_attention_window_len=hf_config.local_attention_window_len, max_encoder_seq_length=4096,
        max_seqlen=4096, rope_theta=500000.0, norm_eps=1e-5, multiple_of=32, ffn_dim_multiplier=1.0,
        patching_mode="entropy", patch_size=4.5, use_local_encoder_transformer=True, downsampling_by_pooling="max",
        share_encoder_decoder_emb=True, pm_size=0,
    )
    entropy = dict(dim=pat.hidden_size, n_layers=pat.num_hidden_layers, n_heads=pat.num_attention_heads,
                   max_seqlen=8192, ffn_dim_multiplier=1.0, vocab_size=260)
    return model, entropy


def tiny_official_pair(threshold=5.0, consolidated=True):
    # multiple_of=32 reproduces the tiny sizes: int(8 * 32 / 3) = 85 -> 96 for the 32-d local stacks,
    # int(8 * 64 / 3) = 170 -> 192 for the 64-d global stack. The official loader builds a consolidated entropy
    # model with multiple_of=256 (85 -> 256) and a 512-byte window, whatever its params.json says.
    hf_config = tiny_hf_config(window=16, threshold=threshold)
    patcher_ffn = 256 if consolidated else 96
    for sub, size in ((hf_config.patcher_config, patcher_ffn), (hf_config.encoder_config, 96),
                      (hf_config.decoder_config, 96), (hf_config.global_config, 192)):
        sub.intermediate_size = size
    hf_config.patcher_config.sliding_window = 512 if consolidated else 16
    hf = tiny_hf_model(hf_config, seed=7)
    return hf, official_args(hf.config)


def write_consolidated(folder, model_args, entropy_args, blt_state, entropy_state, threshold):
    (folder / "entropy_model").mkdir(parents=True)
    params = {"model": model_args, "data": {"patcher_args": {"patching_mode": "entropy", "threshold": threshold}},
              "entropy_model": entropy_args}
    (folder / "params.json").write_text(json.dumps(params))
    torch.save({"model": blt_state}, folder / "consolidated.pth")
    (folder / "entropy_model" / "params.json").write_text(json.dumps({"entropy_model": entropy_args}))
    torch.save({"model": entropy_state}, folder / "entropy_model" / "consolidated.pth")


def _compare(hf, ours):
    ids = random_ids(300, seed=8)
    with torch.no_grad():
        threshold = separated_threshold(hf.model.patcher(ids, patch_size=4, threshold=1.0)[0][:, 1:])
        hf.config.patching_threshold = ours.config.patching_threshold = threshold
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)


def test_consolidated_layout_converts_to_the_logits_of_transformers_blt(tmp_path):
    hf, (model_args, entropy_args) = tiny_official_pair()
    blt_state, entropy_state = official_checkpoint(hf)
    write_consolidated(tmp_path / "blt_1b", model_args, entropy_args, blt_state, entropy_state, 4.75)
    convert_meta(tmp_path / "blt_1b", tmp_path / "out")
    ours = BLTForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert ours.config.patching_threshold == 4.75  # read from data.patcher_args
    assert ours.config.patcher_config.rope_parameters["rope_theta"] == 10000.0
    _compare(hf, ours)


def test_hub_mixin_layout_converts_to_the_logits_of_transformers_blt(tmp_path):
    hf, (model_args, entropy_args) = tiny_official_pair(consolidated=False)
    blt_state, entropy_state = official_checkpoint(hf)
    (tmp_path / "blt").mkdir()
    (tmp_path / "entropy").mkdir()
    (tmp_path / "blt" / "config.json").write_text(json.dumps({"args": model_args}))
    (tmp_path / "blt" / "train_args.json").write_text(json.dumps({"data": {"patcher_args": {"threshold": 3.0}}}))
    save_file(blt_state, tmp_path / "blt" / "model.safetensors")
    hub_entropy_args = dict(entropy_args, rope_theta=10000.0, norm_eps=1e-5, sliding_window=16, multiple_of=32)
    (tmp_path / "entropy" / "config.json").write_text(json.dumps({"args": hub_entropy_args}))
    save_file(entropy_state, tmp_path / "entropy" / "model.safetensors")
    convert_meta(tmp_path / "blt", tmp_path / "out", entropy_model=tmp_path / "entropy")
    ours = BLTForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert ours.config.patcher_config.sliding_window == 16
    _compare(hf, ours)
    convert_meta_entropy_model(tmp_path / "entropy", tmp_path / "patcher")
    patcher = BLTPatcher.from_pretrained(tmp_path / "patcher")
    ids = random_ids(50, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(patcher(ids).entropies, hf.model.patcher(ids, patch_size=4, threshold=1.0)[0],
                                   atol=1e-5, rtol=0)


def test_consolidated_entropy_model_converts_to_the_entropies_of_transformers_blt_patcher(tmp_path):
    hf, (model_args, entropy_args) = tiny_official_pair(consolidated=True)
    assert isinstance(hf.model.patcher, TransformersBltPatcher)
    blt_state, entropy_state = official_checkpoint(hf)
    write_consolidated(tmp_path / "blt", model_args, entropy_args, blt_state, entropy_state, 1.0)
    convert_meta_entropy_model(tmp_path / "blt" / "entropy_model", tmp_path / "patcher")
    patcher = BLTPatcher.from_pretrained(tmp_path / "patcher").eval()
    # what the official loader builds, whatever params.json says: FFN rounded to 256, 512-byte window, theta 10000
    assert patcher.config.intermediate_size == 256 and patcher.config.sliding_window == 512
    assert patcher.config.rope_parameters["rope_theta"] == 10000.0
    for name, tensor in hf.model.patcher.state_dict().items():
        assert torch.equal(patcher.state_dict()[name], tensor), name
    ids = random_ids(700, seed=10)  # longer than the window
    with torch.no_grad():
        torch.testing.assert_close(patcher(ids).entropies, hf.model.patcher(ids, patch_size=4, threshold=1.0)[0],
                                   atol=1e-5, rtol=0)


def write_marker(path):
    """What a malicious pickle would run on loading: here, only a file written as evidence."""
    Path(path).write_text("code ran while unpickling")


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


@pytest.mark.parametrize("poisoned", ["blt", "entropy_model"])
def test_consolidated_pth_holding_a_pickled_object_is_refused_without_running_it(tmp_path, poisoned):
    control = tmp_path / "control.pth"
    torch.save({"model": {"payload": RunsCodeWhenUnpickled(tmp_path / "control_marker")}}, control)
    torch.load(control, weights_only=False)  # the payload is live: free unpickling runs it
    assert (tmp_path / "control_marker").is_file()

    hf, (model_args, entropy_args) = tiny_official_pair()
    blt_state, entropy_state = official_checkpoint(hf)
    marker = tmp_path / "marker"
    write_consolidated(tmp_path / "blt", model_args, entropy_args, blt_state, entropy_state, 1.0)
    poisoned_file = tmp_path / "blt" / ("consolidated.pth" if poisoned == "blt" else "entropy_model/consolidated.pth")
    state = blt_state if poisoned == "blt" else entropy_state
    torch.save({"model": dict(state, payload=RunsCodeWhenUnpickled(marker))}, poisoned_file)
    with pytest.raises(ValueError, match=r"consolidated\.pth holds pickled objects other than tensors.*refusing"):
        convert_meta(tmp_path / "blt", tmp_path / "out")
    if poisoned == "entropy_model":
        with pytest.raises(ValueError, match="refusing to load it"):
            convert_meta_entropy_model(tmp_path / "blt" / "entropy_model", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_failure_while_writing_leaves_nothing_and_never_clobbers_the_destination(tmp_path, monkeypatch):
    from blt_hf import BLTTokenizer

    hf, (model_args, entropy_args) = tiny_official_pair()
    write_consolidated(tmp_path / "blt", model_args, entropy_args, *official_checkpoint(hf), 1.0)

    with monkeypatch.context() as patch:
        patch.setattr(BLTTokenizer, "save_pretrained", fail_after_the_weights)
        with pytest.raises(OSError, match="disk full"):
            convert_meta(tmp_path / "blt", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blt"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous.txt").write_text("an earlier conversion")
    for convert_folder in (lambda: convert_meta(tmp_path / "blt", tmp_path / "out"),
                           lambda: convert_meta_entropy_model(tmp_path / "blt" / "entropy_model", tmp_path / "out")):
        with pytest.raises(ValueError, match="exists and is not an empty folder"):
            convert_folder()
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blt", "out"]


def test_unknown_and_missing_tensors_and_unsupported_options_are_listed(tmp_path):
    hf, (model_args, entropy_args) = tiny_official_pair()
    blt_state, entropy_state = official_checkpoint(hf)
    bogus = dict(blt_state, **{"local_encoder.extra_gate.weight": torch.zeros(2)})
    write_consolidated(tmp_path / "a", model_args, entropy_args, bogus, entropy_state, 1.0)
    with pytest.raises(ValueError, match=r"local_encoder\.extra_gate\.weight"):
        convert_meta(tmp_path / "a", tmp_path / "out")
    partial = {k: v for k, v in blt_state.items() if k != "local_decoder.norm.weight"}
    write_consolidated(tmp_path / "b", model_args, entropy_args, partial, entropy_state, 1.0)
    with pytest.raises(ValueError, match=r"missing \['model\.local_decoder\.norm\.weight'\]"):
        convert_meta(tmp_path / "b", tmp_path / "out")
    write_consolidated(tmp_path / "c", dict(model_args, cross_attn_encoder=False, non_linearity="gelu"),
                       entropy_args, blt_state, entropy_state, 1.0)
    with pytest.raises(ValueError, match="cross_attn_encoder=False.*non_linearity='gelu'"):
        convert_meta(tmp_path / "c", tmp_path / "out")
    assert not (tmp_path / "out").exists()


RELEASED = {
    # (encoder layers, heads, dim), (global layers, heads, dim), (decoder layers, heads, dim), cross heads, k
    "blt-1b": ((1, 16, 1024), (25, 16, 2048), (9, 16, 1024), 16, 2, 2816, 5632),
    "blt-7b": ((1, 20, 1280), (32, 32, 4096), (6, 20, 1280), 20, 4, 3584, 11008),
}


def official_block_meta_state(state, prefix, dim, ffn):
    """Add one official transformer block's names and shapes (attention, SwiGLU, two norms) on the meta device."""
    meta = torch.device("meta")
    for w in ("wq", "wk", "wv", "wo"):
        state[f"{prefix}.attention.{w}.weight"] = torch.empty(dim, dim, device=meta)
    state[f"{prefix}.feed_forward.w1.weight"] = torch.empty(ffn, dim, device=meta)
    state[f"{prefix}.feed_forward.w3.weight"] = torch.empty(ffn, dim, device=meta)
    state[f"{prefix}.feed_forward.w2.weight"] = torch.empty(dim, ffn, device=meta)
    state[f"{prefix}.attention_norm.weight"] = torch.empty(dim, device=meta)
    state[f"{prefix}.ffn_norm.weight"] = torch.empty(dim, device=meta)


def official_meta_state(encoder, global_, decoder, k, local_ffn, global_ffn, hash_rows=500002, groups=6):
    """Official parameter names and shapes written out from the architecture description, on the meta device."""
    meta = torch.device("meta")
    state = {}

    def block(prefix, dim, ffn):
        official_block_meta_state(state, prefix, dim, ffn)

    def cross(prefix, dim):
        for w in ("wq", "wk", "wv", "wo"):
            state[f"{prefix}.{w}.weight"] = torch.empty(dim, dim, device=meta)
        state[f"{prefix}.cross_attn_norm_q.weight"] = torch.empty(dim, device=meta)
        state[f"{prefix}.cross_attn_norm_kv.weight"] = torch.empty(dim, device=meta)

    d_local, d_global = encoder[2], global_[2]
    state["local_encoder.tok_embeddings.weight"] = torch.empty(260, d_local, device=meta)
    for i in range(encoder[0]):
        block(f"local_encoder.layers.{i}", d_local, local_ffn)
    cross("local_encoder.cross_attn_layers.0", d_local)
    state["local_encoder.patch_embedding_projection.weight"] = torch.empty(d_local * k, d_local, device=meta)
    for i in range(global_[0]):
        block(f"global_transformer.layers.{i}", d_global, global_ffn)
    if d_local * k != d_global:
        state["global_transformer.token_embedding_projection.weight"] = torch.empty(d_global, d_local * k, device=meta)
    for i in range(decoder[0]):
        block(f"local_decoder.layers.{i}", d_local, local_ffn)
        cross(f"local_decoder.cross_attn_layers.{i}", d_local)
    state["local_decoder.patch_embedding_projection.weight"] = torch.empty(d_local * k, d_global, device=meta)
    state["local_decoder.norm.weight"] = torch.empty(d_local, device=meta)
    state["local_decoder.output.weight"] = torch.empty(260, d_local, device=meta)
    for i in range(groups):
        state[f"encoder_hash_tok_embedding.{i}.weight"] = torch.empty(hash_rows, d_local, device=meta)
    return state


def official_entropy_meta_state(dim=768, layers=14, ffn=2048):
    """The released entropy model's official names and shapes (reference docs: 768-d, 14 layers, FFN 2048)."""
    meta = torch.device("meta")
    state = {"tok_embeddings.weight": torch.empty(260, dim, device=meta), "norm.weight": torch.empty(dim, device=meta),
             "output.weight": torch.empty(260, dim, device=meta)}
    for i in range(layers):
        official_block_meta_state(state, f"layers.{i}", dim, ffn)
    return state


@pytest.mark.parametrize("release", sorted(RELEASED))
def test_real_release_shapes_map_onto_the_derived_config_on_the_meta_device(release):
    encoder, global_, decoder, cross_heads, k, local_ffn, global_ffn = RELEASED[release]
    args = dict(
        vocab_size=260, dim_local_encoder=encoder[2], n_layers_local_encoder=encoder[0],
        n_heads_local_encoder=encoder[1], dim_global=global_[2], n_layers_global=global_[0],
        n_heads_global=global_[1], dim_local_decoder=decoder[2], n_layers_local_decoder=decoder[0],
        n_heads_local_decoder=decoder[1], cross_attn_encoder=True, cross_attn_decoder=True, cross_attn_k=k,
        cross_attn_nheads=cross_heads, cross_attn_all_layers_encoder=False, cross_attn_all_layers_decoder=True,
        cross_attn_init_by_pooling=True, encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8],
        encoder_hash_byte_group_vocab=500002, encoder_hash_byte_group_nb_functions=1, local_attention_window_len=512,
        max_encoder_seq_length=24576, max_seqlen=4096, rope_theta=500000.0, multiple_of=256, ffn_dim_multiplier=1.0,
        use_local_encoder_transformer=True,
    )
    entropy = entropy_config_from_meta(dict(dim=768, n_layers=14, n_heads=12, max_seqlen=8192,
                                            ffn_dim_multiplier=1.0, vocab_size=260), "consolidated")
    assert entropy["intermediate_size"] == 2048
    config = config_from_meta(args, {"threshold": 1.335442066192627}, entropy)
    assert config.encoder_config.intermediate_size == local_ffn and config.global_config.intermediate_size == global_ffn
    state = fuse_hash_tables(
        map_keys(official_meta_state(encoder, global_, decoder, k, local_ffn, global_ffn), BLT_KEY_TABLE, release),
        config.num_hash_embeddings, config.encoder_config.hidden_size,
    )
    state.update(map_keys(official_entropy_meta_state(), ENTROPY_KEY_TABLE, "entropy model"))
    with torch.device("meta"):
        model = BLTForCausalLM(config)
    check_tensors(state, model.state_dict(), release)
    assert isinstance(config, BLTConfig) and config.needs_global_projection == (release == "blt-7b")
    # counts on the meta device stated in the reference docs (transformers-blt.md), entropy model included
    total = sum(t.numel() for t in model.state_dict().values())
    patcher = sum(t.numel() for n, t in model.state_dict().items() if n.startswith("model.patcher."))
    assert round(patcher / 1e6, 1) == 99.5
    if release == "blt-1b":
        assert total == 4_633_391_872
    else:
        assert round(total / 1e9, 2) == 10.65


def test_command_line_converts_a_consolidated_folder(tmp_path):
    import subprocess
    import sys

    hf, (model_args, entropy_args) = tiny_official_pair()
    blt_state, entropy_state = official_checkpoint(hf)
    write_consolidated(tmp_path / "blt", model_args, entropy_args, blt_state, entropy_state, 2.5)
    command = [sys.executable, "conversion/convert_meta.py", str(tmp_path / "blt"), str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["patching_threshold"] == 2.5
