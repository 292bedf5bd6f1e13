"""gptoss_np.harmony against openai-harmony (the reference renderer and parser).

Needs the test-only package `openai-harmony` (pip install openai-harmony). It runs offline:
the fixture unpacks bpe-openai's o200k_base.tiktoken into a temporary folder and points
TIKTOKEN_ENCODINGS_BASE at it before openai-harmony loads its encoding.
"""

import datetime
import importlib.util
import itertools
import random

import pytest

from gptoss_np.harmony import StreamParser, parse_completion, render_conversation

if importlib.util.find_spec("openai_harmony") is None:  # imported only once the env is set
    pytest.skip("needs the test-only package openai-harmony", allow_module_level=True)
pytest.importorskip("bpe_openai")


@pytest.fixture(scope="session")
def harmony(tmp_path_factory, o200k_base_tiktoken):
    """openai_harmony and its HARMONY_GPT_OSS encoding, loaded offline."""
    folder = tmp_path_factory.mktemp("tiktoken_encodings")
    (folder / "o200k_base.tiktoken").write_bytes(o200k_base_tiktoken)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_ENCODINGS_BASE", str(folder))
        import openai_harmony

        encoding = openai_harmony.load_harmony_encoding(
            openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    return openai_harmony, encoding


def _reference_prompt(harmony, messages, effort, date, instructions, tools=None, builtin=()):
    """openai-harmony's completion prompt for the same conversation; `tools` as
    (name, description, parameters or None); `builtin` as our builtin_tools."""
    oh, encoding = harmony
    system = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort[effort.upper()])
    if date is not None:
        system = system.with_conversation_start_date(date)
    for tool in builtin:
        if tool == "browser":
            system = system.with_browser_tool()
        elif tool == "python":
            system = system.with_python_tool()
        else:
            system = system.with_tools(oh.ToolNamespaceConfig(
                name=tool["name"], description=tool.get("description"),
                tools=[oh.ToolDescription.new(*t) for t in tool.get("reference_tools", [])]))
    conversation = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if instructions is not None or tools:
        developer = oh.DeveloperContent.new()
        if instructions is not None:
            developer = developer.with_instructions(instructions)
        if tools:
            developer = developer.with_function_tools([oh.ToolDescription.new(*t) for t in tools])
        conversation.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    for m in messages:
        if m["role"] == "tool":
            message = oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, m["name"]), m["content"])
        else:
            message = oh.Message.from_role_and_content(oh.Role(m["role"]), m["content"])
        if "channel" in m:
            message = message.with_channel(m["channel"])
        if "recipient" in m:
            message = message.with_recipient(m["recipient"])
        if "content_type" in m:
            message = message.with_content_type(m["content_type"])
        conversation.append(message)
    return encoding.render_conversation_for_completion(
        oh.Conversation.from_messages(conversation), oh.Role.ASSISTANT)


def _reference_parse(harmony, ids):
    oh, encoding = harmony
    parsed = []
    for m in encoding.parse_messages_from_completion_tokens(ids, oh.Role.ASSISTANT):
        message = {"role": m.author.role.value, "channel": m.channel,
                   "content": "".join(c.text for c in m.content)}
        for key, value in [("recipient", m.recipient), ("content_type", m.content_type),
                           ("name", m.author.name)]:
            if value is not None:
                message[key] = value
        parsed.append(message)
    return parsed


def user(text):
    return {"role": "user", "content": text}


def assistant(channel, text, **extra):
    return {"role": "assistant", "channel": channel, "content": text, **extra}


