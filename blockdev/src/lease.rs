//! [`DataKeyLease`]: the one holder of an encrypted volume's plaintext data key, and
//! the reason a volume fails closed when its CMK stops being usable.
//!
//! The lease owns the [`EncryptedVolume`] (whose key slot holds the only plaintext
//! copy of the data key) and is itself the [`Volume`] the NBD server serves:
//!
//! - Attaching (the lease's creation at server start, and a client's GO/EXPORT_NAME
//!   while the key is not usable) calls Decrypt, audited with the volume's encryption
//!   context, and then DescribeKey: the key is installed only if the key service
//!   reports it Enabled, whatever Decrypt answered (some services still decrypt under
//!   a disabled key). A refused attach is a failed Decrypt in the trail when the key
//!   service refuses Decrypt. Without a keystore watch, every attach asks DescribeKey.
//! - The key on disk governs: the volume's header is read again at every watcher tick
//!   and before every attach; after a `volume rewrap` the lease switches to the new
//!   wrapped key (logged) and from then on checks the new CMK. A header that cannot be
//!   read (or that now describes another volume) makes the lease unusable.
//! - A watcher thread re-checks the CMK. With a [`KeystoreGeneration`] (the local
//!   keystore) it polls the keystore's generation every [`WATCH_PERIOD`] (at most the
//!   check interval) and re-checks at once when it moved: the state of a local key
//!   can only change through a keystore update, so an unchanged generation proves the
//!   key unchanged without a key-service call. Without one (a remote key service) it
//!   calls DescribeKey every check interval.
//! - A re-check is DescribeKey; when the key is Enabled it is followed by a Decrypt
//!   if the slot is empty (re-unwrap after re-enabling) or the keystore changed (the
//!   policy may no longer let this principal decrypt). Disabled, PendingDeletion, a
//!   deleted key or a denial makes the lease unusable: with [`OnKeyDisable::Revoke`]
//!   the plaintext key is dropped (zeroized) and every request fails, with
//!   [`OnKeyDisable::KeepAttached`] attached clients keep working; either way new
//!   attaches are refused with a message naming the key ARN and its state.
//!
//! Audit: the trail gets one DescribeKey per observed keystore change (not one per
//! poll), one Decrypt per unwrap or re-authorisation, and one failed Decrypt per
//! refused attach.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crypto_core::kms::{KeyService, KeyState, KeystoreGeneration, KmsError};
use tracing::{info, warn};

use crate::volume::{self, EncryptedVolume, Extent, ImageFormat, OpenedVolume, Volume};
use crate::Error;

/// How often the keystore generation is polled (when the check interval is longer).
pub const WATCH_PERIOD: Duration = Duration::from_millis(50);
/// The default of `--key-check-interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What happens to attached clients when the CMK stops being usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnKeyDisable {
    /// Zeroize the data key: every request fails (NBD EIO) until the key is usable
    /// again, then I/O resumes on the same connections.
    #[default]
    Revoke,
    /// AWS's behaviour: attached clients keep working; only new attaches are refused.
    KeepAttached,
}

/// How a lease watches its CMK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// What the lease does when the CMK stops being usable.
    pub on_key_disable: OnKeyDisable,
    /// How often the CMK is re-checked (a keystore-generation poll for the local
    /// keystore, DescribeKey otherwise). Must be positive.
    pub check_interval: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            on_key_disable: OnKeyDisable::Revoke,
            check_interval: DEFAULT_CHECK_INTERVAL,
        }
    }
}

/// What the lease last learnt about the CMK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyStatus {
    /// The key is usable and the data key is installed.
    Usable,
    /// The key cannot be used. `state` is the AWS key state (`Disabled`,
    /// `PendingDeletion`), `Deleted`, `AccessDenied`, or the error name of a failure.
    Unavailable {
        /// The key state or error name.
        state: String,
        /// What the key service said.
        message: String,
    },
}

/// What re-reading the volume's header found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderSeen {
    Unchanged,
    /// Another wrapped key (a `volume rewrap`): now in use.
    Switched,
    /// No valid header, or one of another volume: the lease is unusable.
    Unreadable,
}

/// Why a re-check runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The check interval passed (no keystore watch, or the last check failed).
    Interval,
    /// The keystore generation moved: re-authorise even if the key stays Enabled.
    KeystoreChanged,
}

