"""The gptoss-generate command line and the embedded default model, end to end on the CPU."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numba
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

import gptoss_np
from conftest import completion_ids
from gptoss_np import Chat, PromptCache, backend, cli, embedded, harmony, hub, synthetic
from gptoss_np.model import GptOss
from gptoss_np.tokenizer import Tokenizer

SUMMARY = re.compile(r"prompt (\d+) tokens?(?: \(\d+ cached\))?, prefill [\d.]+ tok/s \| (\d+) new tokens?, "
                     r"decode (?:[\d.]+ tok/s|-) \| ended: ([\w -]+)")
HARMONY_NAMES = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]
GPT_OSS_STOPS = [200002, 199999, 200012]  # the released generation_config.json


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """One GPTOSS_NP_CACHE for the module, so the tokenizer and tiny checkpoint are built once."""
    return tmp_path_factory.mktemp("gptoss_np_cache")


@pytest.fixture(autouse=True)
def environment(monkeypatch, cache_root, tmp_path):
    monkeypatch.setenv("GPTOSS_NP_CACHE", str(cache_root))
    for name in ("HF_HUB_CACHE", "XDG_CACHE_HOME", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))


@pytest.fixture(scope="module")
def default_folder(cache_root):
    return embedded.default_checkpoint(cache_root)


@pytest.fixture(scope="module")
def default_model(default_folder):
    return gptoss_np.load(default_folder)


@pytest.fixture(scope="module")
def harmony_tokenizer(default_folder):
    return Tokenizer.from_pretrained(default_folder)


@pytest.fixture(scope="module")
def bare_checkpoint(tmp_path_factory):
    """The 512-token synthetic checkpoint, without a tokenizer.json."""
    return synthetic.write_checkpoint(tmp_path_factory.mktemp("bare"), "tiny")


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """The 512-token synthetic checkpoint with a small byte-level BPE tokenizer.json that has
    the harmony special tokens (at ids 0..6)."""
    folder = synthetic.write_checkpoint(tmp_path_factory.mktemp("small"), "tiny")
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=HARMONY_NAMES, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["The sky is blue because air scatters blue light more than red light.",
                            "system user assistant developer analysis final Reasoning: low"], trainer)
    hf.save(str(folder / "tokenizer.json"))
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summaries(err: str) -> list[tuple[int, int, str]]:
    """(prompt tokens, new tokens, how it ended) of each summary line."""
    return [(int(p), int(n), ended) for p, n, ended in SUMMARY.findall(err)]


def greedy_text(model, tokenizer, prompt_ids, max_new_tokens, stops) -> tuple[str, list[int]]:
    """What the CLI should print for a greedy reply shown raw, and the reply's ids."""
    ids = list(model.generate(prompt_ids, max_new_tokens, 0.0, stop_ids=stops, prompt_cache=PromptCache()))
    shown = [i for i in ids if i not in stops]
    return tokenizer.decode(shown) + "\n", ids


