//! Box ops: RoiAlign and NonMaxSuppression.

use kiln_ir::op::RoiAlign;
use kiln_ir::DType;

use super::{floats, from_f64, ints};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::value::Value;

pub(super) fn build_roi_align(r: &RoiAlign) -> Result<Box<dyn Kernel>, KernelError> {
    let max = match r.mode.to_ascii_lowercase().as_str() {
        "avg" => false,
        "max" => true,
        m => {
            return Err(KernelError::Invalid(format!(
                "RoiAlign: unknown mode `{m}`"
            )))
        }
    };
    let half_pixel = match r
        .coordinate_transformation_mode
        .to_ascii_lowercase()
        .as_str()
    {
        "half_pixel" => true,
        "output_half_pixel" => false,
        m => {
            return Err(KernelError::Invalid(format!(
                "RoiAlign: unknown coordinate_transformation_mode `{m}`"
            )))
        }
    };
    if r.output_height < 1 || r.output_width < 1 || r.sampling_ratio < 0 {
        return Err(KernelError::Invalid(format!(
            "RoiAlign: output {}x{} and sampling_ratio {} must be positive",
            r.output_height, r.output_width, r.sampling_ratio
        )));
    }
    Ok(Box::new(RoiAlignK {
        max,
        half_pixel,
        out_h: r.output_height as usize,
        out_w: r.output_width as usize,
        sampling_ratio: r.sampling_ratio as usize,
        spatial_scale: r.spatial_scale as f64,
    }))
}

struct RoiAlignK {
    max: bool,
    half_pixel: bool,
    out_h: usize,
    out_w: usize,
    sampling_ratio: usize,
    spatial_scale: f64,
}

/// One bilinear sample: four `(offset in the H×W plane, weight)` taps.
type Sample = [(usize, f64); 4];

/// Bilinear taps of point (`y`, `x`) in an `h`×`w` plane, as the RoiAlign reference takes
/// them: points more than one pixel outside read nothing, others are clamped.
fn bilinear(y: f64, x: f64, h: usize, w: usize) -> Sample {
    let (hf, wf) = (h as f64, w as f64);
    if y < -1.0 || y > hf || x < -1.0 || x > wf || h == 0 || w == 0 {
        return [(0, 0.0); 4];
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut y0, mut x0) = (y as usize, x as usize);
    let y1 = if y0 >= h - 1 {
        y0 = h - 1;
        y = y0 as f64;
        y0
    } else {
        y0 + 1
    };
    let x1 = if x0 >= w - 1 {
        x0 = w - 1;
        x = x0 as f64;
        x0
    } else {
        x0 + 1
    };
    let (ly, lx) = (y - y0 as f64, x - x0 as f64);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    [
        (y0 * w + x0, hy * hx),
        (y0 * w + x1, hy * lx),
        (y1 * w + x0, ly * hx),
        (y1 * w + x1, ly * lx),
    ]
}

