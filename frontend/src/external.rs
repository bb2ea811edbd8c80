//! ONNX external data: tensors whose bytes live in a file next to the model
//! (`data_location = EXTERNAL`, `external_data = {location, offset, length}`).
//!
//! Each file is memory-mapped once per [`ExternalData`] context and tensors are views into
//! the map ([`Tensor::from_storage`]): loading a model never copies its weights.
//!
//! `location` is untrusted input. It must be a relative path without `..` components, and it
//! must resolve (after following symlinks) to a regular file inside the model's directory.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use kiln_ir::{DType, Storage, Tensor};
use memmap2::Mmap;

use crate::error::FrontendError;
use crate::proto::StringStringEntryProto;

/// A read-only memory map of one external-data file. An empty file cannot be mapped and is
/// represented without a map (it can only back zero-byte tensors).
#[derive(Debug)]
pub struct MmapStorage {
    map: Option<Mmap>,
    path: PathBuf,
}

impl MmapStorage {
    /// Maps `path` read-only.
    ///
    /// The map is only sound while no one truncates or rewrites the file; that is the usual
    /// contract of memory-mapped model weights (kiln's own exporter writes a new file and
    /// renames it into place, so re-exporting over the same name never changes a mapped file).
    pub fn open(path: &Path) -> std::io::Result<MmapStorage> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this process; see the contract above.
            Some(unsafe { Mmap::map(&file)? })
        };
        Ok(MmapStorage {
            map,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Storage for MmapStorage {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    fn release(&self, offset: usize, len: usize) {
        if let Some(m) = &self.map {
            if len == 0 || offset.checked_add(len).is_none_or(|e| e > m.len()) {
                return;
            }
            // SAFETY: the map is read-only and file-backed: dropped pages hold nothing that
            // is not in the file, and reading them again faults them back in from it. A
            // failure only means the pages stay resident.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
        }
    }
}

/// Where a model came from, for resolving external data.
#[derive(Debug)]
enum Base {
    /// The model's directory.
    Dir(PathBuf),
    /// The model was loaded from bytes: there is no directory.
    None,
}

/// External-data context for one model: its directory and the files mapped so far.
///
/// Cheap to create; files are opened on first use and cached by canonical path, so two
/// tensors in the same file share one map. `Send + Sync`.
#[derive(Debug)]
pub struct ExternalData {
    base: Base,
    maps: Mutex<HashMap<PathBuf, Arc<MmapStorage>>>,
}

/// The parsed `external_data` entries of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: Option<u64>,
}

impl ExternalRef {
    /// Parses `location` (required), `offset` and `length` (optional decimal integers);
    /// other keys (`checksum` …) are ignored. When a key repeats, the last one wins.
    /// A missing `length` means "the dtype × shape byte count from `offset`" (the ONNX
    /// reference reads to the end of the file instead; kiln only requires the bytes to exist).
    pub fn parse(tensor: &str, entries: &[StringStringEntryProto]) -> Result<Self, FrontendError> {
        let get = |key: &str| {
            entries
                .iter()
                .rev()
                .find(|e| e.key() == key)
                .map(|e| e.value())
        };
        let location = get("location").unwrap_or("");
        if location.is_empty() {
            return Err(FrontendError::external(
                tensor,
                "",
                "external_data has no `location` entry",
            ));
        }
        let int = |key: &str| -> Result<Option<u64>, FrontendError> {
            match get(key) {
                None => Ok(None),
                Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
                    FrontendError::external(
                        tensor,
                        location,
                        format!("{key} `{v}` is not a non-negative integer"),
                    )
                }),
            }
        };
        Ok(ExternalRef {
            location: location.to_string(),
            offset: int("offset")?.unwrap_or(0),
            length: int("length")?,
        })
    }
}

/// Checks that `location` is a relative path that stays below its base directory
/// lexically: not absolute, no root or prefix, no `..` (either separator style).
pub fn check_location(location: &str) -> Result<(), String> {
    if location.is_empty() {
        return Err("empty location".into());
    }
    if location.contains('\0') {
        return Err("location contains a NUL byte".into());
    }
    let p = Path::new(location);
    if p.is_absolute() || p.has_root() || location.starts_with(['/', '\\']) {
        return Err(
            "absolute paths are not allowed; location must be relative to the model's directory"
                .into(),
        );
    }
    // Windows drive prefixes (`C:`) are meaningful to ONNX writers on Windows; reject them too.
    let b = location.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("drive-qualified paths are not allowed; location must be relative".into());
    }
    if location.split(['/', '\\']).any(|c| c == "..") {
        return Err("`..` components are not allowed in location".into());
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err("location must be a plain relative path".into()),
        }
    }
    Ok(())
}

impl ExternalData {
    /// Context for a model file at `model_path`: locations resolve against its directory.
    pub fn for_model(model_path: impl AsRef<Path>) -> ExternalData {
        let dir = match model_path.as_ref().parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::for_dir(dir)
    }

    /// Context whose locations resolve against directory `dir`.
    pub fn for_dir(dir: impl Into<PathBuf>) -> ExternalData {
        ExternalData {
            base: Base::Dir(dir.into()),
            maps: Mutex::new(HashMap::new()),
        }
    }