def assert_one_error_line(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gptoss-generate: error: ")
    for word in words:
        assert word in lines[0]


# ------------------------------------------------------------------------------ embedded default

def test_embedded_checkpoint_is_built_once_and_atomically(cache_root, default_folder):
    assert default_folder == embedded.location(cache_root)
    names = {p.name for p in default_folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    stamp = (default_folder / "model.safetensors").stat().st_mtime_ns
    assert embedded.default_checkpoint(cache_root) == default_folder
    assert (default_folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in cache_root.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    config = json.loads((default_folder / "config.json").read_text())
    assert config["vocab_size"] == 201088 and config["hidden_size"] == 64
    # its tokenizer.json ends where gpt-oss's does; loaded with the checkpoint it is o200k_harmony
    file = tokenizers.Tokenizer.from_file(str(default_folder / "tokenizer.json"))
    assert file.get_vocab_size() == 200019 and file.id_to_token(200018) == "<|endofprompt|>"
    assert Tokenizer.from_pretrained(default_folder).hf.get_added_tokens_decoder() == \
        Tokenizer.o200k_harmony(cache_root).hf.get_added_tokens_decoder()


def test_embedded_config_has_gpt_oss_ids():
    """The released gpt-oss config.json's vocabulary and special ids: eos <|return|>, pad <|endoftext|>."""
    config = embedded.config()
    assert (config["vocab_size"], config["eos_token_id"], config["pad_token_id"]) == (201088, 200002, 199999)


def stub_build(monkeypatch, write) -> list:
    """embedded.default_checkpoint with its slow steps stubbed: write(partial) stands for the checkpoint's
    writing, the tokenizer.json written is "{}"; returns the cache folders the tokenizer is asked of."""
    asked = []
    monkeypatch.setattr(embedded.synthetic, "write_checkpoint", lambda partial, config, seed, progress: write(partial))
    monkeypatch.setattr(embedded, "Tokenizer", types.SimpleNamespace(o200k_harmony=asked.append))
    monkeypatch.setattr(embedded, "released_tokenizer_json", lambda tokenizer: "{}")
    return asked


def test_embedded_checkpoint_in_a_new_cache_folder_is_built_there(monkeypatch, tmp_path):
    """default_checkpoint(cache) makes the cache folder and its parents, builds there (in a temporary folder
    beside its place, so that the rename stays on one file system; the tokenizer too), and leaves the
    checkpoint's folder alone, with nothing beside it."""
    cache = tmp_path / "not" / "yet"
    partials = []

    def write(partial):
        partials.append(partial)
        (partial / "config.json").write_text("{}")
    asked = stub_build(monkeypatch, write)
    folder = embedded.default_checkpoint(cache)
    assert [p.parent for p in partials] == [cache]
    assert folder == embedded.location(cache) and list(cache.iterdir()) == [folder]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer.json"]
    assert asked == [cache]


def test_embedded_checkpoint_failures_and_races_leave_nothing_behind(monkeypatch, tmp_path):
    """A failed build raises its error and leaves no folder; a build that a concurrent one beats to the
    rename returns the winner's folder and removes its own; a built checkpoint is not built again."""
    cache = tmp_path / "cache"
    folder = embedded.location(cache)

    def full_disk(partial):
        raise OSError(28, "No space left on device")
    stub_build(monkeypatch, full_disk)
    with pytest.raises(OSError, match="No space left"):
        embedded.default_checkpoint(cache)
    assert list(cache.iterdir()) == []

    def beaten(partial):
        (partial / "config.json").write_text("mine")
        folder.mkdir()
        (folder / "config.json").write_text("winner's")
    stub_build(monkeypatch, beaten)
    assert embedded.default_checkpoint(cache) == folder
    assert list(cache.iterdir()) == [folder] and (folder / "config.json").read_text() == "winner's"

    def again(partial):
        raise AssertionError("built a second time")
    stub_build(monkeypatch, again)
    assert embedded.default_checkpoint(cache) == folder



@pytest.mark.parametrize("with_model, expected", [(False, 256), (True, 2048)])
def test_default_max_new_tokens(capsys, monkeypatch, default_folder, small_checkpoint, with_model, expected):
    """A real checkpoint's reply has room to reason and answer; the embedded model, which never ends a
    reply, shows a short sample. Both in chat and --raw."""
    asked = []
    monkeypatch.setattr(cli.Runner, "complete",
                        lambda self, ids, budget, printer: asked.append(self.args.max_new_tokens) or [])
    model = ["--model", str(small_checkpoint)] if with_model else []
    for mode in ("--chat", "--raw"):
        assert run_cli(capsys, *model, mode, "--prompt", "Why is the sky blue?")[0] == 0
    assert asked == [expected, expected]

def test_default_run_is_chat_with_the_untrained_notice(capsys, default_folder, harmony_tokenizer):
    code, out, err = run_cli(capsys, "--prompt", "Why is the sky blue?", "--max-new-tokens", "12", "--seed", "1")
    assert code == 0
    assert out.strip()
    assert "random and untrained" in err and "gibberish" in err
    prompt = harmony.render_conversation([{"role": "user", "content": "Why is the sky blue?"}],
                                         reasoning_effort="low", tokenizer=harmony_tokenizer,
                                         conversation_start_date=datetime.date.today().isoformat())
    [(prompt_tokens, new_tokens, ended)] = summaries(err)
    assert prompt_tokens == len(prompt)
    assert 1 <= new_tokens <= 12


@pytest.mark.parametrize("filters, note", [([], None), (["--top-k", "5"], "--top-k changes"),
                                           (["--top-p", "0.5", "--min-p", "0.1"], "--top-p and --min-p change")])
def test_raw_greedy_equals_model_generate(capsys, default_model, harmony_tokenizer, filters, note):
    """Greedy is model.generate's greedy; sampling filters given with it change nothing, and a note says so."""
    prompt = "The quick brown fox"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "top_k, top_p and min_p")  # the note, not generate's warning
        code, out, err = run_cli(capsys, "--raw", "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "20",
                                 *filters)
    assert code == 0
    assert ("nothing at --temperature 0: generation is greedy" in err) == bool(filters)
    assert note is None or f"{note} nothing at --temperature 0" in err
    expected, ids = greedy_text(default_model, harmony_tokenizer, harmony_tokenizer.encode(prompt), 20,
                                GPT_OSS_STOPS)
    assert out == expected
    [(prompt_tokens, new_tokens, _)] = summaries(err)
    assert (prompt_tokens, new_tokens) == (len(harmony_tokenizer.encode(prompt)), len(ids))


def test_chat_greedy_equals_model_generate(capsys, default_model, harmony_tokenizer):
    """The prompt is the harmony rendering; the untrained model's reply is not harmony, so it is shown raw."""
    code, out, err = run_cli(capsys, "--chat", "--prompt", "Hi!", "--reasoning-effort", "high",
                             "--temperature", "0", "--max-new-tokens", "16")
    assert code == 0
    prompt = harmony.render_conversation([{"role": "user", "content": "Hi!"}], reasoning_effort="high",
                                         conversation_start_date=datetime.date.today().isoformat(),
                                         tokenizer=harmony_tokenizer)
    expected, ids = greedy_text(default_model, harmony_tokenizer, prompt, 16, GPT_OSS_STOPS)
    assert out == expected
    assert summaries(err)[0][:2] == (len(prompt), len(ids))


def test_chat_instructions_go_into_the_developer_message(capsys, default_model, harmony_tokenizer):
    code, out, err = run_cli(capsys, "--prompt", "Hi!", "--instructions", "Answer in French.",
                             "--temperature", "0", "--max-new-tokens", "4")
    assert code == 0
    prompt = harmony.render_conversation([{"role": "user", "content": "Hi!"}], reasoning_effort="low",
                                         conversation_start_date=datetime.date.today().isoformat(),
                                         developer_instructions="Answer in French.", tokenizer=harmony_tokenizer)
    assert "<|start|>developer<|message|># Instructions\n\nAnswer in French.<|end|>" in harmony_tokenizer.decode(prompt)
    expected, ids = greedy_text(default_model, harmony_tokenizer, prompt, 4, GPT_OSS_STOPS)
    assert out == expected
    assert summaries(err)[0][:2] == (len(prompt), len(ids))
    # empty instructions are none: no developer message (as an unset shell variable would give)
    code, out, err = run_cli(capsys, "--prompt", "Hi!", "--instructions", "", "--max-new-tokens", "1")
    without = harmony.render_conversation([{"role": "user", "content": "Hi!"}], reasoning_effort="low",
                                          conversation_start_date=datetime.date.today().isoformat(),
                                          tokenizer=harmony_tokenizer)
    assert code == 0 and summaries(err)[0][0] == len(without)


def test_chat_conversation_from_a_pipe_keeps_history(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\n\nhello there\n"))
    code, out, err = run_cli(capsys, "--chat", "--max-new-tokens", "8", "--seed", "0")
    assert code == 0
    turns = summaries(err)
    assert len(turns) == 2  # the blank line is skipped
    # without history both prompts would be equally long; with it the second holds the first reply
    assert turns[1][0] >= turns[0][0] + 10
    assert len(out.splitlines()) >= 2
    # the second prompt starts with the first: all of it but its last token comes from the KV cache
    assert re.findall(r"prompt (\d+) tokens \((\d+) cached\)", err) == [(str(turns[1][0]), str(turns[0][0] - 1))]


def recorded_conversations(monkeypatch) -> list[list[dict]]:
    """The user and assistant messages that each chat reply of the CLI is given."""
    seen, add = [], Chat.add

    def recording(self, *args, **kwargs):
        dropped = add(self, *args, **kwargs)
        seen.append([dict(m) for m in self.messages])
        return dropped
    monkeypatch.setattr(Chat, "add", recording)
    return seen


def test_a_message_of_several_lines_goes_between_triple_quotes(capsys, monkeypatch):
    seen = recorded_conversations(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO('one line\n"""\nfirst\n\n  second\n"""\n  """ \nindented\n\t"""\n'
                                                  '"""\nunclosed\n'))  # the quotes may have blanks around them
    code, _, err = run_cli(capsys, "--chat", "--max-new-tokens", "2", "--seed", "0")
    assert code == 0
    messages = ["one line", "first\n\n  second", "indented", "unclosed"]
    assert [[m["content"] for m in turn if m["role"] == "user"] for turn in seen] == [
        messages[:i] for i in range(1, 5)]


@pytest.fixture
def context_of_150(monkeypatch):
    """The command line's model, with a context of 150 tokens."""
    load_model = cli._load_model

    def small_context(*args):
        model = load_model(*args)
        model.config = dataclasses.replace(model.config, max_position_embeddings=150)
        return model
    monkeypatch.setattr(cli, "_load_model", small_context)


def test_a_long_conversation_leaves_out_its_oldest_turns_to_fit_the_context(capsys, monkeypatch, context_of_150):
    """With a context of 150 tokens and replies of up to 8, each turn keeps as many of the latest turns as
    fit, whole (from a user message on), and says how many messages it left out."""
    sent = recorded_conversations(monkeypatch)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"message number {i}\n" for i in range(6))))
    code, _, err = run_cli(capsys, "--chat", "--max-new-tokens", "8", "--seed", "0")
    assert code == 0
    turns = summaries(err)
    assert len(turns) == 6 and all(prompt + 8 <= 150 for prompt, _, _ in turns)
    assert re.search(r"the \d+ oldest messages of the conversation are left out, to fit the model.s context of 150 "
                     r"tokens", err)
    assert [turn[-1]["content"] for turn in sent] == [f"message number {i}" for i in range(6)]
    assert all(turn[0]["role"] == "user" for turn in sent)
    assert len(sent[-1]) < 2 * 6 - 1  # the last prompt lost turns
    # each turn keeps the end of the previous prompt (and its reply) in order
    for before, after in zip(sent, sent[1:]):
        if len(after) > 1:
            j = after.index(before[-1])
            assert after[:j + 1] == before[len(before) - j - 1:]


