//! GridSample (any number of spatial dims) and AffineGrid (2-D and 3-D).

use kiln_ir::op::GridSample;
use kiln_ir::DType;

use super::{cubic_coeffs, floats, from_f64, ints, next_index};
use crate::error::KernelError;
use crate::kernel::{tensor_input, Kernel, RunCx};
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Interp {
    Nearest,
    Linear,
    Cubic,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

pub(super) fn build_grid_sample(g: &GridSample) -> Result<Box<dyn Kernel>, KernelError> {
    let interp = match g.mode.as_str() {
        "nearest" => Interp::Nearest,
        "linear" | "bilinear" => Interp::Linear,
        "cubic" | "bicubic" => Interp::Cubic,
        m => {
            return Err(KernelError::Invalid(format!(
                "GridSample: unknown mode `{m}`"
            )))
        }
    };
    let padding = match g.padding_mode.as_str() {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        m => {
            return Err(KernelError::Invalid(format!(
                "GridSample: unknown padding_mode `{m}`"
            )))
        }
    };
    Ok(Box::new(GridSampleK {
        interp,
        padding,
        align_corners: g.align_corners,
    }))
}

struct GridSampleK {
    interp: Interp,
    padding: Padding,
    align_corners: bool,
}

/// Reflects `x` by the borders `lo`, `hi` until it lies between them.
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let range = hi - lo;
    if !(range > 0.0) {
        return lo;
    }
    if x < lo {
        let d = lo - x;
        let n = (d / range).floor();
        let r = d - n * range;
        if n % 2.0 == 0.0 {
            lo + r
        } else {
            hi - r
        }
    } else if x > hi {
        let d = x - hi;
        let n = (d / range).floor();
        let r = d - n * range;
        if n % 2.0 == 0.0 {
            hi - r
        } else {
            lo + r
        }
    } else {
        x
    }
}

impl GridSampleK {
    /// The input index a tap at integer position `i` reads on an axis of length `len`
    /// (`None`: a zero from the padding).
    fn pixel(&self, i: i64, len: usize, lo: f64, hi: f64) -> Option<usize> {
        let last = len as i64 - 1;
        match self.padding {
            Padding::Zeros => (0..=last).contains(&i).then_some(i as usize),
            Padding::Border => Some(i.clamp(0, last) as usize),
            Padding::Reflection => Some((reflect(i as f64, lo, hi) as i64).clamp(0, last) as usize),
        }
    }

    /// Taps `(index or zero, weight)` along one axis of length `len` for normalized
    /// coordinate `g`.
    fn axis_taps(&self, g: f64, len: usize, single: bool) -> Vec<(Option<usize>, f64)> {
        let l = len as f64;
        let mut x = if self.align_corners {
            (g + 1.0) / 2.0 * (l - 1.0)
        } else {
            ((g + 1.0) * l - 1.0) / 2.0
        };
        if single {
            x = x as f32 as f64;
        }
        let (lo, hi) = if self.align_corners {
            (0.0, l - 1.0)
        } else {
            (-0.5, l - 0.5)
        };
        if self.interp == Interp::Nearest {
            // Half to even in every rank: the conformance data of 3-D grids also rounds
            // -0.5 to 0 (PyTorch's 3-D kernel would round it away from zero).
            x = x.round_ties_even();
        }
        if x < lo || x > hi {
            match self.padding {
                Padding::Border => x = x.clamp(0.0, l - 1.0),
                Padding::Reflection => x = reflect(x, lo, hi),
                Padding::Zeros => {}
            }
        }
        if !x.is_finite() {
            return vec![(None, f64::NAN)];
        }
        match self.interp {
            Interp::Nearest => vec![(self.pixel(x as i64, len, lo, hi), 1.0)],
            Interp::Linear => {
                let x0 = x.floor();
                let t = x - x0;
                let x0 = x0 as i64;
                vec![
                    (self.pixel(x0, len, lo, hi), 1.0 - t),
                    (self.pixel(x0 + 1, len, lo, hi), t),
                ]
            }
            Interp::Cubic => {
                let x0 = x.floor();
                let c = cubic_coeffs(x - x0, -0.75);
                let x0 = x0 as i64;
                (0..4)
                    .map(|k| (self.pixel(x0 - 1 + k as i64, len, lo, hi), c[k as usize]))
                    .collect()
            }
        }
    }
}

