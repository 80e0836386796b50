"""Every benchmark result records what it measured (``benchmarks/common.py``: ``stamp``), and none is older than
the code it measures, unless the team marked it "stale, awaiting re-run" (then the README's table says so).

A result is older than its code when a path it measures (its stamp's ``measures``, git pathspecs) changed in
a commit that is not an ancestor of the stamped one: ``git log -1 --format=%H -- <measures>`` and
``git merge-base --is-ancestor``. Without git, in a shallow clone, or when the stamped commit is not in this
history, the check is skipped with the reason. To let a stale result pass until it is re-run, set its stamp's
``status`` to ``benchmarks.common.STALE`` and give a ``note``; ``python scripts/readme_blocks.py`` then shows
it as stale under its table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.common import STALE, staleness, stamp

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
README = (ROOT / "README.md").read_text()


def test_there_are_results() -> None:
    assert {p.stem for p in RESULTS} >= {"overhead", "throughput", "kl_memory", "kl_free", "informative_sampling"}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_result_is_stamped(path: Path) -> None:
    found = json.loads(path.read_text()).get("stamp")
    assert found, f"{path.name} has no stamp: re-run it (`python -m benchmarks.{path.stem}`)"
    assert found["status"] in ("measured", STALE)
    assert found["command"] == f"python -m benchmarks.{path.stem}"
    assert found["measures"] and found["machine"] and found["date"]
    if found["status"] == "measured":
        assert found["commit"] and len(found["load_average"]) == 3


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_result_is_not_older_than_the_code_it_measures(path: Path) -> None:
    verdict, reason = staleness(json.loads(path.read_text())["stamp"])
    if verdict == "marked stale":
        # allowed, but never silently: the README's table carries the mark
        block = README.split(f"<!-- output: bench-{path.stem} -->", 1)[1].split("<!-- /output -->", 1)[0]
        assert "Stale, awaiting re-run" in block, f"README's table of {path.stem} does not say it is stale"
        pytest.skip(f"{path.stem}: {reason}")
    if verdict == "unknown":
        pytest.skip(f"{path.stem}: staleness not checked: {reason}")
    assert verdict == "current", f"{path.name}: {reason}"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_staleness_follows_the_history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a repository built here: current after the measured commit, stale once the measured code changes,
    current again when only unmeasured files change; a dirty tree and an unknown commit are reported."""
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    (repo / "other.txt").write_text("a\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "code")
    measured = {"status": "measured", "command": "python -m benchmarks.x", "measures": ["pkg"], "uncommitted": []}
    measured["commit"] = _git(repo, "rev-parse", "HEAD")
    assert staleness(measured, repo)[0] == "current"

    (repo / "other.txt").write_text("b\n")  # not measured: still current
    _git(repo, "commit", "-qam", "other")
    assert staleness(measured, repo)[0] == "current"

    (repo / "pkg" / "code.py").write_text("x = 2\n")
    _git(repo, "commit", "-qam", "change the measured code")
    verdict, reason = staleness(measured, repo)
    assert verdict == "stale" and "python -m benchmarks.x" in reason and STALE in reason

    # a part re-run at the later commit that matched dates the result from there, and says so
    later = _git(repo, "rev-parse", "HEAD")
    reproduced = {"commit": later, "command": "python -m benchmarks.x --part", "matched": "every number"}
    verdict, reason = staleness({**measured, "reproduced": reproduced}, repo)
    assert verdict == "current" and "reproduced at" in reason and "every number" in reason
    assert staleness({**measured, "reproduced": {**reproduced, "matched": ""}}, repo)[0] == "stale"
    (repo / "pkg" / "code.py").write_text("x = 3\n")
    _git(repo, "commit", "-qam", "change it again")
    assert staleness({**measured, "reproduced": reproduced}, repo)[0] == "stale"

    assert staleness({**measured, "status": STALE, "note": "n"}, repo)[0] == "marked stale"
    assert staleness({**measured, "uncommitted": ["pkg/code.py"]}, repo)[0] == "stale"
    assert staleness({**measured, "commit": "0" * 40}, repo)[0] == "unknown"
    nowhere = tmp_path / "not-a-checkout"
    nowhere.mkdir()
    assert staleness(measured, nowhere)[0] == "unknown"


def test_stamp_records_commit_date_load_and_uncommitted_paths() -> None:
    found = stamp("throughput", ["benchmarks/throughput.py"])
    assert found["command"] == "python -m benchmarks.throughput" and found["status"] == "measured"
    assert len(found["load_average"]) == 3 and found["date"].endswith("UTC")
    assert found["machine"] and found["measures"] == ["benchmarks/throughput.py"]
    if shutil.which("git") and (ROOT / ".git").exists():
        assert found["commit"] == _git(ROOT, "rev-parse", "HEAD")
        dirty = _git(ROOT, "status", "--porcelain", "--", "benchmarks/throughput.py")
        assert bool(found["uncommitted"]) == bool(dirty)
