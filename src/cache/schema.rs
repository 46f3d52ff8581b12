//! The Arrow schema of a shard (format v1, v2 or v3), its JSON description, and the footer
//! metadata keys.
//!
//! The contract is data in `schemas/v1/shard.schema.json`; a test proves [`arrow_schema`] and that
//! file agree. Columns are non-nullable; list item fields are named `item` and nullable, because
//! that is Arrow's default list field and what pyarrow prints as `list<item: uint32>` (no value
//! is ever null: the writer never writes one and `verify` rejects one).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::{json, Value};

use super::Encoding;

/// `uint64`: index of the sequence in the packed corpus.
pub const SEQ_ID: &str = "seq_id";
/// `list<uint32>` of length S: the tokens.
pub const INPUT_IDS: &str = "input_ids";
/// `list<bool>` of length S: false on padding.
pub const LOSS_MASK: &str = "loss_mask";
/// `list<fixed_size_list<uint32>[k]>`: the teacher's k most likely next tokens per position.
pub const TOPK_IDS: &str = "topk_ids";
/// `list<fixed_size_list<float16>[k]>`: their normalized log-probabilities, descending.
pub const TOPK_LOGPROBS: &str = "topk_logprobs";
/// `list<float32>` of length S: log(1 − Σ top-k probs).
pub const TAIL_LOGMASS: &str = "tail_logmass";
/// Format v2 (compact) instead of [`TOPK_LOGPROBS`]: `list<fixed_size_list<uint8>[k]>`, the
/// log-probs as steps: `logprob_j = −step · Σ_{i≤j} steps_i` with step [`META_LOGPROB_STEP`].
pub const TOPK_LOGPROB_STEPS: &str = "topk_logprob_steps";
/// Format v3 (compact) instead of [`TOPK_IDS`]: `list<fixed_size_list<uint32>[k]>`, each
/// position's ids in ascending order as gaps (the first id, then differences to the previous).
pub const TOPK_ID_GAPS: &str = "topk_id_gaps";
/// Format v3 (compact) instead of [`TOPK_LOGPROBS`]: `list<fixed_size_list<uint8>[k]>`, the
/// level of each log-prob in the order of [`TOPK_ID_GAPS`]; the footer key
/// [`META_LOGPROB_LEVELS`] lists the log-prob of every level.
pub const TOPK_LOGPROB_LEVELS: &str = "topk_logprob_levels";

/// Formats v4 and v5 (tail draws, `precompute --tail-samples N`), plain: `list<fixed_size_list<uint32>[N]>`,
/// each position's N draws from the teacher's tail, ascending by id, repeats adjacent.
pub const DRAW_IDS: &str = "tail_draw_ids";
/// Format v5 (compact with tail draws) instead of [`DRAW_IDS`]: the same ids as gaps (the first
/// id, then differences to the previous; a repeat is a gap of 0).
pub const DRAW_ID_GAPS: &str = "tail_draw_id_gaps";
/// Formats v4 and v5: `list<fixed_size_list<float16>[N]>`, the teacher's log-prob of each draw
/// (at most the k-th top-k log-prob; −∞ with the id `vocab_size` where the tail is empty).
pub const DRAW_LOGPROBS: &str = "tail_draw_logprobs";

/// Format v5 (compact with tail draws) instead of [`DRAW_LOGPROBS`]:
/// `list<fixed_size_list<uint8>[N]>`, each draw's log-prob as steps of [`DRAW_LOGPROB_STEP`] nats
/// below the position's tail log-mass: `log p = tail_logmass − step·u` (u = 255: 255 steps or more).
pub const DRAW_LOGPROB_STEPS: &str = "tail_draw_logprob_steps";

/// The quantization step of [`DRAW_LOGPROB_STEPS`], nats: a draw's importance weight
/// `M·c/(N·p)` is then within a factor e^(±1/32) of the exact one, and the rounding errors, even
/// around zero, move its mean by less than 0.02%.
pub const DRAW_LOGPROB_STEP: f32 = 1.0 / 16.0;

/// Encode a draw's log-prob `lp` of a position with tail log-mass `tau` as
/// [`DRAW_LOGPROB_STEPS`] (a draw is never more likely than the whole tail: `lp ≤ tau`).
pub fn draw_logprob_step(lp: f32, tau: f32) -> u8 {
    let u = ((tau - lp) / DRAW_LOGPROB_STEP).round();
    if u.is_nan() {
        u8::MAX
    } else {
        u.clamp(0.0, 255.0) as u8
    }
}

