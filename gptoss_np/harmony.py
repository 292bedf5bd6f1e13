"""The harmony chat format of gpt-oss: render prompts, parse what the model writes.

A message is `<|start|>{role}[ to={recipient}][<|channel|>{channel}][ {content_type}]
<|message|>{content}<|end|>` (an assistant message to a recipient, a tool call, ends with
`<|call|>`). A completion prompt ends with `<|start|>assistant`; the model then writes its
reasoning on the `analysis` channel and its answer on `final`, and stops at `<|return|>` or
`<|call|>`. The output matches openai-harmony's `HARMONY_GPT_OSS` encoding token for token.

Messages are dicts: `{"role": "user" | "assistant" | "tool", "content": str}` plus, where
present, `"channel"`, `"recipient"` and `"content_type"` (what `parse_completion` returns); a
tool's message carries the tool's `"name"`, which heads it instead of the role. The functions the
model may call are declared in the developer message, gpt-oss's built-in tools (browser, python) in
the system message (harmony_tools.py).
"""

from __future__ import annotations

import datetime
import re
from typing import Sequence

from gptoss_np import harmony_tools
from gptoss_np.tokenizer import Tokenizer

MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
VALID_CHANNELS = ("analysis", "commentary", "final")
REASONING_EFFORTS = ("low", "medium", "high")
ROLES = ("user", "assistant", "system", "developer", "tool")
# Where the assistant's reply ends: harmony's <|return|> (done) and <|call|> (a tool call), and
# <|endoftext|> (gpt-oss's generation_config.json stops there too).
REPLY_ENDS = ("<|return|>", "<|call|>", "<|endoftext|>")
_CHANNEL = "<|channel|>"
_CONSTRAIN = "<|constrain|>"
# Rust's notion of whitespace (Unicode White_Space) and of ASCII whitespace, which the
# header parser of openai-harmony uses; Python's str.isspace() differs slightly from both.
_WHITE_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007" \
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_ASCII_SPACE_RUN = re.compile(r"[ \t\n\f\r]+")


def system_text(reasoning_effort: str = "medium",
                conversation_start_date: str | datetime.date | None = None, has_tools: bool = False,
                builtin_tools: Sequence[str | dict] = ()) -> str:
    """Text of the default system message (model identity, cutoff, date, effort, built-in tools,
    channels; with function tools, the channel their calls go to)."""
    if reasoning_effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, "
                         f"got {reasoning_effort!r}")
    top = [MODEL_IDENTITY, f"Knowledge cutoff: {KNOWLEDGE_CUTOFF}"]
    if conversation_start_date is not None:
        top.append(f"Current date: {conversation_start_date}")
    channels = (f"# Valid channels: {', '.join(VALID_CHANNELS)}. "
                "Channel must be included for every message.")
    if has_tools:
        channels += "\n" + harmony_tools.CHANNEL_RULE
    tools = [harmony_tools.builtin_tools_section(builtin_tools)] if builtin_tools else []
    return "\n\n".join(["\n".join(top), f"Reasoning: {reasoning_effort}", *tools, channels])


def special_ids(tokenizer: Tokenizer, names: Sequence[str]) -> dict[str, int]:
    """The ids of those `names` that are special tokens of `tokenizer`, by name."""
    found = {}
    for name in names:
        try:
            found[name] = tokenizer.special_id(name)
        except KeyError:
            continue
    return found


def reply_end_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The ids of REPLY_ENDS that `tokenizer` has (a small test vocabulary may lack <|endoftext|>)."""
    return special_ids(tokenizer, REPLY_ENDS)


def drop_earlier_analysis(messages: list[dict]) -> list[dict]:
    """openai-harmony's history rule (`auto_drop_analysis`, on by default).

    When the last assistant message is on the `final` channel, the `analysis` messages
    before the conversation's first `final` message are left out. Later analysis stays.
    """
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant or assistant[-1].get("channel") != "final":
        return list(messages)
    channels = [m.get("channel") for m in messages]
    first_final = channels.index("final")
    return [m for i, m in enumerate(messages)
            if not (i < first_final and channels[i] == "analysis")]


def render_message(message: dict, tokenizer: Tokenizer) -> list[int]:
    """Token ids of one message, from `<|start|>` to its `<|end|>` or `<|call|>`. A tool's message
    is headed by the tool's name (`functions.get_weather`) instead of its role."""
    role, recipient = message["role"], message.get("recipient")
    channel, content_type = message.get("channel"), message.get("content_type")
    ids = [tokenizer.start, *tokenizer.encode(message["name"] if role == "tool" else role)]
    if recipient is not None and recipient != "all":
        ids += tokenizer.encode(f" to={recipient}")
    if channel is not None:
        ids += [tokenizer.channel, *tokenizer.encode(channel)]
    if content_type is not None and content_type.startswith(_CONSTRAIN):
        rest = content_type[len(_CONSTRAIN):]
        ids += [*tokenizer.encode(" "), tokenizer.constrain, *tokenizer.encode(rest)]
    elif content_type is not None:
        ids += tokenizer.encode(f" {content_type}")
    ids += [tokenizer.message, *tokenizer.encode(message["content"])]
    ids.append(tokenizer.call if role == "assistant" and recipient is not None else tokenizer.end)
    return ids


