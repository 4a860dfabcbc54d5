//! What a running `atrest nbd serve` publishes about itself, for the console's exports
//! page: its listen address, TLS, exports file, exports and connected clients, in
//! one JSON file per server under `$ATREST_HOME/run/nbd/` (byte layout in
//! `docs/FORMAT.md`, "NBD server status file").
//!
//! The file is replaced atomically (written under a fresh temporary name with mode
//! 0600, then renamed over) on start, when a client connects, attaches to an export
//! or disconnects, and on every exports reload; it is removed when the server stops.
//! A server killed outright leaves its file behind: readers ([`list`]) trust a file
//! only while the process it names runs *and* started when the file says (so a
//! recycled pid does not revive it). The file holds names, addresses and paths,
//! never key material nor certificate bytes (a client is named by its certificate's
//! CN or SAN only).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::lifecycle::exports::ExportSpec;
use crate::volume::ImageFormat;
use crate::Error;

/// The `format` field of every status file this version writes.
pub const STATUS_FORMAT: &str = "atrest-nbd-status-v1";
/// Largest status file a reader accepts (thousands of clients fit well within it).
const MAX_STATUS_FILE: u64 = 4 << 20;

/// A server's published state: the JSON document of its status file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerStatus {
    /// Always [`STATUS_FORMAT`].
    pub format: String,
    /// The server's process id.
    pub pid: u32,
    /// The process's start time (field 22 of `/proc/PID/stat`, clock ticks since
    /// boot): with `pid`, tells this server from a later process given the same pid.
    pub process_start: u64,
    /// When the server started, in seconds since the Unix epoch.
    pub started: u64,
    /// The addresses it listens on.
    pub listen: Vec<String>,
    /// `"require"` or `"optional"` when TLS is offered, `None` for plaintext only.
    pub tls: Option<String>,
    /// Whether TLS clients must present a certificate of the configured CA.
    pub client_certificates: bool,
    /// The exports file reloaded on SIGHUP, if the exports come from one.
    pub exports_file: Option<PathBuf>,
    /// The exports served now, by name.
    pub exports: Vec<ExportStatus>,
    /// The clients connected now, oldest first.
    pub clients: Vec<ClientStatus>,
}

/// One export as the status file shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportStatus {
    /// The name clients ask for.
    pub name: String,
    /// The volume file (absolute when the exports file gave it so).
    pub path: PathBuf,
    /// `"atrest"` or `"raw"`.
    pub format: String,
    /// Offered read-only.
    pub read_only: bool,
    /// What clients are shown (`nbdinfo`).
    pub description: Option<String>,
    /// Client certificate names allowed to attach (empty: any client).
    pub allowed_clients: Vec<String>,
}

impl ExportStatus {
    /// The status of the export `spec` describes; `read_only` is the server's
    /// `--read-only`, which overrides the spec.
    pub fn of(spec: &ExportSpec, read_only: bool) -> ExportStatus {
        ExportStatus {
            name: spec.name.clone(),
            path: spec.path.clone(),
            format: match spec.format {
                ImageFormat::Atrest => "atrest",
                ImageFormat::Raw => "raw",
            }
            .to_owned(),
            read_only: read_only || spec.read_only,
            description: spec.description.clone(),
            allowed_clients: spec.allowed_clients.clone(),
        }
    }
}

/// One connected client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientStatus {
    /// The server's number for the connection (unique while the server runs).
    pub id: u64,
    /// The client's address and port.
    pub address: String,
    /// When it connected, in seconds since the Unix epoch.
    pub since: u64,
    /// The export it attached to; `None` while it is still negotiating (or only
    /// listing exports).
    pub export: Option<String>,
    /// The verified client certificate's name (`CN=...` or `SAN=...`), if any.
    pub tls_identity: Option<String>,
}

/// What the server says about itself when it starts.
#[derive(Clone, Debug)]
pub struct ServerDescription {
    /// The addresses it listens on.
    pub listen: Vec<String>,
    /// `"require"` or `"optional"` when TLS is offered.
    pub tls: Option<String>,
    /// Whether TLS clients must present a certificate.
    pub client_certificates: bool,
    /// The exports file reloaded on SIGHUP, if any.
    pub exports_file: Option<PathBuf>,
    /// The exports served at start.
    pub exports: Vec<ExportStatus>,
}

