"""Preparing sources that arrive as token ids, not text: MDS folders with `input_ids` and replayed
batch-order folders. The ids are checked against the tokenizer's vocabulary and written through the
same shard writer as tokenized text (`ettin.data.shard_writer`), so a prepared source looks the same
whichever way it came.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ettin.data.mds import FLAG_CLS, FLAG_SEP, FLAGS_FILE, MDSFolder, ids_column, sample_ids
from ettin.errors import EttinError


def prepare_mds_ids(spec, tok, out_dir: Path, *, shard_tokens: int, verify: bool = False, progress=None):
    """Copy the token ids of a pre-tokenized MDS folder into a prepared source, without tokenizing.

    One MDS sample becomes one document, in the folder's sample order (so document i is sample i,
    which the bert24 order relies on). A leading [CLS] and a trailing [SEP] are stripped and
    remembered per document in `mds-flags.npy` (the stream adds them back as bert24's loader does).
    Every id is checked against the tokenizer: one at or above its vocabulary stops with the shard
    and sample, and nothing is written.
    """
    folder = MDSFolder.open(spec.path)
    column = ids_column(folder, spec.field)

    def items():
        done = 0
        for shard, (values,) in folder.iter_shards([column], verify=True):

            def where_of(j: int, shard=shard, done=done) -> str:
                return f"shard {shard.file} sample {j} (sample {done + j} of the folder)"

            arrays = [sample_ids(v, ids_dtype=spec.ids_dtype, where=where_of(j)) for j, v in enumerate(values)]
            yield arrays, [f"{shard.raw}:{j}" for j in range(len(values))], where_of
            done += len(values)
            if progress:
                progress(spec.name, done, folder.num_samples)

    info = {"location": folder.location, "column": column, "encoding": folder.columns[column]}
    return prepare_id_documents(
        spec,
        tok,
        out_dir,
        items,
        shard_tokens=shard_tokens,
        verify=verify,
        info_key="mds",
        info=info,
        where=folder.location,
    )


def prepare_id_documents(
    spec,
    tok,
    out_dir: Path,
    items,
    *,
    shard_tokens: int,
    verify: bool,
    info_key: str,
    info: dict,
    where: str,
    extra_arrays=None,
    check=None,
):
    """Write documents given as token ids (no tokenizer run) as a prepared source.

    `items()` yields batches (id arrays, origins, where_of) in document order, `where_of(j)` naming
    document j of the batch for errors; ids at or above the tokenizer's vocabulary stop there;
    `check(flat ids, ends, where_of)` may refuse more. A leading [CLS] and a
    trailing [SEP] are stripped and kept as per-document flags (`mds-flags.npy`). `extra_arrays()`
    returns {file name: array} written after the documents and listed in the manifest's `info_key`.
    """
    import shutil
    import time

    from ettin.data.shard_writer import PrepareResult, _prepare_key, _swap_into_place, _up_to_date, _write_shard
    from ettin.data.shards import (
        FORMAT,
        FORMAT_VERSION,
        MANIFEST,
        sha256_file,
        token_dtype,
    )
    from ettin.data.sources import SourceReport, source_fingerprint
    from ettin.io import atomic_path, atomic_write_json

    t0 = time.perf_counter()
    key = _prepare_key(source_fingerprint(spec), tok, shard_tokens)
    final = out_dir / spec.name
    if (result := _up_to_date(spec, final, key, verify, t0)) is not None:
        return result
    cls_id = tok.special_ids.get("cls_token_id")
    sep_id = tok.special_ids.get("sep_token_id")
    if cls_id is None or sep_id is None:
        raise EttinError("the tokenizer has no [CLS] or [SEP]", field="tokenizer", fix="use the data's tokenizer")
    vocab = int(tok.vocab_size)
    dtype = token_dtype(vocab)
    staging = out_dir / f".{spec.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        atomic_write_json(staging / "plan.json", {"key": key, "source": spec.to_dict()})
        shards: list[dict] = []
        flags_all: list[np.ndarray] = []
        buf_flat: list[np.ndarray] = []
        buf_lengths: list[np.ndarray] = []
        buf_origins: list[str] = []
        buf_tokens = 0
        first_doc = 0

        def flush() -> None:
            nonlocal buf_flat, buf_lengths, buf_origins, buf_tokens, first_doc
            lengths = np.concatenate(buf_lengths)
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            flat = np.concatenate(buf_flat).astype(dtype, copy=False)
            shards.append(_write_shard(staging, len(shards), flat, offsets, buf_origins, first_doc, 0))
            first_doc += len(lengths)
            buf_flat, buf_lengths, buf_origins, buf_tokens = [], [], [], 0

        for arrays, origins, where_of in items():
            if not arrays:
                continue
            lengths = np.fromiter((len(a) for a in arrays), np.int64, count=len(arrays))
            flat = np.concatenate(arrays)  # the data's own width (uint16 for Ettin's): no widening copy
            ends = np.cumsum(lengths)
            starts = ends - lengths
            if len(flat):
                out_of_vocab = int(flat.max()) >= vocab or (flat.dtype.kind == "i" and int(flat.min()) < 0)
                bad = np.flatnonzero((flat >= vocab) | (flat < 0)) if out_of_vocab else ()
                if len(bad):
                    j = int(np.searchsorted(ends, bad[0], side="right"))
                    raise EttinError(
                        f"{where_of(j)}: id {int(flat[bad[0]])} is outside the tokenizer's vocabulary of {vocab}",
                        path=where,
                        field="tokenizer",
                        fix="declare the tokenizer the data was made with (--tokenizer; ModernBERT's for Ettin's data)",
                    )
            if check is not None:
                check(flat, ends, where_of)
            nonempty = lengths > 0
            has_cls = nonempty & (flat[np.minimum(starts, max(len(flat) - 1, 0))] == cls_id) if len(flat) else nonempty
            rest = lengths - has_cls
            has_sep = (rest > 0) & (flat[np.maximum(ends - 1, 0)] == sep_id) if len(flat) else nonempty
            keep = np.ones(len(flat), bool)
            keep[starts[has_cls]] = False
            keep[ends[has_sep] - 1] = False
            flags_all.append((has_cls * FLAG_CLS + has_sep * FLAG_SEP).astype(np.uint8))
            body = flat[keep]
            buf_flat.append(body)
            buf_lengths.append(lengths - has_cls - has_sep)
            buf_origins.extend(origins)
            buf_tokens += len(body)
            if buf_tokens >= shard_tokens:
                flush()
        if buf_lengths:
            flush()
        documents = sum(e["documents"] for e in shards)
        tokens = sum(e["num_tokens"] for e in shards)
        if documents == 0:
            raise EttinError("the source holds no samples", path=where, field="source")
        flags = np.concatenate(flags_all) if flags_all else np.zeros(0, np.uint8)
        arrays = {FLAGS_FILE: flags, **(extra_arrays() if extra_arrays else {})}
        entries = {}
        for name, arr in arrays.items():
            with atomic_path(staging / name) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                entries[name] = {"file": name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
        report = SourceReport(documents=documents).to_dict()
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": spec.name,
            "key": key,
            "source": spec.to_dict(),
            "source_fingerprint": source_fingerprint(spec),
            "tokenizer": {
                "fingerprint": tok.fingerprint,
                "vocab_size": tok.vocab_size,
                "special_ids": tok.special_ids,
                "path": tok.path,
            },
            "dtype": dtype.name,
            "shard_tokens": shard_tokens,
            "documents": documents,
            "tokens": tokens,
            "text_bytes": 0,
            "report": report,
            info_key: {
                **info,
                "samples": documents,
                "flags": entries.pop(FLAGS_FILE),
                "files": entries,
                "cls_samples": int(np.count_nonzero(flags & FLAG_CLS)),
                "sep_samples": int(np.count_nonzero(flags & FLAG_SEP)),
            },
            "shards": shards,
        }
        atomic_write_json(staging / MANIFEST, manifest)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareResult(
        spec.name, final, "prepared", documents, tokens, 0, len(shards), time.perf_counter() - t0, report
    )


def prepare_replay(spec, tok, out_dir: Path, *, shard_tokens: int, verify: bool = False, progress=None):
    """A folder in the released layout as a prepared source that replays it: one document per recorded
    row (trailing padding removed), in step order, and `replay-steps.npy` (step, rows) so that
    `order: {sampler: replay}` gives each training step exactly the rows of one recorded step.
    Rows holding the tokenizer's [MASK] are refused: an encoder's recorded rows may be masked."""
    from ettin.data.order import RELEASE_LAYOUT, iter_release_steps, release_files
    from ettin.data.stream import REPLAY_STEPS_FILE

    pad_id = tok.special_ids.get("pad_token_id")
    mask_id = tok.special_ids.get("mask_token_id")
    steps: list[tuple[int, int]] = []
    files = release_files(spec.path)

    def items():
        for step, rows in iter_release_steps(spec.path):
            steps.append((step, len(rows)))
            arrays = []
            for row in rows:
                ids = np.asarray(row, np.int64)
                if pad_id is not None:
                    pads = np.flatnonzero(ids != pad_id)
                    ids = ids[: int(pads[-1]) + 1] if len(pads) else ids[:0]
                arrays.append(ids)
            yield (
                arrays,
                [f"step {step} row {j}" for j in range(len(rows))],
                lambda j, step=step: f"step {step} row {j}",
            )

    def check(flat, ends, where_of):
        if mask_id is not None:
            hit = np.flatnonzero(flat == mask_id)
            if len(hit):
                j = int(np.searchsorted(ends, hit[0], side="right"))
                raise EttinError(
                    f"{where_of(j)} holds [MASK] ({mask_id}): recorded encoder rows may be masked, so they cannot be replayed",
                    path=spec.path,
                    field="source",
                    fix="replay a decoder's order (unmasked rows), or the order ettin exports (`ettin data order export`)",
                )

    info = {"location": str(spec.path), "layout": RELEASE_LAYOUT, "files": len(files), "pad_id": pad_id}
    return prepare_id_documents(
        spec,
        tok,
        out_dir,
        items,
        shard_tokens=shard_tokens,
        verify=verify,
        info_key="replay",
        info=info,
        where=str(spec.path),
        extra_arrays=lambda: {REPLAY_STEPS_FILE: np.asarray(steps, np.int64).reshape(-1, 2)},
        check=check,
    )
