"""A conversation with a model in the harmony chat format: the loop that the command line's chat and a
Python program share. Each turn renders the whole conversation (harmony.render_conversation), leaves out
its oldest turns if it outgrows the model's context, generates through one PromptCache (so only the new
tokens are prefilled) and parses the reply back into messages."""

from __future__ import annotations

import contextlib
import copy
import datetime
from typing import Iterator, Sequence

from . import harmony
from .generate import PromptCache, new_token_room
from .tokenizer import Tokenizer


# tokens a reply may take by default: gpt-oss reasons (the analysis channel) before it answers, which
# at reasoning effort low takes tens to hundreds of tokens, at high thousands
MAX_NEW_TOKENS = 2048


class Chat:
    """A conversation with `model`; `messages` holds it (user, assistant and tool messages, as
    harmony.render_conversation takes them).

        chat = gptoss_np.Chat(model, tokenizer, reasoning_effort="low")
        reply = chat.send("Why is the sky blue?", 512, temperature=1.0, seed=0)
        print(reply[-1]["content"])                 # the answer, on the final channel

    The settings are render_conversation's: `reasoning_effort`, `instructions` (the developer message),
    `tools` and `builtin_tools`, and `conversation_start_date` (default: the day the Chat is made).
    """

    def __init__(self, model, tokenizer: Tokenizer, *, reasoning_effort: str = "medium",
                 instructions: str | None = None, tools: list[dict] | None = None,
                 builtin_tools: Sequence[str | dict] = (),
                 conversation_start_date: str | datetime.date | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.settings = dict(reasoning_effort=reasoning_effort, developer_instructions=instructions, tools=tools,
                             builtin_tools=builtin_tools,
                             conversation_start_date=conversation_start_date or datetime.date.today())
        ends = harmony.reply_end_ids(tokenizer)
        self.stop_ids = tuple(ends.values())
        self._endoftext = ends.get("<|endoftext|>")  # ends a reply without being part of it
        self.messages: list[dict] = []
        self.prompt_cache = PromptCache()  # each prompt extends the last: its start is not run again
        self._last_render = None  # ((messages, settings), their token ids): see _render
        self.prompt()  # bad settings fail here, not at the first message

    def prompt(self) -> list[int]:
        """The token ids asking the assistant to answer the conversation so far."""
        return self._render(self.messages)

    def _render(self, messages: list[dict]) -> list[int]:
        """The conversation `messages` rendered. The last rendering is kept, with a copy of what it
        rendered (so changes made in place show), since a turn renders the same conversation to fit it
        into the context (add) and again to send it (prompt): 30 ms at 28k tokens."""
        if self._last_render is None or self._last_render[0] != (messages, self.settings):
            ids = harmony.render_conversation(messages, tokenizer=self.tokenizer, **self.settings)
            self._last_render = copy.deepcopy((messages, self.settings)), ids
        return list(self._last_render[1])

    def add(self, message: str | dict, room: int = 0) -> int:
        """Add `message` (a string is the user's) to the conversation, then leave out as many of its oldest
        turns (whole: from a user message on) as the prompt and `room` new tokens need to fit the model's
        context; the number of messages left out. The last user message always stays, and the room
        asked for is at most half the context: a long reply does not cost the whole conversation."""
        message = {"role": "user", "content": message} if isinstance(message, str) else message
        if isinstance(message, dict):
            message = dict(message)  # render_conversation checks it
        messages, context, dropped = self.messages + [message], self.model.config.max_position_embeddings, 0
        room = min(room, context // 2)
        while len(self._render(messages)) + room > context:
            later_turns = [i for i, m in enumerate(messages) if i > 0 and m["role"] == "user"]
            if not later_turns:
                break
            dropped += later_turns[0]
            messages = messages[later_turns[0]:]
        self.messages = messages
        return dropped

    @contextlib.contextmanager
    def adding(self, message: str | dict, room: int = 0) -> Iterator[int]:
        """`add(message, room)` for the block it yields to (the number of messages left out); if the block
        raises ValueError or TypeError (the turn cannot be sent: it fills the context alone, or a bad
        argument), the conversation is put back as it was."""
        before = self.messages
        try:
            yield self.add(message, room)
        except (ValueError, TypeError):
            self.messages = before
            raise

    def add_reply(self, token_ids: Sequence[int]) -> list[dict]:
        """Add the assistant's messages that `token_ids` (a reply to `prompt()`) hold, and return them. A
        reply that is not harmony (an untrained model's) becomes one final message holding its text; an
        empty one (max_new_tokens=0) adds nothing."""
        if len(token_ids) == 0:
            return []
        try:
            reply = [m for m in harmony.parse_completion(token_ids, self.tokenizer) if m["role"] == "assistant"]
        except ValueError:
            reply = [{"role": "assistant", "channel": "final", "content": self.tokenizer.decode(list(token_ids))}]
        self.messages += reply
        return reply

    def stream(self, message: str | dict, max_new_tokens: int = MAX_NEW_TOKENS, **sampling) -> Iterator[int]:
        """Add `message` (see `add`), then yield the reply's token ids as the model writes them, up to
        `max_new_tokens` or the end of the context; as its last token is taken, the reply joins the
        conversation (a reply given up halfway does not). `sampling`: model.generate's temperature, top_k,
        top_p, min_p and seed (greedy by default). harmony.StreamParser shows the text as it comes."""
        with self.adding(message, max_new_tokens):
            prompt = self.prompt()
            budget = new_token_room(self.model, len(prompt), max_new_tokens)
            tokens = self.model.generate(prompt, budget, stop_ids=self.stop_ids, prompt_cache=self.prompt_cache,
                                         **sampling)
        return self._joined(tokens, budget)

    def _joined(self, tokens: Iterator[int], budget: int) -> Iterator[int]:
        """`tokens` passed on. With the last one (a stop id, or the `budget`-th), before it is handed on,
        the reply they make joins the conversation: a caller that takes just the reply's tokens finds
        it joined, and no later turn can come between the reply and its joining. (A model whose tokens
        end otherwise has its reply joined when they end.)"""
        ids, joined = [], False
        for token in tokens:
            ids.append(token)
            if token in self.stop_ids or len(ids) == budget:
                self.add_reply(ids[:-1] if ids[-1] == self._endoftext else ids)  # not harmony: ends before it
                joined = True
            yield token
        if not joined:
            self.add_reply(ids)

    def send(self, message: str | dict, max_new_tokens: int = MAX_NEW_TOKENS, **sampling) -> list[dict]:
        """Add `message` and the assistant's reply to the conversation (see `stream`); the reply's
        messages. When the last one has a `recipient` (a tool call), answer with the tool's result:
        `chat.send({"role": "tool", "name": reply[-1]["recipient"], "content": result})`."""
        tokens = self.stream(message, max_new_tokens, **sampling)  # adds the message
        start = len(self.messages)
        for _ in tokens:
            pass
        return self.messages[start:]
