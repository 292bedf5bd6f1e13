"""Function tools in the harmony format: the `# Tools` section of the developer message.

gpt-oss reads the functions it may call as TypeScript declarations in a `functions` namespace:

    # Tools

    ## functions

    namespace functions {

    // Gets the current weather in the provided location.
    type get_current_weather = (_: {
    // The city and state, e.g. San Francisco, CA
    location: string,
    format?: "celsius" | "fahrenheit", // default: celsius
    }) => any;

    } // namespace functions

A tool is a dict `{"name", "description", "parameters"}` (parameters: a JSON Schema, optional), or the
OpenAI API's `{"type": "function", "function": {...}}` around one. The schema becomes TypeScript by
openai-harmony's rules, character for character: properties in the given order, `?` on those not
required, descriptions, titles and examples as comments above a property, defaults after it, enums
as unions of string literals, `oneOf` as a union with one variant a line.
"""

from __future__ import annotations

import json

NAMESPACE = "functions"
CHANNEL_RULE = f"Calls to these tools must go to the commentary channel: '{NAMESPACE}'."


def tools_section(tools: list[dict]) -> str:
    """The developer message's `# Tools` section declaring `tools` in the functions namespace."""
    lines = [f"## {NAMESPACE}", "", f"namespace {NAMESPACE} {{", ""]
    for tool in tools:
        name, description, parameters = _function(tool)
        lines += [f"// {line}" for line in _lines(description)]
        arguments = "" if parameters is None else f"_: {typescript(parameters)}"
        lines += [f"type {name} = ({arguments}) => any;", ""]
    lines.append(f"}} // namespace {NAMESPACE}")
    return "# Tools\n\n" + "\n".join(lines)


def _function(tool: dict) -> tuple[str, str, dict | None]:
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    name, description, parameters = tool.get("name"), tool.get("description", ""), tool.get("parameters")
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"a tool needs a name without spaces, got {name!r}")
    if not isinstance(description, str) or not (parameters is None or isinstance(parameters, dict)):
        raise ValueError(f"tool {name!r}: description must be a string and parameters a JSON Schema dict")
    return name, description, parameters


def _lines(text: str) -> list[str]:
    """Rust's str::lines: split at \\n (dropping a \\r before it), no empty last line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def typescript(schema, indent: str = "") -> str:
    """A JSON Schema as a TypeScript type; nested lines start with `indent`. What is not a schema
    (a list, a number) is `any`."""
    schema = _as_dict(schema)
    if isinstance(schema.get("oneOf"), list):
        return "".join(f"\n{indent} | " + _variant(v, indent, quote_enum_default=True) for v in schema["oneOf"])
    kind = schema.get("type")
    if isinstance(kind, list) and any(isinstance(k, str) for k in kind):
        return " | ".join(_SCALARS.get(k, k) for k in kind if isinstance(k, str))
    if kind == "object":
        return _object(schema, indent)
    if kind == "string":
        return " | ".join(f'"{v}"' for v in _list(schema, "enum") if isinstance(v, str)) or "string"
    if kind == "array":
        return f"{typescript(schema['items'], indent)}[]" if "items" in schema else "Array<any>"
    return _SCALARS.get(kind, "any") if isinstance(kind, str) else "any"


_SCALARS = {"number": "number", "integer": "number", "boolean": "boolean"}


def _object(schema: dict, indent: str) -> str:
    out = f"{indent}// {schema['description']}\n" if isinstance(schema.get("description"), str) else ""
    out += "{\n"
    required = {r for r in _list(schema, "required") if isinstance(r, str)}
    properties = schema.get("properties")
    for key, prop in (properties.items() if isinstance(properties, dict) else ()):
        prop, optional = _as_dict(prop), ("" if key in required else "?")
        if isinstance(prop.get("title"), str):
            out += f"{indent}// {prop['title']}\n{indent}//\n"
        description = prop["description"] if isinstance(prop.get("description"), str) else None
        if description is not None and "oneOf" not in prop:
            out += f"{indent}// {description}\n"
        if examples := _list(prop, "examples"):
            out += f"{indent}// Examples:\n" + "".join(f'{indent}// - "{e}"\n' for e in examples if isinstance(e, str))
        if isinstance(prop.get("oneOf"), list):
            out += _union_property(key + optional, prop, description, indent)
            continue
        out += f"{indent}{key}{optional}: {_nullable(prop, typescript(prop, indent + '    '))},"
        if "oneOf" not in prop and "default" in prop:
            out += f" // {_default(prop, quote_enum=False)}"
        out += "\n"
    return out + f"{indent}}}"


def _union_property(name: str, prop: dict, description: str | None, indent: str) -> str:
    """A property with `oneOf`: its comments, its name, then a line per variant. The property's
    description goes above unless the first variant's is the same; a variant's own description goes
    after it unless it is the property's, or it is the first variant's below a description above."""
    variants = [_as_dict(v) for v in prop["oneOf"]]
    above = description is not None and (not variants or variants[0].get("description") != description)
    out = f"{indent}// {description}\n" if above else ""
    if "default" in prop:
        out += f"{indent}// {_default(prop, quote_enum=False)}\n"
    out += f"{indent}{name}:\n"
    for i, variant in enumerate(variants):
        described = not (i == 0 and above) and variant.get("description") != description
        out += f"{indent} | {_variant(variant, indent, quote_enum_default=False, described=described)}\n"
    return out + f"{indent},\n"


def _variant(variant, indent: str, quote_enum_default: bool, described: bool = True) -> str:
    """One member of a union, then its description (if `described`) and default as a comment."""
    variant = _as_dict(variant)
    comments = []
    if described and isinstance(variant.get("description"), str):
        comments.append(variant["description"])
    if "default" in variant:
        comments.append(_default(variant, quote_enum=quote_enum_default))
    out = _nullable(variant, typescript(variant, indent + "   "))
    return out + (f" // {' '.join(comments)}" if comments else "")


def _nullable(schema: dict, text: str) -> str:
    return f"{text} | null" if schema.get("nullable") is True and "null" not in text else text


def _default(schema: dict, quote_enum: bool) -> str:
    """`default: ...`: a string in quotes as written, an enum's string bare (or as JSON with
    quote_enum), anything else as compact JSON."""
    value = schema["default"]
    if isinstance(value, str) and not _list(schema, "enum"):
        return f'default: "{value}"'
    if isinstance(value, str) and not quote_enum:
        return f"default: {value}"
    return "default: " + json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(schema: dict, key: str) -> list:
    value = schema.get(key)
    return value if isinstance(value, list) else []
