"""The adapter: PEFT introspection (``adapters``), the shapes a config would adapt (``shapes``),
adapter capacity in bits (``capacity``) and LoRA parameters under FSDP / DeepSpeed ZeRO-3 (``sharding``:
true sizes, full matrices gathered LoRA-only)."""
