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


def chat_markers(tokenizer) -> tuple[list[int] | None, dict]:
    """How the byte-ified model writes the source's chat template: (`BLTConfig.vocab_embedding_special_rows`,
    `BLTTokenizer` keyword arguments). The template's special tokens take the special ids: the BOS patch's token
    id 1, the tokenizer's EOS token id 2 (the token head gives EOS the mass of every special token, so a turn ends
    where the source would end it), one more id 3 (SmolLM2: `<|im_start|>`). The template starts with BOS, as
    every text the BLT was trained on did. (None, {}) without a template, or when it needs more special tokens
    than that (Llama 3's four); the model then reads plain text only."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None, {}
    start = tokenizer.convert_ids_to_tokens(start_token_id(tokenizer))
    marks = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()
             if t.special and t.content in template and t.content != start}
    eos = tokenizer.eos_token if tokenizer.eos_token in marks else None
    others = [m for m in marks if m != eos]
    if eos is None or len(others) > 1:
        return None, {}
    rows = [-1, -1, marks[eos], marks[others[0]] if others else -1]
    if start not in template:  # the BLT was trained on texts that begin with BOS: so do its chats
        template = "{{ bos_token }}" + template
    return rows, {"bos_token": start, "eos_token": eos, "unk_token": others[0] if others else "<unk>",
                  "chat_template": template, "split_special_tokens": False}


def byteified_tokenizer(tokenizer):
    """The byte-ified model's `BLTTokenizer`: bytes, and the source's chat template on the special ids of
    `chat_markers` when it has one."""
    from ..tokenization_blt_hf import BLTTokenizer

    return BLTTokenizer(**chat_markers(tokenizer)[1])


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
    """Yield (token ids, byte lengths) windows of `tokens_per_window` tokens, documents cut where they must.
    Bytes that are not UTF-8 are dropped (the source tokenizer reads text); documents it cannot spell are skipped."""
    for data in documents:
        data = data.decode("utf-8", errors="ignore").encode("utf-8")
        try:
            ids, lengths = token_lengths(tokenizer, vocabulary, data)
        except (UnicodeDecodeError, ValueError):
            continue
        for begin in range(0, len(ids), tokens_per_window):
            window = slice(begin, begin + tokens_per_window)
            if len(ids[window]) >= 8:
                yield ids[window], lengths[window]


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
        from ..pretrained import read_json_file

        done = self.folder / "progress.json"
        windows = read_json_file(done).get("windows") if done.is_file() else 0
        if not isinstance(windows, int) or windows < 0:
            raise ValueError(f"{done} must record the windows stored so far ({{\"windows\": N}}); delete the teacher "
                             "folder to recompute it")
        return windows

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
                done = self._store(llama, batch, done, save_file, log)
                batch = []
        if batch:  # the last, partial shard
            done = self._store(llama, batch, done, save_file, log)
        return done

    def _store(self, llama, batch, done: int, save_file, log) -> int:
        self._write(llama, batch, save_file)
        done += len(batch)
        temporary = self.folder / "progress.tmp"
        temporary.write_text(json.dumps({"windows": done}))
        os.replace(temporary, self.folder / "progress.json")
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


def check_teacher_shard(path: Path) -> None:
    """ValueError naming a stored teacher shard that is damaged or lacks its tensors (recompute it: delete it and
    the teacher folder's progress.json)."""
    from safetensors import safe_open

    from ..pretrained import check_safetensors_file

    try:
        check_safetensors_file(path)
        with safe_open(str(path), "pt") as handle:
            missing = {"token_ids", "byte_lengths", "states"} - set(handle.keys())
    except ValueError as error:
        raise ValueError(f"damaged teacher shard: {error}; delete the teacher folder to recompute it") from None
    if missing:
        raise ValueError(f"teacher shard {path} lacks {sorted(missing)}; delete the teacher folder to recompute it")


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
                     patcher_config: dict | None = None, max_position_embeddings: int | None = None,
                     token_head: bool = False, token_head_fallback: float = 0.05, patching: str = "boundary",
                     patching_lookahead: bool = True, special_rows: list[int] | None = None):
    """A BLTConfig around a Llama: source vocabulary rows, small local stacks, the token head (which spells the
    Llama's next-token distribution in bytes) if asked, and patches cut by a boundary predictor (`patching=
    "boundary"`, trained on the tokenizer's token starts) or by the Llama's own token-end odds ("source", needs
    the token head; `patching_lookahead`: decided after seeing the next byte, ignored for boundary patching);
    `special_rows`: the source tokens the special ids stand for (`chat_markers`)."""
    from ..convert.llama import blt_config_for_llama

    if patching not in ("boundary", "source"):
        raise ValueError(f"patching must be 'boundary' or 'source', got {patching!r}")
    boundary = patching == "boundary"
    config = blt_config_for_llama(
        llama_config, local_hidden_size=local_hidden_size, local_heads=local_heads, encoder_layers=encoder_layers,
        decoder_layers=decoder_layers, cross_attn_k=2, window=window, hash_sizes=hash_sizes, hash_vocab=hash_vocab,
        patcher_config=dict(BOUNDARY_PATCHER, **(patcher_config or {})) if boundary else None,
        patching_mode=patching, patching_threshold=0.0, has_patcher=boundary, vocab_embedding_rows=vocabulary_rows,
        vocab_embedding_max_bytes=max_token_bytes, token_head=token_head, token_head_fallback=token_head_fallback,
        patching_lookahead=patching_lookahead and not boundary, vocab_embedding_special_rows=special_rows,
        max_position_embeddings=max_position_embeddings or 4 * llama_config.max_position_embeddings,
    )
    config.global_config.use_input_projection = True
    return config


