//! An encrypted volume against a `Vec<u8>` model: unaligned writes, reads, trims,
//! write-zeroes, flushes and reopens from the file, through a writer and a reader on
//! the same file (a second writer is refused), in any order the fuzzer picks. Every read returns what the model holds,
//! out-of-range requests fail without changing anything, holes read as zeros, and
//! what was written survives closing and reopening the volume.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use atrest_fuzz::{scratch_dir, Input};
use blockdev::volume::{self, EncryptedVolume, NewVolumeKey, Volume};
use crypto_core::kms::{CreateKeyRequest, DecryptRequest, KeyService, LocalKms, LocalKmsConfig};
use crypto_core::secret::XtsKey;
use libfuzzer_sys::fuzz_target;

const SIZE: u64 = 16 * 4096;

struct Fixture {
    _scratch: tempfile::TempDir,
    path: PathBuf,
    data_key: [u8; 64],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let scratch = scratch_dir("volume");
        let kms = LocalKms::open(&scratch.path().join("home"), LocalKmsConfig::new())
            .expect("key service");
        let key = kms
            .create_key(&CreateKeyRequest::default())
            .expect("a CMK")
            .arn;
        let path = scratch.path().join("model.vol");
        volume::create(
            &path,
            SIZE,
            NewVolumeKey::Kms {
                kms: &kms,
                key_id: &key,
            },
        )
        .expect("create volume");
        // The data key once, so that reopening in the loop needs no audited Decrypt.
        let locked = EncryptedVolume::open_locked(&path, true).expect("open");
        let plaintext = kms
            .decrypt(&DecryptRequest {
                ciphertext_blob: locked.wrapped_key().blob.clone(),
                encryption_context: locked.encryption_context(),
                key_id: Some(locked.key_arn().to_owned()),
            })
            .expect("unwrap the data key");
        let mut data_key = [0u8; 64];
        data_key.copy_from_slice(plaintext.plaintext.expose());
        Fixture {
            _scratch: scratch,
            path,
            data_key,
        }
    })
}

/// What is kept from one input to the next: the writer and the reader (opening a
/// volume, reading and checking both header copies, twice per input was a quarter of
/// this target's time), and the model's buffers (a fresh 64 KiB allocation is fresh
/// pages under AddressSanitizer's quarantine). Each input starts by trimming the
/// whole volume and zeroing the model, so it starts from the same all-hole state
/// whatever the previous input left; reopening is still exercised by the inputs that
/// ask for it.
struct Kept {
    handles: [Arc<dyn Volume>; 2],
    model: Vec<u8>,
    /// The whole volume as read back at the end of an input.
    all: Vec<u8>,
    /// A read's buffer.
    read: Vec<u8>,
}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

/// Reopens per input past which a reopen request only flushes: each reopen reads and
/// checks both header copies (a third of the time with the campaign's corpus, whose
/// inputs reopen up to nine times), and what a reopen proves (the data survives it)
/// holds after the first as after the ninth.
const MAX_REOPENS: usize = 2;

/// What writes write: `PATTERN[seed..][..length]`, a slice instead of a byte-by-byte
/// fill per write (whose loop libFuzzer traced per byte). Byte `i` is `i * 31`, so
/// each of the 256 seeds gives another sequence; as long as the longest range
/// [`range`] makes (the volume and a sector past it) plus a seed.
static PATTERN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    (0..SIZE as usize + 4096 + 256)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect()
});

/// As many zeros as the volume holds: a hole's bytes in the model are compared with
/// these (one `memcmp`, which libFuzzer does not trace per byte as it does a loop).
static ZEROS: [u8; SIZE as usize] = [0; SIZE as usize];

fn open(fixture: &Fixture, read_only: bool) -> Arc<dyn Volume> {
    let volume = EncryptedVolume::open_locked(&fixture.path, read_only).expect("reopen");
    volume
        .install_key(XtsKey::from_slice(&fixture.data_key).expect("64 bytes"))
        .expect("install the data key");
    Arc::new(volume)
}

