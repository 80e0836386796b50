"""Policy drift: the exact KL between the policy and its reference, its bounds, KL-free checks, the monitor.

``measure`` (chunked exact KL and teacher-forced token log-probabilities, torch imported inside),
``engine`` (its forward passes under FSDP and DeepSpeed ZeRO-3: the same collective calls on every
process), ``reference`` (the reference without a copy), ``bounds`` (rank-dependent bounds and the
Hoeffding certificate), ``kl_free`` (what contradicts KL-free training) and ``monitor`` (the built-in
plugin).
"""

from .kl_free import KLFreeError, check_kl_free
from .monitor import KL_METRICS, KLBudgetWarning, KLMonitorConfig, KLMonitorPlugin

__all__ = ["KL_METRICS", "KLBudgetWarning", "KLFreeError", "KLMonitorConfig", "KLMonitorPlugin", "check_kl_free"]
