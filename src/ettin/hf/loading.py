"""Loading: which folder a path, a training run or a hub id stands for (`resolve`), and an EttinModel
from a Hugging Face model folder (`load_dir`, `load`).

Reading accepts what transformers 4.x and 5.x write (legacy and current config keys, with or
without the tied `decoder.weight`, one file or an index of shards).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ettin import runs
from ettin.config import ModelConfig
from ettin.errors import EttinError
from ettin.hf.adapter import check_arch, config_from_hf, state_dict_from_hf
from ettin.hf.files import read_weights
from ettin.tokenizer import check_vocab_file_fits

if TYPE_CHECKING:
    from ettin.model import EttinModel

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailableError(EttinError):
    """The hub failed (a server error, a rate limit, no network): not a mistake in the user's input,
    so it exits 1, not 2, and its message says to try again rather than to change the command. A
    subclass of EttinError only so that the CLI prints it as one line."""

    exit_code = 1

    def __init__(self, repo_id: str, detail: str):
        super().__init__(
            f"is not a local folder, and the hub could not deliver it ({detail})",
            path=repo_id,
            fix="a problem with the hub or the network, not with the command; try again later, "
            "or give a local model folder",
        )


# --------------------------------------------------------------------------------------- resolving


def resolve(path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local model folder `path` (and `revision`) stand for: a model folder, a training run's
    checkpoint (through ettin.runs), a folder of revisions (one model folder per tag, the local
    stand-in for a hub repository's tags), or a hub repository downloaded for users with network."""
    p = Path(path).expanduser()
    if p.is_dir() and runs.is_run_dir(p):
        return runs.resolve_revision(p, revision)
    if p.is_dir() and is_revisions_dir(p):
        return _revision_dir(p, revision)
    if p.is_dir():
        if revision is not None:
            raise EttinError(
                f"is a model folder, so --revision {revision} does not apply",
                path=p,
                field="revision",
                fix="pass the training run's folder (or a folder with one model folder per tag) to pick a "
                "checkpoint, or drop --revision",
            )
        return p
    if p.exists():
        raise EttinError("is a file, not a model folder", path=p, fix="give the folder that holds config.json")
    text = str(path)
    if is_hub_id(text):
        return _hub_download(text, revision)
    raise EttinError("no such model folder", path=p, fix="check the path; `ettin export` and `ettin init` write one")


def is_hub_id(text: str) -> bool:
    """`owner/name` that is not a local path (`runs/demo` with an existing `runs/` is a local typo)."""
    p = Path(text).expanduser()
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~")) and not p.exists() and not p.parent.exists()


# ----------------------------------------------------------------------------------------- revisions

DEFAULT_REVISION = "main"


def is_revisions_dir(path: str | os.PathLike) -> bool:
    """A folder of revisions: not a model folder and not a run, with subfolders that are model folders,
    one per tag (what `hf download REPO --revision TAG --local-dir DIR/TAG` per tag leaves)."""
    p = Path(path)
    if not p.is_dir() or runs.is_model_dir(p) or runs.is_run_dir(p) or (p / "modules.json").is_file():
        return False  # modules.json: an export whose 1_Pooling/ holds a config.json of its own
    return any(runs.is_model_dir(d) for d in p.iterdir() if d.is_dir())


def _local_revisions(p: Path) -> list[str]:
    return sorted((d.name for d in p.iterdir() if d.is_dir() and runs.is_model_dir(d)), key=revision_sort_key)


_RELEASED_TAG = re.compile(r"^(step|ext|decay)([0-9]+)$")
_PHASE_ORDER = {"step": 0, "ext": 1, "decay": 2}


def revision_sort_key(tag: str) -> tuple:
    """Training order for the released prefixes (step < ext < decay, then the number); other names after."""
    m = _RELEASED_TAG.match(tag)
    if m:
        return (0, _PHASE_ORDER[m.group(1)], int(m.group(2)), "")
    return (1, 0, 0, tag)


def shown_revisions(tags: list[str]) -> str:
    """The fix text that lists some of the tags one can ask for."""
    if not tags:
        return "it lists no tags"
    shown = tags if len(tags) <= 12 else tags[:4] + ["..."] + tags[-7:]
    return f"available: {', '.join(shown)} ({len(tags)} tags)"


def _revision_dir(p: Path, revision: str | None) -> Path:
    tags = _local_revisions(p)
    tag = revision if revision is not None else DEFAULT_REVISION
    if tag in tags:
        return p / tag
    what = f"no revision '{revision}'" if revision is not None else "holds several revisions and none is 'main'"
    raise EttinError(what, path=p, field="revision", fix=shown_revisions(tags))


