#!/usr/bin/env python3
"""Check a taidcache cache with plain pyarrow, independently of the Rust reader.

    python3 tests/python/check_cache.py CACHE [--require-jsonschema]

For every shard listed in CACHE/manifest.json: pyarrow reads it; each column has exactly the
type string of its format (v1, v2 or v3: schemas/vN/README.md) and
is non-nullable; every list has length seq_len and every fixed-size list length top_k; row
counts, seq ids and footer metadata match the manifest. For v2 the log-probs are decoded as the
README says (cumulative sum of the steps times -taidcache.logprob_step), for v3 the ids are
the cumulative sums of the gaps and the log-probs the footer's levels; each position's top-k
plus tail mass must be 1 within the quantization. manifest.json is validated against
schemas/vN/manifest.schema.json with the `jsonschema` package when it is installed (required with
--require-jsonschema).

Exit status 0 when all checks pass; otherwise the first failure is printed on stderr.
"""

import json
import os
import sys

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas")


# Formats 4 and 5 are 1 and 3 with the tail-draw columns (schemas/v4/README.md).
BASE = {1: 1, 2: 2, 3: 3, 4: 1, 5: 3}


def ids_column(version):
    return "topk_id_gaps" if BASE[version] == 3 else "topk_ids"


def values_column(version):
    return {1: "topk_logprobs", 2: "topk_logprob_steps", 3: "topk_logprob_levels"}[BASE[version]]


def draw_ids_column(version):
    return "tail_draw_id_gaps" if version == 5 else "tail_draw_ids"


def expected_types(k, version, draws=0):
    value_type = "halffloat" if BASE[version] == 1 else "uint8"
    types = {
        "seq_id": "uint64",
        "input_ids": "list<item: uint32>",
        "loss_mask": "list<item: bool>",
        ids_column(version): f"list<item: fixed_size_list<item: uint32>[{k}]>",
        values_column(version): f"list<item: fixed_size_list<item: {value_type}>[{k}]>",
        "tail_logmass": "list<item: float>",
    }
    if version in (4, 5):
        types[draw_ids_column(version)] = f"list<item: fixed_size_list<item: uint32>[{draws}]>"
        if version == 5:
            types["tail_draw_logprob_steps"] = f"list<item: fixed_size_list<item: uint8>[{draws}]>"
        else:
            types["tail_draw_logprobs"] = f"list<item: fixed_size_list<item: halffloat>[{draws}]>"
    return types


def fail(msg):
    print(f"check_cache: {msg}", file=sys.stderr)
    sys.exit(1)