    /// Context for a model decoded from bytes: any external tensor is an error.
    pub fn none() -> ExternalData {
        ExternalData {
            base: Base::None,
            maps: Mutex::new(HashMap::new()),
        }
    }

    /// The directory locations resolve against, if any.
    pub fn base_dir(&self) -> Option<&Path> {
        match &self.base {
            Base::Dir(d) => Some(d),
            Base::None => None,
        }
    }

    /// Number of distinct files mapped so far.
    pub fn mapped_files(&self) -> usize {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Resolves `location` to a canonical path of a regular file inside the base directory.
    pub fn resolve(&self, tensor: &str, location: &str) -> Result<PathBuf, FrontendError> {
        let err = |reason: String| FrontendError::external(tensor, location, reason);
        let dir = match &self.base {
            Base::Dir(d) => d,
            Base::None => {
                return Err(err(
                    "the model was loaded from bytes, so there is no directory to \
                                find external data in; load it from its file path instead"
                        .into(),
                ))
            }
        };
        check_location(location).map_err(err)?;
        let canon_dir = dir.canonicalize().map_err(|e| {
            err(format!(
                "cannot open the model directory `{}`: {e}",
                dir.display()
            ))
        })?;
        let joined = dir.join(location);
        let canon = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(err(format!(
                    "file not found (looked for `{}`)",
                    joined.display()
                )))
            }
            Err(e) => return Err(err(format!("cannot open `{}`: {e}", joined.display()))),
        };
        if !canon.starts_with(&canon_dir) {
            return Err(err(format!(
                "resolves to `{}`, outside the model directory `{}` (symlink escape)",
                canon.display(),
                canon_dir.display()
            )));
        }
        let meta = std::fs::metadata(&canon)
            .map_err(|e| err(format!("cannot open `{}`: {e}", canon.display())))?;
        if !meta.is_file() {
            return Err(err(format!("`{}` is not a regular file", canon.display())));
        }
        Ok(canon)
    }

    /// The memory map of `location`, opened on first use.
    pub fn map(&self, tensor: &str, location: &str) -> Result<Arc<MmapStorage>, FrontendError> {
        let path = self.resolve(tensor, location)?;
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = maps.get(&path) {
            return Ok(m.clone());
        }
        let m = Arc::new(MmapStorage::open(&path).map_err(|e| {
            FrontendError::external(
                tensor,
                location,
                format!("cannot map `{}`: {e}", path.display()),
            )
        })?);
        maps.insert(path, m.clone());
        Ok(m)
    }

    /// The tensor `tensor` of type `dtype` and shape `shape` described by `entries`,
    /// as a view into the mapped file (no copy).
    pub fn tensor(
        &self,
        tensor: &str,
        dtype: DType,
        shape: Vec<usize>,
        entries: &[StringStringEntryProto],
    ) -> Result<Tensor, FrontendError> {
        let r = ExternalRef::parse(tensor, entries)?;
        let loc = r.location.as_str();
        if dtype == DType::String {
            return Err(FrontendError::external(
                tensor,
                loc,
                "string tensors cannot be stored as external data",
            ));
        }
        let need = kiln_ir::tensor::checked_numel(&shape)
            .ok()
            .and_then(|n| dtype.storage_bytes(n))
            .ok_or_else(|| {
                FrontendError::too_large(tensor, format!("{dtype} tensor of shape {shape:?}"))
            })?;
        if let Some(len) = r.length {
            if len != need as u64 {
                return Err(FrontendError::external(
                    tensor,
                    loc,
                    format!(
                        "length {len} does not match {dtype}{shape:?}, which needs {need} bytes"
                    ),
                ));
            }
        }
        let storage = self.map(tensor, loc)?;
        let file_len = storage.len() as u64;
        let end = r.offset.checked_add(need as u64).ok_or_else(|| {
            FrontendError::too_large(tensor, format!("offset {} + length {need}", r.offset))
        })?;
        if end > file_len {
            return Err(FrontendError::external(
                tensor,
                loc,
                format!(
                    "bytes {}..{end} lie beyond the end of the file ({file_len} bytes)",
                    r.offset
                ),
            ));
        }
        // end <= file_len, which is a usize, so offset fits too.
        let offset = r.offset as usize;
        let storage: Arc<dyn Storage> = storage;
        Ok(Tensor::from_storage(dtype, shape, storage, offset, need)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert!(check_location("w.bin").is_ok());
        assert!(check_location("./sub/w.bin").is_ok());
        assert!(check_location("a..b").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../w.bin",
            "sub/../../w",
            "sub\\..\\w",
            "\\\\srv\\x",
            "C:w",
        ] {
            assert!(check_location(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ref_parsing() {
        let e = |k: &str, v: &str| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v.into()),
        };
        let r = ExternalRef::parse(
            "t",
            &[e("location", "w"), e("offset", "64"), e("checksum", "x")],
        )
        .unwrap();
        assert_eq!(
            r,
            ExternalRef {
                location: "w".into(),
                offset: 64,
                length: None
            }
        );
        assert!(ExternalRef::parse("t", &[e("offset", "0")]).is_err());
        let msg = ExternalRef::parse("t", &[e("location", "w"), e("length", "-1")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("length `-1`"), "{msg}");
    }
}