@pytest.mark.parametrize("terminal", [True, False])
def test_a_message_that_cannot_be_sent_is_an_error_for_it_alone_on_a_terminal(capsys, monkeypatch, context_of_150,
                                                                              terminal):
    """A message that fills the context alone, or is not UTF-8: on a terminal an error line, and the
    conversation goes on as if it had not been typed; from a pipe, the one error line and exit code 2."""
    sent = recorded_conversations(monkeypatch)
    lines = "first\n" + "far too long " * 60 + "\ncaf\udce9\nsecond\n"
    monkeypatch.setattr(sys, "stdin", (Terminal if terminal else io.StringIO)(lines))
    code, _, err = run_cli(capsys, "--chat", "--max-new-tokens", "4", "--seed", "0")
    assert "left out" not in err  # the long message left the first turn in the conversation, and said nothing
    if not terminal:
        assert code == 2 and "error: the prompt" in err.splitlines()[-1] and len(summaries(err)) == 1
        return
    assert code == 0 and len(summaries(err)) == 2
    assert re.search(r"error: the prompt \(\d+ tokens\) fills the model's context of 150 tokens, leaving no room "
                     r"for a reply: shorten it; the conversation goes on without that message", err)
    assert "error: the text is not valid UTF-8" in err
    assert [m["content"] for m in sent[-1] if m["role"] == "user"] == ["first", "second"]


def test_ctrl_c_on_a_terminal_stops_the_reply_and_the_conversation_goes_on(capsys, monkeypatch):
    """Interactive chat: Ctrl-C during the first reply (here after two tokens) drops that reply; the
    second prompt holds both user messages and no reply, and still reuses the KV cache."""
    seen = recorded_conversations(monkeypatch)
    generate, calls = GptOss.generate, []

    def interrupted_once(self, *args, **kwargs):
        calls.append(1)
        for n, token in enumerate(generate(self, *args, **kwargs)):
            if len(calls) == 1 and n == 2:
                raise KeyboardInterrupt
            yield token
    monkeypatch.setattr(GptOss, "generate", interrupted_once)
    monkeypatch.setattr(sys, "stdin", Terminal("first\nsecond\n"))
    code, _, err = run_cli(capsys, "--chat", "--max-new-tokens", "4", "--seed", "0")
    assert code == 0
    assert [s[2] for s in summaries(err)] == ["interrupted", "max-new-tokens"]
    assert "reply stopped; it is left out of the conversation" in err
    assert [[(m["role"], m["content"]) for m in turn] for turn in seen] == [
        [("user", "first")], [("user", "first"), ("user", "second")]]
    first = len(harmony.render_conversation(seen[0], conversation_start_date=datetime.date.today().isoformat(),
                                            tokenizer=Tokenizer.o200k_harmony()))
    assert re.findall(r"\((\d+) cached\)", err) == [str(first - 1)]


