"""`ettin compare --encoder M --decoder M --revisions a,b,...`: a pair given as models at their tags.

The released suite is a hub repository per model with one tag per checkpoint. Here each stands as a
local folder with one model folder per tag (what downloading each tag into its own folder leaves),
and, for the hub path, the same folders behind a replaced `huggingface_hub.snapshot_download` and
`HfApi.list_repo_refs`: everything above the download is the code that runs against the hub.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ettin import hf
from ettin.cli.evaluate import compare_command
from ettin.errors import EttinError
from ettin.eval import plan as P
from support import assert_one_line_error, run_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

TAGS = ["step0", "step100", "step200", "ext0", "ext50", "ext100", "decay0", "decay10", "decay20"]
ENC_ID, DEC_ID = "jhu-clsp/ettin-encoder-150m", "jhu-clsp/ettin-decoder-150m"


@pytest.fixture(scope="module")
def repos(tmp_path_factory, make_tiny, small_tokenizer_dir) -> dict[str, Path]:
    """arch -> a folder of revisions, one tiny model (a different seed per tag) per released tag name."""
    root = tmp_path_factory.mktemp("released")
    out = {}
    for arch in ("encoder", "decoder"):
        for seed, tag in enumerate(TAGS):
            hf.save_pretrained(make_tiny(arch, seed), root / arch / tag, tokenizer=small_tokenizer_dir)
        out[arch] = root / arch
    return out


def _revision_not_found() -> Exception:
    """The exception huggingface_hub itself raises when the hub answers 'no such revision'."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import hf_raise_for_status

    http = sys.modules[HfHubHTTPError.__mro__[1].__module__]
    request = http.Request("GET", "https://huggingface.co/api/models/o/m/revision/x")
    response = http.Response(404, headers={"X-Error-Code": "RevisionNotFound"}, request=request)
    try:
        hf_raise_for_status(response)
    except Exception as exc:
        return exc
    raise AssertionError("huggingface_hub accepted a RevisionNotFound answer")


def _refs(tags: list[str]):
    """What `HfApi.list_repo_refs` returns: huggingface_hub's own GitRefs."""
    from huggingface_hub.hf_api import GitRefInfo, GitRefs

    def ref(kind, name):
        return GitRefInfo(name=name, ref=f"refs/{kind}/{name}", target_commit="0" * 40)

    return GitRefs(branches=[ref("heads", "main")], converts=[], tags=[ref("tags", t) for t in tags])


@pytest.fixture
def hub(repos, monkeypatch, tmp_path):
    """The two repositories 'on the hub': downloads and tag listings answered from the local folders."""
    import huggingface_hub

    served = {ENC_ID: repos["encoder"], DEC_ID: repos["decoder"]}
    state = SimpleNamespace(downloads=[], listing=True)

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        assert "*.safetensors" in allow_patterns and "*.bin" not in allow_patterns
        folder = served[repo_id] / (revision or "main")
        if not folder.is_dir():
            raise _revision_not_found()
        state.downloads.append((repo_id, revision))
        return str(folder)

    class HfApi:
        def list_repo_refs(self, repo_id, **kw):
            if not state.listing:
                raise OSError("no network")
            return _refs(TAGS)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", HfApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)  # no local jhu-clsp/ folder: the ids are hub ids
    return state


def _request(enc, dec, out, revisions, **kw) -> P.CompareRequest:
    return P.CompareRequest(None, out, encoder=str(enc), decoder=str(dec), revisions=revisions, **kw)


# ------------------------------------------------------------------------------------ tokens


def test_released_tokens_exact_at_phase_starts_estimated_within_phases():
    assert P.released_tokens("step0", None) == (0, True)
    assert P.released_tokens("ext0", None) == (1_700_000_000_000, True)
    assert P.released_tokens("decay0", None) == (1_950_000_000_000, True)
    assert P.released_tokens("ext50", TAGS) == (1_700_000_000_000 + 125_000_000_000, False)
    assert P.released_tokens("decay10", TAGS) == (1_950_000_000_000 + 25_000_000_000, False)
    # without the repository's list, or with a phase whose end is not in it: unknown
    assert P.released_tokens("ext50", None) == (None, False)
    assert P.released_tokens("ext50", ["step0", "ext50"]) == (None, False)
    assert P.released_tokens("main", TAGS) == (None, False)
    assert P.released_tokens("cross500", TAGS) == (None, False)
    one_b = P.released_tokens("decay0", None, P.RELEASED_PHASES_1B)
    assert one_b == (1_700_000_000_000 + 83_333_333_333, True)


