"""Chat through a byte-ified model: the source's chat template on the BLT's special ids.

A tiny random Llama with a real byte-level BPE tokenizer carrying a ChatML template (SmolLM2's markers) stands in
for SmolLM2-135M-Instruct. References: the source tokenizer's own ids for the markers and the rendered template's
bytes, and plain full recomputation for decoding.
"""

from __future__ import annotations

import pytest
import torch

from blt_hf import BLTConfig
from blt_hf.configuration_blt_hf import BOS_ID, BPE_DELIMITER_ID, EOS_ID
from blt_hf.token_head import BLTTokenHead
from blt_hf.tokenization_blt_hf import BLTTokenizer
from blt_hf.training.byteify import byteified_tokenizer, byteify_model, chat_markers
from tests.test_byteify import DATA, TINY_LOCAL, assert_greedy_decoding_is_exact, save_tiny_llama, train_tokenizer

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_LIKE = ("<|begin|>{% for message in messages %}{{'<|head|>' + message['role'] + '<|/head|>\n\n' + "
               "message['content'] + '<|eot|>'}}{% endfor %}")


def chat_tokenizer(template: str, markers: list[str], eos: str):
    tokenizer = train_tokenizer(DATA.read_text())
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    tokenizer.eos_token, tokenizer.chat_template = eos, template
    return tokenizer


