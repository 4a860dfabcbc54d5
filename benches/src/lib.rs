//! Shared helpers for atrest's benches and side-by-side comparisons.

pub mod chart;

use std::time::Instant;

use anyhow::{Context, Result};

/// Nanoseconds the calling thread has run on a CPU (first field of schedstat).
pub fn thread_cpu_ns() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    let field = text.split_whitespace().next().context("empty schedstat")?;
    Ok(field.parse()?)
}

/// Bytes per CPU-second of `op` (which processes `bytes_per_call`) repeated for about
/// `seconds` of the calling thread's CPU time. `openssl speed` likewise divides by
/// user CPU time, so on a machine shared with other work this measures the code, not
/// the share of the core it got.
pub fn throughput(seconds: f64, bytes_per_call: usize, mut op: impl FnMut()) -> Result<f64> {
    // Grow the batch between clock reads until it takes a few milliseconds, so that
    // reading the clock (a /proc read for the CPU clock) costs nothing measurable.
    let mut batch = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        if t.elapsed().as_secs_f64() >= 0.002 {
            break;
        }
        batch *= 2;
    }
    let start_cpu = thread_cpu_ns()?;
    let mut calls = 0u64;
    loop {
        for _ in 0..batch {
            op();
        }
        calls += batch;
        let spent = (thread_cpu_ns()? - start_cpu) as f64 / 1e9;
        if spent >= seconds {
            return Ok((calls as f64 * bytes_per_call as f64) / spent);
        }
    }
}
