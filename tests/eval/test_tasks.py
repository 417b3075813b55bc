"""Task loaders read the real installed data; counts are those offline-data.md gives."""

import pytest

from ettin.errors import EttinError
from ettin.eval import tasks as T


@pytest.mark.parametrize(
    "name,count",
    [
        ("arc_easy", 570),
        ("arc_challenge", 299),
        ("piqa", 1838),
        ("hellaswag", 10042),
        ("sciq", 1000),
        ("openbookqa", 500),
        ("winogrande", 1267),
        ("lambada", 5153),
    ],
)
def test_choice_and_generation_counts(name, count):
    items = T.TASKS[name].load()
    assert len(items) == count
    assert len({it.id for it in items}) == count


def test_choice_items_are_well_formed():
    for name in ("arc_easy", "arc_challenge", "piqa", "sciq", "hellaswag", "openbookqa", "winogrande"):
        for it in T.TASKS[name].load():
            assert 0 <= it.gold < len(it.requests) == len(it.choices) >= 2
            assert all(cont.startswith(" ") for _, cont in it.requests)
    arc = T.TASKS["arc_easy"].load()[0]
    assert arc.requests[0][0].startswith("Question: ") and arc.requests[0][0].endswith("\nAnswer:")
    hs = T.TASKS["hellaswag"].load()
    assert not any("[title]" in c for it in hs for c in it.choices)
    wg = T.TASKS["winogrande"].load()[0]
    assert len({cont for _, cont in wg.requests}) == 1 and wg.requests[0][0] != wg.requests[1][0]


def test_lambada_targets_are_one_word():
    for it in T.TASKS["lambada"].load()[:500]:
        assert it.target.startswith(" ") and " " not in it.target[1:] and it.target.strip()


@pytest.mark.parametrize(
    "name,total,n_labels",
    [("sst2", 872, 2), ("mrpc", 408, 2), ("rte", 277, 2), ("wiki_topic", 9033, 11)],
)
def test_hash_split_classification(name, total, n_labels):
    data = T.TASKS[name].load()
    assert len(data.train) + len(data.eval) == total
    assert len(data.labels) == n_labels
    assert not {e.id for e in data.train} & {e.id for e in data.eval}
    assert not {(e.text_a, e.text_b) for e in data.train} & {(e.text_a, e.text_b) for e in data.eval}
    assert {e.label for e in data.eval} == set(range(n_labels))
    # the split is a pure function of the item key
    assert all(T.hash_split(e.id, 1.0) == "eval" for e in data.eval[:5])
    assert [e.id for e in T.TASKS[name].loader().eval] == [e.id for e in data.eval]
    assert "Uncategorized" not in data.labels


def test_boolq_uses_real_train_split():
    data = T.TASKS["boolq"].load()
    assert (len(data.train), len(data.eval)) == (9427, 3270)
    assert not {e.text_a for e in data.train} & {e.text_a for e in data.eval}
    # parsed back into the validation split's form
    assert not any(e.text_a.endswith("?") for e in data.train)
    first = data.train[0]  # prompt: "Persian language -- Persian (/...\nQuestion: do iran and ...?\nAnswer:"
    assert first.text_b.startswith("Persian (") and first.text_a == "do iran and afghanistan speak the same language"
    assert first.label == 1  # gold 0 = "yes"
    assert {e.label for e in data.train} == {0, 1}


def test_retrieval_tasks():
    wiki = T.TASKS["wiki_retrieval"].load()
    assert len(wiki.corpus) == 9862
    assert all(len(rel) == 1 and next(iter(rel)) in wiki.corpus for rel in wiki.qrels.values())
    assert set(wiki.queries) == set(wiki.qrels)
    assert len(set(wiki.queries.values())) == len(wiki.queries)  # no ambiguous query text
    eval_docs = {wiki.corpus[d] for rel in wiki.qrels.values() for d in rel}
    train_queries = {q for q, _ in wiki.train_pairs}
    assert not eval_docs & {d for _, d in wiki.train_pairs}
    assert not train_queries & set(wiki.queries.values())
    sciq = T.TASKS["sciq_retrieval"].load()
    assert len(sciq.corpus) == len(sciq.queries) == 887


def test_subsample_is_seeded_and_keeps_order():
    items = list(range(100))
    a = T.subsample(items, 10, seed=3)
    assert a == T.subsample(items, 10, seed=3) and a == sorted(a) and len(a) == 10
    assert a != T.subsample(items, 10, seed=4)
    assert T.subsample(items, None, 0) == items and T.subsample(items, 500, 0) == items


def test_resolve_tasks():
    assert T.resolve_tasks(None, "quick") == list(T.SUITES["quick"].tasks)
    assert T.resolve_tasks("arc_easy,lambada") == ["arc_easy", "lambada"]
    assert T.resolve_tasks(["quick", "sst2"])[: len(T.SUITES["quick"].tasks)] == list(T.SUITES["quick"].tasks)
    assert set(T.resolve_tasks("full")) == set(T.TASKS)
    with pytest.raises(EttinError) as e:
        T.resolve_tasks("arc_easy,nope,alsonot")
    assert "'nope'" in str(e.value) and "'alsonot'" in str(e.value) and "arc_challenge" in str(e.value)
    with pytest.raises(EttinError, match="quick"):
        T.get_suite("slow")


def test_every_task_declares_its_split_and_metric():
    for t in T.TASKS.values():
        assert t.metric in t.metrics and t.split and t.source and t.description
