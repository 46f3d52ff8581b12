//! Two memory measurements (`harness = false`; `cargo bench --bench memory [-- loss|rss]`, both
//! by default). MB here are 10^6 bytes.
//!
//! **loss** → `target/bench-results/memory_loss.json`: peak bytes allocated (a counting global
//! allocator) on top of what already exists, vocab 151,936, k = 50, TAID with the student tail:
//! - `memory.loss_peak_alloc_mb_{small,large}`: one `objectives::loss_and_grad` call over 256 and
//!   4096 positions, after the `[positions, vocab]` logits and gradient buffer are allocated (they
//!   are its input and output), on a one-thread rayon pool (per-thread scratch would otherwise
//!   vary with scheduling); `_threads` the same on all cores.
//! - `memory.micro_batch_peak_alloc_mb_{small,large}`: one `trainer::micro_batch` (what distill
//!   runs per micro-batch: lm_head chunk by chunk of `LOSS_CHUNK_BYTES` of logits, loss,
//!   gradients, the student's backward) on 256 and 4096 positions of a tiny student (hidden 8),
//!   with `memory.micro_batch_model_peak_alloc_mb_*` the student's forward/backward alone.
//! - `memory.loss_dense_logits_mb_{small,large}`: one `[positions, vocab]` f32 buffer, for scale.
//!
//! **rss** → `target/bench-results/memory_rss.json`: peak RSS (`wait4` ru_maxrss, measured from
//! a freshly started launcher process, see [`child::run`]) of the release `taidcache distill`
//! with identical flags (64 steps, batch 4, seed 0) on a ~1 GB and a ~4 GB cache:
//! `memory.distill_peak_rss_{1,4}gb_mb`. Sampled every 10 ms from `/proc/PID/status` (and every
//! 200 ms from `/proc/PID/smaps`): the peaks of its anonymous and file-backed parts and of the
//! shards' memory maps alone. Also: the shards the run's batches came from, the allocations of
//! `Cache::units` and of one open `ShardReader` per shard (22 KB each), and the shard maps
//! resident in this process during one whole shuffled loader epoch over the 1 GB cache
//! (`memory.loader_epoch_shard_rss_1gb_mb`: this is what grows with the cache when shards stay
//! mapped for the run).
//!
//! The caches are built once under `target/bench-data/rss/` (about 2-4 minutes; reused while
//! `build.txt` matches): LLM-like top-k records (`testing::llm_like_batch`: seq 1024, k 50,
//! default row groups of 26 rows), 128 rows (18.5 MB) per shard, every shard written with its
//! own seq ids; the 1 GB cache is the first quarter of the 4 GB one's shards, hard-linked, with
//! its own manifest (both pass `taidcache verify`). The vocabulary is 2048: it only sets the
//! student's output layer, i.e. the cost of a step, and a shard's bytes are the same as at
//! 32,000 (the ids are u32 either way). The student is a one-layer Llama of hidden 16 written
//! with `testing::write_tiny_model`. The loader is shuffled, so the run's row groups come from
//! shards all over the cache.

#[path = "../tests/memory_support/mod.rs"]
mod memory_support;
#[path = "common/results.rs"]
mod results;

use std::path::{Path, PathBuf};
use std::time::Instant;

use memory_support::*;
use taidcache::cache::manifest::Manifest;
use taidcache::cache::reader::ShardReader;
use taidcache::cache::writer::{write_shard_atomic, WriteOptions};
use taidcache::cache::ShardBatch;
use taidcache::cache::{schema, shard_rel_path, MANIFEST_FILE};
use taidcache::distill::loader::{Cursor, Loader, LoaderOptions};
use taidcache::distill::objectives::Objective;
use taidcache::distill::targets::TailMode;
use taidcache::model::Architecture;
use taidcache::testing::{llm_like_batch, write_tiny_model, TinySpec};

const MB: f64 = 1e6;

fn write_results(file: &str, rows: &[(String, f64, &str)]) {
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|(name, value, unit)| serde_json::json!({"name": name, "value": value, "unit": unit}))
        .collect();
    let path = results::write(file, &serde_json::Value::Array(json));
    for (name, value, unit) in rows {
        println!("{name:52} {value:>12.4} {unit}");
    }
    println!("wrote {}", path.display());
}

// ---------------------------------------------------------------------------------------------
// loss

