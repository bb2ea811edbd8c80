//! `TensorProto` ⇄ [`Tensor`].
//!
//! Reading accepts every encoding the ONNX spec allows for every element type kiln knows:
//! `raw_data` (little-endian, sub-byte types packed first-element-in-low-bits), the typed
//! fields (`float_data`, `int32_data`, `int64_data`, `double_data`, `uint64_data`,
//! `string_data`) and external data (memory-mapped, see [`crate::external`]). Input is
//! untrusted: every size is checked against the data actually present before anything is
//! allocated, and overflow is an error, never a panic.
//!
//! Writing uses `raw_data` for fixed-size types and `string_data` for strings;
//! [`ExternalWriter`] moves large tensors to one side file instead.
//!
//! kiln stores tensor bytes little-endian and views them in place, so, like kiln-ir, this
//! module assumes a little-endian host.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kiln_ir::tensor::checked_numel;
use kiln_ir::{DType, Tensor};

use crate::error::FrontendError;
use crate::external::{check_location, ExternalData};
use crate::proto::{self, tensor_proto, StringStringEntryProto, TensorProto};

#[cfg(target_endian = "big")]
compile_error!("kiln-frontend assumes a little-endian host (tensor bytes are viewed in place)");

/// The typed field a dtype's elements are stored in when `raw_data` is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Float,
    Int32,
    Int64,
    Double,
    Uint64,
    String,
}

impl Field {
    fn of(dtype: DType) -> Field {
        use DType::*;
        match dtype {
            F32 | C64 => Field::Float,
            F64 | C128 => Field::Double,
            I64 => Field::Int64,
            U32 | U64 => Field::Uint64,
            String => Field::String,
            I32 | I16 | I8 | U16 | U8 | Bool | F16 | BF16 | F8E4M3FN | F8E4M3FNUZ | F8E5M2
            | F8E5M2FNUZ | F8E8M0 | U4 | I4 | F4E2M1 | U2 | I2 => Field::Int32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Float => "float_data",
            Field::Int32 => "int32_data",
            Field::Int64 => "int64_data",
            Field::Double => "double_data",
            Field::Uint64 => "uint64_data",
            Field::String => "string_data",
        }
    }

    fn len(self, t: &TensorProto) -> usize {
        match self {
            Field::Float => t.float_data.len(),
            Field::Int32 => t.int32_data.len(),
            Field::Int64 => t.int64_data.len(),
            Field::Double => t.double_data.len(),
            Field::Uint64 => t.uint64_data.len(),
            Field::String => t.string_data.len(),
        }
    }

    const ALL: [Field; 6] = [
        Field::Float,
        Field::Int32,
        Field::Int64,
        Field::Double,
        Field::Uint64,
        Field::String,
    ];
}

/// The shape of `dims`, rejecting negative dims and element counts past `usize`.
fn shape_of(name: &str, dims: &[i64]) -> Result<Vec<usize>, FrontendError> {
    let mut shape = Vec::with_capacity(dims.len());
    for &d in dims {
        if d < 0 {
            return Err(FrontendError::bad_tensor(
                name,
                format!("negative dimension {d} in dims {dims:?}"),
            ));
        }
        let d = usize::try_from(d).map_err(|_| {
            FrontendError::too_large(name, format!("dimension {d} does not fit in usize"))
        })?;
        shape.push(d);
    }
    Ok(shape)
}

