"""Every bad input fails early with an error naming what is wrong (issue 21): one table of calls, error types and the
words their messages must hold; then the inputs that used to pass silently and now behave."""

import json
import math
import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest
import torch

import blt_hf
from blt_hf import BLTConfig, BLTForCausalLM, BLTModel, BLTPatcher, BLTPatcherConfig, BLTTokenizer
from tests.utils import random_ids, tiny_model

SOURCE = Path(blt_hf.__file__).resolve().parents[1]  # the blt_hf these tests import, for subprocesses


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, max_position_embeddings=64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """empty/: nothing; weights/: a tiny BLT's weights without config.json; llama/: a Llama config.json; model/: a
    saved tiny BLT; meta/: a params.json lacking fields; nonempty/: an earlier run's output."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "empty").mkdir()
    (root / "llama").mkdir()
    (root / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000}))
    tiny_model(seed=1, max_position_embeddings=4096).save_pretrained(root / "model")
    tiny_model(seed=1).save_pretrained(root / "weights")
    (root / "weights" / "config.json").unlink()
    (root / "meta").mkdir()
    (root / "meta" / "params.json").write_text(json.dumps({"model": {"dim_global": 64, "n_layers_global": 2}}))
    torch.save({}, root / "meta" / "consolidated.pth")
    (root / "nonempty").mkdir()
    (root / "nonempty" / "metrics.json").write_text("{}")
    _damaged_copies(root)
    return root


def _damaged_copies(root: Path) -> None:
    """truncated/: model.safetensors cut in half; lacking/: one weight removed; extra/: one weight too many;
    list_config/: a config.json holding a list; bad_index/: sharded, its index's weight_map a list."""
    from safetensors.torch import load_file, save_file

    for name in ("truncated", "lacking", "extra", "list_config"):
        tiny_model(seed=1).save_pretrained(root / name)
    data = (root / "truncated" / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(data[: len(data) // 2])
    for name, edit in (("lacking", lambda s: s.pop("model.global_transformer.layers.0.mlp.up_proj.weight")),
                       ("extra", lambda s: s.update({"model.global_transformer.layers.9.mlp.up_proj.weight":
                                                     torch.zeros(3)}))):
        state = load_file(str(root / name / "model.safetensors"))
        edit(state)
        save_file(state, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    (root / "list_config" / "config.json").write_text("[1, 2]")
    tiny_model(seed=1).save_pretrained(root / "bad_index", max_shard_size="100KB")
    (root / "bad_index" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": []}))


def _cached_rows(model, rows):
    """The cache of a forward over `rows` (ids), or over that many random rows of 5 bytes."""
    with torch.no_grad():
        ids = random_ids(5, batch=rows) if isinstance(rows, int) else rows
        return model(ids, use_cache=True).past_key_values


def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                       vocab_size=300)


def _generate(model, ids, **kwargs):
    return model.generate(ids, do_sample=False, eos_token_id=None, **kwargs)


def _train_options(*argv):
    from blt_hf.training.entry_points import parse_options

    return parse_options(["--train", "a.txt", *argv], "train")


# (name, call(model, folders), error type, words the message must contain)
CASES = [
    # --- configs: wrong types name the field; NaN/inf and bool-for-int rejected
    ("threshold_string", lambda m, f: BLTConfig(patching_threshold="high"), ValueError,
     ["BLTConfig.patching_threshold", "number", "'high'"]),
    ("threshold_nan", lambda m, f: BLTConfig(patching_threshold=math.nan), ValueError,
     ["patching_threshold", "finite", "nan"]),
    ("threshold_add_inf", lambda m, f: BLTConfig(patching_threshold_add=math.inf), ValueError,
     ["patching_threshold_add", "finite"]),
    ("patch_size_string", lambda m, f: BLTConfig(patch_size="abc"), ValueError, ["patch_size", "integer", "'abc'"]),
    ("patch_size_bool", lambda m, f: BLTConfig(patch_size=True), ValueError, ["patch_size", "integer", "bool"]),
    ("cross_attn_k_word", lambda m, f: BLTConfig(cross_attn_k="eight"), ValueError, ["cross_attn_k", "integer"]),
    ("cross_attn_k_none", lambda m, f: BLTConfig(cross_attn_k=None), ValueError, ["cross_attn_k", "None"]),
    ("max_positions_float", lambda m, f: BLTConfig(max_position_embeddings=1.5), ValueError,
     ["max_position_embeddings", "integer"]),
    ("monotonicity_string", lambda m, f: BLTConfig(monotonicity="yes"), ValueError, ["monotonicity", "True or False"]),
    ("hash_vocab_bool", lambda m, f: BLTConfig(encoder_hash_byte_group_vocab=False), ValueError,
     ["encoder_hash_byte_group_vocab", "integer"]),
    ("hash_sizes_bool", lambda m, f: BLTConfig(encoder_hash_byte_group_size=[3, True]), ValueError,
     ["encoder_hash_byte_group_size", "integers"]),
    ("encoder_width_string", lambda m, f: BLTConfig(encoder_config={"hidden_size": "abc"}), ValueError,
     ["encoder_config.hidden_size", "integer"]),
    ("global_layers_none", lambda m, f: BLTConfig(global_config={"num_hidden_layers": None}), ValueError,
     ["global_config.num_hidden_layers", "integer", "None"]),
    ("decoder_window_string", lambda m, f: BLTConfig(decoder_config={"sliding_window": "wide"}), ValueError,
     ["decoder_config.sliding_window"]),
    ("patcher_eps_zero", lambda m, f: BLTConfig(patcher_config={"rms_norm_eps": 0}), ValueError,
     ["patcher_config.rms_norm_eps", "> 0"]),
    ("decoder_dropout", lambda m, f: BLTConfig(decoder_config={"dropout": 1.5}), ValueError,
     ["decoder_config.dropout", "[0, 1)"]),
    ("rope_theta_negative", lambda m, f: BLTConfig(global_config={"rope_parameters": {"rope_theta": -1.0}}),
     ValueError, ["global_config.rope_parameters", "rope_theta"]),
    ("sub_config_string", lambda m, f: BLTConfig(encoder_config="abc"), ValueError, ["encoder_config", "dict"]),
    ("sub_config_wrong_class", lambda m, f: BLTConfig(encoder_config=BLTPatcherConfig()), ValueError,
     ["encoder_config", "BLTLocalEncoderConfig", "BLTPatcherConfig"]),
    ("eos_list_out_of_range", lambda m, f: BLTConfig(eos_token_id=[2, 300]), ValueError, ["eos_token_id", "0..3"]),
    ("patcher_config_alone", lambda m, f: BLTPatcherConfig(hidden_size=True), ValueError,
     ["patcher_config.hidden_size", "bool"]),
    # --- model inputs
    ("empty_input", lambda m, f: m(torch.zeros(1, 0, dtype=torch.long)), ValueError,
     ["input_ids", "[1, 0]", "at least one"]),
    ("batch_of_zero", lambda m, f: m(torch.zeros(0, 5, dtype=torch.long)), ValueError, ["input_ids", "[0, 5]"]),
    ("mask_of_halves", lambda m, f: m(random_ids(6), attention_mask=torch.full((1, 6), 0.5)), ValueError,
     ["attention_mask", "only 0", "1"]),
    ("mask_of_twos", lambda m, f: m(random_ids(6), attention_mask=torch.full((1, 6), 2)), ValueError,
     ["attention_mask", "only 0"]),
    ("labels_too_short", lambda m, f: m(random_ids(6), labels=random_ids(5)), ValueError,
     ["labels", "[1, 5]", "[1, 6]"]),
    ("labels_out_of_range", lambda m, f: m(random_ids(6), labels=torch.full((1, 6), 300)), ValueError,
     ["labels", "0..259", "-100", "300"]),
    ("labels_float", lambda m, f: m(random_ids(6), labels=random_ids(6).float()), ValueError,
     ["labels", "integer", "float32"]),
    ("patcher_labels_short", lambda m, f: m.model.patcher(random_ids(6), labels=random_ids(4)), ValueError,
     ["labels", "[1, 4]"]),
    ("patcher_chunk_zero", lambda m, f: m.model.patcher(random_ids(6), chunk_size=0), ValueError,
     ["chunk_size", ">= 1"]),
    ("generate_empty_prompt", lambda m, f: _generate(m, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=3),
     ValueError, ["prompt", "at least one byte"]),
    ("generate_all_padding",
     lambda m, f: _generate(m, random_ids(4, batch=2), attention_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]),
                            max_new_tokens=3),
     ValueError, ["prompt rows [1]", "all padding"]),
    ("generate_past_the_context", lambda m, f: _generate(m, random_ids(60), max_new_tokens=10), ValueError,
     ["60 bytes", "max_new_tokens=10", "max_position_embeddings=64", "max_new_tokens <= 4"]),
    # --- loading: a folder without config.json never builds a default model
    ("causal_lm_without_config", lambda m, f: BLTForCausalLM.from_pretrained(f / "weights"), OSError,
     ["has no config.json", "BLTForCausalLM"]),
    ("model_without_config", lambda m, f: BLTModel.from_pretrained(f / "weights"), OSError, ["has no config.json"]),
    ("empty_folder", lambda m, f: BLTForCausalLM.from_pretrained(f / "empty"), OSError, ["has no config.json"]),
    ("patcher_without_config", lambda m, f: BLTPatcher.from_pretrained(f / "empty"), OSError,
     ["has no config.json", "BLTPatcher"]),
    ("missing_local_folder", lambda m, f: BLTForCausalLM.from_pretrained(str(f / "typo" / "model")), OSError,
     ["no such checkpoint folder"]),
    # --- a fixed byte vocabulary: nothing pretends to grow it
    ("resize_token_embeddings", lambda m, f: m.resize_token_embeddings(261), ValueError,
     ["fixed at 260 ids", "261"]),
    ("resize_token_embeddings_padded", lambda m, f: m.resize_token_embeddings(pad_to_multiple_of=64), ValueError,
     ["fixed at 260 ids", "320"]),
    ("tokenizer_add_tokens", lambda m, f: BLTTokenizer().add_tokens(["<new>"]), ValueError,
     ["fixed vocabulary", "<new>"]),
    ("tokenizer_add_special_tokens",
     lambda m, f: BLTTokenizer().add_special_tokens({"additional_special_tokens": ["<x>"]}), ValueError,
     ["fixed vocabulary", "<x>"]),
    ("forward_output_attentions", lambda m, f: m(random_ids(6), output_attentions=True), ValueError,
     ["attention weights", "output_attentions"]),
    ("generate_output_attentions",
     lambda m, f: _generate(m, random_ids(6), max_new_tokens=2, return_dict_in_generate=True, output_attentions=True),
     ValueError, ["attention weights", "output_attentions"]),
    ("missing_tokenizer_folder", lambda m, f: BLTTokenizer.from_pretrained(str(f / "typo" / "model")), OSError,
     ["typo/model", "no such tokenizer folder"]),
    ("llama_folder", lambda m, f: BLTForCausalLM.from_pretrained(f / "llama"), ValueError,
     ["'llama' checkpoint", "blt-hf convert-llama"]),
    ("patcher_from_blt_folder", lambda m, f: BLTPatcher.from_pretrained(f / "model"), ValueError,
     ["'blt_hf' checkpoint", "BLTPatcher"]),
    ("truncated_weights", lambda m, f: BLTForCausalLM.from_pretrained(f / "truncated"), ValueError,
     ["model.safetensors", "not a readable safetensors file", "truncated"]),
    ("weights_lacking_a_tensor", lambda m, f: BLTForCausalLM.from_pretrained(f / "lacking"), ValueError,
     ["lacks 1 weights", "layers.0.mlp.up_proj.weight", "start random", "output_loading_info=True"]),
    ("weights_holding_a_tensor_too_many", lambda m, f: BLTForCausalLM.from_pretrained(f / "extra"), ValueError,
     ["no place for", "layers.9.mlp.up_proj.weight"]),
    ("config_holding_a_list", lambda m, f: BLTForCausalLM.from_pretrained(f / "list_config"), ValueError,
     ["config.json", "must hold", "list"]),
    ("shard_index_weight_map_a_list", lambda m, f: BLTForCausalLM.from_pretrained(f / "bad_index"), ValueError,
     ["model.safetensors.index.json", "weight_map"]),
    ("tokenizer_patch_lengths_of_bad_ids",
     lambda m, f: BLTTokenizer().attach_model(m).patch_lengths(torch.tensor([[1, 5, 999]])), ValueError,
     ["patch_lengths", "0..259", "999"]),
    ("tokenizer_decode_bytes_of_bad_ids", lambda m, f: BLTTokenizer().decode_bytes([-1, 300, 108]), ValueError,
     ["decode_bytes", "-1", "300"]),
    ("tokenizer_decode_bytes_of_a_string", lambda m, f: BLTTokenizer().decode_bytes("abc"), TypeError,
     ["decode_bytes", "str"]),
    # --- caches that belong to other rows
    ("cache_of_other_rows_in_forward",
     lambda m, f: m(random_ids(1, batch=4), past_key_values=_cached_rows(m, 2), use_cache=True), ValueError,
     ["past_key_values holds 2 rows", "input_ids has 4"]),
    ("cache_of_other_rows_in_generate",
     lambda m, f: _generate(m, random_ids(8, batch=4), past_key_values=_cached_rows(m, 2), max_new_tokens=2),
     ValueError, ["past_key_values holds 2 rows", "the prompt has 4"]),
    ("cache_with_beams",
     lambda m, f: _generate(m, random_ids(8, batch=2), past_key_values=_cached_rows(m, random_ids(8, batch=2)[:, :5]),
                            num_beams=2, max_new_tokens=2),
     ValueError, ["num_beams", "without a cache"]),
    ("generate_eos_outside_the_vocabulary",
     lambda m, f: m.generate(random_ids(4), do_sample=False, eos_token_id=999, max_new_tokens=2), ValueError,
     ["eos_token_id", "0..259", "999"]),
    ("generate_negative_pad", lambda m, f: _generate(m, random_ids(4), pad_token_id=-5, max_new_tokens=2), ValueError,
     ["pad_token_id", "-5"]),
    ("generate_from_embeddings",
     lambda m, f: m.generate(inputs_embeds=torch.zeros(1, 3, 64), max_new_tokens=2), ValueError,
     ["needs input_ids"]),
    # --- conversions and tools
    ("llama_cross_attn_k_zero",
     lambda m, f: import_module("blt_hf.convert.llama").blt_config_for_llama(_llama_config(),
                                                                                               cross_attn_k=0),
     ValueError, ["cross_attn_k", ">= 1"]),
    ("meta_params_lacking_fields",
     lambda m, f: import_module("blt_hf.convert.meta").config_from_meta({"dim_global": 8}, None, None),
     ValueError, ["lack", "cross_attn_k", "n_heads_global"]),
    ("meta_entropy_lacking_fields",
     lambda m, f: import_module("blt_hf.convert.meta").entropy_config_from_meta({}, "hub"),
     ValueError, ["lack", "'dim'", "'n_layers'"]),
    ("encode_bytes_of_a_string", lambda m, f: BLTTokenizer().encode_bytes("abc"), TypeError,
     ["encode_bytes takes bytes", "str"]),
    ("train_into_another_run", lambda m, f: _train_options("--output", str(f / "nonempty")), ValueError,
     ["already holds files", "--resume", "--overwrite"]),
    ("train_output_is_a_file", lambda m, f: _train_options("--output", str(f / "nonempty" / "metrics.json")),
     ValueError, ["is a file"]),
    ("train_steps_zero", lambda m, f: _train_options("--steps", "0", "--output", str(f / "new")), ValueError,
     ["option steps", "integer >= 1", "0"]),
    ("train_options_file_types", lambda m, f: _train_options("--options", str(_options_file(f, {"batch_size": "8"})),
                                                             "--output", str(f / "new")),
     ValueError, ["option batch_size", "integer", "'8'"]),
    ("bpb_rows_of_zero", lambda m, f: import_module("blt_hf.evaluation.metrics").bits_per_byte(m, [], 0), ValueError,
     ["batch_size", ">= 1"]),
]


def _options_file(folder: Path, values: dict) -> Path:
    path = folder / "options.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("name, call, error, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_fails_early_with_a_message_naming_it(model, folders, name, call, error, words):
    with pytest.raises(error) as raised:
        call(model, folders)
    message = str(raised.value)
    missing = [word for word in words if word not in message]
    assert not missing, f"{name}: {missing} not in {message!r}"


# ------------------------------------------------------------------ the silent cases now behave
def test_eval_bpb_scores_a_latin1_file_as_exactly_its_bytes(folders, tmp_path):
    from blt_hf.tools.cli import evaluate_bits_per_byte

    latin1 = ("café crème brûlée, ¿qué? " * 60).encode("latin-1")[:1024]
    assert len(latin1) == 1024
    (tmp_path / "latin1.txt").write_bytes(latin1)
    result = evaluate_bits_per_byte(str(folders / "model"), [str(tmp_path / "latin1.txt")], row_length=2048)
    assert result["bytes"] == 1024
    assert math.isfinite(result["bits_per_byte"])  # (it used to score 3072 bytes: each \xe9 as 3 replacement bytes)


def test_training_text_keeps_the_file_bytes(tmp_path):
    from blt_hf.training.data import pack_documents, text_dataset

    data = bytes(range(256)) * 2 + b"\n\nsecond \xff paragraph"
    (tmp_path / "raw.bin").write_bytes(data)
    rows = pack_documents(text_dataset(files=[str(tmp_path / "raw.bin")]), row_length=1024)
    ids = rows[0]["input_ids"][1 : 1 + len(data)]
    assert bytes(i - 4 for i in ids) == data
    paragraphs = text_dataset(files=[str(tmp_path / "raw.bin")], split_paragraphs=True)
    assert paragraphs[-1]["text"] == b"second \xff paragraph"


def test_generate_up_to_the_context_still_works(model):
    out = _generate(model, random_ids(60), max_new_tokens=4)
    assert out.shape == (1, 64)


def test_from_pretrained_with_config_given_needs_no_config_json(folders, tmp_path):
    source = BLTForCausalLM.from_pretrained(folders / "model")
    source.save_pretrained(tmp_path / "weights_only")
    (tmp_path / "weights_only" / "config.json").unlink()
    loaded = BLTForCausalLM.from_pretrained(tmp_path / "weights_only", config=source.config)
    ids = random_ids(20)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, source(ids).logits)


def test_save_pretrained_removes_a_stale_shard_index(folders, tmp_path):
    model = BLTForCausalLM.from_pretrained(folders / "model")
    model.save_pretrained(tmp_path / "out", max_shard_size="100KB")
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    (tmp_path / "out" / "pytorch_model-00001-of-00002.bin").write_bytes(b"old")  # a shard an old index names
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    index["weight_map"]["old.weight"] = "pytorch_model-00001-of-00002.bin"
    (tmp_path / "out" / "model.safetensors.index.json").write_text(json.dumps(index))
    model.save_pretrained(tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if "model" in p.name and p.suffix != ".py")
    assert names == ["model.safetensors"]
    # a sharded save over a sharded save keeps its own, new index
    model.save_pretrained(tmp_path / "out", max_shard_size="100KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert all((tmp_path / "out" / shard).is_file() for shard in index["weight_map"].values())


def test_train_output_accepts_a_new_folder_or_an_explicit_resume_or_overwrite(folders):
    assert _train_options("--output", str(folders / "fresh")).output.endswith("fresh")
    assert _train_options("--output", str(folders / "nonempty"), "--resume").resume
    assert _train_options("--output", str(folders / "nonempty"), "--overwrite").overwrite


def test_missing_config_json_fails_fast_in_bounded_memory(folders):
    """Weights without config.json: the default BLTConfig (2048-wide, 25 global layers, 500002-row hash tables)
    would need far more than 3 GB."""
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
        "from blt_hf import BLTForCausalLM\n"
        "try:\n"
        f"    BLTForCausalLM.from_pretrained({str(folders / 'weights')!r})\n"
        "except OSError as error:\n"
        "    print('CLEAR:', error)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SOURCE), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CLEAR:" in done.stdout and "config.json" in done.stdout
