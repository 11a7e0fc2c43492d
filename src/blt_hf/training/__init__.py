"""Training: `BLTTrainer` and per-stack optimizers (`trainer`), packed byte rows and their collator (`data`), the
`blt-hf train*` entry points (`entry_points`), model presets (`presets`) and the byte-level Llama baseline
(`baselines`)."""


def __getattr__(name: str):
    if name in ("BLTTrainer", "create_optimizer", "freeze"):  # imported on first use: they load transformers.Trainer
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
