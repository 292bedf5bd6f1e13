"""gptoss_np.tokenizer against tiktoken's own o200k_harmony (its pattern, its special tokens).

Needs the test-only package `tiktoken` (pip install tiktoken); runs offline: tiktoken finds
o200k_base.tiktoken in its download cache, put there from bpe-openai's copy.
"""

import hashlib
import inspect
import json
import os
import random
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import tokenizers

from gptoss_np.tokenizer import Tokenizer, cache_dir_for

tiktoken = pytest.importorskip("tiktoken")

NAMED_SPECIALS = {  # Tokenizer's attributes; 200018 is o200k_base's <|endofprompt|>
    "<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002,
    "<|constrain|>": 200003, "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007,
    "<|message|>": 200008, "<|call|>": 200012,
}
O200K_BASE_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"  # tiktoken_ext's

C_SOURCE = r"""
#include <stdio.h>
#include <stdint.h>
/* Sum of squares, with a  tab	and trailing spaces   */
static inline uint64_t sumsq(const uint32_t *restrict v, size_t n) {
    uint64_t acc = 0ULL;
    for (size_t i = 0; i < n; ++i) { acc += (uint64_t)v[i] * v[i]; }
    return acc;
}
int main(int argc, char **argv) {
    uint32_t xs[] = {1, 22, 333, 4444, 55555, 0xFFFFFFFFu};
    printf("%llu\n", (unsigned long long)sumsq(xs, sizeof xs / sizeof *xs));
    return argc > 1 ? -1 : 0;
}
"""

TEXTS = [
    "", " ", "a", "Hello, world!", "hello world", "  leading and trailing  ",
    "I'm here; you're there; they'll go; we've been; she'd say; it's HIS'S; DON'T STOP",
    "CamelCaseIdentifiers and snake_case_names and SCREAMING_CASE and mixedUP",
    "The year 2024 had 366 days; π ≈ 3.14159265358979; 1,000,000.00 $ and 12345678901234567890",
    "digits: 0 12 123 1234 12345 ١٢٣٤٥٦ ०१२३४५ 一二三 ①②③ ⅧⅨ １２３４",
    "Tabs\tand\t\ttabs\nnew\nlines\r\nwindows\r\rcarriage\n\n\n\nmany",
    "    indented\n        more\n\tmixed \t \n   \n",
    "trailing spaces   \n   and lone space at end ",
    "multiple     spaces    between     words",
    "non-breaking\u00a0space, thin\u2009space, ideographic\u3000space, line\u2028sep, nel\u0085x",
    "zero\u200bwidth\u200cjoiner\u200dtext and BOM \ufeff and soft\u00adhyphen",
    "日本語のテキストと漢字、ひらがな、カタカナ。中文文本：你好，世界！한국어 텍스트입니다.",
    "العربية: مرحبا بالعالم، كيف حالك؟ والأرقام ١٢٣",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया, यह एक परीक्षण है। தமிழ் বাংলা ગુજરાતી",
    "Русский текст: Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Ελληνικά: Γειά σου Κόσμε. ΑΒΓΔ αβγδ",
    "ไทย: สวัสดีชาวโลก ລາວ ខ្មែរ မြန်မာ",
    "Tiếng Việt: Xin chào thế giới, đây là một bài kiểm tra.",
    "emoji: 😀😃😄 👍🏽 🇫🇷🇯🇵 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻 ❤️‍🔥 1️⃣ #️⃣",
    "combining: e\u0301 a\u0300\u0323 n\u0303 Z\u0351\u0362\u0335a\u0334\u034el\u0337g\u0336o",
    "math: ∀x∈ℝ, ∃y: x²+y²≤1 ⇒ ∑ᵢ aᵢ ∫₀^∞ e^{-x} dx = 1; 𝔸𝔹ℂ 𝓧 𝟘𝟙",
    "symbols: ©®™ §¶ †‡ • … ‰ ′″ ‹› «» “quotes” ‘single’ — – ‐ ¡¿",
    "url https://example.com/path?q=1&r=two#frag and email a.b+c@example.org",
    "json {\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "punctuation!!! ??? ... ,,, ;;; ::: --- ___ === +++ *** /// \\\\\\ ||| &&& ^^^ %%% $$$ @@@",
    "special text inside: <|start|>user<|message|>hi<|end|> and <|return|> <|call|> "
    "<|channel|>final <|constrain|>json <|endoftext|> <|startoftext|> <|reserved_200018|> "
    "<|endofprompt|>",
    "<|end|>", "<|start|>", "<|reserved_201087|>",
    "x" * 3000, "ab" * 1500, "1234567890" * 300, " " * 1000, "\n" * 500, " \n" * 300,
    "😀" * 500, "你好" * 700, "a b " * 800, "-" * 2000 + "\n", ".\n" * 400,
    "\x00\x01\x02 control \x1b[31mred\x1b[0m \x7f",
    "surrogate-free astral: 𐍈 𝄞 🜁 𠀀𠀁 \U000e0041",
    C_SOURCE,
    textwrap.dedent("""
        def fib(n: int) -> int:
            '''Return the n-th Fibonacci number.'''
            a, b = 0, 1
            for _ in range(n):
                a, b = b, a + b
            return a


        if __name__ == "__main__":
            print([fib(i) for i in range(20)])  # 0, 1, 1, 2, ...
    """),
    inspect.getsource(json.decoder),
    inspect.getsource(textwrap),
    inspect.getsource(random)[:20000],
]