/// Decode [`DRAW_LOGPROB_STEPS`]: `tau − step·u`.
pub fn draw_logprob_of_step(u: u8, tau: f32) -> f32 {
    tau - DRAW_LOGPROB_STEP * f32::from(u)
}

/// The draws' log-prob column of `encoding`.
pub fn draw_logprobs_column(encoding: Encoding) -> &'static str {
    if encoding.sorted_by_id() {
        DRAW_LOGPROB_STEPS
    } else {
        DRAW_LOGPROBS
    }
}

/// The draws' id column of `encoding`.
pub fn draw_ids_column(encoding: Encoding) -> &'static str {
    if encoding.sorted_by_id() {
        DRAW_ID_GAPS
    } else {
        DRAW_IDS
    }
}

/// The v1 columns in file order.
pub const COLUMNS: [&str; 6] = [
    SEQ_ID,
    INPUT_IDS,
    LOSS_MASK,
    TOPK_IDS,
    TOPK_LOGPROBS,
    TAIL_LOGMASS,
];

/// The v2 (steps) columns in file order.
pub const COLUMNS_STEPS: [&str; 6] = [
    SEQ_ID,
    INPUT_IDS,
    LOSS_MASK,
    TOPK_IDS,
    TOPK_LOGPROB_STEPS,
    TAIL_LOGMASS,
];

/// The v3 (compact) columns in file order.
pub const COLUMNS_COMPACT: [&str; 6] = [
    SEQ_ID,
    INPUT_IDS,
    LOSS_MASK,
    TOPK_ID_GAPS,
    TOPK_LOGPROB_LEVELS,
    TAIL_LOGMASS,
];

/// The columns of `encoding` in file order.
pub fn columns(encoding: Encoding) -> [&'static str; 6] {
    match encoding {
        Encoding::Plain => COLUMNS,
        Encoding::Steps => COLUMNS_STEPS,
        Encoding::Compact => COLUMNS_COMPACT,
    }
}

/// The ids column of `encoding`: `topk_ids`, or `topk_id_gaps` in format v3.
pub fn ids_column(encoding: Encoding) -> &'static str {
    columns(encoding)[3]
}

/// The log-prob column of `encoding`.
pub fn values_column(encoding: Encoding) -> &'static str {
    columns(encoding)[4]
}

/// Formats v4 and v5: the number N of tail draws per position.
pub const META_TAIL_DRAWS: &str = "taidcache.tail_draws";

/// Footer key-value metadata (Parquet `key_value_metadata`), so one shard explains itself.
pub const META_FORMAT_VERSION: &str = "taidcache.format_version";
pub const META_TOP_K: &str = "taidcache.top_k";
pub const META_VOCAB_SIZE: &str = "taidcache.vocab_size";
pub const META_SEQ_LEN: &str = "taidcache.seq_len";
pub const META_TEACHER_SHA256: &str = "taidcache.teacher_sha256";
pub const META_TOKENIZER_SHA256: &str = "taidcache.tokenizer_sha256";
/// Format v3 only: the log-prob of each of the 256 levels of `topk_logprob_levels`, a JSON
/// array (`[0,-0.015686…,…,-72.43…]`).
pub use super::encoding::levels::FOOTER_KEY as META_LOGPROB_LEVELS;
/// Format v2 only: the quantization step of `topk_logprob_steps` in nats (`0.125`).
pub use super::encoding::steps::FOOTER_KEY as META_LOGPROB_STEP;

/// The placeholder `schemas/v1/shard.schema.json` writes where [`schema_json`] writes k.
pub const K_PLACEHOLDER: &str = "k";

/// Name of the child field of every list in the schema.
const ITEM: &str = "item";

fn item(data_type: DataType) -> Arc<Field> {
    Arc::new(Field::new(ITEM, data_type, true))
}

fn list_of(data_type: DataType) -> DataType {
    DataType::List(item(data_type))
}

fn fixed_list_of(data_type: DataType, k: usize) -> DataType {
    let k = i32::try_from(k).expect("top-k fits in i32");
    DataType::FixedSizeList(item(data_type), k)
}

/// The exact v1 schema for top-k `k`.
pub fn arrow_schema(k: usize) -> SchemaRef {
    arrow_schema_for(k, Encoding::Plain)
}

/// The exact schema of `encoding` (v1, v2 or v3) for top-k `k`.
pub fn arrow_schema_for(k: usize, encoding: Encoding) -> SchemaRef {
    arrow_schema_with(k, encoding, 0)
}