impl Kernel for GridSampleK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let grid = tensor_input(inputs, 1)?;
        let (xs, gs) = (x.shape(), grid.shape());
        if xs.len() < 3 || gs.len() != xs.len() {
            return Err(KernelError::Invalid(format!(
                "GridSample needs X [N,C,D1..Dr] and grid [N,H1..Hr,r], got {xs:?} and {gs:?}"
            )));
        }
        let r = xs.len() - 2;
        if gs[0] != xs[0] || gs[r + 1] != r {
            return Err(KernelError::Invalid(format!(
                "GridSample: grid {gs:?} does not match X {xs:?}"
            )));
        }
        let data = floats(x, "GridSample input", true)?;
        let g = floats(grid, "GridSample grid", false)?;
        let single = grid.dtype() != DType::F64;
        let (n, c) = (xs[0], xs[1]);
        let in_sp = &xs[2..];
        let out_sp = &gs[1..=r];
        let n_out: usize = out_sp.iter().product();
        let n_in: usize = in_sp.iter().product();
        let mut out_shape = vec![n, c];
        out_shape.extend_from_slice(out_sp);
        let mut y = vec![0.0f64; n * c * n_out];
        if y.is_empty() {
            return Ok(vec![from_f64(cx, x.dtype(), out_shape, &y)?.into()]);
        }
        let in_strides = crate::kernels::util::strides(in_sp);
        // Per output point: the flattened input taps (None where they read padding zeros).
        let mut taps: Vec<(Option<usize>, f64)> = Vec::new();
        let mut idx = vec![0usize; r];
        for b in 0..n {
            for o in 0..n_out {
                let gp = &g[(b * n_out + o) * r..(b * n_out + o + 1) * r];
                // grid's last axis lists coordinates innermost-first (x, y, z).
                let per_axis: Vec<Vec<(Option<usize>, f64)>> = (0..r)
                    .map(|d| self.axis_taps(gp[r - 1 - d], in_sp[d], single))
                    .collect();
                taps.clear();
                let counts: Vec<usize> = per_axis.iter().map(|t| t.len()).collect();
                let total: usize = counts.iter().product();
                idx.iter_mut().for_each(|v| *v = 0);
                for _ in 0..total {
                    let mut flat = Some(0usize);
                    let mut w = 1.0;
                    for d in 0..r {
                        let (i, wd) = per_axis[d][idx[d]];
                        w *= wd;
                        flat = match (flat, i) {
                            (Some(f), Some(i)) => Some(f + i * in_strides[d]),
                            _ => None,
                        };
                    }
                    taps.push((flat, w));
                    next_index(&mut idx, &counts);
                }
                for ch in 0..c {
                    let base = (b * c + ch) * n_in;
                    let v: f64 = taps
                        .iter()
                        .map(|&(i, w)| match i {
                            Some(i) => w * data[base + i],
                            None => 0.0,
                        })
                        .sum();
                    y[(b * c + ch) * n_out + o] = v;
                }
            }
        }
        Ok(vec![from_f64(cx, x.dtype(), out_shape, &y)?.into()])
    }
}

pub(super) struct AffineGridK(pub bool);

