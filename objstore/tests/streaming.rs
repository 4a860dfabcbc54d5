//! A 100 MiB object streams through PUT and GET with bounded memory: the process's
//! peak resident set grows by far less than the object. Alone in its test binary so
//! that no other test's allocations count.

mod support;

use std::io::{self, Read, Write};

use md5::{Digest, Md5};
use support::Lab;

const SIZE: u64 = 100 << 20;

/// Generates `left` bytes on the fly without holding them.
struct Generator {
    left: u64,
    state: u64,
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        for b in &mut buf[..n] {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.state >> 56) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Hashes what is written, keeping nothing.
struct HashSink(Md5, u64);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Peak resident set size of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_100_mib_object_streams_in_bounded_memory() {
    let lab = Lab::new();
    let before = peak_rss();
    let mut body = Generator {
        left: SIZE,
        state: 1,
    };
    let info = lab
        .store
        .put_object(&lab.kms, "bkt", "big", &mut body, &lab.opts())
        .unwrap();
    assert_eq!(info.size, SIZE);
    let mut expected = Md5::new();
    io::copy(
        &mut Generator {
            left: SIZE,
            state: 1,
        },
        &mut HashWriter(&mut expected),
    )
    .unwrap();
    assert_eq!(info.etag, hex::encode(expected.finalize()));

    let download = lab.store.get_object(&lab.kms, "bkt", "big", None).unwrap();
    let mut sink = HashSink(Md5::new(), 0);
    assert_eq!(download.body.write_to(&mut sink).unwrap(), SIZE);
    assert_eq!(hex::encode(sink.0.finalize()), info.etag);
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "peak RSS grew by {grown} bytes for a {SIZE}-byte object"
    );
}

struct HashWriter<'a>(&'a mut Md5);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
