"""The adapter: PEFT introspection (``adapters``), the shapes a config would adapt (``shapes``) and
adapter capacity in bits (``capacity``)."""
