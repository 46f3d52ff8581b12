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
//!
//! Each option is defined once, as a field of its stage's options struct: clap gives it its
//! flag, help and default, serde its key in the file; [`merge_file`] tells a flag the user gave
//! from a default by clap's `ValueSource`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, IoContext, Result};

pub mod bounds;

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
        Some(toml::Value::Table(t)) => {
            // JSON has no NaN or infinity (they would arrive as `null`), and no option takes one.
            for (key, value) in t {
                if let Some(v) = non_finite(value) {
                    return Err(Error::field(
                        path,
                        format!("[{section}] {key}"),
                        format!("{} is not a finite number", bounds::show(v)),
                    ));
                }
            }
            table_as_json(t, path, section)
        }
        Some(_) => Err(Error::field(
            path,
            section,
            format!("expected a table `[{section}]`"),
        )),
    }
}

/// The first NaN or infinite float in `value` (itself or an array element).
fn non_finite(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Float(f) if !f.is_finite() => Some(*f),
        toml::Value::Array(items) => items.iter().find_map(non_finite),
        _ => None,
    }
}

fn table_as_json(t: &toml::Table, path: &Path, section: &str) -> Result<Map<String, Value>> {
    match serde_json::to_value(t) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Error::field(path, section, "could not be read as a table")),
    }
}

/// Sections a pipeline file may hold.
pub const KNOWN_SECTIONS: &[&str] = &["precompute", "distill"];

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// The value parser of the required path flags: any path, the empty one meaning "not given"
/// (their default), which [`require`] refuses after the merge with the file. (clap's own path
/// parser refuses an empty value, so it cannot be their default.)
pub fn path_arg(s: &str) -> std::result::Result<std::path::PathBuf, std::convert::Infallible> {
    Ok(s.into())
}

/// A stage's options with every flag at its default: the one place defaults come from is the
/// clap attribute of each option (`default_value_t`).
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = command
        .try_get_matches_from(std::iter::empty::<&str>())
        .expect("every option has a default or is optional");
    T::from_arg_matches(&matches).expect("defaults parse into their own options")
}

/// Overlay the `[section]` table of the pipeline file `path` on options clap parsed from
/// `matches`: a flag given on the command line wins, else the file's value, else the default.
/// A key that is not an option is an error naming it and the file.
pub fn merge_file<T: Serialize + DeserializeOwned + clap::Args>(
    parsed: T,
    matches: &clap::ArgMatches,
    path: &Path,
    section: &str,
) -> Result<T> {
    let table = read_section(path, section)?;
    check_values::<T>(&table, path, section)?;
    let mut merged = match serde_json::to_value(&parsed) {
        Ok(Value::Object(m)) => m,
        _ => return Err(Error::Internal("options do not serialize as a map".into())),
    };
    for (key, value) in table {
        let from_command_line = matches.ids().any(|id| id.as_str() == key)
            && matches.value_source(&key) == Some(clap::parser::ValueSource::CommandLine);
        if !from_command_line {
            merged.insert(key, value);
        }
    }
    serde_json::from_value(Value::Object(merged))
        .map_err(|e| Error::field(path, section, e.to_string()))
}

/// Put every value of a pipeline file's table through the value parser of its flag, so a file
/// is held to the same bounds as the command line (`lr = nan`, `top_k = -1`, `objective =
/// "kll"` are refused naming the key, the file and what is allowed). Keys that are not flags are
/// left to serde, which names them.
fn check_values<T: clap::Args>(
    table: &Map<String, Value>,
    path: &Path,
    section: &str,
) -> Result<()> {
    // The stage's own flags (none is required: the paths default to empty), parsing one
    // `--key=value` at a time.
    let command = T::augment_args(clap::Command::new("pipeline-file").no_binary_name(true));
    for (key, value) in table {
        let Some(arg) = command.get_arguments().find(|a| a.get_id() == key.as_str()) else {
            continue;
        };
        let Some(long) = arg.get_long().filter(|_| arg.get_action().takes_values()) else {
            continue;
        };
        let words: Vec<String> = match value {
            Value::Array(items) => items.iter().map(value_word).collect(),
            other => vec![value_word(other)],
        };
        for word in words {
            if let Err(e) = command
                .clone()
                .try_get_matches_from([format!("--{long}={word}")])
            {
                let why = clap_reason(&e);
                return Err(Error::field(
                    path,
                    format!("[{section}] {key}"),
                    format!("{why} (the same values as --{})", key.replace('_', "-")),
                ));
            }
        }
    }
    Ok(())
}

