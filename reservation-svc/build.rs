//! Exposes a fingerprint of `migrations/` as `MIGRATIONS_FINGERPRINT`, so the tests' template
//! database is rebuilt exactly when a migration changes.

use std::path::Path;

fn main() {
    let mut files = Vec::new();
    collect(Path::new("migrations"), &mut files);
    files.sort();
    // FNV-1a over every file's path and contents.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in &files {
        let contents = std::fs::read(path).unwrap_or_default();
        for byte in path.to_string_lossy().bytes().chain(contents) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=MIGRATIONS_FINGERPRINT={hash:016x}");
    println!("cargo:rerun-if-changed=migrations");
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
