//! A chain of f32 elementwise ops run as one loop ([`FusedMap`]): the compiler's loop fusion of
//! an expression like Gelu's `x · 0.5 · (1 + erf(x / √2))` when the graph spells it out op by
//! op. Unfused, each op is a pass over memory; fused, the inputs are read once, in chunks
//! that stay in L1, and only the result is written.
//!
//! The same programs run in two other places: in a GEMM's store ([`MapEpilogue`], a chain
//! that alone reads a GEMM's result), and row by row ([`RowMap`], a chain around row means,
//! as a LayerNorm spelled out is).
//!
//! Every op computes exactly what its standalone kernel computes (the same `erf`, `x·x` for
//! `Pow(x, 2)`, the row sum of `ReduceMean`, ...), element by element, so fusing changes no
//! bit of the result.

use kiln_ir::{DType, Tensor};

use super::{new_tensor, view};
use crate::error::KernelError;
use crate::gemm::{vmath, EpilogueMap};
use crate::kernel::{Kernel, RunCx};
use crate::kernels::par::for_chunks_weighted;
use crate::kernels::reduce::sum_f32;
use crate::kernels::util::broadcast_shapes;
use crate::value::Value;

/// One instruction of a [`MapProgram`]. Operands are register numbers: registers
/// `0..inputs` hold the kernel's inputs (broadcast to the output), instruction `i` writes
/// register `inputs + i`. Booleans are `1.0` / `0.0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MapOp {
    Add(u16, u16),
    Sub(u16, u16),
    Mul(u16, u16),
    Div(u16, u16),
    /// `Pow` by a constant scalar exponent.
    Pow(u16, f32),
    Sqrt(u16),
    Erf(u16),
    Exp(u16),
    Tanh(u16),
    Sigmoid(u16),
    Neg(u16),
    Abs(u16),
    Relu(u16),
    IsNaN(u16),
    /// `Where(cond, a, b)`.
    Where(u16, u16, u16),
    /// The mean of a whole row (`ReduceMean` over the last axis, kept): only in a
    /// [`RowMap`], whose registers are rows.
    MeanRow(u16),
}

impl MapOp {
    fn operands(self) -> Vec<u16> {
        use MapOp::*;
        match self {
            Add(a, b) | Sub(a, b) | Mul(a, b) | Div(a, b) => vec![a, b],
            Pow(a, _)
            | Sqrt(a)
            | Erf(a)
            | Exp(a)
            | Tanh(a)
            | Sigmoid(a)
            | Neg(a)
            | Abs(a)
            | Relu(a)
            | IsNaN(a)
            | MeanRow(a) => vec![a],
            Where(c, a, b) => vec![c, a, b],
        }
    }
}

/// A fused elementwise expression: `inputs` tensors (f32, or bool read as 0/1) in, the last
/// register out (f32, or bool when the last op is `IsNaN`).
#[derive(Clone, Debug, PartialEq)]
pub struct MapProgram {
    pub inputs: usize,
    pub ops: Vec<MapOp>,
}