/// Offsets and lengths cluster on sector edges so partial heads and tails, whole
/// sectors and the end of the volume all occur; a few fall outside it.
fn position(input: &mut Input<'_>) -> u64 {
    match input.u8() % 4 {
        0 => u64::from(input.u8() % 18) * 4096,
        1 => (u64::from(input.u8() % 17) * 4096 + u64::from(input.u16() % 4096)).min(SIZE),
        2 => u64::from(input.u16()) * 2 % (SIZE + 2),
        _ => SIZE + u64::from(input.u8()),
    }
}

fn range(input: &mut Input<'_>) -> (u64, u64) {
    let (a, b) = (position(input), position(input));
    (a.min(b), a.max(b) - a.min(b))
}

fn in_range(offset: u64, length: u64) -> bool {
    offset.checked_add(length).is_some_and(|end| end <= SIZE)
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let fixture = fixture();
    // The writer, and a reader beside it.
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Kept {
        mut handles,
        mut model,
        mut all,
        mut read,
    } = kept.take().unwrap_or_else(|| Kept {
        handles: [open(fixture, false), open(fixture, true)],
        model: vec![0u8; SIZE as usize],
        all: vec![0u8; SIZE as usize],
        read: Vec::new(),
    });
    handles[0].trim(0, SIZE).expect("reset the volume");
    model.fill(0);
    let mut input = Input::new(data);
    let mut ops = 0;
    let mut reopens = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        let op = input.u8();
        let handle = usize::from(op >> 7);
        // Changes go through the writer; reads, flushes and reopens through either.
        let volume = if matches!(op % 7, 0 | 1 | 4 | 5) {
            &handles[0]
        } else {
            &handles[handle]
        };
        let (offset, length) = range(&mut input);
        let fits = in_range(offset, length);
        let span = || offset as usize..(offset + length) as usize;
        match op % 7 {
            0 | 1 => {
                let seed = usize::from(input.u8());
                let bytes = &PATTERN[seed..seed + length as usize];
                let result = volume.write_at(offset, bytes);
                assert_eq!(result.is_ok(), fits, "write {offset}+{length}: {result:?}");
                if fits {
                    model[span()].copy_from_slice(bytes);
                }
            }
            2 | 3 => {
                // Filled so that a read that leaves bytes unwritten is seen.
                read.clear();
                read.resize(length as usize, 0xee);
                let result = volume.read_at(offset, &mut read);
                assert_eq!(result.is_ok(), fits, "read {offset}+{length}: {result:?}");
                if fits {
                    assert!(
                        read == model[span()],
                        "read {offset}+{length} differs from the model"
                    );
                }
            }
            4 => {
                let result = volume.trim(offset, length);
                assert_eq!(result.is_ok(), fits, "trim {offset}+{length}: {result:?}");
                if fits {
                    model[span()].fill(0);
                }
            }
            5 => {
                let may_punch = input.u8() & 1 != 0;
                let result = volume.write_zeroes(offset, length, may_punch);
                assert_eq!(result.is_ok(), fits, "zero {offset}+{length}: {result:?}");
                if fits {
                    model[span()].fill(0);
                }
            }
            _ => {
                volume.flush().expect("flush");
                if input.u8() & 1 != 0 && reopens < MAX_REOPENS {
                    reopens += 1;
                    // The old handle is closed (its writer lock released) first: the
                    // slot holds the other handle meanwhile.
                    handles[handle] = Arc::clone(&handles[1 - handle]);
                    handles[handle] = open(fixture, handle == 1);
                }
            }
        }
    }
    all.fill(0xee);
    handles[0].read_at(0, &mut all).expect("read everything");
    assert!(all == model, "the volume differs from the model");
    let extents = handles[1].allocation(0, SIZE).expect("allocation");
    assert_eq!(extents.iter().map(|e| e.length).sum::<u64>(), SIZE);
    let mut at = 0usize;
    for extent in extents {
        if extent.hole {
            let end = at + extent.length as usize;
            assert!(
                model[at..end] == ZEROS[..end - at],
                "a hole over data at {at}"
            );
        }
        at += extent.length as usize;
    }
    *kept = Some(Kept {
        handles,
        model,
        all,
        read,
    });
});
