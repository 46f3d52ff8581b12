//! The demo corpus: English-like documents from a seeded stochastic grammar, so the demo needs
//! no download.
//!
//! Words are drawn with Zipf-shaped frequencies within their category (a few words are common,
//! most are rare, as in real text), and every document has a topic that makes some nouns,
//! verbs and adjectives much likelier, so that predicting the next word rewards both syntax
//! (which category comes next) and context (which topic the document is about). A teacher can
//! learn a good deal of that; a much smaller student less.
//!
//! ```text
//! S   → NP VP "."            NP → Det Adj{0..2} Noun PP? | Name
//! VP  → Verb NP Adv? | Verb Adv | Verb NP PP         PP → Prep NP   (depth ≤ 2)
//! ```

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NOUNS: &[&str] = &[
    "river",
    "city",
    "teacher",
    "student",
    "garden",
    "machine",
    "market",
    "forest",
    "window",
    "letter",
    "engine",
    "village",
    "harbor",
    "mountain",
    "library",
    "kitchen",
    "signal",
    "station",
    "bridge",
    "island",
    "farmer",
    "doctor",
    "painter",
    "sailor",
    "soldier",
    "child",
    "king",
    "queen",
    "merchant",
    "writer",
    "storm",
    "winter",
    "summer",
    "morning",
    "evening",
    "season",
    "story",
    "song",
    "picture",
    "question",
    "answer",
    "reason",
    "number",
    "pattern",
    "system",
    "language",
    "model",
    "network",
    "record",
    "measure",
    "stone",
    "tree",
    "flower",
    "bird",
    "horse",
    "wolf",
    "fish",
    "cloud",
    "road",
    "wall",
    "door",
    "table",
    "chair",
    "lamp",
    "book",
    "paper",
    "clock",
    "coin",
    "ship",
    "train",
    "field",
    "valley",
    "desert",
    "ocean",
    "shore",
    "hill",
    "lake",
    "cave",
    "tower",
    "castle",
    "council",
    "court",
    "army",
    "crowd",
    "family",
    "friend",
    "neighbor",
    "stranger",
    "leader",
    "worker",
    "engineer",
    "scientist",
    "pilot",
    "baker",
    "hunter",
    "singer",
    "dancer",
    "judge",
    "priest",
    "poet",
];

const VERBS: &[&str] = &[
    "sees",
    "finds",
    "builds",
    "follows",
    "carries",
    "watches",
    "remembers",
    "opens",
    "crosses",
    "reaches",
    "paints",
    "writes",
    "reads",
    "sells",
    "buys",
    "keeps",
    "leaves",
    "meets",
    "helps",
    "calls",
    "measures",
    "records",
    "studies",
    "teaches",
    "learns",
    "guards",
    "repairs",
    "moves",
    "covers",
    "holds",
    "breaks",
    "joins",
    "names",
    "counts",
    "draws",
    "hears",
    "answers",
    "visits",
    "trusts",
    "changes",
];

const ADJECTIVES: &[&str] = &[
    "old", "new", "small", "large", "quiet", "bright", "dark", "cold", "warm", "green", "red",
    "blue", "tall", "short", "quick", "slow", "strange", "famous", "hidden", "distant", "early",
    "late", "broken", "golden", "silver", "wooden", "empty", "busy", "gentle", "proud", "careful",
    "simple", "heavy", "narrow", "wide", "ancient", "modern", "lonely", "happy", "tired",
];

const ADVERBS: &[&str] = &[
    "slowly",
    "quickly",
    "again",
    "today",
    "quietly",
    "often",
    "carefully",
    "never",
    "always",
    "together",
    "alone",
    "gladly",
    "twice",
    "soon",
    "there",
];

const DETERMINERS: &[&str] = &[
    "the", "a", "every", "this", "that", "one", "some", "their", "our", "no",
];

const PREPOSITIONS: &[&str] = &[
    "near", "under", "behind", "with", "from", "across", "beyond", "inside", "above", "along",
];

const NAMES: &[&str] = &[
    "Anna", "Boris", "Chen", "Dara", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonas", "Kaia",
    "Lev",
];

/// Topics per corpus; each favours its own slice of the nouns, verbs and adjectives.
const TOPICS: usize = 8;

/// Sample from `words` with Zipf(1.1) frequencies, the first words commonest.
struct Zipf<'a> {
    words: &'a [&'a str],
    dist: WeightedIndex<f64>,
}

impl<'a> Zipf<'a> {
    fn new(words: &'a [&'a str], order: &[usize]) -> Self {
        // `order[r]` is the word of rank r.
        let mut weights = vec![0.0; words.len()];
        for (rank, &w) in order.iter().enumerate() {
            weights[w] = 1.0 / ((rank + 1) as f64).powf(1.1);
        }
        Self {
            words,
            dist: WeightedIndex::new(weights).expect("non-empty, positive weights"),
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> &'a str {
        self.words[self.dist.sample(rng)]
    }
}

/// One topic's samplers: a rotation of the global frequency ranks.
struct Topic<'a> {
    nouns: Zipf<'a>,
    verbs: Zipf<'a>,
    adjectives: Zipf<'a>,
}

