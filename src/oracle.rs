//! ONNX Runtime as the oracle: run an ONNX model in ONNX Runtime on [`kiln_ir::Tensor`]s, to
//! cross-check kiln's optimized models and runtime against it (and to time it side by side).
//!
//! Built with cargo feature `ort`. The `ort` crate is used with `load-dynamic`: nothing is linked
//! at build time, and the first [`Oracle`] of a process loads `libonnxruntime.so.1.*` from the path
//! in the setting `ORT_DYLIB_PATH` ([`crate::env::setting`]: the environment variable, else
//! `.cache/env` written by `scripts/setup.sh`, which points it at the library shipped in the
//! `onnxruntime` Python wheel). One process loads one library: later oracles reuse it.
//!
//! ```no_run
//! # use kiln::oracle::Oracle;
//! # use kiln_ir::Tensor;
//! let mut oracle = Oracle::new("model.onnx".as_ref(), 2)?;
//! let x = Tensor::from_vec(vec![2], vec![1.0f32, 2.0])?;
//! let outputs = oracle.run(&[("x".to_string(), x)])?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Element types: every fixed-size type ONNX Runtime has (f32, f64, f16, bf16, the float8 types,
//! i8..i64, u8..u64, bool, the packed 4- and 2-bit types) is passed as raw little-endian bytes both
//! ways; strings are converted element by element. ONNX Runtime's C API takes input strings as
//! C strings (so an element must not contain a NUL byte) and `ort` returns output strings as Rust
//! `String`s (so an output element must be UTF-8). Inputs and outputs that are sequences, maps or
//! optionals are not supported.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_ir::{DType, Tensor};
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{DynTensor, DynTensorValueType, DynValue, TensorElementType, Utf8Data, ValueType};

/// The setting that names the ONNX Runtime shared library.
pub const DYLIB_SETTING: &str = "ORT_DYLIB_PATH";

/// How much ONNX Runtime optimizes the graph before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OracleOpt {
    /// No graph optimization: ONNX Runtime runs the nodes of the model as they are.
    Disabled,
    /// Every graph optimization ONNX Runtime has (`ORT_ENABLE_ALL`): the reference for speed.
    #[default]
    All,
}

/// Options of an [`Oracle`]; `OracleOptions::default()` is 1 thread, [`OracleOpt::All`], no
/// spin-waiting, and the library named by the `ORT_DYLIB_PATH` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OracleOptions {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per core).
    pub threads: usize,
    /// Let idle intra-op threads spin-wait for work, ONNX Runtime's own default
    /// (`session.intra_op.allow_spinning` = 1). Off in [`OracleOptions::default()`]: an oracle
    /// that only checks outputs should not keep a core busy for tens of milliseconds after each
    /// run while the code it checks runs. `kiln bench` turns it on, to time ONNX Runtime as
    /// its users get it.
    pub spinning: bool,
    /// Graph optimization level.
    pub opt: OracleOpt,
    /// The ONNX Runtime library to load, instead of the `ORT_DYLIB_PATH` setting.
    pub dylib: Option<PathBuf>,
}

impl Default for OracleOptions {
    fn default() -> Self {
        OracleOptions {
            threads: 1,
            opt: OracleOpt::All,
            spinning: false,
            dylib: None,
        }
    }
}

/// Why the oracle could not be created or run.
#[derive(Debug, thiserror::Error)]
pub enum OracleError {
    /// Neither the environment nor `.cache/env` names the library.
    #[error(
        "ONNX Runtime is not configured: set ORT_DYLIB_PATH to a libonnxruntime.so.1.*, \
         or run scripts/setup.sh (it writes {})",
        env_file.display()
    )]
    DylibNotConfigured { env_file: PathBuf },
    /// The named library file does not exist.
    #[error(
        "ONNX Runtime library {} does not exist (from {origin}); \
         run scripts/setup.sh or point ORT_DYLIB_PATH at a libonnxruntime.so.1.*",
        path.display()
    )]
    DylibMissing { path: PathBuf, origin: String },
    /// The library exists but could not be loaded (not a library, or an ONNX Runtime too old for `ort`).
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    DylibLoad { path: PathBuf, message: String },
    /// This process already loaded another ONNX Runtime library.
    #[error(
        "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
        loaded.display(),
        requested.display()
    )]
    DylibConflict { loaded: PathBuf, requested: PathBuf },
    /// ONNX Runtime rejected the model (parse error, unsupported op or type, ...).
    #[error("ONNX Runtime cannot load model {model}: {source}")]
    Model { model: String, source: ort::Error },
    /// An output that is not a tensor, or a tensor of a type kiln does not have.
    #[error("output `{name}` is a {what}, which the oracle does not convert")]
    UnsupportedOutput { name: String, what: String },
    /// Any other ONNX Runtime error (typically from the run: a missing or unknown input, a wrong shape).
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    /// ONNX Runtime returned a tensor kiln could not represent.
    #[error("output `{name}`: {source}")]
    Tensor {
        name: String,
        source: kiln_ir::IrError,
    },
}