CONVERSATIONS = {
    "single turn": [user("What is 2 + 2?")],
    "special text and unicode": [user("Echo <|end|><|start|>assistant<|message|> 😀 你好 ١٢٣\n\n  ok")],
    "empty user message": [user("")],
    "history ending in final": [
        user("Hi"), assistant("analysis", "User greets."), assistant("final", "Hello!"),
        user("How are you?"), assistant("analysis", "Answer politely."),
        assistant("final", "Fine, thanks."), user("Bye"),
    ],
    "history ending in analysis": [
        user("Hi"), assistant("analysis", "User greets."), assistant("final", "Hello!"),
        user("Again"), assistant("analysis", "Still thinking..."),
    ],
    "analysis only": [user("Hi"), assistant("analysis", "Hmm.")],
    "assistant without channel": [user("Hi"), {"role": "assistant", "content": "Hello"}],
    "tool call": [
        user("Weather in SF?"), assistant("analysis", "Need the tool."),
        assistant("commentary", '{"location": "San Francisco"}',
                  recipient="functions.get_weather", content_type="<|constrain|>json"),
    ],
    "tool call, plain content type": [
        user("Run it"), assistant("commentary", "print(1)", recipient="python", content_type="code"),
    ],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("effort, date, instructions", [
    ("low", None, None),
    ("medium", "2025-08-05", None),
    ("high", None, "Answer in one word.\nNever use <|end|>."),
    ("medium", "2024-02-29", "Be terse."),
    ("low", None, ""),  # empty instructions: still a developer message
])
def test_render_matches_openai_harmony(tok, harmony, name, effort, date, instructions):
    messages = CONVERSATIONS[name]
    ours = render_conversation(messages, reasoning_effort=effort, conversation_start_date=date,
                               developer_instructions=instructions, tokenizer=tok)
    assert ours == _reference_prompt(harmony, messages, effort, date, instructions)


WEATHER = {"type": "object", "properties": {
    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
    "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
    "days": {"type": "integer", "description": "Days ahead", "default": 0},
    "hours": {"type": "array", "items": {"type": "integer"}}}, "required": ["location"]}
SCHEMAS = {
    "weather": WEATHER,
    "scalars and defaults": {"type": "object", "properties": {
        "ratio": {"type": "number", "default": 1.5}, "strict": {"type": "boolean", "default": True},
        "note": {"type": "string", "default": "none 😀"}, "nothing": {"type": "null"},
        "options": {"type": "object", "default": {"a": [1, 2], "b": "c"}}, "maybe": {"type": "string", "default": None},
        "anything": {}, "list": {"type": "array"}, "enum ints": {"type": "string", "enum": [1, 2]}}},
    "titles, examples, nullable, type lists": {"type": "object", "properties": {
        "query": {"type": "string", "title": "Query", "description": "What to look for",
                  "examples": ["cats", "dogs", 3]},
        "limit": {"type": ["integer", "null"], "nullable": True},
        "id": {"type": ["string", "integer"]},
        "tag": {"type": "string", "nullable": True, "examples": []}}, "required": ["query", "id"]},
    "nested objects": {"type": "object", "description": "A whole order", "properties": {
        "customer": {"type": "object", "description": "Who orders", "properties": {
            "name": {"type": "string"}, "address": {"type": "object", "properties": {
                "city": {"type": "string", "description": "City"}}, "required": ["city"]}},
            "required": ["name"]},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "sku": {"type": "string"}, "count": {"type": "integer", "default": 1}}}}},
        "required": ["customer", "items"]},
    "oneOf properties": {"type": "object", "properties": {
        "when": {"description": "A date or a day count", "oneOf": [
            {"type": "string", "description": "A date or a day count"},
            {"type": "integer", "description": "Days from now", "default": 1}]},
        "unit": {"description": "The unit", "default": "km", "oneOf": [
            {"type": "string", "enum": ["km", "mi"], "default": "km", "description": "Metric or not"},
            {"type": "null", "nullable": True}]},
        "shape": {"oneOf": [{"type": "object", "properties": {"r": {"type": "number"}}},
                            {"type": "array", "items": {"type": "number"}, "description": "Corners"}]},
        "level": {"description": "Level", "oneOf": [{"type": "integer", "description": "Level"},
                                                    {"type": "string", "description": "Level"}]},
        "none": {"oneOf": []}}, "required": ["when"]},
    "oneOf at the top": {"oneOf": [
        {"type": "object", "properties": {"a": {"type": "string"}}, "description": "By name"},
        {"type": "string", "enum": ["x", "y"], "default": "x"}, {"type": "integer", "nullable": True}]},
    "empty object": {"type": "object", "properties": {}},
    "non-ASCII in JSON defaults": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "default": ["café", "日本"]},
        "labels": {"type": "object", "default": {"ñ": "ü"}}}},
    "object without properties": {"type": "object"},
}
TOOLSETS = {
    "weather": [("get_location", "Gets the location of the user.", None),
                ("get_current_weather", "Gets the current weather in the provided location.", WEATHER)],
    **{f"schema {name}": [("do_it", "Does it.\nIn two lines.", schema)] for name, schema in SCHEMAS.items()},
    "descriptions": [("a", "", None), ("b", "CRLF\r\nlines\n\nwith a blank one\n", None),
                     ("c-d", "  indented // comment", {"type": "object", "properties": {"x": {"type": "string"}}})],
}


