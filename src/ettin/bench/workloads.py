"""The workloads a benchmark times, built identically for ettin and for transformers.

A `Spec` fixes everything: model shape and weights (seeded), the sequences (lengths spread evenly
over a range, shuffled), labels, dtype. ettin receives the sequences as one flat varlen batch;
transformers receives the same sequences padded to the longest, with an attention mask, in its best
configuration for the task (SDPA attention, sparse prediction for masked LM).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ettin.config import SIZES, ModelConfig, config_for_size
from ettin.errors import EttinError

TASKS = ("train", "infer", "generate")
# Per task: (batch, shortest, longest). Generation lengths are prompt lengths.
DEFAULT_SHAPES = {"train": (8, 64, 512), "infer": (16, 32, 512), "generate": (4, 32, 128)}
CPU_VOCAB = 8192  # the demo recipe's tokenizer size; Ettin sizes use ModernBERT's 50,368


@dataclass
class Spec:
    task: str = "train"
    size: str = "demo"
    arch: str = "encoder"
    dtype: str = "bf16"  # fp32, or bf16 autocast (weights and optimizer state stay fp32)
    vocab_size: int | None = None
    batch: int | None = None
    min_len: int | None = None
    max_len: int | None = None
    mask_rate: float = 0.3
    new_tokens: int = 64
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    threads: int | None = None  # torch threads (None: torch's default, one per core)
    hf_attn: str = "sdpa"  # transformers' attention: sdpa, or flash_attention_2 on a GPU with flash-attn

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise EttinError(f"unknown benchmark task '{self.task}'", field="task", fix=f"use one of {TASKS}")
        if self.size not in SIZES:
            raise EttinError(f"unknown size '{self.size}'", field="size", fix=f"use one of {', '.join(SIZES)}")
        if self.dtype not in ("fp32", "bf16"):
            raise EttinError(f"unknown dtype '{self.dtype}'", field="dtype", fix="use fp32 or bf16")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EttinError("no CUDA device is visible to torch", field="device", fix="use --device cpu")
        if self.task == "generate" and self.arch != "decoder":
            raise EttinError("generation needs a decoder", field="arch", fix="use --arch decoder")
        batch, lo, hi = DEFAULT_SHAPES[self.task]
        self.batch = self.batch or batch
        self.min_len = self.min_len or lo
        self.max_len = self.max_len or max(hi, self.min_len)
        if self.vocab_size is None:
            self.vocab_size = 50368 if SIZES[self.size].ettin else CPU_VOCAB
        if not 1 <= self.min_len <= self.max_len:
            raise EttinError(f"bad length range {self.min_len}..{self.max_len}", field="min_len")

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config(self) -> ModelConfig:
        return config_for_size(self.size, self.arch, vocab_size=self.vocab_size)

    def lengths(self) -> list[int]:
        """Evenly spread over [min_len, max_len], shuffled: a varied batch that is the same every run."""
        g = torch.Generator().manual_seed(self.seed)
        n = self.batch
        spread = torch.linspace(self.min_len, self.max_len, n).round().long()
        return spread[torch.randperm(n, generator=g)].tolist()

    def autocast(self):
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Batch:
    """The same sequences as ettin sees them (flat) and as transformers sees them (padded)."""

    seqs: list[torch.Tensor]
    ids: torch.Tensor  # [N]
    cu_seqlens: torch.Tensor  # int32 [B+1]
    max_seqlen: int
    labels: torch.Tensor | None  # [N], ettin's convention (decoder: already shifted)
    padded_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    padded_labels: torch.Tensor | None  # [B, T], transformers' convention (decoder: unshifted)

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())

    @property
    def head_tokens(self) -> int:
        """Positions whose hidden state goes through the head and vocabulary projection."""
        if self.labels is None:
            return 0
        return int((self.labels != -100).sum())


def make_batch(spec: Spec, cfg: ModelConfig, *, with_labels: bool, left_pad: bool = False) -> Batch:
    g = torch.Generator().manual_seed(spec.seed + 1)
    lengths = spec.lengths()
    top = min(cfg.vocab_size, cfg.unk_token_id)  # ordinary tokens only: specials sit at the top or at 50280+
    seqs = []
    for n in lengths:
        s = torch.randint(0, top, (n,), generator=g)
        s[0] = cfg.cls_token_id
        if cfg.arch == "encoder" and n > 1:
            s[-1] = cfg.sep_token_id
        seqs.append(s)
    labels = padded_labels = None
    if with_labels and cfg.arch == "encoder":
        label_list = []
        for i, s in enumerate(seqs):
            pick = torch.rand(len(s), generator=g) < spec.mask_rate
            pick[0] = pick[-1] = False
            if not pick.any():
                pick[len(s) // 2] = True
            lab = torch.where(pick, s, torch.full_like(s, -100))
            seqs[i] = torch.where(pick, torch.full_like(s, cfg.mask_token_id), s)
            label_list.append(lab)
        labels = torch.cat(label_list)
        padded_labels = _pad(label_list, -100, left_pad)
    elif with_labels:
        labels = torch.cat([torch.cat([s[1:], torch.tensor([-100])]) for s in seqs])
        padded_labels = _pad(seqs, -100, left_pad)  # transformers shifts inside its loss
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    mask = _pad([torch.ones(len(s), dtype=torch.long) for s in seqs], 0, left_pad)
    return Batch(
        seqs, torch.cat(seqs), cu, max(lengths), labels, _pad(seqs, cfg.pad_token_id, left_pad), mask, padded_labels
    )


def _pad(rows: list[torch.Tensor], value: int, left: bool) -> torch.Tensor:
    t = max(len(r) for r in rows)
    out = torch.full((len(rows), t), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        if left:
            out[i, t - len(r) :] = r
        else:
            out[i, : len(r)] = r
    return out


def _to(batch: Batch, device: str) -> Batch:
    moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    for name, value in moved.items():
        if isinstance(value, torch.Tensor) and name != "cu_seqlens":
            moved[name] = value.to(device)
    moved["cu_seqlens"] = batch.cu_seqlens.to(device)
    return Batch(**moved)


# ------------------------------------------------------------------------------------------ FLOPs
def attention_pairs(length: int, half_window: int | None, causal: bool) -> int:
    """How many (query, key) pairs one layer computes for one sequence, padding and masks excluded."""
    i = torch.arange(length)
    if half_window is None:
        return length * (length + 1) // 2 if causal else length * length
    if causal:
        return int(torch.clamp(i + 1, max=half_window).sum())
    return int((torch.clamp(i + half_window, max=length - 1) - torch.clamp(i - half_window, min=0) + 1).sum())


def forward_flops(cfg: ModelConfig, lengths: list[int], head_tokens: int) -> int:
    """Matmul FLOPs of one forward pass (2 per multiply-add); see docs/performance.md."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    per_token = cfg.num_hidden_layers * 2 * (4 * h * h + 3 * h * inter)
    total = per_token * sum(lengths)
    for kind in cfg.layer_types:
        window = None if kind == "full_attention" else cfg.half_window
        total += sum(4 * h * attention_pairs(n, window, cfg.is_causal) for n in lengths)
    return total + head_tokens * 2 * (h * h + h * cfg.vocab_size)


