"""Byte-ification (`blt-hf byteify`): token patches, source vocabulary rows, the frozen teacher, stage-1 training.

A tiny random Llama with a real byte-level BPE tokenizer (trained here with `tokenizers` on real English text)
stands in for SmolLM2; transformers' `LlamaForCausalLM` is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from blt_hf.hashing import BLTVocabEmbedding
from blt_hf.tools.cli import main as cli_main
from blt_hf.training.byteify import (
    STAGE1_TRAINABLE,
    ByteifyOptions,
    ShardStream,
    SourceVocabulary,
    TeacherShards,
    TextWindowStream,
    boundary_labels,
    boundary_loss,
    byteify,
    byteify_model,
    evaluate_windows,
    stage1_loss,
    start_token_id,
    teacher_states,
    text_windows,
    token_lengths,
    token_patch_loss,
    train_stage,
    window_bytes,
)

DATA = Path(__file__).parent / "data" / "heldout_sample.txt"
TINY_LOCAL = dict(local_hidden_size=32, local_heads=2, decoder_layers=1, window=32, hash_vocab=64,
                  patcher_config=dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, sliding_window=32))


def train_tokenizer(text: str, size: int = 400) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def save_tiny_llama(folder: Path, tokenizer=None, tied: bool = False, embedding_scale: float = 1.0):
    """(folder, tokenizer, llama): a tiny random Llama saved with a real BPE tokenizer (trained when not given)."""
    tokenizer = tokenizer or train_tokenizer(DATA.read_text())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tied)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        llama.model.embed_tokens.weight.mul_(embedding_scale)
    llama.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, llama


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def byteified(source):
    folder, tokenizer, _ = source
    model, vocabulary = byteify_model(folder, tokenizer, **TINY_LOCAL)
    return model.eval(), vocabulary


def tokens_of(tokenizer, vocabulary, text: bytes):
    ids, lengths = token_lengths(tokenizer, vocabulary, text)
    return ids, lengths, torch.tensor([window_bytes(ids, vocabulary)]), torch.tensor([[1] + lengths])


def test_source_vocabulary_spells_every_text_the_tokenizer_splits(source):
    _, tokenizer, _ = source
    vocabulary = SourceVocabulary.from_tokenizer(tokenizer)
    text = "Naïve café — 3.14 × π, \t tabs\nand emoji 🙂".encode()
    ids, lengths = token_lengths(tokenizer, vocabulary, text)
    assert b"".join(vocabulary.token_bytes[i] for i in ids) == text
    assert sum(lengths) == len(text)
    assert vocabulary.token_bytes[tokenizer.convert_tokens_to_ids("<|endoftext|>")] is None


def test_global_transformer_on_token_patches_computes_the_llama_layers(source, byteified):
    """Freshly byte-ified, with the tokenizer's patches: the global states are transformers' Llama's own last
    hidden states before its final norm, for the same text (so the Llama's head reads them as its logits)."""
    _, tokenizer, llama = source
    model, vocabulary = byteified
    ids, _, byte_ids, patch_lengths = tokens_of(tokenizer, vocabulary, DATA.read_bytes()[:400])
    with torch.no_grad():
        ours = model.model(byte_ids, patch_lengths=patch_lengths, output_hidden_states=True,
                           use_cache=False).global_hidden_states[-1]
        token_ids = torch.tensor([[start_token_id(tokenizer)] + ids])
        reference = llama(token_ids, output_hidden_states=True)
    assert ours.shape[1] == len(ids)  # every token patch closed except the last (its next byte is unknown)
    logits = llama.lm_head(llama.model.norm(ours))
    assert torch.allclose(logits, reference.logits[:, : ours.shape[1]], atol=1e-4)


def test_vocabulary_embedding_adds_the_source_rows_of_the_longest_token_inside_the_patch(source, byteified):
    _, tokenizer, llama = source
    model, vocabulary = byteified
    table = model.model.encoder_vocab_embedding
    assert torch.equal(table.weight, llama.model.embed_tokens.weight)
    text = DATA.read_bytes()[:300]
    ids = torch.tensor([[1] + [b + 4 for b in text]])
    longest = torch.randint(1, 20, ids.shape, generator=torch.Generator().manual_seed(0))
    rows = table.lookup(ids, None, longest)
    by_bytes = {data: row for row, data in enumerate(vocabulary.token_bytes) if data is not None}
    for end in range(1, ids.shape[1]):  # brute force: the longest vocabulary string ending here
        expected = -1
        for size in range(1, min(int(longest[0, end]), table.max_bytes, end) + 1):
            expected = by_bytes.get(text[end - size : end], expected)
        assert int(rows[0, end]) == expected, end
    assert int(rows[0, 0]) == start_token_id(tokenizer)  # BOS stands for the source's start token
    assert torch.equal(table.embed(rows[:, 1:3]), llama.model.embed_tokens.weight[rows[0, 1:3]][None])
    assert torch.equal(table.embed(torch.tensor([-1])), torch.zeros(1, 64))


def test_vocabulary_embedding_refuses_two_tokens_with_the_same_bytes():
    table = BLTVocabEmbedding(3, 4, 8)
    with pytest.raises(ValueError, match="share a key"):
        table.set_vocabulary([b"ab", b"ab", None], 2)


def test_teacher_shards_hold_the_source_models_outputs_and_resume(tmp_path, source):
    folder, tokenizer, llama = source
    vocabulary = SourceVocabulary.from_tokenizer(tokenizer)
    windows = list(text_windows([DATA.read_bytes()[:3000]], tokenizer, vocabulary, 32))
    shards = TeacherShards(tmp_path / "teacher")
    assert shards.compute(llama, tokenizer, windows, 0, windows_per_shard=2, limit=4) == 4
    assert shards.compute(llama, tokenizer, windows, 0, windows_per_shard=2, limit=8) == 8  # resumes at 4
    from safetensors.torch import load_file

    stored = [load_file(str(f)) for f in shards.shards()]
    assert len(stored) == 4
    ids, lengths = windows[5]
    token_ids = torch.tensor([[0] + ids])
    with torch.no_grad():
        expected_logits = llama(token_ids).logits
    third = stored[2]
    assert third["token_ids"][1].tolist() == [0] + ids and third["byte_lengths"][1].tolist() == [1] + lengths
    logits = llama.lm_head(llama.model.norm(third["states"][1:2].float()))
    assert torch.allclose(logits, expected_logits, atol=5e-2)  # states are stored in float16


def test_given_patch_states_give_the_logits_of_running_the_global_transformer(source, byteified):
    _, tokenizer, llama = source
    model, vocabulary = byteified
    ids, _, byte_ids, patch_lengths = tokens_of(tokenizer, vocabulary, DATA.read_bytes()[500:800])
    with torch.no_grad():
        full = model(byte_ids, patch_lengths=patch_lengths, use_cache=False).logits
        states = teacher_states(llama, torch.tensor([[start_token_id(tokenizer)] + ids]))
        given = model(byte_ids, patch_lengths=patch_lengths, patch_states=states).logits
    assert torch.allclose(full, given, atol=1e-4)
    with pytest.raises(ValueError, match="patch_states must be"):
        model(byte_ids, patch_lengths=patch_lengths, patch_states=states[:, :3])


def test_boundary_labels_mark_the_bytes_before_each_token_start():
    lengths = torch.tensor([[1, 2, 3, 1]])  # BOS | ab | cde | f
    ids = torch.arange(7)[None] + 4
    labels = boundary_labels(ids, lengths, torch.ones_like(ids))
    assert labels.tolist() == [[-100, 0, 1, 0, 0, 1, -100]]


@pytest.mark.parametrize("with_padding", [False, True])
def test_boundary_patching_decodes_exactly_with_the_cache(byteified, with_padding):
    """Cached greedy generation in the new mode == uncached == a full recompute loop, with left padding."""
    model, _ = byteified
    torch.manual_seed(1)
    with torch.no_grad():  # a boundary head with decisive logits, so patches vary
        model.model.patcher.boundary_head.weight.normal_(0, 2.0)
    text = DATA.read_bytes()
    rows = [[1] + [b + 4 for b in text[:40]], [1] + [b + 4 for b in text[100:125]]]
    assert_greedy_decoding_is_exact(model, rows if with_padding else rows[:1], 24)
    with torch.no_grad():
        patches = model.model(torch.tensor([rows[0]]), output_patch_lengths=True, use_cache=False).patch_lengths
    assert 1 < int((patches > 0).sum()) < len(rows[0])  # neither one patch nor one byte per patch


def assert_greedy_decoding_is_exact(model, rows: list[list[int]], new_bytes: int) -> None:
    """Cached greedy generation of the left-padded rows == uncached == the plain loop recomputing each row alone."""
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    options = dict(attention_mask=mask, max_new_tokens=new_bytes, do_sample=False, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(ids, **options)
        assert torch.equal(cached, model.generate(ids, use_cache=False, **options))
        for row, prompt in enumerate(rows):
            sequence = torch.tensor([prompt])
            for _ in range(new_bytes):
                logits = model(sequence, use_cache=False).logits[:, -1]
                sequence = torch.cat((sequence, logits.argmax(-1, keepdim=True)), dim=1)
            assert cached[row, width - len(prompt) :].tolist() == sequence[0].tolist()


def test_stage1_and_the_boundary_predictor_learn_and_resume(tmp_path, source):
    folder, tokenizer, llama = source
    model, vocabulary = byteify_model(folder, tokenizer, **TINY_LOCAL)
    windows = list(text_windows([DATA.read_bytes()], tokenizer, vocabulary, 48))
    shards = TeacherShards(tmp_path / "teacher")
    shards.compute(llama, tokenizer, windows, start_token_id(tokenizer), windows_per_shard=4, limit=24)
    stream = ShardStream(shards, vocabulary, 4)
    global_before = {k: v.clone() for k, v in model.model.global_transformer.state_dict().items()}
    with torch.no_grad():
        first = stage1_loss(model, stream.batch(0)).item()
    patcher = model.model.patcher
    before = evaluate_windows(model, None, windows[:6], vocabulary, start_token_id(tokenizer))
    train_stage(patcher, patcher, boundary_loss, stream, tmp_path / "work", 60, 1e-2, ("",), "boundary")
    train_stage(model, model, stage1_loss, stream, tmp_path / "work", 30, 3e-3, STAGE1_TRAINABLE, "stage1")
    with torch.no_grad():
        assert stage1_loss(model, stream.batch(0)).item() < first - 0.3
    after = evaluate_windows(model, None, windows[:6], vocabulary, start_token_id(tokenizer))
    assert after["boundary_agreement"] > max(before["boundary_agreement"], 0.75)
    for name, tensor in model.model.global_transformer.state_dict().items():  # frozen in stage 1
        assert torch.equal(tensor, global_before[name]), name
    log = [json.loads(line) for line in (tmp_path / "work" / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 31))
    resumed, _ = byteify_model(folder, tokenizer, **TINY_LOCAL)
    train_stage(resumed, resumed, stage1_loss, stream, tmp_path / "work", 32, 3e-3, STAGE1_TRAINABLE, "stage1")
    log = [json.loads(line) for line in (tmp_path / "work" / "stage1" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-2:] == [31, 32]  # continued from the checkpoint, not from step 0


def test_byteify_command_writes_a_loadable_model_that_generates_exactly(tmp_path, source, capsys):
    folder, _, _ = source
    train, held = tmp_path / "train.txt", tmp_path / "heldout.txt"
    data = DATA.read_bytes()
    train.write_bytes(data[: len(data) * 3 // 4])
    held.write_bytes(data[len(data) * 3 // 4 :])
    out = tmp_path / "blt"
    code = cli_main(["byteify", str(folder), str(out), "--train", str(train), "--eval", str(held),
                     "--teacher-windows", "8", "--tokens-per-window", "48", "--batch-windows", "4",
                     "--boundary-steps", "5", "--stage1-steps", "5", "--stage2-steps", "2", "--eval-windows", "2",
                     "--local-hidden-size", "32", "--decoder-layers", "1"])
    assert code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results["source_bits_per_byte"] > 0 and results["blt_bits_per_byte"] > 0
    assert (tmp_path / "blt.work" / "stage2" / "state.json").is_file()
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    prompt = torch.tensor([[1] + [b + 4 for b in b"The house"]])
    with torch.no_grad():
        cached = loaded.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
        uncached = loaded.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, use_cache=False)
    assert torch.equal(cached, uncached)


def test_byteify_refuses_bad_sources_and_writes_nothing(tmp_path, source, capsys):
    folder, tokenizer, _ = source
    text = tmp_path / "t.txt"
    text.write_text("some text " * 50)
    not_llama = tmp_path / "gpt"
    not_llama.mkdir()
    (not_llama / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    other = tmp_path / "other"
    other.mkdir()
    big = train_tokenizer(DATA.read_text(), size=700)
    for name in ("config.json", "model.safetensors"):
        (other / name).write_bytes((folder / name).read_bytes())
    big.save_pretrained(other)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((folder / "config.json").read_bytes())
    tokenizer.save_pretrained(no_weights)
    cases = [(not_llama, "expected a Llama"), (other, "do not belong together"), (no_weights, "no weights"),
             (tmp_path / "missing", "no config.json")]
    for bad, message in cases:
        out = tmp_path / f"out_{bad.name}"
        code = cli_main(["byteify", str(bad), str(out), "--train", str(text), "--eval", str(text)])
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not Path(f"{out}.work").exists()
    with pytest.raises(FileNotFoundError):
        byteify(ByteifyOptions(str(folder), str(tmp_path / "o"), [str(tmp_path / "nope.txt")], [str(text)]))


def test_a_shipped_delta_assembles_into_the_model_and_checks_its_logits(tmp_path, source, byteified):
    from blt_hf.convert.byteified import assemble, export_delta

    folder, tokenizer, llama = source
    model, _ = byteified
    shipped = tmp_path / "shipped"
    export_delta(model, shipped, {"llama_folder": str(folder)})
    assert not (shipped / "model.safetensors").exists()
    delta_bytes = (shipped / "delta.safetensors").stat().st_size
    source_bytes = sum(p.numel() * 2 for n, p in model.named_parameters() if "global_transformer.layers" in n)
    assert delta_bytes < sum(p.numel() * 2 for p in model.parameters()) - source_bytes  # no source weights inside
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for f in shipped.iterdir():
        (tampered / f.name).write_bytes(f.read_bytes())
    spec = json.loads((tampered / "assembly.json").read_text())
    spec["checksum"]["mean_abs"] *= 1.5
    (tampered / "assembly.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="differ from the shipped checksum"):
        assemble(tampered, llama_folder=folder)
    assert not (tampered / "model.safetensors").exists()
    assemble(shipped, llama_folder=folder)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(shipped, trust_remote_code=True).eval()
    ids = torch.tensor([[1] + [b + 4 for b in DATA.read_bytes()[:200]]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids, use_cache=False).logits, atol=2e-2)
    # a model.safetensors assembled from an older delta is never reused: a new delta is assembled afresh
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)
    try:
        export_delta(model, tmp_path / "newer", {"llama_folder": str(folder)})
    finally:
        with torch.no_grad():
            model.lm_head.weight.sub_(0.5)
    for name in ("delta.safetensors", "assembly.json"):
        (shipped / name).write_bytes((tmp_path / "newer" / name).read_bytes())
    assemble(shipped, llama_folder=folder)
    reloaded = AutoModelForCausalLM.from_pretrained(shipped, trust_remote_code=True).eval()
    assert torch.equal(reloaded.lm_head.weight, (model.lm_head.weight + 0.5).half().float())


def test_stage2_trains_low_rank_factors_of_the_source_layers_that_ship_in_the_delta(tmp_path):
    """Stage 2 end to end in source patching: the Llama's layers change only through low-rank factors, which the
    delta carries and assembly merges; the assembled model is the trained one. (Source patching runs byte by
    byte through a cache even with use_cache=False, so the logits compared here are the cached decoding path's.)"""
    from transformers import AutoModelForCausalLM

    from blt_hf.convert.byteified import assemble, export_delta
    from blt_hf.training.low_rank import add_low_rank, low_rank_factors, remove_low_rank

    folder, tokenizer, _ = save_tiny_llama(tmp_path / "llama", tied=True, embedding_scale=8.0)
    model, vocabulary = byteify_model(folder, tokenizer, patching="source", **TINY_LOCAL)
    layers = "model.global_transformer.layers."
    base = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(layers)}
    ids = torch.tensor([[1] + [b + 4 for b in DATA.read_bytes()[:32]]])
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    names = add_low_rank(model, layers, rank=4)
    assert len(names) == 2 * 7 * 2  # q, k, v, o, gate, up, down of both layers, two factors each
    with torch.no_grad():
        # untrained factors change nothing (up to the order of float sums: hooked layers take the plain path)
        assert torch.allclose(model(ids, use_cache=False).logits, before, atol=1e-5)
    windows = list(text_windows([DATA.read_bytes()], tokenizer, vocabulary, 32))[:8]
    stream = TextWindowStream(windows, vocabulary, 4, start_token_id(tokenizer))
    assert stream.batch(0)["patch_lengths"][:, 0].eq(1).all()  # BOS is its own patch, then the tokens
    with torch.no_grad():
        first = token_patch_loss(model, stream.batch(0)).item()
    train_stage(model, model, token_patch_loss, stream, tmp_path / "work", 12, 3e-3, STAGE1_TRAINABLE + tuple(names),
                "stage2", rate_scales={layers: 0.5})
    with torch.no_grad():
        assert token_patch_loss(model, stream.batch(0)).item() < first - 0.2
        trained = model(ids, use_cache=False).logits
    for name, tensor in base.items():  # the base weights stay; only the factors moved
        assert torch.equal(model.state_dict()[name], tensor), name
    factors = low_rank_factors(model)
    assert all(factors[f"{n.removesuffix('.low_rank_up')}.up"].abs().max() > 0 for n in names if n.endswith("_up"))
    remove_low_rank(model)
    shipped = tmp_path / "shipped"
    export_delta(model, shipped, {"llama_folder": str(folder)}, low_rank=factors)
    assemble(shipped, llama_folder=folder)
    loaded = AutoModelForCausalLM.from_pretrained(shipped, trust_remote_code=True).eval()
    q = "model.global_transformer.layers.0.self_attn.q_proj"
    merged = base[f"{q}.weight"] + factors[f"{q}.up"].half().float() @ factors[f"{q}.down"].half().float()
    assert torch.allclose(loaded.state_dict()[f"{q}.weight"], merged, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(loaded(ids, use_cache=False).logits, trained, atol=5e-2)


def test_mixing_two_shipped_deltas_interpolates_trained_weights_and_scales_the_low_rank_change(tmp_path):
    """WiSE-FT between a stage-1 folder (no low-rank factors) and a stage-2 folder (local stacks moved, factors on
    the source's layers): the assembled mix holds (1 - a) * before + a * after in every trained weight, the source
    layer plus a times up @ down, and alpha 1 gives back the stage-2 model's logits."""
    from transformers import AutoModelForCausalLM

    from blt_hf.convert.byteified import export_delta, mix_deltas, mix_folders

    folder, tokenizer, _ = save_tiny_llama(tmp_path / "llama", tied=True, embedding_scale=8.0)
    model, _ = byteify_model(folder, tokenizer, patching="source", **TINY_LOCAL)
    source = {"llama_folder": str(folder)}
    export_delta(model, tmp_path / "stage1", source)
    q = "model.global_transformer.layers.0.self_attn.q_proj"
    base_q = model.state_dict()[f"{q}.weight"].clone()
    generator = torch.Generator().manual_seed(0)
    factors = {f"{q}.up": torch.randn(base_q.shape[0], 2, generator=generator) * 0.1,
               f"{q}.down": torch.randn(2, base_q.shape[1], generator=generator) * 0.1}
    with torch.no_grad():
        model.lm_head.weight.add_(0.25)
    export_delta(model, tmp_path / "stage2", source, low_rank=factors)
    ids = torch.tensor([[1] + [b + 4 for b in DATA.read_bytes()[:24]]])
    mixed = mix_folders(tmp_path / "stage1", tmp_path / "stage2", 0.25, tmp_path / "mix", folder)
    loaded = AutoModelForCausalLM.from_pretrained(mixed, trust_remote_code=True).eval()
    state = loaded.state_dict()
    expected_head = (model.lm_head.weight - 0.25).half().float() * 0.75 + model.lm_head.weight.half().float() * 0.25
    assert torch.allclose(state["lm_head.weight"], expected_head, atol=2e-3)
    update = factors[f"{q}.up"].half().float() @ factors[f"{q}.down"].half().float()
    assert torch.allclose(state[f"{q}.weight"], base_q + 0.25 * update, atol=1e-3)
    assert not (tmp_path / "mix.partial").exists()
    whole = mix_folders(tmp_path / "stage1", tmp_path / "stage2", 1.0, tmp_path / "whole", folder)
    assert not (tmp_path / "stage2" / "model.safetensors").exists()  # mixing leaves its inputs as they were
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(whole, trust_remote_code=True).eval()(ids).logits
        model.state_dict()[f"{q}.weight"].copy_(base_q + update)  # the stage-2 model, factors merged by hand
        assert torch.allclose(got, model.eval()(ids, use_cache=False).logits, atol=5e-2)
    with pytest.raises(ValueError, match="alpha must lie"):
        mix_deltas({}, {}, 1.5)
    with pytest.raises(ValueError, match="low-rank factors"):
        mix_folders(tmp_path / "stage2", tmp_path / "stage2", 0.5, tmp_path / "bad", folder)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_a_work_folder_resumes_only_the_run_it_was_made_for(tmp_path, source, capsys):
    """Teacher outputs and checkpoints in --work belong to one source, training text and model: another run is
    refused (naming what differs) instead of silently training on the old run's stored outputs."""
    folder, tokenizer, _ = source
    train = tmp_path / "train.txt"
    train.write_bytes(DATA.read_bytes()[:6000])
    work = tmp_path / "work"
    tiny = ["--teacher-windows", "2", "--tokens-per-window", "32", "--batch-windows", "2", "--boundary-steps", "1",
            "--stage1-steps", "1", "--eval-windows", "1", "--local-hidden-size", "32", "--decoder-layers", "1"]

    def run(src, out, *extra):
        code = cli_main(["byteify", str(src), str(tmp_path / out), "--train", str(train), "--eval", str(train),
                         "--work", str(work), *tiny, *extra])
        return code, capsys.readouterr().err.strip()

    assert run(folder, "first")[0] == 0
    other, _, _ = save_tiny_llama(tmp_path / "other_llama", tokenizer, embedding_scale=2.0)
    others = [(other, [], "source weights"), (folder, ["--local-hidden-size", "48"], "model options")]
    for src, extra, differs in others:
        code, err = run(src, "second", *extra)
        assert code == 2 and "another byte-ification run" in err and differs in err, err
        assert not (tmp_path / "second").exists()
    assert run(folder, "again")[0] == 0  # the same run resumes (here: finds every stage done)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    code = cli_main(["byteify", str(folder), str(tmp_path / "third"), "--train", str(train), "--eval", str(train),
                     "--work", str(stray), *tiny])
    assert code == 2 and "holds no run.json" in capsys.readouterr().err
    assert (stray / "notes.txt").read_text() == "mine" and sorted(p.name for p in stray.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("edit, words", [
    (lambda config: {**config, "vocab_size": config["vocab_size"] + 1}, ["embed_tokens.weight has", "vocab_size="]),
    (lambda config: {**config, "hidden_size": 48, "head_dim": 12}, ["embed_tokens.weight has shape", "hidden_size=48"]),
])
def test_byteify_refuses_embeddings_that_disagree_with_the_config(tmp_path, source, edit, words):
    folder, tokenizer, _ = source
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            (bad / name).write_bytes((folder / name).read_bytes())
    (bad / "config.json").write_text(json.dumps(edit(json.loads((folder / "config.json").read_text()))))
    with pytest.raises(ValueError) as raised:
        byteify_model(bad, tokenizer, **TINY_LOCAL)
    assert all(word in str(raised.value) for word in words), raised.value