fn rotated(n: usize, topic: usize) -> Vec<usize> {
    let shift = topic * n / TOPICS;
    (0..n).map(|r| (r + shift) % n).collect()
}

/// The grammar with its fixed word frequencies.
pub struct Grammar<'a> {
    topics: Vec<Topic<'a>>,
    adverbs: Zipf<'a>,
    determiners: Zipf<'a>,
    prepositions: Zipf<'a>,
    names: Zipf<'a>,
}

impl Default for Grammar<'static> {
    fn default() -> Self {
        let identity = |n: usize| (0..n).collect::<Vec<_>>();
        Self {
            topics: (0..TOPICS)
                .map(|t| Topic {
                    nouns: Zipf::new(NOUNS, &rotated(NOUNS.len(), t)),
                    verbs: Zipf::new(VERBS, &rotated(VERBS.len(), t)),
                    adjectives: Zipf::new(ADJECTIVES, &rotated(ADJECTIVES.len(), t)),
                })
                .collect(),
            adverbs: Zipf::new(ADVERBS, &identity(ADVERBS.len())),
            determiners: Zipf::new(DETERMINERS, &identity(DETERMINERS.len())),
            prepositions: Zipf::new(PREPOSITIONS, &identity(PREPOSITIONS.len())),
            names: Zipf::new(NAMES, &identity(NAMES.len())),
        }
    }
}

impl Grammar<'_> {
    /// `n` documents, deterministic in `seed`.
    pub fn documents(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| self.document(&mut rng)).collect()
    }

    fn document(&self, rng: &mut impl Rng) -> String {
        let topic = &self.topics[rng.random_range(0..self.topics.len())];
        let sentences = rng.random_range(3..=12);
        let mut doc = String::new();
        for i in 0..sentences {
            if i > 0 {
                doc.push(' ');
            }
            let mut words = Vec::new();
            self.noun_phrase(topic, rng, 0, &mut words);
            self.verb_phrase(topic, rng, &mut words);
            let mut s = words.join(" ");
            if let Some(first) = s.get(..1) {
                s = first.to_uppercase() + &s[1..];
            }
            doc.push_str(&s);
            doc.push('.');
        }
        doc
    }

    fn noun_phrase<'w>(
        &'w self,
        topic: &'w Topic,
        rng: &mut impl Rng,
        depth: usize,
        out: &mut Vec<&'w str>,
    ) {
        if rng.random_bool(0.12) {
            out.push(self.names.sample(rng));
            return;
        }
        out.push(self.determiners.sample(rng));
        for _ in 0..[0, 0, 1, 1, 2][rng.random_range(0..5)] {
            out.push(topic.adjectives.sample(rng));
        }
        out.push(topic.nouns.sample(rng));
        if depth < 2 && rng.random_bool(0.25) {
            self.prepositional_phrase(topic, rng, depth + 1, out);
        }
    }

    fn prepositional_phrase<'w>(
        &'w self,
        topic: &'w Topic,
        rng: &mut impl Rng,
        depth: usize,
        out: &mut Vec<&'w str>,
    ) {
        out.push(self.prepositions.sample(rng));
        self.noun_phrase(topic, rng, depth, out);
    }

    fn verb_phrase<'w>(&'w self, topic: &'w Topic, rng: &mut impl Rng, out: &mut Vec<&'w str>) {
        out.push(topic.verbs.sample(rng));
        match rng.random_range(0..10) {
            0..=5 => {
                self.noun_phrase(topic, rng, 0, out);
                if rng.random_bool(0.3) {
                    out.push(self.adverbs.sample(rng));
                }
            }
            6 | 7 => out.push(self.adverbs.sample(rng)),
            _ => {
                self.noun_phrase(topic, rng, 1, out);
                self.prepositional_phrase(topic, rng, 1, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_seeded_and_word_frequencies_are_zipf_shaped() {
        let g = Grammar::default();
        let a = g.documents(400, 1);
        assert_eq!(a, g.documents(400, 1), "same seed, same corpus");
        assert_ne!(a, g.documents(400, 2));
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for d in &a {
            for w in d
                .split(|c: char| !c.is_alphabetic())
                .filter(|w| !w.is_empty())
            {
                *counts.entry(w.to_lowercase()).or_default() += 1;
            }
        }
        let mut freq: Vec<usize> = counts.values().copied().collect();
        freq.sort_unstable_by(|a, b| b.cmp(a));
        // Zipf: the 10th commonest word is several times rarer than the commonest, the 100th
        // rarer still, and most of the vocabulary is used.
        assert!(counts.len() > 200, "{} distinct words", counts.len());
        assert!(freq[0] as f64 / freq[9] as f64 > 2.0, "{:?}", &freq[..10]);
        assert!(
            freq[9] as f64 / freq[99] as f64 > 2.0,
            "{} vs {}",
            freq[9],
            freq[99]
        );
        assert!(a
            .iter()
            .all(|d| d.ends_with('.') && d.chars().next().is_some_and(char::is_uppercase)));
    }
}
