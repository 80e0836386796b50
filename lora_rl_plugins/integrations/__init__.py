"""Thin adapters, one per framework: they translate a framework's events into hook calls.

Import the one you use: ``lora_rl_plugins.integrations.trl``, ``.lightning`` or ``.unsloth``.
Nothing is imported here, so the core never pulls in a framework.
"""
