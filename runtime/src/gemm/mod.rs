//! kiln's f32 GEMM: `C = act(alpha·op(A)·op(B) + beta·C + bias + residual)`, row-major.
//!
//! Structure (BLIS/GotoBLAS style):
//!
//! * `op(B)` is packed into panels of `NR` columns, `KC` rows deep (zero-padded past `n`), either
//!   per call or once ahead of time ([`PackedB`], for weights).
//! * `op(A)` is packed per `MC × KC` block into panels of `MR` rows (reading it in place was
//!   measured ~10 % slower: six strided row streams instead of one sequential panel).
//! * A register-blocked micro-kernel computes an `MR × NR` tile of `op(A)·op(B)` over `KC` steps
//!   of `k`; the epilogue (alpha, beta, bias, residual, activation) is fused into the store of
//!   the tile, and applied once, on the last `KC` block. An [`EpilogueMap`] (a fused
//!   element-wise chain) runs on each `MC × NR` panel of the last block once it is stored.
//! * Loops: columns in `NC` blocks → `k` in `KC` blocks → rows in `MC` blocks → `NR` panels →
//!   `MR` tiles. Threads (rayon) split the columns (or the rows, when there are few columns)
//!   into regions, one per thread, or up to four per thread where the split packs nothing
//!   twice; every region is an independent sequential GEMM. A stored A times a pre-packed B
//!   (an activation times weights) split by columns is first packed whole by all threads
//!   together, and the columns then go in pieces of two panels to whichever thread is free.
//!   With A packed ahead of time and rows that balance clearly better than columns (a
//!   convolution over a 7×7 image), the threads first pack all of B together, then split
//!   the rows.
//! * A last panel of at most four columns runs with `MR` rows in the lanes instead of
//!   columns, several tiles at a time (same bits as the column-vectorized tile).
//!
//! The micro-kernel is written once, generic over a small vector abstraction ([`Simd`]), and
//! instantiated per ISA (AVX2+FMA, AVX-512F, NEON) inside a `#[target_feature]` function, and
//! over portable scalar lanes for the scalar fallback. The same generic code instantiated over
//! [`scalar::Emu`] (scalar lanes with fused multiply-add) is a *model* of each ISA's kernel that
//! runs anywhere and is bit-for-bit what the native kernel computes: that is how the AVX-512 and
//! NEON kernels are checked on machines that cannot run them ([`Gemm::model`]).
//!
//! ISA selection happens at run time: the best ISA the CPU has, unless the environment variable
//! `KILN_ISA=scalar|avx2|avx512|neon` forces one (an error if the CPU lacks it).
//!
//! Every element of `C` sees the same sequence of floating-point operations whatever the tile it
//! falls in, the thread count or the `MC`/`NC` blocking: the result depends only on the ISA's
//! kernel and on `KC`. Threaded and single-threaded results are bit-identical.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use rayon::prelude::*;

mod avx2;
mod avx512;
mod neon;
mod pack;
mod scalar;
pub mod vmath;

pub(crate) use pack::cols_inside;
pub use pack::{PackedA, PackedB};
pub(crate) use scalar::activate as scalar_activate;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// An instruction set with a GEMM micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, no intrinsics (the fallback on every CPU).
    Scalar,
    /// x86-64 AVX2 + FMA (256-bit).
    Avx2,
    /// x86-64 AVX-512F (512-bit).
    Avx512,
    /// AArch64 Advanced SIMD (128-bit).
    Neon,
}

impl Isa {
    /// Every ISA kiln has a kernel for.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The name `KILN_ISA` uses.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU can run the ISA's kernel.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The ISAs this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest ISA this CPU can run (ignores `KILN_ISA`).
    pub fn best() -> Isa {
        // On Zen 4 AVX-512 runs at the same FLOP rate as AVX2 (512-bit ops are double-pumped),
        // but with half the instructions per FLOP; on Intel server parts it doubles the peak.
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Neon] {
            if isa.is_available() {
                return isa;
            }
        }
        Isa::Scalar
    }

    /// The ISA forced by `KILN_ISA`, if set: `Ok(None)` when unset or empty, an error when the
    /// value is unknown or the CPU cannot run it.
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        Isa::from_env_value(std::env::var("KILN_ISA").ok().as_deref())
    }

    /// [`Isa::from_env`] for a given value of `KILN_ISA` (`None`: unset).
    pub fn from_env_value(value: Option<&str>) -> Result<Option<Isa>, IsaError> {
        match value {
            Some(v) if !v.trim().is_empty() => {
                let isa: Isa = v.parse()?;
                if isa.is_available() {
                    Ok(Some(isa))
                } else {
                    Err(IsaError::Unavailable(isa))
                }
            }
            _ => Ok(None),
        }
    }

    /// `KILN_ISA` if set, else [`Isa::best`].
    pub fn selected() -> Result<Isa, IsaError> {
        Ok(Isa::from_env()?.unwrap_or_else(Isa::best))
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;
    fn from_str(s: &str) -> Result<Isa, IsaError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "neon" => Ok(Isa::Neon),
            _ => Err(IsaError::Unknown(s.to_string())),
        }
    }
}

/// Why an ISA cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    #[error("unknown ISA {0:?} (expected one of scalar, avx2, avx512, neon)")]
    Unknown(String),
    #[error("this CPU cannot run the {0} kernels")]
    Unavailable(Isa),
}

/// An element-wise activation applied by the GEMM epilogue.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Activation {
    #[default]
    None,
    /// `max(x, 0)` (NaN stays NaN).
    Relu,
    /// `x` if `x >= 0` else `alpha·x`.
    LeakyRelu(f32),
    /// `min(max(x, min), max)`.
    Clip { min: f32, max: f32 },
    /// `0.5·x·(1 + erf(x/√2))` (ONNX Gelu, `approximate = "none"`).
    Gelu,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (ONNX Gelu `approximate = "tanh"`, FastGelu).
    FastGelu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// The activation of ONNX Runtime's fused ops (`FusedConv`, `FusedGemm`, named by `op` in
    /// errors): `name` as in their `activation` attribute (absent or empty: none), `params`
    /// its parameters in order (LeakyRelu: `[alpha]`, Clip: `[min, max]`).
    pub(crate) fn from_onnx(
        op: &str,
        name: Option<&str>,
        params: &[f32],
    ) -> Result<Activation, crate::error::KernelError> {
        use crate::error::KernelError;
        let need = |n: usize, name: &str| {
            if params.len() == n {
                Ok(())
            } else {
                Err(KernelError::Invalid(format!(
                    "{op}: activation {name} takes {n} parameters, got {params:?}"
                )))
            }
        };
        Ok(match name {
            None | Some("") => Activation::None,
            Some("Relu") => Activation::Relu,
            Some("Sigmoid") => Activation::Sigmoid,
            Some("Tanh") => Activation::Tanh,
            Some("LeakyRelu") => {
                need(1, "LeakyRelu")?;
                Activation::LeakyRelu(params[0])
            }
            Some("Clip") => {
                need(2, "Clip")?;
                Activation::Clip {
                    min: params[0],
                    max: params[1],
                }
            }
            Some(other) => {
                return Err(KernelError::Unsupported(format!("{op} activation {other}")))
            }
        })
    }

    /// The scalar definition used by the kernels (absolute error ≲ 1e-6·(1 + |x|) for the
    /// transcendental ones).
    pub fn apply(self, x: f32) -> f32 {
        let mut v = [x];
        scalar::activate(self, &mut v);
        v[0]
    }
}

/// An element-wise function of one `f32` that the GEMM applies to `C`'s elements once they
/// are final, while they are still in cache: the loop fusion of a GEMM with the element-wise
/// chain that reads its result (the chain's other operands are constants). It must not
/// depend on where an element is, only on its value: the GEMM applies it to blocks of `C` in
/// any order, from any thread.
pub trait EpilogueMap: Sync + std::fmt::Debug {
    /// Maps the `rows × cols` elements at `c` (row `i` at `c + i·ld`) in place.
    ///
    /// # Safety
    /// The elements must be valid for reads and writes, and no other thread may access them
    /// during the call.
    unsafe fn apply(&self, c: *mut f32, ld: usize, rows: usize, cols: usize);
}

/// What the store of `C` adds to `alpha·op(A)·op(B) + beta·C`, in this order:
/// `C[i][j] = map(act(alpha·AB[i][j] + beta·C[i][j] + bias[j] + row_bias[i] + residual[i][j]))`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added per column; at least `n` long.
    pub bias: Option<&'a [f32]>,
    /// Added per row (a convolution's bias, one per output channel); at least `m` long.
    pub row_bias: Option<&'a [f32]>,
    /// Applied last.
    pub activation: Activation,
    /// Added per element: `(data, ld)`, element `(i, j)` at `data[i·ld + j]`.
    pub residual: Option<(&'a [f32], usize)>,
    /// Applied after the activation.
    pub map: Option<&'a dyn EpilogueMap>,
}

