//! The vector-math kernels on the shapes of the transformer models, one thread: the softmax
//! rows of one attention head (128 × 128 scores with a key-padding mask added in the row
//! loop), bias + Gelu over 32 rows of a feed-forward activation (1536 wide, MiniLM; below
//! the size at which the slice kernels split over threads), layer normalization of 128 rows
//! of 768, and the plain `exp` / `erf` slices.
//!
//! `cargo bench -p kiln-runtime --bench vmath` — criterion; throughput in elements per
//! second (divide 1 by it for the time per element).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use kiln_runtime::gemm::vmath::{self, RowArg, RowOp};

/// Deterministic data in `[lo, hi)`.
fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();

    let (rows, n) = (128, 128);
    let scores = data(rows * n, 1, -8.0, 8.0);
    let mask: Vec<f32> = (0..n)
        .map(|j| if j < 100 { 0.0 } else { f32::MIN })
        .collect();
    let mut g = c.benchmark_group("softmax_rows");
    g.throughput(Throughput::Elements((rows * n) as u64));
    let mut x = scores.clone();
    g.bench_function("128x128", |b| {
        b.iter(|| {
            x.copy_from_slice(&scores);
            vmath::softmax_rows_in_place(black_box(&mut x), n)
        })
    });
    // Keys 100.. masked at f32::MIN (as the exports mask padding), and a mask of zeros: the
    // cost of the mask step alone.
    let zeros = vec![0f32; n];
    for (name, m) in [
        ("128x128 + mask", &mask),
        ("128x128 + mask of zeros", &zeros),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                x.copy_from_slice(&scores);
                let pre = [(RowOp::Add, RowArg::Rows { data: m, stride: 0 })];
                vmath::softmax_rows_fused(black_box(&mut x), n, &pre, None)
            })
        });
    }
    g.finish();

    let (rows, n) = (32, 1536);
    let x = data(rows * n, 2, -6.0, 6.0);
    let bias = data(n, 3, -0.5, 0.5);
    let mut out = vec![0f32; rows * n];
    let mut g = c.benchmark_group("elementwise");
    g.throughput(Throughput::Elements((rows * n) as u64));
    g.bench_function("bias_gelu 32x1536", |b| {
        b.iter(|| vmath::bias_gelu(black_box(&x), &bias, &mut out))
    });
    g.bench_function("bias_fast_gelu 32x1536", |b| {
        b.iter(|| vmath::bias_fast_gelu(black_box(&x), &bias, &mut out))
    });
    g.bench_function("exp 32x1536", |b| {
        b.iter(|| vmath::exp_slice(black_box(&x), &mut out))
    });
    g.bench_function("erf 32x1536", |b| {
        b.iter(|| vmath::erf_slice(black_box(&x), &mut out))
    });
    g.finish();

    let (rows, n) = (128, 768);
    let src = data(rows * n, 4, -3.0, 3.0);
    let gamma = data(n, 5, 0.5, 1.5);
    let beta = data(n, 6, -0.5, 0.5);
    let mut x = src.clone();
    let mut g = c.benchmark_group("layer_norm");
    g.throughput(Throughput::Elements((rows * n) as u64));
    g.bench_function("128x768", |b| {
        b.iter(|| {
            x.copy_from_slice(&src);
            for row in x.chunks_exact_mut(n) {
                vmath::norm_row(black_box(row), &gamma, Some(&beta), 1e-12, false);
            }
        })
    });
    g.finish();
    c.final_summary();
}
