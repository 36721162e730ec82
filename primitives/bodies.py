"""Typed request bodies: one pydantic model per body, parsed once at the edge.

A view parses the decoded JSON into its model with :func:`parse_body`; the core takes
the model. The same model generates the body's JSON Schema for the OpenAPI document
(:func:`component_schema`), so what is refused and what is documented cannot drift.

Why pydantic (v2) and not msgspec: the gateway already carries it (Flower's FastAPI
does), its JSON Schema output is 2020-12 as OpenAPI 3.1 uses it, and
``ValidationError.errors(include_input=False)`` gives every failure's location without
the value, which matters here because a value can be an ID number.

A refusal is a :class:`~tongban.primitives.errors.BadRequest` (400 ``bad-request``)
whose detail names the field by its location (``subjects[3].consent_id: expected a
string``) and never repeats the input. A location element that the client chose, such as
an unexpected key, is named only when it looks like a field name: a key can be an ID
number too.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, WithJsonSchema
from pydantic.json_schema import models_json_schema

from .errors import BadRequest

__all__ = [
    "Body",
    "component_ref",
    "component_schema",
    "component_schemas",
    "parse_body",
    "parse_query",
    "schema_ref",
]

M = TypeVar("M", bound="Body")
_MARK = "x-tongban-component"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
#: pydantic error types to the gateway's wording (others keep pydantic's message, which
#: states the rule and never the value).
_WORDS = {
    "model_type": "expected a JSON object",
    "model_attributes_type": "expected a JSON object",
    "dict_type": "expected a JSON object",
    "list_type": "expected an array",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "missing": "required",
    "extra_forbidden": "unexpected field",
}


class Body(BaseModel):
    """A request body: unknown fields refused, no coercion (``"1"`` is not 1), frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def schema_ref(name: str) -> WithJsonSchema:
    """Annotate a field whose schema is a component declared elsewhere (an enumeration
    from the claim catalog, say): ``Annotated[str, schema_ref("ClaimName")]``. (A
    marker that :func:`component_schema` turns into a ``$ref``: pydantic would try to
    resolve a ``$ref`` among its own definitions.)"""
    return WithJsonSchema({_MARK: name})


#: What pydantic inserts into a location for the member of a union that failed (``str``,
#: ``none``, ``function-after[...]``): not a field.
_UNION_TAG = re.compile(r"[a-z]+(-[a-z]+)+(\[.*\])?|[a-z]+\[.*\]|str|int|float|bool|none|bytes")


def component_ref(name: str) -> dict[str, str]:
    """A reference to component ``name`` inside ``json_schema_extra`` (``propertyNames``,
    say), written as :func:`schema_ref`'s marker so that pydantic leaves it alone."""
    return {_MARK: name}


def _where(loc: tuple[int | str, ...], root: str, kind: str) -> str:
    if kind != "extra_forbidden":  # there the last element is the client's key
        loc = tuple(p for p in loc if not (isinstance(p, str) and _UNION_TAG.fullmatch(p)))
    out = root if not loc else ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part) and not part[0].isdigit():
            out += f".{part}" if out else part
        else:
            out += "[…]" if out else "…"
    return out


def _words(error: Any) -> str:
    kind = str(error["type"])
    ctx = error.get("ctx") or {}
    unit = "characters" if kind.startswith("string_") else "items"
    if kind.endswith("too_short") and "min_length" in ctx:
        return f"expected at least {ctx['min_length']} {unit}"
    if kind.endswith("too_long") and "max_length" in ctx:
        return f"expected at most {ctx['max_length']} {unit}"
    bounds = {"greater_than_equal": ("ge", "at least"), "less_than_equal": ("le", "at most"),
              "greater_than": ("gt", "more than"), "less_than": ("lt", "less than")}  # fmt: skip
    if kind in bounds and bounds[kind][0] in ctx:
        key, words = bounds[kind]
        return f"expected {words} {ctx[key]}"
    if kind == "value_error" and "error" in ctx:  # a model's own rule, in its own words
        return str(ctx["error"])
    return _WORDS.get(kind, str(error["msg"]))


