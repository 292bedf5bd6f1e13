"""The o200k_harmony tokenizer of gpt-oss, on top of Hugging Face `tokenizers`.

`Tokenizer.from_pretrained(folder)` loads the `tokenizer.json` that checkpoints ship (a hub id works too;
without one, a checkpoint with gpt-oss's vocabulary gets o200k_harmony).
`Tokenizer.o200k_harmony()` builds the same vocabulary offline from the o200k_base ranks
in the `bpe-openai` package (a byte-level BPE whose merges are derived from the ranks),
adds the harmony special tokens and caches the result as a `tokenizer.json`.

Text is always encoded as ordinary text: `"<|end|>"` typed by a user becomes several
ordinary tokens, never the special id. Special ids come from `special_id` or the named
attributes (`tok.start`, `tok.message`, ...); decoding writes special tokens as their text.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from . import hub
from .config import is_token_id

VOCAB_SIZE = 201088
FIRST_SPECIAL_ID = 199998
HARMONY_SPECIALS = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
    "<|endofprompt|>": 200018,  # o200k_base's, kept by gpt-oss's tokenizer.json and tiktoken's o200k_harmony
}
_CACHE_FILE = "o200k_harmony-2.tokenizer.json"  # a new name whenever what build_o200k_harmony writes changes


def harmony_special_tokens() -> dict[str, int]:
    """All special tokens of o200k_harmony: the named ones, every other id from 199998 up
    to 201087 as `<|reserved_N|>` (N = the id), in id order (as tiktoken's o200k_harmony; the
    tokenizer.json that gpt-oss ships ends at 200018)."""
    names = {i: _reserved(i) for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)}
    names.update({i: name for name, i in HARMONY_SPECIALS.items()})
    return {names[i]: i for i in sorted(names)}


@functools.cache
def _byte_to_char() -> tuple[str, ...]:
    """The byte-level alphabet of GPT-2 style BPE: printable Latin-1 bytes stand for
    themselves, the other 68 bytes map in order to the characters from U+0100 up."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = (b for b in range(256) if b not in printable)
    table = {b: chr(b) for b in printable}
    table.update({b: chr(0x100 + n) for n, b in enumerate(others)})
    return tuple(table[b] for b in range(256))


@functools.cache
def _char_to_byte() -> dict[int, int]:
    """`str.translate` table from byte-level characters back to the bytes (as code points)."""
    return {ord(c): b for b, c in enumerate(_byte_to_char())}


def _byte_level(token: bytes) -> str:
    """The byte-level string that stands for `token` in a `tokenizer.json` vocabulary."""
    chars = _byte_to_char()
    return "".join(chars[b] for b in token)


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """BPE merges equivalent to tiktoken's rank-driven merging.

    tiktoken merges, anywhere in a piece, the adjacent pair whose concatenation has the
    lowest rank. So every split of a token into two tokens is a merge, and a merge's
    priority is the rank of the token it makes (two splits of one token never compete:
    they cannot both be adjacent pairs of the same piece at once)."""
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(_byte_level(left), _byte_level(right)) for *_, left, right in merges]


def build_o200k_harmony() -> tokenizers.Tokenizer:
    """Build o200k_harmony as a Hugging Face tokenizer from bpe-openai's o200k_base ranks."""
    import bpe_openai

    base = bpe_openai.get_encoding("o200k_base")
    ranks, pattern = base._mergeable_ranks, base._pat_str
    if sorted(ranks.values()) != list(range(FIRST_SPECIAL_ID)):
        raise ValueError(f"bpe-openai's o200k_base ranks are not 0..{FIRST_SPECIAL_ID - 1}")
    vocab = {_byte_level(token): rank for token, rank in ranks.items()}
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=_merges_from_ranks(ranks)))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    specials = harmony_special_tokens()
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in specials])
    wrong = [name for name, i in specials.items() if hf.token_to_id(name) != i]
    if wrong or hf.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"built {hf.get_vocab_size()} ids; special tokens at wrong ids: "
                         f"{wrong[:5]}")
    return hf