impl Kernel for RoiAlignK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let rois_t = tensor_input(inputs, 1)?;
        let bi_t = tensor_input(inputs, 2)?;
        let (xs, rs) = (x.shape(), rois_t.shape());
        if xs.len() != 4 || rs.len() != 2 || rs[1] != 4 || bi_t.shape() != [rs[0]] {
            return Err(KernelError::Invalid(format!(
                "RoiAlign needs X [N,C,H,W], rois [R,4] and batch_indices [R], got {xs:?}, \
                 {rs:?} and {:?}",
                bi_t.shape()
            )));
        }
        let data = floats(x, "RoiAlign input", false)?;
        let rois = floats(rois_t, "rois", false)?;
        let bis = ints(bi_t, "batch_indices")?;
        let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
        let (ph_n, pw_n) = (self.out_h, self.out_w);
        let nr = rs[0];
        let mut y = vec![0.0f64; nr * c * ph_n * pw_n];
        let offset = if self.half_pixel { 0.5 } else { 0.0 };
        for ri in 0..nr {
            let b = bis[ri];
            if b < 0 || b as usize >= n {
                return Err(KernelError::Invalid(format!(
                    "RoiAlign: batch index {b} is out of range for {n} images"
                )));
            }
            let b = b as usize;
            let roi = &rois[ri * 4..ri * 4 + 4];
            let sx = roi[0] * self.spatial_scale - offset;
            let sy = roi[1] * self.spatial_scale - offset;
            let ex = roi[2] * self.spatial_scale - offset;
            let ey = roi[3] * self.spatial_scale - offset;
            let (mut rw, mut rh) = (ex - sx, ey - sy);
            if !self.half_pixel {
                rw = rw.max(1.0);
                rh = rh.max(1.0);
            }
            let (bh, bw) = (rh / ph_n as f64, rw / pw_n as f64);
            let grid = |sz: f64| -> usize {
                if self.sampling_ratio > 0 {
                    self.sampling_ratio
                } else {
                    let g = sz.ceil();
                    if g.is_finite() && g > 0.0 {
                        (g as usize).min(1 << 16)
                    } else {
                        0
                    }
                }
            };
            let (gh, gw) = (grid(bh), grid(bw));
            let count = (gh * gw).max(1) as f64;
            // Samples of each output cell, shared by all channels.
            let mut samples: Vec<Sample> = Vec::with_capacity(ph_n * pw_n * gh * gw);
            for ph in 0..ph_n {
                for pw in 0..pw_n {
                    for iy in 0..gh {
                        let yy = sy + ph as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                        for ix in 0..gw {
                            let xx = sx + pw as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                            samples.push(bilinear(yy, xx, h, w));
                        }
                    }
                }
            }
            let per_cell = gh * gw;
            for ch in 0..c {
                let plane = &data[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
                for cell in 0..ph_n * pw_n {
                    let ss = &samples[cell * per_cell..(cell + 1) * per_cell];
                    let v = if self.max {
                        // The reference's max mode: the largest weighted tap of any sample.
                        ss.iter()
                            .map(|s| {
                                s.iter()
                                    .map(|&(i, wt)| wt * plane[i])
                                    .fold(f64::NEG_INFINITY, f64::max)
                            })
                            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
                            .unwrap_or(0.0)
                    } else {
                        ss.iter()
                            .map(|s| s.iter().map(|&(i, wt)| wt * plane[i]).sum::<f64>())
                            .sum::<f64>()
                            / count
                    };
                    y[(ri * c + ch) * ph_n * pw_n + cell] = v;
                }
            }
        }
        Ok(vec![
            from_f64(cx, x.dtype(), vec![nr, c, ph_n, pw_n], &y)?.into()
        ])
    }
}

pub(super) struct NmsK {
    pub center_point_box: bool,
}

/// A box as (x_min, y_min, x_max, y_max).
type Corners = [f64; 4];

fn corners(b: &[f64], center: bool) -> Corners {
    if center {
        let (hw, hh) = (b[2] / 2.0, b[3] / 2.0);
        [b[0] - hw, b[1] - hh, b[0] + hw, b[1] + hh]
    } else {
        [
            b[1].min(b[3]),
            b[0].min(b[2]),
            b[1].max(b[3]),
            b[0].max(b[2]),
        ]
    }
}

/// Whether `a` suppresses `b`: their IoU is above `threshold` (degenerate boxes never do).
fn suppresses(a: &Corners, b: &Corners, threshold: f64) -> bool {
    let ix = a[2].min(b[2]) - a[0].max(b[0]);
    let iy = a[3].min(b[3]) - a[1].max(b[1]);
    if !(ix > 0.0) || !(iy > 0.0) {
        return false;
    }
    let inter = ix * iy;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    let union = area_a + area_b - inter;
    if !(area_a > 0.0) || !(area_b > 0.0) || !(union > 0.0) {
        return false;
    }
    inter / union > threshold
}

