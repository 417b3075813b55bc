"""Retrieval by embedding similarity, zero-shot or after short contrastive fine-tuning.

Queries and documents are embedded alike (`[CLS] text [SEP]`, mean pooling for encoders, last token
for decoders), L2-normalised, and ranked by cosine similarity. Fine-tuning uses the paper's loss:
multiple-negatives ranking (in-batch negatives) with similarity scale 20.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ettin.eval.finetune import tune
from ettin.eval.handle import EvalModel
from ettin.eval.metrics import ranking_scores
from ettin.eval.pooling import default_pooling, embed_ids, pooled
from ettin.eval.tasks import RetrievalData

MNRL_SCALE = 20.0


def rank(query_emb: torch.Tensor, doc_emb: torch.Tensor, k: int = 100, chunk: int = 1024) -> torch.Tensor:
    """Top-k document indices per query [n_queries, k] by cosine similarity; ties by lower index."""
    q = F.normalize(query_emb.float(), dim=-1)
    d = F.normalize(doc_emb.float(), dim=-1)
    k = min(k, d.shape[0])
    out = []
    for s in range(0, q.shape[0], chunk):
        sims = q[s : s + chunk] @ d.T
        # stable: sort by (-sim, index)
        order = torch.argsort(-sims, dim=1, stable=True)[:, :k]
        out.append(order)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def text_ids(em: EvalModel, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    return [em.with_specials(x, max_length) for x in em.encode_batch(list(texts))]


def evaluate_retrieval(
    em: EvalModel,
    data: RetrievalData,
    *,
    pooling: str | None = None,
    max_length: int | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict:
    """Per-query ranking scores (nDCG@k, recall@k, MRR) over `data`, in query-id order."""
    doc_ids = list(data.corpus)
    query_ids = list(data.queries)
    d = embed_ids(em, text_ids(em, [data.corpus[i] for i in doc_ids], max_length), pooling)
    q = embed_ids(em, text_ids(em, [data.queries[i] for i in query_ids], max_length), pooling)
    top = rank(q, d, k=max(100, max(ks))).tolist()
    per_query = [ranking_scores([doc_ids[j] for j in row], data.qrels[qid], ks) for qid, row in zip(query_ids, top)]
    return {"query_ids": query_ids, "per_query": per_query}


@dataclass
class ContrastiveConfig:
    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 32
    max_steps: int | None = None
    warmup: float = 0.06
    weight_decay: float = 0.01
    scale: float = MNRL_SCALE
    max_length: int = 256
    pooling: str | None = None


def mnrl_loss(q: torch.Tensor, d: torch.Tensor, scale: float = MNRL_SCALE) -> torch.Tensor:
    """Multiple-negatives ranking loss: the i-th document is query i's positive, the others negatives."""
    sims = scale * F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
    return F.cross_entropy(sims, torch.arange(q.shape[0], device=q.device))


def contrastive_steps(n_pairs: int, cfg: ContrastiveConfig) -> int:
    steps = math.ceil(n_pairs / cfg.batch_size) * cfg.epochs
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def contrastive_finetune(
    em: EvalModel,
    pairs: Sequence[tuple[str, str]],
    cfg: ContrastiveConfig | None = None,
    *,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> EvalModel:
    """A copy of `em` tuned on (query, positive) pairs; the original is left untouched."""
    cfg = cfg or ContrastiveConfig()
    how = cfg.pooling or default_pooling(em.arch)
    torch.manual_seed(seed)
    model = copy.deepcopy(em.model)
    model.train()
    q_ids = text_ids(em, [p[0] for p in pairs], cfg.max_length)
    d_ids = text_ids(em, [p[1] for p in pairs], cfg.max_length)

    def loss(idx: list[int]) -> torch.Tensor:
        q = pooled(model, [q_ids[i] for i in idx], how)
        d = pooled(model, [d_ids[i] for i in idx], how)
        return mnrl_loss(q, d, cfg.scale)

    steps = tune(
        model.parameters(),
        loss,
        len(pairs),
        contrastive_steps(len(pairs), cfg),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        batch_size=cfg.batch_size,
        seed=seed,
        min_batch=2,
        progress=progress,
    )
    model.eval()
    tuned = copy.copy(em)
    tuned.model = model
    tuned.info = dict(
        em.info,
        contrastive={
            "steps": steps,
            "lr": cfg.lr,
            "batch_size": cfg.batch_size,
            "scale": cfg.scale,
            "pairs": len(pairs),
            "pooling": how,
        },
    )
    return tuned


def subset_corpus(data: RetrievalData, query_ids: Sequence[str], max_docs: int | None, seed: int) -> RetrievalData:
    """The chosen queries against a corpus of at most `max_docs`: their relevant documents plus a
    seeded sample of the others as distractors."""
    import random

    queries = {q: data.queries[q] for q in query_ids}
    qrels = {q: data.qrels[q] for q in query_ids}
    if max_docs is None or max_docs >= len(data.corpus):
        return RetrievalData(data.corpus, queries, qrels, data.train_pairs)
    needed = sorted({d for rel in qrels.values() for d in rel})
    others = sorted(set(data.corpus) - set(needed))
    extra = max(0, max_docs - len(needed))
    chosen = set(needed) | set(random.Random(seed).sample(others, min(extra, len(others))))
    corpus = {d: t for d, t in data.corpus.items() if d in chosen}
    return RetrievalData(corpus, queries, qrels, data.train_pairs)