impl<'a> Epilogue<'a> {
    pub const NONE: Epilogue<'static> = Epilogue {
        bias: None,
        row_bias: None,
        activation: Activation::None,
        residual: None,
        map: None,
    };

    pub fn bias(bias: &'a [f32]) -> Self {
        Epilogue {
            bias: Some(bias),
            ..Default::default()
        }
    }
    pub fn with_row_bias(mut self, row_bias: &'a [f32]) -> Self {
        self.row_bias = Some(row_bias);
        self
    }
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.activation = act;
        self
    }
    pub fn with_residual(mut self, residual: &'a [f32], ld: usize) -> Self {
        self.residual = Some((residual, ld));
        self
    }
    pub fn with_map(mut self, map: &'a dyn EpilogueMap) -> Self {
        self.map = Some(map);
        self
    }
}

/// The geometry of a 2-D convolution's im2col matrix for one image and group (1-D
/// convolutions have `h = kh = oh = 1`): `c` input channels of `h × w`, a `kh × kw` kernel,
/// strides, dilations, leading pads and the `oh × ow` output. Row `(ci·kh + ki)·kw + kj`,
/// column `oy·ow + ox` of the matrix is `x[ci][oy·sh − ph + ki·dh][ox·sw − pw + kj·dw]`, 0 in
/// the padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Im2col {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Im2col {
    /// Rows of the matrix (the GEMM's `k`).
    pub fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of the matrix (the GEMM's `n`).
    pub fn cols(&self) -> usize {
        self.oh * self.ow
    }
}

/// The `A` operand of [`Gemm::sgemm_ops`].
#[derive(Clone, Copy, Debug)]
pub enum AOperand<'a> {
    /// `op(A)` of a row-major `a` with leading dimension `lda` (`trans`: `a` holds `Aᵀ`).
    Matrix {
        a: &'a [f32],
        lda: usize,
        trans: bool,
    },
    /// Packed ahead of time by [`Gemm::pack_a`] for this GEMM.
    Packed(&'a PackedA),
}

/// The `B` operand of [`Gemm::sgemm_ops`].
#[derive(Clone, Copy, Debug)]
pub enum BOperand<'a> {
    /// `op(B)` of a row-major `b` with leading dimension `ldb` (`trans`: `b` holds `Bᵀ`).
    Matrix {
        b: &'a [f32],
        ldb: usize,
        trans: bool,
    },
    /// Packed ahead of time by [`Gemm::pack_b`] for this GEMM.
    Packed(&'a PackedB),
    /// The im2col matrix of the image `x` (`[geom.c, geom.h, geom.w]`).
    Im2col { x: &'a [f32], geom: Im2col },
}

/// Strides of a batch of GEMMs of the same shape (for attention): GEMM `i` uses
/// `a[i·stride_a..]`, `b[i·stride_b..]`, `c[i·stride_c..]` and the residual at
/// `i·stride_residual`. A stride of 0 shares the operand (broadcast). The `C` matrices of the
/// batch must not overlap (checked): either one after the other (`stride_c ≥ (m−1)·ldc + n`), or
/// side by side within rows (`stride_c ≥ n` and `(count−1)·stride_c + n ≤ ldc`, e.g. the heads
/// of a `[seq, heads·dim]` activation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub count: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub stride_residual: usize,
}

// ---------------------------------------------------------------------------------------------
// Free functions (default GEMM: KILN_ISA or the best ISA, rayon's current thread count)
// ---------------------------------------------------------------------------------------------

/// The process-wide GEMM: `KILN_ISA` if set, else the best ISA of this CPU.
///
/// Panics (once, with the reason) if `KILN_ISA` names an unknown ISA or one this CPU lacks;
/// call [`Isa::selected`] first to turn that into an error.
pub fn default_gemm() -> &'static Gemm {
    static G: OnceLock<Gemm> = OnceLock::new();
    G.get_or_init(|| match Gemm::from_env() {
        Ok(g) => g,
        Err(e) => panic!("KILN_ISA: {e}"),
    })
}

/// Row-major `C = act(alpha·op(A)·op(B) + beta·C + bias + residual)` with the default GEMM.
///
/// `op(A)` is `m × k`: `a` holds `A` as `m × k` (`trans_a = false`, `lda ≥ k`) or `k × m`
/// (`trans_a = true`, `lda ≥ m`); likewise `op(B)` is `k × n`; `C` is `m × n`, `ldc ≥ n`.
/// With `beta = 0`, `C` is not read. Any of `m`, `n`, `k` may be 0.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) {
    default_gemm().sgemm(
        m, n, k, alpha, a, lda, trans_a, b, ldb, trans_b, beta, c, ldc, epilogue,
    )
}

/// `C = act(op(A)·B + bias + residual)` with a pre-packed `B` (`alpha = 1`, `beta = 0`).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_packed(
    m: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) {
    default_gemm().sgemm_packed(m, 1.0, a, lda, trans_a, b, 0.0, c, ldc, epilogue)
}

/// A batch of GEMMs of one shape (see [`Batch`]) with the default GEMM.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_batched(
    batch: Batch,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) {
    default_gemm().sgemm_batched(
        batch, m, n, k, alpha, a, lda, trans_a, b, ldb, trans_b, beta, c, ldc, epilogue,
    )
}

// ---------------------------------------------------------------------------------------------
// The vector abstraction and the generic micro-kernel
// ---------------------------------------------------------------------------------------------

/// One SIMD register of f32 lanes. Implementations are `#[inline(always)]` wrappers over
/// intrinsics; they are only ever called (inlined) inside a function compiled with the ISA's
/// `#[target_feature]`.
pub(crate) trait Simd: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// Unaligned load of `LANES` floats.
    unsafe fn load(p: *const f32) -> Self;
    /// Unaligned store of `LANES` floats.
    unsafe fn store(p: *mut f32, v: Self);
    /// `a·b + c` (fused where the ISA has FMA).
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// Hint: fetch the cache line of `p` into L1 (no-op by default).
    #[inline(always)]
    unsafe fn prefetch(_p: *const u8) {}
    /// Hint: fetch the cache line of `p` into L2 (no-op by default).
    #[inline(always)]
    unsafe fn prefetch_l2(_p: *const u8) {}
    /// `splat(*p)`.
    #[inline(always)]
    unsafe fn broadcast(p: *const f32) -> Self {
        Self::splat(*p)
    }
}

/// Largest `MR` / `NR` of any kernel (edge-row kernels and scratch tiles are sized by these).
const MAX_MR: usize = 8;
const MAX_NR: usize = 64;

/// One call of a kernel's block loop: `C[0..mc, 0..nc]` (+)= `A[0..mc, 0..kc] · B[0..kc, 0..nc]`
/// with the store of `C` as described by the flags.
#[derive(Clone, Copy)]
pub(crate) struct BlockArgs<'a> {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
    /// With `lda = 0`, panels of `MR × kc`, one after the other: element `(i, p)` of a panel
    /// at `p·MR + i`; the last panel zero-padded past `mc`. Otherwise A as it is stored,
    /// row-major: element `(i, p)` at `i·lda + p` (see [`direct_a`]).
    pub a: *const f32,
    pub lda: usize,
    /// Panels of `kc × NR`, one after the other: element `(p, j)` at `p·NR + j`; the last panel
    /// zero-padded past `nc`.
    pub b: *const f32,
    pub c: *mut f32,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    /// First `k` block: `beta·C` is added (`C` not read when `beta = 0`); otherwise `C` is added.
    pub first: bool,
    /// Last `k` block: bias, residual, activation.
    pub last: bool,
    /// Bias at column 0 of this block, or null.
    pub bias: *const f32,
    /// Row bias at row 0 of this block, or null.
    pub row_bias: *const f32,
    /// Residual at `(0, 0)` of this block, or null; row stride `ldr`.
    pub res: *const f32,
    pub ldr: usize,
    pub act: Activation,
    /// Applied to each finished panel of the last `k` block.
    pub map: Option<&'a dyn EpilogueMap>,
}

/// The block loop of one ISA: `NR` panels outside, `MR` tiles inside.
pub(crate) type BlockFn = unsafe fn(&BlockArgs);

