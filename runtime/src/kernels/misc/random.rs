//! Random generators: `RandomNormal`, `RandomUniform`, their `*Like` forms, `Bernoulli`
//! and `Multinomial`.
//!
//! No implementation's values can be reproduced bit for bit (ONNX says so), so kiln uses
//! its own generator, xoshiro256++ seeded through SplitMix64. With a `seed` attribute every
//! run of the kernel draws the same values; without one each run draws fresh values.

use std::sync::atomic::{AtomicU64, Ordering};

use kiln_ir::{DType, Op};

use super::{dtype_of, from_f64s, to_f64s, KResult};
use crate::error::KernelError;
use crate::kernel::{tensor_input, BuildCx, Kernel, RunCx};
use crate::value::Value;

pub(super) fn build(op: &Op, _cx: &BuildCx) -> Option<Result<Box<dyn Kernel>, KernelError>> {
    let k: Box<dyn Kernel> = match op {
        Op::RandomNormal(r) => Box::new(Random {
            dist: Dist::Normal {
                mean: r.mean as f64,
                scale: r.scale as f64,
            },
            dtype: Some(r.dtype),
            shape: Some(r.shape.clone()),
            seed: r.seed,
        }),
        Op::RandomUniform(r) => Box::new(Random {
            dist: Dist::Uniform {
                low: r.low as f64,
                high: r.high as f64,
            },
            dtype: Some(r.dtype),
            shape: Some(r.shape.clone()),
            seed: r.seed,
        }),
        Op::RandomNormalLike(r) => Box::new(Random {
            dist: Dist::Normal {
                mean: r.mean as f64,
                scale: r.scale as f64,
            },
            dtype: r.dtype,
            shape: None,
            seed: r.seed,
        }),
        Op::RandomUniformLike(r) => Box::new(Random {
            dist: Dist::Uniform {
                low: r.low as f64,
                high: r.high as f64,
            },
            dtype: r.dtype,
            shape: None,
            seed: r.seed,
        }),
        Op::Bernoulli(b) => Box::new(Bernoulli {
            dtype: b.dtype,
            seed: b.seed,
        }),
        Op::Multinomial(m) => Box::new(Multinomial {
            dtype: m.dtype,
            sample_size: m.sample_size,
            seed: m.seed,
        }),
        _ => return None,
    };
    Some(Ok(k))
}

/// xoshiro256++ (Blackman & Vigna).
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        // SplitMix64 spreads the seed over the state (never all zero).
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// A generator for one run: from `seed` when given, else fresh.
    fn for_run(seed: Option<f32>) -> Rng {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        match seed {
            Some(s) => Rng::new(u64::from(s.to_bits()) ^ 0x6b69_6c6e_0000_0000),
            None => {
                let c = COUNTER.fetch_add(1, Ordering::Relaxed);
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                Rng::new(t ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            }
        }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; one of the pair is dropped to keep the code simple).
    #[inline]
    pub(crate) fn normal(&mut self) -> f64 {
        // 1 − u is in (0, 1], so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[derive(Clone, Copy)]
enum Dist {
    Normal { mean: f64, scale: f64 },
    Uniform { low: f64, high: f64 },
}

struct Random {
    dist: Dist,
    /// `None` for the `*Like` ops without `dtype`: the input's type.
    dtype: Option<i64>,
    /// `None` for the `*Like` ops: the input's shape.
    shape: Option<Vec<i64>>,
    seed: Option<f32>,
}

impl Kernel for Random {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let (shape, dt) = match &self.shape {
            Some(s) => {
                if s.iter().any(|&d| d < 0) {
                    return Err(KernelError::Invalid(format!(
                        "shape must be non-negative, got {s:?}"
                    )));
                }
                let dt = dtype_of(self.dtype.unwrap_or(1))?;
                (s.iter().map(|&d| d as usize).collect::<Vec<_>>(), dt)
            }
            None => {
                let x = tensor_input(inputs, 0)?;
                let dt = match self.dtype {
                    Some(c) => dtype_of(c)?,
                    None => x.dtype(),
                };
                (x.shape().to_vec(), dt)
            }
        };
        if !dt.is_float() {
            return Err(KernelError::Unsupported(format!(
                "random values of type {dt}"
            )));
        }
        let n = kiln_ir::tensor::checked_numel(&shape)?;
        let mut rng = Rng::for_run(self.seed);
        let vals: Vec<f64> = match self.dist {
            Dist::Normal { mean, scale } => (0..n).map(|_| mean + scale * rng.normal()).collect(),
            Dist::Uniform { low, high } => {
                (0..n).map(|_| low + (high - low) * rng.uniform()).collect()
            }
        };
        Ok(vec![Value::Tensor(from_f64s(cx, dt, shape, &vals)?)])
    }
}

struct Bernoulli {
    dtype: Option<i64>,
    seed: Option<f32>,
}

impl Kernel for Bernoulli {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        if !x.dtype().is_float() {
            return Err(KernelError::Invalid(format!(
                "Bernoulli input must be float, got {}",
                x.dtype()
            )));
        }
        let dt = match self.dtype {
            Some(c) => dtype_of(c)?,
            None => x.dtype(),
        };
        let p = to_f64s(x)?;
        let mut rng = Rng::for_run(self.seed);
        let vals: Vec<f64> = p
            .iter()
            .map(|&p| if rng.uniform() < p { 1.0 } else { 0.0 })
            .collect();
        Ok(vec![Value::Tensor(from_f64s(
            cx,
            dt,
            x.shape().to_vec(),
            &vals,
        )?)])
    }
}

