"""A spec file, read defensively: its bytes (a regular file of at most MAX_SPEC_BYTES; never a folder, a pipe or a
device) and its YAML (libyaml's safe loader; a key given twice and aliases that repeat too much refused). A
problem is a :class:`FileProblem` naming where it is; :mod:`image_factory.spec` makes it the file's SpecError.

Written here because PyYAML's loaders take a key given twice (the last wins, silently) and expand aliases
without bound; no maintained library checks either on libyaml's node graph before it is constructed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

#: libyaml's safe loader when PyYAML was built with it: ten times faster than the pure-Python one.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: A spec file is a page of YAML (the shipped ones are 1-2 KiB); a larger one is refused unread. (Reading YAML
#: costs some 15 us a node: a file this size takes half a second at worst, one of 1 MiB ten seconds.)
MAX_SPEC_BYTES = 64 * 1024
#: Nodes that YAML aliases may repeat in all (a few shared mappings are fine; a "billion laughs" is not).
MAX_ALIAS_NODES = 10_000
#: A value from the spec file is quoted in an error, cut to this many characters.
QUOTE_LENGTH = 80


class FileProblem(Exception):
    """What is wrong with a spec file, and where (a line and column, a field, or ``image`` for the file)."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where, self.message = where, message


def cut(text: str, length: int = QUOTE_LENGTH) -> str:
    return text if len(text) <= length else text[:length - 3] + "..."


def shown(value: Any) -> str:
    """A value from the spec file, as an error quotes it: its repr, cut to QUOTE_LENGTH characters."""
    text = repr(value)
    if len(text) > QUOTE_LENGTH and text[-1] in "'\"":
        return text[:QUOTE_LENGTH - 4] + "..." + text[-1]
    return cut(text)


class _TooManyAliases(yaml.YAMLError):
    """Aliases that repeat too much of the document (a "billion laughs"), or one inside what it names."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, mapping: yaml.MappingNode, key: Any, first: int, second: int):
        super().__init__(f"key {shown(key)} given twice: lines {first} and {second}")
        self.mapping, self.key = mapping, key


class _SpecLoader(SAFE_LOADER):
    """libyaml's safe loader (when PyYAML has it), refusing a key given twice in a mapping. A merge key's
    (``<<: *base``) keys may be given again: that is what merging is for."""

    def __init__(self, stream):
        super().__init__(stream)
        self._checked: set[int] = set()

    def flatten_mapping(self, node):
        # Before the merge keys are replaced by what they merge (in place, once per node): the node's own keys.
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:str":
                    key = key_node.value  # (nearly every key: no need to construct it)
                elif key_node.tag in ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"):
                    continue
                else:
                    key = self.construct_object(key_node, deep=True)  # (kept: the mapping's construction reuses it)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the constructor says so
                if first is not key_node:
                    raise _DuplicateKey(node, key, first.start_mark.line + 1, key_node.start_mark.line + 1)
        super().flatten_mapping(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_aliases(root: yaml.Node) -> None:
    """Refuse a document whose aliases repeat more than MAX_ALIAS_NODES nodes in all, or name a collection
    they are inside of. An alias is the node it names, so the composed graph is small however much it would
    expand to: this counts each node's expanded size once (no expansion), before anything is constructed."""
    sizes: dict[int, int] = {}
    inside: set[int] = set()  # the collections the walk is in
    pending: list[tuple[yaml.Node, bool]] = [(root, False)]
    while pending:
        node, finished = pending.pop()
        if finished:
            inside.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in inside:
            raise _TooManyAliases(f"line {node.start_mark.line + 1}: an alias names a collection it is inside of")
        children = _children(node)
        if not children:
            sizes[id(node)] = 1
            continue
        inside.add(id(node))
        pending.append((node, True))
        pending.extend((child, False) for child in children)
    repeated = sizes[id(root)] - len(sizes)
    if repeated > MAX_ALIAS_NODES:
        raise _TooManyAliases(f"aliases repeat {repeated:,} nodes; at most {MAX_ALIAS_NODES:,} are allowed")


def _node_path(root: yaml.Node, target: yaml.Node) -> list[Any] | None:
    """The keys and indexes that lead from ``root`` to ``target`` (only for an error message)."""
    pending: list[tuple[yaml.Node, list[Any]]] = [(root, [])]
    seen: set[int] = set()
    while pending:
        node, path = pending.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend((child, [*path, index]) for index, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            pending.extend((value, [*path, key.value if isinstance(key, yaml.ScalarNode) else "?"])
                           for key, value in node.value)
    return None


def _load_yaml(text: str) -> Any:
    loader = _SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text:  # (no anchor, no alias: an ordinary file costs nothing more)
            _check_aliases(node)
        try:
            return loader.construct_document(node)
        except _DuplicateKey as exc:
            exc.root = node
            raise
    finally:
        loader.dispose()


def _duplicate_key_field(exc: _DuplicateKey) -> str:
    parts = [*(_node_path(exc.root, exc.mapping) or []), str(exc.key)]
    field = str(parts[0])
    for part in parts[1:]:
        field += f"[{part}]" if isinstance(part, int) else f".{part}"
    return cut(field, 2 * QUOTE_LENGTH)


def read_yaml(text: str) -> Any:
    """The document in ``text``; FileProblem (where, what) when it is not YAML or is refused."""
    try:
        return _load_yaml(text)
    except _TooManyAliases as exc:
        raise FileProblem("YAML", f"refused: {exc}") from None
    except _DuplicateKey as exc:
        raise FileProblem(_duplicate_key_field(exc), str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = str(getattr(exc, "problem", None) or exc)
        raise FileProblem(where, f"not valid YAML: {problem[:200]}") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # Values YAML reads but Python cannot make: a 30th of February, an integer of 5,000 digits, ...
        raise FileProblem("YAML", f"a value cannot be read: {str(exc)[:200]}") from None


def read_bytes(path: Path) -> bytes:
    """The bytes of a spec file; FileProblem when ``path`` is a folder, a link to nothing, a pipe or a device, is
    unreadable, or is larger than MAX_SPEC_BYTES. (A pipe is never opened for reading: that would wait.)"""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if path.is_symlink():
            raise FileProblem("image", f"a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise FileProblem("image", "no such file") from None
    except OSError as exc:
        raise FileProblem("image", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise FileProblem("image", "a folder, not a spec file")
        if not stat.S_ISREG(mode):
            raise FileProblem("image", "not a regular file (a pipe, a socket or a device)")
        chunks, size = [], 0
        while size <= MAX_SPEC_BYTES and (chunk := os.read(descriptor, MAX_SPEC_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise FileProblem("image", f"cannot read the file: {exc.strerror or exc}") from None
    finally:
        os.close(descriptor)
    if len(raw) > MAX_SPEC_BYTES:
        raise FileProblem("image", f"the file is larger than {MAX_SPEC_BYTES // 1024} KiB")
    return raw
