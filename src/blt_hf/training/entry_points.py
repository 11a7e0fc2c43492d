"""Training entry points on `transformers.Trainer`: `blt-hf train` (a BLT) and `blt-hf train-entropy` (its entropy
model). Data: text files or a `datasets` dataset -> packed rows (-> precomputed patches); progress bars, periodic
held-out bits per byte, checkpoints every `save_steps` (resume with `--resume`), and a final `save_pretrained`
folder `OUTPUT/final`.

    blt-hf train-entropy --train a.txt b.txt --eval c.txt --output runs/entropy --preset small --steps 2000
    blt-hf train --train a.txt --eval c.txt --output runs/blt --preset small --patcher runs/entropy/final
    blt-hf train --dataset DIR --text-column body --eval-dataset-split test ...     # save_to_disk folder or hub name
    blt-hf train-byte-llama --train a.txt --eval c.txt --output runs/llama --preset small    # the baseline
    accelerate launch --num_processes 2 --cpu -m blt_hf.tools.cli train ...                 # DDP, same global batch
    accelerate launch --config_file configs/accelerate_fsdp.yaml -m blt_hf.tools.cli train ...    # FSDP2 (GPUs)

`blt-hf train` uses `BLTTrainer` (per-stack learning rates, built by Trainer itself, so FSDP can wrap the model);
it and `train-byte-llama` use AdamW with betas (0.9, 0.95), eps 1e-8 and `--weight-decay` on matrices.

Options can also come from a JSON file (`--options run.json`, keys = the option names below); flags win.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..evaluation.metrics import bits_per_byte
from ..tools.extras import require


@dataclass
class TrainOptions:
    train: list[str] = field(default_factory=list)  # text files (one document each, or paragraphs)
    eval: list[str] = field(default_factory=list)  # held-out text files
    dataset: str | None = None  # instead of --train: a Dataset.save_to_disk folder, or a datasets.load_dataset name
    dataset_config: str | None = None  # load_dataset's configuration name
    dataset_split: str = "train"  # the training split
    eval_dataset_split: str | None = None  # instead of --eval: a held-out split of the dataset
    text_column: str = "text"  # the dataset's column of documents
    output: str = "runs/blt"
    model: str | None = None  # continue from a saved folder
    config: str | None = None  # a config JSON for a fresh model
    preset: str = "small"  # or a named size (blt_hf.training.presets)
    patcher: str | None = None  # copy the entropy model (and its patching settings) from this folder
    patching_mode: str | None = None
    split_paragraphs: bool = False
    data_cache: str | None = None  # keep packed (and patched) rows here; resumes and repeated runs reuse them
    row_length: int = 1024
    batch_size: int = 8  # per device
    gradient_accumulation: int = 1
    steps: int = 1000
    learning_rate: float = 3e-4
    global_lr_scale: float = 1.0
    weight_decay: float = 0.1
    warmup_steps: int = 100
    scheduler: str = "cosine"
    sampling: str = "random"  # or "sequential" (transformers' train_sampling_strategy)
    eval_steps: int = 200
    save_steps: int = 200
    logging_steps: int = 10
    max_eval_rows: int = 256
    seed: int = 0
    bf16: bool = False
    activation_checkpointing: bool = False
    fsdp: bool = False  # shard with FSDP2 (each transformer layer and cross-attention is a unit)
    resume: bool = False  # continue from the last checkpoint in OUTPUT
    overwrite: bool = False  # write into an OUTPUT folder that holds files already (another run's)
    threads: int | None = None


def parse_options(argv: list[str] | None, description: str, defaults: dict | None = None,
                  prog: str | None = None) -> TrainOptions:
    from ..tools.cli import OneLineArgumentParser

    parser = OneLineArgumentParser(prog=prog, description=description)
    parser.add_argument("--options", help="JSON file with option values (flags given here win)")
    for item in fields(TrainOptions):
        flag = "--" + item.name.replace("_", "-")
        if item.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif item.type == "list[str]":
            parser.add_argument(flag, nargs="+", default=None)
        else:
            caster = {"int": int, "float": float}.get(item.type.split(" ")[0], str)
            parser.add_argument(flag, type=caster, default=None)
    args = parser.parse_args(argv)
    values = dict(defaults or {})
    if args.options:
        values.update(json.loads(Path(args.options).read_text()))
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "options"})
    unknown = set(values) - {f.name for f in fields(TrainOptions)}
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    options = TrainOptions(**values)
    check_option_values(options)
    check_data_options(options)
    check_output_folder(options)
    return options


# option -> smallest value; None: any number (still type-checked)
_OPTION_MINIMUMS = {
    "row_length": 2, "batch_size": 1, "gradient_accumulation": 1, "steps": 1, "warmup_steps": 0, "eval_steps": 0,
    "save_steps": 1, "logging_steps": 1, "max_eval_rows": 1, "seed": None, "threads": 1,
    "learning_rate": 0, "global_lr_scale": 0, "weight_decay": 0,
}


def check_option_values(options: TrainOptions) -> None:
    """Numbers of the right type and range (flags are typed by argparse; an --options JSON file is not)."""
    for item in fields(TrainOptions):
        value = getattr(options, item.name)
        if item.type == "bool" and not isinstance(value, bool):
            raise ValueError(f"option {item.name}: expected true or false, got {value!r}")
        if item.name not in _OPTION_MINIMUMS or (value is None and item.name == "threads"):
            continue
        integer = item.type.startswith("int")
        if isinstance(value, bool) or not (isinstance(value, int) if integer else isinstance(value, (int, float))):
            raise ValueError(f"option {item.name}: expected {'an integer' if integer else 'a number'}, got {value!r}")
        minimum = _OPTION_MINIMUMS[item.name]
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            kind = "an integer" if integer else "a finite number"
            raise ValueError(f"option {item.name}: expected {kind} >= {minimum}, got {value!r}")


def check_output_folder(options: TrainOptions) -> None:
    """Refuse an --output folder holding files (another run) unless --resume or --overwrite says so."""
    output = Path(options.output)
    if output.is_file():
        raise ValueError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not (options.resume or options.overwrite):
        raise ValueError(
            f"--output {output} already holds files (another run?); pass --resume to continue it, --overwrite to "
            "write into it anyway, or choose a new folder"
        )


def check_data_options(options: TrainOptions) -> None:
    """Training text from exactly one of --train and --dataset; held-out text from at most one source."""
    if bool(options.train) == bool(options.dataset):
        raise ValueError("give training text files with --train or a dataset with --dataset (not both)")
    if options.eval_dataset_split and not options.dataset:
        raise ValueError("--eval-dataset-split needs --dataset")
    if options.eval and options.eval_dataset_split:
        raise ValueError("give held-out text with --eval or --eval-dataset-split (not both)")


def load_split(options: TrainOptions, split: str):
    """One split of `options.dataset`: a `save_to_disk` folder (a DatasetDict, or a Dataset standing for
    --dataset-split), or else a `datasets.load_dataset` name or path with `options.dataset_config`."""
    require("datasets")
    from datasets import DatasetDict, load_dataset, load_from_disk

    folder = Path(options.dataset)
    if not ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()):
        return load_dataset(options.dataset, options.dataset_config, split=split)
    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):
        if split not in data:
            raise ValueError(f"{folder} has no split {split!r}; it has {sorted(data)}")
        return data[split]
    if split != options.dataset_split:
        raise ValueError(f"{folder} is a single Dataset (the training split), it has no split {split!r}")
    return data


def packed_rows(files, options, model=None, dataset=None):
    """Packed (and, with `model`, patched) rows of the text files, or of `dataset`'s `options.text_column`."""
    from .data import add_patch_lengths, cached_rows, pack_documents, rows_fingerprint, text_dataset

    files = [] if dataset is not None else files

    def build():
        docs = text_dataset(files=files, dataset=dataset, text_column=options.text_column,
                            split_paragraphs=options.split_paragraphs)
        rows = pack_documents(docs, options.row_length)
        return add_patch_lengths(rows, model) if model is not None else rows

    if not options.data_cache:
        return build()
    key = rows_fingerprint(files, options.row_length, options.split_paragraphs, model, dataset, options.text_column)
    return cached_rows(Path(options.data_cache) / f"rows-{key}", build)


