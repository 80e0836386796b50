"""What the run learns: information absorbed on a probe set, a per-prompt ledger, signal exhaustion
and informative prompt sampling (docs/theory.md §1, §8)."""
