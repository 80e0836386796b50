"""The README shows what the program prints: every output block and every figure quoted in prose is made by
``scripts/readme_blocks.py`` from its command, and these tests fail when the README and the program disagree.

- Fast (no run): the benchmark tables against ``benchmarks/results/*.json``, the options table against the
  config classes, every ``<!-- value: ... -->`` figure in prose against the block it is read from; a block or a
  figure edited by hand fails.
- Slow: the full 300-step ``lora-rl demo`` (20-60 s on 2 CPU cores), run once per test session and shared by
  the tests below, against the README's demo block, its warning block and the progress-bar figure.
  Tolerance: torch's CPU kernels round differently on another instruction set (AVX2, AVX512, ...) and 300
  sampled steps amplify it, so the numbers are compared exactly (durations and the temporary directory
  masked) only where torch's instruction set and version equal the block's marker (``cpu AVX512, torch
  2.13.0+cpu``); elsewhere the structure is compared (the summary's rows, each by its label) and the
  numbers test is skipped, naming both machines. It never passes silently on another machine.
- On demand: the SmolLM2 block (minutes, a prepared model): ``LORA_RL_README_SMOLLM2=1``, same tolerance.

When a test here fails because the program changed, regenerate: ``python scripts/readme_blocks.py``
(``--only demo`` for the demo alone) and commit the README.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _load_script() -> Any:
    if "readme_blocks" in sys.modules:
        return sys.modules["readme_blocks"]
    spec = importlib.util.spec_from_file_location("readme_blocks", ROOT / "scripts" / "readme_blocks.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["readme_blocks"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


blocks = _load_script()


def differences(findings: list[Any]) -> str:
    return "\n\n".join(f"{f.name}: {f.detail}" for f in findings if f.kind == "differs")


# --- fast: no run ------------------------------------------------------------------------------------------


def test_tables_and_figures_agree_with_their_sources() -> None:
    findings = blocks.check(README, blocks.selected(None, no_run=True))
    assert not differences(findings), differences(findings) + "\n\nregenerate: python scripts/readme_blocks.py --no-run"


def test_every_figure_marker_is_defined_and_every_block_is_marked() -> None:
    readme = blocks.Readme.read(README)
    defined = {v.name for v in blocks.VALUES}
    assert set(readme.values()) <= defined
    expected = {"demo", "demo-warnings", "smollm2", "rank", "options"} | {f"bench-{n}" for n in blocks.BENCHMARKS}
    assert set(readme.blocks) == expected
    for name in ("demo", "demo-warnings", "smollm2"):  # run blocks name the machine they came from
        assert (readme.blocks[name][1] or "").startswith("cpu "), name


def test_markers_stay_invisible_when_rendered() -> None:
    """A marker inside a code span would show, and one at the start of a line would end its paragraph."""
    assert not re.search(r"^<!-- value", README, flags=re.M)
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(README)
    assert "&lt;!--" not in html and "<!-- /value -->" in html


def test_rank_block_is_what_lora_rl_rank_prints() -> None:
    """A few seconds (PEFT on the meta device): in the fast subset, because the rank advice is still changing."""
    pytest.importorskip("peft")
    findings = blocks.check(README, [blocks.SOURCES["rank"]])
    assert not differences(findings), (
        differences(findings) + "\n\nregenerate: python scripts/readme_blocks.py --only rank"
    )


def _edited_throughput_row() -> tuple[str, str]:
    """The throughput table's first row as the README has it, and the same row with one figure changed by hand."""
    block = README.split("<!-- output: bench-throughput -->", 1)[1].split("<!-- /output -->", 1)[0]
    row = next(line for line in block.splitlines() if line.startswith("| 8 |"))
    cells = row.split(" | ")
    cells[1] += "0"  # groups/s, ten times what was measured
    return row, " | ".join(cells)


def test_a_table_edited_by_hand_fails() -> None:
    row, changed = _edited_throughput_row()
    edited = README.replace(row, changed, 1)
    assert edited != README
    findings = blocks.check(edited, [blocks.SOURCES["benchmarks"]])
    assert "bench-throughput" in differences(findings)


def test_a_figure_edited_by_hand_fails() -> None:
    readme = blocks.Readme.read(README)
    signal = readme.values()["demo.signal"][0]
    edited = README.replace(
        f"<!-- value: demo.signal -->{signal}<!-- /value -->", "<!-- value: demo.signal -->1<!-- /value -->"
    )
    findings = blocks.check_values(blocks.Readme.read(edited))
    assert [f.name for f in findings] == ["demo.signal"]


def test_a_figure_whose_pattern_no_longer_matches_is_an_error_naming_it() -> None:
    readme = blocks.Readme.read(README)
    demo_body, _key = readme.blocks["demo"]
    broken = blocks.Readme.read(README.replace(demo_body, "```\nsomething else entirely\n```\n", 1))
    with pytest.raises(blocks.ReadmeError, match=r"demo\.\w+ \(read from block 'demo'\): the pattern"):
        blocks.check_values(broken)