/// Converts a `TensorProto` to a [`Tensor`]. External data is resolved through `ctx` and
/// viewed in place (memory-mapped, not copied); inline data is copied into an aligned buffer.
pub fn tensor_from_proto(t: &TensorProto, ctx: &ExternalData) -> Result<Tensor, FrontendError> {
    let name = proto::display_name(t);
    if t.segment.is_some() {
        return Err(FrontendError::bad_tensor(
            name,
            "segmented tensors (TensorProto.segment) are not supported",
        ));
    }
    let code = t.data_type();
    let dtype = DType::from_onnx(code).ok_or_else(|| FrontendError::UnsupportedDType {
        tensor: name.to_string(),
        code,
        name: proto::data_type_name(code),
    })?;
    let shape = shape_of(name, &t.dims)?;
    let too_large = || {
        FrontendError::too_large(
            name,
            format!("{dtype} tensor of dims {:?} does not fit in memory", t.dims),
        )
    };
    let numel = checked_numel(&shape).map_err(|_| too_large())?;
    let nbytes = dtype.storage_bytes(numel).ok_or_else(too_large)?;

    match t.data_location {
        None => {}
        Some(c) if c == tensor_proto::DataLocation::Default as i32 => {}
        Some(c) if c == tensor_proto::DataLocation::External as i32 => {
            return ctx.tensor(name, dtype, shape, &t.external_data);
        }
        Some(c) => {
            return Err(FrontendError::bad_tensor(
                name,
                format!("unknown data_location {c}"),
            ))
        }
    }

    if dtype == DType::String {
        if t.raw_data.is_some() {
            return Err(FrontendError::bad_tensor(
                name,
                "string tensors must use string_data, not raw_data",
            ));
        }
        if t.string_data.len() != numel {
            return Err(count_error(name, t, dtype, &t.dims, Field::String, numel));
        }
        return Ok(Tensor::from_strings(shape, t.string_data.clone())?);
    }

    if let Some(raw) = &t.raw_data {
        if raw.len() != nbytes {
            return Err(FrontendError::bad_tensor(
                name,
                format!(
                    "raw_data holds {} bytes but {dtype} dims {:?} need {nbytes}",
                    raw.len(),
                    t.dims
                ),
            ));
        }
        return Ok(Tensor::from_bytes(dtype, shape, raw)?);
    }

    let field = Field::of(dtype);
    // Typed fields hold one value per element, except: complex types hold two (real,
    // imaginary) and sub-byte types hold one packed byte per int32_data entry.
    let want = match dtype {
        DType::C64 | DType::C128 => numel.checked_mul(2).ok_or_else(too_large)?,
        d if d.bits() < 8 => nbytes,
        _ => numel,
    };
    if field.len(t) != want {
        return Err(count_error(name, t, dtype, &t.dims, field, want));
    }
    // From here on the output is at most 8 bytes per value already decoded in memory.
    let bytes: Vec<u8> = match field {
        Field::Float => bytemuck::cast_slice(&t.float_data).to_vec(),
        Field::Double => bytemuck::cast_slice(&t.double_data).to_vec(),
        Field::Int64 => bytemuck::cast_slice(&t.int64_data).to_vec(),
        Field::Uint64 if dtype == DType::U64 => bytemuck::cast_slice(&t.uint64_data).to_vec(),
        Field::Uint64 => {
            let mut out = Vec::with_capacity(nbytes);
            for (i, &v) in t.uint64_data.iter().enumerate() {
                let v = u32::try_from(v).map_err(|_| {
                    FrontendError::bad_tensor(
                        name,
                        format!("uint64_data[{i}] = {v} does not fit a u32 element"),
                    )
                })?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            out
        }
        Field::Int32 => int32_field_bytes(name, dtype, &t.int32_data, nbytes)?,
        Field::String => unreachable!("strings are handled above"),
    };
    Ok(Tensor::from_bytes(dtype, shape, &bytes)?)
}

/// The storage bytes of `int32_data` for `dtype`: i32 as is; 16-bit types (including
/// f16/bf16 bit patterns) and 8-bit types (including fp8 bit patterns) narrowed, accepting
/// either the signed or the unsigned reading of the width; bool as 0/1; sub-byte types one
/// packed byte per entry.
fn int32_field_bytes(
    name: &str,
    dtype: DType,
    v: &[i32],
    nbytes: usize,
) -> Result<Vec<u8>, FrontendError> {
    if dtype == DType::I32 {
        return Ok(bytemuck::cast_slice(v).to_vec());
    }
    let range_err = |i: usize, x: i32, what: &str| {
        FrontendError::bad_tensor(name, format!("int32_data[{i}] = {x} does not fit {what}"))
    };
    let mut out = Vec::with_capacity(nbytes);
    match dtype {
        DType::Bool => out.extend(v.iter().map(|&x| u8::from(x != 0))),
        d if d.bits() == 16 => {
            for (i, &x) in v.iter().enumerate() {
                if !(-32768..=65535).contains(&x) {
                    return Err(range_err(i, x, &format!("a {d} element (16 bits)")));
                }
                out.extend_from_slice(&(x as u16).to_le_bytes());
            }
        }
        d => {
            let what = if d.bits() < 8 {
                format!("a packed byte of {d} elements")
            } else {
                format!("a {d} element (8 bits)")
            };
            for (i, &x) in v.iter().enumerate() {
                if !(-128..=255).contains(&x) {
                    return Err(range_err(i, x, &what));
                }
                out.push(x as u8);
            }
        }
    }
    debug_assert_eq!(out.len(), nbytes);
    Ok(out)
}

fn count_error(
    name: &str,
    t: &TensorProto,
    dtype: DType,
    dims: &[i64],
    field: Field,
    want: usize,
) -> FrontendError {
    let have = field.len(t);
    let unit = if dtype.bits() < 8 && field == Field::Int32 {
        "packed bytes"
    } else {
        "values"
    };
    let mut msg = if have == 0 && t.raw_data.is_none() {
        format!(
            "has no data, but {dtype} dims {dims:?} need {want} {unit} (in raw_data or {})",
            field.name()
        )
    } else {
        format!(
            "{} holds {have} values but {dtype} dims {dims:?} need {want} {unit}",
            field.name()
        )
    };
    let stray: Vec<&str> = Field::ALL
        .iter()
        .filter(|&&f| f != field && f.len(t) > 0)
        .map(|f| f.name())
        .collect();
    if !stray.is_empty() {
        msg.push_str(&format!(
            "; it has {} instead, which a {dtype} tensor does not use",
            stray.join(", ")
        ));
    }
    FrontendError::bad_tensor(name, msg)
}

fn dims_of(shape: &[usize]) -> Vec<i64> {
    // A tensor's byte count fits in memory, so its dims fit in i64; only zero-element
    // tensors could carry a larger dim, and those saturate.
    shape
        .iter()
        .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
        .collect()
}

/// Converts a [`Tensor`] to a `TensorProto` named `name`, with the data inline: `raw_data`
/// for fixed-size types, `string_data` for strings.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let mut p = TensorProto {
        name: Some(name.to_string()),
        data_type: Some(t.dtype().onnx_code()),
        dims: dims_of(t.shape()),
        ..Default::default()
    };
    match t.strings() {
        Some(s) => p.string_data = s.to_vec(),
        None => p.raw_data = Some(t.bytes().to_vec()),
    }
    p
}

