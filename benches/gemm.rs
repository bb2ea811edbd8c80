//! f32 GEMM on the BERT-base shapes: M ∈ {128, 1024} rows × (K×N) ∈ {768×768, 768×3072,
//! 3072×768}, single-threaded and with 2 threads, B pre-packed (the weights path) and packed per
//! call, per ISA.
//!
//! * `cargo bench -p kiln-runtime --bench gemm` — criterion (throughput in "elem/s" = FLOP/s).
//! * `cargo bench -p kiln-runtime --bench gemm -- --table [--reps N]` —
//!   measures the clock (dependent add chain, FMA latency and throughput loops, with 1 and 2
//!   threads busy), then prints a table of medians of N runs (default 30) after warm-up, in
//!   GFLOP/s and % of the AVX2 peak `cores × 2 FMA × 8 lanes × 2 flops × clock`.
//! * `KILN_BENCH_ISA=avx2,avx512` restricts the ISAs (default: every SIMD ISA of this CPU).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use kiln_runtime::gemm::{Epilogue, Gemm, Isa, PackedB};

const SHAPES: [(usize, usize, usize); 6] = [
    (128, 768, 768),
    (128, 768, 3072),
    (128, 3072, 768),
    (1024, 768, 768),
    (1024, 768, 3072),
    (1024, 3072, 768),
];

/// Deterministic data in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

struct Shape {
    m: usize,
    k: usize,
    n: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl Shape {
    fn new((m, k, n): (usize, usize, usize)) -> Shape {
        Shape { m, k, n, a: data(m * k, 1), b: data(k * n, 2), c: vec![0.0; m * n] }
    }
    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
    fn label(&self) -> String {
        format!("M{}_K{}_N{}", self.m, self.k, self.n)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// B packed once (weights), `sgemm_packed`.
    Packed,
    /// `sgemm`, B packed on every call.
    Unpacked,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Packed => "packed",
            Variant::Unpacked => "sgemm",
        }
    }
}

fn run_once(g: &Gemm, s: &mut Shape, pb: &PackedB, v: Variant) {
    let (m, k, n) = (s.m, s.k, s.n);
    match v {
        Variant::Packed => g.sgemm_packed(m, 1.0, &s.a, k, false, pb, 0.0, &mut s.c, n, Epilogue::NONE),
        Variant::Unpacked => g.sgemm(m, n, k, 1.0, &s.a, k, false, &s.b, n, false, 0.0, &mut s.c, n, Epilogue::NONE),
    }
    black_box(&s.c);
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
}

/// `KILN_BENCH_SHAPES=128x768x768,...` (M×K×N; default: the six BERT-base shapes).
fn shapes() -> Vec<Shape> {
    match std::env::var("KILN_BENCH_SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let d: Vec<usize> = s.split('x').map(|x| x.parse().expect("KILN_BENCH_SHAPES")).collect();
                Shape::new((d[0], d[1], d[2]))
            })
            .collect(),
        Err(_) => SHAPES.iter().map(|&s| Shape::new(s)).collect(),
    }
}

/// `KILN_BENCH_B=packed|sgemm` (default: both).
fn variants() -> Vec<Variant> {
    match std::env::var("KILN_BENCH_B").as_deref() {
        Ok("packed") => vec![Variant::Packed],
        Ok("sgemm") => vec![Variant::Unpacked],
        _ => vec![Variant::Packed, Variant::Unpacked],
    }
}

/// `KILN_BENCH_THREADS=1,2` (default: 1 and 2).
fn thread_counts() -> Vec<usize> {
    match std::env::var("KILN_BENCH_THREADS") {
        Ok(v) => v.split(',').map(|s| s.parse().expect("KILN_BENCH_THREADS")).collect(),
        Err(_) => vec![1, 2],
    }
}

