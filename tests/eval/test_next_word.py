"""The held-out split of the built-in corpora and the next-word tasks built on it."""

import pytest

from ettin.data.sources import (
    HELDOUT_FRACTION,
    _corpus_documents,
    is_heldout,
    iter_documents,
    source_fingerprint,
)
from ettin.eval.kinds import run_generation
from ettin.eval.tasks import NEXT_WORD_MIN_CONTEXT, get_suite, get_task, next_word_items


@pytest.mark.parametrize("corpus", ["wiki", "shakespeare"])
def test_training_and_heldout_parts_partition_the_corpus(corpus):
    train = [d.origin for d in iter_documents(corpus)]
    held = [d.origin for d in iter_documents(f"{corpus}-heldout")]
    everything = [d.origin for d in _corpus_documents(corpus)]
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(everything)
    assert all(is_heldout(corpus, o) for o in held) and not any(is_heldout(corpus, o) for o in train)
    assert 0 < len(held) < 2 * HELDOUT_FRACTION * len(everything)


def test_heldout_part_has_its_own_fingerprint():
    assert source_fingerprint("shakespeare") != source_fingerprint("shakespeare-heldout")


def test_next_word_items_follow_the_rule():
    words = " ".join(f"w{i}" for i in range(NEXT_WORD_MIN_CONTEXT))
    text = f"{words} alpha,  beta\ngamma delta 42 epsilon."
    items = next_word_items("c", [("doc", text)])
    assert len(items) == 1  # one window
    it = items[0]
    # "beta" follows two spaces, "gamma" a newline, "42" is no word: the candidates are alpha, delta, epsilon
    assert it.target in (" alpha", " delta", " epsilon")
    assert text.startswith(it.context + it.target)
    assert next_word_items("c", [("doc", text)]) == items  # fixed, not seeded by the run


def test_next_word_items_come_from_heldout_documents_only():
    items = get_task("shakespeare_next_word").load()
    held = [d.text for d in iter_documents("shakespeare-heldout")]
    train = [d.text for d in iter_documents("shakespeare")]
    assert len(items) > 300
    for it in items[::40]:
        probe = it.context[-200:] + it.target
        assert any(probe in t for t in held)
        assert not any(probe in t for t in train)


def test_demo_recipe_trains_on_no_heldout_source():
    from ettin.demo import CROSS_RECIPES, recipe_path
    from ettin.recipe import load_recipe

    for name in ("demo.yaml", *(c[0] for c in CROSS_RECIPES)):
        r = load_recipe(recipe_path(name))
        trained = {e["source"] for p in r.phases for e in p.data["mixture"]}
        assert trained and not any(s.endswith("-heldout") for s in trained), name
        assert {e["source"] for e in r.eval.data["mixture"]} == {"wiki-heldout", "shakespeare-heldout"}
        if r.prepare.tokenizer is not None:
            assert not any(str(c).endswith("-heldout") for c in r.prepare.tokenizer.corpus)


def test_next_word_is_scored_by_each_arch_method(tiny_encoder, tiny_decoder):
    from ettin.eval.kinds import Progress

    suite = get_suite("demo").limited(6)
    task = get_task("wiki_next_word")
    dec = run_generation(tiny_decoder, task, suite, 0, Progress())
    enc = run_generation(tiny_encoder, task, suite, 0, Progress())
    assert dec.n == enc.n == 6 and dec.item_ids == enc.item_ids
    assert "greedy decoding" in dec.method and "iterative masked filling" in enc.method