def cache_dir_for(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder: the argument, else `$GPTOSS_NP_CACHE` (unless empty), else `~/.cache/gptoss_np`."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("GPTOSS_NP_CACHE") or Path.home() / ".cache" / "gptoss_np")


def make_cache_dir(folder: Path) -> None:
    """Make `folder` (in the cache) and its parents, with an error that says how to move the cache."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise type(error)(f"cannot make the cache folder {folder} ({error.strerror or error}): set "
                          f"GPTOSS_NP_CACHE to a folder that can be written") from None


def _read_tokenizer_json(file: Path) -> tokenizers.Tokenizer:
    """Load a `tokenizer.json`, with errors that name the file."""
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer file at {file}")
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises a bare Exception for any bad file
        raise ValueError(f"cannot read tokenizer file {file}: {error}") from error


def _reserved(i: int) -> str:
    return f"<|reserved_{i}|>"


def _model_vocab_size(folder: Path) -> int | None:
    """config.json's vocab_size in `folder`, or None where there is none (no file, not JSON, no such key)."""
    try:
        size = json.loads((folder / "config.json").read_text()).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if is_token_id(size) else None


def _reserve_ids(hf: tokenizers.Tokenizer, vocab_size: int | None) -> tokenizers.Tokenizer:
    """`hf`, with special tokens `<|reserved_N|>` added for the ids N past its last, below `vocab_size`."""
    first = max(hf.get_vocab(with_added_tokens=True).values()) + 1
    if vocab_size is None or vocab_size <= first:
        return hf
    names = [_reserved(i) for i in range(first, vocab_size)]
    hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in names])
    if any(hf.token_to_id(name) != i for i, name in enumerate(names, first)):
        raise ValueError(f"cannot name ids {first}..{vocab_size - 1} (the model's, past the tokenizer's last) "
                         f"<|reserved_N|>: the tokenizer has some of those names already, or gaps in its ids")
    return hf