def byteify_model(llama_folder: str | Path, tokenizer, seed: int = 0, **options):
    """A BLT whose global transformer is the Llama's layers and whose patch inputs start as exactly the Llama's
    token embeddings (the local encoder's projection starts at zero). Returns (model, vocabulary)."""
    from ..convert.checkpoints import check_tensors, load_state_dict
    from ..convert.llama import global_state_from_llama, read_llama_config
    from ..modeling_blt_hf import BLTForCausalLM

    llama_folder = Path(llama_folder)
    llama_config = read_llama_config(llama_folder)
    vocabulary = SourceVocabulary.from_tokenizer(tokenizer)
    state = load_state_dict(llama_folder)
    embeddings = state.get("model.embed_tokens.weight")
    if embeddings is None:
        raise ValueError(f"{llama_folder} has no model.embed_tokens.weight")
    if embeddings.dim() != 2 or embeddings.shape[1] != llama_config.hidden_size:
        raise ValueError(
            f"{llama_folder}: model.embed_tokens.weight has shape {tuple(embeddings.shape)}, but config.json says "
            f"rows of hidden_size={llama_config.hidden_size}"
        )
    if embeddings.shape[0] != llama_config.vocab_size:
        raise ValueError(
            f"{llama_folder}: model.embed_tokens.weight has {embeddings.shape[0]} rows, but config.json says "
            f"vocab_size={llama_config.vocab_size}"
        )
    if embeddings.shape[0] < len(vocabulary) or len(vocabulary) < embeddings.shape[0] - 1024:
        raise ValueError(
            f"the tokenizer has {len(vocabulary)} tokens but the checkpoint embeds {embeddings.shape[0]}: "
            "they do not belong together"
        )
    tied = bool(getattr(llama_config, "tie_word_embeddings", False))
    if options.get("patching") == "auto":
        options["patching"] = "source" if tied else "boundary"
    if options.get("patching") == "source":
        options["token_head"] = True
    if options.get("token_head") and not tied:
        raise ValueError("the token head reads the Llama's embedding rows as its output matrix: it needs a Llama "
                         "with tied word embeddings (tie_word_embeddings=True)")
    options.setdefault("special_rows", chat_markers(tokenizer)[0])
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
        if model.model.token_head is not None:
            model.model.token_head.norm.weight.copy_(state["model.norm.weight"])
            model.model.token_head.set_vocabulary(token_bytes)
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


# ---------------------------------------------------------------- stage 1: local stacks against the frozen teacher
STAGE1_TRAINABLE = ("model.local_encoder.", "model.encoder_hash_tok_embedding.", "model.local_decoder.", "lm_head.")