def _fuzz_texts(count: int, seed: int) -> list[str]:
    """Random strings mixing scripts, marks, digits, whitespace, punctuation, apostrophes."""
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789٠١٢٣٤٥٦٧٨٩०१२३४५६७८९",
        " \t\n\r\u00a0\u2003\u3000\x0b\x0c",
        "'’`\"!?.,;:-_/\\()[]{}<>|@#$%^&*+=~",
        "äöüßéèêçñøåæœ ÄÖÜÉÈÇÑØÅÆŒ",
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗ",
        "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
        "的一是不了人我在有他这为之大来以个中上们日本語ひらがなカタカナ한국어",
        "مرحباعالمكيفحالك",
        "नमस्तेदुनियाक्षत्रज्ञ",
        "\u0301\u0300\u0323\u0303\u0308\u093f\u094d\u0e31\u0e49",
        "😀👍🏽🇫🇷👨\u200d👩\u200d👧🏳️\u200d🌈❤️🔥🧑🏿\u200d💻",
        "ǅǈǋǲ ᾈᾉ ʰʲˠ ᵃᵇ 々〆ー",
    ]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        chosen = rng.sample(pools, rng.randint(1, 4))
        length = rng.randint(1, 120)
        texts.append("".join(rng.choice(rng.choice(chosen)) for _ in range(length)))
    return texts


def _random_code_points(count: int, seed: int) -> list[str]:
    """Strings of random assigned-or-not code points from the whole Unicode range."""
    rng = random.Random(seed)

    def char():
        while True:
            c = rng.randrange(0x110000)
            if not 0xD800 <= c < 0xE000:
                return chr(c)
    return ["".join(char() for _ in range(rng.randint(1, 40))) for _ in range(count)]


CORPUS = TEXTS + _fuzz_texts(400, seed=1) + _random_code_points(100, seed=2)


