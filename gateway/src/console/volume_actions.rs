//! The volumes page's actions and the exports of running NBD servers.
//!
//! Actions: create a volume, snapshot, encrypted copy, rewrap, and swap an export of
//! a running `atrest nbd serve` to another volume. Each runs the same `blockdev`
//! lifecycle code as the CLI, with a key service ([`SessionKms`]) whose every call
//! is a KMS request signed with the session's access key and handed to the
//! gateway's entry point: key policies decide, the trail names the principal, and a
//! refusal comes back with its AWS error code. Plaintext data keys stay in this
//! process, in zeroizing buffers.
//!
//! Paths: a new volume is a validated file name (letters, digits, `.`, `_`, `-`;
//! no `/`, no `..`) in one of the configured volume directories, and never replaces
//! a file (the lifecycle code publishes with a no-replace rename); an existing
//! volume must be a regular file (not a link) directly in one of them.
//!
//! Exports come from the status files servers keep under `<home>/run/nbd/`
//! ([`blockdev::nbd::status`]); a file whose process is gone is shown as gone and
//! nothing in it is used.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockdev::format::{self, Encryption};
use blockdev::lifecycle::{self, exports, NoProgress, Target};
use blockdev::nbd::status::{self, Listed, ServerStatus};
use blockdev::volume::{self, EncryptedVolume, ImageFormat, NewVolumeKey};
use bytes::Bytes;
use crypto_core::kms::{KmsError, Operation};
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::calls::Caller;
use super::session::Session;
use super::{blocking, json_reply, parse, Console, Refusal};
use crate::client::{KmsExchange, RemoteKms};
use crate::server::{Body, Gateway};

/// Longest volume file name (with `.vol`).
const MAX_NAME: usize = 100;
/// How long a swap waits for the server to show the new volume after SIGHUP.
const SWAP_WAIT: Duration = Duration::from_secs(5);

/// The key service of a console session: each call is the KMS API request, signed
/// with the session's access key, through the gateway's entry point from the
/// browser's address. Used on a blocking thread (it waits for the runtime).
struct SessionKms {
    gateway: Arc<Gateway>,
    session: Arc<Session>,
    peer: SocketAddr,
    host: String,
    user_agent: String,
    runtime: tokio::runtime::Handle,
}

impl KmsExchange for SessionKms {
    fn exchange(&self, op: Operation, body: &[u8]) -> Result<(u16, Zeroizing<Vec<u8>>), KmsError> {
        let caller = Caller {
            gateway: &self.gateway,
            session: &self.session,
            peer: self.peer,
            host: self.host.clone(),
            user_agent: self.user_agent.clone(),
        };
        let input = Bytes::copy_from_slice(body);
        self.runtime
            .block_on(caller.kms_secret(op.name(), input))
            .map(|(status, answer)| (status.as_u16(), answer))
            .map_err(|e| KmsError::Unavailable(e.message()))
    }

    fn destination(&self) -> String {
        format!("the console's gateway (as {})", self.session.principal)
    }
}

/// The key service the session's volume actions use.
fn session_kms(caller: &Caller<'_>, session: &Arc<Session>) -> RemoteKms {
    RemoteKms::over(Box::new(SessionKms {
        gateway: Arc::clone(caller.gateway),
        session: Arc::clone(session),
        peer: caller.peer,
        host: caller.host.clone(),
        user_agent: caller.user_agent.clone(),
        runtime: tokio::runtime::Handle::current(),
    }))
}

/// A refusal for a failed volume action: a key service refusal keeps its AWS code
/// (`AccessDeniedException`, `DisabledException`, ...).
fn refusal(err: blockdev::Error) -> Refusal {
    match err {
        blockdev::Error::Kms(kms) => Refusal::new(
            StatusCode::BAD_REQUEST,
            kms.aws_name(),
            kms.message().to_owned(),
        ),
        blockdev::Error::AlreadyExists { .. } => {
            Refusal::new(StatusCode::CONFLICT, "AlreadyExists", err.to_string())
        }
        blockdev::Error::InUse { .. } | blockdev::Error::HeaderBusy { .. } => {
            Refusal::new(StatusCode::CONFLICT, "VolumeInUse", err.to_string())
        }
        other => Refusal::new(StatusCode::BAD_REQUEST, "VolumeError", other.to_string()),
    }
}