fn loss() {
    const VOCAB: usize = 151_936;
    const K: usize = 50;
    const SEQ: usize = 64;
    let cfg = loss_config(Objective::Taid, TailMode::Student).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let student = tiny_student(dir.path(), VOCAB, SEQ);
    micro_batch_peak(&student, &shard_batch(1, SEQ, K, VOCAB), &cfg);
    for (size, n) in [("small", 256usize), ("large", 4096)] {
        let t0 = Instant::now();
        let inputs = LossInputs::new(n, VOCAB, K, n as u64);
        let t1 = Instant::now();
        let one = loss_and_grad_peak(&cfg, &inputs, 1);
        let t2 = Instant::now();
        let all = loss_and_grad_peak(&cfg, &inputs, threads);
        let t3 = Instant::now();
        drop(inputs);
        let batch = shard_batch(n / SEQ, SEQ, K, VOCAB);
        let model = model_peak(&student, &batch);
        let micro = micro_batch_peak(&student, &batch, &cfg);
        eprintln!(
            "timing: inputs {:.1} s, 1 thread {:.1} s, {threads} threads {:.1} s, micro_batch {:.1} s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            t3.elapsed().as_secs_f64()
        );
        eprintln!(
            "loss {size}: {n} positions × vocab {VOCAB}: loss_and_grad {one} B (1 thread), {all} B \
             ({threads} threads); micro_batch {:.1} MB (student alone {:.1} MB), chunks of {} positions; {:.1} s",
            micro as f64 / MB,
            model as f64 / MB,
            chunk_positions(VOCAB),
            t0.elapsed().as_secs_f64()
        );
        rows.push((
            format!("memory.loss_peak_alloc_mb_{size}"),
            one as f64 / MB,
            "MB",
        ));
        rows.push((
            format!("memory.loss_peak_alloc_mb_{size}_threads"),
            all as f64 / MB,
            "MB",
        ));
        rows.push((
            format!("memory.micro_batch_peak_alloc_mb_{size}"),
            micro as f64 / MB,
            "MB",
        ));
        rows.push((
            format!("memory.micro_batch_model_peak_alloc_mb_{size}"),
            model as f64 / MB,
            "MB",
        ));
        rows.push((
            format!("memory.loss_dense_logits_mb_{size}"),
            (n * VOCAB * 4) as f64 / MB,
            "MB",
        ));
        rows.push((
            format!("memory.loss_positions_{size}"),
            n as f64,
            "positions",
        ));
    }
    rows.push(("memory.loss_vocab".into(), VOCAB as f64, "ids"));
    write_results("memory_loss.json", &rows);
}

// ---------------------------------------------------------------------------------------------
// rss

const SEQ_LEN: usize = 1024;
const K: usize = 50;
const VOCAB: usize = 2048;
const SHARD_ROWS: usize = 128;
/// Distinct LLM-like rows generated once; shards are rotations of them (with their own seq ids).
const BASE_ROWS: usize = 32;
const BIG_BYTES: u64 = 4_000_000_000;

/// distill's flags, the same for both caches.
const STEPS: u64 = 64;
const BATCH: usize = 4;

fn manifest_for(shards: Vec<taidcache::cache::manifest::ShardEntry>) -> Manifest {
    let mut m = taidcache::testing::sample_manifest(0, 0);
    m.top_k = K;
    m.vocab_size = VOCAB;
    m.teacher.vocab_size = VOCAB;
    m.packing.seq_len = SEQ_LEN;
    m.packing.shard_rows = SHARD_ROWS;
    m.total_sequences = Some(shards.iter().map(|s| s.rows).sum());
    m.shards = shards;
    m
}

fn shard_batch_from(base: &ShardBatch, index: usize) -> ShardBatch {
    let (s, k) = (SEQ_LEN, K);
    let mut b = ShardBatch::with_capacity(s, k, SHARD_ROWS);
    for r in 0..SHARD_ROWS {
        let src = (r * 5 + index * 3) % base.rows();
        b.seq_ids.push((index * SHARD_ROWS + r) as u64);
        b.input_ids
            .extend_from_slice(&base.input_ids[src * s..(src + 1) * s]);
        b.loss_mask
            .extend_from_slice(&base.loss_mask[src * s..(src + 1) * s]);
        b.topk_ids
            .extend_from_slice(&base.topk_ids[src * s * k..(src + 1) * s * k]);
        b.topk_logprobs
            .extend_from_slice(&base.topk_logprobs[src * s * k..(src + 1) * s * k]);
        b.tail_logmass
            .extend_from_slice(&base.tail_logmass[src * s..(src + 1) * s]);
    }
    b
}