/// The block loop, generic over the vector type and the register tile `MR × (NV·LANES)`.
///
/// A last tile of `r < MR` rows runs an `r`-row instance of the same micro-kernel (no FLOPs
/// spent on padding rows); a last tile of fewer than `NR` columns is stored through a scratch
/// tile (the padded columns of B are zeros).
///
/// # Safety
/// `x` must describe valid memory as documented on [`BlockArgs`]; `V`'s intrinsics must be
/// supported by the CPU (the caller is a `#[target_feature]` function).
#[inline(always)]
pub(crate) unsafe fn block<V: Simd, const MR: usize, const NV: usize>(x: &BlockArgs) {
    let nr_full = NV * V::LANES;
    debug_assert!(MR <= MAX_MR && nr_full <= MAX_NR);
    let np = x.nc.div_ceil(nr_full);
    let mp = x.mc.div_ceil(MR);
    // The next B panel is fetched into L1 a slice per tile while this one is in use.
    let panel_bytes = nr_full * x.kc * 4;
    let slice = panel_bytes.div_ceil(mp).div_ceil(64) * 64;
    for jp in 0..np {
        let j0 = jp * nr_full;
        let nr = nr_full.min(x.nc - j0);
        let bp = x.b.add(jp * nr_full * x.kc);
        let next = if jp + 1 < np {
            bp.add(nr_full * x.kc) as *const u8
        } else {
            std::ptr::null()
        };
        // A last panel's few columns past its whole vectors (N = 49 leaves 1 of a 16-wide
        // panel, N = 196 leaves 4; AVX-512's 32-wide panels leave 16 + 1 of N = 49): its full
        // tiles run them with rows in the vector lanes instead of columns, several tiles at a
        // time, and its whole vectors (if any) as a narrower tile, where a full-width tile would
        // spend 2 vectors' FMAs on 17 columns.
        let tail = narrow_tail(nr, V::LANES);
        let (narrow_done, vcols) = if tail > 0 && MR <= V::LANES && x.lda == 0 {
            let vcols = nr - tail;
            (
                narrow_panel::<V, MR>(x, bp.add(vcols), nr_full, j0 + vcols, tail),
                vcols,
            )
        } else {
            (0, nr)
        };
        let first = if vcols == 0 { narrow_done } else { 0 };
        for ip in first..mp {
            let i0 = ip * MR;
            let mr = MR.min(x.mc - i0);
            if !next.is_null() {
                let mut off = ip * slice;
                while off < ((ip + 1) * slice).min(panel_bytes) {
                    V::prefetch_l2(next.add(off));
                    off += 64;
                }
            }
            // The tile's lines of C (read, or written: a store that misses waits as long) and
            // of the residual arrive while the micro-kernel runs.
            // First and last element of each of the tile's rows in a matrix at `p`.
            let prefetch_tile = |p: *const f32, ld: usize| {
                for i in 0..mr {
                    V::prefetch(p.add(i * ld) as *const u8);
                    V::prefetch(p.add(i * ld + nr - 1) as *const u8);
                }
            };
            prefetch_tile(x.c.add(i0 * x.ldc + j0), x.ldc);
            if x.last && !x.res.is_null() {
                prefetch_tile(x.res.add(i0 * x.ldr + j0), x.ldr);
            }
            if x.lda != 0 {
                let ap = x.a.add(i0 * x.lda);
                match nr.div_ceil(V::LANES) {
                    1 if NV > 1 => rows::<V, MR, 1>(x, mr, ap, (1, x.lda), bp, nr_full, i0, j0, nr),
                    2 if NV > 2 => rows::<V, MR, 2>(x, mr, ap, (1, x.lda), bp, nr_full, i0, j0, nr),
                    _ => rows::<V, MR, NV>(x, mr, ap, (1, x.lda), bp, nr_full, i0, j0, nr),
                }
                continue;
            }
            let ap = x.a.add(ip * MR * x.kc);
            // On the first panel the block's A comes from memory (weights packed ahead of time
            // are read once per run, and nothing of them is left in cache): the next tile's A
            // panel is fetched into L2 while this one computes. ResNet-50 1×224² -O1: 28.4 →
            // 26.0 ms (AVX-512, Zen 5), where the hardware prefetcher alone left the 1×1
            // convolutions waiting on memory.
            if jp == 0 && ip + 1 < mp {
                let nxt = ap.add(MR * x.kc) as *const u8;
                let mut off = 0;
                while off < MR * x.kc * 4 {
                    V::prefetch_l2(nxt.add(off));
                    off += 64;
                }
            }
            // A last panel of fewer columns runs as few vectors as cover them (a 7×7 image's
            // 49 pixels leave 1 column in the last 16-wide panel: 1 vector, not 2).
            let (nr, nv) = if ip < narrow_done {
                (vcols, vcols / V::LANES)
            } else {
                (nr, nr.div_ceil(V::LANES))
            };
            if nv >= NV {
                rows::<V, MR, NV>(x, mr, ap, (MR, 1), bp, nr_full, i0, j0, nr);
            } else {
                match nv {
                    1 => rows::<V, MR, 1>(x, mr, ap, (MR, 1), bp, nr_full, i0, j0, nr),
                    2 => rows::<V, MR, 2>(x, mr, ap, (MR, 1), bp, nr_full, i0, j0, nr),
                    _ => rows::<V, MR, 3>(x, mr, ap, (MR, 1), bp, nr_full, i0, j0, nr),
                }
            }
        }
        // The panel's `mc × nr` elements of C are final and still in L1.
        if let Some(map) = x.map.filter(|_| x.last) {
            map.apply(x.c.add(j0), x.ldc, x.mc, nr);
        }
    }
}

/// Columns of a last panel at most this narrow run through [`narrow_panel`].
const NARROW_COLS: usize = 4;

/// The columns of a last panel `cols` wide that [`narrow_panel`] runs (0: none).
fn narrow_tail(cols: usize, lanes: usize) -> usize {
    let tail = if cols <= NARROW_COLS {
        cols
    } else {
        cols % lanes
    };
    if tail <= NARROW_COLS {
        tail
    } else {
        0
    }
}

/// The `c ≤ NARROW_COLS` columns at `j0` of the full `MR`-row tiles of a block, `T` tiles at a
/// time (`T·c ≤ 12` accumulators; leftover tiles are the caller's). Returns the number of tiles
/// done.
///
/// Column-vectorized, a tile of one column would fill one lane of each accumulator and cost
/// half a full panel's tile (`N = 49`: the last panel took 16 % of a 7×7 convolution's
/// GEMM for 2 % of its columns). Here a tile's `MR` rows are the lanes of one load of its A
/// panel, and the `T` tiles' accumulators are independent chains, so the FMA latency is hidden.
/// Each element still sees `acc = a·b + acc` in the order of `k` from zero, and the same store:
/// the bits are those of the column-vectorized tile.
#[inline(always)]
unsafe fn narrow_panel<V: Simd, const MR: usize>(
    x: &BlockArgs,
    b: *const f32,
    b_step: usize,
    j0: usize,
    c: usize,
) -> usize {
    match c {
        1 => narrow_tiles::<V, MR, 1, 8>(x, b, b_step, j0),
        2 => narrow_tiles::<V, MR, 2, 6>(x, b, b_step, j0),
        3 => narrow_tiles::<V, MR, 3, 4>(x, b, b_step, j0),
        _ => narrow_tiles::<V, MR, 4, 3>(x, b, b_step, j0),
    }
}

/// Lanes of the widest vector type (AVX-512).
const MAX_LANES: usize = 16;

#[inline(always)]
unsafe fn narrow_tiles<V: Simd, const MR: usize, const C: usize, const T: usize>(
    x: &BlockArgs,
    b: *const f32,
    b_step: usize,
    j0: usize,
) -> usize {
    debug_assert!(MR <= V::LANES && V::LANES <= MAX_LANES && MR <= MAX_MR);
    let groups = x.mc / MR / T;
    for g in 0..groups {
        let ip0 = g * T;
        let acc = narrow_micro::<V, MR, C, T>(x.kc, x.a.add(ip0 * MR * x.kc), b, b_step);
        for (t, cols) in acc.iter().enumerate() {
            // Lane i of column j's vector is element (i, j): transposed through memory into
            // the row vectors that the tile store takes.
            let mut tr = [[0f32; MAX_LANES]; C];
            for (j, v) in cols.iter().enumerate() {
                V::store(tr[j].as_mut_ptr(), *v);
            }
            let mut rows = [[V::zero(); 1]; MR];
            for (i, row) in rows.iter_mut().enumerate() {
                let mut r = [0f32; MAX_LANES];
                for j in 0..C {
                    r[j] = tr[j][i];
                }
                row[0] = V::load(r.as_ptr());
            }
            store_tile::<V, MR, 1>(x, &rows, (ip0 + t) * MR, j0, C);
        }
    }
    groups * T
}

/// `C` columns (`b + p·b_step + j`) of `T` consecutive `MR × kc` A panels at `a`: per step of
/// `k`, one load of each panel's `MR` floats (the lanes past `MR` read the next step, and are
/// never stored), `C` broadcasts of B, `T·C` FMAs.
#[inline(always)]
unsafe fn narrow_micro<V: Simd, const MR: usize, const C: usize, const T: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    b_step: usize,
) -> [[V; C]; T] {
    #[inline(always)]
    unsafe fn step<V: Simd, const C: usize, const T: usize>(
        acc: &mut [[V; C]; T],
        av: impl Fn(usize) -> V,
        b: *const f32,
    ) {
        let mut bv = [V::zero(); C];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = V::broadcast(b.add(j));
        }
        for (t, row) in acc.iter_mut().enumerate() {
            let a = av(t);
            for j in 0..C {
                row[j] = V::fma(a, bv[j], row[j]);
            }
        }
    }
    let panel = MR * kc;
    let mut acc = [[V::zero(); C]; T];
    // Steps whose full-width load stays inside the panel; the last ones go through a copy.
    let inside = if panel >= V::LANES {
        ((panel - V::LANES) / MR + 1).min(kc)
    } else {
        0
    };
    for p in 0..inside {
        step::<V, C, T>(
            &mut acc,
            |t| V::load(a.add(t * panel + p * MR)),
            b.add(p * b_step),
        );
    }
    for p in inside..kc {
        step::<V, C, T>(
            &mut acc,
            |t| {
                let mut r = [0f32; MAX_LANES];
                std::ptr::copy_nonoverlapping(a.add(t * panel + p * MR), r.as_mut_ptr(), MR);
                V::load(r.as_ptr())
            },
            b.add(p * b_step),
        );
    }
    acc
}

