//! Memory for secrets that the kernel never swaps out and never writes into a core dump.
//!
//! Every key atrest holds in the clear for longer than one call — a plaintext data key,
//! CMK material, the root key, the XTS round keys expanded from a data key — lives in a
//! [`Locked`] value or [`LockedBytes`]: a slot of anonymous memory locked in RAM with
//! `mlock(2)` (so it never reaches swap) and marked `MADV_DONTDUMP` (left out of core
//! dumps even in a process that allows them). On drop the value is dropped in place,
//! then every byte of its slot is overwritten with zeros.
//!
//! Mapping and locking pages costs tens of microseconds (`mmap`, `mlock`, and a TLB
//! shootdown across threads at `munmap`), more than a key-service request spends on
//! its keys. So secrets up to 4 KiB take slots of a few size classes carved from
//! locked chunks that are mapped once and reused: a freed slot is zeroed and goes back
//! to its class's free list; chunks are never unmapped, so locked memory stays at the
//! peak of secrets alive at once (rounded up to chunks). Larger secrets get a mapping
//! of their own, unmapped after zeroing.
//!
//! Locking can fail: an unprivileged process may lock only `RLIMIT_MEMLOCK` bytes
//! (8 MiB by default since Linux 5.16, 64 KiB before). The secret is then kept anyway
//! — still left out of core dumps and still zeroized — and one warning is logged for
//! the process: refusing to run would protect nothing. `docs/SECURITY.md` says how to
//! raise the limit.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use zeroize::Zeroize;

/// Set once a failed `mlock` has been reported, so the warning appears once per process.
static LOCK_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// Slot sizes of the pool, powers of two up to a page: a 32- or 64-byte key, XTS round
/// keys (720 bytes), the portable backend's schedules, a KMS plaintext of up to 4 KiB.
/// A slot is aligned to its size (chunks are page aligned).
const CLASSES: [usize; 4] = [64, 256, 1024, 4096];
/// Bytes mapped at once when a class runs out of slots.
const CHUNK: usize = 16 * 1024;

/// A free slot of the pool: zero bytes in a chunk that is never unmapped.
struct Slot {
    ptr: NonNull<u8>,
    locked: bool,
}

// SAFETY: a free slot is owned by the free list that holds it (no other pointer to it
// is in use), so moving it between threads moves that ownership.
unsafe impl Send for Slot {}

/// The free slots of each class.
static FREE: [Mutex<Vec<Slot>>; CLASSES.len()] = [const { Mutex::new(Vec::new()) }; CLASSES.len()];

fn free_list(class: usize) -> MutexGuard<'static, Vec<Slot>> {
    FREE[class].lock().unwrap_or_else(PoisonError::into_inner)
}

/// Maps `len` bytes (a multiple of the page size) of zeroed anonymous memory, excluded
/// from core dumps and locked when the limit allows; returns it and whether it is
/// locked. Aborts like a failed `Box` allocation when the kernel has no memory to map.
fn map(len: usize) -> (NonNull<u8>, bool) {
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
            Layout::from_size_align(len, page_size()).unwrap_or(Layout::new::<u8>()),
        );
    };
    // SAFETY: `addr..addr + len` is the mapping just made, owned by nobody else.
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
    (ptr, locked)
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Where a [`Region`]'s bytes go back to.
enum Home {
    /// A slot of class `CLASSES[i]`: back to its free list.
    Pool(usize),
    /// A mapping of its own: unmapped.
    Own,
}

/// Zero-filled secret memory, excluded from core dumps, locked when the limit allows;
/// zeroed on drop.
struct Region {
    ptr: NonNull<u8>,
    /// Usable bytes: the slot size, or the length of the own mapping.
    len: usize,
    locked: bool,
    home: Home,
}

// SAFETY: a `Region` owns its bytes exclusively (no other pointer to them is in use
// while it lives), like a `Box<[u8]>`, so moving or sharing it between threads is as
// safe as for a box.
unsafe impl Send for Region {}
// SAFETY: as above; shared access only ever reads.
unsafe impl Sync for Region {}

