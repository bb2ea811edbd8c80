//! f32 GEMM on the BERT-base shapes: M ∈ {128, 1024} rows × (K×N) ∈ {768×768, 768×3072,
//! 3072×768}, single-threaded and with 2 threads, B pre-packed (the weights path) and packed per
//! call, per ISA.
//!
//! * `cargo bench -p kiln-runtime --bench gemm` — criterion (throughput in "elem/s" = FLOP/s).
//! * `cargo bench -p kiln-runtime --bench gemm -- --table [--rounds R] [--reps N]` —
//!   measures the clock (dependent add chain, FMA latency and throughput loops, with 1 and 2
//!   threads busy, per second of thread CPU time), then prints a table of medians of R rounds
//!   (default 5) of N runs (default 6), the configurations taking turns, in GFLOP/s and % of
//!   the ISA's peak, from wall time and from CPU time: AVX2 `cores × 2 FMA × 8 lanes × 2 flops
//!   × clock`; AVX-512 `cores × F × clock`, F the FLOPs per cycle of a zmm FMA probe rounded to
//!   64 (two 512-bit FMA pipes: Zen 5, Intel server parts) or 32 (double-pumped: Zen 4).
//! * `KILN_BENCH_ISA=avx2,avx512` restricts the ISAs (default: every SIMD ISA of this CPU).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use kiln_runtime::gemm::{AOperand, Activation, BOperand, Epilogue, Gemm, Isa, PackedA, PackedB};

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
    bias: Vec<f32>,
}

impl Shape {
    fn new((m, k, n): (usize, usize, usize)) -> Shape {
        Shape {
            m,
            k,
            n,
            a: data(m * k, 1),
            b: data(k * n, 2),
            c: vec![0.0; m * n],
            bias: data(n, 3),
        }
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
    /// `sgemm` with B stored transposed (`n × k`, as K is in attention's `Q·Kᵀ`).
    UnpackedBt,
    /// B packed once, epilogue bias + Gelu (erf) fused into the store (BERT's FFN1).
    PackedBiasGelu,
    /// A packed once, B packed on every call (a 1×1 convolution: weights × image).
    PackedA,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Packed => "packed",
            Variant::Unpacked => "sgemm",
            Variant::UnpackedBt => "sgemm Bᵀ",
            Variant::PackedBiasGelu => "packed+bias+gelu",
            Variant::PackedA => "packed A",
        }
    }
}

/// The operands packed ahead of time for one shape and engine.
struct Pre {
    b: PackedB,
    a: PackedA,
}

impl Pre {
    fn new(g: &Gemm, s: &Shape) -> Pre {
        Pre {
            b: g.pack_b(s.k, s.n, &s.b, s.n, false),
            a: g.pack_a(s.m, s.k, &s.a, s.k, false),
        }
    }
}

fn run_once(g: &Gemm, s: &mut Shape, pre: &Pre, v: Variant) {
    let (m, k, n) = (s.m, s.k, s.n);
    let pb = &pre.b;
    match v {
        Variant::Packed => {
            g.sgemm_packed(m, 1.0, &s.a, k, false, pb, 0.0, &mut s.c, n, Epilogue::NONE)
        }
        Variant::Unpacked => g.sgemm(
            m,
            n,
            k,
            1.0,
            &s.a,
            k,
            false,
            &s.b,
            n,
            false,
            0.0,
            &mut s.c,
            n,
            Epilogue::NONE,
        ),
        Variant::UnpackedBt => g.sgemm(
            m,
            n,
            k,
            1.0,
            &s.a,
            k,
            false,
            &s.b,
            k,
            true,
            0.0,
            &mut s.c,
            n,
            Epilogue::NONE,
        ),
        Variant::PackedBiasGelu => {
            let epi = Epilogue::bias(&s.bias).with_activation(Activation::Gelu);
            g.sgemm_packed(m, 1.0, &s.a, k, false, pb, 0.0, &mut s.c, n, epi)
        }
        Variant::PackedA => g.sgemm_ops(
            m,
            n,
            k,
            1.0,
            AOperand::Packed(&pre.a),
            BOperand::Matrix {
                b: &s.b,
                ldb: n,
                trans: false,
            },
            0.0,
            &mut s.c,
            n,
            Epilogue::NONE,
        ),
    }
    black_box(&s.c);
}

