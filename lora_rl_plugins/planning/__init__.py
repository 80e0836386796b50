"""Planning before training: the smallest LoRA rank that holds the bits a run will deliver (``rank``).

It sits above bandwidth (bits per episode) and serving (legal vLLM ``max_lora_rank`` values).
"""

from .rank import RankChoice, RunPlan, select_rank

__all__ = ["RankChoice", "RunPlan", "select_rank"]