def parse_body(
    model: type[M],
    data: Any,
    root: str = "body",
    *,
    strict: bool = True,
    error: type[BadRequest] = BadRequest,
) -> M:
    """``data`` (decoded JSON) as ``model``, or the first failure as ``error`` (a
    :class:`BadRequest`, or the body's own problem type where it has one, such as
    ``invalid-policy``). ``strict=False`` for query parameters, which are all text."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False, include_context=True)
        first = errors[0]
        where = _where(tuple(first["loc"]), root, str(first["type"]))
        raise error(f"{where}: {_words(first)}") from None


def _takes_int(annotation: Any) -> bool:
    """Whether a field is an integer (``int``, ``int | None``, annotated or not)."""
    if annotation is int:
        return True
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:
        args = args[:1]
    return any(_takes_int(a) for a in args)


def parse_query(model: type[M], args: Mapping[str, str]) -> M:
    """Query parameters as ``model``: its fields only (others are ignored, as HTTP caches
    and proxies add their own), integers written as plain decimal digits (``5``, never
    `` 5``, ``+5``, ``5.0`` or ``5_0``), the rest as text; then :func:`parse_body`."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        raw = args.get(name)
        if raw is None:
            continue
        if _takes_int(info.annotation):
            if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
                raise BadRequest(f"{name}: expected a non-negative integer")
            data[name] = int(raw)
        else:
            data[name] = raw
    return parse_body(model, data, "query")


def component_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema as an OpenAPI component: nested models refer to their own
    components (``#/components/schemas/Name``), which :func:`component_schemas` lists."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    if model.__doc__ and schema.get("description") == inspect.cleandoc(model.__doc__):
        # A docstring is for developers; a body's text for the document is given as
        # json_schema_extra={"description": ...} (which pydantic puts there instead).
        del schema["description"]
    return dict(_openapi(schema))


def _subclasses(cls: type[BaseModel]) -> dict[str, type[BaseModel]]:
    out: dict[str, type[BaseModel]] = {}
    for sub in cls.__subclasses__():
        out.setdefault(sub.__name__, sub)
        for name, found in _subclasses(sub).items():
            out.setdefault(name, found)
    return out


def component_schemas(models: Iterable[type[BaseModel]]) -> dict[str, dict[str, Any]]:
    """The OpenAPI components of ``models`` and of every model they contain, by class name
    (as :func:`component_schema` writes each). Two models of one name are refused: the
    document would name one of them wrongly."""
    models = list(dict.fromkeys(models))
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    classes = _subclasses(BaseModel)
    out: dict[str, dict[str, Any]] = {}
    for name, schema in top.get("$defs", {}).items():
        if "__" in name or "-" in name:  # pydantic's way of telling two models apart
            raise ValueError(f"models clash in the document: {name!r}")
        cls = classes.get(name)
        doc = inspect.cleandoc(cls.__doc__) if cls is not None and cls.__doc__ else None
        if doc is not None and schema.get("description") == doc:
            del schema["description"]
        out[name] = dict(_openapi(schema))
    return out


def _openapi(node: Any) -> Any:
    """Markers to ``$ref``s, pydantic's titles dropped, and ``anyOf: [X, {type: null}]``
    of a plain typed ``X`` written as ``X`` with ``type: [t, "null"]`` (what OpenAPI 3.1
    documents, and tools, read most easily)."""
    if isinstance(node, list):
        return [_openapi(n) for n in node]
    if not isinstance(node, dict):
        return node
    options = node.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (other,) = [o for o in options if o != {"type": "null"}]
        if isinstance(other.get("type"), str) and _MARK not in other:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            flat = {**other, **rest, "type": [other["type"], "null"]}
            if "enum" in flat:  # the enumeration must admit the null the type does
                flat["enum"] = [*flat["enum"], None]
            return _openapi(flat)
    if _MARK in node:
        siblings = {
            k: _openapi(v)
            for k, v in node.items()
            if k not in (_MARK, "title") and not (k == "default" and v is None)
        }
        return {"$ref": f"#/components/schemas/{node[_MARK]}", **siblings}
    return {
        k: _openapi(v)
        for k, v in node.items()
        if not (k == "title" and isinstance(v, str)) and not (k == "default" and v is None)
    }