impl MapProgram {
    /// Checks that every operand names an earlier register and that there is a result.
    pub fn validate(&self) -> Result<(), KernelError> {
        if self.ops.is_empty() {
            return Err(KernelError::Invalid("a fused map with no ops".into()));
        }
        for (i, op) in self.ops.iter().enumerate() {
            if op.operands().iter().any(|&r| r as usize >= self.inputs + i) {
                return Err(KernelError::Invalid(format!(
                    "fused map op {i} ({op:?}) reads a register not yet written"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn out_bool(&self) -> bool {
        matches!(self.ops.last(), Some(MapOp::IsNaN(_)))
    }

    /// For kernels that run the program on pieces of rows: a row mean needs whole rows.
    pub(crate) fn no_row_means(&self) -> Result<(), KernelError> {
        if self.ops.iter().any(|o| matches!(o, MapOp::MeanRow(_))) {
            return Err(KernelError::Invalid(
                "a row mean outside a row-wise fused map".into(),
            ));
        }
        Ok(())
    }
}

/// The kernel of a [`MapProgram`].
pub struct FusedMap(MapProgram);

impl FusedMap {
    pub fn new(prog: MapProgram) -> Result<FusedMap, KernelError> {
        prog.validate()?;
        prog.no_row_means()?;
        Ok(FusedMap(prog))
    }
}

/// Elements per register: a chunk of every register stays in L1 together.
const CH: usize = 256;

/// Where input `k` comes from for the current piece of output.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    F32(&'a [f32]),
    Bool(&'a [u8]),
}

impl Kernel for FusedMap {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let p = &self.0;
        if inputs.len() != p.inputs {
            return Err(KernelError::Invalid(format!(
                "fused map: {} inputs, the program takes {}",
                inputs.len(),
                p.inputs
            )));
        }
        let mut ts: Vec<&Tensor> = Vec::with_capacity(inputs.len());
        for (i, v) in inputs.iter().enumerate() {
            match v {
                Some(Value::Tensor(t)) if matches!(t.dtype(), DType::F32 | DType::Bool) => {
                    ts.push(t)
                }
                Some(Value::Tensor(t)) => {
                    return Err(KernelError::Invalid(format!(
                        "fused map input {i} is {}, not f32 or bool",
                        t.dtype()
                    )))
                }
                _ => {
                    return Err(KernelError::Invalid(format!(
                        "fused map input {i} is missing"
                    )))
                }
            }
        }
        let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
        let out_shape = broadcast_shapes(&shapes)?;
        let data: Vec<Cow32> = ts
            .iter()
            .map(|t| {
                Ok(if t.dtype() == DType::Bool {
                    Cow32::Bool(view::<u8>(t)?)
                } else {
                    Cow32::F32(view::<f32>(t)?)
                })
            })
            .collect::<Result<_, KernelError>>()?;
        let layout = Layout::new(&out_shape, &shapes);
        let n: usize = out_shape.iter().product();
        let srcs: Vec<Src> = data.iter().map(|d| d.src()).collect();
        let run = |start: usize, out: &mut [f32]| chunk(p, &layout, &srcs, start, out);
        let weight = p.ops.len() + p.inputs;
        let out = if p.out_bool() {
            // Rare (a fused chain ending in IsNaN): through an f32 buffer.
            let mut tmp = vec![0f32; n];
            for_chunks_weighted(&mut tmp, layout.unit(), weight, run);
            new_tensor::<u8>(cx, DType::Bool, out_shape, |o| {
                for (o, &v) in o.iter_mut().zip(&tmp) {
                    *o = (v != 0.0) as u8;
                }
            })?
        } else {
            new_tensor::<f32>(cx, DType::F32, out_shape, |o| {
                for_chunks_weighted(o, layout.unit(), weight, run)
            })?
        };
        Ok(vec![Value::Tensor(out)])
    }
}

enum Cow32<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    Bool(std::borrow::Cow<'a, [u8]>),
}

impl Cow32<'_> {
    fn src(&self) -> Src<'_> {
        match self {
            Cow32::F32(x) => Src::F32(x),
            Cow32::Bool(x) => Src::Bool(x),
        }
    }
}

/// How the inputs map onto the output: the output as rows of `row` elements (the longest
/// suffix of its dims over which every input is either whole or broadcast); within a row
/// each input is contiguous (`Some(offset)`) or one repeated element (`None`).
struct Layout {
    row: usize,
    /// Per input: its strides over the output's dims (0 where broadcast).
    strides: Vec<Vec<usize>>,
    /// Per input: contiguous along the row (else constant along it).
    along: Vec<bool>,
    out: Vec<usize>,
}

impl Layout {
    fn new(out: &[usize], shapes: &[&[usize]]) -> Layout {
        let r = out.len();
        let strides: Vec<Vec<usize>> = shapes
            .iter()
            .map(|s| {
                // Right-aligned, as broadcasting aligns dims.
                let mut st = vec![0usize; r];
                let mut acc = 1;
                for k in (0..s.len()).rev() {
                    let ok = r - s.len() + k;
                    st[ok] = if s[k] == 1 { 0 } else { acc };
                    acc *= s[k];
                }
                st
            })
            .collect();
        // Grow the row over trailing dims while every input stays whole or broadcast.
        let mut row = 1;
        let mut along: Vec<Option<bool>> = vec![None; shapes.len()];
        for ax in (0..r).rev() {
            if out[ax] == 1 {
                continue;
            }
            let ok = strides.iter().zip(&along).all(|(st, a)| {
                let full = st[ax] == row;
                let bcast = st[ax] == 0;
                match a {
                    None => full || bcast,
                    Some(true) => full,
                    Some(false) => bcast,
                }
            });
            if !ok {
                break;
            }
            for (st, a) in strides.iter().zip(along.iter_mut()) {
                if a.is_none() {
                    *a = Some(st[ax] != 0);
                }
            }
            row *= out[ax];
        }
        Layout {
            row,
            along: along.into_iter().map(|a| a.unwrap_or(false)).collect(),
            strides,
            out: out.to_vec(),
        }
    }

    /// Work is split in whole registers (a piece may start anywhere in a row).
    fn unit(&self) -> usize {
        CH
    }

    /// Offset in input `k` of output element `flat`.
    #[inline(always)]
    fn offset(&self, k: usize, mut flat: usize) -> usize {
        let mut off = 0;
        for ax in (0..self.out.len()).rev() {
            let d = self.out[ax];
            off += (flat % d) * self.strides[k][ax];
            flat /= d;
        }
        off
    }
}

/// Runs `p` over a whole output of `out_shape` into `out`, on the calling thread (for
/// callers that already spread their work over threads). Input `k` is `srcs[k]`, of shape
/// `shapes[k]`, which must broadcast to `out_shape` without enlarging it.
pub(crate) fn eval_into(
    p: &MapProgram,
    srcs: &[Src],
    shapes: &[&[usize]],
    out_shape: &[usize],
    out: &mut [f32],
) {
    let layout = Layout::new(out_shape, shapes);
    chunk(p, &layout, srcs, 0, out)
}

/// Computes output elements `start..start + out.len()` into `out`.
fn chunk(p: &MapProgram, layout: &Layout, srcs: &[Src], start: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chunk_avx2(p: &MapProgram, l: &Layout, srcs: &[Src], start: usize, out: &mut [f32]) {
        chunk_base(p, l, srcs, start, out)
    }
    #[cfg(target_arch = "x86_64")]
    if vmath::has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { chunk_avx2(p, layout, srcs, start, out) };
    }
    chunk_base(p, layout, srcs, start, out)
}

/// Per piece: the inputs into their registers, the program, the last register out.
#[inline(always)]
fn chunk_base(p: &MapProgram, layout: &Layout, srcs: &[Src], start: usize, out: &mut [f32]) {
    let nregs = p.inputs + p.ops.len();
    let mut regs = vec![0f32; nregs * CH];
    // A plain loop, not a closure handed to a helper: a closure body is compiled out of line,
    // without this function's AVX2.
    let mut o = 0;
    while o < out.len() {
        let flat = start + o;
        let len = CH.min(layout.row - flat % layout.row).min(out.len() - o);
        for (k, src) in srcs.iter().enumerate() {
            let r = &mut regs[k * CH..k * CH + len];
            let off = layout.offset(k, flat);
            match (*src, layout.along[k]) {
                (Src::F32(x), true) => r.copy_from_slice(&x[off..off + len]),
                (Src::F32(x), false) => r.fill(x[off]),
                (Src::Bool(x), true) => {
                    let x = &x[off..off + len];
                    for i in 0..len {
                        r[i] = if x[i] != 0 { 1.0 } else { 0.0 };
                    }
                }
                (Src::Bool(x), false) => r.fill(if x[off] != 0 { 1.0 } else { 0.0 }),
            }
        }
        eval_base(p, &mut regs, len);
        let res = &regs[(nregs - 1) * CH..(nregs - 1) * CH + len];
        out[o..o + len].copy_from_slice(res);
        o += len;
    }
}

/// A [`MapProgram`] run in a GEMM's store (an [`EpilogueMap`]): register 0 is the GEMM's
/// result, every other input a scalar constant. Each element goes through the same arithmetic
/// as in [`FusedMap`], so moving the chain into the GEMM changes no bit of the result.
#[derive(Debug)]
pub struct MapEpilogue {
    prog: MapProgram,
    scalars: Vec<f32>,
}

impl MapEpilogue {
    /// `scalars` are the values of the program's inputs after the first; the program must
    /// compute an f32.
    pub fn new(prog: MapProgram, scalars: Vec<f32>) -> Result<MapEpilogue, KernelError> {
        prog.validate()?;
        prog.no_row_means()?;
        if prog.inputs != scalars.len() + 1 {
            return Err(KernelError::Invalid(format!(
                "a GEMM epilogue map of {} inputs given {} scalars",
                prog.inputs,
                scalars.len()
            )));
        }
        if prog.out_bool() {
            return Err(KernelError::Invalid(
                "a GEMM epilogue map must compute an f32".into(),
            ));
        }
        Ok(MapEpilogue { prog, scalars })
    }
}

thread_local! {
    /// The registers of the epilogue maps run on this thread: allocated once, not per panel.
    static EPI_REGS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl EpilogueMap for MapEpilogue {
    unsafe fn apply(&self, c: *mut f32, ld: usize, rows: usize, cols: usize) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn apply_avx2(
            e: &MapEpilogue,
            regs: &mut [f32],
            c: *mut f32,
            ld: usize,
            rows: usize,
            cols: usize,
        ) {
            apply_base(e, regs, c, ld, rows, cols)
        }
        if rows == 0 || cols == 0 {
            return;
        }
        EPI_REGS.with(|r| {
            let mut regs = r.borrow_mut();
            let need = (self.prog.inputs + self.prog.ops.len()) * CH;
            if regs.len() < need {
                regs.resize(need, 0.0);
            }
            #[cfg(target_arch = "x86_64")]
            if vmath::has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA; the caller vouches for `c`.
                return apply_avx2(self, &mut regs, c, ld, rows, cols);
            }
            apply_base(self, &mut regs, c, ld, rows, cols)
        })
    }
}

/// Gathers `C`'s elements into register 0 a piece at a time (whole rows when they are
/// shorter than a register: a GEMM panel is 16 wide), runs the program, scatters the result.
///
/// # Safety
/// As [`EpilogueMap::apply`]; `regs` holds every register.
#[inline(always)]
unsafe fn apply_base(
    e: &MapEpilogue,
    regs: &mut [f32],
    c: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
) {
    let p = &e.prog;
    let last = p.inputs + p.ops.len() - 1;
    // The program never writes its inputs: the scalars are filled once per call.
    for (k, &v) in e.scalars.iter().enumerate() {
        regs[(k + 1) * CH..(k + 2) * CH].fill(v);
    }
    // Helpers, not closures: a closure is compiled out of line, without AVX2.
    if cols >= CH {
        for i in 0..rows {
            let mut j = 0;
            while j < cols {
                let n = CH.min(cols - j);
                epi_piece(p, regs, &[(c.add(i * ld + j), n)], last);
                j += n;
            }
        }
        return;
    }
    let per = CH / cols;
    let mut segs = [(std::ptr::null_mut::<f32>(), 0usize); CH];
    let mut i = 0;
    while i < rows {
        let r = per.min(rows - i);
        for (q, s) in segs[..r].iter_mut().enumerate() {
            *s = (c.add((i + q) * ld), cols);
        }
        epi_piece(p, regs, &segs[..r], last);
        i += r;
    }
}

/// One piece of [`apply_base`]: the segments `src` (at most `CH` elements in all) through
/// the program, in place.
#[inline(always)]
unsafe fn epi_piece(p: &MapProgram, regs: &mut [f32], src: &[(*mut f32, usize)], last: usize) {
    let mut len = 0;
    for &(ptr, n) in src {
        std::ptr::copy_nonoverlapping(ptr, regs[len..].as_mut_ptr(), n);
        len += n;
    }
    eval_base(p, regs, len);
    let mut off = last * CH;
    for &(ptr, n) in src {
        std::ptr::copy_nonoverlapping(regs[off..].as_ptr(), ptr, n);
        off += n;
    }
}

/// A [`MapProgram`] run row by row over the last axis, so that it may hold row means
/// ([`MapOp::MeanRow`]): the loop fusion of a normalization spelled out op by op (LayerNorm
/// at -O1: `ReduceMean`, `Sub`, `Pow`, `ReduceMean`, `Add`, `Sqrt`, `Div`, `Mul`, `Add`, and
/// the residual `Add` before it), one pass over each row instead of one per op. Every input
/// is the output's shape (a row of it per row), one value per row (`[…, 1]`), one row for
/// all (`[C]`), or one value; each op computes what its standalone kernel computes, so
/// fusing changes no bit.
pub struct RowMap {
    prog: MapProgram,
    /// Per register: one value per row (else a whole row).
    per_row: Vec<bool>,
    /// Per register computed as whole rows (but the last, written straight to the output):
    /// its row in the scratch rows.
    slot: Vec<usize>,
    slots: usize,
}

/// How a [`RowMap`] input maps onto the output's rows.
#[derive(Clone, Copy, PartialEq, Debug)]
enum RowIn {
    /// The output's shape: row `i` at `i·C`.
    Rows,
    /// One value per row: row `i`'s at `i`.
    PerRow,
    /// `[C]` (after leading 1s): the same row for every row.
    OneRow,
    /// One value.
    One,
}

impl RowMap {
    /// `per_row_inputs[k]`: input `k` holds one value per row (or one in all), not rows.
    pub fn new(prog: MapProgram, per_row_inputs: &[bool]) -> Result<RowMap, KernelError> {
        prog.validate()?;
        if prog.out_bool()
            || prog
                .ops
                .iter()
                .any(|o| matches!(o, MapOp::IsNaN(_) | MapOp::Where(..)))
        {
            return Err(KernelError::Invalid(
                "a row-wise fused map computes f32 from f32 only".into(),
            ));
        }
        if per_row_inputs.len() != prog.inputs {
            return Err(KernelError::Invalid(format!(
                "a row-wise fused map of {} inputs given {} input kinds",
                prog.inputs,
                per_row_inputs.len()
            )));
        }
        let n = prog.inputs + prog.ops.len();
        let mut per_row = per_row_inputs.to_vec();
        for op in &prog.ops {
            let one = match op {
                MapOp::MeanRow(_) => true,
                _ => op.operands().iter().all(|&r| per_row[r as usize]),
            };
            per_row.push(one);
        }
        if per_row[n - 1] {
            return Err(KernelError::Invalid(
                "a row-wise fused map must compute whole rows".into(),
            ));
        }
        let mut slot = vec![usize::MAX; n];
        let mut slots = 0;
        for d in prog.inputs..n - 1 {
            if !per_row[d] {
                slot[d] = slots;
                slots += 1;
            }
        }
        Ok(RowMap {
            prog,
            per_row,
            slot,
            slots,
        })
    }
}

impl Kernel for RowMap {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let p = &self.prog;
        if inputs.len() != p.inputs {
            return Err(KernelError::Invalid(format!(
                "row-wise fused map: {} inputs, the program takes {}",
                inputs.len(),
                p.inputs
            )));
        }
        let mut ts: Vec<&Tensor> = Vec::with_capacity(inputs.len());
        for (i, v) in inputs.iter().enumerate() {
            match v {
                Some(Value::Tensor(t)) if t.dtype() == DType::F32 => ts.push(t),
                _ => {
                    return Err(KernelError::Invalid(format!(
                        "row-wise fused map input {i} is missing or not f32"
                    )))
                }
            }
        }
        let shapes: Vec<&[usize]> = ts.iter().map(|t| t.shape()).collect();
        let out_shape = broadcast_shapes(&shapes)?;
        let c = out_shape.last().copied().unwrap_or(1);
        let r = out_shape.len();
        let kinds: Vec<RowIn> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let pad = r - s.len();
                let dim = |ax: usize| if ax < pad { 1 } else { s[ax - pad] };
                let lead_full = (0..r.saturating_sub(1)).all(|ax| dim(ax) == out_shape[ax]);
                let lead_one = (0..r.saturating_sub(1)).all(|ax| dim(ax) == 1);
                let last = if r == 0 { 1 } else { dim(r - 1) };
                let kind = match (last == c, last == 1, lead_full, lead_one) {
                    (true, _, true, _) if !self.per_row[k] => RowIn::Rows,
                    (true, _, _, true) if !self.per_row[k] => RowIn::OneRow,
                    (_, true, true, _) if self.per_row[k] => RowIn::PerRow,
                    (_, true, _, true) => RowIn::One,
                    _ => {
                        return Err(KernelError::Invalid(format!(
                            "row-wise fused map input {k} of shape {s:?} is neither rows, a \
                             value per row, one row nor one value of the output {out_shape:?}"
                        )))
                    }
                };
                Ok(kind)
            })
            .collect::<Result<_, KernelError>>()?;
        let data: Vec<std::borrow::Cow<[f32]>> = ts
            .iter()
            .map(|t| view::<f32>(t))
            .collect::<Result<_, _>>()?;
        let srcs: Vec<&[f32]> = data.iter().map(|d| &d[..]).collect();
        let nregs = p.inputs + p.ops.len();
        let out = new_tensor::<f32>(cx, DType::F32, out_shape, |o| {
            if c == 0 {
                return;
            }
            for_chunks_weighted(o, c, nregs, |start, o| {
                self.rows(&kinds, &srcs, c, start / c, o)
            })
        })?;
        Ok(vec![Value::Tensor(out)])
    }
}

