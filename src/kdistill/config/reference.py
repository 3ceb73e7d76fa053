"""`kdistill config [--method M]`: every configuration key with its default and what it does.

The explanations are the comments beside (or just above) each field in the configuration's
dataclasses, read from their source, so the listing cannot drift from the code.
"""

import ast
import dataclasses
import enum
import inspect
import io
import textwrap
import tokenize
from typing import Any

from kdistill.config import MethodOptions, RunConfig, flat_config
from kdistill.errors import closest_names

METHOD_SECTION = "method"


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} for the fields a dataclass (and its dataclass bases) declares:
    the comment on the field's lines, else the comment lines right above it."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # made at run time (make_dataclass): no source of its own
            continue
        by_line: dict[int, tuple[str, bool]] = {}  # line -> (comment, alone on its line)
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                alone = not token.line[: token.start[1]].strip()
                by_line[token.start[0]] = (token.string.lstrip("#").strip(), alone)
        node = ast.parse(source).body[0]
        for statement in getattr(node, "body", []):
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            beside = [by_line[line][0] for line in range(statement.lineno, statement.end_lineno + 1)
                      if line in by_line and not by_line[line][1]]
            above, line = [], statement.lineno - 1
            while line in by_line and by_line[line][1]:
                above.insert(0, by_line[line][0])
                line -= 1
            text = " ".join(beside) or " ".join(above)
            if text:
                comments[statement.target.id] = text
    return comments


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None


def config_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, explanation) for every field of a config dataclass, sections expanded."""
    comments = field_comments(cls)
    rows = []
    for item in dataclasses.fields(cls):
        default = _default(item)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            if item.name == METHOD_SECTION and not prefix:
                continue  # the method section: its own listing (`method_rows`)
            rows += config_rows(type(default), f"{prefix}{item.name}.")
        else:
            rows.append((f"{prefix}{item.name}", _shown(default), comments.get(item.name, "")))
    return rows


def method_rows(name: str | None) -> list[tuple[str, str, str]]:
    """The method section's keys: method.name, then the options of method `name` (every method's
    common options when None), a weight left null showing the method's own default."""
    if name is None:
        options, weights = MethodOptions, {}
        title = "the method's name (`kdistill list`; `kdistill config --method NAME` lists its options)"
    else:
        from kdistill.methods import method_class  # the registry imports every method (and torch)

        cls = method_class(name)
        options, weights = cls.Options, dict(cls.default_weights)
        title = "the method's name"
    rows = [(f"{METHOD_SECTION}.name", name or "vanilla", title)]
    for key, default, text in config_rows(options, f"{METHOD_SECTION}."):
        weight = key.removeprefix(f"{METHOD_SECTION}.")
        if default == "null" and weight in weights:
            default = f"null (= {weights[weight]:g})"
        rows.append((key, default, text))
    return rows


def config_reference(method: str | None = None) -> str:
    """Every key `key=value` takes, with its default and explanation, one per line."""
    rows = config_rows(RunConfig) + method_rows(method)
    key_width = max(len(key) for key, _, _ in rows)
    default_width = min(max(len(default) for _, default, _ in rows), 24)
    lines = [f"{key.ljust(key_width)}  {default.ljust(default_width)}  {text}".rstrip() for key, default, text in rows]
    return "\n".join(["keys (give as key=value, or in a --config YAML file), defaults, and what each does:", *lines])


def close_keys(key: str) -> list[str]:
    """The config keys a mistyped `key` may have meant: those with its last part (`lr` ->
    `optim.lr`), then the closest by spelling (`epoch` -> `epochs`)."""
    keys = list(flat_config(RunConfig()))
    last = key.rsplit(".", 1)[-1]
    same_name = [candidate for candidate in keys if candidate.rsplit(".", 1)[-1] == last and candidate != key]
    by_name = {candidate.rsplit(".", 1)[-1]: candidate for candidate in keys}
    spelled = closest_names(key, keys) + [by_name[name] for name in closest_names(last, by_name)]
    return list(dict.fromkeys(same_name + spelled))[:3]
