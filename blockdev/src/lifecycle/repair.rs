//! `volume repair`: the deliberate choice between two header copies that disagree.
//!
//! Opening a volume repairs a header on its own only when the choice is certain (one
//! copy damaged, or an older generation of the same volume after an interrupted
//! update). Two valid copies of different volumes, or of one generation that differ,
//! come from a stray write of a foreign header (a `dd` of another volume's first
//! 4 KiB); guessing there could overwrite the only copy of the right wrapped data key,
//! so the volume is refused until someone who knows picks a copy here.

use std::path::Path;

use crate::format::{self, CopyContent, HeaderCopy, VolumeHeader};
use crate::volume;
use crate::Error;

/// Both header copies of the volume at `path`, as they are (nothing is written).
pub fn inspect(path: &Path) -> Result<(CopyContent, CopyContent), Error> {
    let file = volume::open_volume_file(path, false)?;
    format::read_copies(&file, path)
}

/// Makes the `keep` copy of the header the only one: it is written over the other
/// copy (synced). The kept copy must be a valid header whose data area fits in the
/// file. Header updates are serialised ([`Error::HeaderBusy`] while a `volume
/// rewrap` runs); the data area is not touched, so a server that has the volume open
/// may keep running: it follows the header it finds (and fails closed if that is not
/// the volume it serves).
pub fn repair(path: &Path, keep: HeaderCopy) -> Result<VolumeHeader, Error> {
    let file = volume::open_volume_file(path, true)?;
    volume::lock_header(&file, path)?;
    let (primary, backup) = format::read_copies(&file, path)?;
    let (kept, other) = match keep {
        HeaderCopy::Primary => (primary, HeaderCopy::Backup),
        HeaderCopy::Backup => (backup, HeaderCopy::Primary),
    };
    let header = kept.map_err(|defect| Error::InvalidArgument {
        what: format!(
            "{}: the {} header copy is not valid ({defect}); it cannot be kept",
            path.display(),
            keep.name()
        ),
    })?;
    let len = volume::file_len(&file, path)?;
    if len < header.file_len() {
        return Err(Error::Corrupted {
            path: path.to_path_buf(),
            what: format!(
                "the {} header copy's data area ends at byte {}, but the file has {len} bytes",
                keep.name(),
                header.file_len()
            ),
        });
    }
    format::write_copy(&file, path, &header, other)?;
    tracing::warn!(path = %path.display(), "header repaired on request: the {} copy was \
        rewritten from the {} copy", other.name(), keep.name());
    Ok(header)
}