def _train_rows(options, model=None):
    check_data_options(options)
    if options.dataset:
        return packed_rows([], options, model, load_split(options, options.dataset_split))
    return packed_rows(options.train, options, model)


def _eval_rows(options, model=None):
    if options.eval_dataset_split:
        rows = packed_rows([], options, model, load_split(options, options.eval_dataset_split))
    elif options.eval:
        rows = packed_rows(options.eval, options, model)
    else:
        return None
    return rows.select(range(min(options.max_eval_rows, len(rows))))


class HeldOutBitsPerByte(TrainerCallback):
    """Log held-out bits per byte every `every` optimizer steps (the final value is measured by the entry point)."""

    def __init__(self, rows, every: int, batch_size: int):
        self.rows, self.every, self.batch_size = rows, every, batch_size
        self.history: list[dict] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.rows is None or not self.every or state.global_step % self.every:
            return
        result = bits_per_byte(model, self.rows, self.batch_size)
        self.history.append({"step": state.global_step, **result})
        state.log_history.append({"step": state.global_step, "eval_bits_per_byte": result["bits_per_byte"]})
        if state.is_world_process_zero:
            print(f"step {state.global_step}: held-out {result['bits_per_byte']:.4f} bits/byte", flush=True)


def _optimizer_arguments(options: TrainOptions) -> dict:
    """The BLT optimizer settings as TrainingArguments: AdamW, betas (0.9, 0.95), eps 1e-8, `weight_decay`."""
    return dict(optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
                weight_decay=options.weight_decay)


