"""`gptoss-generate` (also `python -m gptoss_np`): run a gpt-oss model from the command line.

Modes:
  chat (the default, or --chat): the prompt becomes a user message in the harmony format; the
      reply streams with the reasoning (`analysis` channel) dimmed on a terminal, or hidden with
      --hide-reasoning, and the answer (`final` channel) plain. Without --prompt: a multi-turn
      conversation, one user message per line of stdin, until end of input.
  --raw: the prompt is plain text, and its continuation streams as it is.

Without --model the embedded tiny model runs (see embedded.py): random weights, gibberish text.
Generated text goes to stdout; notices and a one-line speed summary per reply go to stderr.
Every error is one line on stderr and exit code 2; Ctrl-C stops a reply with exit code 130 (in an
interactive chat on a terminal it stops the reply and the chat goes on).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from numba.core import event

from . import __version__, embedded, harmony, hub, user_warnings
from .backend import DeviceUnavailableError
from .chat import MAX_NEW_TOKENS, Chat
from .config import GptOssConfig, is_token_id
from .generate import PromptCache, new_token_room
from .model import GptOss, load
from .tokenizer import Tokenizer

PROG = "gptoss-generate"
DIM, RESET = "\x1b[2m", "\x1b[0m"
REASONING_EFFORT = "low"  # a chat's default: a quick answer
EMBEDDED_MAX_NEW_TOKENS = 256  # the untrained embedded model never ends a reply: a sample of its text
# Tokens a well-formed message header can take; past this many, the output is not harmony.
MAX_HEADER_TOKENS = 64


class CliError(Exception):
    """A problem to report to the user in one line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are CliErrors, reported in one line like the others."""

    def error(self, message: str):
        raise CliError(message)


def _number(kind: type, valid: Callable[[float], bool], requirement: str):
    """An argparse `type` that parses `kind` and checks `valid`, naming `requirement` if not."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line's flags."""
    parser = _Parser(prog=PROG, description="Generate text with a gpt-oss model (NumPy engine).",
                     epilog="Without --model, a tiny model with random weights runs: its text is gibberish.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--model", metavar="PATH_OR_ID",
                        help="checkpoint folder, or a Hugging Face id such as openai/gpt-oss-20b found "
                             "in the local Hugging Face cache (never downloaded); default: the embedded "
                             "tiny random model")
    parser.add_argument("--prompt", help="the user message (chat) or the text to continue (--raw); "
                                         "without it, chat reads one message per line of stdin "
                                         "('\"\"\"' lines around one of several lines) and --raw "
                                         "continues all of stdin")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true", help="harmony chat format (the default)")
    mode.add_argument("--raw", action="store_true",
                      help="no chat template: continue --prompt (or stdin) as plain text")
    parser.add_argument("--reasoning-effort", choices=harmony.REASONING_EFFORTS,
                        help=f"reasoning effort named in the system message (chat only; default: {REASONING_EFFORT})")
    parser.add_argument("--instructions", metavar="TEXT",
                        help="instructions for the model, in harmony's developer message (chat only)")
    parser.add_argument("--hide-reasoning", action="store_true",
                        help="show only the answer, not the model's reasoning (its analysis channel; chat only)")
    parser.add_argument("--max-new-tokens", type=_number(int, lambda n: n >= 1, "an integer >= 1"),
                        metavar="N", help=f"most tokens per reply (default: {MAX_NEW_TOKENS}; "
                                          f"{EMBEDDED_MAX_NEW_TOKENS} for the embedded model)")
    parser.add_argument("--temperature",
                        type=_number(float, lambda t: math.isfinite(t) and t >= 0, "a finite number >= 0"),
                        default=1.0, help="sampling temperature; 0 = greedy (default: 1.0, OpenAI's "
                                          "recommendation for gpt-oss)")
    parser.add_argument("--top-p", type=_number(float, lambda p: 0 < p <= 1, "in (0, 1]"),
                        help="nucleus sampling: keep the most probable tokens up to this mass")
    parser.add_argument("--top-k", type=_number(int, lambda k: k >= 1, "an integer >= 1"),
                        help="keep only the k most probable tokens")
    parser.add_argument("--min-p", type=_number(float, lambda p: 0 <= p <= 1, "in [0, 1]"),
                        help="drop tokens less probable than min-p times the most probable")
    parser.add_argument("--seed", type=_number(int, lambda s: s >= 0, "an integer >= 0"),
                        help="random seed, for reproducible sampling")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the model runs (default: auto, the GPU when usable)")
    parser.add_argument("--quantize-experts", action="store_true",
                        help="round a checkpoint's dense (fine-tuned or dequantized) experts to MXFP4 as "
                             "they load; without it such a checkpoint is an error")
    return parser