/// The exact schema of `encoding` for top-k `k` and `draws` tail draws per position (formats
/// v4 and v5 when `draws` > 0: the two draw columns after the v1 or v3 columns).
pub fn arrow_schema_with(k: usize, encoding: Encoding, draws: usize) -> SchemaRef {
    let value_type = match encoding {
        Encoding::Plain => DataType::Float16,
        Encoding::Steps | Encoding::Compact => DataType::UInt8,
    };
    let mut fields = vec![
        Field::new(SEQ_ID, DataType::UInt64, false),
        Field::new(INPUT_IDS, list_of(DataType::UInt32), false),
        Field::new(LOSS_MASK, list_of(DataType::Boolean), false),
        Field::new(
            ids_column(encoding),
            list_of(fixed_list_of(DataType::UInt32, k)),
            false,
        ),
        Field::new(
            values_column(encoding),
            list_of(fixed_list_of(value_type, k)),
            false,
        ),
        Field::new(TAIL_LOGMASS, list_of(DataType::Float32), false),
    ];
    if draws > 0 {
        fields.push(Field::new(
            draw_ids_column(encoding),
            list_of(fixed_list_of(DataType::UInt32, draws)),
            false,
        ));
        let draw_value = if encoding.sorted_by_id() {
            DataType::UInt8
        } else {
            DataType::Float16
        };
        fields.push(Field::new(
            draw_logprobs_column(encoding),
            list_of(fixed_list_of(draw_value, draws)),
            false,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// A stable JSON description of `schema`: `{"fields": [{"name", "type", "nullable"}]}` where a
/// type is a name (`"uint64"`, `"float16"`, ...), `{"list": field}` or
/// `{"fixed_size_list": field, "size": k}` with k as a number. Field metadata is not part of it.
pub fn schema_json(schema: &Schema) -> Value {
    json!({ "fields": schema.fields().iter().map(|f| field_json(f)).collect::<Vec<_>>() })
}

fn field_json(field: &Field) -> Value {
    json!({
        "name": field.name(),
        "type": type_json(field.data_type()),
        "nullable": field.is_nullable(),
    })
}

fn type_json(data_type: &DataType) -> Value {
    match data_type {
        DataType::List(f) => json!({ "list": field_json(f) }),
        DataType::FixedSizeList(f, n) => json!({ "fixed_size_list": field_json(f), "size": n }),
        other => Value::String(type_name(other)),
    }
}

fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "bool".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float16 => "float16".into(),
        DataType::Float32 => "float32".into(),
        other => format!("{other}").to_lowercase(),
    }
}

/// `data_type` as pyarrow prints it (`list<item: fixed_size_list<item: halffloat>[7]>`), for
/// error messages that a user can hold against `pyarrow.parquet.read_schema`.
pub fn type_string(data_type: &DataType) -> String {
    fn child(f: &Field) -> String {
        let null = if f.is_nullable() { "" } else { " not null" };
        format!("{}: {}{null}", f.name(), type_string(f.data_type()))
    }
    match data_type {
        DataType::List(f) => format!("list<{}>", child(f)),
        DataType::FixedSizeList(f, n) => format!("fixed_size_list<{}>[{n}]", child(f)),
        DataType::Float16 => "halffloat".into(),
        DataType::Float32 => "float".into(),
        other => type_name(other),
    }
}

/// Check that `found` is exactly the v1 schema for `k` (names, order, types, nullability;
/// metadata is ignored). The error names the first differing column with both types.
pub fn check_schema(found: &Schema, k: usize) -> std::result::Result<(), String> {
    check_schema_for(found, k, Encoding::Plain)
}

/// [`check_schema`] for the format of `encoding`.
pub fn check_schema_for(
    found: &Schema,
    k: usize,
    encoding: Encoding,
) -> std::result::Result<(), String> {
    check_schema_with(found, k, encoding, 0)
}

/// [`check_schema`] for the format of `encoding` with `draws` tail draws per position.
pub fn check_schema_with(
    found: &Schema,
    k: usize,
    encoding: Encoding,
    draws: usize,
) -> std::result::Result<(), String> {
    let version = encoding
        .format_version_with(draws)
        .unwrap_or(encoding.format_version());
    let expected = arrow_schema_with(k, encoding, draws);
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>()
    };
    if names(found) != names(&expected) {
        return Err(format!(
            "columns are {:?}, format v{version} has {:?}",
            names(found),
            names(&expected)
        ));
    }
    for (e, f) in expected.fields().iter().zip(found.fields()) {
        // Compare through the JSON description, which ignores field metadata.
        if field_json(e) != field_json(f) {
            let null = |f: &Field| if f.is_nullable() { "" } else { " not null" };
            return Err(format!(
                "column `{}` is {}{}, format v{version} with k = {k}{} has {}{}",
                e.name(),
                type_string(f.data_type()),
                null(f),
                if draws > 0 {
                    format!(" and {draws} tail draws")
                } else {
                    String::new()
                },
                type_string(e.data_type()),
                null(e)
            ));
        }
    }
    Ok(())
}

/// The top-k of a schema whose `topk_ids` (or v3 `topk_id_gaps`) column is
/// `list<fixed_size_list<_>[k]>`.
pub fn top_k_of(schema: &Schema) -> Option<usize> {
    let field = schema
        .field_with_name(TOPK_IDS)
        .or_else(|_| schema.field_with_name(TOPK_ID_GAPS))
        .ok()?;
    match field.data_type() {
        DataType::List(inner) => match inner.data_type() {
            DataType::FixedSizeList(_, k) => usize::try_from(*k).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Footer key-value metadata of a shard of the cache `m` describes, beyond the keys the writer
/// sets itself (format version, k, seq_len): vocabulary size and the teacher and tokenizer
/// identities, so one shard explains itself in pyarrow.
pub fn footer_metadata(m: &super::manifest::Manifest) -> Vec<(String, String)> {
    vec![
        (META_VOCAB_SIZE.to_string(), m.vocab_size.to_string()),
        (
            META_TEACHER_SHA256.to_string(),
            m.teacher.config_sha256.clone(),
        ),
        (
            META_TOKENIZER_SHA256.to_string(),
            m.tokenizer_sha256.clone(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARD_SCHEMA_FILE: &str = include_str!("../../schemas/v1/shard.schema.json");
    const SHARD_SCHEMA_FILE_V2: &str = include_str!("../../schemas/v2/shard.schema.json");
    const SHARD_SCHEMA_FILE_V3: &str = include_str!("../../schemas/v3/shard.schema.json");
    const SHARD_SCHEMA_FILE_V4: &str = include_str!("../../schemas/v4/shard.schema.json");
    const SHARD_SCHEMA_FILE_V5: &str = include_str!("../../schemas/v5/shard.schema.json");

    /// Replace every `"size": "n"` of the template by the number of draws.
    fn instantiate_draws(template: &Value, n: usize) -> Value {
        match template {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, v)| {
                        let v = if key == "size" && v == "n" {
                            json!(n)
                        } else {
                            instantiate_draws(v, n)
                        };
                        (key.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| instantiate_draws(v, n)).collect())
            }
            other => other.clone(),
        }
    }

    #[test]
    fn draw_log_prob_steps_round_to_a_32nd_of_a_nat_with_weights_unbiased_on_average() {
        let tau = -1.7f32;
        let (mut worst, mut weight_sum, mut n) = (0f64, 0f64, 0usize);
        for i in 0..20_000 {
            // Log-probs spread over 15 nats below the tail log-mass.
            let lp = tau - 15.0 * (i as f32 + 0.5) / 20_000.0;
            let back = draw_logprob_of_step(draw_logprob_step(lp, tau), tau);
            worst = worst.max((back - lp).abs() as f64);
            // The importance weight's factor e^(lp − back) (1 when exact).
            weight_sum += ((lp - back) as f64).exp();
            n += 1;
        }
        assert!(worst <= 1.0 / 32.0 + 1e-5, "{worst}");
        let bias = weight_sum / n as f64 - 1.0;
        assert!(bias.abs() < 2e-4, "mean weight factor off by {bias:e}");
        assert_eq!(draw_logprob_step(f32::NEG_INFINITY, tau), 255);
        assert_eq!(draw_logprob_step(tau - 100.0, tau), 255);
        assert_eq!(draw_logprob_step(tau, tau), 0);
        assert_eq!(
            draw_logprob_of_step(7, f32::NEG_INFINITY),
            f32::NEG_INFINITY
        );
    }

    #[test]
    fn v4_and_v5_schema_files_equal_the_schemas_with_tail_draws() {
        for (file, encoding, version) in [
            (SHARD_SCHEMA_FILE_V4, Encoding::Plain, 4),
            (SHARD_SCHEMA_FILE_V5, Encoding::Compact, 5),
        ] {
            assert_eq!(encoding.format_version_with(16), Some(version));
            let template: Value = serde_json::from_str(file).unwrap();
            for (k, n) in [(7usize, 16usize), (50, 4)] {
                let found = schema_json(&arrow_schema_with(k, encoding, n));
                assert_eq!(
                    found,
                    instantiate_draws(&instantiate(&template, k), n),
                    "k = {k}, n = {n}: schemas/v{version}/shard.schema.json differs:\n{}",
                    serde_json::to_string_pretty(&found).unwrap()
                );
                assert_eq!(
                    check_schema_with(&arrow_schema_with(k, encoding, n), k, encoding, n),
                    Ok(())
                );
            }
            // A v1/v3 shard is not a v4/v5 one, and the draw count is part of the schema.
            let err =
                check_schema_with(&arrow_schema_for(7, encoding), 7, encoding, 16).unwrap_err();
            assert!(err.contains(&format!("format v{version}")), "{err}");
            let err =
                check_schema_with(&arrow_schema_with(7, encoding, 8), 7, encoding, 16).unwrap_err();
            assert!(err.contains("[8]") && err.contains("[16]"), "{err}");
        }
        assert_eq!(Encoding::Steps.format_version_with(4), None);
    }

    #[test]
    fn v2_and_v3_schema_files_equal_the_steps_and_compact_arrow_schemas_for_k_7_and_50() {
        for (file, encoding, version) in [
            (SHARD_SCHEMA_FILE_V2, Encoding::Steps, 2),
            (SHARD_SCHEMA_FILE_V3, Encoding::Compact, 3),
        ] {
            let template: Value = serde_json::from_str(file).unwrap();
            for k in [7usize, 50] {
                let found = schema_json(&arrow_schema_for(k, encoding));
                assert_eq!(
                    found,
                    instantiate(&template, k),
                    "k = {k}: schemas/v{version}/shard.schema.json differs from the {} schema:\n{}",
                    encoding.name(),
                    serde_json::to_string_pretty(&found).unwrap()
                );
            }
            let err = check_schema_for(&arrow_schema(8), 8, encoding).unwrap_err();
            assert!(err.contains(&format!("format v{version}")), "{err}");
            assert_eq!(top_k_of(&arrow_schema_for(9, encoding)), Some(9));
        }
    }

    /// Replace every `"size": "k"` of the template by the number k.
    fn instantiate(template: &Value, k: usize) -> Value {
        match template {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, v)| {
                        let v = if key == "size" && v == K_PLACEHOLDER {
                            json!(k)
                        } else {
                            instantiate(v, k)
                        };
                        (key.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| instantiate(v, k)).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn schema_file_equals_arrow_schema_for_k_7_and_50() {
        let template: Value = serde_json::from_str(SHARD_SCHEMA_FILE).unwrap();
        for k in [7usize, 50] {
            let expected = instantiate(&template, k);
            let found = schema_json(&arrow_schema(k));
            assert_eq!(
                found,
                expected,
                "k = {k}: schema_json(arrow_schema(k)) =\n{}\nschemas/v1/shard.schema.json gives\n{}",
                serde_json::to_string_pretty(&found).unwrap(),
                serde_json::to_string_pretty(&expected).unwrap()
            );
        }
        assert!(
            SHARD_SCHEMA_FILE.matches("\"size\": \"k\"").count() == 2,
            "the template writes k as the placeholder twice (topk_ids, topk_logprobs)"
        );
    }

    #[test]
    fn type_strings_are_what_pyarrow_prints() {
        let s = arrow_schema(7);
        let found: Vec<String> = s
            .fields()
            .iter()
            .map(|f| type_string(f.data_type()))
            .collect();
        assert_eq!(
            found,
            [
                "uint64",
                "list<item: uint32>",
                "list<item: bool>",
                "list<item: fixed_size_list<item: uint32>[7]>",
                "list<item: fixed_size_list<item: halffloat>[7]>",
                "list<item: float>",
            ]
        );
        assert_eq!(top_k_of(&s), Some(7));
    }

    #[test]
    fn check_schema_names_the_differing_column() {
        assert_eq!(check_schema(&arrow_schema(8), 8), Ok(()));
        let err = check_schema(&arrow_schema(8), 16).unwrap_err();
        assert!(
            err.contains("`topk_ids`") && err.contains("[8]") && err.contains("[16]"),
            "{err}"
        );
        let mut fields: Vec<Field> = arrow_schema(4)
            .fields()
            .iter()
            .map(|f| (**f).clone())
            .collect();
        fields[5] = Field::new(TAIL_LOGMASS, list_of(DataType::Float16), false);
        let err = check_schema(&Schema::new(fields), 4).unwrap_err();
        assert!(
            err.contains("`tail_logmass`") && err.contains("halffloat"),
            "{err}"
        );
    }
}