def render_conversation(messages: list[dict], *, reasoning_effort: str = "medium",
                        conversation_start_date: str | datetime.date | None = None,
                        developer_instructions: str | None = None, tools: list[dict] | None = None,
                        builtin_tools: Sequence[str | dict] = (), tokenizer: Tokenizer | None = None) -> list[int]:
    """Token ids of a prompt asking the assistant for the next message.

    The prompt holds the system message, a developer message when `developer_instructions` or
    `tools` are given, the `messages` (see `drop_earlier_analysis`), and ends with
    `<|start|>assistant`. `conversation_start_date` is a date or a `YYYY-MM-DD` string.

    `tools` are functions the model may call (see harmony_tools). A call comes back from
    `parse_completion` as an assistant message with `"recipient": "functions.NAME"` and the arguments
    as JSON in its content; answer it by adding that message and the result,
    `{"role": "tool", "name": "functions.NAME", "content": ...}`, to `messages`. A tool's message goes
    to the assistant on the channel of the call it answers (the last assistant message to that
    name; commentary if there is none) unless it says otherwise.

    `builtin_tools` are gpt-oss's own tools, declared in the system message: "browser" (calls go to
    `browser.search`, `browser.open`, `browser.find`, arguments in JSON) and "python" (the code is the
    call's content), as openai-harmony declares them; a dict `{"name", "description", "tools"}`
    declares a namespace of one's own or replaces one of those (see harmony_tools). The results come
    back as for functions, named as the call's recipient: `{"role": "tool", "name": "python", ...}`.
    """
    tokenizer = tokenizer or Tokenizer.o200k_harmony()
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"a message is a dict with a 'role' and a str 'content', got {message!r:.80}")
        if message.get("role") in ("system", "developer"):
            raise ValueError(f"message role {message['role']!r}: harmony writes the system and developer messages "
                             f"itself; give instructions as developer_instructions (Chat: instructions=)")
        if message.get("role") not in ("user", "assistant", "tool"):
            raise ValueError(f"message role must be 'user', 'assistant' or 'tool', got {message.get('role')!r}")
        if message["role"] == "tool" and not isinstance(message.get("name"), str):
            raise ValueError("a tool's message needs the tool's name, e.g. \"name\": \"functions.get_weather\"")
    system = system_text(reasoning_effort, conversation_start_date, bool(tools), builtin_tools)
    head = [{"role": "system", "content": system}]
    developer = []
    if developer_instructions is not None:
        developer.append(f"# Instructions\n\n{developer_instructions}")
    if tools:
        developer.append(harmony_tools.tools_section(tools))
    if developer:
        head.append({"role": "developer", "content": "\n\n".join(developer)})
    ids = []
    for message in head + drop_earlier_analysis(_addressed_tool_results(messages)):
        ids += render_message(message, tokenizer)
    return ids + [tokenizer.start, *tokenizer.encode("assistant")]


def _addressed_tool_results(messages: list[dict]) -> list[dict]:
    """The messages with each tool result's recipient (assistant) and channel (its call's) filled in
    where the result does not give them."""
    out, call_channels = [], {}  # recipient -> channel of the last call to it
    for message in messages:
        if message["role"] == "assistant" and message.get("recipient") is not None:
            call_channels[message["recipient"]] = message.get("channel")
        if message["role"] == "tool":
            channel = call_channels.get(message["name"]) or "commentary"
            message = {"recipient": "assistant", "channel": channel, **message}
        out.append(message)
    return out


def parse_completion(token_ids, tokenizer: Tokenizer | None = None) -> list[dict]:
    """The messages in what the assistant wrote after a `render_conversation` prompt.

    The ids may end with `<|return|>`, `<|call|>` or nowhere in particular (the last message
    then holds what was written so far). Malformed output raises ValueError.
    """
    parser = StreamParser(tokenizer)
    for token_id in token_ids:
        parser.push(token_id)
    return parser.finish()