def test_ctrl_c_prints_the_summary_and_exits_130(capsys, monkeypatch, harmony_tokenizer):
    ids = harmony_tokenizer.encode(" one two three")

    def interrupted(self, *args, **kwargs):
        yield from ids
        raise KeyboardInterrupt
    monkeypatch.setattr(GptOss, "generate", interrupted)
    code, out, err = run_cli(capsys, "--raw", "--prompt", "Count:")
    assert code == 130
    assert out == " one two three\n"
    assert summaries(err)[0][1:] == (len(ids), "interrupted")


def test_raw_leaves_out_the_stop_token(capsys, monkeypatch, harmony_tokenizer):
    """The stop id ends the reply and its text (here <|return|>) is not shown."""
    ids = harmony_tokenizer.encode(" one two")

    def stopped(self, prompt, budget, *args, stop_ids=(), **kwargs):
        assert harmony_tokenizer.return_ in stop_ids
        yield from ids + [harmony_tokenizer.return_]  # as generate ends: after the stop id
    monkeypatch.setattr(GptOss, "generate", stopped)
    code, out, err = run_cli(capsys, "--raw", "--prompt", "Count:")
    assert code == 0 and out == " one two\n"
    assert summaries(err)[0][1:] == (len(ids) + 1, "stop token")


def test_a_reply_that_reaches_the_end_of_the_context_says_so(capsys, monkeypatch, context_of_150, harmony_tokenizer):
    """--max-new-tokens past the context: the reply ends where the context does, "context full"."""
    word = harmony_tokenizer.encode(" word")
    monkeypatch.setattr(GptOss, "generate", lambda self, prompt, budget, *args, **kwargs: iter(word * budget))
    code, out, err = run_cli(capsys, "--raw", "--prompt", "Count:", "--max-new-tokens", "1000")
    [(prompt_tokens, new_tokens, ended)] = summaries(err)
    assert code == 0 and (prompt_tokens + new_tokens, ended) == (150, "context full")


def test_an_error_mid_reply_ends_the_line_of_text_first(capsys, monkeypatch, harmony_tokenizer):
    ids = harmony_tokenizer.encode(" one two")

    def failing(self, *args, **kwargs):
        yield from ids
        raise ValueError("the logits hold NaN or infinity")
    monkeypatch.setattr(GptOss, "generate", failing)
    code, out, err = run_cli(capsys, "--raw", "--prompt", "Count:")
    assert code == 2 and out == " one two\n"
    assert err.splitlines()[-1] == "gptoss-generate: error: the logits hold NaN or infinity"


def test_the_summary_says_when_its_times_include_compiling(capsys, monkeypatch, harmony_tokenizer):
    ids = harmony_tokenizer.encode(" one two")

    def compiling(self, *args, **kwargs):  # a kernel compiled on its first call, as on a machine's first run
        yield from ids[:1]
        numba.njit(lambda x: x + 1)(1)
        yield from ids[1:]
    first = run_cli(capsys, "--raw", "--prompt", "Count:")[2]  # the tiny model's kernels: cached by now
    monkeypatch.setattr(GptOss, "generate", compiling)
    compiled = run_cli(capsys, "--raw", "--prompt", "Count:")[2]
    assert "compiling" not in first and len(summaries(first)) == 1
    assert "the times include compiling the kernels" in compiled and len(summaries(compiled)) == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_prefill_until_the_first_token(capsys, monkeypatch, default_folder):
    """On a terminal's stderr a line says the prompt is being prefilled; it is erased before the reply."""
    shown = []
    monkeypatch.setattr(sys, "stderr", Terminal())
    monkeypatch.setattr(sys.stdout, "write", lambda text: shown.append((text, sys.stderr.getvalue())))
    code = cli.main(["--raw", "--prompt", "The quick brown fox", "--max-new-tokens", "4", "--seed", "0"])
    err = sys.stderr.getvalue()
    assert code == 0
    notice = re.search(r"gptoss-generate: prefilling (\d+) prompt tokens\.\.\.\r\x1b\[K", err)
    assert notice and summaries(err)[0][0] == int(notice.group(1))
    assert shown and shown[0][1].endswith("\r\x1b[K")  # stderr when the reply's first text came: erased


# ------------------------------------------------------------------------------ harmony display

@pytest.mark.parametrize("color", [True, False])
def test_harmony_printer_dims_analysis_and_shows_final_plainly(harmony_tokenizer, color):
    out = io.StringIO()
    printer = cli.HarmonyPrinter(harmony_tokenizer, out, color=color)
    ids = completion_ids(harmony_tokenizer, ("analysis", None, "Rayleigh. ✓"), ("final", None, "Light scatters."))
    for token in ids[:-1]:
        printer.push(token)
    printer.finish()
    dim, reset = (cli.DIM, cli.RESET) if color else ("", "")
    assert out.getvalue() == f"{dim}Rayleigh. ✓{reset}\nLight scatters."


@pytest.mark.parametrize("terminal", [True, False])
def test_harmony_printer_can_hide_the_reasoning(harmony_tokenizer, monkeypatch, terminal):
    """Without show_reasoning only the answer is shown; a terminal's stderr
    says reasoning is going on until the answer starts."""
    monkeypatch.setattr(sys, "stderr", Terminal() if terminal else io.StringIO())
    out = io.StringIO()
    printer = cli.HarmonyPrinter(harmony_tokenizer, out, color=True, show_reasoning=False)
    shown = []  # (stdout, stderr) after each token
    ids = completion_ids(harmony_tokenizer, ("analysis", None, "Rayleigh."), ("final", None, "Light scatters."))
    for token in ids[:-1]:
        printer.push(token)
        shown.append((out.getvalue(), sys.stderr.getvalue()))
    printer.finish()
    assert out.getvalue() == "Light scatters."
    status = "gptoss-generate: reasoning (hidden)..."
    if terminal:
        assert any(stdout == "" and stderr == status for stdout, stderr in shown)
        first_text = next(stderr for stdout, stderr in shown if stdout)
        assert first_text == status + "\r\x1b[K"  # erased before the answer
    else:
        assert sys.stderr.getvalue() == ""