/// The tile of `mr ≤ MR` rows and `NV` vectors of columns at `(i0, j0)`; `b_step` is the B
/// panel's row length (`NR`, which may exceed `NV · LANES` in a last panel).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<V: Simd, const MR: usize, const NV: usize>(
    x: &BlockArgs,
    mr: usize,
    ap: *const f32,
    (a_step, a_row): (usize, usize),
    bp: *const f32,
    b_step: usize,
    i0: usize,
    j0: usize,
    nr: usize,
) {
    if mr == MR {
        tile::<V, MR, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr);
    } else {
        match mr {
            1 => tile::<V, 1, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
            2 => tile::<V, 2, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
            3 => tile::<V, 3, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
            4 => tile::<V, 4, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
            5 => tile::<V, 5, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
            6 => tile::<V, 6, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
            _ => tile::<V, 7, NV>(x, ap, a_step, a_row, bp, b_step, i0, j0, nr),
        }
    }
}

/// One `R × (NV·LANES)` tile: the micro-kernel, then the store.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<V: Simd, const R: usize, const NV: usize>(
    x: &BlockArgs,
    a: *const f32,
    a_step: usize,
    a_row: usize,
    b: *const f32,
    b_step: usize,
    i0: usize,
    j0: usize,
    nr: usize,
) {
    let acc = micro::<V, R, NV>(x.kc, a, a_step, a_row, b, b_step);
    store_tile::<V, R, NV>(x, &acc, i0, j0, nr);
}

/// `R × (NV·LANES)` tile of `A·B` over `kc` steps: per step, `NV` loads of `B` (at
/// `b + p·b_step`), `R` broadcasts of `A` (at `a + p·a_step + i·a_row`: a packed panel or A as stored), `R·NV` FMAs into the
/// accumulators, `i` outer, `j` inner. Every accumulator sees its FMAs in the order of `p`,
/// whatever `R` and `NV`.
#[inline(always)]
unsafe fn micro<V: Simd, const R: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    a_step: usize,
    a_row: usize,
    b: *const f32,
    b_step: usize,
) -> [[V; NV]; R] {
    #[inline(always)]
    unsafe fn step<V: Simd, const R: usize, const NV: usize>(
        acc: &mut [[V; NV]; R],
        a: *const f32,
        a_row: usize,
        b: *const f32,
    ) {
        let mut bv = [V::zero(); NV];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = V::load(b.add(j * V::LANES));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let av = V::broadcast(a.add(i * a_row));
            for j in 0..NV {
                row[j] = V::fma(av, bv[j], row[j]);
            }
        }
    }
    let mut acc = [[V::zero(); NV]; R];
    let mut a = a;
    let mut b = b;
    let nr = b_step;
    // Four steps per iteration (less loop overhead in the front end).
    for _ in 0..kc / 4 {
        step::<V, R, NV>(&mut acc, a, a_row, b);
        step::<V, R, NV>(&mut acc, a.add(a_step), a_row, b.add(nr));
        step::<V, R, NV>(&mut acc, a.add(2 * a_step), a_row, b.add(2 * nr));
        step::<V, R, NV>(&mut acc, a.add(3 * a_step), a_row, b.add(3 * nr));
        a = a.add(4 * a_step);
        b = b.add(4 * nr);
    }
    for _ in 0..kc % 4 {
        step::<V, R, NV>(&mut acc, a, a_row, b);
        a = a.add(a_step);
        b = b.add(nr);
    }
    acc
}