def generate_flops(cfg: ModelConfig, prompt_lengths: list[int], new_tokens: int) -> int:
    """Prefill (head on the last position only) plus one cached step per further new token."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    total = forward_flops(cfg, prompt_lengths, len(prompt_lengths))
    per_token = cfg.num_hidden_layers * 2 * (4 * h * h + 3 * h * inter) + 2 * (h * h + h * cfg.vocab_size)
    for n in prompt_lengths:
        for step in range(1, new_tokens):
            keys_global = n + step + 1
            keys_local = min(keys_global, cfg.half_window)
            total += per_token + sum(
                4 * h * (keys_global if kind == "full_attention" else keys_local) for kind in cfg.layer_types
            )
    return total


# ------------------------------------------------------------------------------------------ models
def build_ettin(spec: Spec):
    from ettin.model import EttinModel

    torch.manual_seed(spec.seed)
    return EttinModel(spec.config()).to(spec.device)


def build_hf(spec: Spec, ettin_model=None, *, with_head: bool = True):
    """transformers' ModernBertForMaskedLM / ModernBertDecoderForCausalLM with the same weights."""
    from transformers import (
        ModernBertConfig,
        ModernBertDecoderConfig,
        ModernBertDecoderForCausalLM,
        ModernBertForMaskedLM,
    )

    from ettin.hf import config_to_hf, state_dict_to_hf

    cfg = spec.config()
    d = {k: v for k, v in config_to_hf(cfg).items() if k not in ("architectures", "model_type", "dtype", "torch_dtype")}
    if cfg.arch == "encoder":
        hf_cfg, cls = ModernBertConfig(**(d | {"sparse_prediction": True})), ModernBertForMaskedLM
    else:
        hf_cfg, cls = ModernBertDecoderConfig(**d), ModernBertDecoderForCausalLM
    hf_cfg._attn_implementation = spec.hf_attn
    torch.manual_seed(spec.seed)
    model = cls(hf_cfg)
    if ettin_model is not None:
        sd = state_dict_to_hf(ettin_model.state_dict(), cfg.arch, cfg)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or [k for k in missing if k != "decoder.weight"]:
            raise RuntimeError(f"weights do not map onto transformers: {missing} {unexpected}")
    if cfg.arch == "decoder":
        model.generation_config.eos_token_id = None  # always generate exactly new_tokens, like ettin
        model.generation_config.pad_token_id = cfg.pad_token_id
    return model.to(spec.device)