impl From<ort::Error<SessionBuilder>> for OracleError {
    /// A failed session-builder setting (the builder `ort` hands back with it is dropped).
    fn from(e: ort::Error<SessionBuilder>) -> Self {
        OracleError::Ort(e.into())
    }
}

/// A model loaded in ONNX Runtime, ready to run. Create one per model and reuse it: creating it
/// is where ONNX Runtime optimizes the graph and pre-packs the weights.
pub struct Oracle {
    session: Session,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl std::fmt::Debug for Oracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oracle")
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .finish_non_exhaustive()
    }
}

impl Oracle {
    /// Loads the model file at `model_path` (external data is found beside it) with `threads`
    /// intra-op threads (0: ONNX Runtime's choice) and every graph optimization.
    pub fn new(model_path: &Path, threads: usize) -> Result<Oracle, OracleError> {
        Self::with_options(
            model_path,
            &OracleOptions {
                threads,
                ..OracleOptions::default()
            },
        )
    }

    /// Loads the model file at `model_path` with `options`.
    pub fn with_options(model_path: &Path, options: &OracleOptions) -> Result<Oracle, OracleError> {
        let session = builder(options)?
            .commit_from_file(model_path)
            .map_err(|source| OracleError::Model {
                model: model_path.display().to_string(),
                source,
            })?;
        Ok(Self::from_session(session))
    }

    /// Loads a serialized model (`ModelProto` bytes) with `threads` intra-op threads and every
    /// graph optimization. The model must not use external data (there is no folder to find it in).
    pub fn from_bytes(model_bytes: &[u8], threads: usize) -> Result<Oracle, OracleError> {
        Self::from_bytes_with_options(
            model_bytes,
            &OracleOptions {
                threads,
                ..OracleOptions::default()
            },
        )
    }

    /// Loads a serialized model with `options`. ONNX Runtime copies what it needs from `model_bytes`.
    pub fn from_bytes_with_options(
        model_bytes: &[u8],
        options: &OracleOptions,
    ) -> Result<Oracle, OracleError> {
        let session = builder(options)?
            .commit_from_memory(model_bytes)
            .map_err(|source| OracleError::Model {
                model: format!("({} bytes in memory)", model_bytes.len()),
                source,
            })?;
        Ok(Self::from_session(session))
    }

    fn from_session(session: Session) -> Oracle {
        let names =
            |outlets: &[ort::value::Outlet]| outlets.iter().map(|o| o.name().to_owned()).collect();
        Oracle {
            input_names: names(session.inputs()),
            output_names: names(session.outputs()),
            session,
        }
    }

    /// The model's graph inputs, in graph order (initializers excluded).
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// The model's graph outputs, in graph order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs the model on named inputs and returns every graph output, in graph order, by name.
    /// Every graph input must be given (ONNX Runtime reports a missing or unknown name).
    pub fn run(
        &mut self,
        inputs: &[(String, Tensor)],
    ) -> Result<Vec<(String, Tensor)>, OracleError> {
        let values = inputs
            .iter()
            .map(|(name, t)| Ok((name.as_str(), to_ort(name, t)?)))
            .collect::<Result<Vec<(&str, DynValue)>, OracleError>>()?;
        let outputs = self.session.run(values)?;
        outputs
            .into_iter()
            .map(|(name, value)| Ok((name.to_owned(), from_ort(name, value)?)))
            .collect()
    }
}

/// The version of the process's ONNX Runtime library (`"1.32.0"`), loading the library named
/// by the `ORT_DYLIB_PATH` setting if no oracle did yet.
pub fn ort_version() -> Result<&'static str, OracleError> {
    Ok(&runtime(None)?.version)
}

