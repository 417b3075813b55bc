"""Using a model: fill a mask, generate text, embed texts.

Each function takes a `Loaded` (a model, its tokenizer, where it came from; `load` builds one from
anything `ettin.load` takes) and builds its inputs as the export's own tokenizer does, so that the
results equal transformers' and sentence-transformers' on the same export:

- `fill_mask`: `[CLS] text [SEP]`, softmax over the vocabulary at each `[MASK]`, the top k; the same
  dicts as transformers' `pipeline("fill-mask")` (score, token, token_str, sequence). Encoders only.
- `generate`: `[CLS] prompt` (BOS, nothing appended), left-padded batches, the model's KV-cache
  `generate`, stopping at `[SEP]`; greedy unless sampling is asked for; `TokenStreamer` prints the
  text of one row as it comes (it also works as a transformers streamer). Decoders only.
- `embed`: `[CLS] text [SEP]` for encoders, `[CLS] text` for decoders, cut to the model's positions;
  texts sorted by length into batches of at most `batch_tokens` tokens that run on the varlen path
  (no padding in the linear layers; on a CPU attention pads only within groups of similar length); mean pooling for encoders, the last token for decoders (`ettin.hf.clients`
  writes the same into every export, for sentence-transformers); float32 out, optionally L2-normalised.

`read_texts` / `write_embeddings` handle the files of `ettin embed` (.txt, .jsonl, .parquet -> .npy,
.parquet); every user mistake is an `EttinError` raised before any work or write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ettin.errors import EttinError
from ettin.eval.handle import resolve_device
from ettin.hf.clients import ARCH_POOLING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ettin.model import EttinModel

DEFAULT_BATCH_TOKENS = 16384
MAX_BATCH_SEQS = 512
INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")
OUTPUT_SUFFIXES = (".npy", ".parquet")


@dataclass
class Loaded:
    """A model ready for use: the network (eval mode, on its device), its tokenizer, its folder."""

    model: "EttinModel"
    tokenizer: Any
    model_dir: Path
    name: str

    @property
    def arch(self) -> str:
        return self.model.config.arch

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device


def load(
    model: "str | os.PathLike | EttinModel",
    revision: str | None = None,
    *,
    tokenizer: Any = None,
    device: str | None = None,
    dtype: str | None = None,
) -> Loaded:
    """A model from an export, a run folder (+ revision) or a hub id (+ revision), or one in memory
    (then `tokenizer`, a folder or a tokenizer, is required). dtype: float32 (default), bfloat16,
    float16 or auto (the dtype config.json records)."""
    from ettin import hf
    from ettin.tokenizer import load_tokenizer

    dev = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        model_dir = hf.resolve(model, revision)
        net = hf.load_dir(model_dir, dtype=dtype)
        name = Path(str(model)).name + (f"@{revision}" if revision else "")
        if tokenizer is None:
            from ettin.eval.handle import find_tokenizer

            tokenizer = find_tokenizer(Path(model_dir))
            if tokenizer is None:
                raise EttinError(
                    "has no tokenizer (no tokenizer.json in it or beside it)",
                    path=model_dir,
                    fix="export the model with its tokenizer (`ettin export SRC OUT --tokenizer DIR`)",
                )
    else:
        net, model_dir, name = model, Path("."), model.config.arch
        if tokenizer is None:
            raise EttinError("a model in memory needs a tokenizer", field="tokenizer", fix="pass tokenizer=DIR")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if len(tokenizer) > net.config.vocab_size:
        raise EttinError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {net.config.vocab_size}",
            field="tokenizer",
            fix="use the tokenizer the model was made with",
        )
    net.to(dev).eval()
    return Loaded(net, tokenizer, Path(model_dir), name)


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def model_inputs(lm: Loaded, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """The ids the export's tokenizer gives with truncation to `max_length` (default: the model's
    positions): `[CLS] text [SEP]` for encoders, `[CLS] text` for decoders."""
    c = lm.model.config
    limit = min(max_length or c.max_position_embeddings, c.max_position_embeddings)
    tail = [] if c.is_causal else [c.sep_token_id]
    keep = max(limit - 1 - len(tail), 0)
    return [[c.cls_token_id] + ids[:keep] + tail for ids in _encode(lm.tokenizer, texts)]


# ----------------------------------------------------------------------------------------- fill-mask


def require_arch(lm: Loaded, arch: str, command: str) -> None:
    if lm.arch == arch:
        return
    if arch == "encoder":
        raise EttinError(
            f"is a decoder; {command} needs an encoder: a decoder's causal mask lets a position see only the "
            "tokens before it, so it cannot use the text after [MASK], and it was trained to predict the next "
            "token, not a masked one",
            path=lm.model_dir,
            fix="give an encoder, or continue the text with `ettin generate`",
        )
    raise EttinError(
        f"is an encoder; {command} needs a decoder: an encoder was trained to fill [MASK] tokens with the whole "
        "text in view, not to continue a text left to right",
        path=lm.model_dir,
        fix="give a decoder, or put [MASK] where a word is missing and use `ettin fill-mask`",
    )


def fill_mask(lm: Loaded, text: str, top_k: int = 5) -> list[list[dict]]:
    """For each [MASK] in `text`, the top_k tokens as transformers' fill-mask pipeline gives them:
    {"score", "token", "token_str", "sequence"}; one list per mask, in the order of the masks."""
    import torch

    require_arch(lm, "encoder", "fill-mask")
    c = lm.model.config
    tok = lm.tokenizer
    mask_str = tok.mask_token or "[MASK]"
    if top_k < 1:
        raise EttinError(f"--top-k {top_k} must be at least 1", field="top_k")
    ids = model_inputs(lm, [text])[0]
    positions = [i for i, t in enumerate(ids) if t == c.mask_token_id]
    if not positions:
        where = "was cut off (the text is longer than the model's positions)" if mask_str in text else "is missing"
        raise EttinError(
            f"the text has no {mask_str} token to fill: it {where}",
            field="text",
            fix=f'write {mask_str} where the missing word goes, e.g. "The capital of France is {mask_str}."',
        )
    with torch.inference_mode():
        h = lm.model.hidden_states(torch.tensor([ids], device=lm.device))[0, positions]
        probs = lm.model.logits_from_hidden(h).float().softmax(-1)
    values, preds = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    single = len(positions) == 1
    out = []
    for pos, vs, ps in zip(positions, values.tolist(), preds.tolist()):
        row = []
        for v, p in zip(vs, ps):
            filled = list(ids)
            filled[pos] = p
            filled = [t for t in filled if t != c.pad_token_id]
            row.append(
                {
                    "score": v,
                    "token": p,
                    "token_str": tok.decode([p]),
                    # as the pipeline: with several masks the others stay visible
                    "sequence": tok.decode(filled, skip_special_tokens=single),
                }
            )
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------ generate


class TokenStreamer:
    """Writes the text of row 0 as tokens arrive: `put(ids)` / `end()`, the protocol of transformers'
    streamers (the first put is the prompt, which is skipped), so it serves ettin's and transformers'
    `generate` alike. Text that ends inside a multi-byte character is held back until it is whole."""

    def __init__(self, tokenizer, out: TextIO | None = None):
        self.tokenizer = tokenizer
        self.out = out
        self.ids: list[int] = []
        self.text = ""
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        flat = value.reshape(-1).tolist()
        self.ids.append(int(flat[0]))
        self._emit(final=False)

    def end(self) -> None:
        self._emit(final=True)

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return
        new = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text = text
        if new and self.out is not None:
            self.out.write(new)
            self.out.flush()


@dataclass
class Sampling:
    """How the next token is chosen: greedy (the default) or sampled."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def check(self) -> None:
        if self.temperature <= 0 and self.do_sample:
            raise EttinError(f"temperature {self.temperature} must be above 0 to sample", field="temperature")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise EttinError(f"top-p {self.top_p} must be in (0, 1]", field="top_p")
        if self.top_k is not None and self.top_k < 1:
            raise EttinError(f"top-k {self.top_k} must be at least 1", field="top_k")


