//! Worker threads for kiln's kernels: a rayon pool builder whose workers are pinned, one to a
//! CPU.
//!
//! Why pinned: the calling thread sleeps while the workers run a model, and a woken worker
//! is placed next to the thread that woke it. On a 2-vCPU virtual machine both workers were
//! often found on one vCPU for whole runs, the other idle (`kiln bench` on a 128×768×768
//! MatMul at 2 threads: 1.9 ms per run against 1.0 pinned, 1.8 on one thread). ONNX Runtime
//! does not meet this: its idle workers spin, so the scheduler sees them busy and spreads them.

/// A builder of a rayon pool of `threads` workers. Worker `i` is pinned to the `i`-th CPU this
/// process may run on when there are at least `threads` of them and the environment variable
/// `KILN_PIN` is not `0`; the flag says whether the workers will be pinned.
pub fn pool_builder(threads: usize) -> (rayon::ThreadPoolBuilder, bool) {
    let cpus = if std::env::var("KILN_PIN").is_ok_and(|v| v == "0") {
        Vec::new()
    } else {
        allowed_cpus()
    };
    let pin = threads > 1 && cpus.len() >= threads;
    let mut b = rayon::ThreadPoolBuilder::new().num_threads(threads);
    if pin {
        b = b.start_handler(move |i| pin_current(cpus[i]));
    }
    (b, pin)
}

/// The CPUs this process may run on, in increasing order (empty where unknown).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pins the calling thread to `cpu`; a failure leaves it unpinned (it only costs speed).
#[cfg(target_os = "linux")]
fn pin_current(cpu: usize) {
    // SAFETY: `set` is a plain bit set holding one CPU; 0 names the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current(_cpu: usize) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn workers_run_on_distinct_cpus() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty(), "sched_getaffinity gave no CPU");
        let n = cpus.len().min(2);
        let (b, pinned) = pool_builder(n);
        assert_eq!(
            pinned,
            n > 1 && std::env::var("KILN_PIN").map_or(true, |v| v != "0")
        );
        let pool = b.build().unwrap();
        let per_worker: Vec<Vec<usize>> = pool.broadcast(|_| allowed_cpus());
        if pinned {
            let want: Vec<Vec<usize>> = cpus[..n].iter().map(|&c| vec![c]).collect();
            assert_eq!(per_worker, want);
        } else {
            assert!(per_worker.iter().all(|w| *w == cpus));
        }
    }
}
