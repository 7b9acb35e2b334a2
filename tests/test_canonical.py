"""The canonical hash: stable under formatting and key order, changed by any value."""

from __future__ import annotations

import random

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit.canonical import Change, canonical_json, diff, protocol_hash
from evalkit.protocol_file import read_yaml
from tests.conftest import REPO

keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(max_size=20)
)
documents = st.dictionaries(
    keys,
    st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    ),
    min_size=1,
    max_size=6,
)


def shuffled(data, rnd: random.Random):
    if isinstance(data, dict):
        items = list(data.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(data, list):
        return [shuffled(x, rnd) for x in data]
    return data


def reread(data, **style) -> object:
    text = "# a comment that must not matter\n" + yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True, **style
    )
    return read_yaml(text, "x.yaml").data


@settings(max_examples=150, deadline=None)
@given(
    documents, st.integers(0, 2**32 - 1), st.sampled_from([None, True, False]), st.integers(2, 8)
)
def test_hash_is_stable_under_key_order_and_formatting(doc, seed, flow, indent):
    a = reread(doc)
    b = reread(shuffled(doc, random.Random(seed)), default_flow_style=flow, indent=indent, width=40)
    assert protocol_hash(a) == protocol_hash(b)
    assert diff(a, b) == []


def _leaf_paths(data, path=()):
    if isinstance(data, dict | list) and not data:
        yield path  # an empty container is a value too
    elif isinstance(data, dict):
        for k, v in data.items():
            yield from _leaf_paths(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaf_paths(v, (*path, i))
    else:
        yield path


def _changed(value):
    if isinstance(value, bool):
        return not value
    if value is None:
        return 0
    if isinstance(value, int | float):
        if value + 1 != value:
            return value + 1
        return value / 2  # huge floats: +1 rounds away and *2 would overflow
    if isinstance(value, list):
        return [0]
    if isinstance(value, dict):
        return {"a": 0}
    return value + "x"


@settings(max_examples=150, deadline=None)
@given(documents, st.data())
def test_any_value_change_changes_the_hash_and_is_named(doc, data):
    doc = reread(doc)
    paths = list(_leaf_paths(doc))
    path = data.draw(st.sampled_from(paths))
    if path == ():
        return
    changed = yaml.safe_load(yaml.safe_dump(doc))
    node = changed
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = _changed(node[path[-1]])
    assert protocol_hash(changed) != protocol_hash(doc)
    assert len(diff(doc, changed)) >= 1


def test_hash_of_the_flagship_ignores_comments_but_not_values():
    text = (REPO / "protocols" / "hackney-keyworker.yaml").read_text()
    base = protocol_hash(read_yaml(text, "k").data)
    no_comments = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    assert protocol_hash(read_yaml(no_comments, "k").data) == base
    assert protocol_hash(read_yaml(text.replace("green: 40", "green: 41"), "k").data) != base
    # dates stay as written, so the hash does not depend on how a library parses them
    assert read_yaml(text, "k").data["start_date"] == "2027-04-01"


def test_canonical_json_is_sorted_and_compact():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


def test_diff_names_fields_and_matches_named_items_by_name():
    old = {"arms": [{"name": "usual", "ratio": 1}, {"name": "kw", "ratio": 1}], "x": 1}
    new = {
        "arms": [
            {"name": "kw", "ratio": 2},
            {"name": "usual", "ratio": 1},
            {"name": "new", "ratio": 1},
        ],
        "y": 2,
    }
    changes = [str(c) for c in diff(old, new)]
    assert changes == [
        "arms[name=kw].ratio: 1 -> 2",
        'arms[name=new]: added {"name": "new", "ratio": 1}',
        "x: removed (was 1)",
        "y: added 2",
    ]
    c = diff({"a": [1, 2]}, {"a": [1, 3]})
    assert c == [Change("a[1]", 2, 3)]
    assert Change.from_dict(c[0].as_dict()) == c[0]
