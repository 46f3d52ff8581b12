//! Packing documents' token ids into fixed-length sequences.

use std::collections::VecDeque;

/// One packed sequence. `seq_id` counts sequences from 0 in corpus order.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedSequence {
    pub seq_id: u64,
    /// Exactly `seq_len` ids.
    pub input_ids: Vec<u32>,
    /// `true` on real tokens (document tokens and EOS), `false` on padding (only at the end of
    /// the last sequence).
    pub loss_mask: Vec<bool>,
}

/// Packs a stream of documents' token ids: each document's tokens followed by `eos_id`,
/// concatenated, cut into sequences of exactly `seq_len`. Documents longer than `seq_len` span
/// sequences; a sequence may start in the middle of a document.
///
/// Use: [`push_document`](Self::push_document) for each document, draining
/// [`pop`](Self::pop) after each; at the end, [`pop`](Self::pop) until `None` then
/// [`finish`](Self::finish) for the last, padded sequence.
pub struct Packer {
    seq_len: usize,
    eos_id: u32,
    pad_id: u32,
    buf: VecDeque<u32>,
    next_id: u64,
}

impl Packer {
    /// # Panics
    /// If `seq_len` is 0.
    pub fn new(seq_len: usize, eos_id: u32, pad_id: u32) -> Self {
        assert!(seq_len > 0, "Packer: seq_len must be at least 1");
        Packer {
            seq_len,
            eos_id,
            pad_id,
            buf: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Append a document's tokens followed by EOS.
    pub fn push_document(&mut self, tokens: &[u32]) {
        self.push_tokens(tokens);
        self.end_document();
    }

    /// Append a part of a document's tokens (a long document comes in parts, draining
    /// [`pop`](Self::pop) after each); [`end_document`](Self::end_document) after the last.
    pub fn push_tokens(&mut self, tokens: &[u32]) {
        self.buf.extend(tokens.iter().copied());
    }

    /// End the document whose tokens were pushed: append EOS.
    pub fn end_document(&mut self) {
        self.buf.push_back(self.eos_id);
    }

    /// Tokens waiting to be packed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next full sequence, if `seq_len` tokens are waiting.
    pub fn pop(&mut self) -> Option<PackedSequence> {
        if self.buf.len() < self.seq_len {
            return None;
        }
        let input_ids: Vec<u32> = self.buf.drain(..self.seq_len).collect();
        Some(self.emit(input_ids, self.seq_len))
    }

    /// The last sequence: the remaining tokens padded with `pad_id` (loss mask `false` on the
    /// padding), or `None` if no token is left. If full sequences are still waiting, returns
    /// the next of them, as [`pop`](Self::pop) does.
    pub fn finish(&mut self) -> Option<PackedSequence> {
        if let Some(seq) = self.pop() {
            return Some(seq);
        }
        if self.buf.is_empty() {
            return None;
        }
        let real = self.buf.len();
        let mut input_ids: Vec<u32> = self.buf.drain(..).collect();
        input_ids.resize(self.seq_len, self.pad_id);
        Some(self.emit(input_ids, real))
    }

    fn emit(&mut self, input_ids: Vec<u32>, real: usize) -> PackedSequence {
        let mut loss_mask = vec![true; real];
        loss_mask.resize(self.seq_len, false);
        let seq = PackedSequence {
            seq_id: self.next_id,
            input_ids,
            loss_mask,
        };
        self.next_id += 1;
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const EOS: u32 = 9999;
    const PAD: u32 = 8888;

    fn pack_all(packer: &mut Packer, docs: &[Vec<u32>]) -> Vec<PackedSequence> {
        let mut out = Vec::new();
        for d in docs {
            packer.push_document(d);
            while let Some(s) = packer.pop() {
                out.push(s);
            }
        }
        out.extend(packer.finish());
        out
    }

    /// Checks every packing invariant for one list of documents.
    fn check_packing(seq_len: usize, docs: &[Vec<u32>]) {
        let mut packer = Packer::new(seq_len, EOS, PAD);
        let seqs = pack_all(&mut packer, docs);

        // The expected stream: every document followed by EOS.
        let expected: Vec<u32> = docs
            .iter()
            .flat_map(|d| d.iter().copied().chain([EOS]))
            .collect();
        let total = expected.len();
        assert_eq!(seqs.len(), total.div_ceil(seq_len), "number of sequences");

        let mut got = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(s.seq_id, i as u64, "seq_ids are consecutive from 0");
            assert_eq!(s.input_ids.len(), seq_len, "sequence {i} length");
            assert_eq!(s.loss_mask.len(), seq_len, "mask {i} length");
            let real = s.loss_mask.iter().filter(|&&m| m).count();
            // The mask is a run of `true` followed by a run of `false`.
            assert!(s.loss_mask[..real].iter().all(|&m| m));
            assert!(s.input_ids[real..].iter().all(|&t| t == PAD));
            if i + 1 < seqs.len() {
                assert_eq!(real, seq_len, "only the last sequence has padding");
            } else {
                assert_eq!(real, total - seq_len * (seqs.len() - 1));
            }
            got.extend_from_slice(&s.input_ids[..real]);
        }
        assert_eq!(got.len(), total, "total tokens preserved");
        assert_eq!(got, expected, "tokens in order, EOS after every document");
        assert_eq!(packer.finish(), None);
        assert_eq!(packer.pending(), 0);
    }

    #[test]
    fn packer_preserves_tokens_in_exact_length_sequences_with_eos_after_each_document() {
        // 3 + 1 + 5 + 1 + 0 + 1 = 11 tokens -> 3 sequences of 4, last has 3 real + 1 pad.
        let docs = vec![vec![1, 2, 3], vec![4, 5, 6, 7, 8], vec![]];
        let mut packer = Packer::new(4, EOS, PAD);
        let seqs = pack_all(&mut packer, &docs);
        assert_eq!(seqs.len(), 3);
        assert_eq!(seqs[0].input_ids, vec![1, 2, 3, EOS]);
        assert_eq!(seqs[1].input_ids, vec![4, 5, 6, 7]);
        assert_eq!(seqs[2].input_ids, vec![8, EOS, EOS, PAD]);
        assert_eq!(seqs[2].loss_mask, vec![true, true, true, false]);
        assert_eq!(
            seqs.iter().map(|s| s.seq_id).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        check_packing(4, &docs);
    }

    #[test]
    fn packer_exact_fit_has_no_padded_sequence() {
        let mut packer = Packer::new(4, EOS, PAD);
        packer.push_document(&[1, 2, 3]);
        let s = packer.pop().unwrap();
        assert_eq!(s.input_ids, vec![1, 2, 3, EOS]);
        assert_eq!(s.loss_mask, vec![true; 4]);
        assert_eq!(packer.pop(), None);
        assert_eq!(packer.finish(), None);
    }

    #[test]
    fn packer_document_longer_than_seq_len_spans_sequences() {
        let doc: Vec<u32> = (0..10).collect();
        let mut packer = Packer::new(3, EOS, PAD);
        packer.push_document(&doc);
        let mut seqs = Vec::new();
        while let Some(s) = packer.pop() {
            seqs.push(s);
        }
        // 11 tokens -> 3 full sequences, then 2 real + 1 pad.
        assert_eq!(seqs.len(), 3);
        let last = packer.finish().unwrap();
        assert_eq!(last.seq_id, 3);
        assert_eq!(last.input_ids, vec![9, EOS, PAD]);
        assert_eq!(last.loss_mask, vec![true, true, false]);
    }

    #[test]
    fn packer_finish_drains_full_sequences_before_the_padded_one() {
        let mut packer = Packer::new(2, EOS, PAD);
        packer.push_document(&[1, 2, 3, 4]); // 5 tokens
        let a = packer.finish().unwrap();
        let b = packer.finish().unwrap();
        let c = packer.finish().unwrap();
        assert_eq!(
            (a.input_ids, b.input_ids, c.input_ids.clone()),
            (vec![1, 2], vec![3, 4], vec![EOS, PAD])
        );
        assert_eq!(c.seq_id, 2);
        assert_eq!(packer.finish(), None);
    }

    #[test]
    fn packer_invariants_hold_for_random_document_lengths() {
        let mut rng = StdRng::seed_from_u64(0x7a1d);
        for _ in 0..300 {
            let seq_len = rng.random_range(1..=64usize);
            let n_docs = rng.random_range(0..=20usize);
            let docs: Vec<Vec<u32>> = (0..n_docs)
                .map(|_| {
                    let len = rng.random_range(0..=3 * seq_len);
                    (0..len).map(|_| rng.random_range(0..5000u32)).collect()
                })
                .collect();
            check_packing(seq_len, &docs);
        }
    }
}