def set_trainable(model, prefixes) -> list[str]:
    """Freeze everything but the parameters under `prefixes`; returns the trainable names."""
    names = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(tuple(prefixes)))
        if parameter.requires_grad:
            names.append(name)
    return names


class ShardStream:
    """Teacher windows in a fixed order, batch after batch; shards written later join the stream when the ones
    before them are used up (so training can start while the teacher is still running)."""

    def __init__(self, shards: TeacherShards, vocabulary: SourceVocabulary, batch_windows: int):
        self.shards, self.vocabulary, self.batch_windows = shards, vocabulary, batch_windows
        self._sizes: dict[Path, int] = {}

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        files = self.shards.shards()
        if not files:
            raise ValueError(f"no teacher shards in {self.shards.folder}")
        for f in files:
            if f not in self._sizes:
                check_teacher_shard(f)
                with safe_open(str(f), "pt") as handle:
                    self._sizes[f] = handle.get_slice("token_ids").get_shape()[0]
        owners = [(f, i) for f in files for i in range(self._sizes[f])]
        first = (step * self.batch_windows) % len(owners)
        by_shard: dict[Path, list[int]] = {}
        for k in range(self.batch_windows):
            f, i = owners[(first + k) % len(owners)]
            by_shard.setdefault(f, []).append(i)
        parts = [window_batch(load_file(str(f)), rows, self.vocabulary) for f, rows in by_shard.items()]
        return collate_windows(parts)


class TextWindowStream:
    """Text windows ((token ids, byte lengths) pairs) in a fixed order, batch after batch, as training tensors with
    the tokenizer's patches (no teacher outputs: stage 2 runs the global transformer itself)."""

    def __init__(self, windows, vocabulary: SourceVocabulary, batch_windows: int, start_id: int):
        self.windows, self.vocabulary = list(windows), vocabulary
        self.batch_windows, self.start_id = batch_windows, start_id
        if not self.windows:
            raise ValueError("no text windows to train on")

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        first = step * self.batch_windows
        group = [self.windows[(first + k) % len(self.windows)] for k in range(self.batch_windows)]
        return token_window_batch(group, self.vocabulary, self.start_id)[1]


def token_window_batch(group, vocabulary: SourceVocabulary, start_id: int):
    """(token_ids [W, T + 1] with the start token first and -1 padding, `window_batch` tensors without patch
    states) of text windows ((token ids, byte lengths) pairs)."""
    token_ids = torch.full((len(group), max(len(i) for i, _ in group) + 1), -1, dtype=torch.long)
    lengths = torch.zeros_like(token_ids)
    for row, (ids, token_lengths_) in enumerate(group):
        token_ids[row, : len(ids) + 1] = torch.tensor([start_id] + list(ids))
        lengths[row, : len(ids) + 1] = torch.tensor([1] + list(token_lengths_))
    batch = window_batch({"token_ids": token_ids, "byte_lengths": lengths, "states": torch.zeros(len(group), 1, 1)},
                         list(range(len(group))), vocabulary)
    batch.pop("patch_states")
    return token_ids, batch


def collate_windows(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack `window_batch` results of different widths (zero padding on the right)."""
    out = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        width = max(t.shape[1] for t in tensors)
        padded = [torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1])) for t in tensors]
        out[key] = torch.cat(padded, dim=0)
    return out


def stage1_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-byte cross-entropy (nats) with token patches and the teacher's global states (no global forward)."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 patch_lengths=batch["patch_lengths"], patch_states=batch["patch_states"], labels=labels,
                 use_cache=False).loss


def token_patch_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-byte cross-entropy (nats) end to end on the tokenizer's patches (the from-scratch baseline)."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 patch_lengths=batch["patch_lengths"], labels=labels, use_cache=False).loss


def stage2_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-byte cross-entropy (nats) end to end, on the model's own predicted patches."""
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                 use_cache=False).loss


def boundary_loss(patcher, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The boundary predictor's loss on token starts, plus its next-byte loss (a byte LM underneath)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    return patcher(ids, attention_mask=mask, labels=labels,
                   boundary_labels=boundary_labels(ids, batch["patch_lengths"], mask)).loss