impl Kernel for AffineGridK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let theta = tensor_input(inputs, 0)?;
        let size = ints(tensor_input(inputs, 1)?, "AffineGrid size")?;
        let ts = theta.shape();
        let r = size.len().wrapping_sub(2);
        if !(r == 2 || r == 3) || ts.len() != 3 || ts[1] != r || ts[2] != r + 1 {
            return Err(KernelError::Invalid(format!(
                "AffineGrid needs theta [N,2,3] with size [N,C,H,W] or theta [N,3,4] with \
                 size [N,C,D,H,W], got theta {ts:?} and size {size:?}"
            )));
        }
        if size.iter().any(|&d| d < 0) || size[0] as usize != ts[0] {
            return Err(KernelError::Invalid(format!(
                "AffineGrid: size {size:?} does not match theta {ts:?}"
            )));
        }
        let th = floats(theta, "AffineGrid theta", false)?;
        let n = ts[0];
        let sp: Vec<usize> = size[2..].iter().map(|&d| d as usize).collect();
        // Base coordinates along each spatial axis, in [-1, 1].
        let base: Vec<Vec<f64>> = sp
            .iter()
            .map(|&l| {
                (0..l)
                    .map(|i| {
                        let (i, lf) = (i as f64, l as f64);
                        if self.0 {
                            if l > 1 {
                                -1.0 + 2.0 * i / (lf - 1.0)
                            } else {
                                0.0
                            }
                        } else {
                            (2.0 * i + 1.0) / lf - 1.0
                        }
                    })
                    .collect()
            })
            .collect();
        let n_sp: usize = sp.iter().product();
        let mut out_shape = vec![n];
        out_shape.extend_from_slice(&sp);
        out_shape.push(r);
        let mut y = Vec::with_capacity(n * n_sp * r);
        let mut idx = vec![0usize; r];
        for b in 0..n {
            let t = &th[b * r * (r + 1)..(b + 1) * r * (r + 1)];
            idx.iter_mut().for_each(|v| *v = 0);
            for _ in 0..n_sp {
                // Homogeneous point (x, y[, z], 1): innermost spatial axis first.
                let mut p: Vec<f64> = (0..r).map(|d| base[r - 1 - d][idx[r - 1 - d]]).collect();
                p.push(1.0);
                for row in 0..r {
                    let v: f64 = (0..=r).map(|k| t[row * (r + 1) + k] * p[k]).sum();
                    y.push(v);
                }
                next_index(&mut idx, &sp);
            }
        }
        Ok(vec![from_f64(cx, theta.dtype(), out_shape, &y)?.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_folds_into_range() {
        assert_eq!(reflect(-1.0, -0.5, 3.5), 0.0);
        assert_eq!(reflect(4.0, -0.5, 3.5), 3.0);
        assert_eq!(reflect(-1.0, 0.0, 3.0), 1.0);
        // Past one full range: folds twice.
        assert_eq!(reflect(7.0, 0.0, 3.0), 1.0);
        assert_eq!(reflect(2.0, 0.0, 0.0), 0.0);
    }

    #[test]
    fn bilinear_center_of_2x2_is_mean() {
        let k = GridSampleK {
            interp: Interp::Linear,
            padding: Padding::Zeros,
            align_corners: false,
        };
        // Normalized 0 on a length-2 axis is pixel coordinate 0.5: equal weights.
        let t = k.axis_taps(0.0, 2, false);
        assert_eq!(t, vec![(Some(0), 0.5), (Some(1), 0.5)]);
        // -1 without align_corners is -0.5: half of it falls on the zero padding.
        let t = k.axis_taps(-1.0, 2, false);
        assert_eq!(t, vec![(None, 0.5), (Some(0), 0.5)]);
    }

    #[test]
    fn nearest_rounds_half_to_even() {
        let k = GridSampleK {
            interp: Interp::Nearest,
            padding: Padding::Zeros,
            align_corners: true,
        };
        // Length 2, g = 0 with align_corners is pixel 0.5 -> 0; length 4, g = 0 is 1.5 -> 2.
        assert_eq!(k.axis_taps(0.0, 2, false), vec![(Some(0), 1.0)]);
        assert_eq!(k.axis_taps(0.0, 4, false), vec![(Some(2), 1.0)]);
        // Without align_corners, g = -1 is -0.5 -> 0 (inside), not -1 (padding).
        let k = GridSampleK {
            align_corners: false,
            ..k
        };
        assert_eq!(k.axis_taps(-1.0, 2, false), vec![(Some(0), 1.0)]);
    }
}