@pytest.mark.parametrize("words", [3, 200])
def test_harmony_printer_shows_non_harmony_output_raw(harmony_tokenizer, words):
    ids = harmony_tokenizer.encode(" word" * words)
    out = io.StringIO()
    printer = cli.HarmonyPrinter(harmony_tokenizer, out, color=True)
    shown = []
    for token in ids:
        printer.push(token)
        shown.append(out.getvalue())
    printer.finish()
    assert out.getvalue() == harmony_tokenizer.decode(ids)
    if words > cli.MAX_HEADER_TOKENS:
        assert shown[-1] == out.getvalue(), "long output must stream, not wait for the end"


def test_harmony_printer_waits_for_a_header_of_max_header_tokens(harmony_tokenizer):
    """A header may take MAX_HEADER_TOKENS tokens and still be harmony: nothing is shown until one more."""
    out = io.StringIO()
    printer = cli.HarmonyPrinter(harmony_tokenizer, out, color=False)
    word = harmony_tokenizer.encode("x")
    assert len(word) == 1
    for token in [harmony_tokenizer.channel] + word * (cli.MAX_HEADER_TOKENS - 1):
        printer.push(token)
    assert out.getvalue() == ""
    printer.push(word[0])
    assert out.getvalue() == "<|channel|>" + "x" * cli.MAX_HEADER_TOKENS


# ------------------------------------------------------------------------------ other checkpoints

def test_device_auto_says_why_not_the_gpu_when_cupy_is_installed(capsys, small_checkpoint, monkeypatch):
    """--device auto on the CPU says nothing when CuPy is absent (the CPU is what was installed for),
    and says why not the GPU when CuPy is there but cannot run."""
    args = ("--model", str(small_checkpoint), "--raw", "--prompt", "hi", "--max-new-tokens", "1")
    monkeypatch.setattr(cli, "cupy_installed", lambda: False)
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "running on" not in err
    monkeypatch.setattr(cli, "cupy_installed", lambda: True)
    monkeypatch.setattr(backend, "cuda_unusable_reason", lambda: "no usable CUDA device (a test's reason)")
    code, _, err = run_cli(capsys, *args)
    assert code == 0
    assert err.splitlines()[0] == "gptoss-generate: running on the CPU: no usable CUDA device (a test's reason)"
    code, _, err = run_cli(capsys, *args, "--device", "cpu")
    assert code == 0 and "running on" not in err


def test_dense_experts_need_quantize_experts(capsys, small_checkpoint, tmp_path):
    folder = synthetic.write_dense(tmp_path / "dense", small_checkpoint)
    shutil.copy(small_checkpoint / "tokenizer.json", folder)
    args = ("--model", str(folder), "--raw", "--prompt", "blue", "--max-new-tokens", "2")
    code, out, err = run_cli(capsys, *args)
    assert_one_error_line(code, out, err, "experts are stored dense", "--quantize-experts")
    code, out, err = run_cli(capsys, *args, "--quantize-experts")
    assert code == 0 and summaries(err)


def test_small_vocabulary_without_tokenizer_is_a_clear_error(capsys, bare_checkpoint):
    code, out, err = run_cli(capsys, "--model", str(bare_checkpoint), "--raw", "--prompt", "hi")
    assert_one_error_line(code, out, err, "tokenizer.json", "201088", "512")


def test_raw_continues_piped_stdin(capsys, monkeypatch, small_checkpoint):
    """Without --prompt, --raw continues stdin (less echo's line end) as --prompt would; from a terminal,
    or with nothing piped in, it is an error line."""
    model, tok = gptoss_np.load(small_checkpoint), Tokenizer.from_pretrained(small_checkpoint)
    monkeypatch.setattr(sys, "stdin", io.StringIO("The sky is\n"))
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--raw", "--temperature", "0",
                             "--max-new-tokens", "8")
    assert code == 0
    assert out == greedy_text(model, tok, tok.encode("The sky is"), 8, [tok.return_, tok.call])[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("The sky is  \n"))  # only the line end goes, not the spaces
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--raw", "--max-new-tokens", "1")
    assert len(tok.encode("The sky is  ")) > len(tok.encode("The sky is"))
    assert code == 0 and summaries(err)[0][0] == len(tok.encode("The sky is  "))
    for stdin, words in [(Terminal("The sky is\n"), "--raw needs the text to continue"), (io.StringIO(""), "empty")]:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert_one_error_line(*run_cli(capsys, "--model", str(small_checkpoint), "--raw"), "--raw", words)


def test_checkpoint_tokenizer_is_used(capsys, small_checkpoint):
    """The checkpoint's own tokenizer.json, with fewer ids than the model's 512: the rest are named
    <|reserved_N|> (Tokenizer.from_pretrained), so every id the model writes shows."""
    model, tok = gptoss_np.load(small_checkpoint), Tokenizer.from_pretrained(small_checkpoint)
    assert tokenizers.Tokenizer.from_file(str(small_checkpoint / "tokenizer.json")).get_vocab_size() < 512 == \
        tok.vocab_size
    stops = [tok.return_, tok.call]  # its generation_config.json has no eos ids below 512
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--raw", "--prompt", "The sky is",
                             "--temperature", "0", "--max-new-tokens", "12")
    assert code == 0
    expected, ids = greedy_text(model, tok, tok.encode("The sky is"), 12, stops)
    assert out == expected

    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--prompt", "Why blue?",
                             "--max-new-tokens", "6", "--reasoning-effort", "medium")
    assert code == 0
    prompt = harmony.render_conversation([{"role": "user", "content": "Why blue?"}], reasoning_effort="medium",
                                         conversation_start_date=datetime.date.today().isoformat(), tokenizer=tok)
    assert summaries(err)[0][0] == len(prompt)
    assert "untrained" not in err


