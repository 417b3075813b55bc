import json

import numpy as np
import pytest

from ettin.data.mixture import DataSpec
from ettin.data.shards import PreparedSource
from ettin.data.stream import PhaseBatches, TokenStream
from ettin.errors import EttinError

SEQ_LEN = 64


def spec(data_dir, **kw):
    d = {"dir": str(data_dir), "mixture": [{"source": "wiki", "weight": 0.75}, {"source": "plays", "weight": 0.25}]}
    d.update(kw)
    return d


def ids(batch):
    return [(s.source, s.doc, s.offset, s.input_ids.tolist()) for s in batch]


def test_samples_are_cls_chunk_and_sep_at_document_end(data_dir):
    stream = TokenStream(spec(data_dir), seed=21, seq_len=SEQ_LEN)
    sources = {n: PreparedSource.open(data_dir / n) for n in ("wiki", "plays")}
    cls, sep = stream.cls_id, stream.sep_id
    ends = 0
    for s in stream.next_batch(batch_size_sequences=300):
        assert (
            s.input_ids.dtype == np.int32 and s.input_ids[0] == cls and len(s) <= SEQ_LEN - 1 + (s.input_ids[-1] == sep)
        )
        src = sources[s.source]
        body = s.input_ids[1:-1] if s.input_ids[-1] == sep else s.input_ids[1:]
        assert len(body) <= SEQ_LEN - 2 and (len(body) >= stream.min_tokens or s.offset == 0)  # first piece: any length
        assert np.array_equal(body, src.document_tokens(s.doc, s.offset, s.offset + len(body)))
        at_end = s.offset + len(body) == src.doc_lengths[s.doc]
        assert (s.input_ids[-1] == sep) == at_end
        ends += at_end
    assert ends > 0


def test_deterministic_from_seed(data_dir):
    a = TokenStream(spec(data_dir), seed=21, seq_len=SEQ_LEN).next_batch(batch_size_sequences=50)
    b = TokenStream(spec(data_dir), seed=21, seq_len=SEQ_LEN).next_batch(batch_size_sequences=50)
    c = TokenStream(spec(data_dir), seed=22, seq_len=SEQ_LEN).next_batch(batch_size_sequences=50)
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_realised_mixture_tracks_weights_and_repeats(data_dir):
    stream = TokenStream(spec(data_dir), seed=1, seq_len=SEQ_LEN)
    for _ in range(30):
        stream.next_batch(batch_size_sequences=64)
    report = {r["source"]: r for r in stream.mixture_report()}
    for name, target in (("wiki", 0.75), ("plays", 0.25)):
        assert report[name]["target_share"] == target
        assert abs(report[name]["realised_share"] - target) < 0.01
    assert report["plays"]["epochs"] > 1  # the small source repeats
    # a whole epoch visits every chunk exactly once
    stream2 = TokenStream({"dir": str(data_dir), "mixture": ["plays"]}, seed=1, seq_len=SEQ_LEN)
    n = stream2.mixture_report()[0]["chunks"]
    seen = {(s.doc, s.offset) for s in stream2.next_batch(batch_size_sequences=n)}
    assert len(seen) == n


def test_token_budgets_set_shares(data_dir):
    stream = TokenStream(
        spec(data_dir, mixture=[{"source": "wiki", "tokens": "30k"}, {"source": "plays", "tokens": 10000}]),
        seed=1,
        seq_len=SEQ_LEN,
    )
    assert [round(r["target_share"], 3) for r in stream.mixture_report()] == [0.75, 0.25]
    assert stream.mixture_report()[0]["budget_tokens"] == 30000
    epochs = stream.planned_epochs(60_000)
    assert epochs["plays"] > 1 > epochs["wiki"]


