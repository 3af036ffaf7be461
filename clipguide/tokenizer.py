"""Byte-level BPE tokenizer compatible with OpenAI CLIP.

Texts are cleaned (ftfy, HTML unescaping, whitespace collapsing, lowercasing), split into words by
CLIP's pre-tokenisation pattern, mapped byte by byte to printable symbols and merged by BPE.

The vocabulary layout is the one OpenAI CLIP uses: the 256 byte symbols, the same symbols with the
end-of-word marker ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``. The
end token therefore has the highest id, which the text tower relies on when it pools at the argmax
of the token ids.
"""

from __future__ import annotations

import gzip
import heapq
import html
import json
import operator
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ftfy
import regex
import torch

from .errors import CheckpointError, ConfigError, InputError, TextTooLongError, WeightsNotFoundError

__all__ = [
    "Tokenizer",
    "clean_text",
    "find_openai_vocab",
    "OPENAI_VOCAB_FILENAME",
    "OPENAI_VOCAB_SHA256",
    "OPENAI_NUM_MERGES",
    "BPE_PATH_ENV",
]

OPENAI_VOCAB_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
OPENAI_NUM_MERGES = 49152 - 256 - 2  # CLIP uses this many merges: vocabulary size 49408
BPE_PATH_ENV = "CLIPGUIDE_BPE_PATH"

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_CONTEXT_LENGTH = 77
JSON_FORMAT = "clipguide-bpe"
JSON_VERSION = 1
_CACHE_LIMIT = 200_000
_PREVIEW_CHARS = 40