def test_stop_ids_precedence(tmp_path, harmony_tokenizer):
    """generation_config.json's eos ids, else config.json's, else (OpenAI's original format has neither)
    those of gpt-oss's generation_config.json; chat stops at <|return|>, <|call|> and <|endoftext|> too,
    as Chat does."""
    config = gptoss_np.GptOssConfig.from_dict(embedded.config())
    assert cli.stop_ids(tmp_path, config, harmony_tokenizer, chat=False) == {200002}  # config.json's eos
    assert cli.stop_ids(tmp_path, config, harmony_tokenizer, chat=True) == {200002, 200012, 199999}
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [199999]}))
    assert cli.stop_ids(tmp_path, config, harmony_tokenizer, chat=False) == {199999}
    assert cli.stop_ids(tmp_path, config, harmony_tokenizer, chat=True) == {199999, 200002, 200012}
    no_eos = gptoss_np.GptOssConfig.from_dict({**embedded.config(), "eos_token_id": None})
    (tmp_path / "generation_config.json").write_text("{}")
    assert cli.stop_ids(tmp_path, no_eos, harmony_tokenizer, chat=False) == {200002, 200012, 199999}
    chat = gptoss_np.Chat(gptoss_np.load(embedded.default_checkpoint()), harmony_tokenizer)
    assert set(chat.stop_ids) == cli.stop_ids(tmp_path, no_eos, harmony_tokenizer, chat=True)


@pytest.mark.parametrize("text, words", [
    ("{ not json", "not valid JSON"), ("[200002]", "(a JSON object), but a list"),
    ('{"eos_token_id": "x"}', "eos_token_id must be a token id or a list of them, got 'x'"),
    ('{"eos_token_id": [1, -2]}', "got [1, -2]")])
def test_a_bad_generation_config_is_one_error_line_before_the_weights_load(capsys, monkeypatch, tmp_path,
                                                                           small_checkpoint, text, words):
    folder = shutil.copytree(small_checkpoint, tmp_path / "bad")
    (folder / "generation_config.json").write_text(text)
    monkeypatch.setattr(cli, "_load_model", lambda *args: pytest.fail("the weights were loaded"))
    code, out, err = run_cli(capsys, "--model", str(folder), "--raw", "--prompt", "hi")
    assert_one_error_line(code, out, err, str(folder / "generation_config.json"), words)


# ------------------------------------------------------------------------------ hub ids

def fake_hub(hub, repo_id: str, checkpoint) -> object:
    """A Hugging Face cache entry for `repo_id` holding `checkpoint`; returns the snapshot folder."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / "0123abcd")
    (repo / "snapshots" / "stale").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return repo / "snapshots" / "0123abcd"


def test_hub_id_resolves_in_the_local_cache(capsys, monkeypatch, tmp_path, small_checkpoint):
    snapshot = fake_hub(tmp_path / "hub_cache", "some-org/tiny-gpt-oss", small_checkpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    assert hub.resolve("some-org/tiny-gpt-oss") == snapshot
    code, out, err = run_cli(capsys, "--model", "some-org/tiny-gpt-oss", "--raw", "--prompt", "blue",
                             "--max-new-tokens", "4", "--seed", "3")
    assert code == 0 and summaries(err)
    # the library takes the id as the command line does
    assert gptoss_np.load("some-org/tiny-gpt-oss").config.vocab_size == 512
    ids = Tokenizer.from_pretrained("some-org/tiny-gpt-oss").encode("blue")
    assert ids == Tokenizer.from_pretrained(small_checkpoint / "tokenizer.json").encode("blue")

    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    snapshot = fake_hub(tmp_path / "hf_home" / "hub", "other/model", small_checkpoint)
    assert hub.resolve("other/model") == snapshot
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_folder() == tmp_path / "xdg" / "huggingface" / "hub"


@pytest.mark.parametrize("env", [
    {}, {"XDG_CACHE_HOME": "~/xdg"}, {"HF_HOME": "$SOMEWHERE/hf", "XDG_CACHE_HOME": "/xdg"},
    {"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HOME": "/hf"}, {"HF_HUB_CACHE": "~/hub", "HUGGINGFACE_HUB_CACHE": "/x"},
    {"HF_HOME": ""}, {"HF_HUB_CACHE": "", "HF_HOME": "/hf"},
], ids=["default", "xdg", "hf_home", "legacy", "hf_hub_cache", "empty_home", "empty_cache"])
def test_the_cache_folder_is_huggingface_hubs(env, tmp_path):
    """hub.cache_folder() under these variables is the folder huggingface_hub itself downloads into
    (its constants.HF_HUB_CACHE, read in a fresh process under the same environment)."""
    names = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")
    environ = {**{k: v for k, v in os.environ.items() if k not in names}, "HOME": str(tmp_path),
               "SOMEWHERE": "/somewhere", **env}
    theirs = subprocess.run([sys.executable, "-c", "from huggingface_hub import constants; "
                             "print(constants.HF_HUB_CACHE)"], env=environ, capture_output=True, text=True, check=True)
    ours = subprocess.run([sys.executable, "-c", "from gptoss_np import hub; print(hub.cache_folder())"],
                          env=environ, capture_output=True, text=True, check=True)
    assert Path(ours.stdout.strip()) == Path(theirs.stdout.strip())


def test_a_hub_id_resolves_where_huggingface_hub_finds_its_files(monkeypatch, tmp_path, small_checkpoint):
    """The snapshot hub.resolve finds holds the files huggingface_hub's own cache lookup
    (try_to_load_from_cache, which follows refs/main as a download left it) finds."""
    from huggingface_hub import try_to_load_from_cache
    snapshot = fake_hub(tmp_path, "org/model", small_checkpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert Path(try_to_load_from_cache("org/model", name, cache_dir=tmp_path)) == hub.resolve("org/model") / name
    assert hub.resolve("org/model") == snapshot


def test_hub_id_without_refs_main(monkeypatch, tmp_path, small_checkpoint):
    """The only snapshot is taken; of several, none is guessed."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snapshot = fake_hub(tmp_path, "org/model", small_checkpoint)
    (snapshot.parent.parent / "refs" / "main").unlink()
    with pytest.raises(FileNotFoundError, match="2 snapshots and no refs/main"):
        hub.resolve("org/model")
    (snapshot.parent / "stale").rmdir()
    assert hub.resolve("org/model") == snapshot


