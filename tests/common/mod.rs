//! Shared by the integration tests: finding what `scripts/setup.sh` provides.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use kiln::env::setting;

/// True under CI, where a test must fail rather than skip when its set-up is missing.
pub fn in_ci() -> bool {
    ["KILN_CI", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

/// The path in setting `key` if it exists; else `None` after a skip note (a panic in CI).
pub fn needed(key: &str) -> Option<PathBuf> {
    let problem = match setting(key) {
        Some(p) if Path::new(&p).exists() => return Some(PathBuf::from(p)),
        Some(p) => format!("{key}={p} does not exist"),
        None => format!("{key} is not set and .cache/env does not name it"),
    };
    if in_ci() {
        panic!("{problem}: this test must not skip in CI (run scripts/setup.sh first)");
    }
    eprintln!("SKIPPED: {problem}; run scripts/setup.sh to enable this test");
    None
}
