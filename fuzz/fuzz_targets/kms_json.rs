//! The KMS JSON 1.1 API behind the gateway, on any `X-Amz-Target` and body: every
//! answer is JSON or a typed AWS error, never a panic, and an Encrypt that succeeds
//! decrypts back to its plaintext under the same encryption context.
//! Input: one byte selecting the operation (or 255 = the target as text up to the
//! first newline), then the body.
#![no_main]

use std::sync::Mutex;

use atrest_fuzz::{scratch_dir, Input};
use crypto_core::kms::{CreateKeyRequest, KeyService, LocalKms, LocalKmsConfig, Operation};
use gateway::kms_api;
use libfuzzer_sys::fuzz_target;

/// Inputs served by one home before it is replaced, so that keys and trail records
/// made by earlier inputs do not slow every later one down.
const INPUTS_PER_HOME: u32 = 512;

struct Home {
    _dir: tempfile::TempDir,
    kms: LocalKms,
    served: u32,
}

fn fresh_home() -> Home {
    let dir = scratch_dir("kms-json");
    let kms = LocalKms::open(dir.path(), LocalKmsConfig::new()).expect("open a key service");
    let key = kms
        .create_key(&CreateKeyRequest::default())
        .expect("create a key");
    kms.create_alias("alias/fuzz", &key.key_id).expect("alias");
    Home {
        _dir: dir,
        kms,
        served: 0,
    }
}

static HOME: Mutex<Option<Home>> = Mutex::new(None);

fn decoded(field: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    let text = field.as_str().expect("a base64 string");
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 the API accepted or produced")
}

fuzz_target!(init: atrest_fuzz::report_panics_in_fork_mode(), |data: &[u8]| {
    let mut input = Input::new(data);
    let selector = input.u8();
    let rest = input.rest();
    let (op, body) = if selector == 255 {
        let (target, body) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        };
        match kms_api::parse_target(&String::from_utf8_lossy(target)) {
            Ok(op) => (op, body),
            Err(err) => {
                assert_eq!(err.aws_name(), "UnknownOperationException");
                return;
            }
        }
    } else {
        let ops = Operation::ALL;
        (ops[usize::from(selector) % ops.len()], rest)
    };

    let mut guard = HOME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.as_ref().is_none_or(|h| h.served >= INPUTS_PER_HOME) {
        *guard = Some(fresh_home());
    }
    let home = guard.as_mut().expect("a home");
    home.served += 1;

    match kms_api::handle(&home.kms, op, body) {
        Ok(answer) => {
            let answer: serde_json::Value =
                serde_json::from_slice(&answer).expect("every answer is JSON");
            if op == Operation::Encrypt {
                let request: serde_json::Value =
                    serde_json::from_slice(body).expect("an accepted request was JSON");
                let mut decrypt = serde_json::json!({"CiphertextBlob": answer["CiphertextBlob"]});
                if let Some(context) = request.get("EncryptionContext") {
                    decrypt["EncryptionContext"] = context.clone();
                }
                let decrypt = serde_json::to_vec(&decrypt).expect("serialize");
                let plain = kms_api::handle(&home.kms, Operation::Decrypt, &decrypt)
                    .expect("what Encrypt made, Decrypt opens");
                let plain: serde_json::Value = serde_json::from_slice(&plain).expect("JSON");
                assert_eq!(decoded(&plain["Plaintext"]), decoded(&request["Plaintext"]));
            }
        }
        Err(err) => {
            let _ = (err.aws_name(), err.to_string());
        }
    }
});