def prompt_ids(lm: Loaded, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """`[CLS] prompt` (what the exported decoder tokenizer gives), cut from the left so that prompt and
    completion fit the model's positions."""
    c = lm.model.config
    room = c.max_position_embeddings - max_new_tokens
    if room < 2:
        raise EttinError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in {c.max_position_embeddings} positions",
            field="max_new_tokens",
            fix=f"use at most {c.max_position_embeddings - 2}",
        )
    return [[c.bos_token_id] + ids[-(room - 1) :] for ids in _encode(lm.tokenizer, prompts)]


def check_generation(max_new_tokens: int, sampling: Sampling, num_return_sequences: int) -> None:
    """Refuse settings that cannot work, before any model is loaded."""
    sampling.check()
    if max_new_tokens < 1:
        raise EttinError(f"--max-new-tokens {max_new_tokens} must be at least 1", field="max_new_tokens")
    if num_return_sequences < 1:
        raise EttinError(
            f"--num-return-sequences {num_return_sequences} must be at least 1", field="num_return_sequences"
        )
    if num_return_sequences > 1 and not sampling.do_sample:
        raise EttinError(
            f"greedy decoding gives one answer, so --num-return-sequences {num_return_sequences} needs sampling",
            field="num_return_sequences",
            fix="add --temperature T (and/or --top-p, --top-k)",
        )


