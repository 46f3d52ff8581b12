//! Every config in pipelines/ parses and resolves to valid options.

use std::path::Path;

#[test]
fn every_pipeline_config_resolves() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let args = taidcache::cli::PrecomputeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let section = taidcache::config::read_section(&path, "precompute").unwrap();
        if !section.is_empty() {
            let opts = args
                .resolve()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(opts.top_k >= 1 && opts.seq_len >= 1, "{}", path.display());
        }
        seen += 1;
    }
    assert!(seen >= 1, "no pipeline configs found");
}
