"""Byte-ification: turn a Llama with a Hugging Face tokenizer into a BLT that keeps what the Llama knows.

The recipe (`blt-hf byteify`):

* **Token patches.** The BLT's patches are the source tokenizer's tokens (byte 0, BOS, is a patch of its own and
  stands for the source's start token), so the global transformer — the Llama's layers, moved by `convert_llama` —
  sees one patch where the Llama saw one token. At generation time no tokenizer runs: a small causal byte model
  (the patcher slot, `patching_mode="boundary"`) predicts from the bytes so far whether the next byte starts a token.
* **Source embeddings kept.** Each closed patch adds the source's embedding row of the longest vocabulary token
  that ends at the patch's last byte and lies inside the patch (`BLTVocabEmbedding`). When the patch is a token,
  that row is exactly the token's embedding; the local encoder's own patch vector enters through a projection that
  starts at zero. So a freshly byte-ified model feeds the Llama layers exactly the Llama's inputs.
* **Stage 1, global transformer frozen.** The Llama's outputs on the training text do not change while the local
  stacks learn: they are computed once per text window (`TeacherShards`, resumable) and the local decoder learns to
  spell the next token's bytes from them (`stage1_loss`), without running the Llama again. The boundary predictor
  learns the tokenizer's token starts from bytes alone.
* **Stage 2** runs the whole model end to end on predicted patches at a low rate for the global transformer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configuration_blt_hf import BOS_ID, BYTE_OFFSET


# ---------------------------------------------------------------- the source tokenizer's vocabulary as bytes
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character that stands for each byte, inverted."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, characters, strict=True)}


@dataclass
class SourceVocabulary:
    """The byte string of every token id of a byte-level BPE tokenizer (special tokens: None)."""

    token_bytes: list[bytes | None]
    special_ids: dict[str, int]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SourceVocabulary:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError("byte-ification needs a fast (tokenizer.json) Hugging Face tokenizer")
        spec = json.loads(backend.to_str())
        pre = spec.get("pre_tokenizer") or {}
        kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers", [])}
        if "ByteLevel" not in kinds:
            raise ValueError(
                "byte-ification needs a byte-level BPE tokenizer (GPT-2 / Llama 3 / SmolLM2 style); this one's "
                f"pre-tokenizer is {sorted(k for k in kinds if k)}"
            )
        decoder = _byte_level_decoder()
        size = len(tokenizer)
        token_bytes: list[bytes | None] = [None] * size
        special = {t.content: t_id for t_id, t in tokenizer.added_tokens_decoder.items() if t.special}
        for token, token_id in tokenizer.get_vocab().items():
            if token_id >= size or token in special:
                continue
            try:
                token_bytes[token_id] = bytes(decoder[c] for c in token)
            except KeyError:
                token_bytes[token_id] = None  # an added non-byte-level token
        return cls(token_bytes, special)

    def __len__(self) -> int:
        return len(self.token_bytes)


def token_lengths(tokenizer, vocabulary: SourceVocabulary, data: bytes) -> tuple[list[int], list[int]]:
    """(token ids, their byte lengths) of `data` (UTF-8 text), checked to spell `data` exactly."""
    text = data.decode("utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [vocabulary.token_bytes[i] for i in ids]
    if any(p is None for p in pieces) or b"".join(pieces) != data:
        raise ValueError("the tokenizer does not spell this text byte for byte (a normalizer or special tokens)")
    return ids, [len(p) for p in pieces]


def start_token_id(tokenizer) -> int:
    """The source token that BOS (byte 0, a patch of its own) stands for: the BOS the tokenizer adds to a text, else
    its document separator `<|endoftext|>`, else its BOS or EOS token."""
    added = tokenizer("a")["input_ids"]
    if tokenizer.bos_token_id is not None and added and added[0] == tokenizer.bos_token_id:
        return int(tokenizer.bos_token_id)
    separator = tokenizer.get_vocab().get("<|endoftext|>")
    for token_id in (separator, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has no BOS, <|endoftext|> or EOS token for the BLT's BOS patch to stand for")


# ---------------------------------------------------------------- text windows and the frozen teacher
@torch.no_grad()
def teacher_states(llama, token_ids: torch.Tensor) -> torch.Tensor:
    """The Llama's last decoder-layer outputs before its final norm, [B, T, d]: what the BLT's global transformer
    (the same layers, no final norm) computes on the same inputs."""
    norm, llama.model.norm = llama.model.norm, torch.nn.Identity()
    try:
        return llama.model(input_ids=token_ids, use_cache=False).last_hidden_state
    finally:
        llama.model.norm = norm


def text_windows(documents: list[bytes], tokenizer, vocabulary: SourceVocabulary, tokens_per_window: int):
    """Yield (token ids, byte lengths) windows of `tokens_per_window` tokens, documents cut where they must."""
    for data in documents:
        try:
            ids, lengths = token_lengths(tokenizer, vocabulary, data)
        except (UnicodeDecodeError, ValueError):
            continue
        for begin in range(0, len(ids), tokens_per_window):
            window_ids, window_lengths = ids[begin : begin + tokens_per_window], lengths[begin : begin + tokens_per_window]
            if len(window_ids) >= 8:
                yield window_ids, window_lengths


def window_bytes(token_ids: list[int], vocabulary: SourceVocabulary) -> list[int]:
    """BOS + the window's bytes as BLT ids."""
    return [BOS_ID] + [b + BYTE_OFFSET for t in token_ids for b in vocabulary.token_bytes[t]]