/// The two caches (built once, reused while their manifests load) and their sizes in bytes.
fn caches(root: &Path) -> [(PathBuf, u64); 2] {
    let big = root.join("cache-4gb");
    let small = root.join("cache-1gb");
    let stamp = format!("seq {SEQ_LEN} k {K} vocab {VOCAB} rows {SHARD_ROWS} bytes {BIG_BYTES}");
    let stamp_file = root.join("build.txt");
    let ready = std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
        && Manifest::load(&big.join(MANIFEST_FILE)).is_ok()
        && Manifest::load(&small.join(MANIFEST_FILE)).is_ok();
    if !ready {
        build_caches(root, &big, &small);
        std::fs::write(&stamp_file, stamp).unwrap();
    }
    [small, big].map(|c| {
        let m = Manifest::load(&c.join(MANIFEST_FILE)).unwrap();
        (c, m.total_bytes())
    })
}

fn build_caches(root: &Path, big: &Path, small: &Path) {
    let t0 = Instant::now();
    for c in [big, small] {
        if c.exists() {
            std::fs::remove_dir_all(c).unwrap();
        }
        std::fs::create_dir_all(c.join("shards")).unwrap();
    }
    std::fs::create_dir_all(root).unwrap();
    // LLM-like records: real top-k and tail mass of Zipf-shaped noisy logits, on two threads.
    let halves: Vec<ShardBatch> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2u64)
            .map(|h| s.spawn(move || llm_like_batch(BASE_ROWS / 2, SEQ_LEN, K, VOCAB, 1000 + h)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut base = halves[0].clone();
    base.extend_from(&halves[1]);
    eprintln!(
        "rss: {BASE_ROWS} base rows generated in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let template = manifest_for(Vec::new());
    let opts = WriteOptions {
        metadata: schema::footer_metadata(&template),
        ..Default::default()
    };
    let write = |i: usize| {
        let rel = shard_rel_path(i as u64);
        let mut e =
            write_shard_atomic(&big.join(&rel), &shard_batch_from(&base, i), &opts).unwrap();
        e.index = i as u64;
        e.path = rel;
        e
    };
    let first = write(0);
    let shard_bytes = first.bytes;
    let n = BIG_BYTES.div_ceil(shard_bytes) as usize;
    let mut entries: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2usize)
            .map(|t| {
                let write = &write;
                s.spawn(move || (1..n).filter(|i| i % 2 == t).map(write).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    entries.push(first);
    entries.sort_by_key(|e| e.index);
    let quarter = n / 4;
    for e in &entries[..quarter] {
        std::fs::hard_link(big.join(&e.path), small.join(&e.path)).unwrap();
    }
    manifest_for(entries[..quarter].to_vec())
        .save_atomic(&small.join(MANIFEST_FILE))
        .unwrap();
    manifest_for(entries)
        .save_atomic(&big.join(MANIFEST_FILE))
        .unwrap();
    eprintln!(
        "rss: {n} shards of ~{shard_bytes} bytes written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The shards whose rows the first `STEPS` training batches hold (the loader distill builds,
/// same seed and batch size, without the hash check).
fn shards_touched(cache: &Path) -> Vec<u64> {
    let m = Manifest::load(&cache.join(MANIFEST_FILE)).unwrap();
    let cache_handle = taidcache::cache::Cache::new(cache, m.clone()).unwrap();
    let (units, _) = cache_handle.units(0.0).unwrap();
    let mut opts = LoaderOptions::train(BATCH, 0);
    opts.verify = false;
    let mut l = Loader::new(&cache_handle, &units, opts, Cursor::default()).unwrap();
    let mut shards = std::collections::BTreeSet::new();
    for _ in 0..STEPS {
        let b = l.next_batch().unwrap().unwrap();
        shards.extend(b.data.seq_ids.iter().map(|id| id / SHARD_ROWS as u64));
        l.recycle(b.data);
    }
    shards.into_iter().collect()
}

/// Per-cache allocations: the units of `Cache::units` (kept by the loader for the run), and one
/// open `ShardReader` (memory map + parsed footer) per shard, which is what a loader that keeps
/// every shard open would hold (the distill loader opens a shard per unit it decodes).
/// Returns (units bytes, readers bytes).
fn loader_metadata_bytes(cache: &Path) -> (usize, usize) {
    let m = Manifest::load(&cache.join(MANIFEST_FILE)).unwrap();
    let cache_handle = taidcache::cache::Cache::new(cache, m.clone()).unwrap();
    let before = allocated();
    let (units, _) = cache_handle.units(0.0).unwrap();
    let units_bytes = allocated() - before;
    let before = allocated();
    let readers: Vec<ShardReader> = m
        .shards
        .iter()
        .map(|e| ShardReader::open(&cache.join(&e.path)).unwrap())
        .collect();
    let readers_bytes = allocated() - before;
    drop((units, readers));
    (units_bytes, readers_bytes)
}

/// Set in the environment of this binary re-run as the launcher of one measured command.
const LAUNCHER_ENV: &str = "TAIDCACHE_MEMORY_LAUNCHER";

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod child {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// `struct rusage` of 64-bit Linux: two timevals, then 14 longs starting with ru_maxrss (KiB).
    #[repr(C)]
    struct Rusage {
        utime: [i64; 2],
        stime: [i64; 2],
        maxrss: i64,
        rest: [i64; 13],
    }

    extern "C" {
        fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
    }

    /// Peaks of one process, in KiB: `ru_maxrss`, and the maxima of `/proc/PID/status`'s VmHWM,
    /// VmRSS, RssAnon and RssFile sampled every 10 ms.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct Peaks {
        pub maxrss: u64,
        pub hwm: u64,
        pub rss: u64,
        pub anon: u64,
        pub file: u64,
        /// Resident pages of the shard files' memory maps (`/proc/PID/smaps`, every 200 ms).
        pub shards: u64,
        pub exit_ok: bool,
    }

    impl Peaks {
        pub fn to_line(self) -> String {
            format!(
                "{} {} {} {} {} {} {}",
                self.maxrss,
                self.hwm,
                self.rss,
                self.anon,
                self.file,
                self.shards,
                self.exit_ok as u8
            )
        }

        pub fn from_line(line: &str) -> Option<Self> {
            let v: Vec<u64> = line
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            let [maxrss, hwm, rss, anon, file, shards, ok] = v[..] else {
                return None;
            };
            Some(Self {
                maxrss,
                hwm,
                rss,
                anon,
                file,
                shards,
                exit_ok: ok == 1,
            })
        }
    }

    /// Run `cmd` to completion and measure it. Call this from a process of small RSS: Linux
    /// counts into a child's `ru_maxrss` the high-water mark of the address space it was
    /// spawned from (`exec` takes the maximum with the old mm's), so a parent that once held
    /// gigabytes would show in every child's figure. `benches/memory.rs` re-runs itself as a
    /// fresh launcher for that.
    pub fn run(cmd: &mut std::process::Command) -> Peaks {
        let child = cmd.spawn().expect("spawn the measured command");
        let pid = child.id() as i32;
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut p = Peaks::default();
                let path = format!("/proc/{pid}/status");
                let smaps = format!("/proc/{pid}/smaps");
                let mut tick = 0u64;
                while !done.load(Ordering::Relaxed) {
                    if tick.is_multiple_of(20) {
                        if let Ok(s) = std::fs::read_to_string(&smaps) {
                            p.shards = p.shards.max(shard_rss_kib(&s));
                        }
                    }
                    tick += 1;
                    if let Ok(s) = std::fs::read_to_string(&path) {
                        for line in s.lines() {
                            let mut it = line.split_whitespace();
                            let (Some(key), Some(Ok(kib))) =
                                (it.next(), it.next().map(str::parse::<u64>))
                            else {
                                continue;
                            };
                            let slot = match key {
                                "VmHWM:" => &mut p.hwm,
                                "VmRSS:" => &mut p.rss,
                                "RssAnon:" => &mut p.anon,
                                "RssFile:" => &mut p.file,
                                _ => continue,
                            };
                            *slot = (*slot).max(kib);
                        }
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                p
            })
        };
        let mut status = 0i32;
        let mut usage = Rusage {
            utime: [0; 2],
            stime: [0; 2],
            maxrss: 0,
            rest: [0; 13],
        };
        // SAFETY: `pid` is our own child, not waited for yet; both pointers are valid for writes.
        let r = unsafe { wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(r, pid, "wait4 failed");
        // Reaped: dropping `Child` does not wait.
        drop(child);
        done.store(true, Ordering::Relaxed);
        let mut p = sampler.join().unwrap();
        p.maxrss = usage.maxrss as u64;
        // WIFEXITED(status) && WEXITSTATUS(status) == 0
        p.exit_ok = status & 0x7f == 0 && (status >> 8) & 0xff == 0;
        p
    }

    /// Σ Rss of the mappings of files named `shards/part-*` in an smaps listing, in KiB.
    pub fn shard_rss_kib(smaps: &str) -> u64 {
        let mut in_shard = false;
        let mut total = 0;
        for line in smaps.lines() {
            let mut it = line.split_whitespace();
            let first = it.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                in_shard = line.contains("/shards/part-");
            } else if first == "Rss:" && in_shard {
                total += it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        total
    }

    /// The launcher: run the command of this process's arguments (stdout discarded), print its
    /// peaks as one line.
    pub fn launcher() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut cmd = std::process::Command::new(&args[0]);
        cmd.args(&args[1..])
            .env_remove(super::LAUNCHER_ENV)
            .stdout(std::process::Stdio::null());
        println!("{}", run(&mut cmd).to_line());
    }

    /// Measure `program args` from a fresh launcher (this bench binary re-run).
    pub fn measure(program: &str, args: &[std::ffi::OsString]) -> Peaks {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env(super::LAUNCHER_ENV, "1")
            .arg(program)
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run the launcher");
        let text = String::from_utf8_lossy(&out.stdout);
        Peaks::from_line(text.trim())
            .unwrap_or_else(|| panic!("launcher printed {text:?} ({})", out.status))
    }
}

/// Run a shuffled training loader (distill's options, no hash check) through one epoch of
/// `cache` in this process; return the row groups decoded, the peak resident KiB of the shards'
/// memory maps (sampled every 8 batches) and the seconds it took.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn epoch_shard_rss(cache: &Path) -> (u64, u64, f64) {
    let m = Manifest::load(&cache.join(MANIFEST_FILE)).unwrap();
    let cache_handle = taidcache::cache::Cache::new(cache, m.clone()).unwrap();
    let (units, _) = cache_handle.units(0.0).unwrap();
    let mut opts = LoaderOptions::train(BATCH, 0);
    opts.verify = false;
    opts.repeat = false;
    let t0 = Instant::now();
    let mut l = Loader::new(&cache_handle, &units, opts, Cursor::default()).unwrap();
    let shard_rss = || child::shard_rss_kib(&std::fs::read_to_string("/proc/self/smaps").unwrap());
    let (mut peak, mut batches) = (0, 0u64);
    // The maps belong to the loader's thread, which drops them when the epoch ends: sample
    // while it runs.
    while let Some(b) = l.next_batch() {
        l.recycle(b.unwrap().data);
        batches += 1;
        if batches.is_multiple_of(8) {
            peak = peak.max(shard_rss());
        }
    }
    (l.row_groups_decoded(), peak, t0.elapsed().as_secs_f64())
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn rss() {
    let root = results::target_dir().join("bench-data").join("rss");
    let caches = caches(&root);
    let student = root.join("student");
    let mut spec = TinySpec::new(Architecture::Llama, VOCAB);
    spec.hidden_size = 16;
    spec.intermediate_size = 32;
    spec.layers = 1;
    spec.heads = 1;
    spec.kv_heads = 1;
    spec.max_position_embeddings = SEQ_LEN;
    write_tiny_model(&student, &spec, None).unwrap();
    let exe = env!("CARGO_BIN_EXE_taidcache");
    let mut rows = Vec::new();
    let mut peaks = Vec::new();
    for ((cache, bytes), gb) in caches.iter().zip([1, 4]) {
        let m = Manifest::load(&cache.join(MANIFEST_FILE)).unwrap();
        let touched = shards_touched(cache);
        let (units_bytes, readers_bytes) = loader_metadata_bytes(cache);
        let run = root.join(format!("run-{gb}gb"));
        if run.exists() {
            std::fs::remove_dir_all(&run).unwrap();
        }
        let args: Vec<std::ffi::OsString> = [
            "distill".into(),
            "--cache".into(),
            cache.clone().into_os_string(),
            "--student".into(),
            student.clone().into_os_string(),
            "--out".into(),
            run.clone().into_os_string(),
            "--steps".into(),
            STEPS.to_string().into(),
            "--batch-size".into(),
            BATCH.to_string().into(),
            "--lr".into(),
            "1e-3".into(),
            "--seed".into(),
            "0".into(),
        ]
        .into();
        let t0 = Instant::now();
        let p = child::measure(exe, &args);
        let secs = t0.elapsed().as_secs_f64();
        assert!(p.exit_ok, "taidcache distill on {} failed", cache.display());
        eprintln!(
            "rss {gb} GB: {} shards, {bytes} bytes; distill {STEPS} steps × {BATCH} × {SEQ_LEN} in {secs:.1} s: \
             peak RSS {:.1} MB (sampled: anon {:.1} MB, file-backed {:.1} MB of which shard maps {:.1} MB); \
             rows from {} shards: {:?}; \
             Cache::units {units_bytes} B, every shard's ShardReader open {readers_bytes} B",
            m.shards.len(),
            p.maxrss as f64 * 1024.0 / MB,
            p.anon as f64 * 1024.0 / MB,
            p.file as f64 * 1024.0 / MB,
            p.shards as f64 * 1024.0 / MB,
            touched.len(),
            touched
        );
        let mb = |kib: u64| kib as f64 * 1024.0 / MB;
        rows.push((
            format!("memory.distill_peak_rss_{gb}gb_mb"),
            mb(p.maxrss),
            "MB",
        ));
        rows.push((format!("memory.distill_vmhwm_{gb}gb_mb"), mb(p.hwm), "MB"));
        rows.push((
            format!("memory.distill_peak_rss_anon_{gb}gb_mb"),
            mb(p.anon),
            "MB",
        ));
        rows.push((
            format!("memory.distill_peak_rss_file_{gb}gb_mb"),
            mb(p.file),
            "MB",
        ));
        rows.push((
            format!("memory.distill_peak_rss_shard_maps_{gb}gb_mb"),
            mb(p.shards),
            "MB",
        ));
        rows.push((
            format!("memory.distill_cache_{gb}gb_bytes"),
            *bytes as f64,
            "bytes",
        ));
        rows.push((
            format!("memory.distill_cache_{gb}gb_shards"),
            m.shards.len() as f64,
            "shards",
        ));
        rows.push((
            format!("memory.distill_shards_touched_{gb}gb"),
            touched.len() as f64,
            "shards",
        ));
        rows.push((format!("memory.distill_seconds_{gb}gb"), secs, "s"));
        rows.push((
            format!("memory.loader_units_alloc_mb_{gb}gb"),
            units_bytes as f64 / MB,
            "MB",
        ));
        rows.push((
            format!("memory.shard_readers_alloc_mb_{gb}gb"),
            readers_bytes as f64 / MB,
            "MB",
        ));
        peaks.push(mb(p.maxrss));
    }
    let (units, shard_kib, secs) = epoch_shard_rss(&caches[0].0);
    eprintln!(
        "rss: one shuffled loader epoch over the 1 GB cache ({units} row groups, {} bytes) brings {:.1} MB \
         of the shards' memory maps into this process's RSS (sampled peak); {secs:.1} s",
        caches[0].1,
        shard_kib as f64 * 1024.0 / MB
    );
    rows.push((
        "memory.loader_epoch_shard_rss_1gb_mb".into(),
        shard_kib as f64 * 1024.0 / MB,
        "MB",
    ));
    rows.push((
        "memory.distill_peak_rss_growth_mb".into(),
        peaks[1] - peaks[0],
        "MB",
    ));
    rows.push(("memory.distill_steps".into(), STEPS as f64, "steps"));
    rows.push(("memory.distill_batch".into(), BATCH as f64, "sequences"));
    write_results("memory_rss.json", &rows);
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn rss() {
    eprintln!("rss: needs 64-bit Linux (wait4, /proc); skipped");
}

fn main() {
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    if std::env::var_os(LAUNCHER_ENV).is_some() {
        child::launcher();
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let picked: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| matches!(*a, "loss" | "rss"))
        .collect();
    let all = picked.is_empty();
    if all || picked.contains(&"loss") {
        loss();
    }
    if all || picked.contains(&"rss") {
        rss();
    }
}
