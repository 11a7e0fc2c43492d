"""`BLTTokenizer`: UTF-8 bytes as ids (byte + 4) with special ids 0-3, and optional patch lengths.

Special ids and their token strings: 0 = BOE, also the pad id (`pad_token` "<pad>"); 1 = BOS ("<s>"); 2 = EOS
("</s>"); 3 = the official BPE delimiter, never produced here (`unk_token` "<unk>").

* `tokenizer(texts)` adds BOS and never EOS (unless `add_eos_token=True`); literal "<s>" / "</s>" in the text stay
  bytes.
* `tokenizer(texts, return_patch_lengths=True, return_tensors="pt", padding=True)` also returns `patch_lengths`,
  computed by the patching rule and entropy model of the BLT checkpoint the tokenizer was loaded from (its
  `model.safetensors`; no second copy of the weights), or of a model attached with `attach_model`. Feeding them to
  the model gives the logits it computes when it patches by itself. As tensors they are padded on the right with
  zeros to the batch's largest patch count; ragged rows without `padding` fail as `input_ids` do.
* `encode_bytes` / `decode_bytes` round-trip arbitrary bytes, invalid UTF-8 included; `decode` never raises:
  invalid UTF-8 becomes U+FFFD, except lone surrogates written by `encode`, which come back as themselves, so that
  `decode(encode(s)) == s` for every Python string.
"""

from __future__ import annotations

import codecs
import json
import os

import torch
from transformers import PreTrainedTokenizer
from transformers.tokenization_python import AddedToken

from .configuration_blt_hf import BOE_ID, BOS_ID, BPE_DELIMITER_ID, BYTE_OFFSET, BYTE_VOCAB_SIZE, EOS_ID, BLTConfig
from .patching import PatchingRule, compute_patch_lengths
from .pretrained import looks_like_a_local_path

ERRORS = "blt_hf_replace"


def _replace_or_surrogate(error: UnicodeDecodeError):
    """Decode UTF-8-encoded surrogates (ED A0-BF xx) back to themselves, anything else invalid to U+FFFD."""
    chunk = error.object[error.start : error.start + 3]
    if len(chunk) == 3 and chunk[0] == 0xED and 0xA0 <= chunk[1] <= 0xBF and 0x80 <= chunk[2] <= 0xBF:
        return chunk.decode("utf-8", "surrogatepass"), error.start + 3
    return "\ufffd", error.start + 1


codecs.register_error(ERRORS, _replace_or_surrogate)


def text_to_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def bytes_to_text(data: bytes) -> str:
    return data.decode("utf-8", ERRORS)


