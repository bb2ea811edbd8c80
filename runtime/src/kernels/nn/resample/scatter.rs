//! Scatter-style ops: Col2Im and MaxUnpool.

use kiln_ir::op::{Col2Im, MaxUnpool};

use super::{floats, from_f64, ints, next_index};
use crate::error::KernelError;
use crate::kernel::{opt_tensor_input, tensor_input, Kernel, RunCx};
use crate::kernels::util::strides;
use crate::value::Value;

/// `v[i]` or `default` where the attribute is absent; errors if present with a wrong length.
fn attr(
    v: &Option<Vec<i64>>,
    len: usize,
    default: i64,
    what: &str,
) -> Result<Vec<i64>, KernelError> {
    match v {
        None => Ok(vec![default; len]),
        Some(v) if v.len() == len => Ok(v.clone()),
        Some(v) => Err(KernelError::Invalid(format!(
            "{what} has {} values, expected {len}",
            v.len()
        ))),
    }
}

pub(super) struct Col2ImK(pub Col2Im);

impl Kernel for Col2ImK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let image = ints(tensor_input(inputs, 1)?, "image_shape")?;
        let block = ints(tensor_input(inputs, 2)?, "block_shape")?;
        let xs = x.shape();
        let r = image.len();
        if xs.len() != 3 || block.len() != r || r == 0 {
            return Err(KernelError::Invalid(format!(
                "Col2Im needs input [N, C*prod(block), L] and image_shape/block_shape of one \
                 length, got {xs:?}, {image:?} and {block:?}"
            )));
        }
        if image.iter().chain(&block).any(|&d| d < 0) || block.contains(&0) {
            return Err(KernelError::Invalid(format!(
                "Col2Im: bad image_shape {image:?} or block_shape {block:?}"
            )));
        }
        let dil = attr(&self.0.dilations, r, 1, "Col2Im dilations")?;
        let st = attr(&self.0.strides, r, 1, "Col2Im strides")?;
        let pads = attr(&self.0.pads, 2 * r, 0, "Col2Im pads")?;
        if dil.iter().chain(&st).any(|&v| v < 1) || pads.iter().any(|&p| p < 0) {
            return Err(KernelError::Invalid(
                "Col2Im: dilations and strides must be positive, pads non-negative".into(),
            ));
        }
        let kprod: usize = block.iter().map(|&b| b as usize).product();
        if xs[1] % kprod != 0 {
            return Err(KernelError::Invalid(format!(
                "Col2Im: input dim 1 ({}) is not a multiple of the block size {kprod}",
                xs[1]
            )));
        }
        let (n, c) = (xs[0], xs[1] / kprod);
        // Number of block positions along each image axis.
        let mut cols = Vec::with_capacity(r);
        for i in 0..r {
            let span = image[i] + pads[i] + pads[i + r] - (dil[i] * (block[i] - 1) + 1);
            if span < 0 {
                return Err(KernelError::Invalid(format!(
                    "Col2Im: block {} does not fit the padded image axis {i}",
                    block[i]
                )));
            }
            cols.push((span / st[i] + 1) as usize);
        }
        let l: usize = cols.iter().product();
        if l != xs[2] {
            return Err(KernelError::Invalid(format!(
                "Col2Im: input has {} block positions, image and block give {l}",
                xs[2]
            )));
        }
        let data = floats(x, "Col2Im input", true)?;
        let img: Vec<usize> = image.iter().map(|&d| d as usize).collect();
        let n_img: usize = img.iter().product();
        let img_st = strides(&img);
        let bshape: Vec<usize> = block.iter().map(|&b| b as usize).collect();
        let mut y = vec![0.0f64; n * c * n_img];
        // For each (block offset, block position): the image offset it lands on, if inside.
        let mut target: Vec<Option<usize>> = Vec::with_capacity(kprod * l);
        let mut k = vec![0usize; r];
        for _ in 0..kprod {
            let mut p = vec![0usize; r];
            for _ in 0..l {
                let mut flat = Some(0usize);
                for d in 0..r {
                    let pos = p[d] as i64 * st[d] + k[d] as i64 * dil[d] - pads[d];
                    flat = match flat {
                        Some(f) if pos >= 0 && (pos as usize) < img[d] => {
                            Some(f + pos as usize * img_st[d])
                        }
                        _ => None,
                    };
                }
                target.push(flat);
                next_index(&mut p, &cols);
            }
            next_index(&mut k, &bshape);
        }
        for b in 0..n {
            for ch in 0..c {
                let out = &mut y[(b * c + ch) * n_img..(b * c + ch + 1) * n_img];
                let src = &data[(b * c + ch) * kprod * l..(b * c + ch + 1) * kprod * l];
                for (v, t) in src.iter().zip(&target) {
                    if let Some(t) = t {
                        out[*t] += v;
                    }
                }
            }
        }
        let mut shape = vec![n, c];
        shape.extend(img);
        Ok(vec![from_f64(cx, x.dtype(), shape, &y)?.into()])
    }
}