def tool_dicts(tools):
    """(name, description, parameters or None) as our tools: dicts, without parameters where None."""
    return [{"name": n, "description": d, **({"parameters": p} if p else {})} for n, d, p in tools]


@pytest.mark.parametrize("name", TOOLSETS)
@pytest.mark.parametrize("instructions", [None, "Use the tools."])
def test_render_with_tools_matches_openai_harmony(tok, harmony, name, instructions):
    tools = TOOLSETS[name]
    ours = render_conversation([user("Hi")], reasoning_effort="low", developer_instructions=instructions,
                               tools=tool_dicts(tools), tokenizer=tok)
    assert ours == _reference_prompt(harmony, [user("Hi")], "low", None, instructions, tools)


def test_render_a_tool_call_and_its_result_matches_openai_harmony(tok, harmony):
    tools = TOOLSETS["weather"]
    call = assistant("commentary", '{"location": "Paris"}', recipient="functions.get_current_weather",
                     content_type="<|constrain|>json")
    result = {"role": "tool", "name": "functions.get_current_weather", "content": '{"temperature": 21}'}
    messages = [user("Weather in Paris?"), assistant("analysis", "Call the tool."), call, result]
    reference = _reference_prompt(harmony, messages[:-1] + [{**result, "recipient": "assistant",
                                                             "channel": "commentary"}], "medium", None, None, tools)
    openai_style = [{"type": "function", "function": tool} for tool in tool_dicts(tools)]
    assert render_conversation(messages, tools=openai_style, tokenizer=tok) == reference
    text = tok.decode(reference)
    assert "<|start|>functions.get_current_weather to=assistant<|channel|>commentary<|message|>" in text
    # a result sent elsewhere, as the caller says
    elsewhere = {**result, "channel": "analysis", "recipient": "all"}
    assert render_conversation(messages[:-1] + [elsewhere], tools=openai_style, tokenizer=tok) == _reference_prompt(
        harmony, messages[:-1] + [elsewhere], "medium", None, None, tools)


STATELESS_PYTHON = {"name": "python", "description": "Use this tool to execute Python code.\nWhen you send a "
                    "message containing python code to python, it will be executed in a stateless sandbox."}
CALCULATOR = ("add", "Adds two numbers.", {"type": "object", "properties": {"a": {"type": "number"},
                                                                              "b": {"type": "number"}}})
BUILTIN_SETS = {
    "python": ["python"],
    "browser": ["browser"],
    "both": ["python", "browser"],
    "both, other order": ["browser", "python"],
    "python described otherwise": [STATELESS_PYTHON],
    "a namespace of one's own": ["python", {"name": "calc", "description": "Arithmetic.\nExact.",
                                            "tools": tool_dicts([CALCULATOR]), "reference_tools": [CALCULATOR]}],
    "a namespace without description": [{"name": "calc", "tools": tool_dicts([CALCULATOR]),
                                         "reference_tools": [CALCULATOR]}],
}


@pytest.mark.parametrize("name", BUILTIN_SETS)
@pytest.mark.parametrize("date, functions", [(None, None), ("2025-08-05", "weather")])
def test_render_with_builtin_tools_matches_openai_harmony(tok, harmony, name, date, functions):
    builtin = BUILTIN_SETS[name]
    tools = TOOLSETS[functions] if functions else None
    ours = render_conversation([user("Hi")], reasoning_effort="high", conversation_start_date=date,
                               tools=tool_dicts(tools) if tools else None, builtin_tools=builtin, tokenizer=tok)
    assert ours == _reference_prompt(harmony, [user("Hi")], "high", date, None, tools, builtin)