def generate(
    lm: Loaded,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 50,
    sampling: Sampling | None = None,
    num_return_sequences: int = 1,
    batch_size: int = 8,
    streamer: Any = None,
    on_done: Callable[[int, list[str]], None] | None = None,
) -> list[list[str]]:
    """Completions (text after the prompt, special tokens dropped) of every prompt, num_return_sequences
    each. Prompts are grouped by length into left-padded batches; `on_done(i, completions)` is called
    as each prompt finishes; `streamer` (one prompt, one sequence) sees the tokens as they come."""
    import torch

    require_arch(lm, "decoder", "generate")
    s = sampling or Sampling()
    check_generation(max_new_tokens, s, num_return_sequences)
    if not prompts:
        raise EttinError("no prompt given", field="prompt", fix="give a prompt, or --prompts FILE with one per line")
    if streamer is not None and (len(prompts) > 1 or num_return_sequences > 1):
        raise ValueError("streaming needs one prompt and one sequence")
    c = lm.model.config
    seqs = prompt_ids(lm, prompts, max_new_tokens)
    generator = None
    if s.do_sample:
        generator = torch.Generator(device=lm.device)
        generator.manual_seed(0 if s.seed is None else s.seed)
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    results: list[list[str]] = [[] for _ in prompts]
    rows_per_batch = max(1, batch_size // num_return_sequences)
    for start in range(0, len(order), rows_per_batch):
        members = order[start : start + rows_per_batch]
        rows = [seqs[i] for i in members for _ in range(num_return_sequences)]
        t = max(len(r) for r in rows)
        ids = torch.full((len(rows), t), c.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), t), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, t - len(r) :] = torch.tensor(r)
            mask[j, t - len(r) :] = 1
        out = lm.model.generate(
            ids.to(lm.device),
            mask.to(lm.device),
            max_new_tokens=max_new_tokens,
            do_sample=s.do_sample,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            eos_token_id=c.eos_token_id,
            pad_token_id=c.pad_token_id,
            generator=generator,
            streamer=streamer,
        )
        new = out[:, t:].tolist()
        for k, i in enumerate(members):
            texts = []
            for row in new[k * num_return_sequences : (k + 1) * num_return_sequences]:
                if c.eos_token_id in row:
                    row = row[: row.index(c.eos_token_id)]
                texts.append(lm.tokenizer.decode(row, skip_special_tokens=True))
            results[i] = texts
            if on_done is not None:
                on_done(i, texts)
    return results