/// Store one tile with the epilogue; a tile narrower than `NR` goes through scratch buffers so
/// that the arithmetic is the same as for full tiles and nothing outside `C`'s `R × nr` is
/// touched.
#[inline(always)]
unsafe fn store_tile<V: Simd, const R: usize, const NV: usize>(
    x: &BlockArgs,
    acc: &[[V; NV]; R],
    i0: usize,
    j0: usize,
    nr: usize,
) {
    let nr_full = NV * V::LANES;
    let c = x.c.add(i0 * x.ldc + j0);
    let bias = if x.last && !x.bias.is_null() {
        x.bias.add(j0)
    } else {
        std::ptr::null()
    };
    let res = if x.last && !x.res.is_null() {
        x.res.add(i0 * x.ldr + j0)
    } else {
        std::ptr::null()
    };
    let rows = if x.last && !x.row_bias.is_null() {
        x.row_bias.add(i0)
    } else {
        std::ptr::null()
    };
    if nr == nr_full {
        store_rows::<V, R, NV>(x, acc, c, x.ldc, bias, rows, res, x.ldr);
        return;
    }
    // Scratch tiles: only their R × NR corner is used, zeroed before the valid part is copied
    // in (not the whole arrays: this runs once per edge tile).
    let mut ct = std::mem::MaybeUninit::<[f32; MAX_MR * MAX_NR]>::uninit();
    let mut rt = std::mem::MaybeUninit::<[f32; MAX_MR * MAX_NR]>::uninit();
    let mut bt = std::mem::MaybeUninit::<[f32; MAX_NR]>::uninit();
    let ct = ct.as_mut_ptr() as *mut f32;
    let rt = rt.as_mut_ptr() as *mut f32;
    let bt = bt.as_mut_ptr() as *mut f32;
    std::ptr::write_bytes(ct, 0, R * nr_full);
    if !res.is_null() {
        std::ptr::write_bytes(rt, 0, R * nr_full);
    }
    if !bias.is_null() {
        std::ptr::write_bytes(bt, 0, nr_full);
    }
    let read_c = !(x.first && x.beta == 0.0);
    for i in 0..R {
        if read_c {
            std::ptr::copy_nonoverlapping(c.add(i * x.ldc), ct.add(i * nr_full), nr);
        }
        if !res.is_null() {
            std::ptr::copy_nonoverlapping(res.add(i * x.ldr), rt.add(i * nr_full), nr);
        }
    }
    if !bias.is_null() {
        std::ptr::copy_nonoverlapping(bias, bt, nr);
    }
    store_rows::<V, R, NV>(
        x,
        acc,
        ct,
        nr_full,
        if bias.is_null() { bias } else { bt },
        rows,
        if res.is_null() { res } else { rt },
        nr_full,
    );
    for i in 0..R {
        std::ptr::copy_nonoverlapping(ct.add(i * nr_full), c.add(i * x.ldc), nr);
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_rows<V: Simd, const R: usize, const NV: usize>(
    x: &BlockArgs,
    acc: &[[V; NV]; R],
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    row_bias: *const f32,
    res: *const f32,
    ldr: usize,
) {
    let alpha = V::splat(x.alpha);
    let beta = V::splat(x.beta);
    let scale = x.alpha != 1.0;
    let act = x.last && x.act != Activation::None;
    for (i, row) in acc.iter().enumerate() {
        let crow = c.add(i * ldc);
        for (j, &a) in row.iter().enumerate() {
            let p = crow.add(j * V::LANES);
            let mut v = if scale { V::mul(alpha, a) } else { a };
            if x.first {
                if x.beta != 0.0 {
                    v = V::fma(beta, V::load(p), v);
                }
            } else {
                v = V::add(V::load(p), v);
            }
            if !bias.is_null() {
                v = V::add(v, V::load(bias.add(j * V::LANES)));
            }
            if !row_bias.is_null() {
                v = V::add(v, V::splat(*row_bias.add(i)));
            }
            if !res.is_null() {
                v = V::add(v, V::load(res.add(i * ldr + j * V::LANES)));
            }
            V::store(p, v);
        }
        if act {
            scalar::activate(x.act, std::slice::from_raw_parts_mut(crow, NV * V::LANES));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels and the GEMM object
// ---------------------------------------------------------------------------------------------

/// One ISA's kernel: register tile, cache blocking and the block loop.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub isa: Isa,
    /// The scalar model of the ISA's kernel rather than the kernel itself.
    pub model: bool,
    pub mr: usize,
    pub nr: usize,
    /// f32 lanes of one vector: a last panel of `c < NR` columns costs `⌈c / lanes⌉` vectors.
    pub lanes: usize,
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
    pub block: BlockFn,
    /// Whether a row-major `A` may be read where it is stored (see [`direct_a`]).
    pub direct_a: bool,
}

impl Kernel {
    fn of(isa: Isa, model: bool) -> Kernel {
        let k = match isa {
            Isa::Scalar => scalar::kernel(),
            Isa::Avx2 => avx2::kernel(model),
            Isa::Avx512 => avx512::kernel(model),
            Isa::Neon => neon::kernel(model),
        };
        Kernel {
            direct_a: k.direct_a && direct_a_enabled(),
            ..k
        }
    }
}

/// Below this many flops a GEMM runs on one thread.
const PAR_MIN_FLOPS: usize = 1 << 21;

/// A GEMM engine: one ISA's kernel, its blocking, and a thread count.
#[derive(Clone, Copy)]
pub struct Gemm {
    kernel: Kernel,
    threads: Option<usize>,
    par_min_flops: usize,
}

impl fmt::Debug for Gemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.kernel;
        f.debug_struct("Gemm")
            .field("isa", &k.isa)
            .field("model", &k.model)
            .field("tile", &format_args!("{}x{}", k.mr, k.nr))
            .field("kc", &k.kc)
            .field("mc", &k.mc)
            .field("nc", &k.nc)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Gemm {
    /// The kernel of `isa`; an error if this CPU cannot run it.
    pub fn new(isa: Isa) -> Result<Gemm, IsaError> {
        if !isa.is_available() {
            return Err(IsaError::Unavailable(isa));
        }
        Ok(Gemm {
            kernel: Kernel::of(isa, false),
            threads: None,
            par_min_flops: PAR_MIN_FLOPS,
        })
    }

    /// `KILN_ISA` if set, else the best ISA of this CPU.
    pub fn from_env() -> Result<Gemm, IsaError> {
        Gemm::new(Isa::selected()?)
    }

    /// The scalar model of `isa`'s kernel: the same generic micro-kernel, tile, blocking and
    /// operation order, over scalar lanes with fused multiply-add. Runs on any CPU and gives
    /// bit-for-bit the native kernel's results. For tests (slow).
    #[doc(hidden)]
    pub fn model(isa: Isa) -> Gemm {
        Gemm {
            kernel: Kernel::of(isa, true),
            threads: None,
            par_min_flops: PAR_MIN_FLOPS,
        }
    }

    /// Overrides the cache blocking (`kc` changes rounding; `mc`, `nc` do not). For tests.
    #[doc(hidden)]
    pub fn with_blocking(mut self, kc: usize, mc: usize, nc: usize) -> Gemm {
        let k = &mut self.kernel;
        k.kc = kc.max(1);
        k.mc = mc.max(1).div_ceil(k.mr) * k.mr;
        k.nc = nc.max(1).div_ceil(k.nr) * k.nr;
        self
    }

    /// Whether a row-major `A` may be read where it is stored instead of packed (default: yes,
    /// unless `KILN_GEMM_DIRECT_A=0`); the bits are the same either way. For tests and benches.
    #[doc(hidden)]
    pub fn with_direct_a(mut self, on: bool) -> Gemm {
        self.kernel.direct_a = on;
        self
    }

    /// Splits GEMMs of at least `flops` FLOPs over threads (default 2²¹). For tests.
    #[doc(hidden)]
    pub fn with_min_parallel_flops(mut self, flops: usize) -> Gemm {
        self.par_min_flops = flops;
        self
    }

    /// Use at most `threads` threads (default: rayon's current thread count).
    pub fn with_threads(mut self, threads: usize) -> Gemm {
        self.threads = Some(threads.max(1));
        self
    }

    pub fn isa(&self) -> Isa {
        self.kernel.isa
    }

    pub fn is_model(&self) -> bool {
        self.kernel.model
    }

    /// Register tile `(MR, NR)`.
    pub fn tile(&self) -> (usize, usize) {
        (self.kernel.mr, self.kernel.nr)
    }

    /// Cache blocking `(KC, MC, NC)`.
    pub fn blocking(&self) -> (usize, usize, usize) {
        (self.kernel.kc, self.kernel.mc, self.kernel.nc)
    }

    fn threads_for(&self, flops: usize) -> usize {
        if flops < self.par_min_flops {
            return 1;
        }
        self.threads
            .unwrap_or_else(rayon::current_num_threads)
            .max(1)
    }

    /// Packs `op(B)` (`k × n`) for this engine (see [`PackedB::new`]).
    pub fn pack_b(&self, k: usize, n: usize, b: &[f32], ldb: usize, trans_b: bool) -> PackedB {
        PackedB::with_kernel(&self.kernel, k, n, b, ldb, trans_b)
    }

    /// See [`sgemm`].
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        trans_a: bool,
        b: &[f32],
        ldb: usize,
        trans_b: bool,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        epilogue: Epilogue,
    ) {
        check_op("a", a.len(), m, k, lda, trans_a);
        check_op("b", b.len(), k, n, ldb, trans_b);
        check_mat("c", c.len(), m, n, ldc);
        let epi = RawEpi::new(&epilogue, m, n);
        let a = AView::new(a, lda, trans_a);
        let b = BView::Raw(AView::new(b, ldb, trans_b));
        let t = self.threads_for(2 * m * n * k);
        // SAFETY: bounds checked above.
        unsafe {
            self.run(
                m,
                n,
                k,
                alpha,
                a,
                b,
                beta,
                SendPtr(c.as_mut_ptr()),
                ldc,
                epi,
                t,
            )
        }
    }

    /// `C = act(alpha·op(A)·B + beta·C + bias + residual)` with `B` packed by [`Gemm::pack_b`]
    /// (or [`PackedB::new`] for the default GEMM) — it must have been packed for this kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm_packed(
        &self,
        m: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        trans_a: bool,
        b: &PackedB,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        epilogue: Epilogue,
    ) {
        let (k, n) = (b.k(), b.n());
        assert!(
            b.matches(&self.kernel),
            "sgemm_packed: B was packed for another kernel ({}), this GEMM is {:?}",
            b.describe(),
            self
        );
        check_op("a", a.len(), m, k, lda, trans_a);
        check_mat("c", c.len(), m, n, ldc);
        let epi = RawEpi::new(&epilogue, m, n);
        let a = AView::new(a, lda, trans_a);
        let bv = BView::Packed {
            ptr: SendConst(b.as_ptr()),
            panels: b.panels(),
        };
        let t = self.threads_for(2 * m * n * k);
        // SAFETY: bounds checked above; the packed layout matches this kernel.
        unsafe {
            self.run(
                m,
                n,
                k,
                alpha,
                a,
                bv,
                beta,
                SendPtr(c.as_mut_ptr()),
                ldc,
                epi,
                t,
            )
        }
    }

    /// `C = act(alpha·op(A)·op(B) + beta·C + …)` (see [`Epilogue`]) for `A` and `B` given in
    /// any of their forms: stored or packed ahead of time, and for `B` also the im2col
    /// matrix of an image, packed block by block straight from the image (a convolution as
    /// one GEMM, the matrix never materialized). `k` must agree with the operands.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm_ops(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: AOperand,
        b: BOperand,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        epilogue: Epilogue,
    ) {
        let (a, b) = self.check_ops(m, n, k, a, b);
        check_mat("c", c.len(), m, n, ldc);
        // SAFETY: `c` checked above.
        unsafe { self.sgemm_ops_into(m, n, k, alpha, a, b, beta, c.as_mut_ptr(), ldc, epilogue) }
    }

    /// The operands of [`Gemm::sgemm_ops`], checked against `m`, `n`, `k`.
    fn check_ops(&self, m: usize, n: usize, k: usize, a: AOperand, b: BOperand) -> (AOp, BView) {
        let a = match a {
            AOperand::Matrix { a, lda, trans } => {
                check_op("a", a.len(), m, k, lda, trans);
                AOp::Raw(AView::new(a, lda, trans))
            }
            AOperand::Packed(p) => {
                self.check_packed(
                    "A",
                    p.matches(&self.kernel),
                    (p.m(), p.k()),
                    (m, k),
                    &p.describe(),
                );
                AOp::Packed {
                    ptr: SendConst(p.as_ptr()),
                    panels: p.panels(),
                    row0: 0,
                }
            }
        };
        let b = match b {
            BOperand::Matrix { b, ldb, trans } => {
                check_op("b", b.len(), k, n, ldb, trans);
                BView::Raw(AView::new(b, ldb, trans))
            }
            BOperand::Packed(p) => {
                self.check_packed(
                    "B",
                    p.matches(&self.kernel),
                    (p.k(), p.n()),
                    (k, n),
                    &p.describe(),
                );
                BView::Packed {
                    ptr: SendConst(p.as_ptr()),
                    panels: p.panels(),
                }
            }
            BOperand::Im2col { x, geom } => {
                assert!(
                    geom.rows() == k && geom.cols() == n && x.len() >= geom.c * geom.h * geom.w,
                    "sgemm_ops: image of {} elements, geometry {geom:?}, k = {k}, n = {n}",
                    x.len()
                );
                BView::Im2col {
                    x: SendConst(x.as_ptr()),
                    geom,
                    col0: 0,
                }
            }
        };
        (a, b)
    }

    /// [`Gemm::sgemm_ops`] writing `C` through a pointer, for GEMMs that run at the same time
    /// on disjoint rows of one buffer (rows interleaved, so no `&mut` slice can hold them).
    ///
    /// # Safety
    /// `c` must be valid for reads and writes of the `m × n` matrix at leading dimension
    /// `ldc`, and nothing else may access those elements during the call.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sgemm_ops_raw(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: AOperand,
        b: BOperand,
        beta: f32,
        c: *mut f32,
        ldc: usize,
        epilogue: Epilogue,
    ) {
        let (a, b) = self.check_ops(m, n, k, a, b);
        self.sgemm_ops_into(m, n, k, alpha, a, b, beta, c, ldc, epilogue)
    }

    #[allow(clippy::too_many_arguments)]
    unsafe fn sgemm_ops_into(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: AOp,
        b: BView,
        beta: f32,
        c: *mut f32,
        ldc: usize,
        epilogue: Epilogue,
    ) {
        let epi = RawEpi::new(&epilogue, m, n);
        let t = self.threads_for(2 * m * n * k);
        // SAFETY: operands checked by the callers; the im2col packing reads only in-bounds
        // pixels.
        unsafe { self.run(m, n, k, alpha, a, b, beta, SendPtr(c), ldc, epi, t) }
    }

    fn check_packed(
        &self,
        what: &str,
        matches: bool,
        dims: (usize, usize),
        want: (usize, usize),
        describe: &str,
    ) {
        assert!(
            matches && dims == want,
            "sgemm_ops: {what} packed as {describe} for a {}x{} {what} with {:?}",
            want.0,
            want.1,
            self
        );
    }

    /// Packs `op(A)` (`m × k`) for this engine (see [`PackedA`]).
    pub fn pack_a(&self, m: usize, k: usize, a: &[f32], lda: usize, trans_a: bool) -> PackedA {
        PackedA::with_kernel(&self.kernel, m, k, a, lda, trans_a)
    }

    /// See [`sgemm_batched`] and [`Batch`].
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm_batched(
        &self,
        batch: Batch,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        lda: usize,
        trans_a: bool,
        b: &[f32],
        ldb: usize,
        trans_b: bool,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
        epilogue: Epilogue,
    ) {
        if batch.count == 0 || m == 0 || n == 0 {
            return;
        }
        let last = batch.count - 1;
        let tail = |len: usize, stride: usize, what: &str| {
            len.checked_sub(last * stride).unwrap_or_else(|| {
                panic!(
                    "sgemm_batched: {what} too short for {} batches",
                    batch.count
                )
            })
        };
        if m > 0 && k > 0 {
            check_op("a", tail(a.len(), batch.stride_a, "a"), m, k, lda, trans_a);
        }
        if k > 0 {
            check_op("b", tail(b.len(), batch.stride_b, "b"), k, n, ldb, trans_b);
        }
        check_mat("c", tail(c.len(), batch.stride_c, "c"), m, n, ldc);
        if last > 0 {
            let stacked = batch.stride_c >= (m - 1) * ldc + n;
            let side_by_side = batch.stride_c >= n && last * batch.stride_c + n <= ldc;
            assert!(
                stacked || side_by_side,
                "sgemm_batched: the C matrices of the batch overlap"
            );
        }
        if let Some(b) = epilogue.bias {
            assert!(b.len() >= n, "sgemm_batched: bias shorter than n = {n}");
        }
        if let Some((r, ld)) = epilogue.residual {
            check_mat(
                "residual",
                tail(r.len(), batch.stride_residual, "residual"),
                m,
                n,
                ld,
            );
        }
        let t = self
            .threads
            .unwrap_or_else(rayon::current_num_threads)
            .max(1);
        let per = 2 * m * n * k;
        let cp = SendPtr(c.as_mut_ptr());
        let one = |i: usize, threads: usize| {
            let ep = Epilogue {
                bias: epilogue.bias,
                row_bias: epilogue.row_bias,
                activation: epilogue.activation,
                residual: epilogue
                    .residual
                    .map(|(r, ld)| (&r[i * batch.stride_residual..], ld)),
                map: epilogue.map,
            };
            let epi = RawEpi::new(&ep, m, n);
            let av = AView::new(
                if k > 0 { &a[i * batch.stride_a..] } else { a },
                lda,
                trans_a,
            );
            let bv = BView::Raw(AView::new(
                if k > 0 { &b[i * batch.stride_b..] } else { b },
                ldb,
                trans_b,
            ));
            let threads = if per < self.par_min_flops { 1 } else { threads };
            // SAFETY: bounds checked above; the C matrices of different batches are disjoint.
            unsafe {
                self.run(
                    m,
                    n,
                    k,
                    alpha,
                    av,
                    bv,
                    beta,
                    SendPtr(cp.get().add(i * batch.stride_c)),
                    ldc,
                    epi,
                    threads,
                )
            }
        };
        if t > 1 && batch.count >= t && per * batch.count >= self.par_min_flops {
            (0..batch.count)
                .into_par_iter()
                .with_max_len(1)
                .for_each(|i| one(i, 1));
        } else {
            for i in 0..batch.count {
                one(i, t);
            }
        }
    }

    /// Splits `C` into one region per thread and runs each as a sequential GEMM.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: impl Into<AOp>,
        b: BView,
        beta: f32,
        c: SendPtr,
        ldc: usize,
        epi: RawEpi,
        threads: usize,
    ) {
        let a: AOp = a.into();
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            scale_c(m, n, beta, c.get(), ldc, &epi);
            return;
        }
        let kern = &self.kernel;
        let a = match a {
            AOp::Raw(av) if direct_a(kern, av, n) => AOp::Direct(av),
            a => a,
        };
        let np = n.div_ceil(kern.nr);
        let mp = m.div_ceil(kern.mr);
        let t = threads.min(np.max(mp)).max(1);
        if t == 1 {
            gemm_seq(kern, m, n, k, 0, alpha, a, b, beta, c, ldc, epi);
            return;
        }
        // A raw B: split columns (B packed once, in parts; each region packs all of A)
        // unless there are too few panels to balance, then rows. A pre-packed B: split rows
        // unless that balances clearly worse. Costs count vectors of columns per row
        // tile, so that a narrow last panel counts for what it runs (N = 49 is 3 panels and
        // one vector, not 4 panels).
        let vectors = |c0: usize, c1: usize| (c1 - c0).div_ceil(kern.lanes);
        let cost_n = chunks(np, t)
            .map(|(q0, q1)| mp * vectors(q0 * kern.nr, (q1 * kern.nr).min(n)))
            .max()
            .unwrap_or(0);
        let cost_m = mp.div_ceil(t) * vectors(0, n);
        // A packed ahead of time and B packed here, with rows that balance better than
        // columns (a narrow last panel, as N = 49 leaves): all threads pack B once,
        // together, and the rows split as for a pre-packed B, instead of every row region
        // packing all of B or a column region getting the narrow panel on top of its share.
        if matches!(a, AOp::Packed { .. })
            && matches!(b, BView::Raw(_) | BView::Im2col { .. })
            && cost_m * 20 < cost_n * 19
            && k * np * kern.nr * 4 <= SHARED_B_MAX_BYTES
        {
            let done = pack::with_shared_b(|buf| {
                let dst = buf.get(k * np * kern.nr);
                pack_b_shared(kern, b, k, n, SendPtr(dst.as_mut_ptr()), t);
                let packed = BView::Packed {
                    ptr: SendConst(dst.as_ptr()),
                    panels: np,
                };
                self.run(m, n, k, alpha, a, packed, beta, c, ldc, epi, threads);
            });
            if done.is_some() {
                return;
            }
        }
        // An implicit im2col B costs more to pack than a stored one: split rows only when
        // splitting columns would leave a thread with a quarter more tiles.
        let split_n = np >= t
            && match b {
                BView::Im2col { .. } => cost_n * 4 <= cost_m * 5,
                // B packed ahead of time (weights): columns unless rows balance better. A
                // column region reads only its share of B, which then stays in L2 across the
                // row blocks; split by rows, both threads stream all of B from L3 (2 threads,
                // 128×768×768: 76 % of peak by rows, 87 % by columns, measured on a busy host).
                BView::Packed { .. } => cost_n <= cost_m,
                _ => cost_n * 20 <= cost_m * 21,
            };
        // Weights times a stored activation, columns split: all threads pack A once, together,
        // so that the columns can then go in small pieces to whichever thread is free. With
        // one region per thread, each packing all of A, a thread that the shared machine
        // slowed down held the other up at the end of every GEMM (2 threads, BERT-base's FFN
        // GEMMs: ONNX Runtime 1.7× faster than on one thread, kiln 1.4×).
        if let (AOp::Raw(av), BView::Packed { .. }) = (a, b) {
            if split_n && k * mp * kern.mr * 4 <= SHARED_A_MAX_BYTES {
                let done = pack::with_shared_a(|buf| {
                    let dst = buf.get(k * mp * kern.mr);
                    pack_a_shared(kern, av, m, k, SendPtr(dst.as_mut_ptr()), t);
                    let packed = AOp::Packed {
                        ptr: SendConst(dst.as_ptr()),
                        panels: mp,
                        row0: 0,
                    };
                    self.run(m, n, k, alpha, packed, b, beta, c, ldc, epi, threads);
                });
                if done.is_some() {
                    return;
                }
            }
        }
        // Where the split packs nothing twice (rows of a packed B, columns of a packed A),
        // up to 4 regions per thread, each still a full cache block or more, taken by
        // whichever thread is free: on a shared machine one core often runs slower than the
        // other, and equal halves would wait for it.
        let pieces = |units: usize, per_block: usize, packs_nothing_twice: bool| {
            if packs_nothing_twice {
                // A multiple of the threads: 5 equal pieces on 2 threads end on one thread.
                units
                    .div_ceil(per_block.max(1))
                    .next_multiple_of(t)
                    .clamp(t, 4 * t)
            } else {
                t
            }
        };
        let regions: Vec<(usize, usize, usize, usize)> = if split_n {
            // Both operands packed: a piece of two panels still reads its A block from L2 or
            // L3 at most half as often as the micro-kernel reads it from L2.
            let per_block = match b {
                BView::Packed { .. } => 2,
                _ => l2_block_cols(kern, k) / kern.nr,
            };
            let p = pieces(np, per_block, !matches!(a, AOp::Raw(_)));
            chunks(np, p)
                .map(|(q0, q1)| (0, m, q0 * kern.nr, (q1 * kern.nr).min(n)))
                .collect()
        } else {
            let p = pieces(mp, kern.mc / kern.mr, matches!(b, BView::Packed { .. }));
            chunks(mp, p)
                .map(|(r0, r1)| (r0 * kern.mr, (r1 * kern.mr).min(m), 0, n))
                .collect()
        };
        regions
            .into_par_iter()
            .with_max_len(1)
            .for_each(|(r0, r1, c0, c1)| {
                let a = a.offset_rows(r0);
                let b = b.offset_cols(c0);
                let epi = epi.offset(r0, c0);
                gemm_seq(
                    kern,
                    r1 - r0,
                    c1 - c0,
                    k,
                    c0 / kern.nr,
                    alpha,
                    a,
                    b,
                    beta,
                    SendPtr(c.get().add(r0 * ldc + c0)),
                    ldc,
                    epi,
                );
            });
    }
}

