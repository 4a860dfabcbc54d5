//! Every kind of tampering with an object file is detected: header edits (with and
//! without a fixed checksum), flipped ciphertext and tag bytes, truncation at a
//! segment boundary, swapped segments, segments spliced from another object, files
//! moved to another key.

mod support;

use std::fs;

use objstore::format::{ObjectHeader, TAG_LEN};
use support::{pattern, Lab, SEG};

const SEALED: usize = SEG + TAG_LEN;

type HeaderEdit = dyn Fn(&mut ObjectHeader);

fn header_len(file: &[u8]) -> usize {
    ObjectHeader::peek_len(file).unwrap() as usize
}

fn assert_rejected(lab: &Lab, key: &str, what: &str) {
    match lab.get(key) {
        Ok(_) => panic!("{what}: tampered object was served"),
        Err(e) => assert!(
            matches!(
                e.s3_code().as_ref(),
                "InternalError" | "KMS.InvalidCiphertextException"
            ),
            "{what}: {e}"
        ),
    }
}

/// Puts a 3.5-segment object and returns (lab, original file bytes).
fn setup() -> (Lab, Vec<u8>) {
    let lab = Lab::new();
    lab.put("k", &pattern(3 * SEG + SEG / 2, 1));
    let bytes = fs::read(lab.store.object_path("bkt", "k")).unwrap();
    (lab, bytes)
}

fn write(lab: &Lab, key: &str, bytes: &[u8]) {
    fs::write(lab.store.object_path("bkt", key), bytes).unwrap();
}

/// Re-encodes a header after `edit`, with a correct checksum, keeping the body.
fn reheader(bytes: &[u8], edit: impl FnOnce(&mut ObjectHeader)) -> Vec<u8> {
    let hl = header_len(bytes);
    let mut header = ObjectHeader::decode(&bytes[..hl]).unwrap();
    edit(&mut header);
    let mut out = header.encode().unwrap();
    out.extend_from_slice(&bytes[hl..]);
    out
}

#[test]
fn flipped_bytes_anywhere_are_detected() {
    let (lab, bytes) = setup();
    let hl = header_len(&bytes);
    let spots = [
        ("magic", 0),
        ("header field", 30),
        ("header checksum", hl - 1),
        ("first ciphertext byte", hl),
        ("inner segment ciphertext", hl + SEALED + 100),
        ("inner segment tag", hl + 2 * SEALED - 1),
        ("final segment ciphertext", bytes.len() - TAG_LEN - 1),
        ("final segment tag", bytes.len() - 1),
    ];
    for (what, at) in spots {
        let mut b = bytes.clone();
        b[at] ^= 0x20;
        write(&lab, "k", &b);
        assert_rejected(&lab, "k", what);
    }
    write(&lab, "k", &bytes);
    lab.get("k").unwrap();
}

#[test]
fn header_edits_with_a_fixed_checksum_are_detected() {
    let (lab, bytes) = setup();
    let edits: Vec<(&str, Box<HeaderEdit>)> = vec![
        ("size", Box::new(|h| h.summary.plaintext_len -= 1)),
        ("etag", Box::new(|h| h.summary.etag[0] ^= 1)),
        (
            "last modified",
            Box::new(|h| h.summary.last_modified_ms += 1),
        ),
        (
            "content type",
            Box::new(|h| h.bound.content_type = "text/html".into()),
        ),
        ("nonce prefix", Box::new(|h| h.bound.nonce_prefix[0] ^= 1)),
        (
            "user metadata",
            Box::new(|h| {
                h.bound.user_metadata.insert("x".into(), "y".into());
            }),
        ),
        (
            "encryption context",
            Box::new(|h| {
                h.bound
                    .encryption_context
                    .insert("extra".into(), "pair".into());
            }),
        ),
        ("wrapped key", Box::new(|h| h.bound.wrapped_key[40] ^= 1)),
    ];
    for (what, edit) in edits {
        let b = reheader(&bytes, edit);
        write(&lab, "k", &b);
        assert_rejected(&lab, "k", what);
    }
}

#[test]
fn truncation_at_a_segment_boundary_is_detected() {
    let (lab, bytes) = setup();
    let hl = header_len(&bytes);
    // Cut the final segment off.
    let cut = &bytes[..hl + 3 * SEALED];
    write(&lab, "k", cut);
    assert_rejected(&lab, "k", "truncated file");
    assert_eq!(
        lab.store.head_object("bkt", "k").unwrap_err().s3_code(),
        "InternalError"
    );
    // ... and make the header agree: the last remaining segment was not sealed as final.
    let consistent = reheader(cut, |h| h.summary.plaintext_len = 3 * SEG as u64);
    write(&lab, "k", &consistent);
    assert_rejected(&lab, "k", "truncated file with a matching header");
    // Appending a segment is caught the same way.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&bytes[hl..hl + SEALED]);
    write(&lab, "k", &longer);
    assert_rejected(&lab, "k", "extended file");
}

#[test]
fn swapped_segments_are_detected() {
    let (lab, bytes) = setup();
    let hl = header_len(&bytes);
    let mut b = bytes.clone();
    let (s0, s1) = (hl..hl + SEALED, hl + SEALED..hl + 2 * SEALED);
    b[s0.clone()].copy_from_slice(&bytes[s1.clone()]);
    b[s1].copy_from_slice(&bytes[s0]);
    write(&lab, "k", &b);
    assert_rejected(&lab, "k", "swapped segments");
}

#[test]
fn segments_spliced_from_another_object_are_detected() {
    let (lab, bytes) = setup();
    lab.put("other", &pattern(3 * SEG + SEG / 2, 2));
    let other = fs::read(lab.store.object_path("bkt", "other")).unwrap();
    let (hl, ho) = (header_len(&bytes), header_len(&other));
    let mut b = bytes.clone();
    b[hl + SEALED..hl + 2 * SEALED].copy_from_slice(&other[ho + SEALED..ho + 2 * SEALED]);
    write(&lab, "k", &b);
    assert_rejected(&lab, "k", "spliced segment");
    // The same object body put twice still gets different keys and nonces.
    lab.put("twin", &pattern(3 * SEG + SEG / 2, 1));
    let twin = fs::read(lab.store.object_path("bkt", "twin")).unwrap();
    assert_ne!(&twin[header_len(&twin)..], &bytes[hl..]);
}

#[test]
fn an_object_file_moved_to_another_key_is_refused() {
    let (lab, bytes) = setup();
    lab.put("victim", b"v");
    write(&lab, "victim", &bytes);
    assert_rejected(&lab, "victim", "moved file");
    // Even with the header rewritten to name the new key, the key service refuses:
    // the data key is bound to the old object's ARN.
    let renamed = reheader(&bytes, |h| {
        h.bound.key = "victim".into();
        h.bound
            .encryption_context
            .insert("aws:s3:arn".into(), "arn:aws:s3:::bkt/victim".into());
    });
    write(&lab, "victim", &renamed);
    let err = lab.get("victim").unwrap_err();
    assert_eq!(err.s3_code(), "KMS.InvalidCiphertextException");
}