def test_resume_gives_exactly_the_next_batch(data_dir):
    stream = TokenStream(spec(data_dir), seed=5, seq_len=SEQ_LEN)
    for _ in range(7):
        stream.next_batch(batch_size_tokens=900)
    state = json.loads(json.dumps(stream.state_dict()))  # JSON-able and small
    assert len(json.dumps(state)) < 500
    expected = [ids(stream.next_batch(batch_size_sequences=40)) for _ in range(3)]
    fresh = TokenStream(spec(data_dir), seed=5, seq_len=SEQ_LEN)
    fresh.load_state_dict(state)
    assert [ids(fresh.next_batch(batch_size_sequences=40)) for _ in range(3)] == expected
    other = TokenStream(spec(data_dir), seed=6, seq_len=SEQ_LEN)
    with pytest.raises(EttinError, match="other data"):
        other.load_state_dict(state)


def test_token_batches_fit_budget(data_dir):
    stream = TokenStream(spec(data_dir), seed=5, seq_len=SEQ_LEN)
    for _ in range(20):
        batch = stream.next_batch(batch_size_tokens=500)
        total = sum(len(s) for s in batch)
        assert total <= 500 and total + len(stream.peek()) > 500
    assert len(stream.next_batch(batch_size_tokens=1)) == 1  # at least one sequence


def test_phase_batches_warm_up_and_resume(data_dir):
    def make():
        return PhaseBatches(
            TokenStream(spec(data_dir), seed=3, seq_len=SEQ_LEN), batch_size=32, warmup_tokens=3000, warmup_start=4
        )

    pb = make()
    sizes = [len(pb.next_batch()) for _ in range(8)]
    assert sizes[0] == 4 and sizes[-1] == 32 and sizes == sorted(sizes)
    state = pb.state_dict()
    nxt = ids(pb.next_batch())
    again = make()
    again.load_state_dict(state)
    assert ids(again.next_batch()) == nxt


def test_spec_validation(data_dir):
    with pytest.raises(EttinError, match=r"data.mixture\[0\].weight"):
        DataSpec.from_dict({"dir": "x", "mixture": [{"source": "a", "weight": "lots"}]})
    with pytest.raises(EttinError, match="mixes weights and token budgets"):
        DataSpec.from_dict({"dir": "x", "mixture": [{"source": "a", "weight": 1}, {"source": "b", "tokens": 5}]})
    with pytest.raises(EttinError, match=r"data.mixture\[0\].tokens"):
        DataSpec.from_dict({"dir": "x", "mixture": [{"source": "a", "tokens": "many"}]})
    with pytest.raises(EttinError, match="data.dir"):
        DataSpec.from_dict({"mixture": ["a"]})
    with pytest.raises(EttinError, match="unknown key"):
        DataSpec.from_dict({"dir": "x", "mixture": ["a"], "shuffle": True})
    assert DataSpec.from_dict({"dir": "x", "mixture": {"a": 2, "b": 1}}).shares() == [2 / 3, 1 / 3]
    with pytest.raises(EttinError, match="no prepared data"):
        TokenStream(spec(data_dir, mixture=["nothing"]), seed=1, seq_len=SEQ_LEN)
    with pytest.raises(EttinError, match="min_tokens"):
        TokenStream(spec(data_dir, min_tokens=100), seed=1, seq_len=SEQ_LEN)
    # a document's first piece is kept however short (the original's rule): no document is dropped
    wide = TokenStream(spec(data_dir, min_tokens=4000, mixture=["wiki"]), seed=1, seq_len=4096)
    assert wide.mixture_report()[0]["chunks"] == len(PreparedSource.open(data_dir / "wiki").doc_lengths)


def test_spec_errors_name_the_recipe_field():
    with pytest.raises(EttinError, match=r"field 'phases\[1\].data.mixture\[0\]'"):
        DataSpec.from_dict({"dir": "x", "mixture": [{"source": "a", "weight": 1, "tokens": 5}]}, where="phases[1].data")
    with pytest.raises(EttinError, match=r"field 'phases\[1\].data.mixture\[0\].weight'"):
        DataSpec.from_dict({"dir": "x", "mixture": [{"source": "a", "weight": "x"}]}, where="phases[1].data")