/// The configured volume directory `text` names (exactly as the volumes page lists it).
fn volume_dir<'a>(console: &'a Console, text: &str) -> Result<&'a Path, Refusal> {
    console
        .volume_dirs
        .iter()
        .find(|d| d.as_os_str() == text)
        .map(PathBuf::as_path)
        .ok_or_else(|| {
            Refusal::bad(format!(
                "{text:?} is not one of the console's volume directories"
            ))
        })
}

/// A volume file name: `name`, with `.vol` added when it lacks it.
fn volume_name(name: &str) -> Result<String, Refusal> {
    let name = name.trim();
    let name = if name.ends_with(".vol") {
        name.to_owned()
    } else {
        format!("{name}.vol")
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.len() > MAX_NAME || !first_ok || !name.chars().all(allowed) || name.contains("..") {
        return Err(Refusal::bad(format!(
            "{name:?} is not a volume name: up to {MAX_NAME} letters, digits, '.', '_' or '-', \
             starting with a letter or digit, without '/' or '..'"
        )));
    }
    Ok(name)
}

/// Where a new volume called `name` goes in `dir`; it must not exist.
fn new_volume(dir: &Path, name: &str) -> Result<PathBuf, Refusal> {
    let path = dir.join(volume_name(name)?);
    if path.symlink_metadata().is_ok() {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!(
                "{} exists: the console never replaces a file",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// An existing volume: a regular file (not a link) directly in a volume directory.
fn existing_volume(console: &Console, text: &str) -> Result<PathBuf, Refusal> {
    let path = PathBuf::from(text);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Refusal::bad(format!("{text:?} names no volume")));
    };
    let dir = volume_dir(console, &dir.to_string_lossy())?;
    let name = name
        .to_str()
        .ok_or_else(|| Refusal::bad(format!("{text:?} is not UTF-8")))?;
    if volume_name(name)? != name {
        return Err(Refusal::bad(format!("{name:?} is not a volume (*.vol)")));
    }
    let path = dir.join(name);
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_file() => Ok(path),
        Ok(_) => Err(Refusal::bad(format!(
            "{} is not a regular file (the console does not follow links)",
            path.display()
        ))),
        Err(err) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "VolumeNotFound",
            format!("{}: {err}", path.display()),
        )),
    }
}

