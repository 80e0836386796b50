"""The house: no symlink, a wheel and an sdist from a no-symlink clone carry every integration, and the
import contract (rooms import only the rooms below them; the core imports no framework at module level)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lora_rl_plugins"
INTEGRATIONS = ("trl", "lightning", "unsloth", "trl_async")

#: Each room's floor: a room may import its own modules and rooms on lower floors only.
FLOORS = {
    "plugin": 0,
    "lora": 1,
    "bandwidth": 2,
    "kl": 2,
    "serving": 2,
    "planning": 3,
    "learning": 3,
    "bridge": 4,
    "integrations": 5,
    "report": 5,
    "demo": 6,
    "cli": 7,
    "__init__": 5,
}
FACES = {"integrations", "demo", "cli"}
FRAMEWORKS = {
    "torch", "transformers", "trl", "peft", "lightning", "pytorch_lightning", "accelerate", "deepspeed", "vllm",
    "unsloth", "unsloth_zoo", "datasets", "matplotlib", "tensorboard", "numpy", "tokenizers", "tqdm",
}  # fmt: skip


def _room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module imported, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = ".".join(("lora_rl_plugins", *path.relative_to(PACKAGE).with_suffix("").parts))
    if path.name == "__init__.py":
        package += ".__init__"
    found = []
    top_level = {id(node) for node in tree.body}
    type_checking = {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                names = [".".join([*base, node.module] if node.module else base)]
                if not node.module:
                    names = [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            found.append((name, id(node) in top_level and id(node) not in type_checking))
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_symlink_in_the_repository() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000")]
    assert not links, f"symlinks in the repository: {links}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_import_contract(path: Path) -> None:
    room = _room(path)
    for module, top_level in _imports(path):
        root = module.split(".")[0]
        if root in FRAMEWORKS:
            assert room in FACES or not top_level, f"{path.name} imports {module} at module level"
            continue
        if root != "lora_rl_plugins":
            continue
        parts = module.split(".")
        if len(parts) < 2:
            continue
        target = parts[1]
        if target == room:
            continue
        if room == "integrations" or target == "integrations":
            assert room in {"demo", "cli"} or (room == "integrations" and target != "integrations"), (
                f"{path.relative_to(PACKAGE)} imports {module}: only the faces (demo, cli) may use an integration"
            )
        if room == "integrations" and target == "integrations":
            raise AssertionError(f"{path.name}: integrations never import each other ({module})")
        if target in FLOORS:
            assert FLOORS[target] < FLOORS[room], (
                f"{path.relative_to(PACKAGE)} ({room}, floor {FLOORS[room]}) imports {module} "
                f"({target}, floor {FLOORS[target]}): a room imports only rooms below it"
            )


def test_integrations_use_absolute_imports() -> None:
    for name in INTEGRATIONS:
        tree = ast.parse((PACKAGE / "integrations" / f"{name}.py").read_text())
        relative = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
        assert not relative, f"integrations/{name}.py uses relative imports: {relative}"


def _no_symlink_clone(tmp_path: Path) -> Path:
    """The working tree's tracked and untracked (not ignored) files as a clone with
    ``core.symlinks=false`` lays them out: a link becomes a text file holding its target."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    clone = tmp_path / "clone"
    for name in filter(None, listing.split("\0")):
        source, target = ROOT / name, clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.write_text(os.readlink(source))
        elif source.is_file():
            shutil.copyfile(source, target)
    return clone


def _build(clone: Path, kind: str, out: Path) -> Path:
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=clone, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


def _imports_every_integration(site: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import lora_rl_plugins, importlib;"
        f"[importlib.import_module('lora_rl_plugins.integrations.' + n) for n in {INTEGRATIONS[:2]!r}];"
        "import lora_rl_plugins.integrations.unsloth;"  # imports Unsloth only when called
        "assert lora_rl_plugins.__file__.startswith(sys.argv[1]), lora_rl_plugins.__file__; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.slow
def test_wheel_and_sdist_from_a_no_symlink_clone_carry_every_integration(tmp_path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("lightning")
    clone = _no_symlink_clone(tmp_path)
    dist = tmp_path / "dist"
    dist.mkdir()
    wheel = _build(clone, "wheel", dist)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in INTEGRATIONS:
            assert f"lora_rl_plugins/integrations/{name}.py" in names
        assert "lora_rl_plugins/py.typed" in names
        site = tmp_path / "wheel_site"
        archive.extractall(site)
    _imports_every_integration(site)

    sdist = _build(clone, "sdist", dist)
    import tarfile

    with tarfile.open(sdist) as archive:
        members = archive.getnames()
        top = members[0].split("/")[0]
        for name in INTEGRATIONS:
            assert f"{top}/lora_rl_plugins/integrations/{name}.py" in members
        archive.extractall(tmp_path / "sdist", filter="data")
    unpacked = tmp_path / "sdist" / top
    (tmp_path / "dist2").mkdir()
    wheel_from_sdist = _build(unpacked, "wheel", tmp_path / "dist2")
    with zipfile.ZipFile(wheel_from_sdist) as archive:
        assert all(f"lora_rl_plugins/integrations/{n}.py" in archive.namelist() for n in INTEGRATIONS)


@pytest.mark.slow
def test_editable_install_from_a_no_symlink_clone_imports_every_integration(tmp_path) -> None:
    """``pip install -e`` of the clone into a fresh environment (never this one: pip would replace the
    project's own editable install) that sees this environment's packages but not its editable finder."""
    pytest.importorskip("trl")
    pytest.importorskip("lightning")
    import sysconfig

    clone = _no_symlink_clone(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # a path line in a .pth adds this environment's packages; their own .pth files (the editable finder) do not run
    (Path(purelib) / "frameworks.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation",
         "-e", str(clone)],
        capture_output=True, text=True, check=False, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    code = (
        "import importlib, sys, lora_rl_plugins;"
        f"[importlib.import_module('lora_rl_plugins.integrations.' + n) for n in {INTEGRATIONS!r}];"
        "assert lora_rl_plugins.__file__.startswith(sys.argv[1]), lora_rl_plugins.__file__; print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), "-c", code, str(clone)], capture_output=True, text=True, check=False, cwd=tmp_path, env=env
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