def test_a_refs_main_naming_a_missing_snapshot_says_so(monkeypatch, tmp_path, small_checkpoint):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    snapshot = fake_hub(tmp_path, "org/model", small_checkpoint)
    (snapshot.parent.parent / "refs" / "main").write_text("fedcba98")
    with pytest.raises(FileNotFoundError, match="refs/main names the snapshot fedcba98, which is not in"):
        hub.resolve("org/model")


def test_a_download_of_only_the_original_folder_resolves_to_it(monkeypatch, tmp_path, small_checkpoint):
    """`hf download openai/gpt-oss-20b --include "original/*"` leaves OpenAI's format in original/ alone:
    the folder (or the hub id) resolves to that subfolder; a folder with its own config.json stays."""
    download = tmp_path / "gpt-oss"
    synthetic.write_original(download / "original", small_checkpoint)
    assert hub.resolve(download) == download / "original"
    assert gptoss_np.load(download).config.num_local_experts == 8
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    snapshot = fake_hub(tmp_path / "hub_cache", "org/only-original", download)
    assert hub.resolve("org/only-original") == snapshot / "original"
    both = shutil.copytree(small_checkpoint, tmp_path / "both")  # a full download: both formats
    synthetic.write_original(both / "original", small_checkpoint)
    assert hub.resolve(both) == both


def test_unknown_hub_id_says_only_the_local_cache_was_searched(capsys):
    code, out, err = run_cli(capsys, "--model", "openai/gpt-oss-nonexistent", "--prompt", "hi")
    assert_one_error_line(code, out, err, "openai/gpt-oss-nonexistent", "local Hugging Face cache",
                          "`hf download openai/gpt-oss-nonexistent --exclude 'original/*' --exclude 'metal/*'`")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        gptoss_np.load("openai/gpt-oss-nonexistent")


# ------------------------------------------------------------------------------ errors and entry points

