//! Tests of the readers, file listing and the whole stage, one file per topic, sharing the
//! helpers below. Packer tests are in `pack.rs`, tokenizer-helper tests in `testing.rs`.

mod chunk;
mod files;
mod jsonl;
mod parquet;
mod stream;
mod text;
mod tokenizer;

use std::path::{Path, PathBuf};

use ::parquet::arrow::ArrowWriter;
use ::parquet::basic::Compression;
use ::parquet::file::properties::WriterProperties;
use arrow::array::{ArrayRef, RecordBatch};

use super::*;

fn text(s: &str) -> Document {
    Document::Text(s.to_string())
}

fn opts() -> CorpusOptions {
    CorpusOptions::default()
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, contents).unwrap();
    path
}

fn read_all(files: &[PathBuf], opts: &CorpusOptions) -> Vec<Document> {
    DocumentReader::new(files, opts)
        .unwrap()
        .collect::<Result<Vec<_>>>()
        .unwrap()
}

/// The first error of reading `files`, at construction or while iterating, as displayed.
fn first_error(files: &[PathBuf], opts: &CorpusOptions) -> String {
    match DocumentReader::new(files, opts) {
        Err(e) => e.to_string(),
        Ok(reader) => {
            let mut n = 0;
            for doc in reader {
                match doc {
                    Ok(_) => n += 1,
                    Err(e) => return e.to_string(),
                }
            }
            panic!("no error after {n} documents")
        }
    }
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>, compression: Compression) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(700))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