/// The largest `B` that [`Gemm::run`] packs whole, shared by the threads (an L2 or two).
const SHARED_B_MAX_BYTES: usize = 2 << 20;

/// The largest `A` that [`Gemm::run`] packs whole, shared by the threads, for a packed `B`
/// (BERT-base at 8×128 needs 12 MiB: the 1024×3072 input of the FFN's second GEMM).
const SHARED_A_MAX_BYTES: usize = 16 << 20;

/// Packs a whole operand in the layout of a [`PackedA`] or [`PackedB`] into `dst`: `KC`
/// blocks over `k`, each of `count` panels `width` wide, every block's panels split among `t`
/// threads. `fill(d, pc, kcb, q0, q1)` packs panels `q0..q1` of the block at `pc`, `kcb` deep,
/// into `d`.
///
/// # Safety
/// `dst` must be valid for `k · count · width` elements, and `fill` must write only `d`.
unsafe fn pack_shared(
    kc: usize,
    k: usize,
    count: usize,
    width: usize,
    dst: SendPtr,
    t: usize,
    fill: impl Fn(&mut [f32], usize, usize, usize, usize) + Sync,
) {
    let blocks = k.div_ceil(kc);
    (0..blocks * t)
        .into_par_iter()
        .with_max_len(1)
        .for_each(|u| {
            let pc = u / t * kc;
            let kcb = kc.min(k - pc);
            let Some((q0, q1)) = chunks(count, t).nth(u % t) else {
                return;
            };
            let d = std::slice::from_raw_parts_mut(
                dst.get().add(pc * count * width + q0 * kcb * width),
                (q1 - q0) * kcb * width,
            );
            fill(d, pc, kcb, q0, q1)
        });
}

