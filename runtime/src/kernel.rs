//! The kernel interface.

use kiln_ir::tensor::checked_numel;
use kiln_ir::{AlignedBuf, DType, Element, Graph, Tensor, Type};

use crate::error::KernelError;
use crate::value::Value;

/// One op, ready to run. Built once per node when a plan is compiled (attributes parsed,
/// constant inputs pre-processed), then run any number of times, from any thread.
pub trait Kernel: Send + Sync {
    /// Runs the op. `inputs` holds the node's inputs (`None` where omitted) followed by the
    /// outer values its subgraphs capture. Returns one value per node output; a kernel may
    /// return fewer when trailing optional outputs are not produced.
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError>;

    /// The algorithm chosen at build, for ops that have several (`Conv`: `"winograd"`, or
    /// `"gemm"` for im2col + GEMM, which includes the direct depthwise kernel that the run
    /// picks from the weights' shape); `None` for the others.
    fn algorithm(&self) -> Option<&'static str> {
        None
    }
}

/// What a kernel builder knows about the node at compile time.
pub struct BuildCx<'a> {
    /// Types of the node's inputs (as inferred), `None` where omitted or unknown.
    pub input_types: Vec<Option<&'a Type>>,
    /// Values of constant inputs.
    pub const_inputs: Vec<Option<&'a Tensor>>,
    /// Types of the node's outputs.
    pub output_types: Vec<Option<&'a Type>>,
    /// The graph the node belongs to (for ops that look further, e.g. at subgraphs).
    pub graph: &'a Graph,
}

/// Per-run state handed to kernels: a pool of buffers freed by earlier steps.
#[derive(Default)]
pub struct RunCx {
    pool: Vec<AlignedBuf>,
    /// Bytes of buffers handed out that came from the pool (for tests of reuse).
    pub reused_bytes: usize,
    /// When set, the executor adds each step's wall time here, by op type.
    pub profile: Option<Profile>,
}

/// Wall time per op type over one or more runs (`kiln bench --profile`).
#[derive(Default, Clone, Debug)]
pub struct Profile {
    /// op type → (total seconds, number of steps run).
    pub by_op: std::collections::HashMap<String, (f64, u64)>,
    /// Key by op type and input shapes rather than op type alone.
    pub by_shape: bool,
}

impl Profile {
    /// Entries sorted by total time, largest first.
    pub fn sorted(&self) -> Vec<(&str, f64, u64)> {
        let mut v: Vec<(&str, f64, u64)> = self
            .by_op
            .iter()
            .map(|(k, &(t, n))| (k.as_str(), t, n))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// Buffers larger than this many times the request are not handed out, so a small
/// tensor does not pin a large allocation.
const POOL_SLACK: usize = 4;
const POOL_MAX: usize = 64;

impl RunCx {
    pub fn new() -> RunCx {
        RunCx::default()
    }

    /// Whether the pool holds any buffer.
    pub fn has_pool(&self) -> bool {
        !self.pool.is_empty()
    }

    /// Replaces the pool (with buffers an earlier run freed).
    pub fn set_pool(&mut self, pool: Vec<AlignedBuf>) {
        self.pool = pool;
    }

    /// Takes the pool out, leaving it empty.
    pub fn take_pool(&mut self) -> Vec<AlignedBuf> {
        std::mem::take(&mut self.pool)
    }

    /// A zeroed buffer of `bytes` bytes, reusing a pooled allocation when one fits.
    pub fn alloc(&mut self, bytes: usize) -> AlignedBuf {
        match self.take_pooled(bytes) {
            Some(mut b) => {
                b.resize(0);
                b.resize(bytes);
                b
            }
            None => AlignedBuf::zeroed(bytes),
        }
    }

    /// A buffer of `bytes` bytes whose contents are unspecified (a pooled buffer keeps its
    /// old data), for outputs the caller overwrites entirely.
    pub fn alloc_dirty(&mut self, bytes: usize) -> AlignedBuf {
        match self.take_pooled(bytes) {
            Some(mut b) => {
                b.resize_stale(bytes);
                b
            }
            None => AlignedBuf::zeroed(bytes),
        }
    }

    /// The smallest pooled buffer that holds `bytes` without pinning far more.
    fn take_pooled(&mut self, bytes: usize) -> Option<AlignedBuf> {
        let best = self
            .pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= bytes && b.capacity() <= bytes.max(64) * POOL_SLACK)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        self.reused_bytes += bytes;
        Some(self.pool.swap_remove(best))
    }

    /// Returns a dead value's buffers to the pool.
    pub fn recycle(&mut self, v: Value) {
        match v {
            Value::Tensor(t) => self.recycle_tensor(t),
            Value::Sequence(ts) => ts.into_iter().for_each(|t| self.recycle_tensor(t)),
            Value::Optional(Some(v)) => self.recycle(*v),
            Value::Optional(None) => {}
        }
    }

    fn recycle_tensor(&mut self, t: Tensor) {
        if let Some(b) = t.into_buf() {
            if b.capacity() > 0 && self.pool.len() < POOL_MAX {
                self.pool.push(b);
            }
        }
    }

    /// A new tensor of `shape` whose elements `fill` writes.
    pub fn tensor<T: Element>(
        &mut self,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [T]),
    ) -> Result<Tensor, KernelError> {
        self.filled(T::DTYPE, shape, false, |b| {
            fill(bytemuck::cast_slice_mut(b))
        })
    }