/// Workers pinned one to a CPU, as `kiln bench` runs them (`KILN_PIN=0`: unpinned).
fn pool(threads: usize) -> rayon::ThreadPool {
    kiln_runtime::threads::pool_builder(threads)
        .0
        .build()
        .unwrap()
}

/// `KILN_BENCH_SHAPES=128x768x768,...` (M×K×N; default: the six BERT-base shapes).
fn shapes() -> Vec<Shape> {
    match std::env::var("KILN_BENCH_SHAPES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                let d: Vec<usize> = s
                    .split('x')
                    .map(|x| x.parse().expect("KILN_BENCH_SHAPES"))
                    .collect();
                Shape::new((d[0], d[1], d[2]))
            })
            .collect(),
        Err(_) => SHAPES.iter().map(|&s| Shape::new(s)).collect(),
    }
}

/// `KILN_BENCH_B=packed,sgemm,sgemm_bt,gelu,packed_a` (default: packed,sgemm; sgemm_bt = B
/// stored transposed; gelu = packed with a fused bias + Gelu; packed_a = A packed ahead of
/// time and B per call, as in a 1×1 convolution).
fn variants() -> Vec<Variant> {
    match std::env::var("KILN_BENCH_B") {
        Ok(v) => v
            .split(',')
            .map(|x| match x {
                "packed" => Variant::Packed,
                "sgemm" => Variant::Unpacked,
                "sgemm_bt" => Variant::UnpackedBt,
                "gelu" => Variant::PackedBiasGelu,
                "packed_a" => Variant::PackedA,
                _ => panic!("KILN_BENCH_B: packed, sgemm, sgemm_bt, gelu or packed_a"),
            })
            .collect(),
        Err(_) => vec![Variant::Packed, Variant::Unpacked],
    }
}

/// `KILN_BENCH_THREADS=1,2` (default: 1 and 2).
fn thread_counts() -> Vec<usize> {
    match std::env::var("KILN_BENCH_THREADS") {
        Ok(v) => v
            .split(',')
            .map(|s| s.parse().expect("KILN_BENCH_THREADS"))
            .collect(),
        Err(_) => vec![1, 2],
    }
}

