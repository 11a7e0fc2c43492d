"""Configuration of the Byte Latent Transformer (BLT) and its four stacks.

`BLTConfig` holds the byte-level settings (ids, hash n-grams, patching rule) and one sub-config per stack:
`patcher_config` (the entropy model), `encoder_config` (local encoder), `global_config` (latent transformer over
patches) and `decoder_config` (local decoder). Field names follow transformers' `BltConfig`, so its checkpoints map
one-to-one. Every invalid combination raises `ValueError` at construction, naming the field to change.

Ids: byte `b` has id `b + 4`; 0 = BOE (also the pad id and the hash left-pad), 1 = BOS, 2 = EOS, 3 = BPE delimiter.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

BYTE_OFFSET = 4
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
BOE_ID, BOS_ID, EOS_ID, BPE_DELIMITER_ID = 0, 1, 2, 3
PATCHING_MODES = ("entropy", "boundary", "source", "static", "space", "byte")
# Primes of the released rolling polynomial hash; hash function f uses HASH_PRIMES[f].
HASH_PRIMES = (
    1000000007, 5915587277, 1500450271, 3267000013, 5754853343, 4093082899,
    9576890767, 3628273133, 2860486313, 5463458053, 3367900313,
)


def _field_error(config_name: str, field: str, message: str) -> ValueError:
    return ValueError(f"{config_name}.{field}: {message}")


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# annotation word -> (test, what the message says was expected); the annotations are strings (postponed
# evaluation), which huggingface_hub's @strict does not check, so the BLT configs check their own fields here
_TYPE_CHECKS = {
    "int": (_is_integer, "an integer"),
    "float": (_is_number, "a number"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "a dict"),
    "list[int]": (lambda v: isinstance(v, (list, tuple)), "a list of integers"),
    "PreTrainedConfig": (lambda v: isinstance(v, PreTrainedConfig), "a config"),
    "None": (lambda v: v is None, "None"),
}


def check_field_types(config, config_name: str) -> None:
    """Raise a `ValueError` naming the field when a value has the wrong type (bool is not an integer here) or
    a number is NaN or infinite. Fields are those of the BLT config classes, from their annotations."""
    for item in dataclasses.fields(config):
        if not isinstance(item.type, str):
            continue
        words = [word.strip() for word in item.type.split("|")]
        if not all(word in _TYPE_CHECKS for word in words):
            continue
        value = getattr(config, item.name)
        if not any(_TYPE_CHECKS[word][0](value) for word in words):
            shown = [word for word in words if not (word == "int" and "float" in words)]  # "a number" says it
            expected = " or ".join(_TYPE_CHECKS[word][1] for word in shown)
            raise _field_error(config_name, item.name, f"expected {expected}, got {value!r} ({type(value).__name__})")
        if _is_number(value) and not math.isfinite(value):
            raise _field_error(config_name, item.name, f"must be a finite number, got {value!r}")


class _StackConfigMixin:
    """Checks shared by every transformer stack (heads, dims, window)."""

    def _check_stack(self, name: str) -> None:
        check_field_types(self, name)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        for field in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers"):
            if getattr(self, field) < 1:
                raise _field_error(name, field, f"must be >= 1, got {getattr(self, field)}")
        if self.hidden_size % self.num_attention_heads:
            raise _field_error(
                name, "num_attention_heads",
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}",
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise _field_error(
                name, "num_key_value_heads",
                f"num_attention_heads={self.num_attention_heads} is not divisible by "
                f"num_key_value_heads={self.num_key_value_heads}",
            )
        self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim % 2:
            raise _field_error(name, "num_attention_heads", f"head_dim={self.head_dim} must be even for RoPE")
        if self.intermediate_size is None:
            self.intermediate_size = 256 * ((int(8 * self.hidden_size / 3) + 255) // 256)
        if self.intermediate_size < 1:
            raise _field_error(name, "intermediate_size", f"must be >= 1, got {self.intermediate_size}")
        window = getattr(self, "sliding_window", None)
        if window is not None and window < 1:
            raise _field_error(name, "sliding_window", f"must be >= 1 or None (full causal context), got {window}")
        self._check_numbers(name)
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        if rope_type not in ("default", "llama3"):
            raise _field_error(name, "rope_parameters", f"rope_type {rope_type!r} is not supported (default, llama3)")

    def _check_numbers(self, name: str) -> None:
        """Epsilon, dropout, positions, vocabulary, RoPE theta: in range."""
        if self.rms_norm_eps <= 0:
            raise _field_error(name, "rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}")
        if self.max_position_embeddings < 1:
            raise _field_error(name, "max_position_embeddings", f"must be >= 1, got {self.max_position_embeddings}")
        dropout = getattr(self, "dropout", 0.0)
        if not 0 <= dropout < 1:
            raise _field_error(name, "dropout", f"must be in [0, 1), got {dropout}")
        if self.initializer_range < 0:
            raise _field_error(name, "initializer_range", f"must be >= 0, got {self.initializer_range}")
        for field in ("cross_attn_num_heads", "cross_attn_num_key_value_heads"):
            value = getattr(self, field, None)
            if value is not None and value < 1:
                raise _field_error(name, field, f"must be >= 1 or None, got {value}")
        theta = (self.rope_parameters or {}).get("rope_theta")
        if theta is not None and not (_is_number(theta) and math.isfinite(theta) and theta > 0):
            raise _field_error(name, "rope_parameters", f"rope_theta must be a positive number, got {theta!r}")

    def _check_cross_attention(self, name: str) -> None:
        heads = self.cross_attn_num_heads or self.num_attention_heads
        kv_heads = self.cross_attn_num_key_value_heads or (
            self.num_key_value_heads if self.cross_attn_num_heads is None else heads
        )
        if self.hidden_size % heads:
            raise _field_error(
                name, "cross_attn_num_heads", f"hidden_size={self.hidden_size} is not divisible by {heads} heads"
            )
        if heads % kv_heads:
            raise _field_error(
                name, "cross_attn_num_key_value_heads", f"{heads} heads are not divisible by {kv_heads} kv heads"
            )
        self.cross_attn_num_heads, self.cross_attn_num_key_value_heads = heads, kv_heads


@strict
class BLTPatcherConfig(_StackConfigMixin, PreTrainedConfig):
    r"""The entropy model: a small byte-level causal LM whose next-byte entropy decides where patches start.

    Args:
        vocab_size: Byte vocabulary (256 bytes + 4 special ids).
        hidden_size / num_hidden_layers / num_attention_heads / num_key_value_heads / intermediate_size:
            Transformer shape. `num_key_value_heads=None` means no GQA; `intermediate_size=None` derives the
            SwiGLU width as 8/3 of `hidden_size` rounded up to a multiple of 256.
        sliding_window: Each byte attends to itself and the `sliding_window - 1` bytes before it (None: all).
        rms_norm_eps: RMSNorm epsilon.
        max_position_embeddings: Longest context the RoPE tables are meant for (not a hard limit).
        rope_parameters: RoPE settings; the released entropy model uses `rope_theta=10000`.
        initializer_range: Unused by BLT's init (std = fan_in^-0.5), kept for transformers utilities.
        boundary_head: Add a head that predicts, after each byte, whether the next byte starts a patch (a logit):
            the boundary predictor of `patching_mode="boundary"` (e.g. trained on a source tokenizer's tokens).
    """

    model_type = "blt_hf_patcher"
    default_theta = 10000.0

    vocab_size: int = BYTE_VOCAB_SIZE
    hidden_size: int = 768
    num_hidden_layers: int = 14
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    intermediate_size: int | None = 2048
    sliding_window: int | None = 512
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    rope_parameters: dict | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    boundary_head: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_stack("patcher_config")
        if self.vocab_size < BYTE_VOCAB_SIZE:
            raise _field_error("patcher_config", "vocab_size", f"must be >= {BYTE_VOCAB_SIZE}, got {self.vocab_size}")


@strict
class _BLTLocalStackConfig(_StackConfigMixin, PreTrainedConfig):
    r"""Fields shared by the local encoder and the local decoder (byte-level stacks with cross-attention).

    Args:
        hidden_size / num_hidden_layers / num_attention_heads / num_key_value_heads / intermediate_size:
            Transformer shape of the byte layers (encoder and decoder widths must match).
        sliding_window: Local self-attention window in bytes (released models: 512; None: full causal context).
        cross_attn_all_layers: Cross-attention at every layer, or at one layer only.
        cross_attn_num_heads / cross_attn_num_key_value_heads: Heads of the byte/patch cross-attention
            (default: the self-attention heads, as in transformers' Blt).
        rms_norm_eps, max_position_embeddings, rope_parameters, dropout: as usual; released rope_theta is 500000.
        initializer_range: Unused by BLT's init (std = fan_in^-0.5), kept for transformers utilities.
    """

    model_type = "blt_hf_local_stack"
    default_theta = 500000.0
    stack_name = "local_config"

    hidden_size: int = 1024
    num_hidden_layers: int = 1
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    intermediate_size: int | None = 2816
    sliding_window: int | None = 512
    cross_attn_all_layers: bool = False
    cross_attn_num_heads: int | None = None
    cross_attn_num_key_value_heads: int | None = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 24576
    rope_parameters: dict | None = None
    dropout: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_stack(self.stack_name)
        self._check_cross_attention(self.stack_name)


@strict
class BLTLocalEncoderConfig(_BLTLocalStackConfig):
    r"""Local encoder: byte + hash n-gram embeddings, windowed self-attention, cross-attention pooling into patches.

    Args (besides the shared local-stack fields):
        cross_attn_all_layers: Cross-attend after every layer (True) or only after the last one (False, released).
        cross_attn_repool_each_layer: With `cross_attn_all_layers`, re-initialise the patch queries by max-pooling
            before every cross-attention, as transformers' Blt does. The official code pools once (False).
    """

    model_type = "blt_hf_local_encoder"
    stack_name = "encoder_config"

    cross_attn_repool_each_layer: bool = False


@strict
class BLTGlobalTransformerConfig(_StackConfigMixin, PreTrainedConfig):
    r"""Global latent transformer: a Llama-style causal transformer over patch vectors (no embedding, no head).

    Args:
        hidden_size / num_hidden_layers / num_attention_heads / num_key_value_heads / intermediate_size:
            Transformer shape (GQA supported).
        use_input_projection: Linear map from the `cross_attn_k * encoder hidden_size` patch vector to `hidden_size`.
            None adds it exactly when the two sizes differ (the 7B release); False with different sizes is an error.
        max_position_embeddings: Most patches per sequence.
        rope_parameters: RoPE over the patch index; `rope_type` "default" or "llama3" (for Llama 3.x initialisation).
        rms_norm_eps, dropout: as usual.
        initializer_range: Unused by BLT's init (std = fan_in^-0.5), kept for transformers utilities.
    """

    model_type = "blt_hf_global_transformer"
    default_theta = 500000.0

    hidden_size: int = 2048
    num_hidden_layers: int = 25
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    intermediate_size: int | None = 5632
    use_input_projection: bool | None = None
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope_parameters: dict | None = None
    dropout: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_stack("global_config")


@strict
class BLTLocalDecoderConfig(_BLTLocalStackConfig):
    r"""Local decoder: cross-attends from bytes to patch states (before each layer), windowed self-attention, head.

    Args (besides the shared local-stack fields):
        num_hidden_layers: 9 in the released 1B model.
        cross_attn_all_layers: Cross-attention before every layer (True, released) or only before the first.
        patch_local_attention: Restrict self-attention to the bytes decoded from the same patch state: the Block
            Transformer's block-local token decoder (Ho et al., 2024). Its KV cache is dropped at every boundary.
    """

    model_type = "blt_hf_local_decoder"
    stack_name = "decoder_config"

    num_hidden_layers: int = 9
    cross_attn_all_layers: bool = True
    patch_local_attention: bool = False


@strict
class BLTConfig(PreTrainedConfig):
    r"""Byte Latent Transformer (Pagnoni et al., 2024) configuration.

    Defaults reproduce the released `blt-1b` shape. Patching settings:

    Args:
        patching_mode: How patch boundaries are chosen when `patch_lengths` is not given:
            "entropy" (the entropy model; global threshold, approximate monotonicity, or both),
            "static" (fixed `patch_size` bytes: the Block Transformer / MEGABYTE setting),
            "space" (the official space-like byte rule), "byte" (one byte per patch),
            "boundary" (the patcher's boundary head: byte j >= 2 starts a patch when its logit after byte j-1
            exceeds `patching_threshold`; see `blt-hf byteify`),
            "source" (a byte-ified model's own source model decides: byte j >= 2 starts a patch when the token
            head's log-odds that the patch's bytes so far are a whole token exceed `patching_threshold`; it needs
            the global states before each decision, so the model runs one byte at a time; see
            `patching_lookahead`).
            In every mode byte 0 (BOS) is a patch of its own and byte 1 starts the next patch.
        patching_threshold: Entropy threshold θ in nats (released: 1.335442066192627). Byte j >= 2 starts a patch
            when H(j-1) > θ. With `monotonicity` it is the threshold on the rise H(j-1) - H(j-2).
        patching_threshold_add: When set (and `monotonicity` is False), a patch starts only where the entropy rise
            exceeds this value AND the entropy exceeds `patching_threshold` (the official combined rule).
        monotonicity: Use the approximate-monotonicity rule (entropy rise > `patching_threshold`).
        patch_size: Patch length of "static" mode.
        max_patch_length: Split any longer patch into pieces of this length (any mode). None: unbounded.
        cross_attn_k: Patch vector slots: each patch is k query vectors of the encoder width.
        encoder_hash_byte_group_size: n-gram sizes of the hash embeddings (released: 3..8).
        encoder_hash_byte_group_vocab: Rows per hash table (released: 500002).
        encoder_hash_byte_group_nb_functions: Hash functions per n-gram size (released: 1; at most 11).
        max_position_embeddings: Longest input in bytes; longer inputs raise `ValueError`.
        has_patcher: Build the entropy model. None: only for "entropy" and "boundary" modes.
        vocab_embedding_rows: Rows of the source-vocabulary embedding (`BLTVocabEmbedding`, 0: none): each closed
            patch adds to its global input the row of the longest source token ending at its last byte inside it.
        vocab_embedding_max_bytes: Longest source token (in bytes) the vocabulary embedding looks up.
        vocab_embedding_special_rows: The source token each special id stands for, by id: [-1, BOS, EOS, id 3]
            (-1: none; for BOS, the row the vocabulary embedding stores). A byte-ified chat model writes its
            source's chat markers this way: SmolLM2's `<|im_end|>` is EOS and `<|im_start|>` id 3.
        token_head: Predict bytes from the source model's next-token distribution (`BLTTokenHead`: the source's
            final norm and the vocabulary embedding rows as its tied output matrix), mixed with the local decoder's
            own prediction. Needs vocab_embedding_rows.
        token_head_fallback: The token head's initial weight on the local decoder's own prediction (0 < w < 1).
        patching_lookahead: In "source" patching, decide each boundary one byte later, as the source tokenizer
            does: where the token head gives the open patch a probability of at least `patching_lookahead_min_end`
            of being a whole token, the model closes it speculatively, predicts the next byte as the mixture of
            "the token goes on" and "a new token starts" (the new patch's own prediction), and keeps the cut only
            if, after seeing that byte, the log-odds of the cut exceed `patching_threshold` (else it redoes the
            byte without it). Closer to the source model's bits per byte, at the cost of speculative
            global-transformer runs.
        patching_lookahead_min_end: The least probability of "the token ends here" worth a speculative cut
            (0 < p <= 1); below it the patch goes on and the end mass goes to the local decoder's prediction.
        patcher_config / encoder_config / global_config / decoder_config: the four stacks (dict, config or None).
        vocab_size: 260 ids: 4 special ids (0 BOE/pad, 1 BOS, 2 EOS, 3 BPE delimiter) and byte b as b + 4.
        num_hidden_layers: The global transformer's layer count (derived; transformers utilities read it).
        initializer_range: Kept for transformers compatibility; weights use the official fan-in init instead
            (truncated normals with std = fan_in^-0.5, see `BLTPreTrainedModel._init_weights`).
        tie_word_embeddings: Always False in BLT: the byte embedding and the byte head are separate.
        use_cache: Return a `BLTCache` for incremental generation.
        fast_decoding: Let one-byte decoding steps take the exact rewrites of `decoding.py` (fused layer steps, slot
            readouts), an unmasked attention step when every cached key is visible, and the patching rule's
            one-byte step. False forces the plain formulas everywhere (same bytes, slower): for debugging.
        bos_token_id / eos_token_id / pad_token_id: 1, 2 and 0 (BOE) as in the released models.
    """

    model_type = "blt_hf"
    keys_to_ignore_at_inference = ["past_key_values"]
    sub_configs_defaults = {
        "patcher_config": BLTPatcherConfig,
        "encoder_config": BLTLocalEncoderConfig,
        "global_config": BLTGlobalTransformerConfig,
        "decoder_config": BLTLocalDecoderConfig,
    }

    vocab_size: int = BYTE_VOCAB_SIZE
    patching_mode: str = "entropy"
    patching_threshold: float | int = 1.335442066192627
    patching_threshold_add: float | int | None = None
    monotonicity: bool = False
    patch_size: int = 4
    max_patch_length: int | None = None
    cross_attn_k: int = 2
    encoder_hash_byte_group_size: list[int] | None = None
    encoder_hash_byte_group_vocab: int = 500002
    encoder_hash_byte_group_nb_functions: int = 1
    max_position_embeddings: int = 24576
    has_patcher: bool | None = None
    vocab_embedding_rows: int = 0
    vocab_embedding_max_bytes: int = 16
    vocab_embedding_special_rows: list[int] | None = None
    token_head: bool = False
    token_head_fallback: float = 0.05
    patching_lookahead: bool = False
    patching_lookahead_min_end: float = 0.01
    patcher_config: dict | PreTrainedConfig | None = None
    encoder_config: dict | PreTrainedConfig | None = None
    global_config: dict | PreTrainedConfig | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    num_hidden_layers: int | None = None
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    fast_decoding: bool = True
    bos_token_id: int | None = BOS_ID
    eos_token_id: int | list[int] | None = EOS_ID
    pad_token_id: int | None = BOE_ID

    def __post_init__(self, **kwargs):
        check_field_types(self, "BLTConfig")
        super().__post_init__(**kwargs)
        if self.encoder_hash_byte_group_size is None:
            self.encoder_hash_byte_group_size = [3, 4, 5, 6, 7, 8]
        if self.has_patcher is None:
            self.has_patcher = self.patching_mode in ("entropy", "boundary")
        if self.num_hidden_layers is None:
            self.num_hidden_layers = self.global_config.num_hidden_layers
        self._check()

    def _check(self) -> None:
        err = lambda field, msg: _field_error("BLTConfig", field, msg)  # noqa: E731
        if not isinstance(self.fast_decoding, bool):
            raise err("fast_decoding", f"must be True or False, got {self.fast_decoding!r}")
        for field, spec in self.sub_configs_defaults.items():
            value, expected = getattr(self, field), getattr(spec, "config_class", spec)
            if not isinstance(value, expected):
                raise err(field, f"expected a {expected.__name__} or a dict of its fields, got {type(value).__name__}")
        if self.patching_mode not in PATCHING_MODES:
            raise err("patching_mode", f"unknown mode {self.patching_mode!r}; choose one of {PATCHING_MODES}")
        if self.patching_mode == "entropy" and not self.has_patcher:
            raise err("has_patcher", "entropy patching needs the entropy model (has_patcher=True)")
        if self.patching_mode == "boundary" and not (self.has_patcher and self.patcher_config.boundary_head):
            raise err("patching_mode", "boundary patching needs a patcher with a boundary head "
                      "(has_patcher=True, patcher_config.boundary_head=True)")
        if self.vocab_embedding_rows < 0:
            raise err("vocab_embedding_rows", f"must be >= 0, got {self.vocab_embedding_rows}")
        if self.vocab_embedding_max_bytes < 1:
            raise err("vocab_embedding_max_bytes", f"must be >= 1, got {self.vocab_embedding_max_bytes}")
        if self.patching_mode == "source" and not self.token_head:
            raise err("patching_mode", "source patching reads the token head: set token_head=True")
        special_rows = self.vocab_embedding_special_rows
        if special_rows is not None:
            if not self.vocab_embedding_rows:
                raise err("vocab_embedding_special_rows", "special ids stand for source tokens only with a "
                          "vocabulary embedding: set vocab_embedding_rows")
            if (len(special_rows) != BYTE_OFFSET or special_rows[BOE_ID] != -1
                    or any(not isinstance(r, int) or not -1 <= r < self.vocab_embedding_rows for r in special_rows)):
                raise err("vocab_embedding_special_rows", f"must list {BYTE_OFFSET} rows, one per special id (-1 for "
                          f"none and always for id {BOE_ID}, padding), each below vocab_embedding_rows "
                          f"({self.vocab_embedding_rows}); got {special_rows}")
        if self.token_head and not self.vocab_embedding_rows:
            raise err("token_head", "the token head reads the source vocabulary: set vocab_embedding_rows")
        if not 0 < self.token_head_fallback < 1:
            raise err("token_head_fallback", f"must be between 0 and 1 (exclusive), got {self.token_head_fallback}")
        if self.patching_lookahead and self.patching_mode != "source":
            raise err("patching_lookahead", f"look-ahead is a rule of source patching, not {self.patching_mode!r}")
        if not 0 < self.patching_lookahead_min_end <= 1:
            raise err("patching_lookahead_min_end",
                      f"must be a probability in (0, 1], got {self.patching_lookahead_min_end}")
        if self.patch_size < 1:
            raise err("patch_size", f"must be >= 1, got {self.patch_size}")
        if self.max_patch_length is not None and self.max_patch_length < 1:
            raise err("max_patch_length", f"must be >= 1 or None, got {self.max_patch_length}")
        if self.monotonicity and self.patching_threshold_add is not None:
            raise err("patching_threshold_add", "set either monotonicity or patching_threshold_add, not both")
        if self.vocab_size < BYTE_VOCAB_SIZE:
            raise err("vocab_size", f"must be >= {BYTE_VOCAB_SIZE} (256 bytes + 4 special ids), got {self.vocab_size}")
        if self.has_patcher and self.patcher_config.vocab_size != self.vocab_size:
            raise err("patcher_config", f"vocab_size {self.patcher_config.vocab_size} != {self.vocab_size}")
        if self.cross_attn_k < 1:
            raise err("cross_attn_k", f"must be >= 1, got {self.cross_attn_k}")
        sizes = self.encoder_hash_byte_group_size
        if not all(_is_integer(n) and n >= 1 for n in sizes):
            raise err("encoder_hash_byte_group_size", f"n-gram sizes must be integers >= 1, got {sizes}")
        if not 0 <= self.encoder_hash_byte_group_nb_functions <= len(HASH_PRIMES):
            raise err(
                "encoder_hash_byte_group_nb_functions",
                f"must be in 0..{len(HASH_PRIMES)}, got {self.encoder_hash_byte_group_nb_functions}",
            )
        if self.encoder_hash_byte_group_vocab < 1:
            raise err("encoder_hash_byte_group_vocab", f"must be >= 1, got {self.encoder_hash_byte_group_vocab}")
        if self.max_position_embeddings < 2:
            raise err("max_position_embeddings", f"must be >= 2 bytes, got {self.max_position_embeddings}")
        enc, glob, dec = self.encoder_config, self.global_config, self.decoder_config
        if enc.hidden_size != dec.hidden_size:
            raise err(
                "decoder_config",
                f"hidden_size {dec.hidden_size} != encoder hidden_size {enc.hidden_size}: "
                "the local decoder reads the encoder's byte states",
            )
        patch_vector_size = self.cross_attn_k * enc.hidden_size
        if glob.use_input_projection is False and patch_vector_size != glob.hidden_size:
            raise err(
                "cross_attn_k",
                f"cross_attn_k * encoder hidden_size = {patch_vector_size} != global hidden_size "
                f"{glob.hidden_size}; set global_config.use_input_projection=None or True to add a projection",
            )
        if self.num_hidden_layers < 1:
            raise err("num_hidden_layers", f"must be >= 1, got {self.num_hidden_layers}")
        for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, token)
            for token_id in value if isinstance(value, (list, tuple)) else [value]:
                if token_id is not None and not (_is_integer(token_id) and 0 <= token_id < BYTE_OFFSET):
                    raise err(token, f"must be a special id in 0..3 (bytes are 4..259), got {value!r}")

    @property
    def global_input_size(self) -> int:
        """Width of one patch vector leaving the local encoder: `cross_attn_k * encoder hidden_size`."""
        return self.cross_attn_k * self.encoder_config.hidden_size

    @property
    def needs_global_projection(self) -> bool:
        projection = self.global_config.use_input_projection
        return projection if projection is not None else self.global_input_size != self.global_config.hidden_size

    @property
    def num_hash_embeddings(self) -> int:
        return self.encoder_hash_byte_group_nb_functions * len(self.encoder_hash_byte_group_size)


__all__ = [
    "BLTConfig",
    "BLTPatcherConfig",
    "BLTLocalEncoderConfig",
    "BLTGlobalTransformerConfig",
    "BLTLocalDecoderConfig",
]