    /// [`RunCx::tensor`] for a `fill` that writes every element: the buffer is not cleared
    /// first, so `fill` sees unspecified values (never uninitialized memory).
    pub fn tensor_dirty<T: Element>(
        &mut self,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [T]),
    ) -> Result<Tensor, KernelError> {
        self.filled(T::DTYPE, shape, true, |b| fill(bytemuck::cast_slice_mut(b)))
    }

    /// A new tensor of any fixed-size `dtype` whose raw bytes `fill` writes.
    pub fn tensor_bytes(
        &mut self,
        dtype: DType,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Tensor, KernelError> {
        self.filled(dtype, shape, false, fill)
    }

    /// [`RunCx::tensor_bytes`] for a `fill` that writes every byte (see [`RunCx::tensor_dirty`]).
    pub fn tensor_bytes_dirty(
        &mut self,
        dtype: DType,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Tensor, KernelError> {
        self.filled(dtype, shape, true, fill)
    }

    /// A tensor of `dtype` and `shape` on a pooled buffer (zeroed unless `dirty`) that
    /// `fill` writes.
    fn filled(
        &mut self,
        dtype: DType,
        shape: Vec<usize>,
        dirty: bool,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Tensor, KernelError> {
        let n = checked_numel(&shape)?;
        let bytes = dtype.storage_bytes(n).ok_or_else(|| {
            KernelError::Invalid(format!("tensor of shape {shape:?} is too large"))
        })?;
        let mut buf = if dirty {
            self.alloc_dirty(bytes)
        } else {
            self.alloc(bytes)
        };
        fill(buf.as_bytes_mut());
        Ok(Tensor::from_buf(dtype, shape, buf)?)
    }
}

/// Input `i` as a tensor (error if omitted or not a tensor).
pub fn tensor_input<'a>(inputs: &[Option<&'a Value>], i: usize) -> Result<&'a Tensor, KernelError> {
    match inputs.get(i).copied().flatten() {
        Some(Value::Tensor(t)) => Ok(t),
        Some(v) => Err(KernelError::Invalid(format!(
            "input {i} must be a tensor, got {}",
            v.describe()
        ))),
        None => Err(KernelError::Invalid(format!("input {i} is required"))),
    }
}

/// Input `i` as a tensor, `None` if omitted.
pub fn opt_tensor_input<'a>(
    inputs: &[Option<&'a Value>],
    i: usize,
) -> Result<Option<&'a Tensor>, KernelError> {
    match inputs.get(i).copied().flatten() {
        None => Ok(None),
        Some(Value::Tensor(t)) => Ok(Some(t)),
        Some(v) => Err(KernelError::Invalid(format!(
            "input {i} must be a tensor, got {}",
            v.describe()
        ))),
    }
}
