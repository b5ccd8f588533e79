"""Read a stack's config straight from stacks/Pulumi.<stack>.yaml.

Used where there is no Pulumi engine (offline plan, lab, converge). Secret
values stay encrypted in the file; only their presence is reported.

Every mistake in the file is a StackFileError naming the file, the line and
the key, all problems of a file at once: YAML syntax errors, a key given twice
in any mapping, keys indented out of ``config:``, config keys not in
``namespace:name`` form, and provider or stack secrets stored in plain text.
No message contains a config value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hastack.model import NAMESPACE, Topology, load

PROJECT_DIR = Path(__file__).resolve().parent.parent
STACKS_DIR = PROJECT_DIR / "stacks"

# Pulumi's own top-level keys of a stack file; everything of ours lives under config:.
TOP_LEVEL_KEYS = ("config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment")

# Config keys whose value must be a Pulumi secret ({secure: ...}), in any namespace.
# hcloud:token, and pulumi-aws's credentials (accessKey, secretKey, token: the
# session token). aws:sessionToken is no pulumi-aws setting, but a session token
# pasted under that name is as leaked as under aws:token.
PLAIN_TEXT_REFUSED = (
    "hcloud:token",
    "aws:accessKey",
    "aws:secretKey",
    "aws:token",
    "aws:sessionToken",
    f"{NAMESPACE}:failoverToken",
    f"{NAMESPACE}:secretSeed",
    f"{NAMESPACE}:secretSeedNext",
    f"{NAMESPACE}:secretSeedPrevious",
    f"{NAMESPACE}:ca",
    f"{NAMESPACE}:caNext",
    f"{NAMESPACE}:caPrevious",
)


class StackFileError(ValueError):
    """A stack file that cannot be read as it is; ``problems`` lists every reason."""

    def __init__(self, message: str, problems: list[str] | None = None, path: Path | None = None):
        self.problems = list(problems or [])
        self.path = path
        super().__init__(message)


def _line_of(problem: str) -> int:
    m = re.match(r"line (\d+)", problem)
    return int(m.group(1)) if m else 0


def _invalid(path: Path, problems: list[str]) -> StackFileError:
    problems = sorted(problems, key=_line_of)  # in file order
    return StackFileError(f"invalid stack file {path}:\n" + "\n".join(f"  - {p}" for p in problems), problems, path)


def stack_path(stack: str, stacks_dir: Path | None = None) -> Path:
    return (stacks_dir or STACKS_DIR) / f"Pulumi.{stack}.yaml"


def available_stacks(stacks_dir: Path | None = None) -> list[str]:
    directory = stacks_dir or STACKS_DIR
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in directory.glob("Pulumi.*.yaml"))


# ---------------------------------------------------------------- YAML with line numbers


class _StackFileLoader(yaml.SafeLoader):
    """Safe loading that notes every key given twice in a mapping instead of keeping the last silently."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []
        self.paths: dict[int, str] = {}  # id(mapping node) -> where it is, for messages
        self.key_lines: dict[int, dict[Any, int]] = {}  # id(mapping node) -> key -> line of its first occurrence

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=False)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the constructor below reports it
                continue
            if first is not None:
                where = self.paths.get(id(node), "")
                self.duplicates.append(
                    f"line {line}: key {str(key)!r} is given twice{' in ' + where if where else ''} "
                    f"(lines {first} and {line}); YAML would silently keep only the last; remove one")
            else:
                seen[key] = line
        self.key_lines[id(node)] = seen
        return super().construct_mapping(node, deep=deep)


def _note_paths(node: yaml.Node, where: str, paths: dict[int, str]) -> None:
    """Name every mapping node by its place (``config``, ``hastack:roles.app``) for duplicate messages."""
    if id(node) in paths:
        return  # an alias of a node already named (or a recursive one)
    if isinstance(node, yaml.MappingNode):
        paths[id(node)] = where or "the top level"
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            _note_paths(value_node, name if where in ("", "config") else f"{where}.{name}", paths)
    elif isinstance(node, yaml.SequenceNode):
        paths[id(node)] = where
        for i, item in enumerate(node.value):
            _note_paths(item, f"{where}[{i}]", paths)


