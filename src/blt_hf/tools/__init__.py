"""Command line, reports, the demo and Hub upload (`blt-hf`, `make demo`); nothing here is needed to run a model."""