def test_builtin_tool_calls_and_results_match_openai_harmony(tok, harmony):
    """A python call on the analysis channel and a browser call on commentary: each result goes back on
    its call's channel unless it names one."""
    python_call = assistant("analysis", "print(6 * 7)", recipient="python", content_type="code")
    search = assistant("commentary", '{"query": "gpt-oss"}', recipient="browser.search",
                       content_type="<|constrain|>json")
    messages = [user("Compute, then search."), python_call, {"role": "tool", "name": "python", "content": "42\n"},
                search, {"role": "tool", "name": "browser.search", "content": "[0] gpt-oss (openai.com)"},
                python_call, {"role": "tool", "name": "python", "channel": "commentary", "content": "42\n"}]
    addressed = [m if m["role"] != "tool" else {"recipient": "assistant", "channel": c, **m}
                 for m, c in zip(messages, [None, None, "analysis", None, "commentary", None, None])]
    ours = render_conversation(messages, builtin_tools=["browser", "python"], tokenizer=tok)
    assert ours == _reference_prompt(harmony, addressed, "medium", None, None, None, ["browser", "python"])
    text = tok.decode(ours)
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42\n<|end|>" in text
    assert "<|start|>browser.search to=assistant<|channel|>commentary<|message|>" in text


def test_render_rejects_bad_builtin_tools(tok):
    for bad in (["shell"], [{"description": "no name"}], [{"name": "python", "description": 3}], [{"name": "x"}]):
        with pytest.raises(ValueError, match="built-in tool|description"):
            render_conversation([user("Hi")], builtin_tools=bad, tokenizer=tok)


def test_a_parsed_tool_call_goes_back_into_the_conversation(tok, harmony):
    """The loop that Chat runs: parse what the model wrote, append it and the tool's result, render."""
    written = _ids(tok, "<|channel|>", "analysis", "<|message|>", "Need weather.", "<|end|>", "<|start|>",
                   "assistant", "<|channel|>", "commentary", " to=functions.get_current_weather", " ",
                   "<|constrain|>", "json", "<|message|>", '{"location": "SF"}', "<|call|>")
    replies = parse_completion(written, tokenizer=tok)
    assert replies[-1]["recipient"] == "functions.get_current_weather"
    result = {"role": "tool", "name": replies[-1]["recipient"], "content": "sunny"}
    messages = [user("Weather?"), *replies, result]
    tools = TOOLSETS["weather"]
    ours = render_conversation(messages, tools=[{"name": n, "description": d, "parameters": p} for n, d, p in tools],
                               tokenizer=tok)
    reference = [{k: v for k, v in m.items() if v is not None} for m in messages[:-1]]
    assert ours == _reference_prompt(harmony, reference + [{**result, "recipient": "assistant",
                                                            "channel": "commentary"}], "medium", None, None, tools)


def test_render_rejects_bad_tools(tok):
    with pytest.raises(ValueError, match="name"):
        render_conversation([user("Hi")], tools=[{"description": "no name"}], tokenizer=tok)
    with pytest.raises(ValueError, match="parameters"):
        render_conversation([user("Hi")], tools=[{"name": "f", "parameters": "x"}], tokenizer=tok)
    for name in ("get weather", "get\tweather", "get\u3000weather"):  # a recipient's name ends at a space
        with pytest.raises(ValueError, match="a tool needs a name without spaces"):
            render_conversation([user("Hi")], tools=[{"name": name}], tokenizer=tok)
    with pytest.raises(ValueError, match="tool's name"):
        render_conversation([{"role": "tool", "content": "42"}], tokenizer=tok)


def test_render_drops_analysis_before_the_first_final(tok):
    messages = CONVERSATIONS["history ending in final"]
    text = tok.decode(render_conversation(messages, tokenizer=tok))
    assert "User greets." not in text and "Answer politely." in text
    kept = tok.decode(render_conversation(CONVERSATIONS["history ending in analysis"], tokenizer=tok))
    assert "User greets." in kept and "Still thinking..." in kept


def test_render_prompt_shape(tok):
    ids = render_conversation([user("Hi")], reasoning_effort="high",
                              conversation_start_date=datetime.date(2025, 1, 2), tokenizer=tok)
    text = tok.decode(ids)
    assert text.startswith("<|start|>system<|message|>") and text.endswith("<|start|>assistant")
    assert "Current date: 2025-01-02\n\nReasoning: high\n\n" in text
    assert ids[-2:] == [200006, tok.encode("assistant")[0]]


def test_render_default_tokenizer_comes_from_the_cache(tok, cache_dir, monkeypatch):
    monkeypatch.setenv("GPTOSS_NP_CACHE", str(cache_dir))
    assert render_conversation([user("Hi")]) == render_conversation([user("Hi")], tokenizer=tok)