impl RowMap {
    /// Rows `row0..` of the output into `out` (whole rows of `c`).
    fn rows(&self, kinds: &[RowIn], srcs: &[&[f32]], c: usize, row0: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn rows_avx2(
            m: &RowMap,
            kinds: &[RowIn],
            srcs: &[&[f32]],
            c: usize,
            row0: usize,
            out: &mut [f32],
        ) {
            rows_base(m, kinds, srcs, c, row0, out)
        }
        #[cfg(target_arch = "x86_64")]
        if vmath::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { rows_avx2(self, kinds, srcs, c, row0, out) };
        }
        rows_base(self, kinds, srcs, c, row0, out)
    }
}

#[inline(always)]
fn rows_base(m: &RowMap, kinds: &[RowIn], srcs: &[&[f32]], c: usize, row0: usize, out: &mut [f32]) {
    let p = &m.prog;
    let n = p.inputs + p.ops.len();
    // Rows of the intermediate values: only these live in scratch (inputs are read where
    // they are, the result is written where it goes), so a LayerNorm's stay in L1.
    let mut scratch = vec![0f32; m.slots * c];
    // The values that are one per row, by register.
    let mut ones = vec![0f32; n];
    for (i, out) in out.chunks_exact_mut(c).enumerate() {
        let row = row0 + i;
        for (k, (&kind, src)) in kinds.iter().zip(srcs).enumerate() {
            match kind {
                RowIn::PerRow => ones[k] = src[row],
                RowIn::One => ones[k] = src[0],
                _ => {}
            }
        }
        for (j, &op) in p.ops.iter().enumerate() {
            let d = p.inputs + j;
            // Operands are earlier registers, in lower slots: split so the destination's
            // slot (none for a value per row or the result) is borrowed mutably.
            let at = if m.per_row[d] || d == n - 1 {
                m.slots
            } else {
                m.slot[d]
            };
            let (lo, hi) = scratch.split_at_mut(at * c);
            let ones_now = &ones;
            let r = |k: u16| {
                let k = k as usize;
                if k < p.inputs {
                    match kinds[k] {
                        RowIn::Rows => Opd::Row(&srcs[k][row * c..(row + 1) * c]),
                        RowIn::OneRow => Opd::Row(&srcs[k][..c]),
                        RowIn::PerRow | RowIn::One => Opd::One(ones_now[k]),
                    }
                } else if m.per_row[k] {
                    Opd::One(ones_now[k])
                } else {
                    Opd::Row(&lo[m.slot[k] * c..(m.slot[k] + 1) * c])
                }
            };
            if m.per_row[d] {
                let mut v = 0.0;
                apply_op(op, Dst::One(&mut v), r);
                ones[d] = v;
            } else if d == n - 1 {
                apply_op(op, Dst::Row(&mut *out), r);
            } else {
                apply_op(op, Dst::Row(&mut hi[..c]), r);
            }
        }
    }
}