/// `KILN_BENCH_ISA=avx2,avx512` (default: every SIMD ISA of this CPU).
fn isas() -> Vec<Isa> {
    if let Ok(v) = std::env::var("KILN_BENCH_ISA") {
        return v.split(',').map(|s| s.parse().expect("KILN_BENCH_ISA")).collect();
    }
    [Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().filter(|i| i.is_available()).collect()
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// Cycles-per-second estimates on the calling thread.
#[cfg(target_arch = "x86_64")]
mod clock {
    use std::arch::asm;
    use std::time::Instant;

    /// A chain of dependent 64-bit adds (1 cycle each on every x86 core of the last decade).
    pub fn add_chain_hz() -> f64 {
        let iters: u64 = 20_000_000;
        let t = Instant::now();
        unsafe {
            let mut x: u64 = 0;
            asm!(
                "2:",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "add {x}, 1", "add {x}, 1", "add {x}, 1", "add {x}, 1",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) iters => _,
                options(nostack, nomem),
            );
            std::hint::black_box(x);
        }
        (iters * 16) as f64 / t.elapsed().as_secs_f64()
    }

    /// A chain of dependent `vfmadd231ps ymm` (latency 4 cycles on Zen 3 / Zen 4 / Intel since
    /// Skylake): returns FMAs per second (× 4 = Hz under that latency).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_chain_per_s() -> f64 {
        let iters: u64 = 5_000_000;
        let t = Instant::now();
        asm!(
            "vxorps ymm0, ymm0, ymm0",
            "vxorps ymm1, ymm1, ymm1",
            "2:",
            "vfmadd231ps ymm0, ymm1, ymm1", "vfmadd231ps ymm0, ymm1, ymm1",
            "vfmadd231ps ymm0, ymm1, ymm1", "vfmadd231ps ymm0, ymm1, ymm1",
            "vfmadd231ps ymm0, ymm1, ymm1", "vfmadd231ps ymm0, ymm1, ymm1",
            "vfmadd231ps ymm0, ymm1, ymm1", "vfmadd231ps ymm0, ymm1, ymm1",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _,
            options(nostack, nomem),
        );
        (iters * 8) as f64 / t.elapsed().as_secs_f64()
    }

    /// 12 independent `vfmadd231ps ymm` chains: AVX2 FLOP/s one core can really reach.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_throughput_flops() -> f64 {
        fma_throughput_flops_n(5_000_000)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_throughput_flops_n(iters: u64) -> f64 {
        let t = Instant::now();
        asm!(
            "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
            "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
            "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
            "vxorps ymm12, ymm12, ymm12", "vxorps ymm13, ymm13, ymm13",
            "2:",
            "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13",
            "vfmadd231ps ymm2, ymm12, ymm13", "vfmadd231ps ymm3, ymm12, ymm13",
            "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
            "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13",
            "vfmadd231ps ymm8, ymm12, ymm13", "vfmadd231ps ymm9, ymm12, ymm13",
            "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
            out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
            out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
            options(nostack, nomem),
        );
        (iters * 12 * 16) as f64 / t.elapsed().as_secs_f64()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Runs `f` on `threads` threads at once, `reps` times; the median over all of the per-thread
/// results.
fn concurrent(threads: usize, reps: usize, f: fn() -> f64) -> f64 {
    let mut all = Vec::new();
    for _ in 0..reps {
        let hs: Vec<_> = (0..threads).map(|_| std::thread::spawn(f)).collect();
        all.extend(hs.into_iter().map(|h| h.join().unwrap()));
    }
    median(&mut all)
}

/// Measured clocks (Hz) with 1 and 2 cores busy.
struct Clock {
    hz1: f64,
    hz2: f64,
}

#[cfg(target_arch = "x86_64")]
fn measure_clock() -> Clock {
    let reps = 7;
    println!("clock measurement (median of {reps} runs per thread):");
    let add1 = concurrent(1, reps, clock::add_chain_hz);
    let add2 = concurrent(2, reps, clock::add_chain_hz);
    println!("  dependent add chain (1 cycle/add):       1 thread {:.3} GHz, 2 threads {:.3} GHz", add1 / 1e9, add2 / 1e9);
    if Isa::Avx2.is_available() {
        let lat1 = concurrent(1, reps, || unsafe { clock::fma_chain_per_s() }) * 4.0;
        let lat2 = concurrent(2, reps, || unsafe { clock::fma_chain_per_s() }) * 4.0;
        println!("  dependent FMA chain (4 cycles/FMA):      1 thread {:.3} GHz, 2 threads {:.3} GHz", lat1 / 1e9, lat2 / 1e9);
        let thr1 = concurrent(1, reps, || unsafe { clock::fma_throughput_flops() });
        let thr2 = concurrent(2, reps, || unsafe { clock::fma_throughput_flops() });
        println!(
            "  12 independent ymm FMA chains:           1 thread {:.1} GFLOP/s (= {:.3} GHz × 32), 2 threads {:.1} GFLOP/s per core",
            thr1 / 1e9,
            thr1 / 32e9,
            thr2 / 1e9
        );
    }
    if let Ok(s) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(l) = s.lines().find(|l| l.starts_with("cpu MHz")) {
            println!("  /proc/cpuinfo (nominal under KVM):       {}", l.split(':').nth(1).unwrap_or("").trim());
        }
    }
    Clock { hz1: add1, hz2: add2 }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_clock() -> Clock {
    println!("clock: not measured on this architecture; % of peak assumes 1 GHz");
    Clock { hz1: 1e9, hz2: 1e9 }
}

/// AVX2 FLOP/s `threads` cores reach right now (12 independent FMA chains per thread, ~1 ms),
/// summed over the threads: the contemporaneous peak that a GEMM measurement is paired with.
#[cfg(target_arch = "x86_64")]
fn probe_peak(threads: usize) -> f64 {
    if !Isa::Avx2.is_available() {
        return f64::NAN;
    }
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads).map(|_| sc.spawn(|| unsafe { clock::fma_throughput_flops_n(300_000) })).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn probe_peak(_threads: usize) -> f64 {
    f64::NAN
}

// ---------------------------------------------------------------------------------------------
// Table
// ---------------------------------------------------------------------------------------------

fn table(args: &[String]) {
    let reps: usize = args.iter().position(|a| a == "--reps").map(|i| args[i + 1].parse().unwrap()).unwrap_or(30);
    let clock = measure_clock();
    // AVX2 peak: cores × 2 FMA units × 8 lanes × 2 flops × clock.
    let peak = |threads: usize| threads as f64 * 32.0 * if threads == 1 { clock.hz1 } else { clock.hz2 };
    println!(
        "AVX2 peak: 1 thread {:.1} GFLOP/s ({:.3} GHz × 32), 2 threads {:.1} GFLOP/s ({:.3} GHz × 64)\n",
        peak(1) / 1e9,
        clock.hz1 / 1e9,
        peak(2) / 1e9,
        clock.hz2 / 1e9
    );
    println!("columns: median of {reps} runs; % of peak = GFLOP/s ÷ the AVX2 peak above; \"% of probe\" = median over runs of");
    println!("(GEMM FLOP/s ÷ FLOP/s of an FMA-throughput loop on the same threads run right after it), which");
    println!("cancels most of the clock and contention noise of a shared machine; best = fastest run ÷ peak.\n");
    println!("| shape (M×K×N) | ISA | B | threads | median ms | GFLOP/s | % of peak | % of probe | best % |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut shapes = shapes();
    for isa in isas() {
        let g0 = Gemm::new(isa).unwrap();
        for s in shapes.iter_mut() {
            let pb = g0.pack_b(s.k, s.n, &s.b, s.n, false);
            for v in variants() {
                for threads in thread_counts() {
                    let g = g0.with_threads(threads);
                    let p = pool(threads);
                    let (mut times, mut ratios): (Vec<f64>, Vec<f64>) = p.install(|| {
                        let warm = Instant::now();
                        while warm.elapsed() < Duration::from_millis(200) {
                            run_once(&g, s, &pb, v);
                        }
                        (0..reps)
                            .map(|_| {
                                let t = Instant::now();
                                run_once(&g, s, &pb, v);
                                let dt = t.elapsed().as_secs_f64();
                                (dt, s.flops() / dt / probe_peak(threads))
                            })
                            .unzip()
                    });
                    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
                    let med = median(&mut times);
                    let ratio = median(&mut ratios);
                    let gf = s.flops() / med;
                    println!(
                        "| {}×{}×{} | {} | {} | {} | {:.3} | {:.1} | {:.1} % | {:.1} % | {:.1} % |",
                        s.m,
                        s.k,
                        s.n,
                        isa,
                        v.name(),
                        threads,
                        med * 1e3,
                        gf / 1e9,
                        100.0 * gf / peak(threads),
                        100.0 * ratio,
                        100.0 * s.flops() / min / peak(threads)
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------------------------

fn criterion_benches() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut shapes = shapes();
    for isa in isas() {
        let g0 = Gemm::new(isa).unwrap();
        let mut group = c.benchmark_group(format!("sgemm_{isa}"));
        for s in shapes.iter_mut() {
            group.throughput(Throughput::Elements(s.flops() as u64));
            let pb = g0.pack_b(s.k, s.n, &s.b, s.n, false);
            for v in variants() {
                for threads in thread_counts() {
                    let g = g0.with_threads(threads);
                    let p = pool(threads);
                    let id = BenchmarkId::new(format!("{}_{}t", v.name(), threads), s.label());
                    group.bench_function(id, |bch| p.install(|| bch.iter(|| run_once(&g, s, &pb, v))));
                }
            }
        }
        group.finish();
    }
    c.final_summary();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--table") {
        table(&args);
    } else {
        criterion_benches();
    }
}
