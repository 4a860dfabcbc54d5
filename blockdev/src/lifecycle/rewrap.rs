//! `volume rewrap`: the same data key, wrapped again (ReEncrypt) under the CMK's
//! current material or under another CMK. The data area is not touched.

use std::path::Path;

use crypto_core::kms::{KeyService, ReEncryptRequest};

use crate::format::{self, Encryption, VolumeHeader, WrappedDataKey};
use crate::volume;
use crate::Error;

/// Re-wraps the data key of the encrypted volume at `path` under `key_id` (default:
/// the CMK that wraps it now, whose newest material is then used) with one audited
/// ReEncrypt, keeping the encryption context, and updates both header copies.
///
/// Crash safety comes from the header format: the new header has the next generation
/// and is written to the backup copy first (fdatasync), then to the primary
/// (fdatasync). Interrupted before the backup is durable, both copies hold the old
/// wrapped key; between the two syncs the backup is newer and is chosen; afterwards
/// both hold the new one. Either wrapped key unwraps to the same data key, so the data
/// stays readable at every point. A server that has the volume open notices the new
/// header within its key-check interval and from then on follows the new CMK.
///
/// Concurrent header updates are serialised by the header-update lock (taken before
/// the header is read): a second `rewrap` waits briefly, then fails with
/// [`Error::HeaderBusy`], so two headers of one generation are never written.
pub fn rewrap(
    path: &Path,
    kms: &dyn KeyService,
    key_id: Option<&str>,
) -> Result<VolumeHeader, Error> {
    let file = volume::open_volume_file(path, true)?;
    volume::lock_header(&file, path)?;
    let located = format::read_header(&file, path)?;
    let header = located.header;
    let Encryption::Aes256XtsPlain64(wrapped) = header.encryption() else {
        return Err(Error::InvalidArgument {
            what: format!(
                "{} is unencrypted: it has no data key to re-wrap (use `volume copy --key-id`)",
                path.display()
            ),
        });
    };
    if header.is_read_only() {
        return Err(Error::ReadOnly);
    }
    let context = header.encryption_context();
    let rewrapped = kms.re_encrypt(&ReEncryptRequest {
        ciphertext_blob: wrapped.blob.clone(),
        source_encryption_context: context.clone(),
        source_key_id: Some(wrapped.key_arn.clone()),
        destination_key_id: key_id.unwrap_or(&wrapped.key_arn).to_owned(),
        destination_encryption_context: context,
    })?;
    let updated = header.with_encryption(Encryption::Aes256XtsPlain64(WrappedDataKey {
        key_arn: rewrapped.key_id,
        blob: rewrapped.ciphertext_blob,
    }))?;
    format::write_header(&file, path, &updated)?;
    Ok(updated)
}
