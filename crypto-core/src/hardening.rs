//! Process-wide protection for long-running processes that hold unwrapped keys
//! (the NBD server, the KMS endpoint).
//!
//! A core dump of such a process would write its data keys to disk in the clear, which
//! is exactly what atrest exists to prevent. Marking the process non-dumpable stops the
//! kernel from writing core dumps and stops other unprivileged processes of the same
//! user from attaching with ptrace or reading `/proc/PID/mem`.
#![allow(unsafe_code)]

use std::io;

/// Marks this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`).
pub fn disable_core_dumps() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes only integer arguments; the kernel reads no memory
    // of ours and the call has no effect on Rust's invariants.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel would write a core dump of this process (`PR_GET_DUMPABLE`).
pub fn is_dumpable() -> io::Result<bool> {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments and only returns an integer.
    let rc = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hardened_process_is_not_dumpable() {
        disable_core_dumps().expect("prctl(PR_SET_DUMPABLE)");
        assert!(!is_dumpable().expect("prctl(PR_GET_DUMPABLE)"));
    }
}
