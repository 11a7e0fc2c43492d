"""blt_hf: the Byte Latent Transformer as a transformers model package.

`import blt_hf` registers the classes with the transformers Auto classes, so that
`AutoModelForCausalLM.from_pretrained(folder)` works; saved folders also carry the code and load with
`trust_remote_code=True` where blt_hf is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from .cache import BLTCache
from .configuration_blt_hf import (
    BLTConfig,
    BLTGlobalTransformerConfig,
    BLTLocalDecoderConfig,
    BLTLocalEncoderConfig,
    BLTPatcherConfig,
)
from .modeling_blt_hf import BLTCausalLMOutput, BLTForCausalLM, BLTModel, BLTModelOutput
from .patcher import BLTPatcher, BLTPatcherOutput
from .patching import PatchingRule, compute_patch_lengths, patch_lengths_from_starts, starts_from_patch_lengths
from .tokenization_blt_hf import BLTTokenizer

__version__ = "0.1.0"

AutoConfig.register(BLTConfig.model_type, BLTConfig, exist_ok=True)
AutoModel.register(BLTConfig, BLTModel, exist_ok=True)
AutoModelForCausalLM.register(BLTConfig, BLTForCausalLM, exist_ok=True)
AutoTokenizer.register(BLTConfig, tokenizer_class=BLTTokenizer, exist_ok=True)
AutoConfig.register(BLTPatcherConfig.model_type, BLTPatcherConfig, exist_ok=True)
AutoModel.register(BLTPatcherConfig, BLTPatcher, exist_ok=True)
BLTPatcherConfig.register_for_auto_class()
BLTPatcher.register_for_auto_class("AutoModel")
BLTConfig.register_for_auto_class()
BLTModel.register_for_auto_class("AutoModel")
BLTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
BLTTokenizer.register_for_auto_class("AutoTokenizer")


def __getattr__(name: str):
    if name == "BLTTrainer":  # imported on first use: it loads transformers.Trainer
        from .training.trainer import BLTTrainer

        return BLTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BLTCache",
    "BLTCausalLMOutput",
    "BLTConfig",
    "BLTForCausalLM",
    "BLTGlobalTransformerConfig",
    "BLTLocalDecoderConfig",
    "BLTLocalEncoderConfig",
    "BLTModel",
    "BLTModelOutput",
    "BLTPatcher",
    "BLTPatcherConfig",
    "BLTPatcherOutput",
    "BLTTokenizer",
    "BLTTrainer",
    "PatchingRule",
    "compute_patch_lengths",
    "patch_lengths_from_starts",
    "starts_from_patch_lengths",
]