def _training_arguments(options: TrainOptions, **extra):
    """TrainingArguments of the entry points (Trainer's default optimizer unless `extra` says otherwise)."""
    from transformers import TrainingArguments

    if options.fsdp and not torch.cuda.is_available():
        raise ValueError(
            "--fsdp goes through accelerate, which enables FSDP only on accelerators; on CPU use DDP "
            "(configs/accelerate_ddp_cpu.yaml). The model itself shards on CPU with torch's fully_shard "
            "(tests/scripts/fsdp2_cpu_smoke.py)."
        )

    return TrainingArguments(
        output_dir=options.output,
        per_device_train_batch_size=options.batch_size,
        gradient_accumulation_steps=options.gradient_accumulation,
        max_steps=options.steps,
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.scheduler,
        train_sampling_strategy=options.sampling,
        warmup_steps=options.warmup_steps,
        logging_steps=options.logging_steps,
        save_steps=options.save_steps,
        save_total_limit=2,
        seed=options.seed,
        data_seed=options.seed,
        bf16=options.bf16,
        activation_checkpointing=options.activation_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
        **(
            dict(fsdp="full_shard auto_wrap", fsdp_config={
                "fsdp_version": 2, "transformer_layer_cls_to_wrap": ["BLTTransformerLayer", "BLTCrossAttention"],
                "reshard_after_forward": True,
            })
            if options.fsdp else {}
        ),
        **extra,
    )


def _resume_point(options: TrainOptions):
    if not options.resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(options.output) if os.path.isdir(options.output) else None


