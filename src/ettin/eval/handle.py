"""A model ready to be evaluated: the network, its tokenizer, and how to batch it.

Everything in ettin.eval takes an `EvalModel`, so the same scoring code serves `ettin eval`, the
lm-eval and MTEB adapters, and tests that build a random model in memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin import runs
from ettin.errors import EttinError

if TYPE_CHECKING:
    import torch

    from ettin.model import EttinModel

DEFAULT_MAX_LENGTH = 512
DEFAULT_BATCH_TOKENS = 8192


@dataclass
class EvalModel:
    """An EttinModel with its tokenizer. `name` and `info` only label results.

    `max_length` caps every sequence (contexts are cut from the left, documents from the right);
    `batch_tokens` bounds the tokens in one forward pass.
    """

    model: "EttinModel"
    tokenizer: Any
    name: str = "model"
    max_length: int = DEFAULT_MAX_LENGTH
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    info: dict = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.model.config.arch

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> "torch.device":
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without any special token."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _limit(self, max_length: int | None) -> int:
        return self.max_length if max_length is None else min(self.max_length, max_length)

    def with_specials(self, ids: list[int], max_length: int | None = None) -> list[int]:
        """What the arch's exported tokenizer gives, cut to max_length: [CLS] ids [SEP] (encoder), [CLS] ids
        (decoder: its last token is the text's own; see docs/evaluation.md, embedding convention)."""
        c = self.config
        tail = [] if c.is_causal else [c.sep_token_id]
        return [c.cls_token_id] + ids[: self._limit(max_length) - 1 - len(tail)] + tail

    def pair_with_specials(self, a: list[int], b: list[int] | None, max_length: int | None = None) -> list[int]:
        """[CLS] a [SEP] b [SEP], the longer side trimmed first until it fits max_length."""
        c = self.config
        if b is None:
            return self.with_specials(a, max_length)
        a, b = list(a), list(b)
        budget = self._limit(max_length) - 3
        while len(a) + len(b) > budget:
            if len(b) >= len(a):
                b.pop()
            else:
                a.pop()
        return [c.cls_token_id] + a + [c.sep_token_id] + b + [c.sep_token_id]


def token_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 256) -> Iterator[list[int]]:
    """Indices grouped into batches of at most `batch_tokens` tokens, shortest first.

    Sorting by length puts equal lengths together, which lets attention run fused (the varlen path
    fuses equal-length batches), and makes the batching independent of input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if batch and (used + n > batch_tokens or len(batch) >= max_batch):
            yield batch
            batch, used = [], 0
        batch.append(i)
        used += n
    if batch:
        yield batch


def flat_batch(seqs: Sequence[Sequence[int]], device) -> tuple["torch.Tensor", "torch.Tensor", int]:
    """(flat ids [N], cu_seqlens int32 [B+1], max length) for the model's varlen forward."""
    import torch

    lengths = [len(s) for s in seqs]
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return ids, cu.to(device), max(lengths)


DAMAGED_MODEL_FIX = "its weights or config are damaged; evaluate an earlier checkpoint or export the model again"


class NonFiniteOutput(EttinError):
    """The model gave NaN or inf. Raised where evaluation reads the model's outputs (`check_finite`),
    and named with the model and the task by whoever knows them (the runner): an error, never a score."""

    def __init__(self, what: str, *, model: str = "the model", task: str | None = None, path: object | None = None):
        on = f" on task {task}" if task else ""
        super().__init__(f"{model} produced non-finite {what}{on}", path=path, fix=DAMAGED_MODEL_FIX)
        self.what = what

    def on_task(self, em: "EvalModel", task: str) -> "NonFiniteOutput":
        return NonFiniteOutput(self.what, model=em.name, task=task, path=em.info.get("model_dir"))


def check_finite(x: "torch.Tensor", what: str, em: "EvalModel | None" = None) -> "torch.Tensor":
    """`x` unchanged when every value is finite; NonFiniteOutput otherwise (naming `em` when given).
    Every hidden state and logit that evaluation scores passes here. A NaN or inf makes the sum NaN or
    inf, so a finite sum proves every value finite in one reduction (on CPU about 15x cheaper than
    `isfinite(x).all()`, which would cost more than the log-softmax it guards); only a sum that
    overflowed is looked at value by value."""
    import torch

    if not bool(torch.isfinite(x.sum(dtype=torch.float32))) and not bool(torch.isfinite(x).all()):
        if em is None:
            raise NonFiniteOutput(what)
        raise NonFiniteOutput(what, model=em.name, path=em.info.get("model_dir"))
    return x