def test_render_rejects_bad_arguments(tok):
    with pytest.raises(ValueError, match="reasoning_effort"):
        render_conversation([user("Hi")], reasoning_effort="extreme", tokenizer=tok)
    with pytest.raises(ValueError, match="role"):
        render_conversation([{"role": "system", "content": "x"}], tokenizer=tok)


def _ids(tok, *parts):
    """Token ids of parts, where a part that is a special token's name is that token."""
    specials = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
                "<|constrain|>")
    return list(itertools.chain.from_iterable(
        [tok.special_id(p)] if p in specials else tok.encode(p) for p in parts))


COMPLETIONS = [
    ("<|channel|>", "analysis", "<|message|>", "Let me think 😀 about 你好.", "<|end|>",
     "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "Answer!", "<|return|>"),
    ("<|channel|>", "analysis", "<|message|>", "Need weather.", "<|end|>", "<|start|>",
     "assistant", "<|channel|>", "commentary", " to=functions.get_weather", " ", "<|constrain|>",
     "json", "<|message|>", '{"location": "SF"}', "<|call|>"),
    ("<|channel|>", "final", "<|message|>", "cut off in the midd"),
    ("<|channel|>", "final", "<|message|>", "text with <|end|> inside", "<|return|>"),
    ("<|channel|>", "final", "<|message|>", "<|start|>x<|channel|>", "<|end|>"),
    (" to=python", "<|channel|>", "analysis code", "<|message|>", "print(1)", "<|call|>"),
    ("<|message|>", "no channel", "<|end|>"),
    ("<|channel|>", "final", "<|message|>", "", "<|end|>"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>",
     "functions.lookup to=assistant", "<|channel|>", "commentary", "<|message|>", "sunny", "<|end|>"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "assistant",
     " <|constrain|>json", "<|message|>", "{}", "<|end|>"),
    ("<|channel|>", "final\u3000to=bob", "<|message|>", "x"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "tool to=assistant",
     "<|channel|>", "commentary", "<|message|>", "y", "<|end|>"),
    # headers with whitespace beyond ASCII: harmony splits a header only at ASCII blanks, and \x1c (a blank
    # to Python's str.strip and str.split) is none to it
    ("<|channel|>", "final", " to=bob\x1c", "<|message|>", "x", "<|end|>"),
    ("<|channel|>", "final", " to=bob\u2003json", "<|message|>", "x", "<|end|>"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "assistant to=bob\u3000json",
     "<|channel|>", "final", "<|message|>", "y", "<|end|>"),
]


@pytest.mark.parametrize("parts", COMPLETIONS, ids=range(len(COMPLETIONS)))
def test_parse_matches_openai_harmony(tok, harmony, parts):
    ids = _ids(tok, *parts)
    assert parse_completion(ids, tokenizer=tok) == _reference_parse(harmony, ids)


def test_parse_matches_openai_harmony_on_broken_utf8(tok, harmony):
    rng = random.Random(5)
    for _ in range(20):
        ids = _ids(tok, "<|channel|>", "final", "<|message|>") + [rng.randrange(199998) for _ in range(30)]
        assert parse_completion(ids, tokenizer=tok) == _reference_parse(harmony, ids)
    lead = tok.hf.token_to_id("\u00e2")  # the byte-level token of 0xe2 alone: a 3-byte character's first byte
    assert tok.decode_bytes([lead]) == b"\xe2"
    for end in ([tok.end], []):  # a message, ended or cut off, whose content ends inside a character
        ids = _ids(tok, "<|channel|>", "final", "<|message|>", "ok") + [lead] + end
        assert parse_completion(ids, tokenizer=tok) == _reference_parse(harmony, ids)


def _random_completion(rng: random.Random) -> list[str]:
    """Parts of a completion: messages with random headers (roles, tool names, channels, recipients,
    constraints) and contents, some cut short, one part in five replaced by any other."""
    words = ["assistant", "user", "system", "developer", "tool", "analysis", "final", "commentary", "code",
             " to=functions.f", "to=python", " json", "json", " ", "x", "hello world", "😀", "你好", "\n", "=",
             "to=", "<|", "\u3000", " <|constrain|>json", "final to=bob", "functions.f to=assistant"]
    specials = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"]

    def message() -> list[str]:
        parts = ["<|channel|>", rng.choice(["analysis", "final", "commentary", rng.choice(words)])] \
            if rng.random() < 0.9 else []
        if rng.random() < 0.3:
            parts.append(rng.choice([" to=functions.get", " to=python", " to=browser.open"]))
        if rng.random() < 0.2:
            parts += [" ", "<|constrain|>", rng.choice(["json", " json"])]
        parts += ["<|message|>", *(rng.choice(words) for _ in range(rng.randint(0, 4)))]
        return parts + [rng.choice(["<|end|>", "<|end|>", "<|return|>", "<|call|>", "x"])]

    parts = message()
    for _ in range(rng.randint(0, 3)):
        heads = ["assistant", "assistant ", "tool", "tool to=assistant", "functions.f to=assistant", "user"]
        parts += ["<|start|>", rng.choice(heads), *message()]
    if rng.random() < 0.2:
        parts[rng.randrange(len(parts))] = rng.choice(specials + words)
    return parts


def test_parse_matches_openai_harmony_on_random_completions(tok, harmony):
    """Accepted or rejected alike, and parsed alike when accepted, in batch and streaming."""
    oh, encoding = harmony
    rng, accepted = random.Random(11), 0
    for _ in range(1500):
        ids = _ids(tok, *_random_completion(rng))
        try:
            reference = _reference_parse(harmony, ids)
        except Exception:
            with pytest.raises(ValueError) as rejected:
                parse_completion(ids, tokenizer=tok)
            assert type(rejected.value) is ValueError  # the parser's rejection, not a stray UnicodeDecodeError
            continue
        accepted += 1
        assert parse_completion(ids, tokenizer=tok) == reference, tok.decode(ids)
        stream, streamed = StreamParser(tok), oh.StreamableParser(encoding, oh.Role.ASSISTANT)
        for i in ids:
            streamed.process(i)
            assert stream.push(i) == (streamed.last_content_delta or "")
            assert (stream.channel, stream.recipient) == (streamed.current_channel, streamed.current_recipient)
    assert 500 < accepted < 1400  # both kinds are exercised


MALFORMED = [
    ("<|channel|>", "final"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "hello"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "bogus", "<|message|>"),
    ("<|channel|>", " final", "<|message|>", "x"),
    ("<|channel|>", "final", " a b c", "<|message|>", "x"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "<|message|>", "y"),
    ("<|channel|>", "final", "<|message|>", "x", "<|return|>", "<|end|>"),
    # a role's header with whitespace beyond ASCII (see COMPLETIONS)
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "assistant\x1c", "<|channel|>", "final",
     "<|message|>", "y", "<|end|>"),
    ("<|channel|>", "final", "<|message|>", "x", "<|end|>", "<|start|>", "functions.f\xa0to=assistant",
     "<|channel|>", "commentary", "<|message|>", "y", "<|end|>"),
]