@pytest.fixture(scope="session")
def oracle(o200k_base_tiktoken, tmp_path_factory):
    """tiktoken's own o200k_harmony, reading o200k_base.tiktoken from the cache it would download it to.
    It names 200018 twice, o200k_base's <|endofprompt|> and <|reserved_200018|>, and which one it decodes
    to changes with tiktoken's version: the oracle keeps <|endofprompt|>, as gpt-oss's tokenizer.json."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    (cache / hashlib.sha1(O200K_BASE_URL.encode()).hexdigest()).write_bytes(o200k_base_tiktoken)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        theirs = tiktoken.get_encoding("o200k_harmony")
    specials = dict(theirs._special_tokens)
    assert specials.pop("<|reserved_200018|>") == specials["<|endofprompt|>"] == 200018
    return tiktoken.Encoding(name="o200k_harmony_gpt_oss", pat_str=theirs._pat_str,
                             mergeable_ranks=theirs._mergeable_ranks, special_tokens=specials)


def test_encode_matches_tiktoken(tok, oracle):
    mismatches = [text for text in CORPUS if tok.encode(text) != oracle.encode_ordinary(text)]
    assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0][:200]!r}"


def test_special_token_text_is_encoded_as_plain_text(tok, oracle):
    text = "<|start|>user<|message|>hi<|end|><|return|><|call|><|reserved_200100|>"
    ids = tok.encode(text)
    assert ids == oracle.encode(text, disallowed_special=())
    assert not set(ids) & oracle.special_tokens_set and max(ids) < 199998
    assert oracle.encode(text, allowed_special="all")[0] == 200006  # the oracle can tell them apart


def test_decode_round_trips(tok):
    assert [text for text in CORPUS if tok.decode(tok.encode(text)) != text] == []


def test_decode_matches_tiktoken_on_random_ids(tok, oracle):
    rng = random.Random(3)
    for _ in range(200):
        ids = [rng.randrange(201088) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids) == oracle.decode(ids, errors="replace")
        assert tok.decode_bytes(ids) == oracle.decode_bytes(ids)


def _stream(tok, ids):
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    return pieces + [decoder.flush()]


def test_stream_decode_equals_full_decode(tok):
    rng = random.Random(4)
    id_lists = [tok.encode(text) for text in CORPUS]
    id_lists += [[rng.randrange(201088) for _ in range(20)] for _ in range(200)]
    for ids in id_lists:
        assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_stream_decode_never_splits_a_character(tok):
    for text in ["😀 👨‍👩‍👧‍👦 🇯🇵", "𠀀𠀁𠀂 \U000e0041 𝄞"]:
        ids = tok.encode(text)
        partial = [i for i in ids if not _is_utf8(tok.decode_bytes([i]))]
        assert partial, "the text should have tokens that hold part of a character"
        pieces = _stream(tok, ids)
        assert all("\ufffd" not in piece for piece in pieces)
        assert "".join(pieces) == text


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_stream_decode_holds_back_and_flushes_partial_bytes(tok, oracle):
    euro = oracle.encode_single_token(b"\xe2")  # first byte of a three-byte character
    decoder = tok.stream_decoder()
    assert decoder.push(euro) == ""
    assert decoder.flush() == "\ufffd"


def test_special_ids_and_names(tok, oracle):
    """Every id from 199998 on is special and named as tiktoken names it (200018 as <|endofprompt|>:
    see oracle)."""
    for i in range(199998, 201088):
        name = oracle.decode([i])
        assert tok.decode([i]) == name and tok.special_id(name) == i and tok.is_special(i)
        assert oracle.encode_single_token(name) == i
    assert tok.decode([200018]) == "<|endofprompt|>"
    assert not tok.is_special(199997)
    assert {name: oracle.encode_single_token(name) for name in NAMED_SPECIALS} == NAMED_SPECIALS
    assert (tok.startoftext, tok.endoftext, tok.return_, tok.constrain, tok.channel, tok.start,
            tok.end, tok.message, tok.call) == tuple(NAMED_SPECIALS.values())
    with pytest.raises(KeyError):
        tok.special_id("<|im_start|>")


def test_vocab_size(tok, oracle):
    assert tok.vocab_size == 201088 == oracle.n_vocab


def test_out_of_range_ids_are_rejected(tok):
    for bad in (-1, 201088):
        with pytest.raises(ValueError, match=str(bad)):
            tok.decode([1, bad])


def test_from_pretrained_reads_a_saved_tokenizer_json(tok, oracle, tmp_path):
    tok.hf.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.vocab_size == 201088
    assert loaded.special_id("<|return|>") == 200002 and loaded.call == 200012
    for text in TEXTS:
        ids = oracle.encode_ordinary(text)
        assert loaded.encode(text) == ids
        assert loaded.decode(ids) == text


def test_from_pretrained_reads_a_tokenizer_json_made_as_gpt_oss_s(tok, oracle, o200k_base_tiktoken, tmp_path):
    """A tokenizer.json as gpt-oss ships it: made by transformers' tiktoken converter (its own settings:
    ignore_merges, a ByteLevel post-processor), with the special tokens up to 200018 only, beside a
    config.json of 201088 ids. It encodes as tiktoken does, and every id the model can write decodes
    as tiktoken decodes it: the ids past the file's last are named as o200k_harmony names them (before,
    they raised ValueError, and a Chat whose reply held one failed)."""
    pytest.importorskip("transformers")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from gptoss_np import synthetic
    (tmp_path / "o200k_base.tiktoken").write_bytes(o200k_base_tiktoken)
    TikTokenConverter(vocab_file=str(tmp_path / "o200k_base.tiktoken"), pattern=oracle._pat_str,
                      extra_special_tokens=[oracle.decode([i]) for i in range(199998, 200019)]
                      ).converted().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps(synthetic.config_dict("gpt-oss-20b")))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path / "tokenizer.json").hf.to_str() == loaded.hf.to_str()
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "tokenizer.json", tmp_path / "alone")
    assert Tokenizer.from_pretrained(tmp_path / "alone").vocab_size == 200019  # without a config.json
    assert loaded.vocab_size == 201088
    assert [text for text in CORPUS if loaded.encode(text) != oracle.encode_ordinary(text)] == []
    rng = random.Random(4)
    for ids in [list(range(199990, 201088))] + [[rng.randrange(201088) for _ in range(30)] for _ in range(100)]:
        assert loaded.decode(ids) == oracle.decode(ids, errors="replace")
    assert (loaded.start, loaded.message, loaded.end, loaded.return_, loaded.call) == \
        (tok.start, tok.message, tok.end, tok.return_, tok.call)
    assert all(loaded.is_special(i) for i in range(199998, 201088)) and not loaded.is_special(199997)


def test_reserved_ids_follow_the_tokenizer_s_last(tmp_path):
    """The ids past a tokenizer's last, up to config.json's vocab_size, are named <|reserved_N|>; a
    config.json that is not gpt-oss's, or not JSON, or whose vocab_size is not a count of ids, still lets
    the tokenizer load; a tokenizer that has one of those names already, or gaps in its ids, is an error
    that says so."""
    def write(vocab):
        tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="a")).save(str(tmp_path / "tokenizer.json"))
    vocab = {chr(97 + i): i for i in range(10)}
    write(vocab)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 16}))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert [loaded.decode([i]) for i in (9, 10, 15)] == ["j", "<|reserved_10|>", "<|reserved_15|>"]
    assert loaded.vocab_size == 16 and not loaded.is_special(9) and loaded.is_special(10)
    (tmp_path / "config.json").write_text("{not json")
    assert Tokenizer.from_pretrained(tmp_path).vocab_size == 10
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": "16"}))  # not a number of ids
    assert Tokenizer.from_pretrained(tmp_path).vocab_size == 10
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 16}))
    for odd in ({**vocab, "<|reserved_13|>": 10}, {**{k: i for k, i in vocab.items() if i != 5}, "z": 11}):
        write(odd)
        with pytest.raises(ValueError, match=r"cannot name ids 1[12]..15 .* some of those names already, or gaps"):
            Tokenizer.from_pretrained(tmp_path)


def test_only_the_added_tokens_marked_special_are_special():
    """tokenizers' AddedToken(special=False) (a word added to the vocabulary) is no special token."""
    hf = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    hf.add_tokens([tokenizers.AddedToken("hello", special=False)])
    hf.add_special_tokens(["<|x|>"])
    tok = Tokenizer(hf)
    assert [tok.is_special(i) for i in range(4)] == [False, False, False, True] and tok.special_id("<|x|>") == 3
    with pytest.raises(KeyError):
        tok.special_id("hello")