def test_the_1b_shape_has_its_own_phase_lengths():
    from ettin.config import config_for_size

    assert P.released_phases(config_for_size("1b", "encoder", 50368)) == P.RELEASED_PHASES_1B
    assert P.released_phases(config_for_size("400m", "decoder", 50368)) == P.RELEASED_PHASES


# -------------------------------------------------------------------------------------- plans


def test_plan_of_local_folders_of_revisions(repos, tmp_path):
    plan = P.plan_run(_request(repos["encoder"], repos["decoder"], tmp_path / "o", ["step0", "ext0", "decay10"]))
    assert [(m.label, m.arch, m.checkpoint.tag) for m in plan.members] == [
        ("encoder", "encoder", "decay10"),
        ("decoder", "decoder", "decay10"),
    ]
    assert plan.members[0].model == repos["encoder"] / "decay10"
    points = plan.dynamics["encoder"]
    assert [(p.tag, p.tokens, p.final) for p in points] == [
        ("step0", 0, False),
        ("ext0", 1_700_000_000_000, False),
        ("decay10", None, True),  # a local folder's tags are not the repository's complete list
    ]
    assert points[1].model == repos["encoder"] / "ext0"
    assert plan.pair() == ("encoder", "decoder") and plan.tokens_note == P.TOKENS_NOTE


def test_plan_of_hub_repositories_downloads_each_tag_and_estimates_tokens(hub, tmp_path):
    plan = P.plan_run(_request(ENC_ID, DEC_ID, tmp_path / "o", ["step100", "ext50", "decay20"], revision="ext50"))
    assert sorted(hub.downloads) == sorted((r, t) for r in (ENC_ID, DEC_ID) for t in ("step100", "ext50", "decay20"))
    enc = plan.member("encoder")
    assert enc.checkpoint == P.Checkpoint("ext50", 1_825_000_000_000, None)
    assert [(p.tag, p.tokens, p.final) for p in plan.dynamics["decoder"]] == [
        ("step100", 850_000_000_000, False),
        ("ext50", 1_825_000_000_000, True),
        ("decay20", 2_000_000_000_000, False),
    ]
    assert plan.run_name == f"{ENC_ID} and {DEC_ID}"
    line = compare_command(plan)
    assert line.startswith(f"ettin compare --encoder {ENC_ID} --decoder {DEC_ID} --out ")
    assert "--revisions step100,ext50,decay20" in line and "--revision ext50" in line


def test_one_revision_means_no_dynamics(repos, tmp_path):
    plan = P.plan_run(_request(repos["encoder"], repos["decoder"], tmp_path / "o", ["step200"]))
    assert plan.dynamics == {} and "Fewer than two revisions" in plan.dynamics_note


def test_a_tag_the_repository_lacks_fails_before_any_download(hub, tmp_path):
    with pytest.raises(EttinError, match="has no revision 'ext75'") as err:
        P.plan_run(_request(ENC_ID, DEC_ID, tmp_path / "o", ["step0", "ext75"]))
    assert "available: step0, step100, step200, ext0" in str(err.value)
    assert hub.downloads == [] and not (tmp_path / "o").exists()


def test_without_a_listing_the_hub_answer_names_the_missing_tag(hub, tmp_path):
    hub.listing = False
    with pytest.raises(EttinError, match=f"the hub repository '{ENC_ID}' has no revision 'ext75'") as err:
        hf.resolve(ENC_ID, "ext75")
    assert "check the branch, tag or commit name" in str(err.value)
    hub.listing = True
    with pytest.raises(EttinError, match="available: step0") as err:
        hf.resolve(ENC_ID, "ext75")  # asked after the hub said no: the fix lists the tags