/// Runs the program over the first `len` elements of every register.
#[inline(always)]
fn eval_base(p: &MapProgram, regs: &mut [f32], len: usize) {
    for (i, &op) in p.ops.iter().enumerate() {
        eval_op(op, p.inputs + i, regs, CH, len);
    }
}

/// Runs `op` into register `d` over the first `len` elements of registers `stride` apart.
#[inline(always)]
fn eval_op(op: MapOp, d: usize, regs: &mut [f32], stride: usize, len: usize) {
    // Operands are earlier registers: split so the destination is borrowed mutably.
    let (src, dst) = regs.split_at_mut(d * stride);
    let r = |k: u16| Opd::Row(&src[k as usize * stride..k as usize * stride + len]);
    apply_op(op, Dst::Row(&mut dst[..len]), r);
}

/// An operand: a row of values, or one value that stands for a whole row.
#[derive(Clone, Copy)]
enum Opd<'a> {
    Row(&'a [f32]),
    One(f32),
}

impl Opd<'_> {
    #[inline(always)]
    fn first(self) -> f32 {
        match self {
            Opd::Row(a) => a[0],
            Opd::One(x) => x,
        }
    }
}

/// Where an op writes: a row, or one value.
enum Dst<'a> {
    Row(&'a mut [f32]),
    One(&'a mut f32),
}

/// The arithmetic of every op, once, for every kind of operand (the loops over rows
/// vectorize; an operand of one value is a register-held constant).
#[inline(always)]
fn apply_op<'a>(op: MapOp, dst: Dst, r: impl Fn(u16) -> Opd<'a>) {
    use MapOp::*;
    match op {
        Add(a, b) => bin(dst, r(a), r(b), |x, y| x + y),
        Sub(a, b) => bin(dst, r(a), r(b), |x, y| x - y),
        Mul(a, b) => bin(dst, r(a), r(b), |x, y| x * y),
        Div(a, b) => bin(dst, r(a), r(b), |x, y| x / y),
        Pow(a, e) if e == 2.0 => un(dst, r(a), |x| x * x),
        Pow(a, e) if e == 3.0 => un(dst, r(a), |x| x * x * x),
        Pow(a, e) => un(dst, r(a), |x| x.powf(e)),
        Sqrt(a) => un(dst, r(a), f32::sqrt),
        Erf(a) => un(dst, r(a), vmath::erf),
        Exp(a) => un(dst, r(a), f32::exp),
        Tanh(a) => un(dst, r(a), vmath::tanh),
        Sigmoid(a) => un(dst, r(a), |v| 1.0 / (1.0 + vmath::exp(-v))),
        Neg(a) => un(dst, r(a), |x| -x),
        Abs(a) => un(dst, r(a), f32::abs),
        Relu(a) => un(dst, r(a), |x| if x < 0.0 { 0.0 } else { x }),
        // Selects, not branches, so that the loops vectorize.
        IsNaN(a) => un(dst, r(a), |x| if x.is_nan() { 1.0 } else { 0.0 }),
        Where(c, a, b) => match (dst, r(c), r(a), r(b)) {
            (Dst::Row(dst), Opd::Row(c), Opd::Row(x), Opd::Row(y)) => {
                let (c, x, y) = (&c[..dst.len()], &x[..dst.len()], &y[..dst.len()]);
                for i in 0..dst.len() {
                    // Both loaded first: a select, where loads under the condition compile to a
                    // branch per element.
                    let (xv, yv) = (x[i], y[i]);
                    dst[i] = if c[i] != 0.0 { xv } else { yv };
                }
            }
            (dst, c, x, y) => {
                let at = |o: Opd, i: usize| match o {
                    Opd::Row(v) => v[i],
                    Opd::One(v) => v,
                };
                match dst {
                    Dst::Row(d) => {
                        for (i, d) in d.iter_mut().enumerate() {
                            *d = if at(c, i) != 0.0 { at(x, i) } else { at(y, i) };
                        }
                    }
                    Dst::One(d) => {
                        *d = if c.first() != 0.0 {
                            x.first()
                        } else {
                            y.first()
                        }
                    }
                }
            }
        },
        // As the ReduceMean kernel computes it, so that fusing changes no bit.
        MeanRow(a) => {
            let mean = match r(a) {
                Opd::Row(a) => sum_f32(a) / a.len() as f32,
                Opd::One(x) => x,
            };
            match dst {
                Dst::Row(d) => d.fill(mean),
                Dst::One(d) => *d = mean,
            }
        }
    }
}