def _syntax_problem(e: yaml.YAMLError) -> str:
    """The parser's own words and position, never the text around it (it may hold a secret)."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError):
        what = e.problem or "not valid YAML"
        context = f" ({e.context}" + (f" at line {e.context_mark.line + 1}" if e.context_mark else "") + ")" \
            if e.context else ""
        if "'\\t'" in what:
            what += "; indent with spaces, not tabs"
        if mark is not None:
            return f"line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: {what}{context}"
        return f"YAML syntax error: {what}{context}"
    if isinstance(e, yaml.reader.ReaderError):
        return f"position {e.position}: not readable text ({e.reason})"
    return f"YAML error: {type(e).__name__}"


def _load(path: Path) -> tuple[Any, yaml.Node | None, dict[int, dict[Any, int]]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StackFileError(f"cannot read stack file {path}: {e.strerror or e}", path=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise _invalid(path, [f"line {line}: not UTF-8 text; save the file as UTF-8"]) from None
    loader = _StackFileLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _note_paths(root, "", loader.paths)
        doc = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        raise _invalid(path, [_syntax_problem(e)]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        # with the file's other problems, all in line order
        raise _invalid(path, loader.duplicates + _structure_problems(doc, root, loader.key_lines))
    return doc, root, loader.key_lines


# ---------------------------------------------------------------- structure


def _is_secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"} and isinstance(value["secure"], str)


def _config_node(root: yaml.Node | None) -> yaml.Node | None:
    """The node of ``config:`` (the last one if given twice: that is the one YAML keeps)."""
    found = None
    if isinstance(root, yaml.MappingNode):
        for key_node, value_node in root.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "config":
                found = value_node
    return found


def _structure_problems(doc: Any, root: yaml.Node | None, key_lines: dict[int, dict[Any, int]]) -> list[str]:
    problems: list[str] = []
    if doc is None:
        return problems
    if not isinstance(doc, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        return [f"line {line}: expected a mapping with a 'config:' key, found a {type(doc).__name__}"]

    top_lines = key_lines.get(id(root), {})
    for key in doc:
        if key in TOP_LEVEL_KEYS:
            continue
        line = top_lines.get(key, "?")
        problems.append(
            f"line {line}: {str(key)!r} is outside `config:` (probably indented wrongly: config keys are "
            f"indented under `config:`); valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")

    config = doc.get("config")
    config_node = _config_node(root)
    if config is None:
        return problems
    if not isinstance(config, dict):
        line = config_node.start_mark.line + 1 if config_node is not None else top_lines.get("config", "?")
        problems.append(f"line {line}: 'config' must be a mapping of namespace:name keys to values")
        return problems

    lines = key_lines.get(id(config_node), {})
    for key, value in config.items():
        line = lines.get(key, "?")
        ns, sep, name = str(key).partition(":") if isinstance(key, str) else ("", "", "")
        if not (isinstance(key, str) and sep and ns and name):
            problems.append(
                f"line {line}: config key {str(key)!r} is not in namespace:name form "
                f"(a block dedented by one level lands directly under `config:`); "
                f"did you mean {NAMESPACE}:{str(key).strip(':')}?")
            continue
        if key in PLAIN_TEXT_REFUSED and not _is_secure(value):
            problems.append(_plain_text_problem(key, line))
    return problems


def _plain_text_problem(key: str, line: Any) -> str:
    if key == "aws:sessionToken":
        return (f"line {line}: aws:sessionToken is stored in plain text (and pulumi-aws reads the session token "
                "from aws:token); remove it and run `pulumi config set --secret aws:token <value>`")
    return (f"line {line}: {key} is stored in plain text; remove it and run "
            f"`pulumi config set --secret {key} <value>`")


# ---------------------------------------------------------------- public functions


def read_stack_file(stack: str, stacks_dir: Path | None = None) -> tuple[dict[str, Any], set[str]]:
    """Return (full flat config map, keys whose value is a Pulumi secret).

    Raises StackFileError listing every problem of the file.
    """
    path = stack_path(stack, stacks_dir)
    if not path.exists():
        raise StackFileError(
            f"no stack file {path}; stacks here: {', '.join(available_stacks(stacks_dir)) or 'none'}", path=path)
    doc, root, key_lines = _load(path)
    problems = _structure_problems(doc, root, key_lines)
    if problems:
        raise _invalid(path, problems)
    flat = (doc or {}).get("config") or {}
    secrets = {k for k, v in flat.items() if _is_secure(v)}
    return flat, secrets


def hastack_config(flat: dict[str, Any]) -> dict[str, Any]:
    """The ``hastack:`` keys, prefix removed, secrets left out."""
    out = {}
    for key, value in flat.items():
        ns, _, name = key.partition(":")
        if ns == NAMESPACE and not (isinstance(value, dict) and set(value) == {"secure"}):
            out[name] = value
    return out


def load_stack(stack: str, require_secrets: bool = False, stacks_dir: Path | None = None) -> Topology:
    flat, secrets = read_stack_file(stack, stacks_dir)
    return load(stack, hastack_config(flat), secret_keys=secrets, require_secrets=require_secrets)