impl Region {
    /// At least `bytes` bytes aligned to `align` (at most a page).
    fn new(bytes: usize, align: usize) -> Self {
        let wanted = bytes.max(align).max(1);
        match CLASSES.iter().position(|&class| class >= wanted) {
            Some(class) => {
                let mut free = free_list(class);
                if free.is_empty() {
                    let (chunk, locked) = map(CHUNK);
                    // The chunk is never unmapped: its slots circulate for the life of
                    // the process.
                    for offset in (0..CHUNK).step_by(CLASSES[class]).rev() {
                        // SAFETY: `offset` is below CHUNK, the chunk's length.
                        let ptr = unsafe { chunk.add(offset) };
                        free.push(Slot { ptr, locked });
                    }
                }
                let slot = free.pop().expect("a refilled free list has slots");
                Self {
                    ptr: slot.ptr,
                    len: CLASSES[class],
                    locked: slot.locked,
                    home: Home::Pool(class),
                }
            }
            None => {
                let len = wanted.next_multiple_of(page_size());
                let (ptr, locked) = map(len);
                Self {
                    ptr,
                    len,
                    locked,
                    home: Home::Own,
                }
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is this region's memory: readable, initialised
        // (zero-filled, then only written through `as_bytes_mut`), used by nobody else
        // while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Zeroes a pool slot and hands it to `free` (its class's free list, locked by the
    /// caller).
    fn release_into(&mut self, free: &mut Vec<Slot>) {
        self.as_bytes_mut().zeroize();
        free.push(Slot {
            ptr: self.ptr,
            locked: self.locked,
        });
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        match self.home {
            Home::Pool(class) => self.release_into(&mut free_list(class)),
            Home::Own => {
                self.as_bytes_mut().zeroize();
                // SAFETY: the mapping is ours and nothing borrows it any more (we hold
                // `&mut self` in drop); munmap also drops the lock.
                unsafe {
                    libc::munmap(self.ptr.as_ptr().cast(), self.len);
                }
            }
        }
    }
}

/// A `T` in locked memory (see the module docs). It starts as `T::default()` and is
/// filled in place through `DerefMut`, so the secret never sits on the stack.
pub struct Locked<T> {
    region: Region,
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
        assert!(
            layout.align() <= page_size(),
            "Locked<{}> needs an alignment of {} bytes, above the page size",
            std::any::type_name::<T>(),
            layout.align()
        );
        let region = Region::new(layout.size(), layout.align());
        // SAFETY: the region is aligned to `T`'s alignment (asked for above), at least
        // `size_of::<T>()` bytes long and holds no value yet: writing one is how it is
        // initialised.
        unsafe { region.ptr.cast::<T>().as_ptr().write(T::default()) };
        Self {
            region,
            _owns: std::marker::PhantomData,
        }
    }
}

impl<T> Locked<T> {
    /// Whether `mlock` succeeded for this value's memory.
    pub fn is_locked(&self) -> bool {
        self.region.locked
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `new_default` initialised a `T` at the start of the region, aligned,
        // and it stays valid until drop; `&self` rules out a concurrent `&mut`.
        unsafe { self.region.ptr.cast::<T>().as_ref() }
    }
}

impl<T> DerefMut for Locked<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this the only borrow.
        unsafe { self.region.ptr.cast::<T>().as_mut() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: the value was initialised in `new_default` and is dropped exactly
        // once, here; the region (zeroed and released next, when the field is dropped)
        // is not read as a `T` again.
        unsafe { std::ptr::drop_in_place(self.region.ptr.cast::<T>().as_ptr()) };
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

/// A run of secret bytes of any length in locked memory, zero-filled when made.
pub struct LockedBytes {
    region: Region,
    len: usize,
}

impl LockedBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self {
            region: Region::new(len, 1),
            len,
        }
    }

    /// The bytes, read-only.
    pub fn as_slice(&self) -> &[u8] {
        &self.region.as_bytes()[..self.len]
    }

    /// The bytes, to fill in place (never copy them out of locked memory).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.region.as_bytes_mut()[..self.len]
    }

    /// The number of bytes (the locked region behind them may be larger).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `mlock` succeeded for this memory.
    pub fn is_locked(&self) -> bool {
        self.region.locked
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

    /// Whether the `VmFlags` of a smaps entry include `flag`.
    fn has_flag(fields: &str, flag: &str) -> bool {
        fields
            .lines()
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .is_some_and(|flags| flags.split_whitespace().any(|f| f == flag))
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
    fn a_released_slot_is_zeroed_and_back_on_its_free_list() {
        let mut region = Region::new(40, 8);
        assert!(matches!(region.home, Home::Pool(0)) && region.len == 64);
        region.as_bytes_mut().fill(0x5A);
        let addr = region.ptr;
        {
            // What drop does, with the free list held so no other test takes the slot
            // before its bytes are checked.
            let mut free = free_list(0);
            region.release_into(&mut free);
            let slot = free.last().expect("the released slot");
            assert_eq!(slot.ptr, addr);
            // SAFETY: the slot is 64 bytes of a live chunk, and the held free list
            // keeps every other user away from it.
            let bytes = unsafe { std::slice::from_raw_parts(slot.ptr.as_ptr(), 64) };
            assert!(
                bytes.iter().all(|&b| b == 0),
                "a released slot kept its bytes"
            );
        }
        // Released by hand above: forget it rather than release it twice.
        std::mem::forget(region);
    }

    #[test]
    fn a_large_secret_gets_its_own_mapping_zeroed_and_unmapped() {
        let mut big = LockedBytes::zeroed(3 * 4096 + 1);
        assert!(matches!(big.region.home, Home::Own));
        big.as_mut_slice().fill(0x5A);
        let (ptr, len) = (big.region.ptr.as_ptr(), big.region.len);
        let addr = ptr as usize;
        // Tests running in parallel map and unmap memory too, and the kernel may hand
        // this address to one of them once it is free: the mapping is told apart by its
        // identity, not its address. MADV_WIPEONFORK (`wf` in VmFlags) is set by
        // nothing else in the process and keeps the kernel from merging the mapping
        // with a neighbour.
        // SAFETY: `ptr..ptr + len` is the region's own mapping, alive while `big` is;
        // WIPEONFORK only changes what a forked child would see there.
        let marked = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_WIPEONFORK) };
        assert_eq!(marked, 0, "{}", std::io::Error::last_os_error());
        let ours = |fields: &str| has_flag(fields, "wf");
        let fields = smaps_of(addr).expect("mapping in smaps");
        assert!(ours(&fields), "the mark is not on the mapping: {fields}");
        assert!(field_kb(&fields, "Locked") >= 16, "{fields}");
        drop(big);
        // What a parallel test may do: map fresh memory at the freed address (taken
        // only if free, so nothing of anyone else's is touched).
        // SAFETY: MAP_FIXED_NOREPLACE fails rather than replace an existing mapping;
        // the new anonymous mapping is unmapped below and never read.
        let reused = unsafe {
            libc::mmap(
                ptr.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        let outlived = smaps_of(addr).is_some_and(|fields| ours(&fields));
        if reused != libc::MAP_FAILED {
            // SAFETY: `reused..reused + len` is the mapping made just above.
            unsafe { libc::munmap(reused, len) };
        }
        assert!(!outlived, "the mapping outlived its secret");
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