@contextlib.contextmanager
def finite_logits(model: "EttinModel", em: "EvalModel | None" = None) -> Iterator[None]:
    """Within: every logit the model computes, also inside `model.generate`, goes through `check_finite`
    (a hook on the vocabulary projection, removed on leaving)."""

    def check(_module, _inputs, out) -> None:  # None: the output stays as it is
        check_finite(out, "logits", em)

    hook = model.decoder.register_forward_hook(check)
    try:
        yield
    finally:
        hook.remove()


def hidden_flat(model: "EttinModel", seqs: Sequence[Sequence[int]]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Final hidden states of several sequences, flat [N, H] in input order, and their cu_seqlens.

    The model's varlen attention fuses only equal-length sequences and loops over the rest, which on
    CPU costs far more than the arithmetic. A decoder's batch is therefore right-padded to one length
    (under a causal mask no real token sees the padding, so real positions are exact) and an
    encoder's batch runs as groups of equal length. Gradients flow when enabled. Every value is
    checked finite (`check_finite`).
    """
    h, cu = _hidden_flat(model, seqs)
    return check_finite(h, "hidden states"), cu


def _hidden_flat(model: "EttinModel", seqs: Sequence[Sequence[int]]) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    device = next(model.parameters()).device
    lengths = [len(s) for s in seqs]
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    cu = cu.to(device)
    if model.config.is_causal:
        t = max(lengths)
        pad = model.config.pad_token_id
        ids = torch.tensor([list(s) + [pad] * (t - len(s)) for s in seqs], dtype=torch.long, device=device)
        h = model.hidden_states(ids)  # [B, T, H], every row a full sequence of length T
        keep = torch.tensor([i * t + j for i, n in enumerate(lengths) for j in range(n)], device=device)
        return h.reshape(-1, h.shape[-1])[keep], cu
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    if len(groups) == 1:
        ids, _, _ = flat_batch(seqs, device)
        return model.hidden_states(ids, cu_seqlens=cu, max_seqlen=lengths[0]), cu
    parts, order = [], []
    for members in groups.values():
        ids = torch.tensor([seqs[i] for i in members], dtype=torch.long, device=device)
        parts.append(model.hidden_states(ids).reshape(-1, model.config.hidden_size))
        order.extend(members)
    h_grouped = torch.cat(parts)
    # rows of h_grouped follow `order`; put them back in input order
    starts_grouped, k = {}, 0
    for i in order:
        starts_grouped[i] = k
        k += lengths[i]
    index = torch.tensor([starts_grouped[i] + j for i in range(len(seqs)) for j in range(lengths[i])], device=device)
    return h_grouped[index], cu


# -------------------------------------------------------------------------------------- loading


def resolve_device(device: str | None) -> "torch.device":
    """'auto' (or None) is the GPU when there is one; anything else must be a CPU or CUDA device torch has."""
    import torch

    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(name)
    except (RuntimeError, ValueError):
        raise EttinError(f"unknown device '{device}'", field="device", fix="use auto, cpu, cuda or cuda:N") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise EttinError(
            f"device '{device}' asked for, but this machine has no CUDA GPU",
            field="device",
            fix="use --device cpu (or auto)",
        )
    if d.type not in ("cpu", "cuda"):
        raise EttinError(f"unsupported device '{device}'", field="device", fix="use auto, cpu, cuda or cuda:N")
    return d


def find_tokenizer(model_dir: Path) -> Path | None:
    """The tokenizer that goes with a model folder: its own, else one beside it in the run."""
    for d in (model_dir, *list(model_dir.parents)[:4]):
        for cand in (d, d / "tokenizer"):
            if (cand / "tokenizer.json").is_file():
                return cand
    return None


def load_eval_model(
    model_or_path: "EvalModel | EttinModel | str | os.PathLike",
    *,
    revision: str | None = None,
    tokenizer: Any = None,
    name: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    device: str | None = None,
) -> EvalModel:
    """An EvalModel from a folder, a training run (+ revision), or a model already in memory.

    A model in memory needs `tokenizer` (a folder or a loaded tokenizer); a folder brings its own.
    `device`: where to run ("cpu", "cuda", "cuda:1"); by default a model read from disk goes to the
    GPU when there is one and a model in memory stays where it is.
    """
    if isinstance(model_or_path, EvalModel):
        if device is not None:
            model_or_path.model.to(resolve_device(device))
        return model_or_path
    from ettin.tokenizer import load_tokenizer

    if isinstance(model_or_path, (str, os.PathLike)):
        from ettin import hf

        path = Path(model_or_path)
        if path.is_dir() and runs.is_run_dir(path) and not runs.is_model_run(path):
            raise EttinError(
                "is the run of a pair, not one model",
                path=path,
                fix=f"evaluate one member ({path / 'encoder'} or {path / 'decoder'}) or compare them "
                f"with `ettin compare {path} --out DIR`",
            )
        model_dir = hf.resolve(path, revision)
        model = hf.load_dir(model_dir).to(resolve_device(device or "auto"))
        if tokenizer is None:
            tok_dir = find_tokenizer(Path(model_dir))
            if tok_dir is None:
                raise EttinError(
                    "has no tokenizer (no tokenizer.json in it or beside it)",
                    path=model_dir,
                    fix="pass --tokenizer DIR, or export the model with its tokenizer",
                )
            tokenizer = tok_dir
        info = {"path": str(path), "model_dir": str(model_dir), "revision": revision}
        label = name or (f"{path.name}@{revision}" if revision else path.name)
    else:
        model = model_or_path
        if device is not None:
            model.to(resolve_device(device))
        if revision is not None:
            raise EttinError("--revision needs a training run's folder, not a model in memory", field="revision")
        if tokenizer is None:
            raise EttinError(
                "a model in memory needs a tokenizer",
                field="tokenizer",
                fix="pass tokenizer=<folder or tokenizer object>",
            )
        info = {}
        label = name or f"{model.config.arch}"
    tok_path = Path(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else None
    if tok_path is not None:
        tokenizer = load_tokenizer(tok_path)
    _check_tokenizer(tokenizer, tok_path, model, info.get("model_dir"))
    model.eval()
    _probe_finite(model, label, info.get("model_dir"))
    max_length = min(max_length, model.config.max_position_embeddings)
    info.update(
        {
            "device": str(next(model.parameters()).device),
            "arch": model.config.arch,
            "parameters": model.num_parameters(),
            "hidden_size": model.config.hidden_size,
            "layers": model.config.num_hidden_layers,
            "vocab_size": model.config.vocab_size,
        }
    )
    return EvalModel(model, tokenizer, label, max_length=max_length, batch_tokens=batch_tokens, info=info)


def _check_tokenizer(tokenizer: Any, tok_path: Path | None, model: "EttinModel", model_dir: str | None) -> None:
    """The rule `ettin export` applies to a pair (ettin.tokenizer.check_tokenizer_fits): no id past the
    model's vocabulary, and the special ids the tokenizer defines are the model config's."""
    from ettin.tokenizer import check_tokenizer_fits

    try:
        check_tokenizer_fits(tokenizer, model.config, defined_only=True)
    except EttinError as exc:
        config = Path(model_dir) / "config.json" if model_dir else "the model in memory"
        raise EttinError(
            f"does not fit {config}: {exc}", path=tok_path if tok_path is not None else "the tokenizer"
        ) from None


def _probe_finite(model: "EttinModel", label: str, model_dir: str | None) -> None:
    """One forward pass over [CLS] [SEP] before any task: weights that give NaN or inf are refused
    before anything is written (the outputs of every task are checked again as they are scored)."""
    import torch

    c = model.config
    ids = torch.tensor([[c.cls_token_id, c.sep_token_id]], device=next(model.parameters()).device)
    try:
        with torch.no_grad():
            check_finite(model.logits_from_hidden(check_finite(model.hidden_states(ids), "hidden states")), "logits")
    except NonFiniteOutput as exc:
        raise NonFiniteOutput(
            f"{exc.what} on a two-token probe, before any task", model=label, path=model_dir
        ) from None