#[inline(always)]
fn un(dst: Dst, a: Opd, f: impl Fn(f32) -> f32) {
    match (dst, a) {
        (Dst::Row(d), Opd::Row(a)) => map1(d, a, f),
        (Dst::Row(d), Opd::One(x)) => d.fill(f(x)),
        (Dst::One(d), a) => *d = f(a.first()),
    }
}

#[inline(always)]
fn bin(dst: Dst, a: Opd, b: Opd, f: impl Fn(f32, f32) -> f32) {
    match dst {
        Dst::Row(d) => match (a, b) {
            (Opd::Row(a), Opd::Row(b)) => zip2(d, a, b, f),
            (Opd::Row(a), Opd::One(y)) => map1(d, a, |x| f(x, y)),
            (Opd::One(x), Opd::Row(b)) => map1(d, b, |y| f(x, y)),
            (Opd::One(x), Opd::One(y)) => d.fill(f(x, y)),
        },
        Dst::One(d) => *d = f(a.first(), b.first()),
    }
}

#[inline(always)]
fn map1(dst: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32) {
    let a = &a[..dst.len()];
    for i in 0..dst.len() {
        dst[i] = f(a[i]);
    }
}

#[inline(always)]
fn zip2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    let (a, b) = (&a[..dst.len()], &b[..dst.len()]);
    for i in 0..dst.len() {
        dst[i] = f(a[i], b[i]);
    }
}