def optimizer(model: torch.nn.Module):
    """StableAdamW as the recipe runs it; matrices decayed, norms and biases not."""
    from optimi import StableAdamW

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 1e-5}, {"params": no_decay, "weight_decay": 0.0}]
    return StableAdamW(groups, lr=1e-4, betas=(0.9, 0.98), eps=1e-6, decouple_lr=True)


# ---------------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """One timed unit of work (`step`) with what is needed to report on it."""

    name: str
    step: Callable[[], object]
    tokens: int  # real tokens processed (train, infer) or generated (generate) per step
    flops: int
    check: Callable[[object], object] | None = None  # turns a step's output into comparable numbers


def workloads(spec: Spec, sides: tuple[str, ...] = ("ettin", "hf")) -> dict[str, Workload]:
    """ettin's and transformers' versions of `spec.task`, sharing weights and inputs."""
    cfg = spec.config()
    model = build_ettin(spec)
    hf = build_hf(spec, model) if "hf" in sides else None
    make = {"train": _train, "infer": _infer, "generate": _generate}[spec.task]
    return make(spec, cfg, model, hf, sides)


def _maybe_compile(spec: Spec, model):
    return torch.compile(model, dynamic=True) if spec.compile else model


def _train(spec, cfg, model, hf, sides):
    batch = _to(make_batch(spec, cfg, with_labels=True), spec.device)
    head = batch.head_tokens  # useful head work: labelled positions (transformers also runs unlabelled ones)
    flops = 3 * forward_flops(cfg, spec.lengths(), head)
    out = {}
    if "ettin" in sides:
        model.train()
        opt = optimizer(model)
        fwd = _maybe_compile(spec, model)

        def ettin_step():
            with spec.autocast():
                loss = fwd(
                    batch.ids,
                    cu_seqlens=batch.cu_seqlens,
                    max_seqlen=batch.max_seqlen,
                    labels=batch.labels,
                    return_logits=False,
                ).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        out["ettin"] = Workload("ettin", ettin_step, batch.tokens, flops, float)
    if hf is not None:
        hf.train()
        hf_opt = optimizer(hf)

        def hf_step():
            with spec.autocast():
                loss = hf(
                    input_ids=batch.padded_ids, attention_mask=batch.attention_mask, labels=batch.padded_labels
                ).loss
            loss.backward()
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
            return loss.detach()

        out["hf"] = Workload("hf", hf_step, batch.tokens, flops, float)
    return out


def _infer(spec, cfg, model, hf, sides):
    """Encoder (or decoder) backbone: final hidden states of every real token, no head."""
    batch = _to(make_batch(spec, cfg, with_labels=False), spec.device)
    flops = forward_flops(cfg, spec.lengths(), 0)
    out = {}
    if "ettin" in sides:
        model.eval()
        fwd = _maybe_compile(spec, model.model)
        varlen = _varlen(batch)

        def ettin_step():
            with torch.inference_mode(), spec.autocast():
                return fwd(batch.ids, varlen)

        out["ettin"] = Workload("ettin", ettin_step, batch.tokens, flops, lambda h: h.float())
    if hf is not None:
        hf.eval()
        real = batch.attention_mask.reshape(-1).bool()

        def hf_step():
            with torch.inference_mode(), spec.autocast():
                return hf.model(input_ids=batch.padded_ids, attention_mask=batch.attention_mask).last_hidden_state

        out["hf"] = Workload("hf", hf_step, batch.tokens, flops, lambda h: h.reshape(-1, h.shape[-1])[real].float())
    return out


def _varlen(batch: Batch):
    from ettin.attention import Varlen

    return Varlen.from_cu_seqlens(batch.cu_seqlens, batch.max_seqlen)


def _generate(spec, cfg, model, hf, sides):
    """Greedy generation of exactly `new_tokens` per prompt; prompts of different lengths, left-padded."""
    batch = _to(make_batch(spec, cfg, with_labels=False, left_pad=True), spec.device)
    flops = generate_flops(cfg, spec.lengths(), spec.new_tokens)
    n_new = spec.new_tokens * spec.batch
    t = batch.padded_ids.shape[1]
    out = {}
    if "ettin" in sides:
        model.eval()

        def ettin_step():
            with torch.inference_mode(), spec.autocast():
                return model.generate(batch.padded_ids, batch.attention_mask, max_new_tokens=spec.new_tokens)

        out["ettin"] = Workload("ettin", ettin_step, n_new, flops, lambda ids: ids[:, t:])
    if hf is not None:
        hf.eval()

        def hf_step():
            with torch.inference_mode(), spec.autocast():
                return hf.generate(
                    input_ids=batch.padded_ids,
                    attention_mask=batch.attention_mask,
                    max_new_tokens=spec.new_tokens,
                    do_sample=False,
                )

        out["hf"] = Workload("hf", hf_step, n_new, flops, lambda ids: ids[:, t:])
    return out