impl Kernel for NmsK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let boxes_t = tensor_input(inputs, 0)?;
        let scores_t = tensor_input(inputs, 1)?;
        let (bs, ss) = (boxes_t.shape(), scores_t.shape());
        if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
            return Err(KernelError::Invalid(format!(
                "NonMaxSuppression needs boxes [B,N,4] and scores [B,C,N], got {bs:?} and {ss:?}"
            )));
        }
        let first = |i: usize, what: &str| -> Result<Option<f64>, KernelError> {
            match opt_tensor_input(inputs, i)? {
                Some(t) if !t.is_empty() => Ok(Some(floats(t, what, true)?[0])),
                _ => Ok(None),
            }
        };
        let max_out = match opt_tensor_input(inputs, 2)? {
            Some(t) if !t.is_empty() => ints(t, "max_output_boxes_per_class")?[0].max(0) as usize,
            _ => 0,
        };
        let iou = first(3, "iou_threshold")?.unwrap_or(0.0);
        let score_th = first(4, "score_threshold")?;
        let boxes = floats(boxes_t, "boxes", false)?;
        let scores = floats(scores_t, "scores", false)?;
        let (nb, nc, nn) = (ss[0], ss[1], ss[2]);
        let mut sel: Vec<i64> = Vec::new();
        for b in 0..nb {
            let bx: Vec<Corners> = (0..nn)
                .map(|i| {
                    corners(
                        &boxes[(b * nn + i) * 4..(b * nn + i) * 4 + 4],
                        self.center_point_box,
                    )
                })
                .collect();
            for c in 0..nc {
                let sc = &scores[(b * nc + c) * nn..(b * nc + c + 1) * nn];
                let mut cand: Vec<usize> = (0..nn)
                    .filter(|&i| score_th.is_none_or(|t| sc[i] > t))
                    .collect();
                // Highest score first; equal scores keep the lower index first.
                cand.sort_by(|&i, &j| sc[j].total_cmp(&sc[i]).then(i.cmp(&j)));
                let mut kept: Vec<usize> = Vec::new();
                for i in cand {
                    if kept.len() >= max_out {
                        break;
                    }
                    if kept.iter().all(|&k| !suppresses(&bx[i], &bx[k], iou)) {
                        kept.push(i);
                        sel.extend([b as i64, c as i64, i as i64]);
                    }
                }
            }
        }
        let rows = sel.len() / 3;
        let t = cx.tensor::<i64>(vec![rows, 3], |o| o.copy_from_slice(&sel))?;
        debug_assert_eq!(t.dtype(), DType::I64);
        Ok(vec![t.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_boundary_is_strict() {
        // Two unit squares overlapping by half: IoU = 0.5 / 1.5 = 1/3.
        let a = corners(&[0.0, 0.0, 1.0, 1.0], false);
        let b = corners(&[0.0, 0.5, 1.0, 1.5], false);
        assert!(suppresses(&a, &b, 0.33));
        assert!(!suppresses(&a, &b, 0.34));
        // Flipped corners describe the same box.
        let bf = corners(&[1.0, 1.5, 0.0, 0.5], false);
        assert_eq!(b, bf);
        // Center format: centre (0.5, 0.5), size 1x1 is the unit square.
        assert_eq!(corners(&[0.5, 0.5, 1.0, 1.0], true), a);
        // Degenerate boxes never suppress.
        let z = corners(&[0.0, 0.0, 0.0, 1.0], false);
        assert!(!suppresses(&a, &z, 0.0));
    }

    #[test]
    fn roi_bilinear_taps() {
        // The centre of a 2x2 plane reads all four pixels equally.
        let s = bilinear(0.5, 0.5, 2, 2);
        assert_eq!(s.map(|t| t.1), [0.25; 4]);
        // Far outside reads nothing.
        assert_eq!(bilinear(-2.0, 0.0, 2, 2).map(|t| t.1), [0.0; 4]);
        // At or past the last row/column it clamps to it.
        let s = bilinear(1.7, 0.0, 2, 2);
        assert_eq!(s[0], (2, 1.0));
    }
}