/// The running server's status file: kept up to date until [`StatusBoard::retire`]
/// (or drop) removes it.
#[derive(Debug)]
pub struct StatusBoard {
    path: PathBuf,
    status: Mutex<BoardState>,
    /// Numbers the temporary files, so no write ever reuses a name.
    writes: AtomicU64,
    /// Set once the file is removed: no later change writes it again.
    retired: AtomicBool,
}

#[derive(Debug)]
struct BoardState {
    status: ServerStatus,
    clients: BTreeMap<u64, ClientStatus>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Field 22 (`starttime`) of `/proc/PID/stat`, and whether the process is a zombie.
fn process_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything, `)` too.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    // `state` is field 3; `starttime` is field 22, 19 fields further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// Whether the process `pid`, started at `start`, still runs.
pub fn is_running(pid: u32, start: u64) -> bool {
    pid != 0 && process_start(pid).is_some_and(|(s, dead)| s == start && !dead)
}

impl StatusBoard {
    /// Writes this process's status file `<dir>/<pid>.json` (creating `dir` with mode
    /// 0700 if needed) and keeps it until the board is dropped.
    pub fn publish(dir: &Path, server: ServerDescription) -> Result<StatusBoard, Error> {
        let io = |context: String| move |source| Error::Io { context, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
        let pid = std::process::id();
        let (start, _) = process_start(pid).ok_or_else(|| Error::Io {
            context: "reading /proc/self/stat".into(),
            source: std::io::Error::other("no start time for this process"),
        })?;
        let board = StatusBoard {
            path: dir.join(format!("{pid}.json")),
            status: Mutex::new(BoardState {
                status: ServerStatus {
                    format: STATUS_FORMAT.into(),
                    pid,
                    process_start: start,
                    started: now_unix(),
                    listen: server.listen,
                    tls: server.tls,
                    client_certificates: server.client_certificates,
                    exports_file: server.exports_file,
                    exports: server.exports,
                    clients: Vec::new(),
                },
                clients: BTreeMap::new(),
            }),
            writes: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        };
        board.write(&board.lock())?;
        Ok(board)
    }

    /// Where the status file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardState> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The exports changed (a reload).
    pub fn set_exports(&self, exports: Vec<ExportStatus>) {
        let mut state = self.lock();
        state.status.exports = exports;
        self.refresh(&mut state);
    }

    /// Connection `id` from `address` was accepted.
    pub(crate) fn connected(&self, id: u64, address: &str) {
        let mut state = self.lock();
        state.clients.insert(
            id,
            ClientStatus {
                id,
                address: address.to_owned(),
                since: now_unix(),
                export: None,
                tls_identity: None,
            },
        );
        self.refresh(&mut state);
    }

    /// Connection `id` was admitted to `export`, with the client certificate
    /// `identity` (its name only) when it presented one.
    pub(crate) fn attached(&self, id: u64, export: &str, identity: Option<String>) {
        let mut state = self.lock();
        if let Some(client) = state.clients.get_mut(&id) {
            client.export = Some(export.to_owned());
            client.tls_identity = identity;
        }
        self.refresh(&mut state);
    }

    /// Connection `id` closed.
    pub(crate) fn disconnected(&self, id: u64) {
        let mut state = self.lock();
        if state.clients.remove(&id).is_some() {
            self.refresh(&mut state);
        }
    }

    /// Removes the file for good (the server stops). Threads that outlive the
    /// server's run (the reload thread holds the board) write nothing after this.
    pub fn retire(&self) {
        let _state = self.lock();
        if self.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            warn!("removing the status file {}: {err}", self.path.display());
        }
    }

    /// Rewrites the file; a failure is logged and serving goes on (the page is
    /// stale until the next change).
    fn refresh(&self, state: &mut BoardState) {
        state.status.clients = state.clients.values().cloned().collect();
        if self.retired.load(Ordering::SeqCst) {
            return;
        }
        if let Err(err) = self.write(state) {
            warn!("updating the status file: {err}");
        }
    }

