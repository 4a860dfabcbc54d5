//! `atrest kms ...`: the AWS KMS operations, with the aws CLI's names, flags and
//! JSON output (PascalCase fields, binary fields in base64, dates in ISO 8601).

use std::io::{Read, Write};

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::{Args, Subcommand};
use crypto_core::kms::{
    CreateKeyRequest, DataKeySpec, DecryptRequest, EncryptionContext, GenerateDataKeyRequest,
    KeyService, ListRequest, ReEncryptRequest, Tag,
};
use crypto_core::secret::SecretBytes;
use serde::Serialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::Globals;

/// Largest `fileb://` input read. Far above what any operation accepts (Encrypt
/// takes 4096 bytes, ciphertext blobs 6144), so the key service, not the CLI, says
/// what is too long; this only stops a mistyped path from reading a disk image.
const MAX_BLOB_FILE: u64 = 1 << 20;

#[derive(Debug, Subcommand)]
pub enum KmsCommand {
    /// Create a symmetric AES-256 customer master key.
    CreateKey(CreateKeyArgs),
    /// Show a key's metadata.
    DescribeKey(KeyIdArg),
    /// Allow cryptographic operations with a key again.
    EnableKey(KeyIdArg),
    /// Refuse every cryptographic operation with a key until it is enabled.
    DisableKey(KeyIdArg),
    /// List the keys of the account.
    ListKeys,
    /// List aliases, of every key or of one.
    ListAliases {
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
    },
    /// Give a key another name (`alias/NAME`).
    CreateAlias(AliasArgs),
    /// Point an existing alias at another key.
    UpdateAlias(AliasArgs),
    /// Remove an alias (the key stays).
    DeleteAlias {
        #[arg(long, value_name = "alias/NAME")]
        alias_name: String,
    },
    /// Disable a key now and destroy it after 7 to 30 days (default 30).
    ScheduleKeyDeletion {
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[arg(long, value_name = "DAYS")]
        pending_window_in_days: Option<u32>,
    },
    /// Stop a scheduled deletion; the key is left disabled.
    CancelKeyDeletion(KeyIdArg),
    /// Rotate the key's material automatically (default every 365 days).
    EnableKeyRotation {
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[arg(long, value_name = "DAYS")]
        rotation_period_in_days: Option<u32>,
    },
    /// Stop automatic rotation (existing material versions stay).
    DisableKeyRotation(KeyIdArg),
    /// Whether automatic rotation is on, its period and next date.
    GetKeyRotationStatus(KeyIdArg),
    /// New material for new ciphertexts now; old ciphertexts still decrypt.
    RotateKeyOnDemand(KeyIdArg),
    /// The key's completed rotations.
    ListKeyRotations(KeyIdArg),
    /// Replace a key's description.
    UpdateKeyDescription {
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[arg(long, value_name = "TEXT")]
        description: String,
    },
    /// Print a key's policy.
    GetKeyPolicy {
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[arg(long, value_name = "NAME", default_value = "default")]
        policy_name: String,
    },
    /// Replace a key's policy (JSON text or `file://PATH`).
    PutKeyPolicy {
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[arg(long, value_name = "NAME", default_value = "default")]
        policy_name: String,
        #[arg(long, value_name = "JSON|file://PATH")]
        policy: String,
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    /// A fresh data key, in plaintext and wrapped by the key.
    GenerateDataKey(DataKeyArgs),
    /// A fresh data key, wrapped by the key only.
    GenerateDataKeyWithoutPlaintext(DataKeyArgs),
    /// Encrypt up to 4096 bytes directly under the key.
    Encrypt {
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// `fileb://PATH`, or the bytes in base64.
        #[arg(long, value_name = "fileb://PATH|BASE64")]
        plaintext: String,
        #[arg(long, value_name = "k=v,...|JSON")]
        encryption_context: Option<String>,
    },
    /// Decrypt a ciphertext blob (a wrapped data key or an encrypted message).
    Decrypt {
        /// `fileb://PATH`, or the blob in base64.
        #[arg(long, value_name = "fileb://PATH|BASE64")]
        ciphertext_blob: String,
        #[arg(long, value_name = "k=v,...|JSON")]
        encryption_context: Option<String>,
        /// Fail with IncorrectKeyException unless the blob was made under this key.
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
    },
    /// Decrypt a blob and encrypt it again under another key, without showing the
    /// plaintext.
    ReEncrypt {
        #[arg(long, value_name = "fileb://PATH|BASE64")]
        ciphertext_blob: String,
        #[arg(long, value_name = "k=v,...|JSON")]
        source_encryption_context: Option<String>,
        #[arg(long, value_name = "ID")]
        source_key_id: Option<String>,
        #[arg(long, value_name = "ID")]
        destination_key_id: String,
        #[arg(long, value_name = "k=v,...|JSON")]
        destination_encryption_context: Option<String>,
    },
    /// Add or overwrite tags on a key.
    TagResource {
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// `TagKey=K,TagValue=V` per tag (several after one `--tags`), or a JSON list
        /// `[{"TagKey": "K", "TagValue": "V"}, ...]`.
        #[arg(long, value_name = "TAG", num_args = 1.., required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a key by their keys.
    UntagResource {
        #[arg(long, value_name = "ID")]
        key_id: String,
        #[arg(long, value_name = "KEY", num_args = 1.., required = true)]
        tag_keys: Vec<String>,
    },
    /// A key's tags.
    ListResourceTags(KeyIdArg),
    /// The names of a key's policies (always `default`).
    ListKeyPolicies(KeyIdArg),
    /// 1 to 1024 random bytes from the key service, in base64.
    GenerateRandom(GenerateRandomArgs),
    /// Serve this key service over HTTP(S) with the AWS KMS JSON API and SigV4.
    Serve(super::gateway::KmsServeArgs),
}

#[derive(Debug, Args)]
pub struct GenerateRandomArgs {
    /// How many bytes, 1 to 1024.
    #[arg(long, value_name = "N")]
    number_of_bytes: Option<u32>,
}

#[derive(Debug, Args)]
pub struct KeyIdArg {
    /// Key id, key ARN, alias name (`alias/NAME`) or alias ARN.
    #[arg(long, value_name = "ID")]
    key_id: String,
}

#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    /// Also create this alias for the new key (atrest's shortcut for create-alias).
    #[arg(long, value_name = "alias/NAME")]
    alias: Option<String>,
    #[arg(long, value_name = "TEXT", default_value = "")]
    description: String,
    /// Key policy, JSON text or `file://PATH`; default: the caller may do everything.
    #[arg(long, value_name = "JSON|file://PATH")]
    policy: Option<String>,
    #[arg(long)]
    bypass_policy_lockout_safety_check: bool,
    /// Only SYMMETRIC_DEFAULT.
    #[arg(long, value_name = "SPEC")]
    key_spec: Option<String>,
    /// Only ENCRYPT_DECRYPT.
    #[arg(long, value_name = "USAGE")]
    key_usage: Option<String>,
}

#[derive(Debug, Args)]
pub struct AliasArgs {
    #[arg(long, value_name = "alias/NAME")]
    alias_name: String,
    #[arg(long, value_name = "ID")]
    target_key_id: String,
}

#[derive(Debug, Args)]
pub struct DataKeyArgs {
    #[arg(long, value_name = "ID")]
    key_id: String,
    /// AES_256 (the default) or AES_128.
    #[arg(long, value_name = "SPEC", conflicts_with = "number_of_bytes")]
    key_spec: Option<String>,
    /// A key of 1 to 1024 bytes instead of a key spec.
    #[arg(long, value_name = "N")]
    number_of_bytes: Option<u16>,
    #[arg(long, value_name = "k=v,...|JSON")]
    encryption_context: Option<String>,
}

pub fn run(cmd: KmsCommand, globals: &Globals) -> anyhow::Result<()> {
    let kms = globals.keys()?;
    match cmd {
        KmsCommand::Serve(args) => match kms {
            gateway::keys::Keys::Local(local) => super::gateway::serve_kms(args, globals, local),
            gateway::keys::Keys::Remote(_) => {
                bail!("atrest kms serve serves the local keystore; drop --kms-endpoint")
            }
        },
        KmsCommand::CreateKey(args) => create_key(&*kms, args),
        KmsCommand::DescribeKey(KeyIdArg { key_id }) => {
            print_json(&json!({ "KeyMetadata": to_json(&kms.describe_key(&key_id)?)? }))
        }
        KmsCommand::EnableKey(KeyIdArg { key_id }) => Ok(kms.enable_key(&key_id)?),
        KmsCommand::DisableKey(KeyIdArg { key_id }) => Ok(kms.disable_key(&key_id)?),
        KmsCommand::ListKeys => {
            let keys = all_pages(|req| kms.list_keys(req).map(|p| (p.items, p.next_marker)))?;
            print_json(&json!({ "Keys": to_json(&keys)?, "Truncated": false }))
        }
        KmsCommand::ListAliases { key_id } => {
            let aliases = all_pages(|req| {
                kms.list_aliases(key_id.as_deref(), req)
                    .map(|p| (p.items, p.next_marker))
            })?;
            print_json(&json!({ "Aliases": to_json(&aliases)?, "Truncated": false }))
        }
        KmsCommand::CreateAlias(args) => {
            Ok(kms.create_alias(&args.alias_name, &args.target_key_id)?)
        }
        KmsCommand::UpdateAlias(args) => {
            Ok(kms.update_alias(&args.alias_name, &args.target_key_id)?)
        }
        KmsCommand::DeleteAlias { alias_name } => Ok(kms.delete_alias(&alias_name)?),
        KmsCommand::ScheduleKeyDeletion {
            key_id,
            pending_window_in_days,
        } => print_json(&to_json(
            &kms.schedule_key_deletion(&key_id, pending_window_in_days)?,
        )?),
        KmsCommand::CancelKeyDeletion(KeyIdArg { key_id }) => {
            print_json(&json!({ "KeyId": kms.cancel_key_deletion(&key_id)? }))
        }
        KmsCommand::EnableKeyRotation {
            key_id,
            rotation_period_in_days,
        } => Ok(kms.enable_key_rotation(&key_id, rotation_period_in_days)?),
        KmsCommand::DisableKeyRotation(KeyIdArg { key_id }) => {
            Ok(kms.disable_key_rotation(&key_id)?)
        }
        KmsCommand::GetKeyRotationStatus(KeyIdArg { key_id }) => {
            print_json(&to_json(&kms.get_key_rotation_status(&key_id)?)?)
        }
        KmsCommand::RotateKeyOnDemand(KeyIdArg { key_id }) => {
            print_json(&json!({ "KeyId": kms.rotate_key_on_demand(&key_id)? }))
        }
        KmsCommand::ListKeyRotations(KeyIdArg { key_id }) => print_json(&json!({
            "Rotations": to_json(&kms.list_key_rotations(&key_id)?)?,
            "Truncated": false,
        })),
        KmsCommand::UpdateKeyDescription {
            key_id,
            description,
        } => Ok(kms.update_key_description(&key_id, &description)?),
        KmsCommand::GetKeyPolicy {
            key_id,
            policy_name,
        } => {
            let policy = kms.get_key_policy(&key_id, &policy_name)?;
            print_json(&json!({ "Policy": policy, "PolicyName": policy_name }))
        }
        KmsCommand::PutKeyPolicy {
            key_id,
            policy_name,
            policy,
            bypass_policy_lockout_safety_check,
        } => Ok(kms.put_key_policy(
            &key_id,
            &policy_name,
            &text_arg(&policy, "--policy")?,
            bypass_policy_lockout_safety_check,
        )?),
        KmsCommand::TagResource { key_id, tags } => {
            Ok(kms.tag_resource(&key_id, &tags_arg(&tags)?)?)
        }
        KmsCommand::UntagResource { key_id, tag_keys } => {
            Ok(kms.untag_resource(&key_id, &tag_keys)?)
        }
        KmsCommand::ListResourceTags(KeyIdArg { key_id }) => print_json(&json!({
            "Tags": to_json(&kms.list_resource_tags(&key_id)?)?,
            "Truncated": false,
        })),
        KmsCommand::ListKeyPolicies(KeyIdArg { key_id }) => print_json(&json!({
            "PolicyNames": kms.list_key_policies(&key_id)?,
            "Truncated": false,
        })),
        KmsCommand::GenerateRandom(GenerateRandomArgs { number_of_bytes }) => {
            print_with_plaintext(&[], &kms.generate_random(number_of_bytes)?, &[])
        }
        KmsCommand::GenerateDataKey(args) => {
            let generated = kms.generate_data_key(&data_key_request(args)?)?;
            print_with_plaintext(
                &[("CiphertextBlob", BASE64.encode(&generated.ciphertext_blob))],
                &generated.plaintext,
                &[("KeyId", generated.key_id)],
            )
        }
        KmsCommand::GenerateDataKeyWithoutPlaintext(args) => {
            let wrapped = kms.generate_data_key_without_plaintext(&data_key_request(args)?)?;
            print_json(&json!({
                "CiphertextBlob": BASE64.encode(&wrapped.ciphertext_blob),
                "KeyId": wrapped.key_id,
            }))
        }
        KmsCommand::Encrypt {
            key_id,
            plaintext,
            encryption_context,
        } => {
            let plaintext = blob_arg(&plaintext, "--plaintext")?;
            let context = context_arg(encryption_context.as_deref(), "--encryption-context")?;
            let wrapped = kms.encrypt(&key_id, &plaintext, &context)?;
            print_json(&json!({
                "CiphertextBlob": BASE64.encode(&wrapped.ciphertext_blob),
                "KeyId": wrapped.key_id,
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }))
        }
        KmsCommand::Decrypt {
            ciphertext_blob,
            encryption_context,
            key_id,
        } => {
            let request = DecryptRequest {
                ciphertext_blob: blob_arg(&ciphertext_blob, "--ciphertext-blob")?.to_vec(),
                encryption_context: context_arg(
                    encryption_context.as_deref(),
                    "--encryption-context",
                )?,
                key_id,
            };
            let decrypted = kms.decrypt(&request)?;
            print_with_plaintext(
                &[("KeyId", decrypted.key_id)],
                &decrypted.plaintext,
                &[("EncryptionAlgorithm", "SYMMETRIC_DEFAULT".to_owned())],
            )
        }
        KmsCommand::ReEncrypt {
            ciphertext_blob,
            source_encryption_context,
            source_key_id,
            destination_key_id,
            destination_encryption_context,
        } => {
            let request = ReEncryptRequest {
                ciphertext_blob: blob_arg(&ciphertext_blob, "--ciphertext-blob")?.to_vec(),
                source_encryption_context: context_arg(
                    source_encryption_context.as_deref(),
                    "--source-encryption-context",
                )?,
                source_key_id,
                destination_key_id,
                destination_encryption_context: context_arg(
                    destination_encryption_context.as_deref(),
                    "--destination-encryption-context",
                )?,
            };
            let reencrypted = kms.re_encrypt(&request)?;
            print_json(&json!({
                "CiphertextBlob": BASE64.encode(&reencrypted.ciphertext_blob),
                "SourceKeyId": reencrypted.source_key_id,
                "KeyId": reencrypted.key_id,
                "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            }))
        }
    }
}

fn create_key(kms: &dyn KeyService, args: CreateKeyArgs) -> anyhow::Result<()> {
    let request = CreateKeyRequest {
        description: args.description,
        policy: args
            .policy
            .as_deref()
            .map(|p| text_arg(p, "--policy"))
            .transpose()?,
        bypass_policy_lockout_safety_check: args.bypass_policy_lockout_safety_check,
        key_spec: args.key_spec,
        key_usage: args.key_usage,
    };
    let metadata = kms.create_key(&request)?;
    if let Some(alias) = &args.alias {
        kms.create_alias(alias, &metadata.key_id).with_context(|| {
            format!(
                "key {} was created, but alias {alias} was not; retry with `atrest kms create-alias`",
                metadata.arn
            )
        })?;
    }
    print_json(&json!({ "KeyMetadata": to_json(&metadata)? }))
}

/// `--tags` as the aws CLI takes it: shorthand `TagKey=K,TagValue=V` items, or one
/// JSON list of `{"TagKey", "TagValue"}` objects. The key service checks the lengths
/// and the reserved `aws:` prefix.
fn tags_arg(items: &[String]) -> anyhow::Result<Vec<Tag>> {
    if let [only] = items {
        if only.trim_start().starts_with('[') {
            return serde_json::from_str(only).with_context(|| {
                "--tags: not a JSON list of {\"TagKey\": ..., \"TagValue\": ...} objects"
            });
        }
    }
    items
        .iter()
        .map(|item| {
            let (mut key, mut value) = (None, None);
            for field in item.split(',') {
                match field.split_once('=') {
                    Some(("TagKey", k)) if key.is_none() => key = Some(k),
                    Some(("TagValue", v)) if value.is_none() => value = Some(v),
                    _ => bail!("--tags: expected TagKey=KEY,TagValue=VALUE, got {item:?}"),
                }
            }
            match (key, value) {
                (Some(key), Some(value)) => Ok(Tag {
                    tag_key: key.to_owned(),
                    tag_value: value.to_owned(),
                }),
                _ => bail!("--tags: {item:?} needs both TagKey= and TagValue="),
            }
        })
        .collect()
}

fn data_key_request(args: DataKeyArgs) -> anyhow::Result<GenerateDataKeyRequest> {
    let spec = match (args.key_spec.as_deref(), args.number_of_bytes) {
        (_, Some(n)) => DataKeySpec::Bytes(n),
        (Some(spec), None) => DataKeySpec::from_key_spec(spec)?,
        (None, None) => DataKeySpec::Aes256,
    };
    Ok(GenerateDataKeyRequest {
        key_id: args.key_id,
        spec,
        encryption_context: context_arg(
            args.encryption_context.as_deref(),
            "--encryption-context",
        )?,
    })
}

/// Follows `next_marker` until the last page, like the aws CLI's auto-pagination.
fn all_pages<T>(
    mut page: impl FnMut(&ListRequest) -> Result<(Vec<T>, Option<String>), crypto_core::kms::KmsError>,
) -> anyhow::Result<Vec<T>> {
    let mut items = Vec::new();
    let mut request = ListRequest::default();
    loop {
        let (mut batch, next) = page(&request)?;
        items.append(&mut batch);
        match next {
            Some(marker) => request.marker = Some(marker),
            None => return Ok(items),
        }
    }
}

/// A blob argument: `fileb://PATH` (raw bytes) or base64 text, as the aws CLI v2.
/// Held in a zeroizing buffer because it may be a plaintext.
fn blob_arg(arg: &str, flag: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if let Some(path) = arg.strip_prefix("fileb://") {
        let file =
            std::fs::File::open(path).with_context(|| format!("{flag}: cannot open {path}"))?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(8192));
        file.take(MAX_BLOB_FILE + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("{flag}: cannot read {path}"))?;
        if bytes.len() as u64 > MAX_BLOB_FILE {
            bail!("{flag}: {path} is larger than {MAX_BLOB_FILE} bytes");
        }
        return Ok(bytes);
    }
    if arg.starts_with("file://") {
        bail!("{flag} takes binary input: use fileb://PATH (or base64 text), not file://");
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(arg.len()));
    BASE64
        .decode_vec(arg.trim(), &mut bytes)
        .map_err(|err| anyhow::anyhow!("{flag}: not fileb://PATH and not valid base64 ({err})"))?;
    Ok(bytes)
}

/// A text argument: `file://PATH` (the file's text) or the text itself.
fn text_arg(arg: &str, flag: &str) -> anyhow::Result<String> {
    match arg.strip_prefix("file://") {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {path}"))
        }
        None => Ok(arg.to_owned()),
    }
}

/// `--encryption-context`: `k=v,k=v`, a JSON object of strings, or `file://PATH`
/// holding either.
fn context_arg(arg: Option<&str>, flag: &str) -> anyhow::Result<EncryptionContext> {
    let Some(arg) = arg else {
        return Ok(EncryptionContext::new());
    };
    let text = text_arg(arg, flag)?;
    parse_context(text.trim()).with_context(|| format!("{flag}: cannot parse '{}'", text.trim()))
}

fn parse_context(text: &str) -> anyhow::Result<EncryptionContext> {
    if text.starts_with('{') {
        return serde_json::from_str(text)
            .context("a JSON encryption context is an object of string values");
    }
    let mut context = EncryptionContext::new();
    for pair in text.split(',').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("'{pair}' is not key=value");
        };
        if key.is_empty() {
            bail!("'{pair}' has an empty key");
        }
        if context.insert(key.to_owned(), value.to_owned()).is_some() {
            bail!("key '{key}' appears twice");
        }
    }
    Ok(context)
}

