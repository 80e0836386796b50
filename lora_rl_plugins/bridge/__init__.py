"""What the integrations share: the options they accept (``options``), the built-in plugin set
(``builtin``), the translation of trainer outputs into events (``translate``) and the Lightning
``training_step`` contract (``grpo_output``). Framework-free."""