# ---------------------------------------------------------------------------- model and tokenizer

def stop_ids(folder: Path, config: GptOssConfig, tokenizer: Tokenizer, chat: bool) -> frozenset[int]:
    """Ids that end a reply: generation_config.json's eos_token_id, else config.json's, else (as in
    OpenAI's original format, which has neither) harmony.REPLY_ENDS, those the tokenizer has; chat
    always stops at those too, as Chat does."""
    file = folder / "generation_config.json"
    eos = config.eos_token_id
    if file.is_file():
        try:
            settings = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise CliError(f"{file}: not valid JSON ({error})") from None
        if not isinstance(settings, dict):
            raise CliError(f"{file}: not a generation config (a JSON object), but a {type(settings).__name__}")
        eos = settings.get("eos_token_id", eos)
    listed = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    if not all(is_token_id(i) for i in listed):  # (config.json's are: GptOssConfig checks them so)
        raise CliError(f"{file}: eos_token_id must be a token id or a list of them, got {eos!r}")
    stops = set(listed)
    if chat or not stops:
        stops.update(harmony.reply_end_ids(tokenizer).values())
    return frozenset(stops)


def _checkpoint_folder(spec: str | None) -> Path:
    """--model's folder; without it, the embedded model (built on first use), with a notice."""
    if spec is not None:
        return hub.resolve(spec)  # a folder, or a hub id in the local Hugging Face cache
    _note("no --model given: running the embedded tiny model, whose weights are random and untrained, "
          "so its text is gibberish (pass --model for a real checkpoint)")
    if not embedded.location().is_dir():
        _note(f"first run: building the tokenizer and the tiny checkpoint in {embedded.location()} "
              f"(a few seconds)")
    return embedded.default_checkpoint()


def _load_model(folder: Path, device: str, quantize_experts: bool = False) -> GptOss:
    """The model on `device`; a progress bar (for big checkpoints) only on a terminal. For --device auto,
    a note names the GPU it chose, or says why it did not use one (none usable, or too little free
    memory for the weights) when CuPy is installed (without CuPy, the CPU is what was asked for, and
    nothing is said)."""
    try:
        model = load(folder, device=device, progress=None if sys.stderr.isatty() else False,
                     quantize_experts=quantize_experts)
    except DeviceUnavailableError as error:  # no usable GPU, a model its kernels cannot run
        raise CliError(f"--device {device} cannot run: {error.reason}") from None
    except (RuntimeError, ImportError) as error:  # CUDA errors
        if device == "cpu":
            raise
        raise CliError(f"--device {device} is not available: {error}") from None
    except MemoryError as error:  # the weights do not fit (the CUDA backend checks before loading)
        raise CliError(f"--device {device}: {error}") from None
    if device == "auto" and model.ops.name == "cuda":
        _note(f"running on the GPU, {model.ops.device_name}")
    elif device == "auto" and cupy_installed():
        _note(f"running on the CPU: {model.ops.reason}")
    return model


