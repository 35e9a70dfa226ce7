"""Hypothesis strategies that mutate valid inputs (so the parsers are reached deeply, not only
rejected at the first byte): JSON documents (drop / replace / add keys, random JSON values
including negative and huge ints, NaN, nested lists), bytes (flip, overwrite, truncate,
insert, delete, interesting integers), TOML text (lines and values) and source strings."""

from __future__ import annotations

import copy
import json
import math

from hypothesis import strategies as st

INTERESTING = [
    None, True, False, 0, 1, -1, 2, 3, 7, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
    10**30, -(2**63), 0.0, -0.0, 0.5, 1e-30, 1e308, -1e308, math.inf, -math.inf, math.nan, "", "0", "1", "-1",
    "a" * 300, "\x00", "null", "default", "llama3", "silu", "F32", [], {}, [1, 2], [[]], [None], {"": None},
]
# json.dumps cannot write a 5000-digit number (int max str digits); this placeholder is swapped
# for one in the serialized text, where json.loads then meets it.
HUGE_NUMBER = "\x00huge-number\x00"


def json_leaves(extra=()):
    return st.one_of(
        st.sampled_from(INTERESTING + [HUGE_NUMBER]),
        st.sampled_from(list(extra)) if extra else st.nothing(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        st.text(max_size=12),
    )


def json_values(extra=()):
    return st.recursive(
        json_leaves(extra),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=8,
    )


def dumps(doc) -> bytes:
    text = json.dumps(doc, allow_nan=True)
    return text.replace(json.dumps(HUGE_NUMBER), "1" * 5000).encode()


def _paths(doc, prefix=()):
    """Every path to a node below the root (dict keys and list indices)."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _containers(doc, prefix=()):
    if isinstance(doc, (dict, list)):
        yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _containers(value, prefix + (key,))


def _at(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def leaves_of(*docs) -> list:
    """Every scalar value found in `docs` (a dictionary of plausible values for mutations)."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            found.update(k for k in node if isinstance(k, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, (str, int, float)) and not (isinstance(node, float) and math.isnan(node)):
            found.add(node)

    for doc in docs:
        walk(doc)
    return sorted(found, key=repr)


@st.composite
def mutated_json(draw, seed, keys=(), values=(), max_ops=4, keep_root=False):
    """`seed` (a JSON document) with 1..max_ops mutations; `keys` and `values` are plausible
    key names and values to add or swap in (from the valid documents)."""
    doc = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["replace", "replace", "drop", "add", "swap_value", "root"]))
        paths = list(_paths(doc))
        if op == "root" and not keep_root and draw(st.integers(0, 9)) == 0:
            doc = copy.deepcopy(draw(json_values(values)))
        elif op in ("replace", "swap_value") and paths:
            path = draw(st.sampled_from(paths))
            new = draw(json_values(values)) if op == "replace" else draw(
                st.sampled_from(list(values)) if values else json_leaves())
            # a copy: `values` are shared between examples, and later ops mutate the document in place
            _at(doc, path[:-1])[path[-1]] = copy.deepcopy(new)
        elif op == "drop" and paths:
            path = draw(st.sampled_from(paths))
            parent = _at(doc, path[:-1])
            del parent[path[-1]]
        elif op == "add":
            containers = list(_containers(doc))
            if not containers:
                continue
            parent = _at(doc, draw(st.sampled_from(containers)))
            value = copy.deepcopy(draw(json_values(values)))
            if isinstance(parent, dict):
                key = draw(st.sampled_from(list(keys))) if keys and draw(st.booleans()) else draw(st.text(max_size=8))
                parent[key] = value
            else:
                parent.insert(draw(st.integers(0, len(parent))), value)
    return doc


INTERESTING_INTS = [0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                    2**63 - 1, 2**63, 2**64 - 1]