struct Multinomial {
    dtype: i64,
    sample_size: i64,
    seed: Option<f32>,
}

impl Kernel for Multinomial {
    fn run(&self, inputs: &[Option<&Value>], cx: &mut RunCx) -> KResult<Vec<Value>> {
        let x = tensor_input(inputs, 0)?;
        let dt = dtype_of(self.dtype)?;
        if !matches!(dt, DType::I32 | DType::I64) {
            return Err(KernelError::Invalid(format!(
                "Multinomial dtype must be i32 or i64, got {dt}"
            )));
        }
        let &[batch, classes] = x.shape() else {
            return Err(KernelError::Invalid(format!(
                "Multinomial input must be [batch, classes], got {:?}",
                x.shape()
            )));
        };
        if self.sample_size < 0 {
            return Err(KernelError::Invalid(format!(
                "sample_size must be >= 0, got {}",
                self.sample_size
            )));
        }
        let s = self.sample_size as usize;
        let logits = to_f64s(x)?;
        let mut rng = Rng::for_run(self.seed);
        let mut out = Vec::with_capacity(batch * s);
        // Cumulative (unnormalized) probabilities of one row.
        let mut cdf = vec![0.0f64; classes];
        for b in 0..batch {
            let row = &logits[b * classes..(b + 1) * classes];
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut acc = 0.0;
            for (c, &l) in cdf.iter_mut().zip(row) {
                acc += if max.is_finite() {
                    (l - max).exp()
                } else {
                    0.0
                };
                *c = acc;
            }
            for _ in 0..s {
                let u = rng.uniform() * acc;
                // The first class whose cumulative weight exceeds u.
                let k = cdf
                    .partition_point(|&c| c <= u)
                    .min(classes.saturating_sub(1));
                out.push(k as f64);
            }
        }
        Ok(vec![Value::Tensor(from_f64s(
            cx,
            dt,
            vec![batch, s],
            &out,
        )?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::Tensor;

    fn mean_var(v: &[f64]) -> (f64, f64) {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (
            m,
            v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64,
        )
    }

    #[test]
    fn distributions_have_the_right_moments_and_seeds_repeat() {
        let k = Random {
            dist: Dist::Normal {
                mean: 2.0,
                scale: 3.0,
            },
            dtype: Some(11),
            shape: Some(vec![200, 100]),
            seed: Some(5.0),
        };
        let a = k
            .run(&[], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        let b = k
            .run(&[], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!(a, b, "seeded runs repeat");
        assert_eq!(a.shape(), &[200, 100]);
        let (m, v) = mean_var(&a.to_vec::<f64>().unwrap());
        assert!((m - 2.0).abs() < 0.1 && (v - 9.0).abs() < 0.5, "{m} {v}");

        let x = Value::Tensor(Tensor::zeros(DType::F16, vec![50, 400]).unwrap());
        let k = Random {
            dist: Dist::Uniform {
                low: -1.0,
                high: 3.0,
            },
            dtype: Some(1),
            shape: None,
            seed: None,
        };
        let u = k
            .run(&[Some(&x)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!((u.dtype(), u.shape()), (DType::F32, &[50usize, 400][..]));
        let u: Vec<f64> = u
            .to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert!(u.iter().all(|&x| (-1.0..3.0).contains(&x)));
        let (m, v) = mean_var(&u);
        assert!(
            (m - 1.0).abs() < 0.05 && (v - 16.0 / 12.0).abs() < 0.05,
            "{m} {v}"
        );
    }

    #[test]
    fn bernoulli_and_multinomial() {
        let p = Value::Tensor(Tensor::from_vec(vec![4], vec![0.0f32, 1.0, 0.0, 1.0]).unwrap());
        let k = Bernoulli {
            dtype: Some(9),
            seed: None,
        };
        let y = k
            .run(&[Some(&p)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!((y.dtype(), y.bytes()), (DType::Bool, &[0u8, 1, 0, 1][..]));
        // Row 0: class 2 only; row 1: classes 0 and 1 equally likely.
        let ninf = f32::NEG_INFINITY;
        let x = Value::Tensor(
            Tensor::from_vec(vec![2, 3], vec![ninf, ninf, 0.0f32, 1.0, 1.0, ninf]).unwrap(),
        );
        let k = Multinomial {
            dtype: 7,
            sample_size: 1000,
            seed: Some(1.0),
        };
        let y = k
            .run(&[Some(&x)], &mut RunCx::new())
            .unwrap()
            .remove(0)
            .into_tensor()
            .unwrap();
        assert_eq!(y.shape(), &[2, 1000]);
        let v = y.to_vec::<i64>().unwrap();
        assert!(v[..1000].iter().all(|&c| c == 2));
        let ones = v[1000..].iter().filter(|&&c| c == 1).count();
        assert!(
            v[1000..].iter().all(|&c| c < 2) && (400..600).contains(&ones),
            "{ones}"
        );
    }
}
