//! Where kiln's tests and tools find things that live outside cargo: the ONNX Runtime library,
//! the ONNX conformance cases, the models, the project's Python.
//!
//! `scripts/setup.sh` prepares them under `.cache/` and writes their absolute paths to
//! `.cache/env` as `KEY=VALUE` lines:
//!
//! | key | what |
//! |---|---|
//! | `ORT_DYLIB_PATH` | `libonnxruntime.so.1.*` of the venv's `onnxruntime` wheel (the oracle) |
//! | `KILN_CONFORMANCE_DIR` | the ONNX node conformance cases (`<case>/model.onnx`, `<case>/test_data_set_*/`) |
//! | `KILN_MODELS_DIR` | the large models materialized from `../shared/models/*.skel.onnx` |
//! | `KILN_SHARED_MODELS` | `../shared/models` (small models, goldens, MANIFEST.md) |
//! | `KILN_PYTHON` | the venv's python (with `onnx`, `onnxruntime`, `numpy`) |
//!
//! [`setting`] looks a key up in the process environment first, so any of them can be
//! overridden for one run (`ORT_DYLIB_PATH=/elsewhere/libonnxruntime.so cargo test ...`).

use std::path::{Path, PathBuf};

/// The workspace root: the directory of the `kiln` crate's `Cargo.toml`, fixed at compile time.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `<workspace root>/.cache/env`, the file `scripts/setup.sh` writes.
pub fn env_file() -> PathBuf {
    workspace_root().join(".cache").join("env")
}

/// The value of setting `key`: the process environment variable `key` when it is set and not
/// empty, else the value of the last `key=VALUE` line of `<workspace root>/.cache/env`, else
/// `None` (no such line, or no such file: `scripts/setup.sh` has not been run).
///
/// In the file, blank lines and lines starting with `#` are ignored, and the value is everything
/// after the first `=` with surrounding whitespace trimmed (no quoting, no expansion).
/// The file is read on every call; call it once per setting, not in a loop.
pub fn setting(key: &str) -> Option<String> {
    match std::env::var(key) {
        Ok(v) if !v.is_empty() => return Some(v),
        _ => {}
    }
    let text = std::fs::read_to_string(env_file()).ok()?;
    lookup(&text, key)
}

/// The value of `key` in `KEY=VALUE` text (the last line for `key` wins; empty values count as unset).
fn lookup(text: &str, key: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_parses_key_value_lines() {
        let text = "# made by setup.sh\nA=1\n\n B = two words \nC=x=y\nA=3\nEMPTY=\n";
        assert_eq!(lookup(text, "A").as_deref(), Some("3"));
        assert_eq!(lookup(text, "B").as_deref(), Some("two words"));
        assert_eq!(lookup(text, "C").as_deref(), Some("x=y"));
        assert_eq!(lookup(text, "EMPTY"), None);
        assert_eq!(lookup(text, "MISSING"), None);
        assert_eq!(lookup("#A=1\n", "#A"), None);
    }

    #[test]
    fn process_environment_wins() {
        // PATH is set in any environment that runs cargo.
        assert_eq!(setting("PATH"), std::env::var("PATH").ok());
    }

    #[test]
    fn workspace_root_holds_the_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(env_file().ends_with(".cache/env"));
    }
}