def test_from_pretrained_without_tokenizer_json_takes_o200k_harmony_for_gpt_oss_vocabularies(tok, tmp_path):
    """A checkpoint folder without tokenizer.json (weights downloaded alone) gets the built-in
    o200k_harmony when its config.json has gpt-oss's 201088 ids; another vocabulary is an error that
    names the folder and both sizes."""
    from gptoss_np import synthetic
    (tmp_path / "config.json").write_text(json.dumps(synthetic.config_dict("gpt-oss-20b")))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.hf.to_str() == tok.hf.to_str()
    original = {"num_hidden_layers": 24, "num_experts": 32, "experts_per_token": 4, "vocab_size": 201088,
                "hidden_size": 2880, "intermediate_size": 2880, "head_dim": 64, "num_attention_heads": 64,
                "num_key_value_heads": 8, "sliding_window": 128, "initial_context_length": 4096,
                "rope_theta": 150000, "rope_scaling_factor": 32.0, "rope_ntk_alpha": 1, "rope_ntk_beta": 32}
    (tmp_path / "config.json").write_text(json.dumps(original))  # OpenAI's original/ folder: no tokenizer.json
    assert Tokenizer.from_pretrained(tmp_path).hf.to_str() == tok.hf.to_str()
    (tmp_path / "config.json").write_text(json.dumps(synthetic.config_dict("tiny")))
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path} has no tokenizer.json, .* 512 .* 201088"):
        Tokenizer.from_pretrained(tmp_path)


