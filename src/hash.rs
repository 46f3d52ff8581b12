//! Content hashes used by the manifest: sha256 for identities (teacher, tokenizer), xxh3-128 for
//! shard and corpus contents (fast enough to re-check every shard in `verify`).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{IoContext, Result};

const CHUNK: usize = 1 << 20;

/// Lower-case hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    stream_file(path, |chunk| hasher.update(chunk))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Lower-case hex xxh3-128 of a byte slice.
pub fn xxh3_hex(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// Lower-case hex xxh3-128 of a file, streamed.
pub fn xxh3_file(path: &Path) -> Result<String> {
    let mut hasher = Xxh3::new();
    stream_file(path, |chunk| hasher.update(chunk))?;
    Ok(format!("{:032x}", hasher.digest128()))
}

fn stream_file(path: &Path, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hashes_equal_slice_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_hex(&data));
        assert_eq!(xxh3_file(&path).unwrap(), xxh3_hex(&data));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
