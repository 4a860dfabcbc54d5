//! The exports file of `atrest nbd serve --exports FILE` and the swap of served
//! volumes when it is reloaded (SIGHUP).
//!
//! ```toml
//! [[export]]
//! name = "root"
//! path = "/var/lib/atrest/root.vol"   # relative paths are relative to the file
//! read_only = false                   # optional
//! description = "boot disk"           # optional, shown by nbdinfo
//! allowed_clients = ["client1"]       # optional; client certificate names (needs TLS)
//! format = "raw"                      # optional: "atrest" (the default) or "raw"
//! ```
//!
//! `format = "raw"` declares a raw image: served as raw for ever, whatever its bytes
//! say. Without it the file must be an atrest volume with a valid header; its format
//! is never guessed from its bytes.
//!
//! On reload an export whose path (or the file at it, or `read_only`) changed gets
//! the new volume under the same name: new attaches see it at once, the clients of
//! the old one are disconnected cleanly (no further requests are read, in-flight ones
//! are answered), then the old volume is flushed and closed. Untouched exports keep
//! their clients; removed exports go away the same way; new ones appear.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::{error, info, warn};

use crate::nbd::proto::MAX_STRING;
use crate::nbd::status::{ExportStatus, StatusBoard};
use crate::nbd::{Export, ExportTable, ShutdownHandle};
use crate::volume::{ImageFormat, Volume};
use crate::Error;

/// Longest exports file read (it holds names and paths, nothing large).
const MAX_FILE_LEN: u64 = 1 << 20;
/// How long a swap waits for the old volume's clients to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One `[[export]]` table of the exports file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSpec {
    /// The export name clients ask for.
    pub name: String,
    /// Absolute, or relative to the exports file's directory.
    pub path: PathBuf,
    /// Offered read-only.
    pub read_only: bool,
    /// Shown to clients (`nbdinfo`).
    pub description: Option<String>,
    /// Client certificate names (CN, DNS or URI SAN) allowed to attach; needs NBD
    /// over TLS with client certificates (see [`crate::nbd::Export::allowed_clients`]).
    pub allowed_clients: Vec<String>,
    /// What the file is declared to be (`format = "raw"`); never guessed.
    pub format: ImageFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    export: Vec<EntryShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryShape {
    name: String,
    path: PathBuf,
    #[serde(default)]
    read_only: bool,
    description: Option<String>,
    #[serde(default)]
    allowed_clients: Vec<String>,
    format: Option<String>,
}

/// Parses exports file text; `base` is the directory relative paths start from. Names
/// must be unique, 1..=4096 bytes without NUL; descriptions at most 4096 bytes.
pub fn parse_exports(text: &str, base: &Path) -> Result<Vec<ExportSpec>, Error> {
    let bad = |what: String| Error::InvalidArgument { what };
    let shape: FileShape = toml::from_str(text).map_err(|e| bad(format!("exports file: {e}")))?;
    let mut seen = BTreeSet::new();
    let mut specs = Vec::with_capacity(shape.export.len());
    for entry in shape.export {
        if entry.name.is_empty() || entry.name.len() > MAX_STRING || entry.name.contains('\0') {
            return Err(bad(format!(
                "exports file: export name {:?} must be 1 to {MAX_STRING} bytes without NUL",
                entry.name
            )));
        }
        if !seen.insert(entry.name.clone()) {
            return Err(bad(format!(
                "exports file: export {:?} is defined twice",
                entry.name
            )));
        }
        if entry.path.as_os_str().is_empty() {
            return Err(bad(format!(
                "exports file: export {:?} has an empty path",
                entry.name
            )));
        }
        if entry
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_STRING)
        {
            return Err(bad(format!(
                "exports file: the description of {:?} is longer than {MAX_STRING} bytes",
                entry.name
            )));
        }
        let format = match entry.format.as_deref() {
            None | Some("atrest") => ImageFormat::Atrest,
            Some("raw") => ImageFormat::Raw,
            Some(other) => {
                return Err(bad(format!(
                    "exports file: export {:?} has format {other:?}; expected \"atrest\" \
                     (the default) or \"raw\"",
                    entry.name
                )))
            }
        };
        specs.push(ExportSpec {
            format,
            path: base.join(&entry.path),
            name: entry.name,
            read_only: entry.read_only,
            description: entry.description,
            allowed_clients: entry.allowed_clients,
        });
    }
    Ok(specs)
}

