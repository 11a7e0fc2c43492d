"""Converters into and out of blt_hf checkpoint folders: a Llama's layers as the global transformer (`llama`), Meta's
released BLT and entropy models (`meta`), transformers' `Blt` both ways (`transformers_blt`), and the shared key
tables, safetensors readers and atomic folder writer (`checkpoints`)."""