/// What an action's answer says of the volume it made or changed.
fn made(path: &Path, header: Option<&format::VolumeHeader>) -> Value {
    json!({
        "path": path.display().to_string(),
        "volumeId": header.map(|h| h.volume_id().to_string()),
        "size": header.map(format::VolumeHeader::size),
        "keyArn": header.and_then(|h| match h.encryption() {
            Encryption::Aes256XtsPlain64(wrapped) => Some(wrapped.key_arn.clone()),
            Encryption::None => None,
        }),
        "readOnly": header.map(format::VolumeHeader::is_read_only),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateCall {
    directory: String,
    name: String,
    size: u64,
    /// The CMK; `None`: unencrypted.
    key_id: Option<String>,
}

/// `POST volumes/create`: a new sparse volume (GenerateDataKeyWithoutPlaintext as
/// the principal when encrypted).
pub(super) async fn create(
    caller: &Caller<'_>,
    session: &Arc<Session>,
    console: &Console,
    bytes: &[u8],
) -> Result<Response<Body>, Refusal> {
    let call: CreateCall = parse(bytes)?;
    let path = new_volume(volume_dir(console, &call.directory)?, &call.name)?;
    let kms = session_kms(caller, session);
    let header = blocking(move || {
        let key = match call.key_id.as_deref().filter(|k| !k.is_empty()) {
            Some(key_id) => NewVolumeKey::Kms { kms: &kms, key_id },
            None => NewVolumeKey::Unencrypted,
        };
        let header = volume::create(&path, call.size, key).map_err(refusal)?;
        Ok(made(&path, Some(&header)))
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &header))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CopyCall {
    /// The source volume, as the volumes page lists it.
    path: String,
    /// The new volume's name, in the source's directory.
    name: String,
    /// For a copy: its CMK (`None`: the source's).
    #[serde(default)]
    key_id: Option<String>,
}

/// `POST volumes/snapshot`: a read-only point-in-time copy with the same wrapped
/// data key (no key service call).
pub(super) async fn snapshot(console: &Console, bytes: &[u8]) -> Result<Response<Body>, Refusal> {
    let call: CopyCall = parse(bytes)?;
    if call.key_id.is_some() {
        return Err(Refusal::bad(
            "a snapshot keeps its source's key: make an encrypted copy to change it",
        ));
    }
    let source = existing_volume(console, &call.path)?;
    let target = new_volume(source.parent().unwrap_or(Path::new(".")), &call.name)?;
    let answer = blocking(move || {
        let report = lifecycle::snapshot(&source, ImageFormat::Atrest, &target, false, &NoProgress)
            .map_err(refusal)?;
        let mut answer = made(&target, report.header.as_ref());
        answer["reflinked"] = json!(report.reflinked);
        Ok(answer)
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &answer))
}

/// `POST volumes/copy`: the source's data under a fresh data key of the chosen CMK
/// (Decrypt of the source's key and GenerateDataKey, both as the principal).
pub(super) async fn copy(
    caller: &Caller<'_>,
    session: &Arc<Session>,
    console: &Console,
    bytes: &[u8],
) -> Result<Response<Body>, Refusal> {
    let call: CopyCall = parse(bytes)?;
    let source = existing_volume(console, &call.path)?;
    let target = new_volume(source.parent().unwrap_or(Path::new(".")), &call.name)?;
    let kms = session_kms(caller, session);
    let answer = blocking(move || {
        let key = match call.key_id.as_deref().filter(|k| !k.is_empty()) {
            Some(key_id) => Target::Key(key_id),
            None => Target::SourceKey,
        };
        let report =
            lifecycle::copy(&source, &target, &kms, key, false, &NoProgress).map_err(refusal)?;
        let mut answer = made(&target, Some(&report.header));
        answer["dataBytes"] = json!(report.data_bytes);
        answer["holeBytes"] = json!(report.hole_bytes);
        Ok(answer)
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &answer))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewrapCall {
    path: String,
    /// The CMK to wrap under (`None`: the current one, its newest material).
    #[serde(default)]
    key_id: Option<String>,
}

/// `POST volumes/rewrap`: the same data key wrapped again (ReEncrypt as the
/// principal). Only the header changes, under the header lock, so a volume a server
/// serves may be rewrapped (the server follows the new header).
pub(super) async fn rewrap(
    caller: &Caller<'_>,
    session: &Arc<Session>,
    console: &Console,
    bytes: &[u8],
) -> Result<Response<Body>, Refusal> {
    let call: RewrapCall = parse(bytes)?;
    let path = existing_volume(console, &call.path)?;
    let kms = session_kms(caller, session);
    let answer = blocking(move || {
        let key_id = call.key_id.as_deref().filter(|k| !k.is_empty());
        let header = lifecycle::rewrap(&path, &kms, key_id).map_err(refusal)?;
        Ok(made(&path, Some(&header)))
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &answer))
}

/// The directory of the servers' status files.
fn status_dir(console: &Console) -> PathBuf {
    console.home.join("run").join("nbd")
}

/// `GET exports`: every running server's exports and clients, and the leftover
/// files of servers that are gone.
pub(super) async fn exports(console: &Console) -> Result<Response<Body>, Refusal> {
    let dir = status_dir(console);
    let listed = blocking(move || Ok(status::list(&dir))).await?;
    let mut servers = Vec::new();
    let mut gone = Vec::new();
    let mut unreadable = Vec::new();
    for entry in listed {
        match entry {
            Listed::Running(server) => servers.push(server_view(&server)),
            Listed::Gone { file, pid } => {
                gone.push(json!({ "file": file.display().to_string(), "pid": pid }))
            }
            Listed::Unreadable { file, reason } => {
                unreadable.push(json!({ "file": file.display().to_string(), "reason": reason }))
            }
        }
    }
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "statusDirectory": status_dir(console).display().to_string(),
            "servers": servers,
            "gone": gone,
            "unreadable": unreadable,
        }),
    ))
}

fn server_view(server: &ServerStatus) -> Value {
    let mut view = serde_json::to_value(server).unwrap_or(Value::Null);
    if let Some(exports) = view["exports"].as_array_mut() {
        for export in exports {
            let name = export["name"].as_str().unwrap_or("").to_owned();
            let attached = server
                .clients
                .iter()
                .filter(|c| c.export.as_deref() == Some(name.as_str()))
                .count();
            export["clients"] = json!(attached);
        }
    }
    view
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SwapCall {
    /// The server's process id, as the exports page shows it.
    pid: u32,
    export: String,
    /// The volume to serve under the export from now on.
    volume: String,
}

/// The running server `pid`, from its status file.
fn running_server(console: &Console, pid: u32) -> Result<ServerStatus, Refusal> {
    status::list(&status_dir(console))
        .into_iter()
        .find_map(|listed| match listed {
            Listed::Running(server) if server.pid == pid => Some(server),
            _ => None,
        })
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "ServerNotFound",
                format!("no running NBD server with pid {pid}"),
            )
        })
}

