//! Tensors: an element type, a concrete shape, and bytes that are either owned or
//! borrowed from a longer-lived storage (typically a memory-mapped external-data file),
//! so loading a model never copies its weights.

use std::fmt;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::IrError;

/// Backing bytes of a tensor. Implemented by kiln's owned buffers and by the
/// frontend's memory maps; the IR never needs to know which.
pub trait Storage: Send + Sync + fmt::Debug {
    fn bytes(&self) -> &[u8];
    /// True when the bytes live outside the process heap (a memory map).
    fn is_mapped(&self) -> bool {
        false
    }
    /// Hint that bytes `offset..offset + len` will not be read again soon (a weight that was
    /// copied into a packed layout). A memory map hands their pages back to the OS; they
    /// are read from the file again if they are needed. Other storages ignore it.
    fn release(&self, _offset: usize, _len: usize) {}
    /// The owned buffer behind this storage, when it is an [`AlignedBuf`] nobody else holds.
    fn into_aligned_buf(self: Arc<Self>) -> Option<AlignedBuf> {
        None
    }
}

/// One cache line: the unit of [`AlignedBuf`]'s allocation.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Owned heap bytes aligned to 64 (a cache line; the widest SIMD load), so any element
/// type can be viewed in place and kernels can use aligned vector loads. The runtime
/// recycles these between runs ([`Tensor::into_buf`]).
pub struct AlignedBuf {
    lines: Vec<Line>,
    len: usize,
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }

    pub fn from_slice(b: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(b.len());
        buf.as_bytes_mut().copy_from_slice(b);
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes this buffer can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.lines.capacity() * 64
    }

    /// Resizes to `len` bytes, keeping the allocation when it is large enough. New bytes are zero.
    pub fn resize(&mut self, len: usize) {
        // Bytes past the old length may be stale (see `resize_stale`): clear them.
        let keep = self.len.min(len);
        self.lines.truncate(keep.div_ceil(64));
        if let Some(last) = self.lines.last_mut() {
            last.0[keep - (keep - 1) / 64 * 64..].fill(0);
        }
        self.lines.resize(len.div_ceil(64), Line([0; 64]));
        self.len = len;
    }

    /// Resizes to `len` bytes without clearing: bytes that held data before keep it (stale),
    /// bytes never written before are zero. For outputs a kernel overwrites entirely, where
    /// zeroing a pooled buffer first would be a wasted pass over memory.
    pub fn resize_stale(&mut self, len: usize) {
        let lines = len.div_ceil(64);
        if lines > self.lines.len() {
            self.lines.resize(lines, Line([0; 64]));
        }
        self.len = len;
    }

    fn all_bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding; the vector's lines are contiguous.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.lines.len() * 64)
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.all_bytes()[..self.len]
    }

    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.lines.len() * 64;
        // SAFETY: as in `all_bytes`, with unique access through `&mut self`.
        let all =
            unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), n) };
        &mut all[..self.len]
    }

    /// The bytes as elements of `T` (the length must be a multiple of `T`'s size).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> &[T] {
        bytemuck::cast_slice(self.as_bytes())
    }

    pub fn as_mut_slice<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(self.as_bytes_mut())
    }
}

impl Storage for AlignedBuf {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
    fn into_aligned_buf(self: Arc<Self>) -> Option<AlignedBuf> {
        Arc::try_unwrap(self).ok()
    }
}

/// Element data of a tensor.
#[derive(Clone)]
pub enum TensorData {
    /// A byte range of a shared storage: fixed-size types, little-endian, sub-byte types packed.
    Bytes {
        storage: Arc<dyn Storage>,
        offset: usize,
        len: usize,
    },
    /// ONNX strings are byte strings.
    Strings(Arc<[Vec<u8>]>),
}

/// A constant tensor.
#[derive(Clone)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: TensorData,
}

/// Rust element types that map one-to-one to a [`DType`] and can be viewed in place.
pub trait Element: bytemuck::Pod + fmt::Debug + Send + Sync + 'static {
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => { $(impl Element for $t { const DTYPE: DType = DType::$d; })* };
}
element!(f32 => F32, f64 => F64, i8 => I8, i16 => I16, i32 => I32, i64 => I64,
         u8 => U8, u16 => U16, u32 => U32, u64 => U64,
         half::f16 => F16, half::bf16 => BF16);

/// Number of elements of `shape`, or an error if the product overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Result<usize, IrError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| IrError::TooLarge(format!("tensor of shape {shape:?}")))
}