/// Serialises an AWS-shaped answer, turning the epoch-second dates of the JSON
/// protocol into ISO 8601 as the aws CLI prints them.
fn to_json(value: &impl Serialize) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(value)?;
    iso_dates(&mut value);
    Ok(value)
}

fn iso_dates(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                let as_date = field
                    .as_i64()
                    .filter(|_| name.ends_with("Date"))
                    .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
                    .and_then(|at| {
                        at.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    });
                match as_date {
                    Some(text) => *field = Value::String(text),
                    None => iso_dates(field),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(iso_dates),
        _ => {}
    }
}

/// Prints JSON to stdout, pretty, like the aws CLI.
pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Prints a JSON object with a `Plaintext` field between `before` and `after`. The
/// base64 of the secret and the whole output live only in zeroizing buffers sized up
/// front (no reallocation leaves a copy behind).
fn print_with_plaintext(
    before: &[(&str, String)],
    plaintext: &SecretBytes,
    after: &[(&str, String)],
) -> anyhow::Result<()> {
    let encoded_len = plaintext.len().div_ceil(3) * 4;
    let mut encoded = Zeroizing::new(String::with_capacity(encoded_len));
    BASE64.encode_string(plaintext.expose(), &mut encoded);
    let mut fields: Vec<(&str, &str)> = before.iter().map(|(k, v)| (*k, v.as_str())).collect();
    fields.push(("Plaintext", encoded.as_str()));
    fields.extend(after.iter().map(|(k, v)| (*k, v.as_str())));
    let capacity = fields
        .iter()
        .map(|(k, v)| k.len() + v.len() + 16)
        .sum::<usize>()
        + 4;
    let mut out = Zeroizing::new(Vec::with_capacity(capacity));
    out.extend_from_slice(b"{\n");
    for (i, (name, value)) in fields.iter().enumerate() {
        // Field names are ours and values are base64 or ARNs: nothing to escape.
        out.extend_from_slice(b"  \"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\": \"");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(if i + 1 < fields.len() {
            b"\",\n"
        } else {
            b"\"\n"
        });
    }
    out.extend_from_slice(b"}\n");
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_parse_from_pairs_and_json() {
        let expected: EncryptionContext = [("a", "1"), ("b", "x=y")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(parse_context("a=1,b=x=y").expect("pairs"), expected);
        assert_eq!(
            parse_context(r#"{"a":"1","b":"x=y"}"#).expect("json"),
            expected
        );
        assert_eq!(parse_context("").expect("empty"), EncryptionContext::new());
        assert!(parse_context("a=1,a=2").is_err());
        assert!(parse_context("novalue").is_err());
        assert!(parse_context("=v").is_err());
        assert!(parse_context(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn blobs_come_from_files_or_base64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, [0u8, 1, 2, 255]).expect("write");
        let from_file = blob_arg(&format!("fileb://{}", path.display()), "--x").expect("file");
        assert_eq!(from_file.as_slice(), [0, 1, 2, 255]);
        assert_eq!(
            blob_arg("AAEC/w==", "--x").expect("base64").as_slice(),
            [0, 1, 2, 255]
        );
        assert!(blob_arg("not base64!", "--x").is_err());
        assert!(blob_arg("file:///etc/hostname", "--x").is_err());
        assert!(blob_arg("fileb:///nonexistent/atrest", "--x").is_err());
    }

    #[test]
    fn epoch_dates_become_iso_8601() {
        let mut value = json!({"KeyMetadata": {"CreationDate": 0, "KeyId": "k", "Rotations": [{"RotationDate": 86400}]}});
        iso_dates(&mut value);
        assert_eq!(value["KeyMetadata"]["CreationDate"], "1970-01-01T00:00:00Z");
        assert_eq!(
            value["KeyMetadata"]["Rotations"][0]["RotationDate"],
            "1970-01-02T00:00:00Z"
        );
        assert_eq!(value["KeyMetadata"]["KeyId"], "k");
    }
}