/// Unwraps the data key of the encrypted volume at `path` (one Decrypt as the
/// principal) and drops it at once (zeroized): the proof that the principal may
/// read the volume.
fn may_decrypt(path: &Path, kms: &RemoteKms) -> Result<(), Refusal> {
    let file = volume::open_volume_file(path, false).map_err(refusal)?;
    let header = format::read_header(&file, path).map_err(refusal)?.header;
    drop(file);
    if let Encryption::Aes256XtsPlain64(_) = header.encryption() {
        let volume = EncryptedVolume::open_locked(path, true).map_err(refusal)?;
        drop(volume.unwrap(kms).map_err(refusal)?);
    }
    Ok(())
}

/// `POST exports/swap`: points an export of a running server at another volume the
/// way the lab does (edit the server's exports file, SIGHUP). Allowed to a principal
/// who can Decrypt the data keys of both the new volume and the one served now
/// (each an audited Decrypt), since the swap changes what the export's clients read
/// and write. Refused for a server without an exports file.
pub(super) async fn swap(
    caller: &Caller<'_>,
    session: &Arc<Session>,
    console: &Console,
    bytes: &[u8],
) -> Result<Response<Body>, Refusal> {
    let call: SwapCall = parse(bytes)?;
    let volume = existing_volume(console, &call.volume)?;
    let volume = std::path::absolute(&volume)
        .map_err(|e| Refusal::bad(format!("{}: {e}", volume.display())))?;
    let server = running_server(console, call.pid)?;
    let Some(exports_file) = server.exports_file.clone() else {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "NoExportsFile",
            format!(
                "the server with pid {} serves exports given on its command line (--export), \
                 not an exports file: it cannot swap a volume while it runs (restart it with \
                 --exports FILE)",
                server.pid
            ),
        ));
    };
    let Some(export) = server
        .exports
        .iter()
        .find(|e| e.name == call.export)
        .cloned()
    else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "ExportNotFound",
            format!(
                "the server with pid {} has no export {:?}",
                server.pid, call.export
            ),
        ));
    };
    if export.format != "atrest" {
        return Err(Refusal::bad(format!(
            "export {:?} serves a raw image; only atrest volumes are swapped in",
            export.name
        )));
    }
    let kms = session_kms(caller, session);
    let home = console.home.clone();
    let answer = blocking(move || {
        let header = {
            let file = volume::open_volume_file(&volume, false).map_err(refusal)?;
            format::read_header(&file, &volume).map_err(refusal)?.header
        };
        if header.is_read_only() && !export.read_only {
            return Err(Refusal::bad(format!(
                "{} is read-only (a snapshot) and export {:?} is writable: make a copy of it \
                 to serve",
                volume.display(),
                export.name
            )));
        }
        may_decrypt(&volume, &kms)?;
        if export.path.exists() {
            may_decrypt(&export.path, &kms)?;
        }
        let previous =
            exports::set_export_path(&exports_file, &export.name, &volume).map_err(refusal)?;
        // The pid must still be that server (and not a recycled pid) when signalled.
        if !status::is_running(server.pid, server.process_start) {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "ServerGone",
                format!(
                    "the server with pid {} stopped; its exports file now names {}",
                    server.pid,
                    volume.display()
                ),
            ));
        }
        let pid = rustix::process::Pid::from_raw(server.pid as i32)
            .ok_or_else(|| Refusal::bad("pid 0"))?;
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SignalFailed",
                format!("SIGHUP to pid {}: {e}", server.pid),
            )
        })?;
        tracing::info!(
            pid = server.pid,
            export = %export.name,
            "console swap: {} -> {}",
            previous.display(),
            volume.display()
        );
        let dir = home.join("run").join("nbd");
        let deadline = Instant::now() + SWAP_WAIT;
        loop {
            let now_serving = status::list(&dir).into_iter().find_map(|l| match l {
                Listed::Running(s) if s.pid == server.pid => s
                    .exports
                    .into_iter()
                    .find(|e| e.name == export.name)
                    .map(|e| e.path),
                _ => None,
            });
            if now_serving.as_deref() == Some(volume.as_path()) {
                return Ok(json!({
                    "pid": server.pid,
                    "export": export.name,
                    "previous": previous.display().to_string(),
                    "volume": volume.display().to_string(),
                    "swapped": true,
                }));
            }
            if Instant::now() >= deadline {
                // The server kept what it served (the new volume did not open there,
                // e.g. another export writes to it): the file says so again, so a
                // later reload does not retry the swap behind anyone's back.
                let restored = exports::set_export_path(&exports_file, &export.name, &previous);
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "SwapNotConfirmed",
                    format!(
                        "the server was sent SIGHUP but still serves {} (see its log: {} may \
                         not open there); the exports file {}",
                        now_serving.map_or("nothing".into(), |p| p.display().to_string()),
                        volume.display(),
                        match restored {
                            Ok(_) => format!("names {} again", previous.display()),
                            Err(err) => format!("could not be restored ({err})"),
                        }
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_cannot_leave_their_directory() {
        assert_eq!(volume_name("root-copy").unwrap(), "root-copy.vol");
        assert_eq!(volume_name("a.b_c.vol").unwrap(), "a.b_c.vol");
        for bad in [
            "../etc/passwd",
            "..",
            "a/../b",
            "/abs",
            "a..vol",
            ".hidden",
            "",
            "sp ace",
            "nul\0",
            "x\\y",
            &"a".repeat(MAX_NAME),
        ] {
            assert!(volume_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn existing_volumes_are_plain_files_in_a_volume_directory() {
        let home = tempfile::tempdir().unwrap();
        let console = Console::new(home.path(), Duration::from_secs(60));
        let dir = home.path().join("volumes");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.vol"), b"x").unwrap();
        std::fs::write(home.path().join("outside.vol"), b"x").unwrap();
        std::os::unix::fs::symlink(home.path().join("outside.vol"), dir.join("link.vol")).unwrap();
        let text = |p: PathBuf| p.display().to_string();
        assert_eq!(
            existing_volume(&console, &text(dir.join("a.vol"))).unwrap(),
            dir.join("a.vol")
        );
        for bad in [
            dir.join("link.vol"),
            home.path().join("outside.vol"),
            dir.join("../outside.vol"),
            dir.join("missing.vol"),
            dir.clone(),
        ] {
            assert!(
                existing_volume(&console, &text(bad.clone())).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(new_volume(&dir, "a").is_err());
        assert_eq!(new_volume(&dir, "b").unwrap(), dir.join("b.vol"));
    }
}