class BLTTokenizer(PreTrainedTokenizer):
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    def __init__(
        self,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        patch_chunk_size: int = 8192,
        **kwargs,
    ):
        def special(token):
            return AddedToken(token, special=True, normalized=False) if isinstance(token, str) else token

        # fixed special ids: 0 = BOE/pad "<pad>", 1 = BOS, 2 = EOS, 3 = the official BPE delimiter "<unk>" (never
        # produced here; unknown token strings map to it)
        self._added_tokens_decoder = {
            BOE_ID: special(pad_token), BOS_ID: special(bos_token), EOS_ID: special(eos_token),
            BPE_DELIMITER_ID: special(unk_token),
        }
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self.patch_chunk_size = patch_chunk_size
        self._patching = None  # (rule, patcher) once loaded or attached
        kwargs.setdefault("split_special_tokens", True)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(
            bos_token=bos_token, eos_token=eos_token, pad_token=pad_token, unk_token=unk_token,
            add_bos_token=add_bos_token, add_eos_token=add_eos_token, patch_chunk_size=patch_chunk_size, **kwargs,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' loader; a local path that does not exist is named as such (transformers would call it an
        invalid Hub repo id)."""
        name = os.fspath(pretrained_model_name_or_path)
        subfolder = kwargs.get("subfolder")
        folder = os.path.join(os.path.expanduser(name), subfolder) if subfolder else os.path.expanduser(name)
        if looks_like_a_local_path(name) and not os.path.exists(folder):
            raise OSError(f"{folder}: no such tokenizer folder")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    def get_vocab(self) -> dict[str, int]:
        vocab = {chr(b): b + BYTE_OFFSET for b in range(256)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _add_tokens(self, new_tokens, special_tokens: bool = False) -> int:
        """The vocabulary is fixed (256 bytes, 4 special ids): a token that is not one of them is refused, rather
        than counted as added and given an id the model has no embedding for."""
        unknown = [str(t) for t in new_tokens
                   if str(t) not in self.added_tokens_encoder and not (len(str(t)) == 1 and ord(str(t)) < 256)]
        if unknown:
            raise ValueError(
                f"a byte tokenizer has a fixed vocabulary (256 bytes and 4 special ids), so it cannot add "
                f"{unknown[:5]}: write them as text (they become their bytes), or give a chat template's markers "
                "the special ids with bos_token= / eos_token= / unk_token="
            )
        return super()._add_tokens(new_tokens, special_tokens=special_tokens)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        if kwargs.pop("split_special_tokens", self.split_special_tokens):
            return [chr(b) for b in text_to_bytes(text)]
        return super().tokenize(text, split_special_tokens=False, **kwargs)

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [chr(b) for b in text_to_bytes(text)]

    def _convert_token_to_id(self, token: str) -> int:
        if len(token) == 1 and ord(token) < 256:
            return ord(token) + BYTE_OFFSET
        return self.unk_token_id

    def _convert_id_to_token(self, index: int) -> str:
        if BYTE_OFFSET <= index < BYTE_VOCAB_SIZE:
            return chr(index - BYTE_OFFSET)
        return self.unk_token

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        pieces, pending = [], bytearray()
        for token in tokens:
            if len(token) == 1 and ord(token) < 256:
                pending.append(ord(token))
            else:
                pieces.append(bytes_to_text(bytes(pending)))
                pending = bytearray()
                pieces.append(token)
        pieces.append(bytes_to_text(bytes(pending)))
        return "".join(pieces)

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        tokens = self.convert_ids_to_tokens(list(token_ids), skip_special_tokens=skip_special_tokens)
        return self.convert_tokens_to_string(tokens)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        ids = bos + token_ids_0 + eos
        return ids if token_ids_1 is None else ids + bos + token_ids_1 + eos

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            ids = token_ids_0 + (token_ids_1 or [])
            return [int(i < BYTE_OFFSET) for i in ids]
        bos, eos = [1] if self.add_bos_token else [], [1] if self.add_eos_token else []
        mask = bos + [0] * len(token_ids_0) + eos
        return mask if token_ids_1 is None else mask + bos + [0] * len(token_ids_1) + eos

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()

    # ------------------------------------------------------------------ raw bytes
    def encode_bytes(self, data: bytes, add_special_tokens: bool = True) -> list[int]:
        """Arbitrary bytes (invalid UTF-8 included) -> ids."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"encode_bytes takes bytes, got {type(data).__name__}; encode a str with tokenizer(text)")
        ids = [b + BYTE_OFFSET for b in bytes(data)]
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    def decode_bytes(self, ids) -> bytes:
        """ids -> the exact bytes they stand for (special and added-token ids dropped). ValueError for anything
        that is not a token id of this tokenizer, rather than bytes with a silent hole."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes, bytearray)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"decode_bytes takes a sequence of token ids, got {type(ids).__name__}")
        ids = list(ids)
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(self)]
        if bad:
            raise ValueError(f"decode_bytes takes token ids in 0..{len(self) - 1} (byte b is id b + {BYTE_OFFSET}), "
                             f"got {bad[:5]}")
        return bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < BYTE_VOCAB_SIZE)

    # ------------------------------------------------------------------ patching
    def attach_model(self, model) -> BLTTokenizer:
        """Use the patching rule and entropy model of a live `BLTModel` / `BLTForCausalLM` (shared, not copied)."""
        base = getattr(model, "model", model)
        self._patching = (PatchingRule.from_config(base.config), base.patcher)
        return self

    def _load_patching(self):
        if self._patching is not None:
            return self._patching
        from transformers.utils.hub import cached_file

        source = self.name_or_path
        config_file = None
        if source:
            try:
                config_file = cached_file(source, "config.json", _raise_exceptions_for_missing_entries=False)
            except OSError:
                config_file = None
        if config_file is None:
            raise ValueError(
                "return_patch_lengths needs the BLT checkpoint's config.json next to the tokenizer files "
                f"(looked in {source!r}), or a model attached with tokenizer.attach_model(model)"
            )
        with open(config_file, encoding="utf-8") as handle:
            config_dict = json.load(handle)
        if config_dict.get("model_type") != BLTConfig.model_type:
            raise ValueError(f"{config_file} is not a blt_hf config (model_type {config_dict.get('model_type')!r})")
        config = BLTConfig.from_dict(config_dict)
        patcher = None
        rule = PatchingRule.from_config(config)
        if rule.needs_entropies:
            patcher = _load_patcher_from_checkpoint(source, config)
        self._patching = (rule, patcher)
        return self._patching

    def patch_lengths(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Patch lengths [B, P] (summing to each row's bytes + 1) of already tokenized rows."""
        rule, patcher = self._load_patching()
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2 or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
            raise ValueError(f"patch_lengths takes [batch, length] integer byte ids, got {input_ids.dtype} of shape "
                             f"{list(input_ids.shape)}")
        input_ids = input_ids.long()  # (a uint8 tensor of bytes would wrap the vocabulary size in the check)
        bad = input_ids[(input_ids < 0) | (input_ids >= BYTE_VOCAB_SIZE)]
        if bad.numel():
            raise ValueError(f"patch_lengths takes byte ids in 0..{BYTE_VOCAB_SIZE - 1} (byte b is id b + "
                             f"{BYTE_OFFSET}), got {bad[:5].tolist()}")
        mask = None if attention_mask is None else torch.as_tensor(attention_mask)
        if mask is not None and mask.dim() == 1:
            mask = mask[None]
        if patcher is not None:
            device = next(patcher.parameters()).device
            input_ids = input_ids.to(device)
            mask = mask.to(device) if mask is not None else None
        lengths, _ = compute_patch_lengths(input_ids, mask, rule, patcher, self.patch_chunk_size)
        return lengths

    def __call__(self, *args, return_patch_lengths: bool = False, **kwargs):
        encoding = super().__call__(*args, **kwargs)
        if not return_patch_lengths:
            return encoding
        ids, mask = encoding["input_ids"], encoding.get("attention_mask")
        if isinstance(ids, torch.Tensor):
            encoding["patch_lengths"] = self.patch_lengths(ids, mask).to(ids.device)
            return encoding
        batched = len(ids) > 0 and isinstance(ids[0], (list, tuple))
        rows = ids if batched else [ids]
        masks = (mask if batched else [mask]) if mask is not None else [[1] * len(row) for row in rows]
        # one batched patcher pass over the rows, left-padded to a common width (padding is never read)
        width = max((len(row) for row in rows), default=0)
        padded = torch.full((len(rows), width), BOE_ID, dtype=torch.long)
        padded_mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (row, row_mask) in enumerate(zip(rows, masks, strict=True)):
            if row:
                padded[i, width - len(row) :] = torch.tensor(row)
                padded_mask[i, width - len(row) :] = torch.tensor(row_mask)
        lengths = [[n for n in row if n > 0] for row in self.patch_lengths(padded, padded_mask).tolist()]
        encoding["patch_lengths"] = lengths if batched else lengths[0]
        return encoding


def _load_patcher_from_checkpoint(source: str, config: BLTConfig):
    """The entropy model's weights (`model.patcher.*`) read straight from the checkpoint's safetensors."""
    from .patcher import BLTPatcher
    from .pretrained import read_safetensors

    state = read_safetensors(source, prefix="model.patcher.")
    if state is None:
        raise ValueError(f"no model.safetensors in {source!r}: cannot load the entropy model for patching")
    patcher = BLTPatcher(config.patcher_config)
    result = patcher.load_state_dict(state, strict=True)
    missing = [k for k in result.missing_keys if "rotary" not in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"entropy model weights in {source!r} do not match its config: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    return patcher.eval()


__all__ = ["BLTTokenizer", "text_to_bytes", "bytes_to_text"]
