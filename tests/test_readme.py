"""The README's Python examples run as written, on the embedded model, so that they cannot drift from
the API. Only generation is scripted (the untrained model writes no harmony): a stand-in for
GptOss.generate that takes exactly generate's arguments and writes chosen completions; loading,
the tokenizer, harmony, Chat, logits and the printing are the library's own."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np

from conftest import completion_ids
from gptoss_np import GptOss, embedded

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def scripted_generate(replies: list[list[int]]):
    """generate's stand-in: checks the call against generate's signature, then yields the next reply
    up to a stop id."""
    signature = inspect.signature(GptOss.generate)

    def generate(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        stops = set(bound.arguments["stop_ids"])
        for token in replies.pop(0)[:bound.arguments["max_new_tokens"]]:
            yield token
            if token in stops:
                return

    return generate


def test_the_python_examples_run(monkeypatch, capsys, cache_dir, tok):
    weather_call = completion_ids(tok, ("analysis", None, "Need the weather."),
                                  ("commentary", "functions.get_weather", '{"city": "Paris"}'), end="<|call|>")
    replies = [completion_ids(tok, ("analysis", None, "Rayleigh scattering."), ("final", None, "Short waves scatter.")),
               weather_call, completion_ids(tok, ("final", None, "Take an umbrella."))]
    monkeypatch.setattr(GptOss, "generate", scripted_generate(replies))
    monkeypatch.setenv("GPTOSS_NP_CACHE", str(cache_dir))
    blocks = python_blocks()
    assert len(blocks) == 2  # "From Python" and the tool loop: a new block needs its reply here
    # the real checkpoint's line out, the embedded model's (commented out beside it) in
    first = re.sub(r'folder = "openai/gpt-oss-20b".*\n# (folder = .*)', r"\1", blocks[0])
    assert first != blocks[0]
    namespace = {}
    exec(compile(first, "README.md (From Python)", "exec"), namespace)
    assert namespace["folder"] == embedded.location(cache_dir)
    logits = namespace["logits"]
    model, prompt = namespace["model"], namespace["prompt"]
    assert logits.dtype == np.float32 and logits.shape == (len(prompt), model.config.vocab_size)
    assert capsys.readouterr().out == "[analysis] Rayleigh scattering.\n[final] Short waves scatter.\n"

    exec(compile(blocks[1], "README.md (tool loop)", "exec"), namespace)
    assert capsys.readouterr().out == "Take an umbrella.\n"
    assert namespace["arguments"] == {"city": "Paris"}
    assert json.loads(namespace["chat"].messages[-2]["content"]) == {"rain": True}  # the tool's answer went back
    assert replies == []


def test_the_flag_table_lists_the_command_lines_options():
    """Each option of gptoss-generate is in the README's table, and each flag there is an option."""
    from gptoss_np import cli
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `--")]
    documented = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row.split("|")[1])}
    options = {s for action in cli.build_parser()._actions for s in action.option_strings if s.startswith("--")}
    assert documented == options - {"--help"}