/// Packs the whole `m × k` `a` in the layout of a [`PackedA`] (`KC` blocks of `ceil(m/MR)`
/// panels each) into `dst`, each block's panels split among `t` threads.
///
/// # Safety
/// `a` must be valid for `m × k` and `dst` for `k · ceil(m/MR) · MR` elements.
unsafe fn pack_a_shared(kern: &Kernel, a: AView, m: usize, k: usize, dst: SendPtr, t: usize) {
    let mr = kern.mr;
    pack_shared(
        kern.kc,
        k,
        m.div_ceil(mr),
        mr,
        dst,
        t,
        |d, pc, kcb, q0, q1| {
            let rows = (q1 * mr).min(m) - q0 * mr;
            pack::pack_a(d, a.offset(q0 * mr, pc), rows, kcb, mr)
        },
    )
}

/// Packs the whole `k × n` `b` in the layout of a [`PackedB`] (`KC` blocks of `ceil(n/NR)`
/// panels each) into `dst`, the panels of each block split among `t` threads.
///
/// # Safety
/// `b` must be valid for `k × n` and `dst` for `k · ceil(n/NR) · NR` elements.
unsafe fn pack_b_shared(kern: &Kernel, b: BView, k: usize, n: usize, dst: SendPtr, t: usize) {
    let nr = kern.nr;
    pack_shared(
        kern.kc,
        k,
        n.div_ceil(nr),
        nr,
        dst,
        t,
        |d, pc, kcb, q0, q1| {
            let cols = (q1 * nr).min(n) - q0 * nr;
            match b {
                BView::Raw(bv) => pack::pack_b(d, bv.offset(pc, q0 * nr), kcb, cols, nr),
                BView::Im2col { x, geom, col0 } => {
                    pack::pack_b_im2col(d, x.0, &geom, pc, kcb, col0 + q0 * nr, cols, nr)
                }
                BView::Packed { .. } => unreachable!("pack_b_shared: B is already packed"),
            }
        },
    )
}

/// `n` units into `t` contiguous nearly equal chunks.
fn chunks(n: usize, t: usize) -> impl Iterator<Item = (usize, usize)> {
    let t = t.min(n).max(1);
    (0..t).map(move |i| (i * n / t, (i + 1) * n / t))
}

// ---------------------------------------------------------------------------------------------
// The sequential driver
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SendConst(pub *const f32);
unsafe impl Send for SendConst {}
unsafe impl Sync for SendConst {}

/// A strided matrix: element `(i, j)` at `ptr[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct AView {
    pub ptr: SendConst,
    pub rs: usize,
    pub cs: usize,
}

impl AView {
    /// `op(X)` of a row-major `X` with leading dimension `ld`.
    fn new(x: &[f32], ld: usize, trans: bool) -> AView {
        let (rs, cs) = if trans { (1, ld) } else { (ld, 1) };
        AView {
            ptr: SendConst(x.as_ptr()),
            rs,
            cs,
        }
    }
    unsafe fn offset(self, i: usize, j: usize) -> AView {
        AView {
            ptr: SendConst(self.ptr.0.wrapping_add(i * self.rs + j * self.cs)),
            ..self
        }
    }
}

/// `op(A)` as the driver reads it.
#[derive(Clone, Copy)]
enum AOp {
    /// Packed per block.
    Raw(AView),
    /// Read where it is stored ([`direct_a`]): row-major, `rs` its leading dimension.
    Direct(AView),
    /// A [`PackedA`] with `panels` panels over its full height; `row0` (a multiple of MR) is
    /// the region's first row.
    Packed {
        ptr: SendConst,
        panels: usize,
        row0: usize,
    },
}

impl From<AView> for AOp {
    fn from(v: AView) -> AOp {
        AOp::Raw(v)
    }
}

impl AOp {
    unsafe fn offset_rows(self, r0: usize) -> AOp {
        match self {
            AOp::Raw(v) => AOp::Raw(v.offset(r0, 0)),
            AOp::Direct(v) => AOp::Direct(v.offset(r0, 0)),
            AOp::Packed { ptr, panels, row0 } => AOp::Packed {
                ptr,
                panels,
                row0: row0 + r0,
            },
        }
    }
}

#[derive(Clone, Copy)]
enum BView {
    Raw(AView),
    /// The im2col matrix of an image (`x`, one group's channels), packed from the image
    /// directly; `col0` is the region's first column (output pixel).
    Im2col {
        x: SendConst,
        geom: Im2col,
        col0: usize,
    },
    /// A [`PackedB`] with `panels` panels across its full width (a region's first panel is
    /// passed to [`gemm_seq`] separately).
    Packed {
        ptr: SendConst,
        panels: usize,
    },
}

impl BView {
    unsafe fn offset_cols(self, c0: usize) -> BView {
        match self {
            BView::Raw(v) => BView::Raw(v.offset(0, c0)),
            BView::Im2col { x, geom, col0 } => BView::Im2col {
                x,
                geom,
                col0: col0 + c0,
            },
            BView::Packed { .. } => self,
        }
    }
}

/// The epilogue as raw pointers at the origin of a region.
#[derive(Clone, Copy)]
struct RawEpi<'a> {
    bias: SendConst,
    row_bias: SendConst,
    res: SendConst,
    ldr: usize,
    act: Activation,
    map: Option<&'a dyn EpilogueMap>,
}

