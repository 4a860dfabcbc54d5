//! Memory for secrets that the kernel never swaps out and never writes into a core dump.
//!
//! Every key atrest holds in the clear for longer than one call — a plaintext data key,
//! CMK material, the root key, the XTS round keys expanded from a data key — lives in a
//! [`Locked`] value or [`LockedBytes`]: its own anonymous mapping of whole pages,
//! locked in RAM with `mlock(2)` (so it never reaches swap) and marked
//! `MADV_DONTDUMP` (left out of core dumps even in a process that allows them). On drop
//! the value is dropped in place, then every byte of the mapping is overwritten with
//! zeros before the pages go back to the kernel.
//!
//! One mapping per secret: a key costs one page of locked memory. An unprivileged
//! process may lock only `RLIMIT_MEMLOCK` bytes (8 MiB by default since Linux 5.16,
//! 64 KiB before), so locking can fail. The secret is then kept anyway — still left out
//! of core dumps and still zeroized — and one warning is logged for the process:
//! refusing to run would protect nothing. `docs/SECURITY.md` says how to raise the
//! limit.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

/// Set once a failed `mlock` has been reported, so the warning appears once per process.
static LOCK_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// Whole pages of anonymous memory, zero-filled when made, locked when the limit
/// allows, excluded from core dumps, zeroed and unmapped on drop.
struct Pages {
    /// Start of the mapping (page aligned).
    ptr: NonNull<u8>,
    /// Length of the mapping: a non-zero multiple of the page size.
    len: usize,
    locked: bool,
}

// SAFETY: `Pages` owns its mapping exclusively (no other pointer to it escapes except
// through `&self`/`&mut self` borrows), like a `Box<[u8]>`, so moving it to or sharing
// it between threads is as safe as for a box.
unsafe impl Send for Pages {}
// SAFETY: as above; shared access only ever reads.
unsafe impl Sync for Pages {}

impl Pages {
    /// At least `bytes` bytes (one page for zero bytes). Aborts like a failed `Box`
    /// allocation when the kernel has no memory to map.
    fn new(bytes: usize) -> Self {
        let page = page_size();
        let len = bytes.max(1).next_multiple_of(page);
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory; the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let Some(ptr) = NonNull::new(addr.cast::<u8>()).filter(|_| addr != libc::MAP_FAILED) else {
            std::alloc::handle_alloc_error(
                Layout::from_size_align(len, page).unwrap_or(Layout::new::<u8>()),
            );
        };
        // SAFETY: `ptr..ptr + len` is the mapping just made, owned by nobody else.
        // MADV_DONTDUMP only changes what a core dump includes.
        if unsafe { libc::madvise(addr, len, libc::MADV_DONTDUMP) } != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "madvise(MADV_DONTDUMP) failed for a secret's pages"
            );
        }
        // SAFETY: as above; mlock only pins the pages of our own mapping in RAM.
        let locked = unsafe { libc::mlock(addr, len) } == 0;
        if !locked && !LOCK_FAILURE_REPORTED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "cannot lock key memory in RAM (RLIMIT_MEMLOCK?): keys may be swapped to \
                 disk; raise the limit (ulimit -l, LimitMEMLOCK=) to keep them in RAM"
            );
        }
        Self { ptr, len, locked }
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, initialised (zero-filled by the
        // kernel, then only written through `as_bytes_mut`), alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.as_bytes_mut().zeroize();
        // SAFETY: the mapping is ours and nothing borrows it any more (we hold
        // `&mut self` in drop); munmap also drops the lock.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// A `T` on its own locked pages (see the module docs). It starts as `T::default()`
/// and is filled in place through `DerefMut`, so the secret never sits on the stack.
pub struct Locked<T> {
    pages: Pages,
    _owns: std::marker::PhantomData<T>,
}

impl<T: Default> Locked<T> {
    /// `T::default()` in locked memory.
    ///
    /// # Panics
    ///
    /// If `T` needs an alignment above the page size (no key type does).
    pub fn new_default() -> Self {
        let layout = Layout::new::<T>();
        let pages = Pages::new(layout.size());
        assert!(
            layout.align() <= page_size(),
            "Locked<{}> needs an alignment of {} bytes, above the page size",
            std::any::type_name::<T>(),
            layout.align()
        );
        // SAFETY: the mapping is page aligned (so aligned for `T`, checked above), at
        // least `size_of::<T>()` bytes long and holds no value yet: writing one is how
        // it is initialised.
        unsafe { pages.ptr.cast::<T>().as_ptr().write(T::default()) };
        Self {
            pages,
            _owns: std::marker::PhantomData,
        }
    }
}

impl<T> Locked<T> {
    /// Whether `mlock` succeeded for this value's pages.
    pub fn is_locked(&self) -> bool {
        self.pages.locked
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `new_default` initialised a `T` at the start of the mapping, aligned,
        // and it stays valid until drop; `&self` rules out a concurrent `&mut`.
        unsafe { self.pages.ptr.cast::<T>().as_ref() }
    }
}

impl<T> DerefMut for Locked<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { self.pages.ptr.cast::<T>().as_mut() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: the value was initialised in `new_default` and is dropped exactly
        // once, here; the pages (zeroed and unmapped next) are not read as a `T` again.
        unsafe { std::ptr::drop_in_place(self.pages.ptr.cast::<T>().as_ptr()) };
    }
}