#[cfg(test)]
mod tests {
    use kiln_ir::op;
    use kiln_ir::Op;
    use proptest::prelude::*;

    use super::super::testutil::{run1, run_kernel, t};
    use super::*;

    /// The standalone op of a program instruction, with its operands as tensors.
    fn unfused(op: MapOp, r: &[Tensor]) -> Tensor {
        use MapOp::*;
        let g = |k: u16| r[k as usize].clone();
        let (o, ins): (Op, Vec<Tensor>) = match op {
            Add(a, b) => (Op::Add(op::Add {}), vec![g(a), g(b)]),
            Sub(a, b) => (Op::Sub(op::Sub {}), vec![g(a), g(b)]),
            Mul(a, b) => (Op::Mul(op::Mul {}), vec![g(a), g(b)]),
            Div(a, b) => (Op::Div(op::Div {}), vec![g(a), g(b)]),
            Pow(a, e) => (Op::Pow(op::Pow {}), vec![g(a), t(&[], vec![e])]),
            Sqrt(a) => (Op::Sqrt(op::Sqrt {}), vec![g(a)]),
            Erf(a) => (Op::Erf(op::Erf {}), vec![g(a)]),
            Exp(a) => (Op::Exp(op::Exp {}), vec![g(a)]),
            Tanh(a) => (Op::Tanh(op::Tanh {}), vec![g(a)]),
            Sigmoid(a) => (Op::Sigmoid(op::Sigmoid {}), vec![g(a)]),
            Neg(a) => (Op::Neg(op::Neg {}), vec![g(a)]),
            Abs(a) => (Op::Abs(op::Abs {}), vec![g(a)]),
            Relu(a) => (Op::Relu(op::Relu {}), vec![g(a)]),
            IsNaN(a) => (Op::IsNaN(op::IsNaN {}), vec![g(a)]),
            Where(c, a, b) => (Op::Where(op::Where {}), vec![g(c), g(a), g(b)]),
            MeanRow(a) => {
                // Not of the element-wise family: through the registry of every kernel.
                let mean = Op::ReduceMean(op::ReduceMean {
                    keepdims: true,
                    noop_with_empty_axes: false,
                });
                let graph = kiln_ir::Graph::default();
                let cx = crate::kernel::BuildCx {
                    input_types: vec![],
                    const_inputs: vec![],
                    output_types: vec![],
                    graph: &graph,
                };
                let k = crate::kernels::build(&mean, &cx).unwrap();
                return run_kernel(&*k, &[g(a), t(&[1], vec![-1i64])]);
            }
        };
        run1(o, &ins)
    }

    fn fused(p: &MapProgram, ins: &[Tensor]) -> Tensor {
        run_kernel(&FusedMap::new(p.clone()).unwrap(), ins)
    }

    fn same_bits(a: &Tensor, b: &Tensor) -> bool {
        a.shape() == b.shape() && a.dtype() == b.dtype() && a.bytes() == b.bytes()
    }

