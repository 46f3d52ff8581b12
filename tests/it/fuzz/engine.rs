//! The fuzzing loop: a regression corpus replayed first, then seeded random mutations of valid
//! inputs until a time budget runs out. A panic is the failure (an `Err` is a correct answer to
//! bad input); each failing input is saved so that it can join the corpus.
//!
//! Stable Rust only (no libFuzzer): a target is a function of a directory of files, an input is
//! the set of files written there, and a mutator turns a valid input into a broken one.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The input of one execution: file name (relative, may hold `/`) → contents.
pub type Files = BTreeMap<String, Vec<u8>>;

pub type FuzzRng = ChaCha8Rng;

/// Seconds of random fuzzing per target (`TAIDCACHE_FUZZ_SECONDS`, default 20; 0 replays the
/// corpus only).
pub fn budget() -> Duration {
    let secs = std::env::var("TAIDCACHE_FUZZ_SECONDS")
        .ok()
        .map(|s| {
            s.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or_else(|| {
                    panic!("TAIDCACHE_FUZZ_SECONDS={s:?} is not a number of seconds")
                })
        })
        .unwrap_or(20.0);
    Duration::from_secs_f64(secs)
}

/// The run's seed: `TAIDCACHE_FUZZ_SEED` (a number, or `random` for one from the clock), else
/// 0, so that `make test` (CI) runs the same inputs on every run and never fails by chance;
/// `make fuzz` explores with `random`. The seed is printed, so a failure can be rerun.
pub fn seed() -> u64 {
    match std::env::var("TAIDCACHE_FUZZ_SEED").as_deref() {
        Ok("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("TAIDCACHE_FUZZ_SEED={s:?} is not a u64 or `random`")),
        Err(_) => 0,
    }
}

/// The regression corpus of `target`: `tests/fuzz-corpus/<target>/<case>/` (a directory per
/// case, its files the input), sorted by name.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

/// Every file under `dir`, by path relative to it.
pub fn read_files(dir: &Path) -> Files {
    fn walk(root: &Path, dir: &Path, out: &mut Files) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = Files::new();
    walk(dir, dir, &mut out);
    out
}

/// Write `files` under `dir` (created).
pub fn write_files(dir: &Path, files: &Files) {
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
}

/// The cases of a target's regression corpus: (case name, files).
pub fn corpus_cases(target: &str) -> Vec<(String, Files)> {
    let dir = corpus_dir(target);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let files = read_files(&dir.join(&n));
            (n, files)
        })
        .collect()
}

/// What one target did.
pub struct Outcome {
    pub corpus: usize,
    pub random: u64,
    /// (which input, panic message) per panic.
    pub panics: Vec<(String, String)>,
}

