//! kiln's runtime: run-time values, the kernel interface, one kernel per op, and the
//! executor of a compiled [`Plan`].
//!
//! A plan is a list of steps over numbered slots; each step runs one [`Kernel`] on the
//! values in its input slots and stores its outputs. Values die at their last use and
//! their buffers go back to a pool, so a model run in a loop stops allocating after the
//! first run.

pub mod error;
pub mod gemm;
pub mod kernel;
pub mod kernels;
pub mod plan;
pub mod threads;
pub mod value;

pub use error::{KernelError, RuntimeError};
pub use kernel::{BuildCx, Kernel, Profile, RunCx};
pub use plan::{Plan, PlanInput, Slot, Step};
pub use value::Value;
