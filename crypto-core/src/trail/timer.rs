//! [`DigestTimer`]: the thread of a long-running server that writes a signed digest
//! of the trail every interval, and a last one when the server stops, so that the
//! records of a period are signed even when nobody runs `atrest trail digest`.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::digest::{write_digest, DigestSigner};

/// Writes a signed trail digest every interval, and a last one when stopped.
///
/// A digest that cannot be written is logged (a warning) and the timer goes on: the
/// next one covers the records the failed one would have.
#[derive(Debug)]
pub struct DigestTimer {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl DigestTimer {
    /// Starts the thread `atrest-digests`, which signs the digests of the trail in
    /// `trail_dir` with `signer` every `interval`. Dropping the timer without
    /// [`stop`](Self::stop) still makes the thread write its last digest, but nobody
    /// waits for it.
    pub fn start(
        trail_dir: PathBuf,
        signer: DigestSigner,
        interval: Duration,
    ) -> std::io::Result<DigestTimer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("atrest-digests".into())
            .spawn(move || loop {
                let last = !matches!(
                    stopped.recv_timeout(interval),
                    Err(mpsc::RecvTimeoutError::Timeout)
                );
                if let Err(e) = write_digest(&trail_dir, &signer) {
                    tracing::warn!("could not write a trail digest: {e}");
                }
                if last {
                    return;
                }
            })?;
        Ok(DigestTimer { stop, thread })
    }

    /// Writes the last digest and returns once it is written (or failed).
    pub fn stop(self) {
        // A send fails only when the thread is gone already (it panicked): the join
        // below reports that.
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!("the trail digest thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trail::digest::validate_digests;
    use crate::trail::{ApiCall, Trail};

    const KEY: &str = "arn:aws:kms:local:000000000000:key/aaaaaaaa-0000-4000-8000-000000000001";

    /// A trail with `records` records, and its signer.
    fn trail(records: usize) -> (tempfile::TempDir, String, DigestSigner) {
        let dir = tempfile::tempdir().expect("tempdir");
        let trail = Trail::open(dir.path(), "local", "000000000000").expect("open");
        for _ in 0..records {
            trail
                .append(&ApiCall {
                    event_time: time::macros::datetime!(2026-11-28 10:00 UTC),
                    event_name: "Decrypt".into(),
                    principal: "arn:aws:iam::000000000000:user/alice".into(),
                    request_parameters: serde_json::json!({ "keyId": KEY }),
                    response_elements: None,
                    error_code: None,
                    error_message: None,
                    read_only: true,
                    resources: vec![KEY.into()],
                })
                .expect("append");
        }
        let signer = DigestSigner::open_or_create(dir.path()).expect("signer");
        let public_key = signer.public_key_hex();
        (dir, public_key, signer)
    }

    #[test]
    fn stopping_writes_the_last_digest_at_once() {
        let (dir, public_key, signer) = trail(3);
        // Far longer than any test: only the stop can make it write.
        let timer = DigestTimer::start(dir.path().to_owned(), signer, Duration::from_secs(3600))
            .expect("start");
        timer.stop();
        let report = validate_digests(dir.path(), Some(&public_key)).expect("valid digests");
        assert_eq!(report.digests, 1);
        assert_eq!(report.records, 3);
    }

    #[test]
    fn digests_are_written_every_interval_and_chain() {
        let (dir, public_key, signer) = trail(2);
        let timer = DigestTimer::start(dir.path().to_owned(), signer, Duration::from_millis(5))
            .expect("start");
        // Wait until the interval has produced two digests (the deadline only keeps a
        // broken timer from hanging the test).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let ticked = loop {
            let report = validate_digests(dir.path(), Some(&public_key)).expect("valid digests");
            if report.digests >= 2 {
                break report.digests;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no two digests were written"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        timer.stop();
        let report = validate_digests(dir.path(), Some(&public_key)).expect("valid digests");
        assert!(report.digests > ticked, "stop wrote no last digest");
        // Every record is covered exactly once, whatever the number of digests.
        assert_eq!(report.records, 2);
    }
}