/// One fuzz target.
pub struct Target<'a> {
    pub name: &'a str,
    /// Files in every execution's directory besides the input (e.g. the shards a mutated
    /// manifest refers to); the input's files replace them.
    pub base: Files,
    /// The regression corpus, replayed first.
    pub corpus: Vec<(String, Files)>,
    /// A random input from the iteration's generator.
    pub generate: &'a dyn Fn(&mut FuzzRng) -> Files,
    /// The code under test, run on a directory holding base + input; returns normally on `Ok` and
    /// `Err` alike.
    pub exec: &'a dyn Fn(&Path),
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Replay the corpus, then fuzz for `budget`; print the counts and return them. Each failing
/// input is saved under `$CARGO_TARGET_TMPDIR/fuzz-failures/<target>/<input>/`.
pub fn run(t: &Target, budget: Duration, seed: u64) -> Outcome {
    let scratch = tempfile::tempdir().unwrap();
    let failures = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(t.name);
    let mut out = Outcome {
        corpus: 0,
        random: 0,
        panics: Vec::new(),
    };
    let mut exec_one = |label: String, input: &Files, n: u64| {
        let dir = scratch.path().join(format!("x{n}"));
        write_files(&dir, &t.base);
        write_files(&dir, input);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| (t.exec)(&dir))) {
            let saved = failures.join(label.replace('/', "_"));
            let _ = std::fs::remove_dir_all(&saved);
            write_files(&saved, input);
            out.panics.push((
                format!("{label} (saved in {})", saved.display()),
                panic_message(p.as_ref()),
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    };
    let mut n = 0u64;
    for (name, files) in &t.corpus {
        exec_one(format!("corpus {name}"), files, n);
        n += 1;
    }
    let corpus = t.corpus.len();
    let start = Instant::now();
    let mut random = 0u64;
    while start.elapsed() < budget {
        // One generator per iteration: `seed` and the iteration number reproduce the input.
        let mut rng = FuzzRng::seed_from_u64(seed ^ random.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let input = match catch_unwind(AssertUnwindSafe(|| (t.generate)(&mut rng))) {
            Ok(input) => input,
            Err(p) => panic!(
                "fuzz {}: the generator itself panicked at seed {seed} iteration {random}: {}",
                t.name,
                panic_message(p.as_ref())
            ),
        };
        exec_one(format!("seed-{seed}-iteration-{random}"), &input, n);
        n += 1;
        random += 1;
    }
    out.random = random;
    let wall = start.elapsed().as_secs_f64();
    println!(
        "fuzz {}: {} corpus cases + {random} random executions in {wall:.1} s (seed {seed}), {} panics",
        t.name,
        corpus,
        out.panics.len()
    );
    out.corpus = corpus;
    out
}

/// Fail the test with every panic of `o`.
pub fn assert_no_panics(target: &str, o: &Outcome) {
    if !o.panics.is_empty() {
        let list: Vec<String> = o
            .panics
            .iter()
            .map(|(input, msg)| format!("  {input}: {msg}"))
            .collect();
        panic!(
            "fuzz {target}: {} inputs panicked (copy a saved input into tests/fuzz-corpus/{target}/ \
             and fix the reader):\n{}",
            o.panics.len(),
            list.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Numbers that break parsers and arithmetic, as JSON/text tokens.
pub const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "255",
    "256",
    "65535",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "1099511627776",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "0.5",
    "-0",
    "1e308",
    "-1e308",
    "1e999",
    "NaN",
    "inf",
    "-inf",
    "1e-400",
];

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'-', b'"', b'{', b'}', b'[', b']', b',', b':', b'\n',
    b'\r', b'\\', b' ',
];

/// One random byte-level mutation of `data` (bit flip, interesting byte, delete, duplicate,
/// insert, truncate, number token swap).
pub fn mutate_bytes(rng: &mut FuzzRng, data: &mut Vec<u8>) {
    let len = data.len();
    let pos = |rng: &mut FuzzRng| {
        if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..8) {
        0 if len > 0 => {
            let p = pos(rng);
            data[p] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let p = pos(rng);
            data[p] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
        }
        2 if len > 0 => {
            let p = pos(rng);
            let n = rng.random_range(1..=(len - p).min(64));
            data.drain(p..p + n);
        }
        3 if len > 0 => {
            let p = pos(rng);
            let n = rng.random_range(1..=(len - p).min(256));
            let copy = data[p..p + n].to_vec();
            let at = rng.random_range(0..=len);
            data.splice(at..at, copy);
        }
        4 => {
            let at = rng.random_range(0..=len);
            let n = rng.random_range(1..16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            data.splice(at..at, bytes);
        }
        5 => data.truncate(rng.random_range(0..=len)),
        6 if len > 0 => {
            // Replace a run of digits (or insert) with an interesting number.
            let p = pos(rng);
            let mut end = p;
            while end < len && (data[end].is_ascii_digit() || data[end] == b'.') {
                end += 1;
            }
            let token = INTERESTING_NUMBERS[rng.random_range(0..INTERESTING_NUMBERS.len())];
            data.splice(p..end, token.bytes());
        }
        _ if len > 0 => {
            // Overwrite 1–8 bytes with random ones.
            let p = pos(rng);
            for b in data.iter_mut().skip(p).take(rng.random_range(1..=8)) {
                *b = rng.random();
            }
        }
        _ => data.push(rng.random()),
    }
}

/// 1 to `max` byte-level mutations.
pub fn mutate_bytes_n(rng: &mut FuzzRng, data: &mut Vec<u8>, max: usize) {
    for _ in 0..rng.random_range(1..=max) {
        mutate_bytes(rng, data);
    }
}

/// A random element of `items`.
pub fn pick<'a, T>(rng: &mut FuzzRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}