class TeacherShards:
    """The frozen source model's outputs on text windows, in safetensors shards under `folder` (resumable).

    Shard i holds `token_ids` [W, T + 1] (the start token first, padded with -1), `byte_lengths` [W, T + 1] (1 for
    the start token: it is BOS's patch), and `states` [W, T + 1, d] in float16.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard_*.safetensors"))

    def windows_done(self) -> int:
        done = self.folder / "progress.json"
        return json.loads(done.read_text())["windows"] if done.is_file() else 0

    def compute(self, llama, tokenizer, windows, start_id: int, windows_per_shard: int = 16, limit: int | None = None,
                log=print) -> int:
        """Run the Llama over `windows` (an iterable of (ids, lengths)), skipping those already stored."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        done = self.windows_done()
        index, batch = 0, []
        for ids, lengths in windows:
            if limit is not None and index >= limit:
                break
            index += 1
            if index <= done:
                continue
            batch.append(([start_id] + ids, [1] + lengths))
            if len(batch) == windows_per_shard:
                self._write(llama, batch, save_file)
                done += len(batch)
                batch = []
                (self.folder / "progress.json").write_text(json.dumps({"windows": done}))
                log(f"teacher: {done} windows stored")
        return done

    def _write(self, llama, batch, save_file) -> None:
        width = max(len(ids) for ids, _ in batch)
        token_ids = torch.full((len(batch), width), -1, dtype=torch.long)
        byte_lengths = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (ids, lengths) in enumerate(batch):
            token_ids[row, : len(ids)] = torch.tensor(ids)
            byte_lengths[row, : len(lengths)] = torch.tensor(lengths)
        states = teacher_states(llama, token_ids.clamp(min=0))
        name = f"shard_{len(self.shards()):05d}.safetensors"
        temporary = self.folder / (name + ".tmp")
        save_file({"token_ids": token_ids, "byte_lengths": byte_lengths, "states": states.half()}, str(temporary))
        os.replace(temporary, self.folder / name)


# ---------------------------------------------------------------- corpora for the SmolLM2 run
def held_out(path: str | Path, every: int = 10) -> bool:
    """A fixed split by file name: one file in `every` is held out."""
    return int(hashlib.sha1(Path(path).name.encode()).hexdigest(), 16) % every == 0


# ---------------------------------------------------------------- the byte-ified model
BOUNDARY_PATCHER = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=384,
                        sliding_window=64, boundary_head=True)


def byteified_config(llama_config, vocabulary_rows: int, local_hidden_size: int = 256, local_heads: int = 4,
                     encoder_layers: int = 1, decoder_layers: int = 3, window: int = 256,
                     hash_sizes=(3, 4, 5, 6), hash_vocab: int = 8192, max_token_bytes: int = 16,
                     patcher_config: dict | None = None, max_position_embeddings: int | None = None):
    """A BLTConfig around a Llama: boundary patching, source vocabulary rows, small local stacks."""
    from ..convert.llama import blt_config_for_llama

    config = blt_config_for_llama(
        llama_config, local_hidden_size=local_hidden_size, local_heads=local_heads, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, cross_attn_k=2, window=window, hash_sizes=hash_sizes, hash_vocab=hash_vocab,
        patcher_config=dict(BOUNDARY_PATCHER, **(patcher_config or {})), patching_mode="boundary",
        patching_threshold=0.0, has_patcher=True, vocab_embedding_rows=vocabulary_rows,
        vocab_embedding_max_bytes=max_token_bytes,
        max_position_embeddings=max_position_embeddings or 4 * llama_config.max_position_embeddings,
    )
    config.global_config.use_input_projection = True
    return config


