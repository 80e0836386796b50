"""Every benchmark but the rank sweep, one command: ``python -m benchmarks`` (about 25 minutes on 2 CPU cores;
``python -m benchmarks.rank_sweep`` runs alone); results in benchmarks/results/, collected in
benchmarks/results/summary.md. ``--summary-only`` rebuilds the summary from the results already there."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = ("throughput", "kl_memory", "overhead", "kl_free", "informative_sampling")


def main() -> None:
    import json

    summary_only = "--summary-only" in sys.argv[1:]
    sections = []
    for name in BENCHMARKS:
        if not summary_only:
            print(f"== benchmarks.{name}", flush=True)
            sys.argv = [f"benchmarks.{name}"]
            # imported, not run as __main__: a benchmark's worker functions must pickle by their module's name
            importlib.import_module(f"benchmarks.{name}").main()
        data = json.loads(Path(f"benchmarks/results/{name}.json").read_text())
        sections.append(f"## {name}\n\n{data['markdown']}")
    Path("benchmarks/results/summary.md").write_text("# Benchmark results\n\n" + "\n".join(sections))
    print("wrote benchmarks/results/summary.md")


if __name__ == "__main__":
    main()