/// Reads a file holding one serialized `TensorProto` (such as a conformance case's
/// `test_data_set_0/input_0.pb`); external data resolves against the file's directory.
pub fn read_tensor_file(path: impl AsRef<Path>) -> Result<Tensor, FrontendError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| FrontendError::io("cannot read", path, e))?;
    let proto = proto::decode_tensor(&bytes, &path.display().to_string())?;
    tensor_from_proto(&proto, &ExternalData::for_model(path))
}

/// Offsets of tensors in an external-data file are multiples of this.
pub const EXTERNAL_ALIGN: u64 = 64;

/// Tensors of at least this many bytes go to the external file by default.
pub const DEFAULT_EXTERNAL_THRESHOLD: usize = 1024;

/// Writes the bytes of large tensors to one external-data file next to a model, at
/// [`EXTERNAL_ALIGN`]-byte aligned offsets (u64: files past 4 GiB are fine), and returns
/// `TensorProto`s that point at them (`data_location = EXTERNAL`, `external_data` =
/// `location`, `offset`, `length`).
///
/// The file is written under a temporary name and renamed into place by
/// [`ExternalWriter::finish`], so exporting over a model whose external data is currently
/// memory-mapped (by this process or another) never changes the mapped file. Dropping the
/// writer without `finish` removes the temporary file. Nothing is created when no tensor
/// reaches the threshold.
#[derive(Debug)]
pub struct ExternalWriter {
    location: String,
    threshold: usize,
    final_path: PathBuf,
    tmp_path: PathBuf,
    file: Option<BufWriter<File>>,
    pos: u64,
    tensors: usize,
}

impl ExternalWriter {
    /// A writer for the model that will be saved at `model_path`; the data goes to
    /// `location`, relative to the model's directory (validated like a loaded location:
    /// relative, no `..`). Tensors with at least `threshold` bytes go to the file; strings
    /// and empty tensors always stay inline.
    pub fn new(
        model_path: impl AsRef<Path>,
        location: &str,
        threshold: usize,
    ) -> Result<ExternalWriter, FrontendError> {
        check_location(location).map_err(FrontendError::Invalid)?;
        let dir = match model_path.as_ref().parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let final_path = dir.join(location);
        let file_name = final_path
            .file_name()
            .ok_or_else(|| {
                FrontendError::Invalid(format!("external data location `{location}` names no file"))
            })?
            .to_string_lossy()
            .into_owned();
        let tmp_path =
            final_path.with_file_name(format!(".{file_name}.kiln-tmp.{}", std::process::id()));
        Ok(ExternalWriter {
            location: location.to_string(),
            threshold,
            final_path,
            tmp_path,
            file: None,
            pos: 0,
            tensors: 0,
        })
    }