/// Reads and parses the exports file at `file`.
pub fn load_exports(file: &Path) -> Result<Vec<ExportSpec>, Error> {
    let io = |source| Error::Io {
        context: format!("read the exports file {}", file.display()),
        source,
    };
    let len = std::fs::metadata(file).map_err(io)?.len();
    if len > MAX_FILE_LEN {
        return Err(Error::InvalidArgument {
            what: format!(
                "exports file {} is {len} bytes, more than the {MAX_FILE_LEN} allowed",
                file.display()
            ),
        });
    }
    let text = std::fs::read_to_string(file).map_err(io)?;
    let base = file.parent().unwrap_or(Path::new("."));
    parse_exports(&text, base)
}

/// Points the export `name` of the exports file `file` at the atrest volume `volume`
/// (written as given, so absolute when given so) and returns the path it named before.
/// The rest of the file (comments, order, other fields) stays as it is. The edited
/// text must still parse as an exports file, or nothing is written; it replaces the
/// file atomically (a new file beside it with the same mode, then a rename). A server
/// serving `file` picks the change up on its next SIGHUP. An export declared
/// `format = "raw"` is refused: an atrest volume's header would be served as data.
///
/// Edits through this function are serialised within the process; an editor outside
/// it that writes the file at the same moment may have its change replaced.
pub fn set_export_path(file: &Path, name: &str, volume: &Path) -> Result<PathBuf, Error> {
    static EDITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _editing = EDITING.lock().unwrap_or_else(PoisonError::into_inner);
    let bad = |what: String| Error::InvalidArgument { what };
    let io = |what: &str, path: &Path| {
        let context = format!("{what} {}", path.display());
        move |source| Error::Io { context, source }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let before = load_exports(file)?;
    let Some(old) = before.iter().find(|spec| spec.name == name) else {
        return Err(bad(format!(
            "the exports file {} has no export {name:?}",
            file.display()
        )));
    };
    if old.format == ImageFormat::Raw {
        return Err(bad(format!(
            "export {name:?} serves a raw image (format = \"raw\"): it cannot be swapped \
             to an atrest volume"
        )));
    }
    let text = std::fs::read_to_string(file).map_err(io("read", file))?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| bad(format!("exports file {}: {e}", file.display())))?;
    let volume_text = volume
        .to_str()
        .ok_or_else(|| bad(format!("{} is not UTF-8", volume.display())))?;
    let tables = document
        .get_mut("export")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or_else(|| bad(format!("exports file {}: no [[export]]", file.display())))?;
    let entry = tables
        .iter_mut()
        .find(|t| t.get("name").and_then(toml_edit::Item::as_str) == Some(name))
        .ok_or_else(|| {
            bad(format!(
                "exports file {}: no export {name:?}",
                file.display()
            ))
        })?;
    entry["path"] = toml_edit::value(volume_text);
    let edited = document.to_string();
    let after = parse_exports(&edited, base)?;
    if after.iter().find(|s| s.name == name).map(|s| &s.path) != Some(&base.join(volume)) {
        return Err(bad(format!(
            "exports file {}: the edit did not take",
            file.display()
        )));
    }
    let mode = std::fs::metadata(file).map_err(io("stat", file))?.mode() & 0o7777;
    let file_name = file
        .file_name()
        .ok_or_else(|| bad(format!("{} names no file", file.display())))?;
    let temp = base.join(format!(
        ".{}.{}.swap",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .and_then(|mut f| {
                use std::os::unix::fs::PermissionsExt;
                // The creation mode went through the umask: set it exactly.
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                f.write_all(edited.as_bytes())?;
                f.sync_all()
            })
            .map_err(io("write", &temp))
            .and_then(|()| std::fs::rename(&temp, file).map_err(io("rename", &temp)))
    };
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    Ok(old.path.clone())
}

/// Opens the volume an export serves.
pub type VolumeOpener = dyn Fn(&ExportSpec) -> Result<Arc<dyn Volume>, Error> + Send + Sync;

/// An export as served: its spec and the identity of the file it opened.
struct Served {
    spec: ExportSpec,
    file_id: Option<(u64, u64)>,
}

/// What a reload did, by export name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Exports new in the file.
    pub added: Vec<String>,
    /// Exports whose volume changed (clients of the old one disconnected).
    pub swapped: Vec<String>,
    /// Exports no longer in the file.
    pub removed: Vec<String>,
    /// Exports left as they were.
    pub unchanged: Vec<String>,
    /// Exports whose new volume could not be opened (they keep what they served).
    pub failed: Vec<(String, String)>,
}

/// The exports a server serves from an exports file.
pub struct ExportSet {
    table: ExportTable,
    served: BTreeMap<String, Served>,
    opener: Box<VolumeOpener>,
    /// Told of the exports after every reload, with the server's `--read-only`.
    status: Option<(Arc<StatusBoard>, bool)>,
}