/// The process's ONNX Runtime: the library it was loaded from and its one environment.
struct Runtime {
    dylib: PathBuf,
    version: String,
    env: Environment,
}

/// Set once, by the first successful [`runtime`] call; never unloaded.
static RUNTIME: Mutex<Option<&'static Runtime>> = Mutex::new(None);

/// Loads ONNX Runtime from `dylib` (else the `ORT_DYLIB_PATH` setting) once per process.
fn runtime(dylib: Option<&Path>) -> Result<&'static Runtime, OracleError> {
    let (path, origin) = match dylib {
        Some(p) => (p.to_path_buf(), "OracleOptions::dylib".to_string()),
        None => match crate::env::setting(DYLIB_SETTING) {
            Some(p) => (PathBuf::from(p), format!("setting {DYLIB_SETTING}")),
            None => {
                return Err(OracleError::DylibNotConfigured {
                    env_file: crate::env::env_file(),
                })
            }
        },
    };
    // Checked on every call, even once a library is loaded, so a wrong path is always reported.
    if !path.is_file() {
        return Err(OracleError::DylibMissing { path, origin });
    }
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = *slot {
        if same_file(&rt.dylib, &path) {
            return Ok(rt);
        }
        return Err(OracleError::DylibConflict {
            loaded: rt.dylib.clone(),
            requested: path,
        });
    }
    let load_error = |message: String| OracleError::DylibLoad {
        path: path.clone(),
        message,
    };
    let builder = ort::init_from(&path).map_err(|e| load_error(e.to_string()))?;
    let version = version_string(&path).map_err(|e| load_error(e.to_string()))?;
    // `ort` allows one environment per process, ever: it is built here once and kept.
    let env = builder.with_name("kiln-oracle").build()?;
    let rt: &'static Runtime = Box::leak(Box::new(Runtime {
        dylib: path,
        version,
        env,
    }));
    *slot = Some(rt);
    Ok(rt)
}

