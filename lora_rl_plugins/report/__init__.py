"""``lora-rl report RUN_DIR``: a self-contained HTML page and PNG figures of a run's metrics."""

from .page import write_report
from .runlog import RunLog, load_run

__all__ = ["RunLog", "load_run", "write_report"]
