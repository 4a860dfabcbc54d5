//! The volumes page: the files under the configured directories and, for each
//! encrypted one, its key as the signed-in principal may see it.

use super::calls::Caller;
use super::{blocking, json_reply, Console, Refusal};
use crate::server::Body;
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What the volumes page shows of one file.
fn describe_volume(path: &Path) -> Value {
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(path).map(|m| m.blocks() * 512).ok();
    let header = blockdev::volume::open_volume_file(path, false)
        .and_then(|file| blockdev::format::read_header(&file, path));
    match header {
        Ok(located) => {
            let key = match located.header.encryption() {
                blockdev::format::Encryption::Aes256XtsPlain64(wrapped) => {
                    Some(wrapped.key_arn.clone())
                }
                blockdev::format::Encryption::None => None,
            };
            json!({
                "path": path.display().to_string(),
                "volumeId": located.header.volume_id().to_string(),
                "size": located.header.size(),
                "allocated": allocated,
                "encrypted": key.is_some(),
                "keyArn": key,
                "warning": located.warning,
            })
        }
        Err(err) => json!({
            "path": path.display().to_string(),
            "allocated": allocated,
            "error": err.to_string(),
        }),
    }
}

/// `GET volumes`: the volumes under the configured directories, each encrypted one
/// with its key's state as the signed-in principal may see it (DescribeKey through
/// the API: a principal the key policy does not allow sees AccessDeniedException).
pub(super) async fn volumes(
    caller: &Caller<'_>,
    console: &Console,
) -> Result<Response<Body>, Refusal> {
    let dirs = console.volume_dirs.clone();
    let mut listed = blocking(move || {
        let mut volumes = Vec::new();
        for dir in &dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "vol"))
                .collect();
            paths.sort();
            volumes.extend(paths.iter().map(|p| describe_volume(p)));
        }
        Ok(volumes)
    })
    .await?;
    let mut states: std::collections::BTreeMap<String, Value> = Default::default();
    for volume in &mut listed {
        let Some(arn) = volume["keyArn"].as_str().map(str::to_owned) else {
            continue;
        };
        if !states.contains_key(&arn) {
            let input = json!({ "KeyId": arn }).to_string();
            let answer = caller.kms("DescribeKey", Bytes::from(input)).await?;
            let parsed: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let state = match parsed["KeyMetadata"]["KeyState"].as_str() {
                Some(state) => json!(state),
                None => json!(parsed["__type"].as_str().unwrap_or("unknown")),
            };
            states.insert(arn.clone(), state);
        }
        volume["keyState"] = states[&arn].clone();
    }
    let dirs: Vec<String> = console
        .volume_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "directories": dirs, "volumes": listed }),
    ))
}