def cupy_installed() -> bool:
    return importlib.util.find_spec("cupy") is not None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _note(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


# ---------------------------------------------------------------------------- showing tokens

class RawPrinter:
    """Writes the text of each token once its UTF-8 characters are complete."""

    def __init__(self, tokenizer: Tokenizer, out: TextIO):
        self._decoder = tokenizer.stream_decoder()
        self._out = out

    def push(self, token_id: int) -> None:
        self._out.write(self._decoder.push(token_id))
        self._out.flush()

    def finish(self) -> None:
        self._out.write(self._decoder.flush())


class HarmonyPrinter:
    """Shows a harmony reply as it streams: message contents, one per line, the `analysis`
    channel dimmed when `color`, or not at all without `show_reasoning` (a terminal then sees a
    status line on stderr until the rest comes); headers and control tokens are not shown.

    Output that leaves the harmony format (an untrained model's does) is shown as raw text
    from the first token not yet shown.
    """

    def __init__(self, tokenizer: Tokenizer, out: TextIO, color: bool, show_reasoning: bool = True):
        self._tokenizer, self._out, self._color = tokenizer, out, color
        self._show_reasoning = show_reasoning
        self._hiding: StatusLine | None = None  # while hidden reasoning streams before anything is shown
        self._parser = harmony.StreamParser(tokenizer)
        self._unshown: list[int] = []  # ids since the last text shown
        self._shown_message: int | None = None  # index of the message whose text was shown last
        self._dim = False
        self._raw: RawPrinter | None = None

    def push(self, token_id: int) -> None:
        if self._raw is not None:
            self._raw.push(token_id)
            return
        self._unshown.append(token_id)
        try:
            text = self._parser.push(token_id)
        except ValueError:
            self._go_raw()
            return
        if text:
            self._show(text)
        elif not self._parser.in_content and len(self._unshown) > MAX_HEADER_TOKENS:
            self._go_raw()

    def finish(self) -> None:
        if self._raw is None:
            try:
                self._parser.finish()
            except ValueError:  # the reply ended inside a message header
                self._go_raw()
        if self._raw is not None:
            self._raw.finish()
        self._stop_hiding()
        self._set_dim(False)

    def _stop_hiding(self) -> None:
        if self._hiding is not None:
            self._hiding.done()

    def _show(self, text: str) -> None:
        if self._parser.channel == "analysis" and not self._show_reasoning:
            self._unshown.clear()
            if self._hiding is None and self._shown_message is None:
                self._hiding = StatusLine("reasoning (hidden)...")
            return
        self._stop_hiding()
        message = len(self._parser.messages)
        if message != self._shown_message:
            self._set_dim(False)
            if self._shown_message is not None:
                self._out.write("\n")
            self._set_dim(self._parser.channel == "analysis")
            self._shown_message = message
        self._out.write(text)
        self._out.flush()
        self._unshown.clear()

    def _set_dim(self, dim: bool) -> None:
        if self._color and dim != self._dim:
            self._out.write(DIM if dim else RESET)
        self._dim = dim

    def _go_raw(self) -> None:
        """Show the unshown ids and everything after them as raw text."""
        self._stop_hiding()
        self._set_dim(False)
        if self._shown_message is not None:
            self._out.write("\n")
        self._raw = RawPrinter(self._tokenizer, self._out)
        for token_id in self._unshown:
            self._raw.push(token_id)


# ---------------------------------------------------------------------------- generating

class TimedTokens:
    """Iterates a token stream, timing the first token (prefill) apart from the rest (decode)."""

    def __init__(self, tokens: Iterator[int], prompt_tokens: int):
        self._tokens = tokens
        self.prompt_tokens = prompt_tokens
        self.count = 0
        self.prefill_s = 0.0
        self.decode_s = 0.0

    def __iter__(self) -> Iterator[int]:
        while True:
            start = time.perf_counter()
            try:
                token = next(self._tokens)
            except StopIteration:
                return
            elapsed = time.perf_counter() - start
            if self.count == 0:
                self.prefill_s = elapsed
            else:
                self.decode_s += elapsed
            self.count += 1
            yield token

    def summary(self, ended: str, compiled: bool = False, cached: int = 0) -> str:
        """One line: prompt tokens (and how many of them came from the previous turn's KV cache), prefill
        speed over the rest, decode speed, and why generation ended (and whether the times include
        compiling kernels)."""
        prefill = f"{(self.prompt_tokens - cached) / self.prefill_s:.1f} tok/s" if self.count else "-"
        decode = f"{(self.count - 1) / self.decode_s:.1f} tok/s" if self.count > 1 and self.decode_s else "-"
        reused = f" ({cached} cached)" if cached else ""
        first_run = " | the times include compiling the kernels (a first run; now cached)" if compiled else ""
        return (f"prompt {_count(self.prompt_tokens, 'token')}{reused}, prefill {prefill} | "
                f"{_count(self.count, 'new token')}, decode {decode} | ended: {ended}{first_run}")


class CompileWatch(event.Listener):
    """Listens for Numba compiling a kernel: on a machine's first run each kernel is compiled when it
    is first called (and cached on disk for later runs), inside the times that TimedTokens takes."""

    def __init__(self):
        self.compiled = False

    def on_start(self, _event):
        self.compiled = True

    def on_end(self, _event):
        pass


class StatusLine:
    """On a terminal, a line on stderr that says what is going on while nothing shows on stdout (the
    prompt being prefilled, reasoning that is hidden); `done` erases it before anything else is shown."""

    def __init__(self, text: str):
        self.shown = sys.stderr.isatty()
        if self.shown:
            sys.stderr.write(f"{PROG}: {text}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")  # back to the line's start, and erase it
            sys.stderr.flush()
            self.shown = False


class Runner:
    """A loaded model with the command line's settings; each call streams one reply to stdout. `chat`
    (None for --raw) holds the conversation."""

    def __init__(self, model: GptOss, tokenizer: Tokenizer, stops: frozenset[int], args: argparse.Namespace,
                 chat: Chat | None = None):
        self.model, self.tokenizer, self.stops, self.args, self.chat = model, tokenizer, stops, args, chat
        self.prompt_cache = chat.prompt_cache if chat else PromptCache()

    def complete(self, prompt_ids: list[int], budget: int, printer: RawPrinter | HarmonyPrinter) -> list[int] | None:
        """Generate up to `budget` tokens (see room) after `prompt_ids`, show them with `printer` (leaving
        out the stop token), end stdout's line and write the summary to stderr.
        The ids shown, or None when interrupted (Ctrl-C)."""
        a = self.args
        tokens = self.model.generate(prompt_ids, budget, a.temperature, top_k=a.top_k, top_p=a.top_p,
                                     min_p=a.min_p, seed=a.seed, stop_ids=sorted(self.stops),
                                     prompt_cache=self.prompt_cache)
        timed = TimedTokens(tokens, len(prompt_ids))
        ended = "max-new-tokens" if budget == a.max_new_tokens else "context full"
        shown = []
        # on a CPU a long prompt takes a while before anything shows
        notice = StatusLine(f"prefilling {len(prompt_ids) - self.prompt_cache.held(self.model, prompt_ids)} "
                            f"prompt tokens...")
        watch = CompileWatch()
        try:
            with event.install_listener("numba:compile", watch):
                for token in timed:
                    notice.done()
                    if token in self.stops:
                        ended = "stop token"
                    else:
                        printer.push(token)
                        shown.append(token)
        except KeyboardInterrupt:
            ended = "interrupted"
        except (ValueError, MemoryError):  # mid-reply (NaN logits, no memory): the error line goes below the text
            if shown:
                printer.finish()
                sys.stdout.write("\n")
            raise
        finally:
            notice.done()
        printer.finish()
        sys.stdout.write("\n")
        sys.stdout.flush()
        print(timed.summary(ended, watch.compiled, self.prompt_cache.reused), file=sys.stderr)
        return None if ended == "interrupted" else shown

    def raw(self, text: str) -> int:
        """Continue plain `text`; the exit code."""
        ids = self.tokenizer.encode(text)  # not empty: _generate refuses an empty --prompt
        return 0 if self.complete(ids, self.room(ids), RawPrinter(self.tokenizer, sys.stdout)) is not None else 130

    def room(self, prompt_ids: list[int]) -> int:
        """--max-new-tokens, or what is left of the context after `prompt_ids`; ValueError when they fill it."""
        return new_token_room(self.model, len(prompt_ids), self.args.max_new_tokens)

    def reply(self, message: str) -> bool:
        """Add the user's `message` to the chat and stream the assistant's reply, which joins the
        conversation unless interrupted (then False). Turns that no longer fit the model's context
        with a whole reply (--max-new-tokens) are left out, with a note. A message that cannot be sent (a
        ValueError: it fills the context alone, or is not UTF-8) leaves the conversation as it was."""
        with self.chat.adding(message, room=self.args.max_new_tokens) as dropped:
            prompt = self.chat.prompt()
            budget = self.room(prompt)  # (a message that fills the context alone: no turn was left out)
            if dropped:
                _note(f"the {_count(dropped, 'oldest message')} of the conversation {'is' if dropped == 1 else 'are'} "
                      f"left out, to fit the model's context of {self.model.config.max_position_embeddings} tokens")
            color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
            printer = HarmonyPrinter(self.tokenizer, sys.stdout, color, show_reasoning=not self.args.hide_reasoning)
            ids = self.complete(prompt, budget, printer)
        if ids is not None:
            self.chat.add_reply(ids)
        return ids is not None

    def conversation(self) -> int:
        """Chat with one user message per line of stdin (or per block of lines between two MULTILINE
        lines) until its end; the exit code. On a terminal, Ctrl-C stops a reply and the conversation goes
        on without it, and a message that cannot be sent is an error for that message alone; elsewhere
        each ends the conversation."""
        interactive = sys.stdin.isatty()
        if interactive:
            _note(f"type a message and press Enter ({MULTILINE} on a line of its own starts and ends a message of "
                  f"several lines); Ctrl-C stops a reply, Ctrl-D ends the conversation")
        while True:
            try:
                message = read_message(">>> " if interactive else "", "... " if interactive else "")
            except EOFError:
                if interactive:
                    print(file=sys.stderr)
                return 0
            if not message.strip():
                continue
            try:
                if self.reply(message):
                    continue
            except ValueError as error:
                if not interactive:
                    raise
                _note(f"error: {' '.join(str(error).split())}; the conversation goes on without that message")
                continue
            if not interactive:
                return 130
            _note("reply stopped; it is left out of the conversation")


MULTILINE = '"""'


def read_message(prompt: str, more: str) -> str:
    """One user message from stdin: a line, or the lines between two lines that are MULTILINE (EOFError
    at the end of input; an unclosed block ends there)."""
    line = input(prompt)
    if line.strip() != MULTILINE:
        return line
    lines = []
    while True:
        try:
            line = input(more)
        except EOFError:
            break
        if line.strip() == MULTILINE:
            break
        lines.append(line)
    return "\n".join(lines)


def _check_harmony(tokenizer: Tokenizer, folder: Path) -> None:
    names = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>")
    needed = [name for name in names if name not in harmony.special_ids(tokenizer, names)]
    if needed:
        raise CliError(f"the tokenizer of {folder} lacks the harmony token(s) {' '.join(needed)} "
                       f"that chat needs; use --raw")


def _generate(args: argparse.Namespace) -> int:
    if args.raw and args.prompt is None:
        if sys.stdin.isatty():
            raise CliError("--raw needs the text to continue: --prompt TEXT, or piped into stdin")
        args.prompt = sys.stdin.read().removesuffix("\n")  # a file, or echo's line without its end
        if args.prompt == "":
            raise CliError("--raw: stdin is empty: pipe in the text to continue (or give --prompt TEXT)")
    if args.prompt == "" or args.prompt is not None and not args.raw and not args.prompt.strip():
        raise CliError("--prompt is empty: give it the text (or leave it out to chat from stdin)")
    for name in ("reasoning_effort", "instructions", "hide_reasoning") if args.raw else ():
        if getattr(args, name):  # (empty instructions are none)
            raise CliError(f"--{name.replace('_', '-')} is for chat; --raw continues --prompt as plain text")
    filters = [f"--{name.replace('_', '-')}" for name in ("top_k", "top_p", "min_p") if getattr(args, name) is not None]
    if args.temperature == 0 and filters:
        _note(f"{' and '.join(filters)} change{'s' if len(filters) == 1 else ''} nothing at --temperature 0: "
              f"generation is greedy")
        args.top_k = args.top_p = args.min_p = None
    folder = _checkpoint_folder(args.model)
    args.reasoning_effort = args.reasoning_effort or REASONING_EFFORT
    if args.max_new_tokens is None:
        args.max_new_tokens = MAX_NEW_TOKENS if args.model else EMBEDDED_MAX_NEW_TOKENS
    config = GptOssConfig.from_file(folder / "config.json")
    tokenizer = Tokenizer.from_pretrained(folder)
    chat = not args.raw
    if chat:
        _check_harmony(tokenizer, folder)
    stops = stop_ids(folder, config, tokenizer, chat)  # (a bad generation_config.json: said before the weights load)
    model = _load_model(folder, args.device, args.quantize_experts)
    conversation = Chat(model, tokenizer, reasoning_effort=args.reasoning_effort,
                        instructions=args.instructions or None) if chat else None  # "": none
    runner = Runner(model, tokenizer, stops, args, conversation)
    if args.raw:
        return runner.raw(args.prompt)
    if args.prompt is not None:
        return 0 if runner.reply(args.prompt) else 130
    return runner.conversation()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        with user_warnings.shown_as_notes(PROG):
            return _generate(args)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout was closed early, e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CliError, OSError, ValueError) as error:  # ConfigError and CheckpointError are ValueErrors
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except MemoryError as error:  # while generating (loading says so itself): the KV cache, a prompt's activations
        print(f"{PROG}: error: out of memory while generating: {' '.join(str(error).split())}; a shorter prompt "
              f"or a smaller --max-new-tokens needs less (the KV cache holds both)", file=sys.stderr)
        return 2


def run() -> None:
    """The `gptoss-generate` entry point."""
    if sys.stdout is None:  # started with stdout closed
        print(f"{PROG}: error: stdout is closed: nothing could be shown", file=sys.stderr)
        sys.exit(2)
    sys.stdout.reconfigure(errors="replace")
    if sys.stdin is not None:  # bytes that are not UTF-8 reach the tokenizer's error, whatever the locale
        sys.stdin.reconfigure(errors="surrogateescape")
    sys.exit(main())