def _finish(trainer, model, eval_rows, options, extra_save=None) -> dict:
    final = Path(options.output) / "final"
    metrics = {
        "steps": trainer.state.global_step, "train_loss_last": None, "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type), "fsdp": bool(trainer.is_fsdp_enabled),
    }
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if losses:
        metrics["train_loss_last"] = losses[-1]
    metrics["train_losses"] = losses
    metrics["loss_history"] = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    metrics["history"] = [  # held-out evaluations, restored with the trainer state on resume
        {"step": e["step"], "bits_per_byte": e["eval_bits_per_byte"]}
        for e in trainer.state.log_history if "eval_bits_per_byte" in e
    ]
    if eval_rows is not None:
        metrics.update({f"eval_{k}": v for k, v in bits_per_byte(model, eval_rows, options.batch_size).items()})
    if trainer.is_world_process_zero():
        trainer.save_model(str(final))
        if extra_save is not None:
            extra_save(final)
        (Path(options.output) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(json.dumps(metrics), flush=True)
    return metrics


def _seeded_model(options: TrainOptions, model_class, read_config, preset_config):
    """What the entry points share: threads and seed set, then the model of --model, --config or --preset."""
    if options.threads:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    if options.model:
        return model_class.from_pretrained(options.model)
    return model_class(read_config(options.config) if options.config else preset_config(options.preset))


def train_entropy_model(options: TrainOptions) -> dict:
    """Train a `BLTPatcher` (byte LM) on packed rows; report held-out bits per byte. Optimizer: Trainer's AdamW
    (betas 0.9 / 0.999) with `weight_decay` on every weight but biases and norms."""
    from transformers import Trainer

    from ..configuration_blt_hf import BLTPatcherConfig
    from ..patcher import BLTPatcher
    from .data import BLTDataCollator
    from .presets import patcher_config

    model = _seeded_model(options, BLTPatcher, BLTPatcherConfig.from_json_file, patcher_config)
    train_rows = _train_rows(options)
    eval_rows = _eval_rows(options)
    callback = HeldOutBitsPerByte(eval_rows, options.eval_steps, options.batch_size)
    arguments = _training_arguments(options, weight_decay=options.weight_decay)
    trainer = Trainer(model=model, args=arguments, train_dataset=train_rows, data_collator=BLTDataCollator(),
                      callbacks=[callback])
    trainer.train(resume_from_checkpoint=_resume_point(options))
    return _finish(trainer, model, eval_rows, options)


def build_blt(options: TrainOptions):
    from ..configuration_blt_hf import BLTConfig
    from ..modeling_blt_hf import BLTForCausalLM
    from .presets import blt_config

    overrides = {}
    if options.patching_mode:
        overrides["patching_mode"] = options.patching_mode
    if options.model:
        return BLTForCausalLM.from_pretrained(options.model, **overrides)
    if options.config:
        config = BLTConfig.from_json_file(options.config)
        for key, value in overrides.items():
            setattr(config, key, value)
    else:
        config = blt_config(options.preset, **overrides)
    patcher_weights = None
    if options.patcher:
        from ..convert.checkpoints import check_tensors
        from ..convert.llama import load_patcher_source

        patcher_config, patcher_weights, settings = load_patcher_source(Path(options.patcher))
        values = config.to_dict()
        values["patcher_config"] = patcher_config
        values["has_patcher"] = True
        for key, value in settings.items():
            if key not in overrides:
                values[key] = value
        values.pop("model_type", None)
        values.pop("transformers_version", None)
        config = BLTConfig(**values)
    torch.manual_seed(options.seed)
    model = BLTForCausalLM(config)
    if patcher_weights is not None:
        check_tensors(patcher_weights, model.model.patcher.state_dict(), f"entropy model from {options.patcher}")
        model.model.patcher.load_state_dict(patcher_weights)
    return model


def blt_trainer(model, options: TrainOptions, train_rows, callbacks=None):
    """The `BLTTrainer` of `blt-hf train`: it builds the per-stack optimizer itself (no `optimizers=`, which
    Trainer refuses under FSDP)."""
    from .data import BLTDataCollator
    from .trainer import BLTTrainer

    return BLTTrainer(model=model, args=_training_arguments(options, **_optimizer_arguments(options)),
                      train_dataset=train_rows, data_collator=BLTDataCollator(), callbacks=callbacks,
                      global_lr_scale=options.global_lr_scale)


def train_blt(options: TrainOptions) -> dict:
    """Train (or fine-tune) a BLT on packed rows with precomputed patches; report held-out bits per byte."""
    from ..tokenization_blt_hf import BLTTokenizer

    if options.threads:
        torch.set_num_threads(options.threads)
    model = build_blt(options)
    train_rows = _train_rows(options, model)
    eval_rows = _eval_rows(options, model)
    callback = HeldOutBitsPerByte(eval_rows, options.eval_steps, options.batch_size)
    trainer = blt_trainer(model, options, train_rows, [callback])
    trainer.train(resume_from_checkpoint=_resume_point(options))
    return _finish(trainer, model, eval_rows, options, lambda folder: BLTTokenizer().save_pretrained(folder))


def train_byte_llama(options: TrainOptions) -> dict:
    """Train the byte-level Llama baseline (`blt_hf.training.baselines`) on the same packed rows, with the BLT optimizer
    settings (AdamW, betas 0.9/0.95, weight decay on matrices, none on norms); report held-out bits per byte."""
    from transformers import LlamaConfig, Trainer

    from .baselines import ByteLlamaForCausalLM, byte_llama_config
    from .data import BLTDataCollator

    model = _seeded_model(options, ByteLlamaForCausalLM, LlamaConfig.from_json_file,
                          lambda preset: byte_llama_config(preset, max_position_embeddings=options.row_length))
    train_rows = _train_rows(options)
    eval_rows = _eval_rows(options)
    callback = HeldOutBitsPerByte(eval_rows, options.eval_steps, options.batch_size)
    # Trainer's own optimizer (so FSDP works): its decay group is the weight matrices, the norms get none
    trainer = Trainer(model=model, args=_training_arguments(options, **_optimizer_arguments(options)),
                      train_dataset=train_rows, data_collator=BLTDataCollator(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=_resume_point(options))
    return _finish(trainer, model, eval_rows, options)


__all__ = ["TrainOptions", "train_blt", "train_byte_llama", "train_entropy_model", "parse_options",
           "HeldOutBitsPerByte", "blt_trainer", "check_data_options", "load_split"]
