//! What a browser-upload client controls before the signature is checked or anything
//! is stored: the `multipart/form-data` body of `POST /BUCKET` (preamble, part
//! headers, field values, the 20 KiB limit before the file, the file up to its
//! boundary) and the policy document in its `policy` field (base64 JSON, conditions,
//! content-length-range). Nothing panics; a file that passes is within the policy's
//! content-length-range.
//!
//! Input: the request's Content-Type, a newline, then the body. Seeded with a form as
//! boto3's generate_presigned_post and requests make it.
#![no_main]

use gateway::s3::post::read_form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let Some(split) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = &data[split + 1..];
    if let Ok(file) = read_form(content_type, body) {
        assert!(file.len() <= body.len(), "the file is part of the body");
    }
});
