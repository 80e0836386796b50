"""The embedded default for ``lora-rl demo``, the examples and the tests: a tiny model built
locally (no download) and the secret-codebook task of docs/theory.md §7."""