def test_comparison_masks_durations_paths_and_compares_structure_across_machines() -> None:
    old = "```\nlora-rl demo: 300 steps in 21 s\n\n  reward   0.13 -> 0.87   ▁▂▃\n  signal   682 bits\n```\n"
    slower = old.replace("21 s", "3 min 2 s")
    assert blocks.compare("demo", old, "cpu AVX512, torch 2", slower, "cpu AVX512, torch 2") is None
    other_numbers = old.replace("0.87", "0.79").replace("682", "621").replace("▁▂▃", "▁▁█")
    found = blocks.compare("demo", old, "cpu AVX512, torch 2", other_numbers, "cpu AVX512, torch 2")
    assert found.kind == "differs" and "+  reward   0.13 -> 0.79" in found.detail
    found = blocks.compare("demo", old, "cpu AVX512, torch 2", other_numbers, "cpu AVX2, torch 2")
    assert found.kind == "numbers not compared" and "AVX2" in found.detail
    missing_row = other_numbers.replace("  signal   621 bits\n", "")
    found = blocks.compare("demo", old, "cpu AVX512, torch 2", missing_row, "cpu AVX2, torch 2")
    assert found.kind == "differs" and "-signal" in found.detail


def test_a_new_summary_format_is_written_whole_and_names_the_figures_it_loses() -> None:
    """Blocks are captured whole: a new format is written as printed; a figure read from a row that is gone
    keeps its text and is reported by name (exit 2 from the script)."""
    readme = blocks.Readme.read(README)
    body, key = readme.blocks["demo"]
    reformatted = body.replace("    signal        ", "    signal (est.) ")
    reformatted = reformatted.replace("  absorbed      ", "  learned       ")
    new, errors = blocks.write(README, {"demo": (reformatted, key, "")})
    assert blocks.Readme.read(new).blocks["demo"][0] == reformatted
    assert sorted(e.split(" ")[0] for e in errors) == ["demo.absorbed", "demo.signal"]


def test_check_exits_1_with_a_diff_and_write_repairs_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "README.md"
    row, changed = _edited_throughput_row()
    copy.write_text(README.replace(row, changed, 1))
    assert blocks.main(["--check", "--no-run", "--readme", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "bench-throughput: differs" in out and f"-{changed}" in out
    assert blocks.main(["--no-run", "--readme", str(copy)]) == 0
    assert copy.read_text() == README
    assert blocks.main(["--check", "--only", "nonsense", "--readme", str(copy)]) == 2


# --- slow: the 300-step demo, once per session ---------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_run() -> dict[str, tuple[str, str | None, str]]:
    """The full ``lora-rl demo`` as a user runs it, once for every test that needs it."""
    pytest.importorskip("trl")
    return blocks.SOURCES["demo"].blocks()


def _machine_note(key: str) -> str:
    readme_key = blocks.Readme.read(README).blocks["demo"][1]
    return f"the README's demo block is from {readme_key}; this machine is {key}"


@pytest.mark.slow
def test_demo_prints_the_rows_the_readme_shows(demo_run) -> None:
    """Every machine: the same rows with the same labels (numbers masked)."""
    readme = blocks.Readme.read(README)
    for name in ("demo", "demo-warnings"):
        body, _key, _note = demo_run[name]
        assert blocks.structure(readme.blocks[name][0]) == blocks.structure(body), (
            f"{name}: the program prints other rows than the README shows; regenerate: "
            "python scripts/readme_blocks.py --only demo"
        )


@pytest.mark.slow
def test_demo_prints_the_readme_numbers_on_the_same_instruction_set(demo_run) -> None:
    """Exact (durations and the temporary directory masked) where torch's instruction set and version match
    the block's; skipped elsewhere, saying so."""
    readme = blocks.Readme.read(README)
    key = demo_run["demo"][1]
    if readme.blocks["demo"][1] != key:
        pytest.skip(f"numbers not compared, rows only: {_machine_note(key)} (other kernels, other rounding)")
    failures = [
        f
        for name in ("demo", "demo-warnings")
        if (f := blocks.compare(name, *readme.blocks[name], demo_run[name][0], demo_run[name][1])) is not None
    ]
    failures += blocks.check_run_values(readme, key)
    assert not failures, (
        "\n\n".join(f"{f.name}: {f.detail}" for f in failures)
        + "\n\nregenerate: python scripts/readme_blocks.py --only demo"
    )


# --- on demand: SmolLM2 --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LORA_RL_README_SMOLLM2") != "1",
    reason="the SmolLM2 block takes minutes: checked on demand, LORA_RL_README_SMOLLM2=1 (README 'A real model')",
)
def test_smollm2_block() -> None:
    pytest.importorskip("trl")
    findings = blocks.check(README, [blocks.SOURCES["smollm2"]])
    skipped = [f.detail for f in findings if f.kind == "numbers not compared"]
    assert not differences(findings), differences(findings)
    if skipped:
        pytest.skip("; ".join(skipped))