impl std::fmt::Debug for ExportSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportSet")
            .field("exports", &self.served.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn export_of(spec: &ExportSpec, volume: Arc<dyn Volume>) -> Export {
    Export {
        volume,
        read_only: spec.read_only,
        description: spec.description.clone(),
        allowed_clients: spec.allowed_clients.clone(),
    }
}

impl ExportSet {
    /// Opens every export (any failure fails the whole start) and builds the table to
    /// hand to [`crate::nbd::Server::bind`].
    pub fn open(specs: Vec<ExportSpec>, opener: Box<VolumeOpener>) -> Result<Self, Error> {
        let mut table = BTreeMap::new();
        let mut served = BTreeMap::new();
        for spec in specs {
            let volume = opener(&spec).map_err(|err| Error::InvalidArgument {
                what: format!("export {:?} ({}): {err}", spec.name, spec.path.display()),
            })?;
            table.insert(spec.name.clone(), export_of(&spec, volume));
            served.insert(
                spec.name.clone(),
                Served {
                    file_id: file_id(&spec.path),
                    spec,
                },
            );
        }
        Ok(Self {
            table: Arc::new(RwLock::new(table)),
            served,
            opener,
            status: None,
        })
    }

    /// The exports as served now (`read_only`: the server's `--read-only`), for
    /// its status file.
    pub fn status(&self, read_only: bool) -> Vec<ExportStatus> {
        self.served
            .values()
            .map(|s| ExportStatus::of(&s.spec, read_only))
            .collect()
    }

    /// Publishes the exports on `board` after every reload.
    pub fn publish_to(&mut self, board: Arc<StatusBoard>, read_only: bool) {
        self.status = Some((board, read_only));
    }

    /// The table the server serves (shared; the set swaps entries in it).
    pub fn table(&self) -> ExportTable {
        Arc::clone(&self.table)
    }

    /// Makes the served exports match `specs`; `server` disconnects the clients of
    /// volumes that go away. An export whose new volume cannot be opened keeps its
    /// old one (reported in `failed`).
    pub fn reload(&mut self, specs: Vec<ExportSpec>, server: &ShutdownHandle) -> ReloadReport {
        let mut report = ReloadReport::default();
        let wanted: BTreeSet<String> = specs.iter().map(|s| s.name.clone()).collect();
        let gone: Vec<String> = self
            .served
            .keys()
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in gone {
            self.served.remove(&name);
            let old = self.write_table().remove(&name);
            if let Some(old) = old {
                retire(&name, old.volume, server);
            }
            report.removed.push(name);
        }
        for spec in specs {
            let current_id = file_id(&spec.path);
            let same_volume = self.served.get(&spec.name).is_some_and(|s| {
                s.spec.path == spec.path
                    && s.spec.read_only == spec.read_only
                    && s.spec.format == spec.format
                    && s.file_id == current_id
            });
            if same_volume {
                if let Some(export) = self.write_table().get_mut(&spec.name) {
                    export.description.clone_from(&spec.description);
                    export.allowed_clients.clone_from(&spec.allowed_clients);
                }
                if let Some(served) = self.served.get_mut(&spec.name) {
                    served.spec = spec.clone();
                }
                report.unchanged.push(spec.name);
                continue;
            }
            let volume = match (self.opener)(&spec) {
                Ok(volume) => volume,
                Err(err) => {
                    error!(
                        "export {:?}: cannot open {}: {err}; keeping what it served",
                        spec.name,
                        spec.path.display()
                    );
                    report.failed.push((spec.name, err.to_string()));
                    continue;
                }
            };
            let name = spec.name.clone();
            let old = self
                .write_table()
                .insert(name.clone(), export_of(&spec, volume));
            self.served.insert(
                name.clone(),
                Served {
                    spec,
                    file_id: current_id,
                },
            );
            match old {
                Some(old) => {
                    retire(&name, old.volume, server);
                    report.swapped.push(name);
                }
                None => report.added.push(name),
            }
        }
        info!(
            "exports reloaded: added {:?}, swapped {:?}, removed {:?}, unchanged {:?}, failed {:?}",
            report.added, report.swapped, report.removed, report.unchanged, report.failed
        );
        if let Some((board, read_only)) = &self.status {
            board.set_exports(self.status(*read_only));
        }
        report
    }

    fn write_table(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Export>> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Disconnects the clients of a volume that is no longer in the table, waits for them
/// to finish, then flushes it. Connections that resolved the old export just before the
/// swap still hold it; they are caught by the repeated sweep.
fn retire(name: &str, old: Arc<dyn Volume>, server: &ShutdownHandle) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let attached = server.disconnect_clients_of(&old);
        if attached == 0 && Arc::strong_count(&old) == 1 {
            break;
        }
        if Instant::now() >= deadline {
            warn!(
                "export {name:?}: {attached} client(s) of the old volume still busy after \
                 {DRAIN_TIMEOUT:?}; flushing it anyway"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Err(err) = old.flush() {
        error!("export {name:?}: flushing the old volume: {err}");
    }
    info!("export {name:?}: old volume flushed and closed");
}

/// Reloads `file` into `set` on every SIGHUP, on a thread of its own. A file that
/// cannot be read or parsed changes nothing (the error is logged).
pub fn reload_on_sighup(
    mut set: ExportSet,
    file: PathBuf,
    server: ShutdownHandle,
) -> Result<(), Error> {
    use signal_hook::consts::SIGHUP;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP]).map_err(|source| Error::Io {
            context: "installing the SIGHUP handler".into(),
            source,
        })?;
    std::thread::Builder::new()
        .name("exports-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match load_exports(&file) {
                    Ok(specs) => {
                        info!("SIGHUP: reloading {}", file.display());
                        set.reload(specs, &server);
                    }
                    Err(err) => error!("SIGHUP: {err}; the exports stay as they are"),
                }
            }
        })
        .map_err(|source| Error::Io {
            context: "starting the exports reload thread".into(),
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let text = r#"
            [[export]]
            name = "root"
            path = "/var/lib/atrest/root.vol"
            read_only = true
            description = "boot disk"
            allowed_clients = ["client1"]

            [[export]]
            name = "data"
            path = "data.vol"

            [[export]]
            name = "scratch"
            path = "scratch.img"
            format = "raw"
        "#;
        let specs = parse_exports(text, Path::new("/etc/atrest")).unwrap();
        assert_eq!(
            specs,
            vec![
                ExportSpec {
                    name: "root".into(),
                    path: "/var/lib/atrest/root.vol".into(),
                    read_only: true,
                    description: Some("boot disk".into()),
                    allowed_clients: vec!["client1".into()],
                    format: ImageFormat::Atrest,
                },
                ExportSpec {
                    name: "data".into(),
                    path: "/etc/atrest/data.vol".into(),
                    read_only: false,
                    description: None,
                    allowed_clients: vec![],
                    format: ImageFormat::Atrest,
                },
                ExportSpec {
                    name: "scratch".into(),
                    path: "/etc/atrest/scratch.img".into(),
                    read_only: false,
                    description: None,
                    allowed_clients: vec![],
                    format: ImageFormat::Raw,
                },
            ]
        );
        assert_eq!(parse_exports("", Path::new("/")).unwrap(), vec![]);
    }

    #[test]
    fn a_swap_edits_one_path_and_keeps_the_rest() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("exports.toml");
        let text = "# the lab's exports\n[[export]]\nname = \"root\"\npath = \"root.vol\" # boot\n\
                    description = \"boot disk\"\n\n[[export]]\nname = \"data\"\npath = \"data.vol\"\n\n\
                    [[export]]\nname = \"img\"\npath = \"a.img\"\nformat = \"raw\"\n";
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let new = dir.path().join("copy.vol");
        let old = set_export_path(&file, "root", &new).unwrap();
        assert_eq!(old, dir.path().join("root.vol"));
        let edited = std::fs::read_to_string(&file).unwrap();
        assert!(edited.starts_with("# the lab's exports\n"), "{edited}");
        assert!(edited.contains("description = \"boot disk\""));
        let specs = load_exports(&file).unwrap();
        assert_eq!(specs[0].path, new);
        assert_eq!(specs[1].path, dir.path().join("data.vol"));
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o640
        );

        // Refusals change nothing: no such export, a raw image, a path TOML cannot hold.
        let before = std::fs::read(&file).unwrap();
        let err = set_export_path(&file, "nope", &new).unwrap_err();
        assert!(err.to_string().contains("no export \"nope\""), "{err}");
        let err = set_export_path(&file, "img", &new).unwrap_err();
        assert!(err.to_string().contains("raw image"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), before);
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let cases = [
            ("[[export]]\nname = \"a\"\n", "path"),
            ("[[export]]\nname = \"\"\npath = \"x\"\n", "must be 1 to"),
            (
                "[[export]]\nname = \"a\"\npath = \"x\"\n[[export]]\nname = \"a\"\npath = \"y\"\n",
                "defined twice",
            ),
            (
                "[[export]]\nname = \"a\"\npath = \"x\"\ncolour = 1\n",
                "colour",
            ),
            ("[[export]]\nname = \"a\"\npath = \"\"\n", "empty path"),
            (
                "[[export]]\nname = \"a\"\npath = \"x\"\nread_only = \"yes\"\n",
                "read_only",
            ),
            ("export = 3", "export"),
            (
                "[[export]]\nname = \"a\"\npath = \"x\"\nformat = \"qcow2\"\n",
                "expected \"atrest\"",
            ),
            ("[[export]\n", "exports file"),
        ];
        for (text, expected) in cases {
            let err = parse_exports(text, Path::new("/")).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }
}