@pytest.fixture(scope="module")
def chat_source(tmp_path_factory):
    tokenizer = chat_tokenizer(CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>")
    return save_tiny_llama(tmp_path_factory.mktemp("chat-llama"), tokenizer, tied=True, embedding_scale=8.0)


@pytest.fixture(scope="module")
def chat_model(chat_source):
    folder, tokenizer, _ = chat_source
    model, _ = byteify_model(folder, tokenizer, patching="source", **TINY_LOCAL)
    return model.eval()


def test_the_templates_markers_take_the_special_ids_and_stand_for_their_source_tokens(chat_source, chat_model):
    _, source, _ = chat_source
    start, end = source.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert chat_model.config.vocab_embedding_special_rows == [-1, -1, end, start]
    ids = torch.tensor([[BOS_ID, BPE_DELIMITER_ID, 104, EOS_ID, 14]])
    rows = chat_model.model.encoder_vocab_embedding.lookup(ids, None, torch.ones_like(ids))
    assert rows[0, 1].item() == start and rows[0, 3].item() == end
    assert rows[0, 0].item() == source.convert_tokens_to_ids("<|endoftext|>")  # BOS keeps its own row


def test_the_byte_tokenizer_renders_the_source_chat_template_on_the_special_ids(chat_source, tmp_path):
    _, source, _ = chat_source
    byteified_tokenizer(source).save_pretrained(tmp_path)
    tokenizer = BLTTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "user", "content": "Is <s> a tag?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    text = source.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = [BOS_ID]  # the BLT's texts begin with BOS (the source's template has none)
    for k, piece in enumerate(text.split("<|im_start|>")):
        expected += [BPE_DELIMITER_ID] if k else []
        for j, part in enumerate(piece.split("<|im_end|>")):
            expected += ([EOS_ID] if j else []) + [b + 4 for b in part.encode()]
    assert ids == expected
    assert ids[1] == BPE_DELIMITER_ID and ids.count(EOS_ID) == 1 and ids.count(BPE_DELIMITER_ID) == 2
    assert tokenizer.decode(ids) == "<|endoftext|>" + text
    assert tokenizer("<s>x")["input_ids"] == [BOS_ID] + [b + 4 for b in b"<s>x"]  # markers only, not other tags


def test_a_template_needing_more_special_ids_than_the_blt_has_leaves_plain_bytes():
    tokenizer = chat_tokenizer(LLAMA3_LIKE, ["<|begin|>", "<|head|>", "<|/head|>", "<|eot|>"], "<|eot|>")
    assert chat_markers(tokenizer) == (None, {})
    no_template = train_tokenizer(DATA.read_text())
    assert chat_markers(no_template) == (None, {})
    assert byteified_tokenizer(no_template).chat_template is None


@pytest.mark.parametrize("lookahead", [False, True])
def test_chat_prompts_decode_exactly_with_the_cache(chat_model, lookahead):
    """Rows holding the markers mid-sequence: cached greedy == uncached == recomputing each row alone."""
    chat_model.config.patching_lookahead = lookahead
    text = DATA.read_bytes()
    rows = [[BPE_DELIMITER_ID] + [b + 4 for b in b"user\n" + text[:9]] + [EOS_ID, 14, BPE_DELIMITER_ID],
            [BOS_ID] + [b + 4 for b in text[300:305]] + [EOS_ID, BPE_DELIMITER_ID] + [b + 4 for b in b"as"]]
    try:
        assert_greedy_decoding_is_exact(chat_model, rows, 8)
    finally:
        chat_model.config.patching_lookahead = True


@pytest.mark.parametrize("lookahead", [False, True])
def test_a_special_id_closes_its_patch(chat_model, lookahead):
    """No source token holds a marker, so the patch ends right after it (the token head's end odds are +inf)."""
    chat_model.config.patching_lookahead = lookahead
    ids = torch.tensor([[BOS_ID] + [b + 4 for b in DATA.read_bytes()[40:52]] + [EOS_ID]
                        + [b + 4 for b in b"hello"] + [BPE_DELIMITER_ID] + [b + 4 for b in b"the"]])
    try:
        with torch.no_grad():
            lengths = chat_model(ids, output_patch_lengths=True, use_cache=False).patch_lengths[0]
    finally:
        chat_model.config.patching_lookahead = True
    starts = set((lengths.cumsum(0) - lengths)[lengths > 0].tolist())
    for position in (13, 19):  # the markers
        assert position + 1 in starts


def test_no_source_token_begins_with_a_special_id():
    """Even where a special id read as byte 0 would begin a token ("\\x00a"), the head's end odds are +inf."""
    head = BLTTokenHead(hidden_size=4, rows=4, max_bytes=4, eps=1e-6, fallback=0.1, vocab_size=260)
    head.set_vocabulary([b"\x00", b"\x00a", b"a", None])
    cumulative = torch.linspace(0, 1, 5, dtype=torch.float64).view(1, 1, 5)  # each token 1/4
    prefix = torch.tensor([[[EOS_ID - 4, 0, 0, 0], [0, 0, 0, 0]]])
    odds = head.end_logits(cumulative.expand(1, 2, 5), prefix, torch.tensor([[1, 1]]))
    assert odds[0, 0].item() == float("inf")
    assert odds[0, 1].item() == pytest.approx(0.0)  # byte 0 itself: "\x00" against "\x00a", even odds


def test_special_rows_that_do_not_fit_the_vocabulary_are_refused():
    base = dict(vocab_embedding_rows=10, patching_mode="static")
    for rows in ([-1, -1, 3], [0, -1, 2, 1], [-1, -1, 10, 1], [-1, -1, -2, 1]):
        with pytest.raises(ValueError, match="vocab_embedding_special_rows"):
            BLTConfig(vocab_embedding_special_rows=rows, **base)
    with pytest.raises(ValueError, match="vocab_embedding_rows"):
        BLTConfig(vocab_embedding_special_rows=[-1, -1, 2, 1], patching_mode="static")


def test_the_demos_chat_turn_renders_the_template_and_stops_at_eos(chat_source, chat_model, tmp_path, capsys):
    from blt_hf.tools.demo_byteified import chat_turn

    _, source, _ = chat_source
    chat_model.save_pretrained(tmp_path)
    byteified_tokenizer(source).save_pretrained(tmp_path)
    with torch.no_grad():
        chat_turn(chat_model, tmp_path, "Hello there", 6)
    shown = capsys.readouterr().out
    assert "user:      Hello there" in shown and "<|im_end|> is EOS" in shown
    assert "(6 bytes, cut at --chat-bytes)" in shown or "ended at <|im_end|>" in shown