@dataclass
class StageState:
    step: int = 0
    seconds: float = 0.0


def train_stage(model, module, loss_fn, stream: ShardStream | TextWindowStream, folder: Path, steps: int,
                learning_rate: float, prefixes, name: str, checkpoint_every: int = 25,
                deadline: float | None = None, log=print,
                rate_scales: dict[str, float] | None = None) -> StageState:
    """Train `module`'s parameters under `prefixes` with AdamW and a cosine schedule for `steps` steps; resumes
    from `folder/<name>` (weights, optimizer, step), checkpoints atomically, logs one JSON line per step.
    rate_scales: {name prefix: learning-rate factor} (stage 2: a low rate for the global transformer)."""
    import math
    import time

    from safetensors.torch import load_file, save_file

    checkpoint = folder / name
    checkpoint.mkdir(parents=True, exist_ok=True)
    trainable = set_trainable(module, prefixes)
    parameters = dict(module.named_parameters())
    scales = rate_scales or {}
    groups: dict[float, list] = {}
    for n in trainable:
        scale = next((v for k, v in scales.items() if n.startswith(k)), 1.0)
        groups.setdefault(scale, []).append(parameters[n])
    optimizer = torch.optim.AdamW([{"params": p, "scale": scale} for scale, p in groups.items()], lr=learning_rate,
                                  betas=(0.9, 0.95), weight_decay=0.01)
    state = StageState()
    if (checkpoint / "state.json").is_file():
        state = StageState(**json.loads((checkpoint / "state.json").read_text()))
        weights = load_file(str(checkpoint / "weights.safetensors"))
        module.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        for group, scale in zip(optimizer.param_groups, groups, strict=True):
            group["scale"] = scale  # the rate factors are the run's, not the checkpoint's
    warmup = max(1, min(50, steps // 10))

    def rate(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    module.train()
    with (checkpoint / "log.jsonl").open("a") as log_file:
        while state.step < steps and (deadline is None or time.time() < deadline):
            begin = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate * group["scale"] * rate(state.step)
            loss = loss_fn(module, stream.batch(state.step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([parameters[n] for n in trainable], 1.0)
            optimizer.step()
            state.step += 1
            state.seconds += time.perf_counter() - begin
            record = {"stage": name, "step": state.step, "loss": round(loss.item(), 5),
                      "bits": round(loss.item() / math.log(2), 4), "seconds": round(state.seconds, 1)}
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            if state.step % checkpoint_every == 0 or state.step == steps:
                _save_stage(checkpoint, module, trainable, optimizer, state, save_file)
                log(f"{name}: step {state.step}/{steps}, loss {record['bits']:.3f} bits, {state.seconds:.0f}s")
    _save_stage(checkpoint, module, trainable, optimizer, state, save_file)
    module.eval()
    return state


def _save_stage(checkpoint: Path, module, trainable, optimizer, state: StageState, save_file) -> None:
    parameters = dict(module.named_parameters())
    weights = {n: parameters[n].detach().contiguous() for n in trainable}
    save_file(weights, str(checkpoint / "weights.tmp"))
    torch.save(optimizer.state_dict(), checkpoint / "optimizer.tmp")
    os.replace(checkpoint / "weights.tmp", checkpoint / "weights.safetensors")
    os.replace(checkpoint / "optimizer.tmp", checkpoint / "optimizer.pt")
    (checkpoint / "state.tmp").write_text(json.dumps(vars(state)))
    os.replace(checkpoint / "state.tmp", checkpoint / "state.json")


# ---------------------------------------------------------------- evaluation on held-out text
@torch.no_grad()
def evaluate_windows(model, llama, windows, vocabulary: SourceVocabulary, start_id: int, batch_size: int = 4,
                     own_patches: bool = True) -> dict:
    """Bits per byte on the same text windows ((ids, lengths) pairs) of: the source model through its tokenizer,
    the BLT with its own predicted patches (unless not `own_patches`), and the BLT with the tokenizer's patches;
    bytes per predicted patch and how often predicted patch starts agree with token starts (over the bytes after
    BOS)."""
    import math

    totals = {"source": 0.0, "blt": 0.0, "blt_token_patches": 0.0}
    num_bytes = num_patches = agree = positions = 0
    windows = list(windows)
    for begin in range(0, len(windows), batch_size):
        group = windows[begin : begin + batch_size]
        token_ids, batch = token_window_batch(group, vocabulary, start_id)
        if llama is not None:
            logits = llama(input_ids=token_ids.clamp(min=0), use_cache=False).logits[:, :-1].float()
            targets = token_ids[:, 1:]
            nats = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
            totals["source"] += nats[targets >= 0].sum().item()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = ids.masked_fill(mask == 0, -100)
        real_targets = int((labels[:, 1:] != -100).sum())
        oracle = model(input_ids=ids, attention_mask=mask, patch_lengths=batch["patch_lengths"], labels=labels,
                       use_cache=False, return_dict=True)
        totals["blt_token_patches"] += oracle.loss.item() * real_targets
        num_bytes += real_targets
        if not own_patches:
            continue
        predicted = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False,
                          output_patch_lengths=True, return_dict=True)
        totals["blt"] += predicted.loss.item() * real_targets
        num_patches += int((predicted.patch_lengths > 0).sum()) - len(group)  # BOS patches aside
        from ..patching import starts_from_patch_lengths

        row_bytes = mask.sum(1)
        ours = starts_from_patch_lengths(predicted.patch_lengths, row_bytes)[:, 1:-1]
        theirs = starts_from_patch_lengths(batch["patch_lengths"], row_bytes)[:, 1:-1]
        inside = torch.arange(ours.shape[1])[None] < (row_bytes - 1)[:, None]
        agree += int(((ours == theirs) & inside).sum())
        positions += int(inside.sum())
    result = {f"{k}_bits_per_byte": round(v / math.log(2) / num_bytes, 4) for k, v in totals.items()}
    if llama is None:
        result.pop("source_bits_per_byte")
    result.update(bytes=num_bytes)
    if not own_patches:
        result.pop("blt_bits_per_byte")
        return result
    result.update(bytes_per_patch=round(num_bytes / max(num_patches, 1), 3),
                  boundary_agreement=round(agree / max(positions, 1), 4))
    return result


# ---------------------------------------------------------------- the whole pipeline (`blt-hf byteify`)
@dataclass
class ByteifyOptions:
    source: str
    destination: str
    train_files: list[str]
    eval_files: list[str]
    work: str | None = None
    teacher_windows: int = 256
    tokens_per_window: int = 256
    batch_windows: int = 8
    boundary_steps: int = 400
    stage1_steps: int = 1000
    stage2_steps: int = 0
    learning_rate: float = 1e-3
    global_rate_scale: float = 0.1
    eval_windows: int = 32
    seed: int = 0
    model_options: dict | None = None


RUN_RECORD = "run.json"


def run_fingerprint(options: ByteifyOptions, source: Path) -> dict[str, str]:
    """What a work folder's teacher outputs and checkpoints depend on: digests of the source's config, weights and
    tokenizer and of the training files, and the options that shape the data and the model."""

    def digest(paths) -> str:
        hashed = hashlib.sha256()
        for path in paths:
            hashed.update(Path(path).name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hashed.update(block)
        return hashed.hexdigest()[:16]

    weights = sorted(p for p in source.iterdir()
                     if p.is_file() and p.name.endswith((".safetensors", ".bin", ".pth", ".index.json")))
    return {
        "source config": digest([source / "config.json"]),
        "source weights": digest(weights),
        "source tokenizer": digest([source / "tokenizer.json"]),
        "training files": digest(options.train_files),
        "tokens_per_window": str(options.tokens_per_window),
        "batch_windows": str(options.batch_windows),
        "seed": str(options.seed),
        "model options": json.dumps(options.model_options or {}, sort_keys=True, default=str),
    }


def claim_work_folder(work: Path, fingerprint: dict[str, str]) -> None:
    """Resume only the run a work folder was made for: a folder with another run's record (another source,
    training text or model options), or with contents but no record, is refused rather than silently reused."""
    from ..pretrained import read_json_file

    record = work / RUN_RECORD
    if record.is_file():
        stored = read_json_file(record)
        changed = sorted(key for key in fingerprint.keys() | stored.keys() if stored.get(key) != fingerprint.get(key))
        if changed:
            raise ValueError(
                f"the work folder {work} holds another byte-ification run (it differs in: {', '.join(changed)}); "
                "pass a new --work folder, or delete this one to start over"
            )
        return
    if work.exists() and (not work.is_dir() or any(work.iterdir())):
        raise ValueError(f"{work} is not an empty folder and holds no {RUN_RECORD}: it was not made by this run; "
                         "pass a new --work folder")
    work.mkdir(parents=True, exist_ok=True)
    temporary = work / (RUN_RECORD + ".tmp")
    temporary.write_text(json.dumps(fingerprint, indent=2) + "\n")
    os.replace(temporary, record)


def byteify(options: ByteifyOptions, log=print) -> dict:
    """Teacher outputs, boundary predictor, stage 1, stage 2, held-out evaluation, then a `save_pretrained`
    folder at `destination` (written atomically). Every step resumes from `work` (default: destination + ".work").
    Returns the evaluation (also written to destination/byteify_results.json)."""
    import itertools

    from transformers import AutoTokenizer, LlamaForCausalLM

    from ..convert.checkpoints import check_destination, write_folder_atomically
    from ..convert.llama import read_llama_config
    from ..evaluation.metrics import check_files

    source = Path(options.source)
    check_destination(options.destination)
    check_files(list(options.train_files) + list(options.eval_files))
    read_llama_config(source)
    if not (source / "tokenizer.json").is_file():
        raise ValueError(f"{source} has no tokenizer.json: byte-ification needs the Llama's own fast tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model, vocabulary = byteify_model(source, tokenizer, seed=options.seed, **(options.model_options or {}))
    train_texts = [Path(f).read_bytes() for f in options.train_files]
    train_windows = text_windows(train_texts, tokenizer, vocabulary, options.tokens_per_window)
    first_window = next(train_windows, None)
    if first_window is None:
        raise ValueError("the training files gave no text windows (too short, or not UTF-8 text the tokenizer spells)")
    eval_windows = list(itertools.islice(text_windows([Path(f).read_bytes() for f in options.eval_files], tokenizer,
                                                      vocabulary, options.tokens_per_window), options.eval_windows))
    if options.eval_files and not eval_windows:
        raise ValueError("the eval files gave no text windows (too short, or not UTF-8 text the tokenizer spells)")
    llama = LlamaForCausalLM.from_pretrained(source).eval()
    work = Path(options.work or f"{options.destination}.work")
    claim_work_folder(work, run_fingerprint(options, source))
    start = start_token_id(tokenizer)
    shards = TeacherShards(work / "teacher")
    shards.compute(llama, tokenizer, itertools.chain([first_window], train_windows), start,
                   limit=options.teacher_windows, log=log)
    patcher = model.model.patcher  # the boundary predictor (none in source patching)
    if patcher is not None:
        train_stage(patcher, patcher, boundary_loss, ShardStream(shards, vocabulary, options.batch_windows), work,
                    options.boundary_steps, 2 * options.learning_rate, ("",), "boundary", log=log)
    stream = ShardStream(shards, vocabulary, options.batch_windows)
    train_stage(model, model, stage1_loss, stream, work, options.stage1_steps, options.learning_rate,
                STAGE1_TRAINABLE, "stage1", log=log)
    if options.stage2_steps:
        train_stage(model, model, stage2_loss, stream, work, options.stage2_steps, options.learning_rate / 3,
                    STAGE1_TRAINABLE + ("model.global_transformer.",), "stage2", log=log,
                    rate_scales={"model.global_transformer.": options.global_rate_scale})
    model.requires_grad_(True)
    if patcher is not None:
        patcher.requires_grad_(False)
    results = evaluate_windows(model, llama, eval_windows, vocabulary, start) if eval_windows else {}
    results["source"] = str(source)

    def write(folder: Path):
        model.save_pretrained(folder)
        byteified_tokenizer(tokenizer).save_pretrained(folder)
        (folder / "byteify_results.json").write_text(json.dumps(results, indent=2) + "\n")

    write_folder_atomically(options.destination, write)
    log(f"wrote {options.destination}")
    return results