def test_models_given_the_wrong_way_round_are_refused(repos, tmp_path):
    with pytest.raises(EttinError, match="is a decoder, given as --encoder"):
        P.plan_run(_request(repos["decoder"], repos["encoder"], tmp_path / "o", ["step0"]))
    with pytest.raises(EttinError, match="--decoder is missing"):
        P.plan_run(P.CompareRequest(None, tmp_path / "o", encoder=str(repos["encoder"])))
    with pytest.raises(EttinError, match="--revisions is for models given by --encoder/--decoder"):
        P.plan_run(P.CompareRequest(repos["encoder"], tmp_path / "o", revisions=["step0"]))
    with pytest.raises(EttinError, match="not both"):
        P.plan_run(P.CompareRequest(repos["encoder"], tmp_path / "o", encoder="x", decoder="y"))
    with pytest.raises(EttinError, match="twice"):
        P.plan_run(_request(repos["encoder"], repos["decoder"], tmp_path / "o", ["step0", "step0"]))


def test_a_folder_of_revisions_loads_like_a_hub_repository(repos):
    assert hf.resolve(repos["encoder"], "ext50") == repos["encoder"] / "ext50"
    assert hf.list_revisions(repos["decoder"]) == TAGS  # in training order, not by name
    with pytest.raises(EttinError, match="none is 'main'"):
        hf.resolve(repos["encoder"])


# ---------------------------------------------------------------------------------- the CLI


def test_cli_bad_revision_is_one_line_and_writes_nothing(repos, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--encoder", repos["encoder"], "--decoder", repos["decoder"], "--out", out]
    code, _, err = run_in_process([*args, "--revisions", "step0,ext75"])
    assert_one_line_error(code, err, "no revision 'ext75'", "available: step0, step100")
    assert not out.exists()
    code, _, err = run_in_process(["compare", "--out", out])
    assert_one_line_error(code, err, "nothing to compare", "--encoder")
    assert not out.exists()


def test_cli_compares_released_tags_with_report_and_dynamics(hub, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--encoder", ENC_ID, "--decoder", DEC_ID, "--revisions", "step0,ext50,decay20"]
    code, stdout, err = run_in_process([*args, "--tasks", "sst2", "--limit", "4", "--out", out, "--no-progress"])
    assert code == 0, err + stdout
    res = json.loads((out / "results.json").read_text())
    assert res["models"]["encoder"]["tag"] == "decay20" and res["models"]["decoder"]["tokens"] == 2_000_000_000_000
    assert [(p["tag"], p["tokens"]) for p in res["dynamics"]["encoder"]] == [
        ("step0", 0),
        ("ext50", 1_825_000_000_000),
        ("decay20", 2_000_000_000_000),
    ]
    assert res["tokens_note"] == P.TOKENS_NOTE
    report = (out / "report.md").read_text()
    assert "## Training dynamics" in report and "| encoder | ext50 | 1.82T |" in report
    assert P.TOKENS_NOTE in report and (out / "dynamics.png").is_file()
    assert f"ettin compare --encoder {ENC_ID} --decoder {DEC_ID}" in report


def test_cli_local_folders_with_unknown_tokens_plot_by_checkpoint(repos, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--encoder", repos["encoder"], "--decoder", repos["decoder"], "--revisions", "step0,step100"]
    code, stdout, err = run_in_process([*args, "--tasks", "sst2", "--limit", "4", "--out", out, "--no-progress"])
    assert code == 0, err + stdout
    res = json.loads((out / "results.json").read_text())
    assert [p["tokens"] for p in res["dynamics"]["decoder"]] == [0, None]
    report = (out / "report.md").read_text()
    assert "| decoder | step100 | unknown |" in report and "checkpoints in order, by tag" in report
    assert (out / "dynamics.png").is_file()


def test_training_runs_given_as_models_keep_their_own_token_records(tiny_run, tmp_path):
    plan = P.plan_run(_request(tiny_run / "encoder", tiny_run / "decoder", tmp_path / "o", ["step1", "step2"]))
    assert [(p.tag, p.tokens, p.step) for p in plan.dynamics["encoder"]] == [("step1", 1000, 1), ("step2", 2000, 2)]
    assert plan.member("decoder").checkpoint == P.Checkpoint("step2", 2000, 2) and plan.tokens_note is None