def validate_manifest(manifest, require_jsonschema):
    try:
        import jsonschema
    except ImportError:
        if require_jsonschema:
            fail("the `jsonschema` package is missing (pip install jsonschema)")
        print("check_cache: jsonschema not installed, manifest schema not validated", file=sys.stderr)
        return
    version = manifest.get("format_version")
    if version not in BASE:
        fail(f"manifest.json: format_version {version!r} is not 1, 2, 3, 4 or 5")
    with open(os.path.join(SCHEMAS, f"v{version}", "manifest.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(manifest), key=str)
    if errors:
        e = errors[0]
        path = "/".join(str(p) for p in e.absolute_path)
        fail(f"manifest.json does not match manifest.schema.json at `{path}`: {e.message}")


def check_shard(cache, entry, manifest):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = os.path.join(cache, entry["path"])
    k = manifest["top_k"]
    s = manifest["packing"]["seq_len"]
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    version = manifest["format_version"]
    draws = manifest.get("tail_draws", 0)
    want = expected_types(k, version, draws)
    names = [f.name for f in schema]
    if names != list(want):
        fail(f"{path}: columns {names}, expected {list(want)}")
    for field in schema:
        if str(field.type) != want[field.name]:
            fail(f"{path}: column {field.name} is `{field.type}`, expected `{want[field.name]}`")
        if field.nullable:
            fail(f"{path}: column {field.name} is nullable, format v{version} columns are not")

    meta = {key.decode(): value.decode() for key, value in (pf.metadata.metadata or {}).items()}
    for key, value in [
        ("taidcache.format_version", str(manifest["format_version"])),
        ("taidcache.top_k", str(k)),
        ("taidcache.seq_len", str(s)),
        ("taidcache.vocab_size", str(manifest["vocab_size"])),
    ] + ([("taidcache.tail_draws", str(draws))] if version in (4, 5) else []):
        if meta.get(key) != value:
            fail(f"{path}: footer metadata {key} = {meta.get(key)!r}, manifest says {value!r}")

    table = pq.read_table(path)
    if table.num_rows != entry["rows"]:
        fail(f"{path}: {table.num_rows} rows, manifest says {entry['rows']}")
    seq_ids = table.column("seq_id").to_pylist()
    if seq_ids != list(range(entry["seq_id_start"], entry["seq_id_end"])):
        fail(f"{path}: seq ids {seq_ids[:3]}..., manifest says {entry['seq_id_start']}..{entry['seq_id_end']}")
    for name in ["input_ids", "loss_mask", ids_column(version), values_column(version), "tail_logmass"]:
        col = table.column(name)
        if col.null_count:
            fail(f"{path}: column {name} has {col.null_count} nulls")
        lengths = pc.list_value_length(col)
        if pc.min(lengths).as_py() != s or pc.max(lengths).as_py() != s:
            fail(f"{path}: column {name} has lists of length {pc.min(lengths)}..{pc.max(lengths)}, expected {s}")
        if name.startswith("topk_"):
            inner = pc.list_flatten(col)
            if inner.type.list_size != k:
                fail(f"{path}: column {name} holds {inner.type.list_size} values per position, expected {k}")
            if len(inner) != entry["rows"] * s:
                fail(f"{path}: column {name} has {len(inner)} positions, expected {entry['rows'] * s}")
            values = pc.list_flatten(inner)
            if len(values) != entry["rows"] * s * k or values.null_count:
                fail(f"{path}: column {name} has {len(values)} values ({values.null_count} null), expected {entry['rows'] * s * k}")
    if version == 2:
        check_steps(path, table, meta, k)
    if BASE[version] == 3:
        check_levels(path, table, meta, k, manifest["vocab_size"])
    if version in (4, 5):
        check_draws(path, table, version, k, draws, manifest["vocab_size"])
    return table.num_rows


def check_draws(path, table, version, k, n, vocab):
    """The tail draws as schemas/v4/README.md says: ascending ids below vocab, outside the top-k,
    log-probs at most the k-th (plain top-k; the compact levels within their quantization)."""
    import numpy as np
    import pyarrow.compute as pc

    raw = pc.list_flatten(pc.list_flatten(table.column(draw_ids_column(version)))).to_numpy()
    ids = raw.reshape(-1, n).astype(np.int64)
    if version == 5:
        ids = np.cumsum(ids, axis=1)
    tau = pc.list_flatten(table.column("tail_logmass")).to_numpy().astype(np.float64)
    if version == 5:
        # log p = tail_logmass − u/16 (schemas/v4/README.md).
        steps = pc.list_flatten(pc.list_flatten(table.column("tail_draw_logprob_steps"))).to_numpy()
        lps = tau[:, None] - steps.reshape(-1, n).astype(np.float64) / 16
    else:
        lps = pc.list_flatten(pc.list_flatten(table.column("tail_draw_logprobs"))).to_numpy()
        lps = lps.reshape(-1, n).astype(np.float64)
    if (lps > tau[:, None] + 1e-3).any():
        fail(f"{path}: a tail draw's log-prob is above its position's tail log-mass")
    if ids.max() >= vocab or (n > 1 and np.diff(ids, axis=1).min() < 0):
        fail(f"{path}: tail draw ids are not ascending below vocab_size {vocab}")
    if not np.all(np.isfinite(lps)):
        fail(f"{path}: tail_draw_logprobs holds non-finite values")
    top = pc.list_flatten(pc.list_flatten(table.column(ids_column(version)))).to_numpy()
    top = top.reshape(-1, k).astype(np.int64)
    if version == 5:
        top = np.cumsum(top, axis=1)
    if any(np.isin(ids[i], top[i]).any() for i in range(len(ids))):
        fail(f"{path}: a tail draw is one of its position's top-k ids")
    if version == 4:
        kth = pc.list_flatten(pc.list_flatten(table.column("topk_logprobs"))).to_numpy()
        kth = kth.reshape(-1, k).astype(np.float64).min(axis=1)
        if (lps.max(axis=1) > kth).any():
            fail(f"{path}: a tail draw's log-prob is above its position's k-th")


def check_steps(path, table, meta, k):
    """Decode v2 log-probs with numpy as schemas/v2/README.md says; mass must be 1 ± quantization."""
    import numpy as np
    import pyarrow.compute as pc

    step = float(meta.get("taidcache.logprob_step", "nan"))
    if not step > 0:
        fail(f"{path}: footer metadata taidcache.logprob_step = {meta.get('taidcache.logprob_step')!r}")
    steps = pc.list_flatten(pc.list_flatten(table.column("topk_logprob_steps"))).to_numpy()
    logprobs = -step * np.cumsum(steps.reshape(-1, k).astype(np.int64), axis=1)
    tail = pc.list_flatten(table.column("tail_logmass")).to_numpy().astype(np.float64)
    mass = np.exp(logprobs).sum(axis=1) + np.exp(tail)
    # Each value is within step/2 of the exact one: the mass is within a factor e^(±step/2).
    worst = np.abs(np.log(mass)).max()
    if worst > step / 2 + 1e-3:
        fail(f"{path}: decoded top-k + tail mass is off by a factor e^{worst:.4f}, more than e^(step/2)")


def check_levels(path, table, meta, k, vocab):
    """Decode v3 as schemas/v3/README.md says: ids ascending below vocab, mass 1 ± quantization."""
    import numpy as np
    import pyarrow.compute as pc

    try:
        levels = np.array(json.loads(meta["taidcache.logprob_levels"]), dtype=np.float64)
    except (KeyError, ValueError) as e:
        fail(f"{path}: footer metadata taidcache.logprob_levels is missing or not JSON ({e})")
    if levels.shape != (256,) or levels[0] != 0 or not np.all(np.diff(levels) < 0):
        fail(f"{path}: taidcache.logprob_levels is not 256 descending log-probs from 0")
    gaps = pc.list_flatten(pc.list_flatten(table.column("topk_id_gaps"))).to_numpy()
    ids = np.cumsum(gaps.reshape(-1, k).astype(np.int64), axis=1)
    if ids.max() >= vocab or (k > 1 and np.diff(ids, axis=1).min() < 1):
        fail(f"{path}: decoded ids are not ascending below vocab_size {vocab}")
    lv = pc.list_flatten(pc.list_flatten(table.column("topk_logprob_levels"))).to_numpy()
    p = np.exp(levels[lv.reshape(-1, k)])
    tail = pc.list_flatten(table.column("tail_logmass")).to_numpy().astype(np.float64)
    mass = p.sum(axis=1) + np.exp(tail)
    # Each sqrt(p) within 1/256 of its level's (log-probs within 0.25 nats below p = 1/1024).
    bound = np.maximum((np.sqrt(p) + 1 / 512) / 128, p * np.expm1(0.25)).sum(axis=1) + 1e-3
    worst = (np.abs(mass - 1) / bound).max()
    if worst > 1:
        fail(f"{path}: decoded top-k + tail mass is off by {worst:.2f} of the quantization bound")


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    require_jsonschema = "--require-jsonschema" in argv
    if len(args) != 1:
        fail(__doc__.strip().splitlines()[2].strip())
    cache = args[0]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        fail("the `pyarrow` package is missing (pip install pyarrow)")
    with open(os.path.join(cache, "manifest.json")) as f:
        manifest = json.load(f)
    validate_manifest(manifest, require_jsonschema)
    rows = 0
    for entry in manifest["shards"]:
        rows += check_shard(cache, entry, manifest)
    if manifest["total_sequences"] is not None and manifest["complete"] and rows != manifest["total_sequences"]:
        fail(f"shards hold {rows} sequences, manifest says total_sequences = {manifest['total_sequences']}")
    print(f"ok: {len(manifest['shards'])} shards, {rows} sequences read by pyarrow {pyarrow_version()}")


def pyarrow_version():
    import pyarrow

    return pyarrow.__version__


if __name__ == "__main__":
    main(sys.argv)