    /// A writer whose file is `<model file name>.data` next to the model
    /// (`model.onnx` → `model.onnx.data`).
    pub fn for_model(
        model_path: impl AsRef<Path>,
        threshold: usize,
    ) -> Result<ExternalWriter, FrontendError> {
        let p = model_path.as_ref();
        let name = p
            .file_name()
            .ok_or_else(|| {
                FrontendError::Invalid(format!("model path `{}` names no file", p.display()))
            })?
            .to_string_lossy()
            .into_owned();
        Self::new(p, &format!("{name}.data"), threshold)
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The final path of the external-data file.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Bytes written so far, padding included.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Number of tensors written to the file so far.
    pub fn tensors_written(&self) -> usize {
        self.tensors
    }

    /// Whether `t` would go to the external file.
    pub fn goes_external(&self, t: &Tensor) -> bool {
        t.dtype() != DType::String && !t.bytes().is_empty() && t.bytes().len() >= self.threshold
    }

    /// Converts `t` to a `TensorProto` named `name`: inline when small (or a string tensor),
    /// otherwise appended to the external file.
    pub fn tensor_to_proto(
        &mut self,
        name: &str,
        t: &Tensor,
    ) -> Result<TensorProto, FrontendError> {
        if !self.goes_external(t) {
            return Ok(tensor_to_proto(name, t));
        }
        let bytes = t.bytes();
        let offset = self.write_aligned(bytes)?;
        self.tensors += 1;
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v),
        };
        Ok(TensorProto {
            name: Some(name.to_string()),
            data_type: Some(t.dtype().onnx_code()),
            dims: dims_of(t.shape()),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", offset.to_string()),
                entry("length", bytes.len().to_string()),
            ],
            ..Default::default()
        })
    }

    fn write_aligned(&mut self, bytes: &[u8]) -> Result<u64, FrontendError> {
        let io_err = |p: &Path, e| FrontendError::io("cannot write", p, e);
        if self.file.is_none() {
            if let Some(parent) = self.tmp_path.parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| FrontendError::io("cannot create directory", parent, e))?;
                }
            }
            let f = File::create(&self.tmp_path)
                .map_err(|e| FrontendError::io("cannot create", &self.tmp_path, e))?;
            self.file = Some(BufWriter::with_capacity(1 << 20, f));
        }
        let file = self.file.as_mut().expect("opened above");
        let pad = (EXTERNAL_ALIGN - self.pos % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
        let offset = self.pos + pad;
        file.write_all(&[0u8; EXTERNAL_ALIGN as usize][..pad as usize])
            .and_then(|()| file.write_all(bytes))
            .map_err(|e| io_err(&self.tmp_path, e))?;
        self.pos = offset + bytes.len() as u64;
        Ok(offset)
    }

    /// Flushes the file, syncs it and renames it into place. Returns its final path, or
    /// `None` when no tensor went external (then no file was written).
    pub fn finish(mut self) -> Result<Option<PathBuf>, FrontendError> {
        let Some(file) = self.file.take() else {
            return Ok(None);
        };
        let done = file
            .into_inner()
            .map_err(|e| FrontendError::io("cannot write", &self.tmp_path, e.into_error()))
            .and_then(|f| {
                f.sync_all()
                    .map_err(|e| FrontendError::io("cannot write", &self.tmp_path, e))
            })
            .and_then(|()| {
                std::fs::rename(&self.tmp_path, &self.final_path)
                    .map_err(|e| FrontendError::io("cannot rename into place", &self.final_path, e))
            });
        if let Err(e) = done {
            let _ = std::fs::remove_file(&self.tmp_path);
            return Err(e);
        }
        Ok(Some(self.final_path.clone()))
    }
}

