"""The report page: one self-contained HTML file (figures embedded) plus the figures as PNG files."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..planning.rank import advise_rank
from ..plugin.metrics import format_percent
from .events import run_events
from .figures import build_figures, capacity_ranks, describe_figures
from .runlog import RunLog, builtin_metric_infos, load_run

__all__ = ["events_section", "learning_section", "rank_advice", "write_report"]


def events_section(run: RunLog) -> str:
    """HTML: the run's events in words (``run_events``: the list ``lora-rl demo`` prints), first on the page."""
    events = run_events(run)
    if not events:
        return (
            "<div class='events'><strong>What happened.</strong><p>No event: no budget crossed, no "
            "<code>&lt;eos&gt;</code> drift, no prompts exhausted, no filter action.</p></div>"
        )
    items = "".join(f"<li>{html.escape(event.text)}</li>" for event in events)
    return f"<div class='events'><strong>What happened.</strong><ul>{items}</ul></div>"


def rank_advice(run: RunLog) -> list[str]:
    """The rank advice with its reasoning, as sentences."""
    bits, capacity = run.last("bandwidth/bits_total"), run.last("bandwidth/capacity_bits")
    if bits is None:
        return ["No bandwidth metrics were logged."]
    bound, steps = run.last("bandwidth/bound_total") or 0.0, run.last_step
    lines = [
        f"The reward stream carried an estimated {bits:,.0f} bits of signal (upper bound {bound:,.0f}) "
        f"over {steps} steps: a rate summed over steps (a lesson repeated is counted again), not task information."
    ]
    if capacity is None:
        return [*lines, "The model carries no LoRA adapter, so there is no adapter capacity to compare with."]
    rank = int(run.last("bandwidth/adapter_rank") or 0)
    projected = run.last("bandwidth/projected_bits") or bits
    sufficient = int(run.last("bandwidth/rank_sufficient") or 1)
    lines.append(
        f"At rank {rank} the adapter holds {capacity:,.0f} bits; the run used {format_percent(bits / capacity)} of it."
    )
    lines.append(
        f"Projected over the planned steps: {projected:,.0f} bits. The smallest rank whose capacity holds "
        f"that is r = {sufficient} (capacity {capacity * sufficient / max(rank, 1):,.0f} bits)."
    )
    # What limits the run (the same advice as the demo's summary): the signal, the capacity, or the rule.
    rewards = run.values("reward")
    window = max(1, len(rewards) // 10)
    advice = advise_rank(
        rank=max(rank, 1),
        capacity_bits=capacity,
        signal_bits=projected,
        rank_sufficient=sufficient,
        reward_first=sum(rewards[:window]) / window if rewards else None,
        reward_last=sum(rewards[-window:]) / window if rewards else None,
        absorbed_bits=run.last("learning/absorbed_bits"),
        steps=run.last_step or None,
    )
    lines += [line[:1].upper() + line[1:] + "." for line in advice.lines]
    zero = run.values("bandwidth/zero_info_frac")
    if zero:
        tail = zero[-max(1, len(zero) // 10) :]
        lines.append(
            f"In the last tenth of the run {sum(tail) / len(tail):.0%} of groups had all-equal rewards and "
            "delivered no signal."
        )
    return lines


def learning_section(run: RunLog) -> str:
    """HTML: the chain (signal ≥ absorbed ≤ what there was to learn) and the prompts that taught nothing, from
    the ledger saved in the run's ``trainer_state.json`` (TRL: the file read, or the newest beside the run
    log); empty when the run logged neither."""
    import json

    parts = []
    absorbed, answer = run.last("learning/absorbed_bits"), run.last("learning/answer_bits")
    if absorbed is not None and answer is not None:
        signal, bound = run.last("bandwidth/bits_total") or 0.0, run.last("bandwidth/bound_total") or 0.0
        parts.append(
            f"<p>Bound {bound:,.0f} bits ≥ signal {signal:,.0f} bits (summed over steps) ≥ absorbed "
            f"{absorbed:,.1f} bits (exact, on the probe set) ≤ {answer:,.1f} bits to learn on the probes.</p>"
        )
    silent: list[tuple[str, int]] = []
    if (state := _trainer_state(run)) is not None:
        saved = json.loads(state.read_text()).get("stateful_callbacks", {}).get("LoraRLCheckpointState")
        saved = saved[-1] if isinstance(saved, list) else saved
        learning = ((saved or {}).get("attributes", {}).get("plugin_state") or {}).get("learning") or {}
        entries = learning.get("ledger", {}).get("entries", [])
        for key, entry in entries:
            if entry["signal_bits"] == 0 and entry["visits"]:
                silent.append((entry["text"] or key, int(entry["visits"])))
        if entries and not silent:
            parts.append(
                f"<p>Every one of the {len(entries)} prompts in the ledger delivered a signal at least once.</p>"
            )
    if silent:
        silent.sort(key=lambda item: -item[1])
        rows = "".join(
            f"<tr><td><code>{html.escape(text)}</code></td><td>{visits}</td></tr>" for text, visits in silent[:20]
        )
        parts.append(
            f"<p>{len(silent)} prompts taught nothing (every visit's group had all-zero advantages: equal rewards "
            "under the default settings); the most visited:</p>"
            f"<table><tr><th>prompt</th><th>visits</th></tr>{rows}</table>"
        )
    return ("<h2>What the run learned</h2>" + "".join(parts)) if parts else ""


def _trainer_state(run: RunLog) -> Path | None:
    """The TRL ``trainer_state.json`` that holds the run's plugin state: the file the metrics came from, else
    the newest one in the run log's directory or its checkpoints."""
    if run.source.name == "trainer_state.json":
        return run.source
    directory = run.source if run.source.is_dir() else run.source.parent
    states = list(directory.glob("trainer_state.json")) + list(directory.glob("checkpoint-*/trainer_state.json"))
    return max(states, key=lambda p: p.stat().st_mtime_ns) if states else None


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


def _summary_rows(run: RunLog) -> str:
    # what the run log describes (every plugin's metrics, a third party's included), in the built-ins' order
    # first; a framework log carries no descriptions, so the built-in tables describe its metrics
    infos = {**builtin_metric_infos(), **run.infos}
    rows = []
    for info in infos.values():
        value = run.last(info.name)
        if value is None:
            continue
        rows.append(
            f"<tr><td><code>{html.escape(info.name)}</code></td><td>{value:,.6g}</td>"
            f"<td class='{info.kind}'>{info.kind}</td><td>{html.escape(info.definition)}</td></tr>"
        )
    return "\n".join(rows)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1000px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} .meta{color:#666;font-size:.9em}
.advice{background:#f3f7ff;border-left:4px solid #3b6fd8;padding:.6em 1em;margin:1em 0}
.events{background:#fff7ed;border-left:4px solid #b35900;padding:.6em 1em;margin:1em 0}
.grid{display:grid;grid-template-columns:1fr;gap:1.5em} figure{margin:0}
figure img{max-width:100%;border:1px solid #ddd} figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;font-size:.9em;width:100%} td,th{border-bottom:1px solid #eee;padding:3px 6px;
text-align:left;vertical-align:top} .exact{color:#1a7f37} .bound{color:#b35900} .estimate{color:#3b6fd8}
.setting{color:#666}
"""


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``report.html`` and one PNG per figure into ``out_dir`` (default RUN_DIR/lora_rl_report)."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir) / "lora_rl_report"
    out.mkdir(parents=True, exist_ok=True)
    blocks = []
    captions = describe_figures(run)
    for name, figure in build_figures(run).items():
        data = _png(figure)
        (out / f"{name}.png").write_bytes(data)
        encoded = base64.b64encode(data).decode()
        blocks.append(
            f"<figure id='{name}'><img alt='{name}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(captions[name])}</figcaption></figure>"
        )
    advice = "".join(f"<p>{html.escape(line)}</p>" for line in rank_advice(run))
    last_step = run.last_step
    ranks = ", ".join(f"r={r}: {c:,.0f} bits" for r, c in capacity_ranks(run).items())
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lora-rl report</title><style>{STYLE}</style></head>
<body>
<h1>lora-rl report</h1>
<p class="meta">read from {html.escape(str(run.source))} ({html.escape(run.kind)}); last step {last_step}</p>
{events_section(run)}
<div class="advice"><strong>Rank advice.</strong>{advice}<p class="meta">{html.escape(ranks)}</p></div>
<div class="grid">
{chr(10).join(blocks)}
</div>
{learning_section(run)}
<h2>Latest values</h2>
<p class="meta">Every number says whether it is exact, a bound or an estimate.</p>
<table><tr><th>metric</th><th>value</th><th>kind</th><th>definition</th></tr>
{_summary_rows(run)}
</table>
</body></html>
"""
    target = out / "report.html"
    target.write_text(page)
    return target