impl<'a> RawEpi<'a> {
    fn new(e: &Epilogue<'a>, m: usize, n: usize) -> RawEpi<'a> {
        if let Some(b) = e.bias {
            assert!(b.len() >= n, "bias has {} elements, n = {n}", b.len());
        }
        if let Some(b) = e.row_bias {
            assert!(b.len() >= m, "row bias has {} elements, m = {m}", b.len());
        }
        let (res, ldr) = match e.residual {
            Some((r, ld)) => {
                check_mat("residual", r.len(), m, n, ld);
                (r.as_ptr(), ld)
            }
            None => (std::ptr::null(), 0),
        };
        RawEpi {
            bias: SendConst(e.bias.map_or(std::ptr::null(), |b| b.as_ptr())),
            row_bias: SendConst(e.row_bias.map_or(std::ptr::null(), |b| b.as_ptr())),
            res: SendConst(res),
            ldr,
            act: e.activation,
            map: e.map,
        }
    }
    fn offset(self, i: usize, j: usize) -> RawEpi<'a> {
        RawEpi {
            bias: SendConst(if self.bias.0.is_null() {
                self.bias.0
            } else {
                self.bias.0.wrapping_add(j)
            }),
            row_bias: SendConst(if self.row_bias.0.is_null() {
                self.row_bias.0
            } else {
                self.row_bias.0.wrapping_add(i)
            }),
            res: SendConst(if self.res.0.is_null() {
                self.res.0
            } else {
                self.res.0.wrapping_add(i * self.ldr + j)
            }),
            ..self
        }
    }
}

/// `k = 0`: `C = act(beta·C + bias + row_bias + residual)`.
unsafe fn scale_c(m: usize, n: usize, beta: f32, c: *mut f32, ldc: usize, e: &RawEpi) {
    for i in 0..m {
        let row = std::slice::from_raw_parts_mut(c.add(i * ldc), n);
        for (j, v) in row.iter_mut().enumerate() {
            let mut x = if beta != 0.0 { beta * *v } else { 0.0 };
            if !e.bias.0.is_null() {
                x += *e.bias.0.add(j);
            }
            if !e.row_bias.0.is_null() {
                x += *e.row_bias.0.add(i);
            }
            if !e.res.0.is_null() {
                x += *e.res.0.add(i * e.ldr + j);
            }
            *v = x;
        }
        scalar::activate(e.act, row);
    }
    if let Some(map) = e.map {
        map.apply(c, ldc, m, n);
    }
}

/// The L2 share of a B block packed per call when A was packed ahead of time (Zen 3's L2 is
/// 512 KiB; the rest holds A's block and C's tiles).
const B_BLOCK_L2_BYTES: usize = 192 * 1024;

/// Columns (whole panels, at most `NC`) of a `KC`-deep B block that fits [`B_BLOCK_L2_BYTES`].
fn l2_block_cols(kern: &Kernel, k: usize) -> usize {
    let cols = B_BLOCK_L2_BYTES / (kern.kc.min(k) * 4);
    (cols / kern.nr * kern.nr).clamp(kern.nr, kern.nc)
}

/// Whether the micro-kernel reads `A` where it is stored (row-major, `lda = av.rs`) instead of
/// a packed copy, as MLAS does: per step of `k` it broadcasts one element of each of `MR` rows,
/// and each row's cache line serves 16 steps. No packing pass over `A` (a copy of all of it
/// per GEMM, and with the columns split over threads a barrier after it); the arithmetic is
/// the same, so are the bits. Not when more than 4 of a tile's rows share an L1 set (an `lda`
/// of 1024 or 3072 floats puts all 8 in one, where they would evict each other and B), nor
/// when the last panel has columns for [`narrow_panel`], which loads the packed panel's rows
/// as a vector.
fn direct_a(kern: &Kernel, av: AView, n: usize) -> bool {
    if !kern.direct_a || av.cs != 1 || av.rs == 0 {
        return false;
    }
    let last = n - (n.max(1) - 1) / kern.nr * kern.nr;
    if narrow_tail(last, kern.lanes) > 0 {
        return false;
    }
    // L1d: 64 sets of 64-byte lines, as 32 KiB × 8 ways (AMD Zen) or 48 KiB × 12 ways (Intel
    // since Ice Lake) both make; the ways left to B are what differs.
    let mut per_set = [0u8; 64];
    (0..kern.mr).all(|i| {
        let set = (i * av.rs * 4 / 64) % 64;
        per_set[set] += 1;
        per_set[set] <= 4
    })
}

/// `KILN_GEMM_DIRECT_A=0` packs every `A` (to measure what [`direct_a`] gains in a model).
fn direct_a_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_GEMM_DIRECT_A").map_or(true, |v| v != "0"))
}

/// One region as a sequential GEMM. `panel0` is the region's first column panel in a packed B.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_seq(
    kern: &Kernel,
    m: usize,
    n: usize,
    k: usize,
    panel0: usize,
    alpha: f32,
    a: AOp,
    b: BView,
    beta: f32,
    c: SendPtr,
    ldc: usize,
    epi: RawEpi,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    // Row blocks of nearly equal size (multiples of MR) rather than MC, MC, …, remainder.
    let mc_step = m.div_ceil(m.div_ceil(kern.mc)).div_ceil(mr) * mr;
    // `NC` is sized for a B block that many row blocks reuse from L3 while A is packed once
    // per block. With A packed ahead of time, revisiting it is free, so a B packed here (a
    // convolution's image) is packed in blocks that stay in L2 from their packing to their
    // last use instead.
    let nc_max = match (a, b) {
        (AOp::Packed { .. }, BView::Raw(_) | BView::Im2col { .. }) => l2_block_cols(kern, k),
        _ => kern.nc,
    };
    let lda = match a {
        AOp::Direct(av) => av.rs,
        _ => 0,
    };
    pack::with_buffers(|abuf, bbuf| {
        let mut jc = 0;
        while jc < n {
            let nc = nc_max.min(n - jc);
            let mut pc = 0;
            while pc < k {
                let kc = kern.kc.min(k - pc);
                let bp: *const f32 = match b {
                    BView::Raw(bv) => {
                        let dst = bbuf.get(nc.div_ceil(nr) * nr * kc);
                        pack::pack_b(dst, bv.offset(pc, jc), kc, nc, nr);
                        dst.as_ptr()
                    }
                    BView::Im2col { x, geom, col0 } => {
                        let dst = bbuf.get(nc.div_ceil(nr) * nr * kc);
                        pack::pack_b_im2col(dst, x.0, &geom, pc, kc, col0 + jc, nc, nr);
                        dst.as_ptr()
                    }
                    BView::Packed { ptr, panels } => {
                        // Block pc holds `panels` panels of kc × NR; this region starts at panel0.
                        ptr.0.add(pc * panels * nr + (panel0 + jc / nr) * kc * nr)
                    }
                };
                let mut ic = 0;
                while ic < m {
                    let mc = mc_step.min(m - ic);
                    let ap: *const f32 = match a {
                        AOp::Direct(av) => av.ptr.0.add(ic * lda + pc),
                        AOp::Raw(av) => {
                            let ablock = abuf.get(mc.div_ceil(mr) * mr * kc);
                            pack::pack_a(ablock, av.offset(ic, pc), mc, kc, mr);
                            ablock.as_ptr()
                        }
                        AOp::Packed { ptr, panels, row0 } => {
                            // Block pc holds `panels` panels of MR × kc; rows start at row0.
                            ptr.0.add(pc * panels * mr + (row0 + ic) / mr * mr * kc)
                        }
                    };
                    let args = BlockArgs {
                        kc,
                        mc,
                        nc,
                        a: ap,
                        lda,
                        b: bp,
                        c: c.get().add(ic * ldc + jc),
                        ldc,
                        alpha,
                        beta,
                        first: pc == 0,
                        last: pc + kc == k,
                        bias: if epi.bias.0.is_null() {
                            std::ptr::null()
                        } else {
                            epi.bias.0.add(jc)
                        },
                        row_bias: if epi.row_bias.0.is_null() {
                            std::ptr::null()
                        } else {
                            epi.row_bias.0.add(ic)
                        },
                        res: if epi.res.0.is_null() {
                            std::ptr::null()
                        } else {
                            epi.res.0.add(ic * epi.ldr + jc)
                        },
                        ldr: epi.ldr,
                        act: epi.act,
                        map: epi.map,
                    };
                    (kern.block)(&args);
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}

fn check_mat(name: &str, len: usize, rows: usize, cols: usize, ld: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        ld >= cols,
        "{name}: leading dimension {ld} < {cols} columns"
    );
    let need = (rows - 1) * ld + cols;
    assert!(
        len >= need,
        "{name}: {len} elements, a {rows}×{cols} matrix with ld {ld} needs {need}"
    );
}

/// Checks the storage of `op(X)`, an `rows × cols` matrix stored transposed when `trans`.
fn check_op(name: &str, len: usize, rows: usize, cols: usize, ld: usize, trans: bool) {
    if trans {
        check_mat(name, len, cols, rows, ld)
    } else {
        check_mat(name, len, rows, cols, ld)
    }
}
