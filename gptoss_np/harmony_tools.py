"""Tools in the harmony format: the `# Tools` sections of the developer and the system message.

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

gpt-oss also knows two built-in tools, declared in the system message instead: `browser` (a namespace
of three functions: search, open, find) and `python` (code sent to it as the message's text). Their
declarations here are openai-harmony's defaults (`ToolNamespaceConfig.browser()` and `.python()`); a
namespace dict `{"name", "description", "tools"}` replaces one, e.g. a python tool that describes the
sandbox it really runs in.
"""

from __future__ import annotations

import json

NAMESPACE = "functions"
CHANNEL_RULE = f"Calls to these tools must go to the commentary channel: '{NAMESPACE}'."


def tools_section(tools: list[dict]) -> str:
    """The developer message's `# Tools` section declaring `tools` in the functions namespace."""
    _check_list("tools", tools, "[{'name': 'get_weather', 'description': ..., 'parameters': ...}]")
    return "# Tools\n\n" + namespace_section(NAMESPACE, "", tools)


def _check_list(argument: str, value, example: str) -> None:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{argument} is a list, e.g. {example}, got {value!r:.80}")


def builtin_tools_section(builtin_tools) -> str:
    """The system message's `# Tools` section: each of `builtin_tools` ("browser", "python", or a
    namespace dict) in the order of their names, as openai-harmony keeps them."""
    _check_list("builtin_tools", builtin_tools, "['python']")
    namespaces = {}
    for tool in builtin_tools:
        namespace = BUILTIN[tool] if isinstance(tool, str) and tool in BUILTIN else tool
        if not isinstance(namespace, dict) or not isinstance(namespace.get("name"), str):
            raise ValueError(f"a built-in tool is 'browser', 'python' or a dict {{'name', 'description', "
                             f"'tools'}}, got {tool!r}")
        namespaces[namespace["name"]] = namespace
    sections = [namespace_section(n["name"], n.get("description") or "", n.get("tools") or ())
                for _, n in sorted(namespaces.items())]
    return "# Tools\n\n" + "\n\n".join(sections)


def namespace_section(namespace: str, description: str, tools) -> str:
    """`## namespace`, then its description (as `//` comments above the declarations, or as plain
    text when it holds no function), then its functions as TypeScript declarations."""
    if not isinstance(description, str):
        raise ValueError(f"namespace {namespace!r}: its description must be a string")
    lines = [f"## {namespace}", ""]
    if not tools:
        if not description:
            raise ValueError(f"namespace {namespace!r} declares nothing: give it a description or tools")
        return "\n".join([*lines, description])
    lines += [f"// {line}" for line in _lines(description)]
    lines += [f"namespace {namespace} {{", ""]
    for tool in tools:
        name, about, parameters = _function(tool)
        lines += [f"// {line}" for line in _lines(about)]
        arguments = "" if parameters is None else f"_: {typescript(parameters)}"
        lines += [f"type {name} = ({arguments}) => any;", ""]
    lines.append(f"}} // namespace {namespace}")
    return "\n".join(lines)


def _function(tool: dict) -> tuple[str, str, dict | None]:
    if not isinstance(tool, dict):
        raise ValueError(f"a tool is a dict {{'name', 'description', 'parameters'}}, got {tool!r:.80}")
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


def _number(default=None) -> dict:
    return {"type": "number"} if default is None else {"type": "number", "default": default}


# The built-in tools as openai-harmony declares them by default (the text gpt-oss was trained with).
BROWSER = {
    "name": "browser",
    "description": "Tool for browsing.\n"
                   "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
                   "Cite information from the tool using the following format:\n"
                   "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
                   "Do not quote more than 10 words directly from the tool output.\n"
                   "sources=web (default: web)",
    "tools": [
        {"name": "search",
         "description": "Searches for information related to `query` and displays `topn` results.",
         "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "topn": _number(10),
                                                         "source": {"type": "string"}},
                        "required": ["query"]}},
        {"name": "open",
         "description": "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, "
                        "showing `num_lines` lines.\n"
                        "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
                        "If `cursor` is not provided, the most recent page is implied.\n"
                        "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
                        "If `loc` is not provided, the viewport will be positioned at the beginning of the document "
                        "or centered on the most relevant passage, if available.\n"
                        "Use this function without `id` to scroll to a new location of an opened page.",
         "parameters": {"type": "object", "properties": {
             "id": {"type": ["number", "string"], "default": -1}, "cursor": _number(-1), "loc": _number(-1),
             "num_lines": _number(-1), "view_source": {"type": "boolean", "default": False},
             "source": {"type": "string"}}}},
        {"name": "find",
         "description": "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
         "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}, "cursor": _number(-1)},
                        "required": ["pattern"]}},
    ],
}
PYTHON = {
    "name": "python",
    "description": "Use this tool to execute Python code in your chain of thought. The code will not be shown to the "
                   "user. This tool should be used for internal reasoning, but not for code that is intended to be "
                   "visible to the user (e.g. when creating plots, tables, or files).\n\n"
                   "When you send a message containing Python code to python, it will be executed in a stateful "
                   "Jupyter notebook environment. python will respond with the output of the execution or time out "
                   "after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. "
                   "Internet access for this session is UNKNOWN. Depends on the cluster.",
    "tools": [],
}
BUILTIN = {"browser": BROWSER, "python": PYTHON}