impl Drop for ExternalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FrontendError as E;
    use prost::Message;

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        TensorProto {
            name: Some("w".into()),
            data_type: Some(dtype.onnx_code()),
            dims: dims.to_vec(),
            ..Default::default()
        }
    }

    fn load(p: &TensorProto) -> Result<Tensor, E> {
        tensor_from_proto(p, &ExternalData::none())
    }

    fn err(p: &TensorProto) -> String {
        load(p).unwrap_err().to_string()
    }

    #[test]
    fn typed_fields_match_raw_data() {
        let check = |p: TensorProto, raw: &[u8]| {
            let t = load(&p).unwrap();
            assert_eq!(t.bytes(), raw, "{:?}", t);
            let mut r = proto(t.dtype(), &p.dims);
            r.raw_data = Some(raw.to_vec());
            assert_eq!(load(&r).unwrap(), t);
        };
        let mut p = proto(DType::F32, &[2]);
        p.float_data = vec![1.5, -2.0];
        check(p, bytemuck::cast_slice(&[1.5f32, -2.0]));

        let mut p = proto(DType::C64, &[1]);
        p.float_data = vec![1.0, 2.0];
        check(p, bytemuck::cast_slice(&[1.0f32, 2.0]));

        let mut p = proto(DType::C128, &[1]);
        p.double_data = vec![1.0, -2.0];
        check(p, bytemuck::cast_slice(&[1.0f64, -2.0]));

        let mut p = proto(DType::I64, &[2]);
        p.int64_data = vec![-1, i64::MAX];
        check(p, bytemuck::cast_slice(&[-1i64, i64::MAX]));

        let mut p = proto(DType::U32, &[2]);
        p.uint64_data = vec![7, u32::MAX as u64];
        check(p, bytemuck::cast_slice(&[7u32, u32::MAX]));

        let mut p = proto(DType::U64, &[1]);
        p.uint64_data = vec![u64::MAX];
        check(p, &u64::MAX.to_le_bytes());

        let mut p = proto(DType::I8, &[3]);
        p.int32_data = vec![-128, 127, -1];
        check(p, &[0x80, 0x7f, 0xff]);

        let mut p = proto(DType::F16, &[2]);
        p.int32_data = vec![0x3c00, 0xbc00];
        check(p, &[0x00, 0x3c, 0x00, 0xbc]);

        let mut p = proto(DType::Bool, &[3]);
        p.int32_data = vec![0, 1, 5];
        check(p, &[0, 1, 1]);

        // 5 int4 elements pack into 3 bytes, one per int32_data entry.
        let mut p = proto(DType::I4, &[5]);
        p.int32_data = vec![0x10, 0xc7, 0x08];
        check(p, &[0x10, 0xc7, 0x08]);

        let mut p = proto(DType::U2, &[4]);
        p.int32_data = vec![0xe4];
        check(p, &[0xe4]);

        let mut p = proto(DType::String, &[2]);
        p.string_data = vec![b"a".to_vec(), vec![0xff, 0]];
        let t = load(&p).unwrap();
        assert_eq!(t.strings().unwrap(), &[b"a".to_vec(), vec![0xff, 0]]);
    }

    #[test]
    fn round_trip_every_dtype() {
        for &d in DType::ALL {
            let t = if d == DType::String {
                Tensor::from_strings(vec![2, 1], vec![b"x".to_vec(), b"".to_vec()]).unwrap()
            } else {
                let n = d.storage_bytes(6).unwrap();
                let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 5) as u8).collect();
                Tensor::from_bytes(d, vec![2, 3], &bytes).unwrap()
            };
            let p = tensor_to_proto("t", &t);
            let p2 = TensorProto::decode(&*p.encode_to_vec()).unwrap();
            assert_eq!(load(&p2).unwrap(), t, "{d}");
        }
        // Empty and rank-0 tensors.
        let e = Tensor::zeros(DType::F32, vec![0, 3]).unwrap();
        assert_eq!(load(&tensor_to_proto("e", &e)).unwrap(), e);
        let mut p = proto(DType::F32, &[0, 3]);
        p.raw_data = None;
        assert_eq!(load(&p).unwrap(), e);
        let s = Tensor::scalar(3i64);
        assert_eq!(load(&tensor_to_proto("s", &s)).unwrap(), s);
    }

    #[test]
    fn rejects_malformed_tensors() {
        let mut p = proto(DType::F32, &[4]);
        p.raw_data = Some(vec![0; 15]);
        let m = err(&p);
        assert!(
            m.contains("`w`") && m.contains("raw_data holds 15 bytes") && m.contains("need 16"),
            "{m}"
        );

        let mut p = proto(DType::F32, &[2, -3]);
        p.raw_data = Some(vec![]);
        assert!(err(&p).contains("negative dimension -3"), "{}", err(&p));

        for dims in [
            &[i64::MAX, i64::MAX, 4][..],
            &[1 << 40, 1 << 40],
            &[i64::MAX, i64::MAX, 0],
        ] {
            let mut p = proto(DType::F32, dims);
            p.raw_data = Some(vec![]);
            assert!(matches!(load(&p), Err(E::TooLarge { .. })), "{dims:?}");
        }
        // Big shape, no data: an error, and nothing of that size is allocated.
        let p = proto(DType::F32, &[1 << 28, 1 << 3]);
        let m = err(&p);
        assert!(m.contains("has no data"), "{m}");
        let mut p = proto(DType::F16, &[1 << 40]);
        p.int32_data = vec![1, 2];
        assert!(err(&p).contains("int32_data holds 2 values"), "{}", err(&p));

        let mut p = proto(DType::I64, &[2]);
        p.float_data = vec![1.0, 2.0];
        let m = err(&p);
        assert!(m.contains("it has float_data instead"), "{m}");

        let mut p = proto(DType::I8, &[1]);
        p.int32_data = vec![300];
        assert!(err(&p).contains("int32_data[0] = 300"), "{}", err(&p));
        let mut p = proto(DType::U32, &[1]);
        p.uint64_data = vec![1 << 33];
        assert!(err(&p).contains("does not fit a u32"), "{}", err(&p));

        let mut p = proto(DType::F32, &[1]);
        p.data_type = Some(27);
        let m = err(&p);
        assert!(
            m.contains("`w`") && m.contains("27") && m.contains("FLOAT6E2M3"),
            "{m}"
        );
        p.data_type = None;
        assert!(err(&p).contains("UNDEFINED"), "{}", err(&p));

        let mut p = proto(DType::F32, &[1]);
        p.raw_data = Some(vec![0; 4]);
        p.segment = Some(tensor_proto::Segment {
            begin: Some(0),
            end: Some(1),
        });
        assert!(err(&p).contains("segment"));

        let mut p = proto(DType::String, &[1]);
        p.raw_data = Some(b"abc".to_vec());
        assert!(err(&p).contains("string_data"));
        let mut p = proto(DType::String, &[2]);
        p.string_data = vec![b"a".to_vec()];
        assert!(err(&p).contains("string_data holds 1 values"));

        let mut p = proto(DType::F32, &[1]);
        p.raw_data = Some(vec![0; 4]);
        p.data_location = Some(7);
        assert!(err(&p).contains("data_location 7"));
    }

    #[test]
    fn external_data_needs_a_directory() {
        let mut p = proto(DType::F32, &[1]);
        p.data_location = Some(tensor_proto::DataLocation::External as i32);
        p.external_data = vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("w.bin".into()),
        }];
        let m = err(&p);
        assert!(
            m.contains("`w`") && m.contains("w.bin") && m.contains("loaded from bytes"),
            "{m}"
        );
    }

    /// xorshift64*, so hostile-input tests are reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn truncated_and_random_bytes_never_panic() {
        let mut p = proto(DType::F32, &[2, 3]);
        p.raw_data = Some(bytemuck::cast_slice(&[1.0f32; 6]).to_vec());
        p.external_data = vec![StringStringEntryProto {
            key: Some("k".into()),
            value: Some("v".into()),
        }];
        let good = p.encode_to_vec();
        for cut in 0..good.len() {
            if let Ok(q) = crate::proto::decode_tensor(&good[..cut], "cut") {
                let _ = load(&q);
            }
        }
        // Cutting inside raw_data is a decode error with a clear message.
        let raw_at = good.windows(2).position(|w| w == [0x4a, 24]).unwrap() + 2 + 12;
        let e = crate::proto::decode_tensor(&good[..raw_at], "cut.pb").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("not an ONNX tensor: truncated or corrupt protobuf"),
            "{e}"
        );

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let bytes: Vec<u8> = if i % 2 == 0 {
                let n = (rng.next() % 64) as usize;
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let k = (rng.next() as usize) % b.len();
                    b[k] = rng.next() as u8;
                }
                b
            };
            if let Ok(q) = crate::proto::decode_tensor(&bytes, "random") {
                let _ = load(&q);
            }
            if let Ok(m) = crate::proto::decode_model(&bytes, "random") {
                for t in m.graph.iter().flat_map(|g| &g.initializer) {
                    let _ = load(t);
                }
            }
        }
    }
}