_PATTERN = regex.compile(
    regex.escape(SOT) + "|" + regex.escape(EOT)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def _byte_symbols() -> dict[int, str]:
    """The printable symbol standing for each byte value (GPT-2 / CLIP byte mapping).

    Insertion order is the vocabulary order: printable bytes keep their own character and come
    first, the other bytes follow, mapped to code points from 256 up.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return symbols


_BYTE_TO_SYMBOL = _byte_symbols()
BYTE_SYMBOLS: list[str] = list(_BYTE_TO_SYMBOL.values())  # in vocabulary order, not byte order
# str.translate tables between latin-1 code points (= byte values) and byte symbols.
_FROM_SYMBOLS = {ord(s): b for b, s in _BYTE_TO_SYMBOL.items()}


def clean_text(text: str) -> str:
    """CLIP's clean-up: fix mojibake, unescape HTML twice, collapse whitespace, lowercase."""
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = ftfy.fix_text(text)  # a no-op on printable ASCII without HTML entities, and slow
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def _words(text: str) -> list[str]:
    """Clean ``text`` and split it into pre-tokens (special tokens are kept whole)."""
    return _PATTERN.findall(clean_text(text))


def _to_symbols(word: str) -> str:
    """UTF-8 bytes of ``word`` as a string of byte symbols."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_TO_SYMBOL)


def _apply_merges(symbols: list[str], ranks: Mapping[tuple[str, str], int]) -> list[str]:
    """Merge adjacent symbols, lowest-ranked pair first, until no known pair remains."""
    while len(symbols) > 1:
        best: tuple[str, str] | None = None
        best_rank = -1
        for pair in zip(symbols, symbols[1:]):
            rank = ranks.get(pair)
            if rank is not None and (best is None or rank < best_rank):
                best, best_rank = pair, rank
        if best is None:
            break
        symbols = _merge_pair(symbols, best)
    return symbols


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of ``pair`` (left to right) by the joined symbol."""
    first, second = pair
    merged = first + second
    out: list[str] = []
    i, n = 0, len(symbols)
    while i < n:
        if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
            out.append(merged)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def _initial_symbols(word: str) -> list[str]:
    """Byte symbols of a word, the last one carrying the end-of-word marker."""
    chars = list(_to_symbols(word))
    chars[-1] += END_OF_WORD
    return chars


def _standard_vocab(merges: Sequence[tuple[str, str]]) -> list[str]:
    """Token strings by id in OpenAI's layout (a joined merge may repeat; the later id wins on lookup)."""
    return [
        *BYTE_SYMBOLS,
        *(s + END_OF_WORD for s in BYTE_SYMBOLS),
        *(a + b for a, b in merges),
        SOT,
        EOT,
    ]


def _check_context_length(value: Any, error: type[Exception]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise error(f"context_length must be an integer >= 2, got {value!r}")
    return value


class Tokenizer:
    """Byte-level BPE tokenizer with CLIP's clean-up, pre-tokenisation and vocabulary layout.

    Build one with :meth:`from_openai`, :meth:`from_hf`, :meth:`train` or :meth:`from_json`.
    ``merges`` are ordered pairs of symbols (rank = position). ``vocab`` maps token strings to
    ids; when omitted, OpenAI's layout is derived from the merges.
    """

    def __init__(
        self,
        merges: Iterable[tuple[str, str]],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        vocab: Mapping[str, int] | None = None,
    ) -> None:
        self._merges: tuple[tuple[str, str], ...] = tuple((str(a), str(b)) for a, b in merges)
        self._context_length = _check_context_length(context_length, ConfigError)
        self._check_merges()
        standard = _standard_vocab(self._merges)
        if vocab is None:
            self._id_to_token: dict[int, str] = dict(enumerate(standard))
            self._token_to_id: dict[str, int] = {tok: i for i, tok in enumerate(standard)}
        else:
            self._token_to_id = {str(tok): int(i) for tok, i in vocab.items()}
            self._id_to_token = {i: tok for tok, i in self._token_to_id.items()}
            self._check_vocab()
        self._standard_layout = self._token_to_id == {tok: i for i, tok in enumerate(standard)}
        self._ranks = {pair: rank for rank, pair in enumerate(self._merges)}
        self._sot = self._token_to_id[SOT]
        self._eot = self._token_to_id[EOT]
        if self._eot != max(self._id_to_token):
            raise CheckpointError(
                f"the end token {EOT} must have the highest id (the text tower pools at the argmax of "
                f"the ids), but it has id {self._eot} and the highest id is {max(self._id_to_token)}")
        self._cache: dict[str, tuple[int, ...]] = {}

    def _check_merges(self) -> None:
        """Each merge must join symbols that exist: bytes (with or without ``</w>``) or earlier merges."""
        known = set(BYTE_SYMBOLS) | {s + END_OF_WORD for s in BYTE_SYMBOLS}
        for rank, (a, b) in enumerate(self._merges):
            if a not in known or b not in known:
                missing = a if a not in known else b
                raise CheckpointError(
                    f"merge {rank} ({a!r} {b!r}) uses the symbol {missing!r}, which is neither a byte "
                    "symbol nor produced by an earlier merge")
            known.add(a + b)

    def _check_vocab(self) -> None:
        """A given vocabulary must hold every symbol BPE can produce and both special tokens."""
        needed = [*BYTE_SYMBOLS, *(s + END_OF_WORD for s in BYTE_SYMBOLS), *(a + b for a, b in self._merges), SOT, EOT]
        missing = [tok for tok in needed if tok not in self._token_to_id]
        if missing:
            raise CheckpointError(
                f"the vocabulary lacks {len(missing)} token(s) the merges can produce, e.g. {missing[:5]!r}")
        if len(self._id_to_token) != len(self._token_to_id) or min(self._id_to_token) < 0:
            raise CheckpointError("the vocabulary ids must be distinct non-negative integers")

    # ----------------------------------------------------------------------------- constructors

    @classmethod
    def from_openai(
        cls,
        path: str | os.PathLike[str] | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        num_merges: int | None = OPENAI_NUM_MERGES,
    ) -> Tokenizer:
        """Read a merges file in OpenAI's format (gzip or plain text: a header line, then one merge a line).

        Without ``path`` the file is located by :func:`find_openai_vocab` and its SHA256 checked; an
        explicit path (a file, or a directory holding ``bpe_simple_vocab_16e6.txt.gz``) is read without
        that check. At most ``num_merges`` merges are used (None: all).
        """
        file = find_openai_vocab() if path is None else Path(path).expanduser()
        if file.is_dir():
            file = file / OPENAI_VOCAB_FILENAME
        if not file.is_file():
            raise WeightsNotFoundError(f"BPE merges file not found: {file}")
        data = file.read_bytes()
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as exc:
                raise CheckpointError(f"{file} is not a valid gzip file: {exc}") from exc
        try:
            lines = data.decode("utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{file} is not UTF-8 text: {exc}") from exc
        merges = _parse_merge_lines(lines[1:], str(file), first_line_number=2)
        if num_merges is not None:
            merges = merges[:num_merges]
        return cls(merges, context_length=context_length)

    @classmethod
    def from_hf(cls, directory: str | os.PathLike[str], context_length: int | None = None) -> Tokenizer:
        """Read a Hugging Face CLIPTokenizer directory (``vocab.json`` + ``merges.txt``), keeping its ids.

        ``context_length`` defaults to ``model_max_length`` from ``tokenizer_config.json``, else 77.
        """
        root = Path(directory)
        vocab_file, merges_file = root / "vocab.json", root / "merges.txt"
        for file in (vocab_file, merges_file):
            if not file.is_file():
                raise WeightsNotFoundError(f"{file.name} not found in {root} (a Hugging Face CLIP tokenizer "
                                           "directory holds vocab.json and merges.txt)")
        try:
            vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{vocab_file} is not valid JSON: {exc}") from exc
        if not isinstance(vocab, dict) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
            raise CheckpointError(f"{vocab_file} must map token strings to integer ids")
        try:
            lines = merges_file.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{merges_file} is not UTF-8 text: {exc}") from exc
        skip = 1 if lines and lines[0].startswith("#version") else 0
        merges = _parse_merge_lines(lines[skip:], str(merges_file), first_line_number=skip + 1)
        if context_length is None:
            context_length = _hf_context_length(root / "tokenizer_config.json")
        return cls(merges, context_length=context_length, vocab=vocab)

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        min_frequency: int = 2,
        progress: bool = False,
    ) -> Tokenizer:
        """Learn merges from ``corpus`` until the vocabulary has ``vocab_size`` entries.

        Training stops early when no pair occurs at least ``min_frequency`` times. The vocabulary
        always holds all 512 byte symbols and the two special tokens, so ``vocab_size >= 514``.
        Ties between equally frequent pairs are broken by the pairs' order, so training is deterministic.
        """
        base = 2 * len(BYTE_SYMBOLS) + 2
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < base:
            raise ConfigError(f"vocab_size must be an integer >= {base} (512 byte symbols + 2 special "
                              f"tokens), got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ConfigError(f"min_frequency must be a positive integer, got {min_frequency!r}")
        _check_context_length(context_length, ConfigError)
        word_counts: Counter[str] = Counter()
        for index, text in enumerate(corpus):
            if not isinstance(text, str):
                raise InputError(f"corpus item {index} is {type(text).__name__}, expected str")
            word_counts.update(w for w in _words(text) if w not in (SOT, EOT))
        merges = _learn_merges(word_counts, vocab_size - base, min_frequency, progress)
        return cls(merges, context_length=context_length)

    # ----------------------------------------------------------------------------- serialisation

    def to_json(self) -> str:
        """Compact self-contained JSON: format, version, context length and merges (and the vocabulary
        only when its ids differ from OpenAI's layout)."""
        data: dict[str, Any] = {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "context_length": self._context_length,
            "merges": [f"{a} {b}" for a, b in self._merges],
        }
        if not self._standard_layout:
            data["vocab"] = self._token_to_id
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str | bytes) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json` output."""
        try:
            data = json.loads(s)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"tokenizer JSON cannot be parsed: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
            raise CheckpointError(f"tokenizer JSON must be an object with \"format\": \"{JSON_FORMAT}\"")
        if data.get("version") != JSON_VERSION:
            raise CheckpointError(f"unsupported tokenizer JSON version {data.get('version')!r} "
                                  f"(this library reads version {JSON_VERSION})")
        raw = data.get("merges")
        if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
            raise CheckpointError("tokenizer JSON: \"merges\" must be a list of strings")
        merges = _parse_merge_lines(raw, "tokenizer JSON", first_line_number=0, allow_blank=False)
        vocab = data.get("vocab")
        if vocab is not None and not (isinstance(vocab, dict) and all(
                isinstance(i, int) and not isinstance(i, bool) for i in vocab.values())):
            raise CheckpointError("tokenizer JSON: \"vocab\" must map token strings to integer ids")
        context_length = data.get("context_length")
        try:
            _check_context_length(context_length, CheckpointError)
            return cls(merges, context_length=context_length, vocab=vocab)
        except ConfigError as exc:
            raise CheckpointError(f"tokenizer JSON: {exc}") from exc

    # ----------------------------------------------------------------------------- properties

    @property
    def vocab_size(self) -> int:
        """Size of the embedding table the ids index (highest id + 1)."""
        return self._eot + 1

    @property
    def sot_token_id(self) -> int:
        return self._sot

    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def merges(self) -> tuple[tuple[str, str], ...]:
        return self._merges

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
                f"context_length={self._context_length})")

    # ----------------------------------------------------------------------------- encoding

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            if word == SOT or word == EOT:
                ids = (self._token_to_id[word],)
            else:
                ids = tuple(self._token_to_id[s] for s in _apply_merges(_initial_symbols(word), self._ranks))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without start and end tokens."""
        if not isinstance(text, str):
            raise InputError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        for word in _words(text):
            ids.extend(self._word_ids(word))
        return ids

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` without start and end tokens (it fits when this + 2 <= context)."""
        return len(self.encode(text))

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: ``</w>`` becomes a space, invalid UTF-8 becomes U+FFFD, ends are stripped.

        Padding zeros are ordinary ids; cut a row of :meth:`__call__` output at its end token first.
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise InputError(f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.reshape(-1).tolist()
        try:
            items = list(ids)
        except TypeError:
            raise InputError(f"decode expects a sequence of integer ids, got {type(ids).__name__}") from None
        pieces: list[str] = []
        for item in items:
            try:
                i = operator.index(item)  # int or numpy integer, not float
            except TypeError:
                raise InputError(f"decode expects integer ids, got {item!r}") from None
            token = self._id_to_token.get(i)
            if token is None:
                raise InputError(f"token id {i} is outside this vocabulary (size {self.vocab_size})")
            if skip_special_tokens and i in (self._sot, self._eot):
                continue
            pieces.append(token)
        data = "".join(pieces).translate(_FROM_SYMBOLS).encode("latin-1", errors="replace")
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ").strip()

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int | None = None,
        truncate: bool = False,
    ) -> torch.Tensor:
        """Tokenize texts into a LongTensor ``(N, context_length)``: start, ids, end, zero padding.

        A text that does not fit raises :class:`TextTooLongError` unless ``truncate`` is set, which
        cuts it and keeps the end token last.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif texts is None or isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
            raise InputError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
        texts = list(texts)
        length = self._context_length if context_length is None else _check_context_length(context_length, InputError)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"text {index} is {type(text).__name__}, expected str")
        result = torch.zeros(len(texts), length, dtype=torch.long)
        for index, text in enumerate(texts):
            tokens = [self._sot, *self.encode(text), self._eot]
            if len(tokens) > length:
                if not truncate:
                    preview = text[:_PREVIEW_CHARS] + ("..." if len(text) > _PREVIEW_CHARS else "")
                    raise TextTooLongError(
                        f"text {index} ({preview!r}) is {len(tokens)} tokens long with start and end "
                        f"tokens, more than the context length {length}; pass truncate=True to cut it "
                        "(the end token is kept last)")
                tokens = tokens[:length]
                tokens[-1] = self._eot
            result[index, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return result


# --------------------------------------------------------------------------------- file helpers

def _parse_merge_lines(
    lines: Iterable[str], source: str, first_line_number: int, allow_blank: bool = True
) -> list[tuple[str, str]]:
    """Parse ``"a b"`` lines into pairs; blank lines are skipped when allowed."""
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=first_line_number):
        line = line.rstrip("\r")
        parts = line.split()
        if not parts and allow_blank:
            continue
        if len(parts) != 2:
            where = f"line {number}" if allow_blank else f"merge {number}"
            raise CheckpointError(f"{source}, {where}: expected two symbols separated by a space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _hf_context_length(config_file: Path) -> int:
    """``model_max_length`` from a tokenizer_config.json when it is a plausible value, else 77."""
    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_CONTEXT_LENGTH
    if isinstance(value, int) and not isinstance(value, bool) and 2 <= value <= 100_000:
        return value
    return DEFAULT_CONTEXT_LENGTH


def _default_vocab_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "clipguide" / OPENAI_VOCAB_FILENAME


def find_openai_vocab(path: str | os.PathLike[str] | None = None) -> Path:
    """Locate OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` and verify its SHA256.

    Looks at ``path``, else the ``CLIPGUIDE_BPE_PATH`` environment variable, else
    ``$XDG_CACHE_HOME/clipguide/`` (default ``~/.cache/clipguide/``). A directory given by ``path`` or
    the variable is searched for the file name.
    """
    if path is not None:
        candidate, origin = Path(path), "the given path"
    elif os.environ.get(BPE_PATH_ENV):
        candidate, origin = Path(os.environ[BPE_PATH_ENV]), f"${BPE_PATH_ENV}"
    else:
        candidate, origin = _default_vocab_path(), "the cache directory"
    candidate = candidate.expanduser()
    if candidate.is_dir():
        candidate = candidate / OPENAI_VOCAB_FILENAME
    if not candidate.is_file():
        raise WeightsNotFoundError(
            f"OpenAI's BPE vocabulary {OPENAI_VOCAB_FILENAME} (SHA256 {OPENAI_VOCAB_SHA256}) was not found "
            f"at {candidate} ({origin}). Put the file (it is distributed with OpenAI's CLIP and with "
            f"open_clip) in one of: a path passed explicitly; the path in ${BPE_PATH_ENV}; "
            f"{_default_vocab_path()}.")
    from .hub import sha256_file

    actual = sha256_file(candidate)
    if actual != OPENAI_VOCAB_SHA256:
        raise CheckpointError(
            f"{candidate} has SHA256 {actual}, but OpenAI's {OPENAI_VOCAB_FILENAME} has "
            f"{OPENAI_VOCAB_SHA256}; the file is corrupted or a different one. Replace it with the original.")
    return candidate


# --------------------------------------------------------------------------------- training

def _pair_counts(symbols: Sequence[str]) -> Counter[tuple[str, str]]:
    return Counter(zip(symbols, symbols[1:]))


def _learn_merges(
    word_counts: Mapping[str, int], num_merges: int, min_frequency: int, progress: bool
) -> list[tuple[str, str]]:
    """Greedy BPE over unique words with incremental pair counts and a lazily updated max-heap."""
    words = [_initial_symbols(w) for w in word_counts]
    freqs = list(word_counts.values())
    counts: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for index, (symbols, freq) in enumerate(zip(words, freqs)):
        for pair, n in _pair_counts(symbols).items():
            counts[pair] = counts.get(pair, 0) + n * freq
            where.setdefault(pair, set()).add(index)
    # Heap entries (-count, pair); an entry is stale when the pair's count has changed since.
    heap = [(-n, pair) for pair, n in counts.items()]
    heapq.heapify(heap)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=num_merges, desc="BPE merges", unit="merge")
    merges: list[tuple[str, str]] = []
    done: set[tuple[str, str]] = set()
    try:
        while len(merges) < num_merges and heap:
            negative, pair = heapq.heappop(heap)
            if counts.get(pair, 0) != -negative or pair in done:
                continue  # stale entry, or a pair re-formed by later merges (ranks stay unique)
            if -negative < min_frequency:
                break
            merges.append(pair)
            done.add(pair)
            if bar is not None:
                bar.update(1)
            changed: set[tuple[str, str]] = set()
            for index in where.pop(pair):
                symbols, freq = words[index], freqs[index]
                before = _pair_counts(symbols)
                if pair not in before:
                    continue
                after_symbols = _merge_pair(symbols, pair)
                after = _pair_counts(after_symbols)
                words[index] = after_symbols
                for p, n in before.items():
                    if after.get(p) != n:
                        counts[p] -= n * freq
                        changed.add(p)
                        if p not in after and p != pair:
                            where[p].discard(index)
                for p, n in after.items():
                    if before.get(p) != n:
                        counts[p] = counts.get(p, 0) + n * freq
                        changed.add(p)
                        where.setdefault(p, set()).add(index)
            counts.pop(pair, None)
            for p in changed:
                n = counts.get(p, 0)
                if n > 0:
                    heapq.heappush(heap, (-n, p))
                else:
                    counts.pop(p, None)
                    where.pop(p, None)
    finally:
        if bar is not None:
            bar.close()
    return merges