impl Tensor {
    /// A tensor of fixed-size elements from little-endian bytes (copied into an aligned buffer).
    pub fn from_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, IrError> {
        Self::check_len(dtype, &shape, bytes.len())?;
        let len = bytes.len();
        Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Bytes {
                storage: Arc::new(AlignedBuf::from_slice(bytes)),
                offset: 0,
                len,
            },
        })
    }

    /// A tensor owning `buf` (no copy); `buf.len()` must match `dtype` × `shape`.
    pub fn from_buf(dtype: DType, shape: Vec<usize>, buf: AlignedBuf) -> Result<Tensor, IrError> {
        Self::check_len(dtype, &shape, buf.len())?;
        let len = buf.len();
        Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Bytes {
                storage: Arc::new(buf),
                offset: 0,
                len,
            },
        })
    }

    /// The owned buffer of this tensor when nothing else shares it (for reuse).
    pub fn into_buf(self) -> Option<AlignedBuf> {
        match self.data {
            TensorData::Bytes {
                storage, offset: 0, ..
            } => storage.into_aligned_buf(),
            _ => None,
        }
    }

    /// A tensor viewing `len` bytes of `storage` at `offset`, without copying.
    pub fn from_storage(
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<dyn Storage>,
        offset: usize,
        len: usize,
    ) -> Result<Tensor, IrError> {
        Self::check_len(dtype, &shape, len)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| IrError::TooLarge("tensor byte range".into()))?;
        if end > storage.bytes().len() {
            return Err(IrError::Invalid(format!(
                "tensor needs bytes {offset}..{end} but its storage holds {}",
                storage.bytes().len()
            )));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Bytes {
                storage,
                offset,
                len,
            },
        })
    }

    pub fn from_vec<T: Element>(shape: Vec<usize>, v: Vec<T>) -> Result<Tensor, IrError> {
        Self::from_bytes(T::DTYPE, shape, bytemuck::cast_slice(&v))
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(v: T) -> Tensor {
        Self::from_bytes(T::DTYPE, vec![], bytemuck::bytes_of(&v)).expect("one element fits")
    }

    pub fn from_bools(shape: Vec<usize>, v: &[bool]) -> Result<Tensor, IrError> {
        let b: Vec<u8> = v.iter().map(|&x| x as u8).collect();
        Self::from_bytes(DType::Bool, shape, &b)
    }

    pub fn from_strings(shape: Vec<usize>, v: Vec<Vec<u8>>) -> Result<Tensor, IrError> {
        let n = checked_numel(&shape)?;
        if n != v.len() {
            return Err(IrError::Invalid(format!(
                "string tensor of shape {shape:?} needs {n} elements, got {}",
                v.len()
            )));
        }
        Ok(Tensor {
            dtype: DType::String,
            shape,
            data: TensorData::Strings(v.into()),
        })
    }

    /// A tensor of `shape` filled with zero bytes (zero for every numeric type, "" for strings).
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor, IrError> {
        let n = checked_numel(&shape)?;
        if dtype == DType::String {
            return Self::from_strings(shape, vec![Vec::new(); n]);
        }
        let bytes = dtype
            .storage_bytes(n)
            .ok_or_else(|| IrError::TooLarge(format!("tensor of shape {shape:?}")))?;
        Self::from_bytes(dtype, shape, &vec![0u8; bytes])
    }

    fn check_len(dtype: DType, shape: &[usize], len: usize) -> Result<(), IrError> {
        if dtype == DType::String {
            return Err(IrError::Invalid(
                "string tensors are built with Tensor::from_strings".into(),
            ));
        }
        let n = checked_numel(shape)?;
        let need = dtype
            .storage_bytes(n)
            .ok_or_else(|| IrError::TooLarge(format!("tensor of shape {shape:?}")))?;
        if need != len {
            return Err(IrError::Invalid(format!(
                "{dtype} tensor of shape {shape:?} needs {need} bytes, got {len}"
            )));
        }
        Ok(())
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The raw little-endian bytes (empty for string tensors).
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            TensorData::Bytes {
                storage,
                offset,
                len,
            } => &storage.bytes()[*offset..*offset + *len],
            TensorData::Strings(_) => &[],
        }
    }

    pub fn strings(&self) -> Option<&[Vec<u8>]> {
        match &self.data {
            TensorData::Strings(s) => Some(s),
            TensorData::Bytes { .. } => None,
        }
    }

    /// See [`Storage::release`]: for a mapped tensor, returns its resident pages to the OS
    /// (the contents stay readable).
    pub fn release_pages(&self) {
        if let TensorData::Bytes {
            storage,
            offset,
            len,
        } = &self.data
        {
            storage.release(*offset, *len);
        }
    }

    /// True when the bytes are borrowed from a memory map rather than owned.
    pub fn is_mapped(&self) -> bool {
        matches!(&self.data, TensorData::Bytes { storage, .. } if storage.is_mapped())
    }

    /// The elements viewed in place, when `T` is this tensor's type and the bytes are aligned.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        if T::DTYPE != self.dtype {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes()).ok()
    }

    /// The elements copied out, when `T` is this tensor's type (works for unaligned bytes too).
    pub fn to_vec<T: Element>(&self) -> Option<Vec<T>> {
        if T::DTYPE != self.dtype {
            return None;
        }
        Some(bytemuck::pod_collect_to_vec(self.bytes()))
    }

    /// Integer elements widened to i64 (for shape-like tensors: axes, pads, shapes, indices).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = self.bytes();
        Some(match self.dtype {
            DType::I64 => bytemuck::pod_collect_to_vec(b),
            DType::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(b)
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I16 => bytemuck::pod_collect_to_vec::<u8, i16>(b)
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            DType::U8 | DType::Bool => b.iter().map(|&x| x as i64).collect(),
            DType::U16 => bytemuck::pod_collect_to_vec::<u8, u16>(b)
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::U32 => bytemuck::pod_collect_to_vec::<u8, u32>(b)
                .into_iter()
                .map(i64::from)
                .collect(),
            DType::U64 => bytemuck::pod_collect_to_vec::<u8, u64>(b)
                .into_iter()
                .map(|x| x as i64)
                .collect(),
            _ => return None,
        })
    }

    /// Float and integer elements as f64 (for printing, statistics and comparisons).
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        let b = self.bytes();
        Some(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(b)
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::F64 => bytemuck::pod_collect_to_vec(b),
            DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(b)
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(b)
                .into_iter()
                .map(f64::from)
                .collect(),
            _ => self.to_i64_vec()?.into_iter().map(|x| x as f64).collect(),
        })
    }

    /// A tensor with the same elements and another shape of the same element count.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Tensor, IrError> {
        if checked_numel(&shape)? != self.len() {
            return Err(IrError::Invalid(format!(
                "cannot view {:?} as {shape:?}",
                self.shape
            )));
        }
        Ok(Tensor {
            dtype: self.dtype,
            shape,
            data: self.data.clone(),
        })
    }
}