struct LeaseState {
    status: KeyStatus,
    /// The keystore generation the status was last established at.
    generation: Option<u64>,
}

/// Wakes the watcher thread early when the lease goes away.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// Sleeps up to `period`; true if the lease was dropped meanwhile.
    fn wait(&self, period: Duration) -> bool {
        let deadline = Instant::now() + period;
        let mut stopped = lock(&self.stopped);
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lease on one encrypted volume's data key. Serve it as the volume
/// (`Arc<DataKeyLease>` is an `Arc<dyn Volume>`); dropping the last reference stops
/// the watcher and drops (zeroizes) the key.
pub struct DataKeyLease {
    volume: EncryptedVolume,
    /// A second handle on the volume file, to make accepted writes durable while the
    /// key is revoked (fdatasync needs no key).
    sync_handle: std::fs::File,
    kms: Arc<dyn KeyService>,
    watch: Option<Arc<dyn KeystoreGeneration>>,
    config: LeaseConfig,
    /// Held across key-service calls so that checks and attaches do not interleave.
    state: Mutex<LeaseState>,
    stop: Arc<Stop>,
}

impl std::fmt::Debug for DataKeyLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKeyLease")
            .field("volume", &self.volume)
            .field("config", &self.config)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl DataKeyLease {
    /// Takes `volume` (opened without its key), unwraps its data key with one audited
    /// Decrypt and starts watching the CMK. A key that cannot be used now does not fail
    /// the call: the lease starts unusable (attaches refused) and recovers when the key
    /// is enabled again, so a server can start before its keys are.
    pub fn start(
        volume: EncryptedVolume,
        kms: Arc<dyn KeyService>,
        watch: Option<Arc<dyn KeystoreGeneration>>,
        config: LeaseConfig,
    ) -> Result<Arc<Self>, Error> {
        if config.check_interval.is_zero() {
            return Err(Error::InvalidArgument {
                what: "the key check interval must be positive".into(),
            });
        }
        let generation = watch.as_ref().map(|w| w.generation()).transpose()?;
        let sync_handle = volume.file_handle()?;
        let lease = Arc::new(Self {
            sync_handle,
            volume,
            kms,
            watch,
            config,
            state: Mutex::new(LeaseState {
                status: KeyStatus::Unavailable {
                    state: "NotUnwrapped".into(),
                    message: "the data key has not been unwrapped yet".into(),
                },
                generation,
            }),
            stop: Arc::new(Stop::default()),
        });
        {
            let mut state = lock(&lease.state);
            lease.unwrap_key(&mut state, false);
            if let KeyStatus::Unavailable { message, .. } = &state.status {
                warn!(
                    path = %lease.volume.path().display(),
                    "serving with the key unavailable, attaches are refused: {message}"
                );
            }
        }
        let weak = Arc::downgrade(&lease);
        let stop = Arc::clone(&lease.stop);
        thread::Builder::new()
            .name("key-lease".into())
            .spawn(move || watch_loop(&weak, &stop))
            .map_err(|source| Error::Io {
                context: "starting the key lease watcher".into(),
                source,
            })?;
        Ok(lease)
    }

    /// What the lease last learnt about the CMK.
    pub fn status(&self) -> KeyStatus {
        lock(&self.state).status.clone()
    }

    /// The volume under the lease (for its header, id, key ARN).
    pub fn encrypted_volume(&self) -> &EncryptedVolume {
        &self.volume
    }

    /// Re-checks the CMK now, as the watcher does when the keystore changes.
    pub fn check_now(&self) {
        let generation = self.current_generation();
        let mut state = lock(&self.state);
        self.check(&mut state, Trigger::KeystoreChanged, generation);
    }

    fn current_generation(&self) -> Option<u64> {
        let watch = self.watch.as_ref()?;
        match watch.generation() {
            Ok(g) => Some(g),
            Err(err) => {
                warn!("cannot read the keystore generation: {err}");
                None
            }
        }
    }

    /// One watcher tick: re-check if the keystore moved, or when the interval is due
    /// and there is no watch (or the last check ended in an error).
    fn tick(&self, interval_due: bool) {
        let generation = self.current_generation();
        let mut state = lock(&self.state);
        match self.follow_header(&mut state) {
            HeaderSeen::Unchanged => {}
            HeaderSeen::Switched => {
                return self.check(&mut state, Trigger::KeystoreChanged, generation);
            }
            HeaderSeen::Unreadable => return,
        }
        let trigger = match (&self.watch, generation) {
            (Some(_), Some(g)) if state.generation != Some(g) => Some(Trigger::KeystoreChanged),
            (Some(_), Some(_)) => {
                let failed = matches!(&state.status,
                    KeyStatus::Unavailable { state, .. } if is_transient(state));
                (interval_due && failed).then_some(Trigger::Interval)
            }
            // No watch, or the watch failed: fall back to DescribeKey per interval.
            _ => interval_due.then_some(Trigger::Interval),
        };
        if let Some(trigger) = trigger {
            self.check(&mut state, trigger, generation);
        }
    }

    /// Re-reads the volume's header; when a `volume rewrap` put another wrapped key
    /// there, the lease switches to it (logged) and the caller re-checks, so from now
    /// on the key on disk is the one that must stay usable. A header that cannot be
    /// read any more makes the lease unusable until it can; the caller must then not
    /// re-check (which would unwrap again).
    fn follow_header(&self, state: &mut LeaseState) -> HeaderSeen {
        match self.volume.reread_header() {
            Ok(None) => HeaderSeen::Unchanged,
            Ok(Some((old, new))) => {
                info!(path = %self.volume.path().display(), old_key = %old.key_arn,
                    new_key = %new.key_arn,
                    "the volume's header changed (re-wrapped data key): following the key on disk");
                HeaderSeen::Switched
            }
            Err(err) => {
                if !matches!(&state.status, KeyStatus::Unavailable { state, .. } if state == "HeaderUnreadable")
                {
                    warn!(path = %self.volume.path().display(),
                        "cannot read the volume's header: {err}; refusing to serve until it can be read");
                }
                self.make_unavailable(state, "HeaderUnreadable", err.to_string());
                HeaderSeen::Unreadable
            }
        }
    }

    fn check(&self, state: &mut LeaseState, trigger: Trigger, generation: Option<u64>) {
        let arn = self.volume.key_arn();
        match self.kms.describe_key(&arn) {
            Ok(meta) if meta.key_state == KeyState::Enabled => {
                let has_key = self.volume.has_key();
                if !has_key
                    || trigger == Trigger::KeystoreChanged
                    || state.status != KeyStatus::Usable
                {
                    self.unwrap_key(state, true);
                }
            }
            Ok(meta) => {
                let message = format!("{arn} is {}", meta.key_state.as_str());
                self.make_unavailable(state, meta.key_state.as_str(), message);
            }
            Err(err) => {
                let (name, message) = describe_refusal(&err);
                self.make_unavailable(state, name, message);
            }
        }
        if generation.is_some() {
            state.generation = generation;
        }
    }

    /// Decrypt (audited) and, unless `described` says DescribeKey just reported the
    /// key Enabled, DescribeKey: the key is installed only when both allow it. A key
    /// service that still answers Decrypt for a disabled key (moto's server mode does)
    /// therefore cannot re-admit clients. On refusal the lease becomes unusable and
    /// the unwrapped key, if any, is dropped (zeroized) uninstalled.
    fn unwrap_key(&self, state: &mut LeaseState, described: bool) {
        let key = match self.volume.unwrap(&*self.kms) {
            Ok(key) => key,
            Err(Error::Kms(err)) => {
                let (name, message) = describe_refusal(&err);
                return self.make_unavailable(state, name, message);
            }
            Err(err) => return self.make_unavailable(state, "Error", err.to_string()),
        };
        if !described {
            let arn = self.volume.key_arn();
            match self.kms.describe_key(&arn) {
                Ok(meta) if meta.key_state == KeyState::Enabled => {}
                Ok(meta) => {
                    let message = format!(
                        "{arn} is {} (the key service still answered Decrypt; refused by its state)",
                        meta.key_state.as_str()
                    );
                    return self.make_unavailable(state, meta.key_state.as_str(), message);
                }
                Err(err) => {
                    let (name, message) = describe_refusal(&err);
                    return self.make_unavailable(state, name, message);
                }
            }
        }
        match self.volume.install_key(key) {
            Ok(()) => {
                if state.status != KeyStatus::Usable {
                    info!(key = %self.volume.key_arn(), path = %self.volume.path().display(),
                        "data key unwrapped; I/O enabled");
                }
                state.status = KeyStatus::Usable;
            }
            Err(err) => self.make_unavailable(state, "Error", err.to_string()),
        }
    }

    fn make_unavailable(&self, state: &mut LeaseState, key_state: &str, message: String) {
        let revoke = self.config.on_key_disable == OnKeyDisable::Revoke;
        let was_usable = state.status == KeyStatus::Usable;
        let was_deleted =
            matches!(&state.status, KeyStatus::Unavailable { state, .. } if state == "Deleted");
        if revoke {
            self.volume.revoke_key(format!("{key_state}: {message}"));
        }
        if was_usable {
            warn!(key = %self.volume.key_arn(), path = %self.volume.path().display(),
            "key is {key_state}: {}", if revoke {
                "data key zeroized, I/O fails until it is usable again"
            } else {
                "attached clients keep working, new attaches are refused"
            });
        }
        if key_state == "Deleted" && !was_deleted && !revoke && self.volume.has_key() {
            warn!(key = %self.volume.key_arn(), path = %self.volume.path().display(),
                "the CMK's deletion has completed while the volume is still served \
                 (--on-key-disable keep-attached): attached clients read and write with \
                 the data key held in this process's memory only; no new client can \
                 attach, and once this server stops the volume's data is unrecoverable");
        }
        state.status = KeyStatus::Unavailable {
            state: key_state.to_owned(),
            message,
        };
    }

    fn refusal(&self, status: &KeyStatus) -> Error {
        let reason = match status {
            KeyStatus::Usable => "usable".to_owned(),
            KeyStatus::Unavailable { state, message } => format!("key state {state} ({message})"),
        };
        Error::KeyUnavailable {
            key_arn: self.volume.key_arn(),
            reason,
        }
    }
}

impl Drop for DataKeyLease {
    fn drop(&mut self) {
        self.stop.stop();
        self.volume.revoke_key("the volume is no longer served");
    }
}

/// The key state a key-service refusal means, and the message to show.
fn describe_refusal(err: &KmsError) -> (&'static str, String) {
    let state = match err {
        KmsError::Disabled(_) => "Disabled",
        KmsError::InvalidState(_) => "PendingDeletion",
        KmsError::NotFound(_) => "Deleted",
        KmsError::AccessDenied(_) => "AccessDenied",
        other => other.aws_name(),
    };
    (state, err.to_string())
}

/// Failures that say nothing about the key itself and are worth retrying on the
/// interval even when the keystore did not change.
fn is_transient(state: &str) -> bool {
    !matches!(
        state,
        "Disabled" | "PendingDeletion" | "Deleted" | "AccessDenied"
    )
}

fn watch_loop(lease: &Weak<DataKeyLease>, stop: &Stop) {
    let mut next_interval = Instant::now();
    loop {
        let Some(lease) = lease.upgrade() else {
            return;
        };
        let period = if lease.watch.is_some() {
            lease.config.check_interval.min(WATCH_PERIOD)
        } else {
            lease.config.check_interval
        };
        let now = Instant::now();
        let interval_due = now >= next_interval;
        if interval_due {
            next_interval = now + lease.config.check_interval;
        }
        lease.tick(interval_due);
        drop(lease);
        if stop.wait(period) {
            return;
        }
    }
}

impl Volume for DataKeyLease {
    fn size(&self) -> u64 {
        self.volume.size()
    }

    fn encryption_key_arn(&self) -> Option<String> {
        Some(self.volume.key_arn())
    }

    fn block_size(&self) -> u32 {
        self.volume.block_size()
    }

    fn is_read_only(&self) -> bool {
        self.volume.is_read_only()
    }

    /// Attaching with a usable key costs nothing; otherwise it is an attempt to unwrap
    /// (an audited Decrypt) that either recovers the lease or refuses the client.
    /// With a keystore watch, a keystore change the watcher has not seen yet is
    /// checked here first: a client attaching right after `disable-key` must be
    /// refused, not admitted in the watcher's polling gap.
    fn check_attach(&self) -> Result<(), Error> {
        let generation = self.current_generation();
        let mut state = lock(&self.state);
        match self.follow_header(&mut state) {
            HeaderSeen::Unreadable => return Err(self.refusal(&state.status)),
            HeaderSeen::Switched => self.check(&mut state, Trigger::KeystoreChanged, generation),
            // No keystore watch proves the key unchanged: ask the key service now.
            HeaderSeen::Unchanged if self.watch.is_none() => {
                self.check(&mut state, Trigger::Interval, generation);
            }
            HeaderSeen::Unchanged if generation.is_some() && state.generation != generation => {
                self.check(&mut state, Trigger::KeystoreChanged, generation);
            }
            HeaderSeen::Unchanged => {}
        }
        if state.status == KeyStatus::Usable && self.volume.has_key() {
            return Ok(());
        }
        self.unwrap_key(&mut state, false);
        match &state.status {
            KeyStatus::Usable => Ok(()),
            status => Err(self.refusal(status)),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.volume.read_at(offset, buf)
    }

    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool, Error> {
        self.volume.read_cached(offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.volume.write_at(offset, data)
    }

    fn write_in_place(&self, offset: u64, data: &mut [u8]) -> Result<(), Error> {
        self.volume.write_in_place(offset, data)
    }

    /// Without the key, writes accepted earlier are still made durable: syncing needs
    /// no key, and a server shutting down with a disabled key must not lose them.
    fn flush(&self) -> Result<(), Error> {
        if self.volume.has_key() {
            return self.volume.flush();
        }
        self.sync_handle.sync_data().map_err(|source| Error::Io {
            context: format!("fdatasync {}", self.volume.path().display()),
            source,
        })
    }

    fn trim(&self, offset: u64, length: u64) -> Result<(), Error> {
        self.volume.trim(offset, length)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_punch: bool) -> Result<(), Error> {
        self.volume.write_zeroes(offset, length, may_punch)
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>, Error> {
        self.volume.allocation(offset, length)
    }
}

/// Opens `path` for serving in its declared `format`: an encrypted atrest volume
/// under a [`DataKeyLease`], an unencrypted one as it is, a declared raw image as raw
/// whatever its bytes say. A file that is not declared raw and has no valid header is
/// refused ([`Error::NoValidHeader`]), never served raw.
pub fn open_served(
    path: &Path,
    format: ImageFormat,
    kms: Arc<dyn KeyService>,
    watch: Option<Arc<dyn KeystoreGeneration>>,
    read_only: bool,
    config: LeaseConfig,
) -> Result<Arc<dyn Volume>, Error> {
    if format == ImageFormat::Raw {
        return Ok(volume::open_raw(path, read_only)?);
    }
    match volume::open_without_key(path, read_only)? {
        OpenedVolume::Encrypted(volume) => {
            // Just opened here: no other reference exists.
            let volume = Arc::try_unwrap(volume).map_err(|_| Error::InvalidArgument {
                what: format!("{} is already shared", path.display()),
            })?;
            Ok(DataKeyLease::start(volume, kms, watch, config)?)
        }
        OpenedVolume::Plain(volume) => Ok(volume),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_key_state() {
        let cases = [
            (KmsError::Disabled("k is disabled.".into()), "Disabled"),
            (
                KmsError::InvalidState("k is pending deletion.".into()),
                "PendingDeletion",
            ),
            (KmsError::NotFound("gone".into()), "Deleted"),
            (KmsError::AccessDenied("no".into()), "AccessDenied"),
            (KmsError::Internal("disk".into()), "KMSInternalException"),
        ];
        for (err, state) in cases {
            let (name, message) = describe_refusal(&err);
            assert_eq!(name, state);
            assert!(message.starts_with(err.aws_name()), "{message}");
        }
        assert!(is_transient("KMSInternalException"));
        assert!(!is_transient("Disabled"));
    }

    #[test]
    fn stop_wakes_a_waiting_watcher() {
        let stop = Arc::new(Stop::default());
        let waiter = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || stop.wait(Duration::from_secs(3600)))
        };
        stop.stop();
        assert!(waiter.join().unwrap());
        assert!(!Stop::default().wait(Duration::from_millis(1)));
    }
}
