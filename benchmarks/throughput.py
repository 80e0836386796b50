"""Bits-accounting throughput: groups accounted per second by the bandwidth plugin, alone.

    python -m benchmarks.throughput

Binary rewards with completions and an answer extractor (the most work per group), through the
plugin host exactly as an integration calls it.
"""

from __future__ import annotations

import argparse
import random
import time

from lora_rl_plugins import PluginHost, RolloutsScored, StepEnded, make_plugin_manager
from lora_rl_plugins.bandwidth import BandwidthConfig, BandwidthPlugin

from .common import machine, markdown_table, save_result

#: The code this benchmark measures (git pathspecs): a change to it makes the result stale.
MEASURES = ("lora_rl_plugins/bandwidth", "lora_rl_plugins/plugin", "benchmarks/common.py", "benchmarks/throughput.py")


def groups_per_second(group_size: int, groups_per_batch: int = 64, batches: int = 60) -> float:
    plugin = BandwidthPlugin(BandwidthConfig(answer_extractor=lambda text: text[:1], answer_space_size=10))
    host = PluginHost(make_plugin_manager({"bandwidth": plugin}, load_entry_points=False))
    rng = random.Random(0)
    n = group_size * groups_per_batch
    data = []
    for _ in range(batches):
        rewards = [[float(rng.random() < 0.3)] for _ in range(n)]
        completions = [f"{rng.randrange(10)}{rng.randrange(10)}" for _ in range(n)]
        data.append((rewards, completions))
    started = time.perf_counter()
    for step, (rewards, completions) in enumerate(data, start=1):
        host.on_rollouts_scored(RolloutsScored(step, rewards, ["r"], [1.0], group_size, completions))
        host.on_step_end(StepEnded(step))
        host.collect_metrics()
    return batches * groups_per_batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    args = parser.parse_args()
    rates = {k: groups_per_second(k) for k in (8, 16, 64)}
    rows = [[k, f"{rate:,.0f}", f"{rate * k:,.0f}", f"{1000 * 64 / rate:.2f}"] for k, rate in rates.items()]
    report = (
        f"Machine: {machine()}.\n\n"
        + markdown_table(["group size K", "groups/s", "rollouts/s", "ms for a 64-group batch"], rows)
        + "\n"
    )
    print(report)
    save_result(
        args.out, "throughput", MEASURES, {"machine": machine(), "groups_per_second": rates, "markdown": report}
    )


if __name__ == "__main__":
    main()
