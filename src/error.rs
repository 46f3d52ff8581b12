//! The one error type of the crate.
//!
//! Every variant names what the user must fix: the file, the field or the flag, and what was
//! expected against what was found. `Display` is one sentence; `main` prints it (and its
//! sources) on stderr and exits non-zero.

use std::path::{Path, PathBuf};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The source of an error from another library, kept for [`Error::chain`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file or directory.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file that does not parse or does not have the expected shape.
    #[error("{path}: invalid JSON: {source}", path = .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A file parsed, but one of its fields is missing or wrong.
    #[error("{path}: field `{field}`: {msg}", path = .path.display())]
    Field {
        path: PathBuf,
        field: String,
        msg: String,
    },

    /// A command-line flag (or its pipeline-config key) has a bad value.
    #[error("{flag}: {msg}")]
    Flag { flag: String, msg: String },

    /// `config.json` names an architecture this crate does not implement.
    #[error("{path}: unsupported model_type `{found}` (supported: {supported})", path = .path.display())]
    UnsupportedArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },

    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("{dir}: missing tensor `{name}` in the safetensors checkpoint", dir = .dir.display())]
    MissingTensor { dir: PathBuf, name: String },

    /// A tensor exists but has the wrong shape.
    #[error("{dir}: tensor `{name}` has shape {found:?}, expected {expected:?} from config.json", dir = .dir.display())]
    TensorShape {
        dir: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A model directory holds only pickle checkpoints.
    #[error("{path}: pickle checkpoints are not loaded (they can run arbitrary code); convert the model to safetensors", path = .path.display())]
    PickleCheckpoint { path: PathBuf },

    /// A corpus file is unreadable or malformed; `location` is e.g. `line 12` or `row group 3`.
    #[error("{path}: {location}: {msg}", path = .path.display())]
    Corpus {
        path: PathBuf,
        location: String,
        msg: String,
    },

    /// The corpus files hold no document at all (every value null, empty or tokenized to
    /// nothing); `files` lists them.
    #[error("the corpus ({files}) holds no documents: {detail}")]
    EmptyCorpus { files: String, detail: String },

    /// A tokenizer that cannot be loaded or used; `source` is the `tokenizers` error, when
    /// there is one (its text is already in `msg`).
    #[error("{path}: {msg}", path = .path.display())]
    Tokenizer {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A Parquet or Arrow failure on a named file; `source` is the parquet/arrow error, when
    /// there is one (its text is already in `msg`).
    #[error("{path}: {msg}", path = .path.display())]
    Parquet {
        path: PathBuf,
        msg: String,
        #[source]
        source: Option<BoxError>,
    },

    /// A cache that does not fit the request (other teacher, other format version, a shard that
    /// disagrees with its manifest, ...).
    #[error("{path}: {msg}", path = .path.display())]
    Cache { path: PathBuf, msg: String },

    /// A model directory's files (config, safetensors) are unreadable or inconsistent.
    #[error("{path}: {msg}", path = .path.display())]
    Model { path: PathBuf, msg: String },

    /// A model produced values training or caching cannot use (non-finite logits); `path` is
    /// the model directory or file.
    #[error("{path}: {msg}", path = .path.display())]
    ModelOutput { path: PathBuf, msg: String },

    /// A checkpoint of a distill run (optimizer state, trainer state) is unreadable or
    /// inconsistent.
    #[error("{path}: {msg}", path = .path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// Training diverged at optimizer step `step`: `what` says which value is not finite, where
    /// it came from and what to do.
    #[error("step {step}: {what}; {}", match .last_checkpoint {
        Some(p) => format!("the last good checkpoint is {}", p.display()),
        None => "no checkpoint was written yet".to_string(),
    })]
    Diverged {
        step: u64,
        what: String,
        last_checkpoint: Option<PathBuf>,
    },

    /// `verify` found a bad shard; `row` is the row inside that shard.
    #[error("{path}: row {row}: {msg}", path = .path.display())]
    Verify {
        path: PathBuf,
        row: usize,
        msg: String,
    },

    /// A tensor operation failed; `context` says which step.
    #[error("{context}: {source}")]
    Candle {
        context: String,
        #[source]
        source: candle_core::Error,
    },

    /// A trainable parameter got no gradient (a non-differentiable op cut the graph).
    #[error("parameter `{0}` received no gradient")]
    MissingGradient(String),

    /// A pipeline stage stopped unexpectedly (a worker thread panicked or hung up).
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn field(path: impl AsRef<Path>, field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Field {
            path: path.as_ref().to_path_buf(),
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn flag(flag: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Flag {
            flag: flag.into(),
            msg: msg.into(),
        }
    }

    pub fn corpus(
        path: impl AsRef<Path>,
        location: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Corpus {
            path: path.as_ref().to_path_buf(),
            location: location.into(),
            msg: msg.into(),
        }
    }

    /// A Parquet/Arrow failure on `path` without a library error behind it.
    pub fn parquet(path: impl AsRef<Path>, msg: impl std::fmt::Display) -> Self {
        Error::Parquet {
            path: path.as_ref().to_path_buf(),
            msg: msg.to_string(),
            source: None,
        }
    }

    /// A Parquet/Arrow failure on `path` while doing `context` (e.g. `row group 3`), keeping
    /// the library's error as the source.
    pub fn parquet_source(
        path: impl AsRef<Path>,
        context: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Parquet {
            path: path.as_ref().to_path_buf(),
            msg: format!("{context}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// A tokenizer failure on `path`, keeping the `tokenizers` error as the source when given.
    pub fn tokenizer(
        path: impl AsRef<Path>,
        msg: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Error::Tokenizer {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
            source,
        }
    }

    pub fn model(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Model {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn checkpoint(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// The message and every source below it whose text the message does not already hold,
    /// one per line: what `main` prints.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let line = s.to_string();
            if !text.contains(&line) {
                text.push_str("\n  caused by: ");
                text.push_str(&line);
            }
            source = s.source();
        }
        text
    }

    pub fn cache(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Cache {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Attach a step description to candle results: `x.matmul(&w).ctx("lm_head")?`.
pub trait CandleContext<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> CandleContext<T> for std::result::Result<T, candle_core::Error> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Candle {
            context: context.into(),
            source,
        })
    }
}

/// Attach a path to `std::io` results: `File::open(p).at(p)?`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