class StreamParser:
    """Follows a harmony completion one token at a time.

    `push` returns the content text that the token completed (empty for header tokens and
    while a UTF-8 character is unfinished). `role`, `channel`, `recipient` and
    `content_type` describe the message being written (None until its header is complete,
    except `role`, known from the start for the first message); `messages` holds the
    finished ones. A CLI can show text dimmed while `channel == "analysis"`.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, *, role: str | None = "assistant"):
        self._tokenizer = tokenizer or Tokenizer.o200k_harmony()
        self._stops = {self._tokenizer.end, self._tokenizer.call, self._tokenizer.return_}
        self.messages: list[dict] = []
        self.role, self.channel, self.recipient, self.content_type = role, None, None, None
        self._name = None
        self._state = "header" if role is not None else "start"
        self._header: list[int] = []
        self._content: list[str] = []
        self._decoder = self._tokenizer.stream_decoder()

    @property
    def in_content(self) -> bool:
        """Whether the tokens now pushed are message content."""
        return self._state == "content"

    def push(self, token_id: int) -> str:
        """Consume one token id; return the content text it completed."""
        if self._state == "start":
            if token_id != self._tokenizer.start:
                raise ValueError(f"expected <|start|> (id {self._tokenizer.start}), "
                                 f"got id {token_id}")
            self._state = "header"
        elif self._state == "header" and token_id == self._tokenizer.message:
            self._parse_header()
            self._state = "content"
        elif self._state == "header":
            self._header.append(token_id)
        elif token_id in self._stops:
            self._end_message()
        else:
            delta = self._decoder.push(token_id)
            self._content.append(delta)
            return delta
        return ""

    def finish(self) -> list[dict]:
        """End the stream (a message still being written is kept); return all messages."""
        if self._state == "header":
            raise ValueError("the completion ended inside a message header")
        if self._state == "content":
            self._end_message()
        return self.messages

    def _end_message(self) -> None:
        """Store the message being written and wait for the next `<|start|>`."""
        self._content.append(self._decoder.flush())
        message = {"role": self.role, "channel": self.channel, "content": "".join(self._content)}
        extras = {"recipient": self.recipient, "content_type": self.content_type, "name": self._name}
        message.update({key: value for key, value in extras.items() if value is not None})
        self.messages.append(message)
        self.role, self.channel, self.recipient, self.content_type = None, None, None, None
        self._name = None
        self._state = "start"
        self._header, self._content = [], []
        self._decoder = self._tokenizer.stream_decoder()

    def _parse_header(self) -> None:
        """Read role, channel, recipient and content type, as openai-harmony does.

        The channel is the text after `<|channel|>` up to whitespace or `<`. Of the other
        whitespace-separated words, the first is the role (unless known); then the last
        is `to=recipient`, or a lone recipient (even `<|constrain|>json`, as in
        openai-harmony 0.0.8), or a content type possibly preceded by the recipient. A
        first word that is not a role but is followed by more makes a tool message.
        """
        try:
            header = self._tokenizer.decode_bytes(self._header).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"message header is not valid UTF-8: {error}") from None
        at = header.find(_CHANNEL)
        if at >= 0:
            after = header[at + len(_CHANNEL):]
            ends = (i for i, c in enumerate(after) if c in _WHITE_SPACE or c == "<")
            stop = next(ends, len(after))
            if stop == 0:
                raise ValueError(f"message header {header!r} has <|channel|> but no channel")
            self.channel = after[:stop]
            header = header[:at] + after[stop:]
        header = header.strip(_WHITE_SPACE).replace(_CONSTRAIN, " " + _CONSTRAIN)
        words = [w for w in _ASCII_SPACE_RUN.split(header) if w]
        if self.role is None:
            self.role = self._take_role(words)
        if words and words[0] == self.role:
            words.pop(0)
        if words:
            self._take_recipient_and_type(words)
        if words:
            raise ValueError(f"unexpected words in message header: {' '.join(words)!r}")

    def _take_role(self, words: list[str]) -> str:
        """The role named by the first header word (consumed, and kept as a tool's name: a tool's message is
        named by its first word, even when that is the role's own name `tool`, as in openai-harmony)."""
        if not words:
            raise ValueError("message header has no role")
        if words[0] in ROLES:
            if words[0] == "tool":
                self._name = "tool"
            return words[0]
        if len(words) > 1 or words[0].startswith("to="):
            self._name = words.pop(0)
            return "tool"
        raise ValueError(f"unknown role {words[0]!r} in message header")

    def _take_recipient_and_type(self, words: list[str]) -> None:
        """Set recipient and content type from the last one or two header words."""
        count, last = len(words), words.pop()
        if last.startswith("to="):
            self.recipient = last[3:]
        elif count == 1:
            self.recipient = last
        else:
            self.content_type = last
            if words:
                self.recipient = words.pop().removeprefix("to=")