/// `KILN_BENCH_ISA=avx2,avx512` (default: every SIMD ISA of this CPU).
fn isas() -> Vec<Isa> {
    if let Ok(v) = std::env::var("KILN_BENCH_ISA") {
        return v
            .split(',')
            .map(|s| s.parse().expect("KILN_BENCH_ISA"))
            .collect();
    }
    [Isa::Avx2, Isa::Avx512, Isa::Neon]
        .into_iter()
        .filter(|i| i.is_available())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------------------------

/// CPU time of the calling thread / of the process, in seconds (`clock_gettime`, from the C
/// library std already links). Time a thread spends descheduled — this machine is shared with
/// other people's builds — does not count.
mod cputime {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    fn get(clock: i32) -> f64 {
        let mut t = Timespec { sec: 0, nsec: 0 };
        // SAFETY: a valid out-pointer; CLOCK_PROCESS_CPUTIME_ID = 2, CLOCK_THREAD_CPUTIME_ID = 3.
        unsafe { clock_gettime(clock, &mut t) };
        t.sec as f64 + t.nsec as f64 * 1e-9
    }
    pub fn thread() -> f64 {
        get(3)
    }
    pub fn process() -> f64 {
        get(2)
    }
}

/// Cycles-per-second estimates on the calling thread, per second of thread CPU time.
#[cfg(target_arch = "x86_64")]
mod clock {
    use std::arch::asm;

    struct Instant(f64);
    impl Instant {
        fn now() -> Instant {
            Instant(super::cputime::thread())
        }
        fn elapsed(&self) -> Elapsed {
            Elapsed(super::cputime::thread() - self.0)
        }
    }
    struct Elapsed(f64);
    impl Elapsed {
        fn as_secs_f64(&self) -> f64 {
            self.0
        }
    }

    /// A chain of dependent 64-bit adds (1 cycle each on every x86 core of the last decade).
    pub fn add_chain_hz() -> f64 {
        add_chain_hz_n(20_000_000)
    }

    pub fn add_chain_hz_n(iters: u64) -> f64 {
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

    /// 12 independent `vfmadd231ps` chains on the vector registers named `$r` ("ymm" or
    /// "zmm", `$lanes` floats each), `$iters` times; returns FLOP/s.
    macro_rules! fma_chains {
        ($r:literal, $lanes:expr, $iters:expr) => {{
            let iters: u64 = $iters;
            let t = Instant::now();
            asm!(
                concat!("vxorps ", $r, "0, ", $r, "0, ", $r, "0"),
                concat!("vxorps ", $r, "1, ", $r, "1, ", $r, "1"),
                concat!("vxorps ", $r, "2, ", $r, "2, ", $r, "2"),
                concat!("vxorps ", $r, "3, ", $r, "3, ", $r, "3"),
                concat!("vxorps ", $r, "4, ", $r, "4, ", $r, "4"),
                concat!("vxorps ", $r, "5, ", $r, "5, ", $r, "5"),
                concat!("vxorps ", $r, "6, ", $r, "6, ", $r, "6"),
                concat!("vxorps ", $r, "7, ", $r, "7, ", $r, "7"),
                concat!("vxorps ", $r, "8, ", $r, "8, ", $r, "8"),
                concat!("vxorps ", $r, "9, ", $r, "9, ", $r, "9"),
                concat!("vxorps ", $r, "10, ", $r, "10, ", $r, "10"),
                concat!("vxorps ", $r, "11, ", $r, "11, ", $r, "11"),
                concat!("vxorps ", $r, "12, ", $r, "12, ", $r, "12"),
                concat!("vxorps ", $r, "13, ", $r, "13, ", $r, "13"),
                "2:",
                concat!("vfmadd231ps ", $r, "0, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "1, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "2, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "3, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "4, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "5, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "6, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "7, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "8, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "9, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "10, ", $r, "12, ", $r, "13"),
                concat!("vfmadd231ps ", $r, "11, ", $r, "12, ", $r, "13"),
                "dec rcx",
                "jnz 2b",
                inout("rcx") iters => _,
                // Every vector register the System V ABI lets a call overwrite, these among them.
                clobber_abi("C"),
                options(nostack, nomem),
            );
            (iters * 12 * 2 * $lanes) as f64 / t.elapsed().as_secs_f64()
        }};
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_throughput_flops_n(iters: u64) -> f64 {
        fma_chains!("ymm", 8, iters)
    }

    /// 12 independent `vfmadd231ps zmm` chains: AVX-512 FLOP/s one core can really reach
    /// (twice the AVX2 rate with two 512-bit FMA pipes, the same where they are double-pumped).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512_throughput_flops() -> f64 {
        fma_chains!("zmm", 16, 5_000_000)
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
    /// FLOPs per cycle per core of AVX-512 FMAs, from the zmm probe: 64 with two 512-bit FMA
    /// pipes, 32 where they are double-pumped (0 without AVX-512).
    avx512_per_cycle: f64,
}

#[cfg(target_arch = "x86_64")]
fn measure_clock() -> Clock {
    let reps = 7;
    println!(
        "clock measurement (median of {reps} runs per thread, per second of thread CPU time):"
    );
    let add1 = concurrent(1, reps, clock::add_chain_hz);
    let add2 = concurrent(2, reps, clock::add_chain_hz);
    println!(
        "  dependent add chain (1 cycle/add):       1 thread {:.3} GHz, 2 threads {:.3} GHz",
        add1 / 1e9,
        add2 / 1e9
    );
    if Isa::Avx2.is_available() {
        let lat1 = concurrent(1, reps, || unsafe { clock::fma_chain_per_s() }) * 4.0;
        let lat2 = concurrent(2, reps, || unsafe { clock::fma_chain_per_s() }) * 4.0;
        println!(
            "  dependent FMA chain (4 cycles/FMA):      1 thread {:.3} GHz, 2 threads {:.3} GHz",
            lat1 / 1e9,
            lat2 / 1e9
        );
        let thr1 = concurrent(1, reps, || unsafe { clock::fma_throughput_flops() });
        let thr2 = concurrent(2, reps, || unsafe { clock::fma_throughput_flops() });
        println!(
            "  12 independent ymm FMA chains:           1 thread {:.1} GFLOP/s (= {:.3} GHz × 32), 2 threads {:.1} GFLOP/s per core",
            thr1 / 1e9,
            thr1 / 32e9,
            thr2 / 1e9
        );
    }
    let mut avx512_per_cycle = 0.0;
    if Isa::Avx512.is_available() {
        let thr = concurrent(1, reps, || unsafe { clock::fma512_throughput_flops() });
        // Rounded to what the hardware can have, so that a probe slowed by the host's load
        // does not lower the peak.
        avx512_per_cycle = if thr / add1 > 48.0 { 64.0 } else { 32.0 };
        println!(
            "  12 independent zmm FMA chains:           1 thread {:.1} GFLOP/s (= {:.1} FLOP/cycle at the add-chain clock: AVX-512 peak {} × clock)",
            thr / 1e9,
            thr / add1,
            avx512_per_cycle
        );
    }
    if let Ok(s) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(l) = s.lines().find(|l| l.starts_with("cpu MHz")) {
            println!(
                "  /proc/cpuinfo (nominal under KVM):       {}",
                l.split(':').nth(1).unwrap_or("").trim()
            );
        }
    }
    Clock {
        hz1: add1,
        hz2: add2,
        avx512_per_cycle,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_clock() -> Clock {
    println!("clock: not measured on this architecture; % of peak assumes 1 GHz");
    Clock {
        hz1: 1e9,
        hz2: 1e9,
        avx512_per_cycle: 0.0,
    }
}

// ---------------------------------------------------------------------------------------------
// Table
// ---------------------------------------------------------------------------------------------

fn table(args: &[String]) {
    let arg = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].parse().unwrap())
            .unwrap_or(default)
    };
    let reps = arg("--reps", 6);
    let rounds = arg("--rounds", 5);
    let clock = measure_clock();
    // AVX2 peak: cores × 2 FMA units × 8 lanes × 2 flops × clock.
    let peak =
        |threads: usize| threads as f64 * 32.0 * if threads == 1 { clock.hz1 } else { clock.hz2 };
    println!(
        "AVX2 peak: 1 thread {:.1} GFLOP/s ({:.3} GHz × 32), 2 threads {:.1} GFLOP/s ({:.3} GHz × 64)\n",
        peak(1) / 1e9,
        clock.hz1 / 1e9,
        peak(2) / 1e9,
        clock.hz2 / 1e9
    );
    if clock.avx512_per_cycle > 0.0 {
        println!(
            "AVX-512 peak: 1 thread {:.1} GFLOP/s, 2 threads {:.1} GFLOP/s\n",
            clock.hz1 * clock.avx512_per_cycle / 1e9,
            2.0 * clock.hz2 * clock.avx512_per_cycle / 1e9
        );
    }
    println!("Each timed run is followed by a ~0.6 ms probe on every worker thread: a dependent add chain");
    println!("(the clock: the host moves these vCPUs between ~2.6 and ~3.7 GHz) and 12 independent ymm FMA");
    println!("chains (the FLOP/s a core delivers at that moment; less than 32 × clock when the host's other");
    println!("hyperthread of the core is busy). % of peak = FLOPs ÷ (time × threads × F × clock of that run),");
    println!(
        "F = 32 for AVX2 and the zmm probe's FLOP/cycle for AVX-512 ({}); % of FMA probe = FLOPs ÷",
        clock.avx512_per_cycle
    );
    println!("(time × threads × probe FLOP/s of that run × F/32). Medians over {rounds} rounds ×");
    println!("{reps} runs, the configurations taking turns (30 ms warm-up each). wall: wall-clock time (best:");
    println!("the best run); cpu: CPU time (of the computing thread for 1 thread, of the whole process —");
    println!("rayon's spinning included — for 2), not distorted by time slices lost to other processes.\n");
    println!("| shape (M×K×N) | ISA | B | threads | median ms | GFLOP/s | clock GHz | FMA probe GFLOP/s/core | % of peak (wall) | best % (wall) | % of peak (cpu) | % of FMA probe |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut shapes = shapes();
    let gemms: Vec<Gemm> = isas().into_iter().map(|i| Gemm::new(i).unwrap()).collect();
    let packed: Vec<Vec<Pre>> = gemms
        .iter()
        .map(|g| shapes.iter().map(|s| Pre::new(g, s)).collect())
        .collect();
    let pools: Vec<(usize, rayon::ThreadPool)> =
        thread_counts().into_iter().map(|t| (t, pool(t))).collect();
    // (gemm, shape, variant, pool) → (wall times, cpu times); the configurations take turns, one
    // batch of runs each per round, so that bursts of load from other processes spread over all.
    let mut configs = Vec::new();
    for gi in 0..gemms.len() {
        for si in 0..shapes.len() {
            for v in variants() {
                for pi in 0..pools.len() {
                    configs.push((gi, si, v, pi, Vec::<Run>::new()));
                }
            }
        }
    }
    for _ in 0..rounds {
        for (gi, si, v, pi, runs) in configs.iter_mut() {
            let (threads, p) = &pools[*pi];
            let g = gemms[*gi].with_threads(*threads);
            let s = &mut shapes[*si];
            let pb = &packed[*gi][*si];
            p.install(|| {
                let warm = Instant::now();
                while warm.elapsed() < Duration::from_millis(30) {
                    run_once(&g, s, pb, *v);
                }
            });
            for _ in 0..reps {
                let (wall, cpu) = p.install(|| {
                    let clk = if *threads == 1 {
                        cputime::thread
                    } else {
                        cputime::process
                    };
                    let c0 = clk();
                    let t = Instant::now();
                    run_once(&g, s, pb, *v);
                    (t.elapsed().as_secs_f64(), clk() - c0)
                });
                // The clock and the FMA throughput of each worker right after the run.
                let probes: Vec<(f64, f64)> = p.broadcast(|_| probe());
                let n = probes.len() as f64;
                let hz = probes.iter().map(|p| p.0).sum::<f64>() / n;
                let fma = probes.iter().map(|p| p.1).sum::<f64>() / n;
                runs.push(Run { wall, cpu, hz, fma });
            }
        }
    }
    for (gi, si, v, pi, runs) in configs.iter() {
        let threads = pools[*pi].0 as f64;
        // FLOPs per cycle per core at this ISA's peak (the ymm probe runs at 32).
        let per_cycle = match gemms[*gi].isa() {
            Isa::Avx512 if clock.avx512_per_cycle > 0.0 => clock.avx512_per_cycle,
            _ => 32.0,
        };
        let s = &shapes[*si];
        let f = s.flops();
        if std::env::var_os("KILN_BENCH_SERIES").is_some() {
            let ms: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.2}@{:.2}", r.wall * 1e3, r.hz / 1e9))
                .collect();
            println!("  series ms@GHz: {}", ms.join(" "));
        }
        let med = |x: &mut dyn Iterator<Item = f64>| median(&mut x.collect::<Vec<_>>());
        let wall = med(&mut runs.iter().map(|r| r.wall));
        let hz = med(&mut runs.iter().map(|r| r.hz));
        let fma = med(&mut runs.iter().map(|r| r.fma));
        // % of the peak at the add-chain clock, from wall time and from CPU time; % of the FMA
        // throughput measured right after each run.
        let eff_wall = med(&mut runs
            .iter()
            .map(|r| f / (r.wall * threads * per_cycle * r.hz)));
        let best = runs
            .iter()
            .map(|r| f / (r.wall * threads * per_cycle * r.hz))
            .fold(0.0, f64::max);
        let eff_cpu = med(&mut runs.iter().map(|r| f / (r.cpu * per_cycle * r.hz)));
        let eff_fma = med(&mut runs
            .iter()
            .map(|r| f / (r.wall * threads * r.fma * per_cycle / 32.0)));
        println!(
            "| {}×{}×{} | {} | {} | {} | {:.3} | {:.1} | {:.2} | {:.1} | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
            s.m,
            s.k,
            s.n,
            gemms[*gi].isa(),
            v.name(),
            threads,
            wall * 1e3,
            f / wall / 1e9,
            hz / 1e9,
            fma / 1e9,
            100.0 * eff_wall,
            100.0 * best,
            100.0 * eff_cpu,
            100.0 * eff_fma,
        );
    }
}

struct Run {
    wall: f64,
    cpu: f64,
    /// Clock (dependent adds per CPU-second) right after the run, mean over the workers.
    hz: f64,
    /// AVX2 FLOPs per CPU-second of 12 independent FMA chains right after the run, mean over the
    /// workers: what a core delivered at that moment (lower than 32 × clock when the host's
    /// other hyperthread of the core is busy).
    fma: f64,
}

/// (clock, FMA FLOP/s) of the calling thread now, per second of thread CPU time (~0.6 ms).
#[cfg(target_arch = "x86_64")]
fn probe() -> (f64, f64) {
    let hz = clock::add_chain_hz_n(60_000);
    let fma = if Isa::Avx2.is_available() {
        unsafe { clock::fma_throughput_flops_n(60_000) }
    } else {
        f64::NAN
    };
    (hz, fma)
}

#[cfg(not(target_arch = "x86_64"))]
fn probe() -> (f64, f64) {
    (f64::NAN, f64::NAN)
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
            let pb = Pre::new(&g0, s);
            for v in variants() {
                for threads in thread_counts() {
                    let g = g0.with_threads(threads);
                    let p = pool(threads);
                    let id = BenchmarkId::new(format!("{}_{}t", v.name(), threads), s.label());
                    group.bench_function(id, |bch| {
                        p.install(|| bch.iter(|| run_once(&g, s, &pb, v)))
                    });
                }
            }
        }
        group.finish();
    }
    c.final_summary();
}

