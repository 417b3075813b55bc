"""What a recipe needs before the first step: its tokenizer and its prepared data.

With a `prepare:` section the trainer builds what is missing (tokenizer training and data preparation
are both idempotent); without one, a missing piece stops the run with the command that makes it.
"""

from __future__ import annotations

from pathlib import Path

from ettin.errors import EttinError
from ettin.recipe import Recipe


def _sources_cmd(sources: list[str], tokenizer: str, out: str) -> str:
    args = " ".join(f"--source {s}" for s in sources)
    return f"ettin data prepare {args} --tokenizer {tokenizer} --out {out}"


def ensure_tokenizer(recipe: Recipe, log=print) -> Path:
    if not recipe.tokenizer:
        raise EttinError(
            "the recipe names no tokenizer",
            field="tokenizer",
            fix="set tokenizer: to a folder from `ettin tokenizer modernbert` or `ettin tokenizer train`",
        )
    path = Path(recipe.tokenizer)
    if (path / "tokenizer.json").is_file():
        return path
    spec = recipe.prepare.tokenizer
    if spec is None or not spec.corpus:
        corpus = " ".join(f"--corpus {c}" for c in (spec.corpus if spec else [])) or "--corpus wiki"
        raise EttinError(
            "no tokenizer here (no tokenizer.json)",
            path=path,
            field="tokenizer",
            fix=f"make it with `ettin tokenizer train {corpus} --vocab-size 4096 --out {path}` "
            f"or `ettin tokenizer modernbert --out {path}`",
        )
    from ettin.tokenizer import corpus_texts, train_tokenizer

    log(f"training the recipe's tokenizer ({spec.vocab_size} tokens on {', '.join(spec.corpus)}) into {path}")
    train_tokenizer(corpus_texts(spec.corpus), spec.vocab_size, path)
    return path


def ensure_data(recipe: Recipe, tokenizer_dir: Path, log=print) -> None:
    """Every source of every phase's mixture (and of the held-out set) prepared, with this tokenizer."""
    from ettin.data.shards import MANIFEST

    wanted: dict[str, list[str]] = {}
    specs = [p.data_spec() for p in recipe.phases]
    if recipe.eval.data:
        from ettin.data.mixture import DataSpec

        specs.append(DataSpec.from_dict(recipe.eval.data))
    for spec in specs:
        names = wanted.setdefault(spec.dir, [])
        names.extend(n for n in spec.sources if n not in names)
    from ettin.data.sources import parse_source

    # prepare.sources: built-in names or NAME=KIND:PATH (e.g. arxiv=mds:hf://datasets/jhu-clsp/...)
    buildable = {parse_source(s).name: s for s in recipe.prepare.sources}
    for data_dir, names in wanted.items():
        missing = [n for n in names if not (Path(data_dir) / n / MANIFEST).is_file()]
        if not missing:
            continue
        unknown = [n for n in missing if n not in buildable]
        if unknown:
            raise EttinError(
                f"source(s) {', '.join(unknown)} not prepared here",
                path=data_dir,
                field="data",
                fix=f"run `{_sources_cmd(unknown, str(tokenizer_dir), data_dir)}` (or list them under prepare.sources)",
            )
        from ettin.data.prepare import prepare

        log(f"preparing {', '.join(missing)} into {data_dir}")
        prepare([buildable[n] for n in missing], tokenizer_dir, data_dir)
    _check_data_tokenizer(wanted, tokenizer_dir)


def _check_data_tokenizer(wanted: dict[str, list[str]], tokenizer_dir: Path) -> None:
    """Data tokenized with another tokenizer would train on ids the model reads as other tokens."""
    from ettin.data.shards import read_manifest
    from ettin.tokenizer import tokenizer_fingerprint

    ours = tokenizer_fingerprint(tokenizer_dir)
    for data_dir, names in wanted.items():
        for name in names:
            theirs = read_manifest(Path(data_dir) / name)["tokenizer"]["fingerprint"]
            if theirs != ours:
                raise EttinError(
                    f"source '{name}' was prepared with a different tokenizer than the recipe's {tokenizer_dir} "
                    f"(fingerprints {theirs[:12]} vs {ours[:12]})",
                    path=Path(data_dir) / name,
                    field="tokenizer",
                    fix=f"prepare it again with this tokenizer (`{_sources_cmd([name], str(tokenizer_dir), data_dir)} "
                    "--overwrite`) or set tokenizer: to the one the data was made with",
                )
