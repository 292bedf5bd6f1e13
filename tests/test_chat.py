"""gptoss_np.Chat: a conversation's prompts are harmony's rendering of it (tested against openai-harmony in
test_harmony), its replies are model.generate's, parsed back into messages, and it fits the context."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import json
import re

import pytest

import gptoss_np
from conftest import completion_ids
from gptoss_np import embedded, harmony

TOOLS = [{"name": "get_weather", "description": "Current weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


@pytest.fixture(scope="module")
def model(cache_dir):
    """The embedded tiny model (random weights, gpt-oss's vocabulary): its replies are not harmony."""
    return gptoss_np.load(embedded.default_checkpoint(cache_dir))



def stops(tok):
    """Where a reply ends: harmony's <|return|> and <|call|>, and <|endoftext|> (gpt-oss's generation_config)."""
    return [tok.return_, tok.call, tok.special_id("<|endoftext|>")]


class Scripted:
    """A stand-in model that writes the given replies in turn (each up to a stop id) and records each generate call."""

    def __init__(self, context: int, *replies: list[int]):
        self.config = dataclasses.make_dataclass("Config", ["max_position_embeddings"])(context)
        self.replies, self.calls = list(replies), []

    def generate(self, prompt, max_new_tokens, **kwargs):
        self.calls.append((list(prompt), max_new_tokens, kwargs))
        for token in self.replies.pop(0)[:max_new_tokens]:
            yield token
            if token in kwargs["stop_ids"]:
                break


def test_greedy_turns_equal_generate_on_the_rendered_conversation(model, tok):
    """Two turns: each prompt is the rendered conversation so far; each reply is generate's greedy
    continuation of it (the untrained model's text is not harmony: one final message holds it)."""
    chat = gptoss_np.Chat(model, tok, reasoning_effort="high", instructions="Be brief.")
    expected = []
    for text in ("Why is the sky blue?", "And at sunset?"):
        expected.append({"role": "user", "content": text})
        prompt = harmony.render_conversation(expected, reasoning_effort="high", developer_instructions="Be brief.",
                                             conversation_start_date=datetime.date.today(), tokenizer=tok)
        ids = list(model.generate(prompt, 12, stop_ids=stops(tok)))
        reply = chat.send(text, 12)
        expected.append({"role": "assistant", "channel": "final", "content": tok.decode(ids)})
        assert reply == expected[-1:]
        assert chat.messages == expected
    assert chat.prompt_cache.reused > 0  # the second turn extended the first


def test_sampling_settings_reach_generate(model, tok):
    chat = gptoss_np.Chat(model, tok)
    first = chat.send("Hi", 8, temperature=1.0, top_p=0.9, seed=3)
    prompt = harmony.render_conversation([{"role": "user", "content": "Hi"}], tokenizer=tok,
                                         conversation_start_date=datetime.date.today())
    ids = list(model.generate(prompt, 8, temperature=1.0, top_p=0.9, seed=3, stop_ids=stops(tok)))
    assert first[0]["content"] == tok.decode(ids)


def test_the_greedy_filters_warning_points_at_the_users_line(model, tok):
    """A filter at temperature 0 changes nothing: generate's warning names the line that called Chat,
    through send and stream as through model.generate (test_model), not a line of the library."""
    chat = gptoss_np.Chat(model, tok)
    with pytest.warns(UserWarning, match="at temperature 0.*greedy") as caught:
        chat.send("Hi", 2, top_k=5)
    with pytest.warns(UserWarning, match="at temperature 0.*greedy") as streamed:
        list(chat.stream("Hi", 2, top_p=0.5))
    assert [w.filename for w in [*caught, *streamed]] == [__file__, __file__]


def test_a_tool_call_is_answered_with_the_tools_result(tok):
    """The README's loop: the reply ends with a call; the tool's result goes back; the answer follows."""
    call = completion_ids(tok, ("analysis", None, "Need the weather."), ("commentary", "functions.get_weather",
                                                                   '{"city": "Paris"}'), end="<|call|>")
    answer = completion_ids(tok, ("final", None, "Take an umbrella."))
    model = Scripted(4096, call, answer)
    chat = gptoss_np.Chat(model, tok, tools=TOOLS, conversation_start_date="2025-06-01")
    reply = chat.send("Do I need an umbrella in Paris?", 64)
    assert [(m["channel"], m.get("recipient")) for m in reply] == [("analysis", None),
                                                                   ("commentary", "functions.get_weather")]
    assert json.loads(reply[-1]["content"]) == {"city": "Paris"}
    result = {"role": "tool", "name": reply[-1]["recipient"], "content": json.dumps({"rain": True})}
    assert chat.send(result, 64) == [{"role": "assistant", "channel": "final", "content": "Take an umbrella."}]
    conversation = [{"role": "user", "content": "Do I need an umbrella in Paris?"}, *reply, result]
    assert model.calls[1][0] == harmony.render_conversation(conversation, tools=TOOLS, tokenizer=tok,
                                                            conversation_start_date="2025-06-01")
    assert all(list(kwargs["stop_ids"]) == stops(tok) for _, _, kwargs in model.calls)


def test_the_oldest_turns_are_left_out_to_fit_the_context(tok):
    """Each prompt leaves room for a whole reply: the oldest turns go, whole, from a user message on."""
    replies = [completion_ids(tok, ("final", None, f"answer {i}")) for i in range(8)]
    model = Scripted(160, *replies)
    chat = gptoss_np.Chat(model, tok)
    for i in range(8):
        chat.send(f"question {i}", 20)
        prompt, budget, _ = model.calls[-1]
        assert len(prompt) + budget <= 160 and budget == 20
        assert chat.messages[0]["role"] == "user" and chat.messages[-2]["content"] == f"question {i}"
        assert prompt == harmony.render_conversation(chat.messages[:-1], tokenizer=tok,
                                                     conversation_start_date=datetime.date.today())
    assert len(chat.messages) < 16  # turns were left out
    held = len(chat.messages)
    assert chat.add("one more", room=10**6) == held  # all but the new message
    assert chat.messages == [{"role": "user", "content": "one more"}]


def test_a_turn_renders_the_conversation_once_and_sees_changes_made_in_place(tok, monkeypatch):
    """Fitting a turn into the context and sending it take one rendering (30 ms at 28k tokens); a message
    or setting changed in place after it is rendered anew."""
    renders = []
    render = harmony.render_conversation
    monkeypatch.setattr(harmony, "render_conversation", lambda *a, **k: renders.append(1) or render(*a, **k))
    model = Scripted(4096, completion_ids(tok, ("final", None, "one")), completion_ids(tok, ("final", None, "two")))
    chat = gptoss_np.Chat(model, tok)
    for i in range(2):
        renders.clear()
        chat.send(f"question {i}", 20)
        assert len(renders) == 1
    chat.messages[0]["content"] = "question zero"
    chat.settings["reasoning_effort"] = "high"
    assert chat.prompt() == render(chat.messages, tokenizer=tok, reasoning_effort="high",
                                   conversation_start_date=datetime.date.today())


def test_a_turn_that_cannot_fit_is_an_error_and_changes_nothing(tok):
    chat = gptoss_np.Chat(Scripted(60, []), tok)
    with pytest.raises(ValueError, match="fills the model's context of 60 tokens"):
        chat.send("a question " * 40)
    assert chat.messages == []
    with pytest.raises(ValueError, match="role"):
        chat.add({"role": "system", "content": "no"})
    assert chat.messages == []
    with pytest.raises(ValueError, match="reasoning_effort"):
        gptoss_np.Chat(Scripted(60), tok, reasoning_effort="extreme")


def test_a_bad_argument_is_an_error_at_the_call_and_changes_nothing(model, tok):
    chat = gptoss_np.Chat(model, tok)
    with pytest.raises(ValueError, match="temperature"):
        chat.send("hello", 5, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        chat.stream("hello", 5, temperature=1.0, top_k=0)  # before its first token is asked for
    with pytest.raises(TypeError, match="temprature"):
        chat.send("hello", 5, temprature=1.0)
    assert chat.messages == []
    chat.send("hello", 2)
    assert [m["role"] for m in chat.messages] == ["user", "assistant"]


@pytest.mark.parametrize("endoftext", [True, False])  # False: a small vocabulary without <|endoftext|>
def test_an_empty_reply_adds_no_message(tok, endoftext, monkeypatch):
    chat = gptoss_np.Chat(Scripted(4096, []), tok)
    if not endoftext:
        monkeypatch.setattr(chat, "_endoftext", None)
    assert chat.send("Hi", 0) == []
    assert chat.messages == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("message, words", [
    (None, "a message is a dict with a 'role' and a str 'content', got None"),
    (42, "got 42"), ({"role": "user"}, "got {'role': 'user'}"), ({"role": "user", "content": 5}, "str 'content'"),
    ({"content": "hi"}, "message role must be 'user', 'assistant' or 'tool', got None"),
    ({"role": "system", "content": "Be brief."}, "give instructions as developer_instructions (Chat: instructions=)"),
    ({"role": "developer", "content": "Be brief."}, "message role 'developer': harmony writes")])
def test_a_malformed_message_is_named(tok, message, words):
    chat = gptoss_np.Chat(Scripted(4096), tok)
    with pytest.raises(ValueError, match=re.escape(words)):
        chat.send(message)
    assert chat.messages == []


@pytest.mark.parametrize("settings, words", [
    (dict(tools="get_weather"), "tools is a list, e.g. [{'name': 'get_weather'"),
    (dict(tools=TOOLS[0]), "tools is a list"),
    (dict(tools=["get_weather"]), "a tool is a dict {'name', 'description', 'parameters'}, got 'get_weather'"),
    (dict(builtin_tools="python"), "builtin_tools is a list, e.g. ['python'], got 'python'")])
def test_malformed_tools_are_named(tok, settings, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        gptoss_np.Chat(Scripted(4096), tok, **settings)


def test_a_stream_given_up_halfway_leaves_its_reply_out(tok):
    """The message stays, the reply does not: the next prompt holds both user messages."""
    model = Scripted(4096, completion_ids(tok, ("final", None, "a long answer that is never finished")),
                     completion_ids(tok, ("final", None, "ok")))
    chat = gptoss_np.Chat(model, tok)
    parser = harmony.StreamParser(tok)
    shown = ""
    for token in chat.stream("first", 64):
        shown += parser.push(token)
        if shown:
            break
    assert chat.messages == [{"role": "user", "content": "first"}]
    chat.send("second")
    assert [m["content"] for m in chat.messages] == ["first", "second", "ok"]


def test_a_reply_joins_as_its_last_token_is_taken(tok):
    """A caller that takes just a reply's tokens, never asking for one more, finds the reply joined: at a
    stop id and at the budget. A later turn then follows it, and the old streams, resumed, add nothing.
    Before, a reply joined only when its stream was asked for the token after the last, so then it
    came after the later turn's reply."""
    answer, plain = completion_ids(tok, ("final", None, "first answer")), tok.encode("cut short here")
    chat = gptoss_np.Chat(Scripted(4096, answer, plain, completion_ids(tok, ("final", None, "ok"))), tok)
    first = chat.stream("one", 64)
    assert list(itertools.islice(first, len(answer))) == answer
    assert chat.messages[-1] == {"role": "assistant", "channel": "final", "content": "first answer"}
    second = chat.stream("two", 3)
    assert list(itertools.islice(second, 3)) == plain[:3]
    assert chat.messages[-1] == {"role": "assistant", "channel": "final", "content": tok.decode(plain[:3])}
    chat.send("three")
    assert list(first) == [] and list(second) == []
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 3
    assert chat.messages[-1]["content"] == "ok"


def test_a_reply_that_ends_otherwise_joins_when_it_ends(tok):
    """A model whose tokens end before the budget without a stop id: the reply joins all the same."""
    chat = gptoss_np.Chat(Scripted(4096, tok.encode("short")), tok)
    assert chat.send("Hi", 64) == [{"role": "assistant", "channel": "final", "content": "short"}]


def test_a_reply_adds_only_the_assistants_messages(tok):
    """A model that writes a user's turn into its reply (harmony parses it, as openai-harmony does: see
    test_harmony) does not put words in the user's mouth: the conversation gains the assistant's messages."""
    written = completion_ids(tok, ("final", None, "Hello."), end="<|end|>") + \
        [tok.start, *tok.encode("user"), tok.message, *tok.encode("Say more."), tok.end] + \
        [tok.start, *tok.encode("assistant"), *completion_ids(tok, ("final", None, "More."))]
    assert [m["role"] for m in harmony.parse_completion(written, tok)] == ["assistant", "user", "assistant"]
    chat = gptoss_np.Chat(Scripted(4096, written), tok)
    reply = chat.send("Hi", 64)
    assert reply == [{"role": "assistant", "channel": "final", "content": "Hello."},
                     {"role": "assistant", "channel": "final", "content": "More."}]
    assert chat.messages == [{"role": "user", "content": "Hi"}, *reply]


def test_a_finished_stream_resumed_after_a_later_turn_changes_nothing(model, tok):
    """The same with the model and its PromptCache: the later turn's prompt holds the first reply,
    and the first stream, resumed, neither raises nor adds it again."""
    chat = gptoss_np.Chat(model, tok)
    first = chat.stream("first question", 4)
    taken = list(itertools.islice(first, 4))
    chat.send("second question", 4)
    before = copy.deepcopy(chat.messages)
    assert list(first) == [] and chat.messages == before
    assert [m["content"] for m in before[:2]] == ["first question", tok.decode(taken)]


def test_a_reply_cut_at_max_new_tokens_keeps_what_was_written(tok):
    model = Scripted(4096, completion_ids(tok, ("analysis", None, "thinking about it at length"),
                                   ("final", None, "done")))
    chat = gptoss_np.Chat(model, tok)
    reply = chat.send("Hi", 6)
    assert len(reply) == 1 and reply[0]["channel"] == "analysis"
    assert "thinking about it at length".startswith(reply[0]["content"]) and reply[0]["content"]


def test_a_reply_ends_at_endoftext_which_it_does_not_hold(tok):
    """<|endoftext|> ends a reply (harmony or not) and is not part of its text."""
    endoftext = tok.special_id("<|endoftext|>")
    harmony_reply = completion_ids(tok, ("final", None, "Done."))[:-1] + [endoftext, *tok.encode("never seen")]
    plain_reply = tok.encode("not harmony") + [endoftext]
    chat = gptoss_np.Chat(Scripted(4096, harmony_reply, plain_reply), tok)
    shown = list(chat.stream("Hi", 64))
    assert shown == harmony_reply[:harmony_reply.index(endoftext) + 1]  # generate stopped after it
    assert chat.messages[-1] == {"role": "assistant", "channel": "final", "content": "Done."}
    assert chat.send("Again", 64) == [{"role": "assistant", "channel": "final", "content": "not harmony"}]


def test_a_reply_has_room_to_reason_but_not_at_the_conversations_cost(tok):
    """By default a reply may take 2048 tokens; where the context is too small for that, the reply
    asks for at most half of it, so earlier turns stay, and ends where the context does."""
    model = Scripted(8192, completion_ids(tok, ("final", None, "ok")))
    gptoss_np.Chat(model, tok).send("Hi")
    assert model.calls[0][1] == 2048
    replies = [completion_ids(tok, ("final", None, f"answer {i}")) for i in range(6)]
    model = Scripted(300, *replies)
    chat = gptoss_np.Chat(model, tok)
    for i in range(6):
        chat.send(f"question {i}")
        prompt, budget, _ = model.calls[-1]
        assert len(prompt) <= 150 and budget == 300 - len(prompt)
    assert chat.messages[0]["content"] != "question 5" and len(chat.messages) >= 4  # earlier turns stayed