@st.composite
def mutated_bytes(draw, seed: bytes, hot: int | None = None, max_ops=4):
    """`seed` with 1..max_ops byte mutations, three in four at offsets below `hot` (the header)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "int", "truncate", "insert", "delete", "duplicate"]))
        limit = len(data) if hot is None or draw(st.integers(0, 3)) == 0 else min(hot, len(data))
        pos = draw(st.integers(0, max(0, limit - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS) | st.integers(0, 2**64 - 1)) % (1 << (8 * width))
            data[pos:pos + width] = value.to_bytes(width, "little")
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def safetensors_files(draw, seed: bytes, dtypes=()):
    """A safetensors file from `seed`: its JSON header mutated (names, dtypes, shapes, offsets,
    __metadata__), the 8-byte header length kept consistent or changed, the data truncated,
    and/or raw byte mutations on top."""
    n = int.from_bytes(seed[:8], "little")
    header, body = json.loads(seed[8:8 + n]), seed[8 + n:]
    if draw(st.integers(0, 3)):
        header = draw(mutated_json(header, keys=["__metadata__", *header], values=[*dtypes, *leaves_of(header)],
                                   max_ops=3))
    text = dumps(header)
    if draw(st.booleans()):
        text += b" " * (-len(text) % 8)
    length = len(text)
    if draw(st.integers(0, 3)) == 0:
        length = draw(st.sampled_from([0, 1, 2, length - 1, length + 1, length + len(body), len(body) + 1,
                                       100_000_001, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)) % 2**64
    if draw(st.integers(0, 4)) == 0:
        body = body[:draw(st.integers(0, len(body)))]
    data = max(length, 0).to_bytes(8, "little") + text + body
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutated_bytes(data, hot=8 + len(text), max_ops=2))
    return data


def _toml_literal(value) -> str:
    if value is None:
        return "nan"  # TOML has no null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_literal(v)}" for k, v in value.items()) + "}"


@st.composite
def mutated_toml(draw, text: str, values=()):
    """A TOML text with 1..3 line-level mutations: a value replaced by another TOML value, a
    line dropped, duplicated or moved, random text inserted, the text truncated."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "value", "value", "drop", "duplicate", "move", "insert", "truncate"]))
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        if not lines:
            lines.append("")
        if op == "value":
            candidates = [j for j, line in enumerate(lines) if " = " in line and not line.lstrip().startswith("#")]
            if candidates:
                j = draw(st.sampled_from(candidates))
                key = lines[j].split(" = ", 1)[0]
                value = draw(json_values(values).filter(lambda v: v != HUGE_NUMBER))
                lines[j] = f"{key} = {_toml_literal(value)}"
        elif op == "drop":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
        elif op == "insert":
            lines.insert(i, draw(st.text(max_size=30)))
        elif op == "truncate":
            lines[i] = lines[i][:draw(st.integers(0, len(lines[i])))]
    return "\n".join(lines) + "\n"


def source_strings():
    """--checkpoint strings: random text, paths, owner/name@rev forms, .., NUL bytes, ~user,
    very long names (never "embedded", which loads the real model)."""
    name = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
    return st.one_of(
        st.text(max_size=40),
        st.builds(lambda a, b, r: f"{a}/{b}" + (f"@{r}" if r else ""), name, name, st.none() | name),
        st.builds(lambda parts: "/".join(parts), st.lists(st.sampled_from(["..", ".", "~", "", "a", "\x00", "x.gguf",
                                                                           "config.json", "~nobody-here"]),
                                                         max_size=6)),
        st.builds(lambda n, s: "a" * n + s, st.integers(200, 5000), st.sampled_from(["", ".gguf", "/b", "/b@c"])),
        st.sampled_from(["~", "~/", "~root", "~nobody-at-all/x", "/", ".", "..", "/dev/null", "/dev/null.gguf",
                         "/proc/self", "a/b@", "@", "/@", "a//b", "x.GGUF", ".gguf", "\x00.gguf", "a\x00b/c",
                         "Embedded", "embedded ", " embedded"]),
    ).filter(lambda s: s != "embedded")
