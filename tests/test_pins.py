"""No extra admits a release with a known advisory (the lower bounds in pyproject.toml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
specifiers = pytest.importorskip("packaging.specifiers")
requirements = pytest.importorskip("packaging.requirements")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: package -> releases that must never be admitted, and why
UNSAFE = {
    "lightning": (["2.5.0", "2.6.0", "2.6.2", "2.6.3", "2.6.5"], "CVE-2026-58659 (<= 2.6.5); 2.6.2/2.6.3 compromised"),
    "transformers": (["4.56.0", "5.0.0", "5.2.0", "5.2.9"], "CVE-2026-4372 (4.56.0 to 5.2.x)"),
    "torch": (["2.4.0", "2.5.1", "2.9.1"], "CVE-2025-32434 (<= 2.5.1), CVE-2026-24747 (< 2.10)"),
}
#: extras that install one of the frameworks above (directly or through TRL, PEFT, Unsloth, vLLM, DeepSpeed)
FRAMEWORK_EXTRAS = {"torch", "trl", "lightning", "deepspeed", "unsloth", "vllm", "dev"}


def expanded(extras: dict[str, list[str]], name: str) -> list:
    """The requirements of one extra with ``lora-rl-plugins[...]`` self-references expanded."""
    out = []
    for line in extras[name]:
        requirement = requirements.Requirement(line)
        if requirement.name == "lora-rl-plugins":
            for inner in sorted(requirement.extras):
                out += expanded(extras, inner)
        else:
            out.append(requirement)
    return out


def test_no_extra_admits_an_unsafe_release() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert set(extras) >= FRAMEWORK_EXTRAS
    for extra in extras:
        reqs = expanded(extras, extra)
        named = {re.sub(r"[-_.]+", "-", r.name.lower()): r for r in reqs}
        for package, (versions, why) in UNSAFE.items():
            requirement = named.get(package)
            if requirement is None:
                # every extra that installs a framework names torch and transformers with a safe bound
                needed = package != "lightning" and extra in FRAMEWORK_EXTRAS
                needed = needed and not (extra == "torch" and package == "transformers")
                assert not needed, f"extra [{extra}] installs {package} without a safe lower bound ({why})"
                continue
            admitted = [v for v in versions if requirement.specifier.contains(v, prereleases=True)]
            assert not admitted, f"extra [{extra}]: {requirement} admits {admitted} ({why})"


def test_trl_range_matches_the_callbacks_check() -> None:
    from lora_rl_plugins.bridge.trl_contract import SUPPORTED_TRL

    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    trl = next(requirements.Requirement(r) for r in extras["trl"] if r.startswith("trl"))
    assert trl.specifier == specifiers.SpecifierSet(SUPPORTED_TRL)
