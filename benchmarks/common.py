"""Shared pieces of the benchmarks: GRPO runs in fresh processes, timed per step, peak memory; the stamp
every result carries (the commit it measured, the date, the load average)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The stamp's ``status`` of a result measured before the code it measures last changed, kept until it is
#: re-run: ``tests/test_benchmark_stamps.py`` lets it pass and the README's table says so.
STALE = "stale, awaiting re-run"

#: "tiny": the demo's model (~80k parameters); "medium": tens of millions of parameters. "smollm2" (in ``_run``):
#: SmolLM2-135M-Instruct, pretrained, on the ``lora-rl demo --model smollm2`` task with that demo's GRPO settings.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128},
    "medium": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4, "intermediate_size": 1536},
}


def cpu() -> dict[str, str]:
    """The processor as far as it decides torch's CPU results: its model name (``/proc/cpuinfo``, else the
    platform's), ``capability``, the instruction set torch's kernels dispatch to (``AVX2``, ``AVX512``, ...;
    ``ATEN_CPU_CAPABILITY`` lowers it), and torch's version. Sampled runs amplify the rounding differences
    between instruction sets, so a training run's numbers are reproducible only where these agree."""
    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}


def machine() -> str:
    import torch

    processor = cpu()
    return (
        f"{processor['model']} ({platform.machine()}, {processor['capability']}), {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"
    )


def _timed(function: Any, total: list[float], sign: int = 1) -> Any:
    """``function``, adding (``sign=-1``: subtracting) the seconds spent in it to ``total[0]``; its signature
    kept (the callback checks the trainer methods it wraps)."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            total[0] += sign * (time.perf_counter() - started)

    return timed


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    """One GRPO run described by ``spec`` (executed in a fresh process)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from lora_rl_plugins.demo.model import build_tiny_model, build_tokenizer
    from lora_rl_plugins.demo.task import CodebookTask
    from lora_rl_plugins.integrations.trl import LoraRLCallback

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    workdir = tempfile.mkdtemp(prefix="lora-rl-bench-")
    grpo: dict[str, Any] = {}
    callback_options: dict[str, Any] = {}
    if spec["size"] == "smollm2":  # the real model of `lora-rl demo --model smollm2`, with its task and settings
        from lora_rl_plugins.demo.smollm2 import smollm2_setup

        setup = smollm2_setup(0, progress=False)
        model, tokenizer, task = setup.model, setup.tokenizer, setup.task
        grpo = {key: value for key, value in setup.grpo.items() if key not in ("learning_rate", "bf16")}
        callback_options = dict(setup.callback_options)
    else:
        tokenizer = build_tokenizer()
        task = CodebookTask()
        model = build_tiny_model(**MODEL_SIZES[spec["size"]])
    if not spec["peft"] and spec["beta"] > 0:  # TRL loads the full reference copy from disk
        model.save_pretrained(os.path.join(workdir, "model"))
        model = os.path.join(workdir, "model")
    settings: dict[str, Any] = {
        "per_device_train_batch_size": spec.get("batch", 16),
        "num_generations": spec.get("generations", 8),
        "max_completion_length": spec.get("completion_length", 8),
        **grpo,
    }
    args = GRPOConfig(
        output_dir=workdir,
        **settings,
        learning_rate=1e-3,
        beta=spec["beta"],
        max_steps=spec["steps"],
        logging_steps=spec.get("logging_steps", 1),
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=task.reward,
        args=args,
        train_dataset=task.dataset(spec["steps"] * 4 + 64),
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear") if spec["peft"] else None,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    callback_seconds = [0.0]
    timings: list[dict[str, float]] = []  # the host's plugins/<name>/ms_per_step at each collection
    if spec.get("callback"):
        # Time everything the callback does per step, the integration's own work included: its trainer
        # hooks and what its wrappers around _calculate_rewards / _generate_and_score_completions add (the
        # time inside the wrapper less the time inside the trainer's own method it wraps).
        wrapped = ("_calculate_rewards", "_generate_and_score_completions")
        for name in wrapped:
            setattr(trainer, name, _timed(getattr(trainer, name), callback_seconds, sign=-1))
        options = {**callback_options, **spec.get("callback_options", {})}
        callback = LoraRLCallback(trainer, load_entry_points=False, **options)
        for name in wrapped:
            setattr(trainer, name, _timed(getattr(trainer, name), callback_seconds))
        for name in ("on_step_end", "on_log"):
            setattr(callback, name, _timed(getattr(callback, name), callback_seconds))
        # The per-plugin timings are detail metrics (run log, not TRL's log history): read them where the host
        # hands them out.
        collect = callback.host.collect_metrics

        def collect_metrics() -> dict[str, float]:
            metrics = collect()
            timings.append({k: v for k, v in metrics.items() if k.startswith("plugins/")})
            return metrics

        callback.host.collect_metrics = collect_metrics
        trainer.add_callback(callback)

    stamps: list[float] = []
    inside: list[float] = []  # the callback's accumulated seconds at each step end

    class Clock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())
            inside.append(callback_seconds[0])

    trainer.add_callback(Clock())
    started = time.perf_counter()
    trainer.train()
    warm = spec.get("warmup_steps", 2)
    intervals = [b - a for a, b in zip(stamps[warm - 1 : -1], stamps[warm:], strict=True)] if warm else []
    # each plugin's own time per step, averaged over every collection after the warm-up (one per logged step)
    logged = timings[warm:]
    names = {key for entry in logged for key in entry}
    plugin_ms = {name: statistics.fmean(entry.get(name, 0.0) for entry in logged) for name in sorted(names)}
    return {
        "spec": spec,
        "step_seconds": statistics.median(intervals),
        "mean_step_seconds": statistics.fmean(intervals),
        "total_seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "plugin_ms": plugin_ms,
        "callback_ms_per_step": 1000 * callback_seconds[0] / spec["steps"],
        # after the warm-up steps, as step_seconds: the one-time work of the first steps (the KL measurement's
        # check of the logits source at the first batch) left out, as a long run amortises it
        "callback_ms_per_step_steady": 1000 * (inside[-1] - inside[warm - 1]) / (len(inside) - warm)
        if warm and len(inside) > warm
        else 1000 * callback_seconds[0] / spec["steps"],
    }