/// `--ab "isa:kc:mc:nc:threads[:packed_a];..."`: the configurations run interleaved (one run of each
/// per round), medians and minima per shape. For tuning.
fn ab(spec: &str, reps: usize) {
    let configs: Vec<(String, Gemm, usize)> = spec
        .split(';')
        .map(|c| {
            let f: Vec<&str> = c.split(':').collect();
            let g = Gemm::new(f[0].parse().unwrap()).unwrap().with_blocking(
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            );
            let t: usize = f[4].parse().unwrap();
            // An optional sixth field `packed_a`: A packed even where it could be read in place.
            let g = g.with_direct_a(f.get(5) != Some(&"packed_a"));
            (c.to_string(), g.with_threads(t), t)
        })
        .collect();
    let pools: Vec<rayon::ThreadPool> = configs.iter().map(|c| pool(c.2)).collect();
    for s in shapes().iter_mut() {
        let pbs: Vec<Pre> = configs.iter().map(|c| Pre::new(&c.1, s)).collect();
        let mut times = vec![Vec::new(); configs.len()];
        for round in 0..reps + 3 {
            for (i, c) in configs.iter().enumerate() {
                for v in variants() {
                    let dt = pools[i].install(|| {
                        let t = Instant::now();
                        run_once(&c.1, s, &pbs[i], v);
                        t.elapsed().as_secs_f64()
                    });
                    if round >= 3 && v == variants()[0] {
                        times[i].push(dt);
                    }
                }
            }
        }
        for (i, c) in configs.iter().enumerate() {
            let min = times[i].iter().cloned().fold(f64::INFINITY, f64::min);
            let med = median(&mut times[i]);
            println!(
                "{} {:<28} median {:7.1} GFLOP/s  best {:7.1} GFLOP/s",
                s.label(),
                c.0,
                s.flops() / med / 1e9,
                s.flops() / min / 1e9
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ab") {
        let reps = args
            .iter()
            .position(|a| a == "--reps")
            .map(|i| args[i + 1].parse().unwrap())
            .unwrap_or(20);
        ab(&args[i + 1], reps);
    } else if args.iter().any(|a| a == "--table") {
        table(&args);
    } else {
        criterion_benches();
    }
}