@pytest.mark.parametrize("parts", MALFORMED, ids=range(len(MALFORMED)))
def test_parse_rejects_what_openai_harmony_rejects(tok, harmony, parts):
    ids = _ids(tok, *parts)
    with pytest.raises(Exception):
        _reference_parse(harmony, ids)
    with pytest.raises(ValueError) as rejected:
        parse_completion(ids, tokenizer=tok)
    assert type(rejected.value) is ValueError  # the parser's rejection, not a stray UnicodeDecodeError


def test_stream_parser_follows_openai_harmony(tok, harmony):
    oh, encoding = harmony
    ids = _ids(tok, *COMPLETIONS[0]) + _ids(tok, "<|start|>", "assistant", *COMPLETIONS[1])
    reference = oh.StreamableParser(encoding, oh.Role.ASSISTANT)
    ours = StreamParser(tok)
    for i in ids:
        reference.process(i)
        delta = ours.push(i)
        assert delta == (reference.last_content_delta or "")
        assert ours.channel == reference.current_channel
        assert ours.recipient == reference.current_recipient
        assert ours.role == (reference.current_role.value if reference.current_role else None)
    assert ours.finish() == _reference_parse(harmony, ids)


def test_stream_parser_reports_channels_for_display(tok):
    ids = _ids(tok, *COMPLETIONS[0])
    parser = StreamParser(tok)
    shown = {"analysis": "", "final": ""}
    for i in ids:
        delta = parser.push(i)
        if delta:
            assert parser.in_content
            shown[parser.channel] += delta
    assert shown == {"analysis": "Let me think 😀 about 你好.", "final": "Answer!"}