def test_from_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(tmp_path / "tokenizer.json")):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("text, words", [
    (b"caf\xe9".decode("utf-8", "surrogateescape"), "byte 0xe9 at character 3"),
    (b"\x80".decode("utf-8", "surrogateescape"), "byte 0x80 at character 0"),
    ("a\udc7f", "the lone surrogate U+DC7F at character 1"),  # no byte decodes to it: 0x7f is ASCII
    ("ab\ud800", "the lone surrogate U+D800 at character 2"),
])
def test_text_that_is_not_unicode_is_named(tok, text, words):
    """Python decodes a byte that is not UTF-8 (>= 0x80) as U+DC80..U+DCFF (surrogateescape, as sys.argv and
    stdin are decoded): encode names that byte; any other surrogate it names as a lone one."""
    with pytest.raises(ValueError, match=rf"^the text is not valid UTF-8: {re.escape(words)} is not part of a "):
        tok.encode(text)


def test_an_empty_cache_variable_means_the_default_cache(monkeypatch):
    """GPTOSS_NP_CACHE set but empty names no folder: the cache is ~/.cache/gptoss_np, not the working folder."""
    monkeypatch.setenv("GPTOSS_NP_CACHE", "")
    assert cache_dir_for(None) == Path.home() / ".cache" / "gptoss_np"


def test_cache_is_written_and_found_through_the_environment(tok, cache_dir, tmp_path, monkeypatch):
    cached = cache_dir / "o200k_harmony-2.tokenizer.json"
    assert cached.is_file() and Tokenizer.o200k_harmony(cache_dir=cache_dir) is tok
    env_dir = tmp_path / "env_cache"
    env_dir.mkdir()
    (env_dir / cached.name).write_bytes(cached.read_bytes())
    stamp = os.stat(env_dir / cached.name).st_mtime_ns
    monkeypatch.setenv("GPTOSS_NP_CACHE", str(env_dir))
    from_env = Tokenizer.o200k_harmony()
    assert os.stat(env_dir / cached.name).st_mtime_ns == stamp  # loaded, not rebuilt
    assert from_env.encode(TEXTS[6]) == tok.encode(TEXTS[6])