impl PartialEq for Tensor {
    /// Bitwise equality of type, shape and contents.
    fn eq(&self, other: &Tensor) -> bool {
        self.dtype == other.dtype
            && self.shape == other.shape
            && match (&self.data, &other.data) {
                (TensorData::Strings(a), TensorData::Strings(b)) => a == b,
                (TensorData::Bytes { .. }, TensorData::Bytes { .. }) => {
                    self.bytes() == other.bytes()
                }
                _ => false,
            }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)?;
        if self.len() <= 8 {
            if let Some(s) = self.strings() {
                let s: Vec<_> = s.iter().map(|x| String::from_utf8_lossy(x)).collect();
                write!(f, " {s:?}")?;
            } else if let Some(v) = self.to_f64_vec() {
                write!(f, " {v:?}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_in_place_and_rejects_wrong_type() {
        let t = Tensor::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, 2.0, 3.0, 4.0]);
        assert!(t.as_slice::<i32>().is_none());
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn rejects_wrong_byte_count_and_overflowing_shape() {
        assert!(Tensor::from_bytes(DType::F32, vec![3], &[0; 8]).is_err());
        assert!(matches!(
            Tensor::from_bytes(DType::F32, vec![usize::MAX, 2], &[]),
            Err(IrError::TooLarge(_))
        ));
    }

    #[test]
    fn storage_range_is_checked() {
        let st: Arc<dyn Storage> = Arc::new(AlignedBuf::from_slice(&[0u8; 16]));
        assert!(Tensor::from_storage(DType::F32, vec![4], st.clone(), 0, 16).is_ok());
        assert!(Tensor::from_storage(DType::F32, vec![4], st.clone(), 4, 16).is_err());
        assert!(Tensor::from_storage(DType::F32, vec![4], st, usize::MAX, 16).is_err());
    }
}
