//! Where benches leave their figures for `benches/report.py`.

use std::path::PathBuf;

/// The cargo target directory (`CARGO_TARGET_DIR`, else `target/` of the checkout).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Write `results` (a JSON array of `{name, value, unit}`) to `target/bench-results/<file>`;
/// returns the path written.
pub fn write(file: &str, results: &serde_json::Value) -> PathBuf {
    let out = target_dir().join("bench-results");
    std::fs::create_dir_all(&out).expect("creating target/bench-results");
    let path = out.join(file);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(results).expect("results serialize") + "\n",
    )
    .expect("writing bench results");
    path
}