def list_revisions(path: str | os.PathLike) -> list[str] | None:
    """The tags `path` can be resolved at, in training order, or None when they cannot be listed (a plain
    model folder, or a hub repository while the hub cannot be reached). A hub repository lists its tags
    and branches (`HfApi.list_repo_refs`), so its listing is complete; a folder of revisions lists what
    was downloaded into it."""
    p = Path(path).expanduser()
    if p.is_dir() and runs.is_run_dir(p):
        if not runs.is_model_run(p):
            return None
        return [t.tag for t in runs.exported_tags(p)]
    if p.is_dir() and is_revisions_dir(p):
        return _local_revisions(p)
    if p.exists() or not is_hub_id(str(path)):
        return None
    return hub_revisions(str(path))


def hub_revisions(repo_id: str) -> list[str] | None:
    """A hub repository's tags and branches, or None when the hub cannot be asked (offline, no network,
    no access): a listing is a help to the user, never a reason to fail."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import HfApi

        refs = HfApi().list_repo_refs(repo_id)
    except Exception:  # noqa: BLE001 - any failure only means no listing
        return None
    names = [r.name for r in getattr(refs, "tags", []) or []] + [r.name for r in getattr(refs, "branches", []) or []]
    return sorted(set(names), key=revision_sort_key)


def _hub_download(repo_id: str, revision: str | None) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline:
        raise EttinError(
            f"is not a local folder, and HF_HUB_OFFLINE is set so the hub repository '{repo_id}' cannot be fetched",
            path=repo_id,
            fix="give a local model folder, or unset HF_HUB_OFFLINE on a machine with network",
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        DisabledRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    def first_line(exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]

    try:
        return Path(
            snapshot_download(
                repo_id=repo_id,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
            )
        )
    # The user's to fix: a repository or revision that does not exist (or is private or gated for this
    # account), a disabled repository, a malformed id. GatedRepoError is a RepositoryNotFoundError.
    except RevisionNotFoundError:
        tags = hub_revisions(repo_id)
        raise EttinError(
            f"the hub repository '{repo_id}' has no revision '{revision}'",
            path=repo_id,
            field="revision",
            fix=shown_revisions(tags) if tags is not None else "check the branch, tag or commit name",
        ) from None
    except RepositoryNotFoundError as exc:
        gated = type(exc).__name__ == "GatedRepoError"
        raise EttinError(
            "is not a local folder, and the hub repository "
            + ("is gated" if gated else "does not exist or is private"),
            path=repo_id,
            fix="request access on its hub page and log in with `hf auth login`"
            if gated
            else "check the path or the repository name; for a private repository log in with `hf auth login`",
        ) from None
    except (DisabledRepoError, HFValidationError) as exc:
        raise EttinError(
            f"is not a usable hub repository ({first_line(exc)})", path=repo_id, fix="check the repository name"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and (status >= 500 or status == 429):  # the hub's: a server error, a rate limit
            raise HubUnavailableError(repo_id, first_line(exc)) from None
        raise EttinError(  # another 4xx: this account may not read it, or the request names something wrong
            f"is not a local folder, and the hub refused it ({first_line(exc)})",
            path=repo_id,
            fix="check the repository name and revision, and your access (`hf auth login`)",
        ) from None
    # Not the user's: no network (snapshot_download reports it as nothing in the local cache), or the
    # connection broke.
    except (LocalEntryNotFoundError, OSError) as exc:
        raise HubUnavailableError(repo_id, first_line(exc)) from None


# ----------------------------------------------------------------------------------------- reading


def tokenizer_special_ids(tok_dir: Path) -> dict[str, int]:
    """[UNK]/[MASK] (and friends) ids straight from tokenizer.json, without loading transformers."""
    f = tok_dir / "tokenizer.json"
    if not f.is_file():
        return {}
    try:
        added = json.loads(f.read_text(encoding="utf-8")).get("added_tokens", [])
    except (OSError, json.JSONDecodeError):
        return {}
    by_content = {a.get("content"): a.get("id") for a in added if isinstance(a, dict)}
    names = {
        "unk_token_id": "[UNK]",
        "cls_token_id": "[CLS]",
        "sep_token_id": "[SEP]",
        "pad_token_id": "[PAD]",
        "mask_token_id": "[MASK]",
    }
    return {name: by_content[tok] for name, tok in names.items() if isinstance(by_content.get(tok), int)}


def read_config(model_dir: Path, *, arch: str | None = None) -> ModelConfig:
    """The ModelConfig of a model folder (`arch` reads it as the other arch)."""
    d = _config_json(model_dir)
    return config_from_hf(d, path=model_dir / "config.json", arch=arch, tokenizer_ids=tokenizer_special_ids(model_dir))


def _config_json(model_dir: Path) -> dict:
    f = model_dir / "config.json"
    if not f.is_file():
        hint = " (it holds a tokenizer only)" if (model_dir / "tokenizer.json").is_file() else ""
        raise EttinError(
            f"is not a model folder: config.json is missing{hint}",
            path=model_dir,
            fix="give the folder written by `ettin export`, `ettin init` or transformers' save_pretrained",
        )
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EttinError(f"is not valid JSON ({exc})", path=f) from None
    if not isinstance(d, dict):
        raise EttinError("is not a JSON object", path=f)
    return d


def _dtype_name(dtype, model_dir: Path) -> Any:
    """None -> float32 (what training and CPU inference want); "auto" -> the dtype the folder records.

    Checked before any weights are read, and without importing torch for a name."""
    if dtype is not None and not isinstance(dtype, str):
        return dtype  # a torch.dtype
    if dtype is None:
        return "float32"
    if dtype.lower() == "auto":
        d = _config_json(model_dir)
        dtype = str(d.get("dtype") or d.get("torch_dtype") or "float32")
    name = DTYPES.get(dtype.lower())
    if name is None:
        raise EttinError(f"unknown dtype '{dtype}'", field="dtype", fix="use float32, bfloat16, float16 or auto")
    return name


def load_dir(model_dir: Path, *, arch: str | None = None, dtype=None) -> "EttinModel":
    """Build an EttinModel from a local modernbert / modernbert-decoder folder."""
    from ettin.model import TIED_KEY, EttinModel

    config = read_config(model_dir, arch=arch)
    dtype = _dtype_name(dtype, model_dir)
    model_type = _config_json(model_dir)["model_type"]
    if (model_dir / "tokenizer.json").is_file():
        check_vocab_file_fits(model_dir, config)
    raw = read_weights(model_dir)
    if "model.embeddings.tok_embeddings.weight" not in raw and "embeddings.tok_embeddings.weight" in raw:
        raise EttinError(
            "holds only a backbone (saved from ModernBertModel, no prediction head)",
            path=model_dir,
            fix="export the masked-LM / causal-LM model (ModernBertForMaskedLM or ModernBertDecoderForCausalLM)",
        )
    try:
        sd = state_dict_from_hf(raw, model_type)
    except KeyError as exc:
        raise EttinError(
            f"the weights lack {exc.args[0]}", path=model_dir, fix="copy the complete model folder"
        ) from None
    model = EttinModel(config, init=False)
    expected = model.state_dict()
    sd.pop(TIED_KEY, None)  # tied: transformers re-ties it to the embedding on load, so do we
    missing = sorted(k for k in expected if k not in sd and k != TIED_KEY)
    unexpected = sorted(k for k in sd if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if any(k.startswith("classifier.") for k in unexpected):
            fix = (
                "a fine-tuned classifier cannot be loaded as a language model; "
                "use the masked-LM or causal-LM export of the model"
            )
        else:
            fix = "the config.json and the weights come from different models"
        raise EttinError(f"the weights do not match the config ({'; '.join(parts)})", path=model_dir, fix=fix)
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise EttinError(
                f"weight {k} has shape {tuple(v.shape)}, the config implies {tuple(expected[k].shape)}",
                path=model_dir,
                fix="the config.json and the weights come from different models",
            )
    import torch

    model.load_state_dict(sd, strict=False)
    model.tie_head()
    model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.eval()
    return model


def load(path: str | os.PathLike, revision: str | None = None, *, arch: str | None = None, dtype=None) -> "EttinModel":
    """An EttinModel from any modernbert / modernbert-decoder folder, a training run (with `revision`),
    or, for users with network, a hub repository id.

    `arch` reads the weights as the other arch (encoder <-> decoder: the start of cross-objective
    training). `dtype`: None loads float32 whatever the file holds (what training and CPU inference
    want), "auto" keeps the dtype recorded in config.json, or name one (float32, bfloat16, float16).
    """
    if arch is not None:
        check_arch(arch)
    return load_dir(resolve(path, revision), arch=arch, dtype=dtype)