    fn floats(shape: &[usize], seed: u64, nans: bool) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed | 1;
        let v = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let x = (s % 20001) as f32 / 2500.0 - 4.0;
                if nans && s % 7 == 0 {
                    f32::NAN
                } else {
                    x
                }
            })
            .collect();
        t(shape, v)
    }

    /// Gelu as the exporters spell it, LayerNorm's tail (a per-row divisor, per-column scale
    /// and shift), a NaN scrub after Softmax, and every other op once.
    fn programs() -> Vec<(MapProgram, Vec<u8>)> {
        use MapOp::*;
        // Input kinds: 0 = full, 1 = scalar, 2 = per row [.., 1], 3 = per column [c], 4 = bool full.
        vec![
            (
                MapProgram {
                    inputs: 4,
                    ops: vec![Div(0, 1), Erf(4), Add(5, 2), Mul(0, 6), Mul(7, 3)],
                },
                vec![0, 1, 1, 1],
            ),
            (
                MapProgram {
                    inputs: 5,
                    ops: vec![Add(1, 2), Sqrt(5), Div(0, 6), Mul(7, 3), Add(8, 4)],
                },
                vec![0, 2, 1, 3, 3],
            ),
            (
                MapProgram {
                    inputs: 2,
                    ops: vec![IsNaN(0), Where(2, 1, 0)],
                },
                vec![0, 1],
            ),
            (
                MapProgram {
                    inputs: 3,
                    ops: vec![Where(0, 1, 2), Pow(3, 2.0), Pow(3, 3.0), Sub(4, 5)],
                },
                vec![4, 0, 3],
            ),
            (
                MapProgram {
                    inputs: 2,
                    ops: vec![
                        Exp(0),
                        Tanh(1),
                        Sigmoid(2),
                        Neg(3),
                        Abs(4),
                        Relu(5),
                        Sub(7, 6),
                        IsNaN(8),
                    ],
                },
                vec![0, 2],
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every program, over odd shapes (threaded ones too), gives bit for bit what its ops
        /// give one kernel at a time.
        #[test]
        fn fused_map_matches_unfused_ops_bit_for_bit(
            rows in 1usize..300, cols in 1usize..300, lead in 1usize..3, seed in 1u64..1000,
        ) {
            for (pi, (p, kinds)) in programs().into_iter().enumerate() {
                let full = [lead, rows, cols];
                let ins: Vec<Tensor> = kinds.iter().enumerate().map(|(k, &kind)| {
                    let seed = seed * 31 + k as u64;
                    match kind {
                        0 => floats(&full, seed, pi == 2),
                        1 => floats(&[], seed, false),
                        2 => {
                            let v = floats(&[lead, rows, 1], seed, false).to_f64_vec().unwrap();
                            t(&[lead, rows, 1], v.iter().map(|&x| x.abs() as f32).collect())
                        }
                        3 => floats(&[cols], seed, false),
                        _ => {
                            let f = floats(&full, seed, false);
                            let b: Vec<u8> = f.to_f64_vec().unwrap().iter().map(|&x| (x > 0.0) as u8).collect();
                            Tensor::from_bytes(DType::Bool, full.to_vec(), &b).unwrap()
                        }
                    }
                }).collect();
                let mut regs = ins.clone();
                for &op in &p.ops {
                    let next = unfused(op, &regs);
                    regs.push(next);
                }
                let want = regs.last().unwrap();
                let got = fused(&p, &ins);
                prop_assert!(same_bits(&got, want), "program {pi} differs: {:?}", p);
            }
        }
    }

    #[test]
    fn bad_programs_and_inputs_are_errors() {
        let p = MapProgram {
            inputs: 1,
            ops: vec![MapOp::Add(0, 1)],
        };
        assert!(FusedMap::new(p).is_err());
        assert!(FusedMap::new(MapProgram {
            inputs: 1,
            ops: vec![]
        })
        .is_err());
        let p = MapProgram {
            inputs: 2,
            ops: vec![MapOp::Add(0, 1)],
        };
        let k = FusedMap::new(p).unwrap();
        let a = Value::Tensor(t(&[2, 3], vec![0f32; 6]));
        let b = Value::Tensor(t(&[4], vec![0f32; 4]));
        assert!(k.run(&[Some(&a), Some(&b)], &mut RunCx::new()).is_err());
        let i = Value::Tensor(t(&[3], vec![1i64, 2, 3]));
        assert!(k.run(&[Some(&a), Some(&i)], &mut RunCx::new()).is_err());
        assert!(k.run(&[Some(&a)], &mut RunCx::new()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// A program in a GEMM's store gives bit for bit what the fused map gives on the
        /// GEMM's plain result, over odd sizes (k = 0 too), a C wider than its columns, B
        /// packed per call or ahead of time, one thread or two; C's extra columns stay as
        /// they were.
        #[test]
        fn map_in_the_gemm_store_matches_the_map_after_it(
            m in 1usize..160, n in 1usize..70, k in prop_oneof![0usize..40, 250usize..600], pad in 0usize..5,
            threads in 1usize..3, packed in any::<bool>(), seed in 1u64..1000,
        ) {
            use crate::gemm::{Epilogue, Gemm, Isa};
            use MapOp::*;
            let progs = [
                // Gelu as the exporters spell it.
                (MapProgram { inputs: 4, ops: vec![Div(0, 1), Erf(4), Add(5, 2), Mul(0, 6), Mul(7, 3)] }, 3),
                (
                    MapProgram {
                        inputs: 2,
                        ops: vec![Exp(0), Tanh(1), Sigmoid(2), Neg(3), Abs(4), Relu(5), Sub(7, 6), Pow(8, 3.0)],
                    },
                    1,
                ),
            ];
            let gemm = Gemm::new(Isa::best()).unwrap().with_threads(threads).with_min_parallel_flops(0);
            let a = floats(&[m, k], seed, false).to_f64_vec().unwrap();
            let a: Vec<f32> = a.iter().map(|&x| x as f32 / 4.0).collect();
            let b = floats(&[k, n], seed + 1, false).to_f64_vec().unwrap();
            let b: Vec<f32> = b.iter().map(|&x| x as f32 / 4.0).collect();
            let bias = floats(&[n], seed + 2, false).to_f64_vec().unwrap();
            let bias: Vec<f32> = bias.iter().map(|&x| x as f32).collect();
            let ldc = n + pad;
            let run = |epi: Epilogue| {
                let mut c = vec![7.0f32; m * ldc];
                if packed {
                    let pb = gemm.pack_b(k, n, &b, n.max(1), false);
                    gemm.sgemm_packed(m, 1.0, &a, k.max(1), false, &pb, 0.0, &mut c, ldc, epi);
                } else {
                    gemm.sgemm(m, n, k, 1.0, &a, k.max(1), false, &b, n.max(1), false, 0.0, &mut c, ldc, epi);
                }
                c
            };
            let plain = run(Epilogue::bias(&bias));
            let dense: Vec<f32> = (0..m).flat_map(|i| plain[i * ldc..i * ldc + n].to_vec()).collect();
            for (p, nscalars) in progs {
                let scalars: Vec<f32> = (0..nscalars).map(|i| [std::f32::consts::SQRT_2, 1.0, 0.5][i]).collect();
                let mut ins = vec![t(&[m, n], dense.clone())];
                ins.extend(scalars.iter().map(|&s| t(&[], vec![s])));
                let want = fused(&p, &ins);
                let map = MapEpilogue::new(p.clone(), scalars).unwrap();
                let got = run(Epilogue::bias(&bias).with_map(&map));
                let got_dense: Vec<f32> = (0..m).flat_map(|i| got[i * ldc..i * ldc + n].to_vec()).collect();
                prop_assert!(same_bits(&t(&[m, n], got_dense), &want), "program {:?}", p);
                for i in 0..m {
                    prop_assert!(got[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0));
                }
            }
        }
    }

    #[test]
    fn an_epilogue_map_takes_one_tensor_and_computes_an_f32() {
        let p = MapProgram {
            inputs: 2,
            ops: vec![MapOp::Add(0, 1)],
        };
        assert!(MapEpilogue::new(p.clone(), vec![1.0]).is_ok());
        assert!(MapEpilogue::new(p, vec![]).is_err());
        let p = MapProgram {
            inputs: 1,
            ops: vec![MapOp::IsNaN(0)],
        };
        assert!(MapEpilogue::new(p, vec![]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Row-wise programs (LayerNorm spelled out after a residual Add; a mean of a mean with
        /// values per row that are spread or not) give bit for bit what their ops give one
        /// kernel at a time, over odd row lengths and row counts (threaded ones too).
        #[test]
        fn row_map_matches_unfused_ops_bit_for_bit(
            rows in 1usize..700, cols in 1usize..300, lead in 1usize..3, seed in 1u64..1000,
        ) {
            use MapOp::*;
            // Input kinds: 0 = rows, 1 = one value, 2 = one row [C], 3 = value per row [.., 1].
            let progs = [
                (
                    MapProgram {
                        inputs: 5,
                        ops: vec![
                            Add(0, 1), MeanRow(5), Sub(5, 6), Pow(7, 2.0), MeanRow(8), Add(9, 2),
                            Sqrt(10), Div(7, 11), Mul(12, 3), Add(13, 4),
                        ],
                    },
                    vec![0, 0, 1, 2, 2],
                ),
                (
                    MapProgram {
                        inputs: 3,
                        ops: vec![Exp(0), MeanRow(3), Mul(4, 1), Neg(5), Tanh(6), Sub(0, 7), Abs(8), Mul(9, 2)],
                    },
                    vec![0, 3, 1],
                ),
            ];
            for (pi, (p, kinds)) in progs.into_iter().enumerate() {
                let full = [lead, rows, cols];
                let ins: Vec<Tensor> = kinds.iter().enumerate().map(|(k, &kind)| {
                    let seed = seed * 31 + k as u64;
                    match kind {
                        0 => floats(&full, seed, false),
                        1 => {
                            let v = floats(&[], seed, false).to_f64_vec().unwrap();
                            t(&[], vec![v[0].abs() as f32 + 1e-3])
                        }
                        2 => floats(&[cols], seed, false),
                        _ => floats(&[lead, rows, 1], seed, false),
                    }
                }).collect();
                let mut regs = ins.clone();
                for &op in &p.ops {
                    let next = unfused(op, &regs);
                    regs.push(next);
                }
                let per_row: Vec<bool> = kinds.iter().map(|&k| k == 1 || k == 3).collect();
                let got = run_kernel(&RowMap::new(p.clone(), &per_row).unwrap(), &ins);
                prop_assert!(same_bits(&got, regs.last().unwrap()), "program {pi} differs: {:?}", p);
            }
        }
    }

    #[test]
    fn row_maps_reject_what_they_cannot_run() {
        use MapOp::*;
        let mean = MapProgram {
            inputs: 1,
            ops: vec![MeanRow(0), Sub(0, 1)],
        };
        // A row mean needs whole rows: not in the piecewise kernels.
        assert!(FusedMap::new(mean.clone()).is_err());
        assert!(MapEpilogue::new(mean.clone(), vec![]).is_err());
        assert!(RowMap::new(mean.clone(), &[false]).is_ok());
        // A result of one value per row, input kinds that do not match the program, bools.
        assert!(RowMap::new(
            MapProgram {
                inputs: 1,
                ops: vec![MeanRow(0)]
            },
            &[false]
        )
        .is_err());
        assert!(RowMap::new(mean.clone(), &[false, true]).is_err());
        assert!(RowMap::new(
            MapProgram {
                inputs: 1,
                ops: vec![IsNaN(0)]
            },
            &[false]
        )
        .is_err());
        // An input of a shape that is neither rows, a value per row, one row nor one value.
        let k = RowMap::new(
            MapProgram {
                inputs: 2,
                ops: vec![Add(0, 1)],
            },
            &[false, false],
        )
        .unwrap();
        let a = Value::Tensor(t(&[2, 3], vec![0f32; 6]));
        let b = Value::Tensor(t(&[2, 1], vec![0f32; 2]));
        assert!(k.run(&[Some(&a), Some(&b)], &mut RunCx::new()).is_err());
    }
}
