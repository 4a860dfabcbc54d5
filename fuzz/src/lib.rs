//! What several fuzz targets share: a scratch directory on tmpfs (the targets that go
//! through files would otherwise measure the disk), the fixed root key that the
//! keystore seeds made by `scripts/fuzz.sh` are sealed under, a panic hook that names
//! the panic in fork mode's log, and a reader of the fuzzer's bytes.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The keystore target's root key. `scripts/fuzz.sh` writes the same 32 bytes to the
/// root key file it makes the keystore seeds with, so seeds open past the root check.
pub const KEYSTORE_ROOT_KEY: &[u8; 32] = b"atrest-fuzz-keystore-root-key-32";

/// A fresh directory, removed when dropped. Directories held in statics are never
/// dropped (libFuzzer ends the process with `exit`), so they live under
/// `$ATREST_FUZZ_SCRATCH` when it is set: `scripts/fuzz.sh` points it at a directory
/// of its own and removes that at the end.
pub fn scratch_dir(name: &str) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let base: PathBuf = match std::env::var_os("ATREST_FUZZ_SCRATCH") {
        Some(dir) => PathBuf::from(dir),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(&format!("atrest-fuzz-{name}-"))
        .tempdir_in(base)
        .expect("a scratch directory for the fuzz target")
}

/// Makes a panic print one line that says what failed, with `ERROR:` in it, before
/// libFuzzer's own report. Fork mode (`-fork=N`, what `scripts/fuzz.sh campaign` runs)
/// keeps nothing of a crashed child's log but its lines that contain `ERROR:`, and a
/// Rust panic (an `expect`, a failed assertion) shows there only as libFuzzer's
/// "deadly signal" (the panic hook aborts): this line keeps the message and place.
/// Call it from the target's `init:` block; the hook already set (libfuzzer-sys's,
/// which prints the usual report and aborts) runs after it.
pub fn report_panics_in_fork_mode() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let place = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!(
            "=={}== ERROR: atrest-fuzz: panic{place}: {}",
            std::process::id(),
            message.replace('\n', " | ")
        );
        previous(info);
    }));
}

/// Reads little-endian integers and byte runs off the fuzzer's input; past the end
/// every read returns zeros, so any input is a complete program.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `len` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}