pub(super) struct MaxUnpoolK(pub MaxUnpool);

impl Kernel for MaxUnpoolK {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> Result<Vec<Value>, KernelError> {
        let x = tensor_input(inputs, 0)?;
        let ind = tensor_input(inputs, 1)?;
        let out_shape = opt_tensor_input(inputs, 2)?
            .map(|t| ints(t, "output_shape"))
            .transpose()?;
        let xs = x.shape();
        let ks = &self.0.kernel_shape;
        let r = ks.len();
        if xs.len() != r + 2 || ind.shape() != xs {
            return Err(KernelError::Invalid(format!(
                "MaxUnpool needs X [N,C,...] with {r} spatial dims and indices of its shape, \
                 got {xs:?} and {:?}",
                ind.shape()
            )));
        }
        let st = attr(&self.0.strides, r, 1, "MaxUnpool strides")?;
        let pads = attr(&self.0.pads, 2 * r, 0, "MaxUnpool pads")?;
        let mut inferred = xs[..2].to_vec();
        for i in 0..r {
            let d = (xs[i + 2] as i64 - 1) * st[i] - pads[i] - pads[i + r] + ks[i];
            if d < 0 {
                return Err(KernelError::Invalid(format!(
                    "MaxUnpool: output dim {i} would be negative ({d})"
                )));
            }
            inferred.push(d as usize);
        }
        let shape: Vec<usize> = match out_shape {
            Some(s) => {
                if s.len() != inferred.len()
                    || s.iter()
                        .zip(&inferred)
                        .any(|(&o, &i)| o < 0 || (o as usize) < i)
                {
                    return Err(KernelError::Invalid(format!(
                        "MaxUnpool: output_shape {s:?} is smaller than the unpooled shape \
                         {inferred:?}"
                    )));
                }
                s.iter().map(|&d| d as usize).collect()
            }
            None => inferred.clone(),
        };
        let data = floats(x, "MaxUnpool input", true)?;
        let idx = ints(ind, "MaxUnpool indices")?;
        let n_inf: usize = inferred.iter().product();
        // Indices address the unpooled shape; it sits in the corner of `shape`.
        let inf_st = strides(&inferred);
        let out_st = strides(&shape);
        let n_out: usize = shape.iter().product();
        let mut y = vec![0.0f64; n_out];
        for (&v, &i) in data.iter().zip(&idx) {
            if i < 0 || i as usize >= n_inf {
                return Err(KernelError::Invalid(format!(
                    "MaxUnpool: index {i} is out of range for {inferred:?}"
                )));
            }
            let mut rem = i as usize;
            let mut off = 0usize;
            for d in 0..inferred.len() {
                off += (rem / inf_st[d]) * out_st[d];
                rem %= inf_st[d];
            }
            y[off] = v;
        }
        Ok(vec![from_f64(cx, x.dtype(), shape, &y)?.into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Tensor;

    fn run(k: &dyn Kernel, ins: Vec<Tensor>) -> Result<Tensor, KernelError> {
        let vals: Vec<Value> = ins.into_iter().map(Value::Tensor).collect();
        let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
        let mut cx = RunCx::new();
        Ok(k.run(&refs, &mut cx)?.remove(0).into_tensor().unwrap())
    }

    #[test]
    fn col2im_sums_overlapping_blocks() {
        // 1-D image of 3 with blocks of 2, stride 1: positions 0,1 and 1,2; the middle sums.
        let k = Col2ImK(Col2Im {
            dilations: None,
            pads: None,
            strides: None,
        });
        let x = Tensor::from_vec(vec![1, 2, 2], vec![1.0f32, 2.0, 10.0, 20.0]).unwrap();
        let y = run(
            &k,
            vec![
                x,
                Tensor::from_vec(vec![1], vec![3i64]).unwrap(),
                Tensor::from_vec(vec![1], vec![2i64]).unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(y.shape(), [1, 1, 3]);
        // col 0 = (1, 10) at 0,1; col 1 = (2, 20) at 1,2.
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![1.0, 12.0, 20.0]);
    }

    #[test]
    fn maxunpool_rejects_bad_indices() {
        let k = MaxUnpoolK(MaxUnpool {
            kernel_shape: vec![2],
            pads: None,
            strides: Some(vec![2]),
        });
        let x = Tensor::from_vec(vec![1, 1, 1], vec![5.0f32]).unwrap();
        let ok = run(
            &k,
            vec![
                x.clone(),
                Tensor::from_vec(vec![1, 1, 1], vec![1i64]).unwrap(),
            ],
        );
        assert_eq!(ok.unwrap().to_vec::<f32>().unwrap(), vec![0.0, 5.0]);
        let bad = run(
            &k,
            vec![x, Tensor::from_vec(vec![1, 1, 1], vec![2i64]).unwrap()],
        );
        assert!(bad.is_err());
    }
}