/// A TOML value as it would be typed after its flag.
fn value_word(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// clap's reason for refusing a value, without its `invalid value 'x' for '--flag <F>': `
/// preamble.
fn clap_reason(e: &clap::Error) -> String {
    let text = one_line(e);
    match text.split_once("': ") {
        Some((head, reason)) if head.starts_with("invalid value") => reason.to_string(),
        _ => text,
    }
}

/// A clap error as one sentence: its message with its hints (possible values, a similar flag)
/// on the same line, without the usage and `--help` lines.
pub fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Refuse options where one of the `required` flags is still empty after the merge, saying
/// where it may be given.
pub fn require(
    opts: &impl Serialize,
    required: &[&str],
    file: Option<(&Path, &str)>,
) -> Result<()> {
    let value = serde_json::to_value(opts).unwrap_or(Value::Null);
    for key in required {
        let missing = match value.get(*key) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if missing {
            let hint = match file {
                Some((path, name)) => format!(" or as `{key}` in [{name}] of {}", path.display()),
                None => String::new(),
            };
            return Err(Error::flag(
                format!("--{}", key.replace('_', "-")),
                format!("is required (give it on the command line{hint})"),
            ));
        }
    }
    Ok(())
}

/// The command line that runs `stage` with `opts`: every flag whose value differs from its
/// default, in the order of the options (what the demo prints before running a stage).
pub fn command_line<T>(stage: &str, opts: &T) -> Vec<String>
where
    T: Serialize + clap::Args + clap::FromArgMatches,
{
    let (Ok(Value::Object(ours)), Ok(Value::Object(defaults))) = (
        serde_json::to_value(opts),
        serde_json::to_value(clap_defaults::<T>()),
    ) else {
        return vec![stage.to_string()];
    };
    let mut words = vec![stage.to_string()];
    for arg in T::augment_args(clap::Command::new("options")).get_arguments() {
        let id = arg.get_id().as_str();
        let (Some(value), Some(flag)) = (ours.get(id), arg.get_long()) else {
            continue;
        };
        if defaults.get(id) == Some(value) {
            continue;
        }
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match value {
            Value::Null | Value::Bool(false) => {}
            Value::Bool(true) => words.push(format!("--{flag}")),
            Value::Array(items) => {
                words.push(format!("--{flag}"));
                words.extend(items.iter().map(text));
            }
            v => {
                words.push(format!("--{flag}"));
                words.push(text(v));
            }
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use serde::Deserialize;
    use std::path::PathBuf;

    /// A stage's options in miniature, defined like the real ones.
    #[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
    #[serde(deny_unknown_fields)]
    struct PrecomputeOptions {
        #[arg(long, default_value = "", hide_default_value = true, value_parser = path_arg)]
        teacher: PathBuf,
        #[arg(long, num_args = 1..)]
        corpus: Vec<PathBuf>,
        #[arg(long, default_value = "", hide_default_value = true, value_parser = path_arg)]
        out: PathBuf,
        #[arg(long, default_value_t = 50)]
        top_k: usize,
        #[arg(long, default_value_t = 2048)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long)]
        compact: bool,
    }

    impl Default for PrecomputeOptions {
        fn default() -> Self {
            clap_defaults()
        }
    }

    impl PrecomputeOptions {
        fn new(teacher: &str, corpus: Vec<PathBuf>, out: &str) -> Self {
            Self {
                teacher: teacher.into(),
                corpus,
                out: out.into(),
                ..Self::default()
            }
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        o: PrecomputeOptions,
    }

    fn parse(args: &[&str]) -> (PrecomputeOptions, clap::ArgMatches) {
        let m = Cli::command()
            .try_get_matches_from(std::iter::once("x").chain(args.iter().copied()))
            .unwrap();
        (Cli::from_arg_matches(&m).unwrap().o, m)
    }

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
        let (parsed, m) = parse(&["--seq-len", "32"]);
        let o = merge_file(parsed, &m, &path, "precompute").unwrap();
        assert_eq!(
            (o.top_k, o.seq_len, o.batch_size),
            (7, 32, defaults.batch_size)
        );
        assert_eq!(o.teacher, Path::new("t"));
        // A flag given with its default value still wins over the file.
        let (parsed, m) = parse(&["--top-k", "50"]);
        assert_eq!(
            merge_file(parsed, &m, &path, "precompute").unwrap().top_k,
            50
        );
    }

    #[test]
    fn unknown_keys_and_missing_required_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[precompute]\ntopk = 7\n").unwrap();
        let (parsed, m) = parse(&["--teacher", "t", "--corpus", "x", "--out", "o"]);
        let e = merge_file(parsed, &m, &path, "precompute")
            .unwrap_err()
            .to_string();
        assert!(e.contains("topk") && e.contains("p.toml"), "{e}");
        let e = require(&PrecomputeOptions::default(), &["teacher"], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--teacher") && e.contains("required"), "{e}");
        std::fs::write(&path, "[precompte]\n").unwrap();
        let e = read_section(&path, "precompute").unwrap_err().to_string();
        assert!(e.contains("precompte"), "{e}");
    }

    #[test]
    fn the_command_line_of_options_names_exactly_the_changed_flags_and_parses_back() {
        let mut o = PrecomputeOptions::new("t", vec!["a.jsonl".into(), "b.txt".into()], "c");
        o.top_k = 7;
        o.compact = true;
        let words = command_line("precompute", &o);
        assert_eq!(
            words.join(" "),
            "precompute --teacher t --corpus a.jsonl b.txt --out c --top-k 7 --compact"
        );
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let (back, _) = parse(&args);
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&o).unwrap()
        );
    }
}
