//! Pipeline configs (TOML) and their merge with command-line flags.
//!
//! A pipeline file has one table per stage, keyed like the long flags with `_` for `-`:
//!
//! ```toml
//! [precompute]
//! teacher = "models/teacher"
//! corpus = ["data/train.jsonl"]
//! out = "cache"
//! top_k = 50
//! ```
//!
//! Precedence: a flag given on the command line, else the file's value, else the default.
//! Relative paths are taken relative to the working directory, as on the command line.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

/// Read one stage's table from a pipeline file, as JSON for merging. A missing table is empty.
pub fn read_section(path: &Path, section: &str) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| {
        Error::field(
            path,
            "(toml)",
            e.message().to_string() + &location(&text, e.span()),
        )
    })?;
    for key in doc.keys() {
        if !KNOWN_SECTIONS.contains(&key.as_str()) {
            return Err(Error::field(
                path,
                key,
                format!(
                    "unknown section (expected one of: {})",
                    KNOWN_SECTIONS.join(", ")
                ),
            ));
        }
    }
    match doc.get(section) {
        None => Ok(Map::new()),
        Some(toml::Value::Table(t)) => match serde_json::to_value(t) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Error::field(path, section, "could not be read as a table")),
        },
        Some(_) => Err(Error::field(
            path,
            section,
            "expected a table `[{section}]`",
        )),
    }
}

/// Sections a pipeline file may hold.
pub const KNOWN_SECTIONS: &[&str] = &["precompute", "distill", "pipeline"];

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Resolve a stage's options: `defaults` overlaid with the file's section, overlaid with the
/// flags given on the command line (`cli` serializes only the flags that were given).
pub fn resolve<T: DeserializeOwned>(
    defaults: &impl Serialize,
    file: Option<(&Path, &str)>,
    cli: &impl Serialize,
    required: &[&str],
) -> Result<T> {
    let mut merged = match serde_json::to_value(defaults) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for key in required {
        merged.remove(*key);
    }
    let section = match file {
        Some((path, name)) => Some((path, name, read_section(path, name)?)),
        None => None,
    };
    if let Some((_, _, m)) = &section {
        merged.extend(m.clone());
    }
    if let Ok(Value::Object(m)) = serde_json::to_value(cli) {
        merged.extend(m.into_iter().filter(|(_, v)| !v.is_null()));
    }
    for key in required {
        if !merged.contains_key(*key) {
            let hint = match &section {
                Some((path, name, _)) => {
                    format!(" or as `{key}` in [{name}] of {}", path.display())
                }
                None => String::new(),
            };
            return Err(Error::flag(
                format!("--{}", key.replace('_', "-")),
                format!("is required (give it on the command line{hint})"),
            ));
        }
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| match &section {
        Some((path, name, _)) => Error::field(path, *name, e.to_string()),
        None => Error::flag("(options)", e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precompute::PrecomputeOptions;
    use serde_json::json;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[precompute]\nteacher = \"t\"\ncorpus = [\"a.jsonl\"]\nout = \"c\"\ntop_k = 7\nseq_len = 64\n",
        )
        .unwrap();
        let defaults = PrecomputeOptions::new("", vec![], "");
        let cli = json!({"seq_len": 32, "batch_size": null});
        let o: PrecomputeOptions = resolve(
            &defaults,
            Some((&path, "precompute")),
            &cli,
            &["teacher", "corpus", "out"],
        )
        .unwrap();
        assert_eq!(
            (o.top_k, o.seq_len, o.batch_size),
            (7, 32, defaults.batch_size)
        );
        assert_eq!(o.teacher, Path::new("t"));
    }

    #[test]
    fn unknown_keys_and_missing_required_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[precompute]\ntopk = 7\n").unwrap();
        let defaults = PrecomputeOptions::new("", vec![], "");
        let cli = json!({"teacher": "t", "corpus": ["x"], "out": "o"});
        let e = resolve::<PrecomputeOptions>(&defaults, Some((&path, "precompute")), &cli, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("topk") && e.contains("p.toml"), "{e}");
        let e = resolve::<PrecomputeOptions>(&defaults, None, &json!({}), &["teacher"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--teacher") && e.contains("required"), "{e}");
        std::fs::write(&path, "[precompte]\n").unwrap();
        let e = read_section(&path, "precompute").unwrap_err().to_string();
        assert!(e.contains("precompte"), "{e}");
    }
}