def byteify_model(llama_folder: str | Path, tokenizer, seed: int = 0, **options):
    """A BLT whose global transformer is the Llama's layers and whose patch inputs start as exactly the Llama's
    token embeddings (the local encoder's projection starts at zero). Returns (model, vocabulary)."""
    from transformers import AutoConfig

    from ..convert.checkpoints import check_tensors, load_state_dict
    from ..convert.llama import global_state_from_llama
    from ..modeling_blt_hf import BLTForCausalLM

    llama_folder = Path(llama_folder)
    if not (llama_folder / "config.json").is_file():
        raise ValueError(f"{llama_folder} has no config.json: not a Hugging Face checkpoint folder")
    llama_config = AutoConfig.from_pretrained(llama_folder)
    if getattr(llama_config, "model_type", None) != "llama":
        raise ValueError(f"{llama_folder} holds a {llama_config.model_type!r} checkpoint; expected a Llama")
    vocabulary = SourceVocabulary.from_tokenizer(tokenizer)
    state = load_state_dict(llama_folder)
    embeddings = state.get("model.embed_tokens.weight")
    if embeddings is None:
        raise ValueError(f"{llama_folder} has no model.embed_tokens.weight")
    if embeddings.shape[0] < len(vocabulary) or len(vocabulary) < embeddings.shape[0] - 1024:
        raise ValueError(
            f"the tokenizer has {len(vocabulary)} tokens but the checkpoint embeds {embeddings.shape[0]}: "
            "they do not belong together"
        )
    config = byteified_config(llama_config, embeddings.shape[0], **options)
    torch.manual_seed(seed)
    model = BLTForCausalLM(config)
    global_state = global_state_from_llama(state, llama_config)
    expected = {f"model.global_transformer.{name}": tensor
                for name, tensor in model.model.global_transformer.state_dict().items()
                if not name.startswith("token_embedding_projection")}
    check_tensors(global_state, expected, "Llama layers")
    model.load_state_dict(global_state, strict=False)
    with torch.no_grad():
        model.model.global_transformer.token_embedding_projection.weight.zero_()
        table = model.model.encoder_vocab_embedding
        table.weight.copy_(embeddings.to(table.weight.dtype))
        token_bytes = vocabulary.token_bytes + [None] * (embeddings.shape[0] - len(vocabulary))
        table.set_vocabulary(token_bytes, start_token_id(tokenizer))
    return model, vocabulary


def window_batch(shard: dict[str, torch.Tensor], rows, vocabulary: SourceVocabulary):
    """Training tensors of teacher windows: input_ids, attention_mask, patch_lengths (the tokens), patch_states."""
    token_ids, lengths, states = shard["token_ids"][rows], shard["byte_lengths"][rows], shard["states"][rows]
    byte_rows = [window_bytes([t for t in ids.tolist()[1:] if t >= 0], vocabulary) for ids in token_ids]
    width = max(len(r) for r in byte_rows)
    input_ids = torch.zeros(len(byte_rows), width, dtype=torch.long)
    mask = torch.zeros(len(byte_rows), width, dtype=torch.long)
    for i, r in enumerate(byte_rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "patch_lengths": lengths,
            "patch_states": states.float()}


def boundary_labels(input_ids: torch.Tensor, patch_lengths: torch.Tensor, attention_mask: torch.Tensor):
    """Per byte: 1 where the next byte starts a patch, 0 where not, -100 for BOS, the last byte and padding."""
    starts = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.long)
    begins = (patch_lengths.cumsum(1) - patch_lengths).clamp(max=input_ids.shape[1])
    starts.scatter_(1, begins, (patch_lengths > 0).long())
    labels = starts[:, 1:].clone()
    labels[:, 0] = -100
    last = attention_mask.sum(1) - 1
    labels[torch.arange(len(labels)), last] = -100
    return labels.masked_fill(attention_mask == 0, -100)