# --------------------------------------------------------------------------------------------- embed


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = MAX_BATCH_SEQS) -> list[list[int]]:
    """Indices sorted by length (longest first: a too-large batch fails at once) and grouped into batches
    of at most `batch_tokens` tokens (a longer single text gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, batch, used = [], [], 0
    for i in order:
        if batch and (used + lengths[i] > batch_tokens or len(batch) >= max_batch):
            batches.append(batch)
            batch, used = [], 0
        batch.append(i)
        used += lengths[i]
    if batch:
        batches.append(batch)
    return batches


def check_pooling(arch: str | None, pooling: str | None) -> str:
    """The pooling to use (the arch's by default); refuses an unknown one, and mean/cls for a decoder."""
    if pooling is not None and pooling not in ("mean", "cls", "last"):
        raise EttinError(f"unknown pooling '{pooling}'", field="pooling", fix="use mean, cls or last")
    if arch is None:
        return pooling or ""
    how = pooling or ARCH_POOLING[arch]
    if arch == "decoder" and how in ("mean", "cls"):
        raise EttinError(
            f"{how} pooling of a decoder: under its causal mask only the last token has read the whole text",
            field="pooling",
            fix="use last (the default for decoders)",
        )
    return how


def embed(
    lm: Loaded,
    texts: Sequence[str],
    *,
    pooling: str | None = None,
    normalize: bool = False,
    max_length: int | None = None,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: Callable[[int], None] | None = None,
) -> "np.ndarray":
    """[len(texts), hidden] float32 embeddings, in input order. `progress(n)` is told each batch's size."""
    import numpy as np
    import torch

    from ettin.eval.pooling import pool_flat

    how = check_pooling(lm.arch, pooling)
    if batch_tokens < 1:
        raise EttinError(f"batch tokens {batch_tokens} must be at least 1", field="batch_tokens")
    seqs = model_inputs(lm, texts, max_length)
    out = np.zeros((len(seqs), lm.model.config.hidden_size), dtype=np.float32)
    device = lm.device
    with torch.inference_mode():
        for batch in length_batches([len(s) for s in seqs], batch_tokens):
            lengths = [len(seqs[i]) for i in batch]
            flat = torch.tensor([t for i in batch for t in seqs[i]], dtype=torch.long, device=device)
            cu = torch.zeros(len(batch) + 1, dtype=torch.int32)
            cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
            cu = cu.to(device)
            h = lm.model.hidden_states(flat, cu_seqlens=cu, max_seqlen=max(lengths))
            vecs = pool_flat(h.float(), cu, how)
            if normalize:
                vecs = torch.nn.functional.normalize(vecs, dim=-1)
            out[batch] = vecs.cpu().numpy()
            if progress is not None:
                progress(len(batch))
    return out


# ---------------------------------------------------------------------------------------------- files


def check_output(path: str | os.PathLike, overwrite: bool, suffixes: Sequence[str] = OUTPUT_SUFFIXES) -> Path:
    """Refuse an output path with an unknown suffix, or one that exists unless `overwrite`."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise EttinError(
            f"unsupported output type '{p.suffix or '(none)'}'", path=p, fix=f"end the name in {' or '.join(suffixes)}"
        )
    if p.is_dir():
        raise EttinError("is a folder", path=p, fix="give a file name")
    if p.exists() and not overwrite:
        raise EttinError("exists", path=p, fix="choose another name, or pass --overwrite to replace it")
    return p


def read_texts(path: str | os.PathLike, field: str | None = None) -> list[str]:
    """Texts of a .txt file (one per line, every line kept so row i is line i), a .jsonl file (the
    string `field` of each object; default "text") or a .parquet file (the string column `field`)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise EttinError(f"unsupported input type '{p.suffix or '(none)'}'", path=p, fix="use .txt, .jsonl or .parquet")
    if not p.is_file():
        raise EttinError("no such file" if not p.exists() else "is not a file", path=p)
    if suffix == ".txt":
        if field is not None:
            raise EttinError("--field applies to .jsonl and .parquet inputs, not .txt", path=p, field="field")
        try:
            texts = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise EttinError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path=p) from None
    elif suffix == ".jsonl":
        texts = _read_jsonl(p, field or "text")
    else:
        texts = _read_parquet(p, field or "text")
    if not texts:
        raise EttinError("is empty: there is no text to process", path=p, fix="give a file with at least one text")
    return texts


def _read_jsonl(p: Path, field: str) -> list[str]:
    texts = []
    with open(p, encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EttinError(f"line {n} is not JSON ({exc.msg})", path=p) from None
        if not isinstance(row, dict):
            raise EttinError(f"line {n} is a JSON {type(row).__name__}, not an object", path=p)
        if field not in row:
            keys = ", ".join(sorted(row)) or "none"
            raise EttinError(
                f"line {n} has no such field (its fields: {keys})", path=p, field=field, fix="pass --field NAME"
            )
        if not isinstance(row[field], str):
            raise EttinError(f"line {n}: the value is a {type(row[field]).__name__}, not a string", path=p, field=field)
        texts.append(row[field])
    return texts


def _read_parquet(p: Path, field: str) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise EttinError(f"is not a readable parquet file ({exc})".splitlines()[0], path=p) from None
    if field not in schema.names:
        raise EttinError(
            f"has no such column (its columns: {', '.join(schema.names) or 'none'})",
            path=p,
            field=field,
            fix="pass --field NAME",
        )
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise EttinError(f"the column holds {kind}, not strings", path=p, field=field)
    col = pq.read_table(p, columns=[field]).column(field).to_pylist()
    if any(v is None for v in col):
        raise EttinError(f"row {col.index(None)} is null", path=p, field=field, fix="drop or fill the empty rows")
    return col


def write_embeddings(path: str | os.PathLike, vectors: "np.ndarray") -> Path:
    """.npy (float32 [N, H]) or .parquet (columns `index` int64 and `embedding` list<float32>[H]), atomically."""
    import numpy as np

    from ettin.io import atomic_path

    p = Path(path)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    with atomic_path(p) as tmp:
        if p.suffix.lower() == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            n, h = vectors.shape
            emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), h)
            table = pa.table({"index": pa.array(np.arange(n, dtype=np.int64)), "embedding": emb})
            pq.write_table(table, tmp)
    return p


def read_embeddings(path: str | os.PathLike) -> "np.ndarray":
    """What `write_embeddings` wrote, as float32 [N, H]."""
    import numpy as np

    p = Path(path)
    if p.suffix.lower() == ".npy":
        return np.load(p)
    import pyarrow.parquet as pq

    col = pq.read_table(p, columns=["embedding"]).column("embedding").combine_chunks()
    return col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32)