@pytest.mark.parametrize("argv, words", [
    (["--max-new-tokens", "-3"], ["--max-new-tokens", ">= 1"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens", ">= 1"]),
    (["--max-new-tokens", "ten"], ["--max-new-tokens"]),
    (["--temperature", "-0.5"], ["--temperature"]),
    (["--temperature", "nan"], ["--temperature"]),
    (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["--top-p", "1.5"], ["--top-p"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--min-p", "2"], ["--min-p"]),
    (["--seed", "-1"], ["--seed"]),
    (["--reasoning-effort", "extreme"], ["--reasoning-effort"]),
    (["--device", "tpu"], ["--device"]),
    (["--chat", "--raw", "--prompt", "x"], ["--raw", "--chat"]),
    (["--prompt", ""], ["--prompt is empty"]),
    (["--prompt", "  \n"], ["--prompt is empty"]),  # a chat message of blanks, as stdin's blank lines are skipped
    (["--raw", "--prompt", ""], ["--prompt is empty"]),
    (["--raw", "--prompt", "x", "--instructions", "Be brief."], ["--instructions", "chat"]),
    (["--raw", "--prompt", "x", "--hide-reasoning"], ["--hide-reasoning", "chat"]),
    (["--raw", "--prompt", "x", "--reasoning-effort", "high"], ["--reasoning-effort", "chat"]),
    (["--bogus"], ["--bogus"]),
    (["--model", "{tmp}/missing"], ["does not exist"]),
    (["--model", "{tmp}/two\nlines"], ["does not exist"]),  # the error stays one line
    (["--model", "no-such-org/model/more"], ["checkpoint folder no-such-org/model/more does not exist"]),  # no hub id
    (["--model", "{tmp}/file.txt"], ["not a folder"]),
    (["--model", "{tmp}"], ["holds no config.json: it is not a checkpoint folder"]),
    (["--model", ""], ["the checkpoint folder is an empty path"]),
])
def test_bad_input_is_one_error_line(capsys, tmp_path, argv, words):
    (tmp_path / "file.txt").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_one_error_line(*run_cli(capsys, *argv), *words)


@pytest.mark.parametrize("mode", ["--raw", "--chat"])
def test_a_prompt_that_is_not_utf8_is_one_error_line(capsys, small_checkpoint, mode):
    """Python decodes a command line's bytes that are not UTF-8 (here 0xe9, Latin-1's e-acute) as lone surrogates."""
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), mode, "--prompt", "caf\udce9")
    assert_one_error_line(code, out, err, "not valid UTF-8", "byte 0xe9 at character 3")


@pytest.mark.parametrize("damage", ["config_json", "config_field", "weights", "shape"])
def test_broken_checkpoint_is_one_error_line(capsys, tmp_path, small_checkpoint, damage):
    folder = shutil.copytree(small_checkpoint, tmp_path / "broken")
    config = json.loads((folder / "config.json").read_text())
    if damage == "config_json":
        (folder / "config.json").write_text("{ not json")
    elif damage == "config_field":
        del config["hidden_size"]
    elif damage == "weights":
        (folder / "model.safetensors").unlink()
    else:
        config["num_local_experts"] = 16
    if damage in ("config_field", "shape"):
        (folder / "config.json").write_text(json.dumps(config))
    words = {"config_json": ["config.json"], "config_field": ["hidden_size"], "weights": ["safetensors"],
             "shape": ["shape"]}[damage]
    assert_one_error_line(*run_cli(capsys, "--model", str(folder), "--raw", "--prompt", "hi"), *words)


def test_a_cache_folder_that_cannot_be_made_is_an_error_naming_the_setting(capsys, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("GPTOSS_NP_CACHE", str(tmp_path / "a_file"))
    code, out, err = run_cli(capsys, "--raw", "--prompt", "hi")
    assert (code, out) == (2, "")
    error = err.splitlines()[-1]
    assert error.startswith("gptoss-generate: error: cannot make the cache folder ")
    assert str(tmp_path / "a_file") in error and "set GPTOSS_NP_CACHE to a folder that can be written" in error


def test_unavailable_device_is_one_error_line(capsys, small_checkpoint):
    """From Python, gptoss_np.DeviceUnavailableError saying why; on the command line, one error line."""
    reason = backend.cuda_unusable_reason()
    if reason is None:
        pytest.skip("a CUDA backend is available here")
    with pytest.raises(gptoss_np.DeviceUnavailableError, match=re.escape(reason)):
        gptoss_np.load(small_checkpoint, device="cuda")
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--device", "cuda", "--raw", "--prompt", "hi")
    assert_one_error_line(code, out, err, f"--device cuda cannot run: {reason}")


def test_the_summary_counts_in_words():
    timed = cli.TimedTokens(iter([7]), 1)
    assert list(timed) == [7]
    assert timed.summary("stop token").startswith("prompt 1 token, prefill ")
    assert "| 1 new token, decode - | ended: stop token" in timed.summary("stop token")


def test_the_summary_s_decode_speed_is_over_the_tokens_after_the_first(monkeypatch):
    """The first token's time is the prefill's; decode's speed is the other tokens over their time."""
    clock = iter([0.0, 4.0, 4.0, 5.0, 5.0, 6.0, 6.0, 6.0])  # the prefill 4 s, then 1 s a token
    monkeypatch.setattr(cli, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    timed = cli.TimedTokens(iter([1, 2, 3]), 8)
    assert list(timed) == [1, 2, 3]
    assert "prompt 8 tokens, prefill 2.0 tok/s | 3 new tokens, decode 1.0 tok/s" in timed.summary("max-new-tokens")


def test_weights_too_big_for_the_device_is_one_error_line(capsys, monkeypatch, small_checkpoint):
    def no_room(*args, **kwargs):
        raise MemoryError("the checkpoint's weights need 13.80 GB of GPU memory; GPU has 7.90 GB free of 8.00 GB")

    monkeypatch.setattr(cli, "load", no_room)
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--device", "cuda", "--raw", "--prompt", "hi")
    assert_one_error_line(code, out, err, "--device cuda: ", "13.80 GB", "7.90 GB free")


def test_running_out_of_memory_while_generating_is_one_error_line(capsys, monkeypatch, small_checkpoint):
    def no_room(self, capacity):
        raise MemoryError(f"the KV cache for {capacity} tokens needs 3.00 GB (cuda: Out of memory allocating 1 bytes)")

    monkeypatch.setattr(GptOss, "new_cache", no_room)
    code, out, err = run_cli(capsys, "--model", str(small_checkpoint), "--raw", "--prompt", "hi",
                             "--max-new-tokens", "50")
    assert_one_error_line(code, out, err, "out of memory while generating", "3.00 GB", "--max-new-tokens")


def test_python_m_entry_point():
    shown = subprocess.run([sys.executable, "-m", "gptoss_np", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    assert shown.stdout.startswith("usage: gptoss-generate")
    for flag in ("--model", "--prompt", "--chat", "--raw", "--reasoning-effort", "--instructions", "--hide-reasoning",
                 "--max-new-tokens", "--temperature", "--top-p", "--top-k", "--min-p", "--seed", "--device",
                 "--version"):
        assert flag in shown.stdout
    version = subprocess.run([sys.executable, "-m", "gptoss_np", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout == f"gptoss-generate {importlib.metadata.version('gptoss-np')}\n"
    failed = subprocess.run([sys.executable, "-m", "gptoss_np", "--top-p", "2"], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.startswith("gptoss-generate: error:") and len(failed.stderr.splitlines()) == 1
    closed = subprocess.run(["sh", "-c", f"'{sys.executable}' -m gptoss_np --version >&-"], capture_output=True,
                            text=True)
    assert (closed.returncode, closed.stderr) == (2, "gptoss-generate: error: stdout is closed: nothing could be "
                                                     "shown\n")


def test_stdin_that_is_not_utf8_is_the_tokenizers_error_in_any_locale(small_checkpoint):
    """Piped chat with a line that is not UTF-8 (0xff): under a locale that decodes stdin strictly, the
    line before it is still answered, and the error is the tokenizer's one line, naming the byte."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    done = subprocess.run([sys.executable, "-m", "gptoss_np", "--model", str(small_checkpoint), "--max-new-tokens",
                           "2"], input=b"first\n\xff\n", capture_output=True, env=env, timeout=300)
    err = done.stderr.decode().splitlines()
    assert done.returncode == 2 and len(summaries("\n".join(err))) == 1
    assert err[-1] == ("gptoss-generate: error: the text is not valid UTF-8: byte 0xff at character 0 is not part of a "
                       "UTF-8 character (text in another encoding?)")


def test_warnings_are_note_lines_only_within_shown_as_notes(capsys):
    """user_warnings.shown_as_notes shows a warning as `PROG: warning: MESSAGE` while it lasts, and leaves
    Python's way of showing warnings as it found it."""
    from gptoss_np import user_warnings
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with user_warnings.shown_as_notes("prog"):
            warnings.warn("inside")
        assert warnings.showwarning is before
    assert capsys.readouterr().err == "prog: warning: inside\n"


def test_a_warning_is_a_note_line(capsys, small_checkpoint, tmp_path):
    """A library warning during a run (here: a tied config whose files store an lm_head of their own)
    is one `gptoss-generate: warning:` line, not Python's file:line: UserWarning form."""
    folder = tmp_path / "tied"
    shutil.copytree(small_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    code, _, err = run_cli(capsys, "--model", str(folder), "--raw", "--prompt", "The sky", "--max-new-tokens", "2",
                           "--temperature", "0")
    assert code == 0
    assert "gptoss-generate: warning: " in err and "tie_word_embeddings" in err and "UserWarning" not in err
