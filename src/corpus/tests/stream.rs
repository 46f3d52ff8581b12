//! The whole stage: documents to packed sequences with [`SequenceStream`].

use std::sync::Arc;

use arrow::array::ListArray;
use arrow::datatypes::Int64Type;

use crate::corpus::testing::{sample_texts, sample_tokenizer};

use super::*;

const EOS: u32 = 0;
const PAD: u32 = 1;

fn stream(
    files: &[PathBuf],
    o: &CorpusOptions,
    tok: &Arc<tokenizers::Tokenizer>,
    seq_len: usize,
    vocab: usize,
) -> SequenceStream {
    SequenceStream::new(
        DocumentReader::new(files, o).unwrap(),
        tok.clone(),
        seq_len,
        EOS,
        PAD,
        vocab,
    )
}

/// The real tokens of a list of sequences, in order; checks shapes and ids on the way.
fn concat_real(seqs: &[PackedSequence], seq_len: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(s.seq_id, i as u64);
        assert_eq!(s.input_ids.len(), seq_len);
        let real = s.loss_mask.iter().filter(|&&m| m).count();
        if i + 1 < seqs.len() {
            assert_eq!(real, seq_len);
        }
        out.extend_from_slice(&s.input_ids[..real]);
    }
    out
}

#[test]
fn sequence_stream_equals_direct_encoding_of_each_document_plus_eos() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(400));
    // 700 documents: more than two tokenizer batches.
    let docs: Vec<String> = sample_texts()
        .into_iter()
        .cycle()
        .take(700)
        .enumerate()
        .map(|(i, t)| format!("{i}: {t}"))
        .collect();
    let mut jsonl = String::new();
    for d in &docs {
        jsonl.push_str(&serde_json::json!({ "text": d }).to_string());
        jsonl.push('\n');
    }
    let f = write(dir.path(), "c.jsonl", &jsonl);
    let seq_len = 64;
    let mut s = stream(&[f], &opts(), &tok, seq_len, 400);
    let mut seqs = Vec::new();
    let mut last = 0;
    while let Some(seq) = s.next() {
        seqs.push(seq.unwrap());
        assert!(s.bytes_read() >= last);
        last = s.bytes_read();
    }
    assert_eq!(last, jsonl.len() as u64);

    let mut expected = Vec::new();
    for d in &docs {
        expected.extend_from_slice(tok.encode(d.as_str(), false).unwrap().get_ids());
        expected.push(EOS);
    }
    let got = concat_real(&seqs, seq_len);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    assert_eq!(seqs.len(), expected.len().div_ceil(seq_len));
    assert_eq!(s.documents(), 700);
    assert_eq!(s.tokens() as usize, expected.len() - 700);
    let last = seqs.last().unwrap();
    let pad = seq_len - (expected.len() - seq_len * (seqs.len() - 1));
    assert!(last.input_ids[seq_len - pad..].iter().all(|&t| t == PAD));
    assert_eq!(last.loss_mask.iter().filter(|&&m| !m).count(), pad);
}

#[test]
fn sequence_stream_keeps_corpus_order_of_text_and_pre_tokenized_documents() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(350));
    let a = write(
        dir.path(),
        "a.jsonl",
        "{\"text\": [300, 301]}\n{\"text\": \"The model reads\"}\n{\"text\": [7]}\n",
    );
    let b = write(dir.path(), "b.txt", "Every token\n\nThe teacher stores\n");
    let o = CorpusOptions {
        text_split: TextSplit::BlankLine,
        ..opts()
    };
    let seqs: Vec<PackedSequence> = stream(&[a, b], &o, &tok, 5, 350)
        .map(|s| s.unwrap())
        .collect();
    let enc = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
    let mut expected = vec![300, 301, EOS];
    expected.extend(enc("The model reads"));
    expected.extend([EOS, 7, EOS]);
    expected.extend(enc("Every token"));
    expected.push(EOS);
    expected.extend(enc("The teacher stores"));
    expected.push(EOS);
    assert_eq!(concat_real(&seqs, 5), expected);
}

#[test]
fn sequence_stream_ignores_tokenizer_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = sample_tokenizer(300);
    let long = sample_texts().join(" ");
    let full = t.encode(long.as_str(), false).unwrap().len();
    t.with_truncation(Some(tokenizers::TruncationParams {
        max_length: 8,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(t.encode(long.as_str(), false).unwrap().len(), 8);
    let f = write(dir.path(), "long.txt", &long);
    let seqs: Vec<PackedSequence> = stream(&[f], &opts(), &Arc::new(t), 128, 300)
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(concat_real(&seqs, 128).len(), full + 1);
}

#[test]
fn sequence_stream_given_id_beyond_vocab_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(300));
    let f = write(
        dir.path(),
        "ids.jsonl",
        "{\"text\": [1, 2]}\n{\"text\": [3, 300]}\n",
    );
    let results: Vec<Result<PackedSequence>> = stream(&[f], &opts(), &tok, 4, 300).collect();
    assert_eq!(results.len(), 1, "the stream ends at the error");
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains(
            "ids.jsonl: line 2: token id 300 at index 1 is not below the model's vocab_size 300"
        ),
        "{err}"
    );

    let rows = vec![Some(vec![Some(1i64)]), Some(vec![Some(999)])];
    let col: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(rows));
    let p = dir.path().join("ids.parquet");
    write_parquet(&p, vec![("text", col)], Compression::SNAPPY);
    let err = stream(&[p], &opts(), &tok, 4, 300)
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
    assert!(err.contains("ids.parquet: row 1: token id 999"), "{err}");
}

#[test]
fn sequence_stream_tokenizer_id_beyond_vocab_is_an_error_naming_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(400));
    let f = write(
        dir.path(),
        "t.jsonl",
        "{\"text\": \"a\"}\n{\"text\": \"The model predicts the next word\"}\n",
    );
    // The sentence uses merges (ids >= 257) that a model of 257 ids does not have.
    let err = stream(&[f], &opts(), &tok, 4, 257)
        .find_map(|r| r.err())
        .unwrap()
        .to_string();
    assert!(
        err.contains("t.jsonl: line 2: the tokenizer produced token id"),
        "{err}"
    );
    assert!(err.contains("vocab_size 257"), "{err}");
}

#[test]
fn sequence_stream_of_a_corpus_without_documents_yields_one_error_naming_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Arc::new(sample_tokenizer(300));
    let a = write(
        dir.path(),
        "a.jsonl",
        "{\"text\": null}\n\n{\"text\": \"\"}\n",
    );
    let b = write(dir.path(), "b.txt", "");
    let results: Vec<Result<PackedSequence>> = stream(&[a, b], &opts(), &tok, 4, 300).collect();
    assert_eq!(results.len(), 1);
    let err = results[0].as_ref().unwrap_err();
    assert!(matches!(err, Error::EmptyCorpus { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("a.jsonl") && msg.contains("b.txt") && msg.contains("holds no documents"),
        "{msg}"
    );
    assert!(msg.contains("1 null and 2 empty"), "{msg}");
}