    fn write(&self, state: &BoardState) -> Result<(), Error> {
        let mut bytes = serde_json::to_vec_pretty(&state.status).map_err(|e| Error::Io {
            context: "encoding the status file".into(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temp = dir.join(format!(
            ".{}.{}.tmp",
            state.status.pid,
            self.writes.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |what: &str, path: &Path| {
            let context = format!("{what} {}", path.display());
            move |source| Error::Io { context, source }
        };
        // create_new: never follows a link planted under the temporary name.
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| file.write_all(&bytes))
            .map_err(io("writing", &temp))
            .and_then(|()| std::fs::rename(&temp, &self.path).map_err(io("renaming", &temp)));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }
}

impl Drop for StatusBoard {
    fn drop(&mut self) {
        self.retire();
    }
}

/// A status file found by [`list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// The server runs: what it published.
    Running(ServerStatus),
    /// The file names a process that is gone (killed without cleaning up, or its pid
    /// now belongs to another process): nothing in it is to be trusted.
    Gone {
        /// The leftover file.
        file: PathBuf,
        /// The pid it names.
        pid: u32,
    },
    /// The file could not be read as a status file.
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Reads one status file: a regular file (not a link) owned by this user, at most
/// a few MiB, in the current format.
fn read_status(path: &Path) -> Result<ServerStatus, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err("owned by another user".into());
    }
    if meta.mode() & 0o022 != 0 {
        return Err("writable by group or others".into());
    }
    if meta.len() > MAX_STATUS_FILE {
        return Err(format!("larger than {MAX_STATUS_FILE} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let status: ServerStatus = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if status.format != STATUS_FORMAT {
        return Err(format!("unknown format {:?}", status.format));
    }
    let named = path.file_stem().and_then(|s| s.to_str());
    if named != Some(status.pid.to_string().as_str()) {
        return Err(format!(
            "names pid {} but is not called {}.json",
            status.pid, status.pid
        ));
    }
    Ok(status)
}

/// The status files of `dir` (`*.json`), sorted by file name; an absent directory
/// means no server has run.
pub fn list(dir: &Path) -> Vec<Listed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| match read_status(&file) {
            Ok(status) if is_running(status.pid, status.process_start) => Listed::Running(status),
            Ok(status) => Listed::Gone {
                file,
                pid: status.pid,
            },
            Err(reason) => Listed::Unreadable { file, reason },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn description() -> ServerDescription {
        ServerDescription {
            listen: vec!["127.0.0.1:10809".into()],
            tls: Some("require".into()),
            client_certificates: true,
            exports_file: Some("/etc/atrest/exports.toml".into()),
            exports: vec![ExportStatus::of(
                &ExportSpec {
                    name: "root".into(),
                    path: "/v/root.vol".into(),
                    read_only: false,
                    description: Some("boot disk".into()),
                    allowed_clients: vec!["client1".into()],
                    format: ImageFormat::Atrest,
                },
                false,
            )],
        }
    }

    fn only(dir: &Path) -> Listed {
        let listed = list(dir);
        assert_eq!(listed.len(), 1, "{listed:?}");
        listed.into_iter().next().unwrap()
    }

    #[test]
    fn the_file_follows_clients_and_goes_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run/nbd");
        let board = StatusBoard::publish(&run, description()).unwrap();
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let meta = std::fs::metadata(board.path()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            board.path().file_name().unwrap().to_str().unwrap(),
            format!("{}.json", std::process::id())
        );

        board.connected(7, "127.0.0.1:40000");
        board.attached(7, "root", Some("CN=client1".into()));
        board.connected(8, "127.0.0.1:40002");
        let Listed::Running(status) = only(&run) else {
            panic!("not running")
        };
        assert_eq!(status.pid, std::process::id());
        assert_eq!(status.exports[0].name, "root");
        assert_eq!(status.exports[0].allowed_clients, ["client1"]);
        assert_eq!(status.clients.len(), 2);
        assert_eq!(status.clients[0].export.as_deref(), Some("root"));
        assert_eq!(
            status.clients[0].tls_identity.as_deref(),
            Some("CN=client1")
        );
        assert_eq!(status.clients[1].export, None);

        board.disconnected(7);
        let Listed::Running(status) = only(&run) else {
            panic!("not running")
        };
        assert_eq!(status.clients.len(), 1);
        assert_eq!(status.clients[0].id, 8);

        board.set_exports(Vec::new());
        let Listed::Running(status) = only(&run) else {
            panic!("not running")
        };
        assert!(status.exports.is_empty());

        // Every write went through a temporary file that is gone now.
        let leftovers: Vec<_> = std::fs::read_dir(&run).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        // Retired (the server stopped): gone, and a late change does not bring it back.
        board.retire();
        assert!(list(&run).is_empty());
        board.connected(9, "127.0.0.1:40004");
        assert!(list(&run).is_empty());
        drop(board);
        assert!(std::fs::read_dir(&run).unwrap().next().is_none());
    }

    #[test]
    fn a_file_of_a_dead_or_recycled_process_is_gone_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let board = StatusBoard::publish(dir.path(), description()).unwrap();
        let text = std::fs::read_to_string(board.path()).unwrap();
        let mut status: ServerStatus = serde_json::from_str(&text).unwrap();
        // Same pid, another start time: the pid was recycled.
        status.process_start += 1;
        std::fs::write(board.path(), serde_json::to_vec(&status).unwrap()).unwrap();
        assert!(matches!(only(dir.path()), Listed::Gone { pid, .. } if pid == std::process::id()));

        // A process that has exited (and been reaped).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = dir.path().join(format!("{pid}.json"));
        status.pid = pid;
        std::fs::write(&dead, serde_json::to_vec(&status).unwrap()).unwrap();
        std::fs::set_permissions(&dead, std::fs::Permissions::from_mode(0o600)).unwrap();
        let listed = list(dir.path());
        assert!(listed
            .iter()
            .any(|l| matches!(l, Listed::Gone { pid: p, .. } if *p == pid)));
        assert!(!listed.iter().any(|l| matches!(l, Listed::Running(_))));
    }

    #[test]
    fn odd_files_are_not_read_as_status() {
        let dir = tempfile::tempdir().unwrap();
        let board = StatusBoard::publish(dir.path(), description()).unwrap();
        let genuine = std::fs::read(board.path()).unwrap();
        let mine = std::process::id();
        // A link to a genuine file, a file named for another pid, a world-writable
        // file, garbage, and an unknown field: none is taken for a running server.
        let link = dir.path().join("1.json");
        std::os::unix::fs::symlink(board.path(), &link).unwrap();
        let misnamed = dir.path().join("2.json");
        std::fs::write(&misnamed, &genuine).unwrap();
        let writable = dir.path().join(format!("{mine}0.json"));
        let mut other: ServerStatus = serde_json::from_slice(&genuine).unwrap();
        other.pid = mine * 10;
        std::fs::write(&writable, serde_json::to_vec(&other).unwrap()).unwrap();
        std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(dir.path().join("3.json"), b"{not json").unwrap();
        let extra =
            String::from_utf8(genuine.clone())
                .unwrap()
                .replacen('{', "{\"secret\": \"x\",", 1);
        std::fs::write(dir.path().join("4.json"), extra).unwrap();
        let listed = list(dir.path());
        let running: Vec<_> = listed
            .iter()
            .filter(|l| matches!(l, Listed::Running(_)))
            .collect();
        assert_eq!(running.len(), 1, "{listed:?}");
        assert_eq!(
            listed
                .iter()
                .filter(|l| matches!(l, Listed::Unreadable { .. }))
                .count(),
            5,
            "{listed:?}"
        );
    }

    #[test]
    fn the_file_holds_names_and_addresses_only() {
        let dir = tempfile::tempdir().unwrap();
        let board = StatusBoard::publish(dir.path(), description()).unwrap();
        board.connected(1, "192.0.2.7:5000");
        board.attached(1, "root", Some("CN=client1".into()));
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(board.path()).unwrap()).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&value),
            [
                "clientCertificates",
                "clients",
                "exports",
                "exportsFile",
                "format",
                "listen",
                "pid",
                "processStart",
                "started",
                "tls"
            ]
        );
        assert_eq!(
            keys(&value["clients"][0]),
            ["address", "export", "id", "since", "tlsIdentity"]
        );
        assert_eq!(
            keys(&value["exports"][0]),
            [
                "allowedClients",
                "description",
                "format",
                "name",
                "path",
                "readOnly"
            ]
        );
    }

    #[test]
    fn the_start_time_is_read_past_a_name_with_parentheses() {
        let (start, zombie) = process_start(std::process::id()).unwrap();
        assert!(start > 0);
        assert!(!zombie);
        assert!(is_running(std::process::id(), start));
        assert!(!is_running(0, start));
        assert!(!is_running(std::process::id(), start + 1));
    }
}