/// `OrtGetApiBase()->GetVersionString()` of the ONNX Runtime library at `path` (which `ort` has
/// loaded already, so this only takes another reference to it). `ort` checks that it is at least
/// the `1.<api level>` it was built for, but does not say which version it found.
fn version_string(path: &Path) -> Result<String, libloading::Error> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `path` is the ONNX Runtime library `ort::init_from` just loaded and checked:
    // it exports `OrtGetApiBase`, which returns a valid base whose version string is a static
    // NUL-terminated string; it is copied before `lib` (one reference of several) is dropped.
    unsafe {
        let lib = libloading::Library::new(path)?;
        let get_api_base: libloading::Symbol<GetApiBase> = lib.get(b"OrtGetApiBase")?;
        let version = ((*get_api_base()).GetVersionString)();
        Ok(std::ffi::CStr::from_ptr(version)
            .to_string_lossy()
            .into_owned())
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn builder(options: &OracleOptions) -> Result<SessionBuilder, OracleError> {
    let rt = runtime(options.dylib.as_deref())?;
    let level = match options.opt {
        OracleOpt::Disabled => GraphOptimizationLevel::Disable,
        OracleOpt::All => GraphOptimizationLevel::All,
    };
    let b = Session::builder(&rt.env)?
        .with_optimization_level(level)?
        .with_intra_op_spinning(options.spinning)?
        .with_inter_op_spinning(options.spinning)?;
    Ok(if options.threads > 0 {
        b.with_intra_threads(options.threads)?
    } else {
        b
    })
}

/// ONNX Runtime's element type for `dtype` (it has every type ONNX has).
fn ort_type(dtype: DType) -> TensorElementType {
    use TensorElementType as E;
    match dtype {
        DType::F32 => E::Float32,
        DType::U8 => E::Uint8,
        DType::I8 => E::Int8,
        DType::U16 => E::Uint16,
        DType::I16 => E::Int16,
        DType::I32 => E::Int32,
        DType::I64 => E::Int64,
        DType::String => E::String,
        DType::Bool => E::Bool,
        DType::F16 => E::Float16,
        DType::F64 => E::Float64,
        DType::U32 => E::Uint32,
        DType::U64 => E::Uint64,
        DType::C64 => E::Complex64,
        DType::C128 => E::Complex128,
        DType::BF16 => E::Bfloat16,
        DType::F8E4M3FN => E::Float8E4M3FN,
        DType::F8E4M3FNUZ => E::Float8E4M3FNUZ,
        DType::F8E5M2 => E::Float8E5M2,
        DType::F8E5M2FNUZ => E::Float8E5M2FNUZ,
        DType::U4 => E::Uint4,
        DType::I4 => E::Int4,
        DType::F4E2M1 => E::Float4E2M1,
        DType::F8E8M0 => E::Float8E8M0,
        DType::U2 => E::Uint2,
        DType::I2 => E::Int2,
    }
}

/// The kiln type of ONNX Runtime's element type `ty` (the inverse of [`ort_type`]).
fn kiln_type(ty: TensorElementType) -> Option<DType> {
    DType::ALL.iter().copied().find(|&d| ort_type(d) == ty)
}

/// A string element handed to ONNX Runtime as the bytes it is (ONNX strings are byte strings).
#[derive(Clone)]
struct ByteString(Vec<u8>);

impl Utf8Data for ByteString {
    fn as_utf8_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn to_ort(name: &str, t: &Tensor) -> Result<DynValue, OracleError> {
    let ty = ort_type(t.dtype());
    let shape = t.shape().to_vec();
    if let Some(strings) = t.strings() {
        let data: Vec<ByteString> = strings.iter().cloned().map(ByteString).collect();
        return Ok(ort::value::Tensor::from_string_array((shape, &data[..]))?.into_dyn());
    }
    let bytes = t.bytes();
    let mut value = DynTensor::new(&Allocator::default(), ty, shape)?;
    let size = value.size().unwrap_or(0);
    if size != bytes.len() {
        return Err(OracleError::Ort(ort::Error::new(format!(
            "input `{name}`: ONNX Runtime sizes a {}{:?} tensor at {size} bytes, kiln at {}",
            t.dtype(),
            t.shape(),
            bytes.len()
        ))));
    }
    if size > 0 {
        // SAFETY: `value` was just allocated on the CPU by the default allocator and its data
        // buffer holds `size` == `bytes.len()` bytes; the two buffers cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.data_ptr_mut().cast::<u8>(), size)
        };
    }
    Ok(value.into_dyn())
}

fn from_ort(name: &str, value: DynValue) -> Result<Tensor, OracleError> {
    let unsupported = |what: String| OracleError::UnsupportedOutput {
        name: name.to_owned(),
        what,
    };
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(unsupported(other.to_string())),
    };
    let dtype = kiln_type(ty).ok_or_else(|| unsupported(format!("{ty} tensor")))?;
    let tensor_err = |source| OracleError::Tensor {
        name: name.to_owned(),
        source,
    };
    if dtype == DType::String {
        let (shape, strings) = value.try_extract_strings()?;
        let shape = dims(shape);
        let strings = strings.into_iter().map(String::into_bytes).collect();
        return Tensor::from_strings(shape, strings).map_err(tensor_err);
    }
    let tensor = value
        .downcast::<DynTensorValueType>()
        .map_err(OracleError::Ort)?;
    if !tensor.memory_info().is_cpu_accessible() {
        return Err(unsupported(format!("{ty} tensor outside CPU memory")));
    }
    let shape = dims(tensor.shape());
    let size = tensor.size().unwrap_or(0);
    let ptr = tensor.data_ptr().cast::<u8>();
    let bytes: &[u8] = if size == 0 || ptr.is_null() {
        &[]
    } else {
        // SAFETY: the tensor lives on the CPU and its data buffer holds `size` bytes; the slice
        // does not outlive `tensor`.
        unsafe { std::slice::from_raw_parts(ptr, size) }
    };
    Tensor::from_bytes(dtype, shape, bytes).map_err(tensor_err)
}

/// A concrete ONNX Runtime shape as kiln dims (a value's dims are never negative).
fn dims(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ort_type_maps_back_to_its_dtype() {
        for &d in DType::ALL {
            assert_eq!(kiln_type(ort_type(d)), Some(d), "{d}");
        }
        assert_eq!(kiln_type(TensorElementType::Undefined), None);
    }

    #[test]
    fn default_options() {
        let o = OracleOptions::default();
        assert_eq!(
            (o.threads, o.opt, o.spinning, o.dylib),
            (1, OracleOpt::All, false, None)
        );
    }
}