class _SpecialId:
    """Class attribute that reads the id of one named special token from the tokenizer."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, tokenizer: "Tokenizer | None", owner: type) -> int:
        if tokenizer is None:
            return self  # type: ignore[return-value]
        return tokenizer.special_id(self.name)


class Tokenizer:
    """A byte-level BPE tokenizer (gpt-oss's o200k_harmony) with harmony special tokens.

    `hf` is the wrapped `tokenizers.Tokenizer`; `hf.save(path)` writes a `tokenizer.json`.
    """

    startoftext = _SpecialId("<|startoftext|>")
    endoftext = _SpecialId("<|endoftext|>")
    return_ = _SpecialId("<|return|>")
    constrain = _SpecialId("<|constrain|>")
    channel = _SpecialId("<|channel|>")
    start = _SpecialId("<|start|>")
    end = _SpecialId("<|end|>")
    message = _SpecialId("<|message|>")
    call = _SpecialId("<|call|>")

    def __init__(self, hf: tokenizers.Tokenizer):
        self.hf = hf
        hf.encode_special_tokens = True
        self._specials = {
            token.content: i for i, token in hf.get_added_tokens_decoder().items() if token.special
        }
        self._special_ids = frozenset(self._specials.values())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load `path` itself if it names a .json file, else the `tokenizer.json` of the checkpoint that
        `path` names: a folder, or a hub id (`openai/gpt-oss-20b`) in the local Hugging Face cache (hub.py).

        A checkpoint without a tokenizer.json whose config.json has gpt-oss's vocabulary (201088 ids) gets
        `o200k_harmony()`, the tokenizer that the gpt-oss checkpoints ship. A checkpoint's tokenizer.json
        with fewer ids than its config.json's vocab_size (gpt-oss's ends at 200018, of 201088) has the
        rest named `<|reserved_N|>`, special, as o200k_harmony names them: every id the model can write
        decodes. That holds for a .json path too, read with the config.json beside it (if any)."""
        file = Path(path).expanduser()
        if file.suffix == ".json":
            return cls(_reserve_ids(_read_tokenizer_json(file), _model_vocab_size(file.parent)))
        folder = hub.resolve(path)
        file, vocab_size = folder / "tokenizer.json", _model_vocab_size(folder)
        if not file.is_file() and vocab_size == VOCAB_SIZE:
            return cls.o200k_harmony()
        if not file.is_file() and vocab_size is not None:
            raise FileNotFoundError(f"{folder} has no tokenizer.json, and its vocab_size {vocab_size} is not "
                                    f"o200k_harmony's {VOCAB_SIZE}: add the tokenizer.json that belongs to "
                                    f"the checkpoint")
        return cls(_reserve_ids(_read_tokenizer_json(file), vocab_size))

    @classmethod
    def o200k_harmony(cls, cache_dir: str | os.PathLike | None = None) -> "Tokenizer":
        """gpt-oss's tokenizer, built offline from bpe-openai on first use, then cached.

        The cache is `<cache_dir>/o200k_harmony-2.tokenizer.json`; `cache_dir` defaults to
        `$GPTOSS_NP_CACHE` or `~/.cache/gptoss_np`; delete the file to rebuild it. Within
        one process the loaded tokenizer is shared.
        """
        return _cached_o200k_harmony((cache_dir_for(cache_dir) / _CACHE_FILE).resolve())

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included (201088 for gpt-oss)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def special_id(self, name: str) -> int:
        """The id of the special token `name`, e.g. `"<|return|>"`."""
        try:
            return self._specials[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of this tokenizer") from None

    def is_special(self, token_id: int) -> bool:
        """Whether `token_id` is a special token."""
        return token_id in self._special_ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token text in it is encoded as ordinary text. ValueError for text
        that is not Unicode: a lone surrogate, as Python decodes bytes that are not UTF-8 (a command line's)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(text[error.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}"
            raise ValueError(f"the text is not valid UTF-8: {what} at character {error.start} is not part of a UTF-8 "
                             f"character (text in another encoding?)") from None
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """The text of `ids`; special tokens appear as their text, invalid UTF-8 as U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of `ids` (a token may hold part of a UTF-8 character)."""
        table = self._token_bytes
        pieces = []
        for i in ids:
            if not 0 <= i < len(table):
                raise ValueError(f"token id {i} is outside 0..{len(table) - 1}")
            pieces.append(table[i])
        return b"".join(pieces)

    def stream_decoder(self) -> "StreamDecoder":
        """An incremental decoder: push ids one at a time, get the completed text."""
        return StreamDecoder(self)

    @functools.cached_property
    def _token_bytes(self) -> tuple[bytes, ...]:
        """Bytes of every token id, built once from the byte-level vocabulary."""
        table: list[bytes] = [b""] * self.vocab_size
        to_bytes = _char_to_byte()
        for token, i in self.hf.get_vocab(with_added_tokens=False).items():
            table[i] = token.translate(to_bytes).encode("latin-1")
        for i, token in self.hf.get_added_tokens_decoder().items():
            table[i] = token.content.encode("utf-8")
        return tuple(table)


class StreamDecoder:
    """Turns a stream of token ids into text without ever splitting a UTF-8 character.

    `push` returns the text completed by one more token (bytes of an unfinished character
    are held back); `flush` returns what is left, with U+FFFD for an unfinished character.
    The pieces joined equal `Tokenizer.decode` of all the ids.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        return self._utf8.decode(self._tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """End the stream; return the held-back text."""
        return self._utf8.decode(b"", final=True)


@functools.lru_cache(maxsize=4)
def _cached_o200k_harmony(cache_file: Path) -> Tokenizer:
    """o200k_harmony loaded from `cache_file`, which is built and written first if absent."""
    if not cache_file.is_file():
        make_cache_dir(cache_file.parent)
        partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
        build_o200k_harmony().save(str(partial))
        os.replace(partial, cache_file)
    return Tokenizer(_read_tokenizer_json(cache_file))