def run_isolated(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec`` in a fresh process, so peak memory belongs to that run alone."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_run, (spec,))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def stamp(name: str, measures: Sequence[str]) -> dict[str, Any]:
    """What a result was measured on, saved beside it as ``"stamp"``.

    ``measures``: git pathspecs of the code the benchmark measures (``tests/test_benchmark_stamps.py``
    flags the result once any of them changes after ``commit``). ``commit`` is ``HEAD`` (None outside a
    git checkout); ``uncommitted`` lists measured files that differed from it, so the commit alone does
    not describe what ran. ``load_average`` is the 1, 5 and 15 minute load when the result was written.
    """
    changed = _git("status", "--porcelain", "--", *measures)
    return {
        "status": "measured",
        "command": f"python -m benchmarks.{name}",
        "commit": (_git("rev-parse", "HEAD") or "").strip() or None,
        "uncommitted": [line[3:] for line in changed.splitlines()] if changed else [],
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "measures": list(measures),
    }


def save_result(out: str | Path, name: str, measures: Sequence[str], result: dict[str, Any]) -> None:
    """Write ``result`` as JSON to ``out`` with its ``stamp`` (see ``stamp``), and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"stamp": stamp(name, measures), **result}
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if payload["stamp"]["uncommitted"]:
        print(f"note: measured with uncommitted changes to {payload['stamp']['uncommitted']}: commit and re-run")
    print(f"wrote {path}")


def staleness(stamp: dict[str, Any], root: Path = ROOT) -> tuple[str, str]:
    """Whether a result still describes the code it measures: ``(verdict, reason)``.

    Verdicts: ``"current"`` (no measured path changed after the stamped commit), ``"stale"`` (one did, or the
    result was measured with uncommitted changes to them), ``"marked stale"`` (``status`` is ``STALE``: kept
    until re-run, and the README's table says so), ``"unknown"`` (no git, a shallow clone, or the commit is not
    in this history: the reason says which). The last change is ``git log -1 -- <measures>``; it must be an
    ancestor of (or equal to) the stamped commit (``git merge-base --is-ancestor``).

    A result too long to re-run whole may carry ``reproduced``: ``{"commit", "command", "matched"}``, a part of it
    re-run at a later commit that gave the same numbers (``matched`` says which); the code is then dated from that
    commit, and the reason says the result was measured at one commit and reproduced at the other.
    """
    if stamp.get("status") == STALE:
        return "marked stale", f"{STALE}: {stamp.get('note', '')} (re-run: {stamp['command']})"
    if stamp.get("uncommitted"):
        return (
            "stale",
            f"measured with uncommitted changes to {stamp['uncommitted']}: commit, then `{stamp['command']}`",
        )

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60, check=False)

    try:
        inside = git("rev-parse", "--is-shallow-repository")
    except (OSError, subprocess.SubprocessError):
        return "unknown", "git is not available"
    if inside.returncode != 0:
        return "unknown", f"{root} is not a git checkout"
    if inside.stdout.strip() == "true":
        return "unknown", "a shallow clone: the history that dates the measured code is missing (git fetch --unshallow)"
    commit = stamp.get("commit")
    reproduced = stamp.get("reproduced") or {}
    if reproduced.get("commit"):
        if not reproduced.get("matched") or not reproduced.get("command"):
            return "stale", "its stamp's `reproduced` must say what was re-run (`command`) and what matched (`matched`)"
        commit = reproduced["commit"]
    if not commit or git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return "unknown", f"the stamped commit {commit} is not in this history"
    last = git("log", "-1", "--format=%H", "--", *stamp["measures"]).stdout.strip()
    if not last or git("merge-base", "--is-ancestor", last, commit).returncode == 0:
        how = (
            f"measured at {str(stamp.get('commit'))[:10]}, reproduced at {commit[:10]} ({reproduced['matched']})"
            if reproduced.get("commit")
            else f"measured at {commit[:10]}"
        )
        return "current", f"{how}; the measured code last changed in {last[:10] or 'no commit'}"
    return "stale", (
        f"measured at {commit[:10]}, but {' '.join(stamp['measures'])} changed in {last[:10]} after it: "
        f"re-run `{stamp['command']}`, or set its stamp's status to {STALE!r} until someone does"
    )