// SAFETY: a `Locked<T>` owns its `T` exclusively, like `Box<T>`: sending it sends the
// `T`, sharing it shares `&T`.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> fmt::Debug for Locked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Locked { .. }")
    }
}

/// A run of secret bytes of any length on its own locked pages, zero-filled when made.
pub struct LockedBytes {
    pages: Pages,
    len: usize,
}

impl LockedBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self {
            pages: Pages::new(len),
            len,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.pages.as_bytes()[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.pages.as_bytes_mut()[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `mlock` succeeded for these pages.
    pub fn is_locked(&self) -> bool {
        self.pages.locked
    }
}

impl fmt::Debug for LockedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockedBytes { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `/proc/self/smaps` fields of the mapping that contains `addr`, `None` when
    /// no mapping does. A mapping starts with a line `START-END perms ...`; its fields
    /// follow, one `Name: value` a line.
    fn smaps_of(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut found: Option<String> = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.ends_with(':') {
                if let Some(fields) = found.as_mut() {
                    fields.push_str(line);
                    fields.push('\n');
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            let (start, end) = first.split_once('-').expect("smaps mapping line");
            let start = usize::from_str_radix(start, 16).expect("hex start");
            let end = usize::from_str_radix(end, 16).expect("hex end");
            if (start..end).contains(&addr) {
                found = Some(String::new());
            }
        }
        found
    }

    fn field_kb(fields: &str, name: &str) -> u64 {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in smaps entry:\n{fields}"))
    }

    #[test]
    fn secret_pages_are_locked_and_not_dumped() {
        let mut key = LockedBytes::zeroed(64);
        key.as_mut_slice().copy_from_slice(&[0xA5; 64]);
        assert!(
            key.is_locked(),
            "mlock failed: this test needs RLIMIT_MEMLOCK >= 1 page"
        );
        let fields = smaps_of(key.as_slice().as_ptr() as usize).expect("mapping in smaps");
        assert!(field_kb(&fields, "Locked") >= 4, "{fields}");
        let flags = fields
            .lines()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("VmFlags");
        assert!(
            flags.split_whitespace().any(|f| f == "lo"),
            "not mlocked: {flags}"
        );
        assert!(
            flags.split_whitespace().any(|f| f == "dd"),
            "not MADV_DONTDUMP: {flags}"
        );
    }

    #[test]
    fn dropping_zeroes_the_pages_then_unmaps_them() {
        let mut pages = Pages::new(100);
        pages.as_bytes_mut().fill(0x5A);
        let addr = pages.ptr.as_ptr() as usize;
        // What drop does before unmapping, observed while the mapping still exists.
        pages.as_bytes_mut().zeroize();
        assert!(pages.as_bytes().iter().all(|&b| b == 0));
        pages.as_bytes_mut().fill(0x5A);
        drop(pages);
        assert!(
            smaps_of(addr).is_none(),
            "the pages are still mapped after drop"
        );
    }

    #[derive(Default)]
    struct Schedule {
        rounds: [[u8; 16]; 15],
        dropped: Option<std::sync::Arc<AtomicBool>>,
    }

    impl Drop for Schedule {
        fn drop(&mut self) {
            if let Some(flag) = &self.dropped {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn a_locked_value_is_filled_in_place_and_dropped() {
        let dropped = std::sync::Arc::new(AtomicBool::new(false));
        let mut value = Locked::<Schedule>::new_default();
        assert_eq!(value.rounds, [[0; 16]; 15]);
        value.rounds[14] = [7; 16];
        value.dropped = Some(dropped.clone());
        assert_eq!(value.rounds[14], [7; 16]);
        assert!(value.is_locked());
        assert_eq!(format!("{value:?}"), "Locked { .. }");
        drop(value);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the value's own Drop did not run"
        );
        let empty = LockedBytes::zeroed(0);
        assert!(empty.is_empty() && empty.as_slice().is_empty());
    }
}
