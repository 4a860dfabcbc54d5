//! The audit-trail record of an NBD client refused an encrypted export for want of
//! the right certificate: an `AttachVolume` call that failed with `AccessDenied`,
//! its principal the client certificate's name (fields in docs/FORMAT.md, "NBD attach
//! refusals").
#![forbid(unsafe_code)]

use std::sync::Arc;

use crypto_core::trail::{ApiCall, Trail};
use tracing::error;

use crate::nbd::{Refusal, RefusalAudit};

/// What a server tells of its refusals ([`crate::nbd::Server::with_refusal_audit`]):
/// one record in `trail` per client refused an encrypted export. Refusals of
/// unencrypted exports concern no key and are only logged by the server. A record
/// that cannot be appended is logged as an error; the refusal stands.
pub fn recorder(trail: Trail) -> RefusalAudit {
    Arc::new(move |refusal: &Refusal<'_>| {
        let Some(call) = attach_refused(refusal) else {
            return;
        };
        if let Err(err) = trail.append(&call) {
            error!(
                "the audit trail could not record the refusal of export {:?}: {err}",
                refusal.export
            );
        }
    })
}

/// The record of `refusal`, `None` when its export is not encrypted.
fn attach_refused(refusal: &Refusal<'_>) -> Option<ApiCall> {
    let key_arn = refusal.key_arn?;
    let principal = refusal
        .client
        .map_or_else(|| "anonymous".to_owned(), |c| c.to_string());
    let certificate = refusal.client.map(|c| {
        serde_json::json!({
            "commonName": c.common_name,
            "subjectAlternativeNames": c.alt_names,
        })
    });
    Some(ApiCall {
        event_time: std::time::SystemTime::now().into(),
        event_name: "AttachVolume".into(),
        principal,
        request_parameters: serde_json::json!({
            "exportName": refusal.export,
            "keyId": key_arn,
            "sourceAddress": refusal.peer,
            "clientCertificate": certificate,
        }),
        response_elements: None,
        error_code: Some("AccessDenied".into()),
        error_message: Some(refusal.reason.to_owned()),
        read_only: true,
        resources: vec![key_arn.to_owned()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::ClientIdentity;
    use crypto_core::trail::LOG_FILE;

    const KEY: &str = "arn:aws:kms:local:000000000000:key/aaaaaaaa-0000-4000-8000-000000000001";

    /// The records of the trail in `dir`, parsed.
    fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(LOG_FILE))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON record"))
            .collect()
    }

    #[test]
    fn a_refused_certificate_is_an_access_denied_attach_in_the_trail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trail = Trail::open(dir.path(), "local", "000000000000").expect("trail");
        let client = ClientIdentity {
            common_name: Some("client2".into()),
            alt_names: vec!["client2.example".into()],
        };
        let reason = "the client certificate (CN=client2) is not allowed to use this export";
        recorder(trail)(&Refusal {
            export: "disk",
            client: Some(&client),
            peer: "127.0.0.1:40000",
            key_arn: Some(KEY),
            reason,
        });
        let records = records(dir.path());
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record["eventName"], "AttachVolume");
        assert_eq!(record["userIdentity"]["arn"], "CN=client2");
        assert_eq!(record["errorCode"], "AccessDenied");
        assert_eq!(record["errorMessage"], reason);
        assert_eq!(record["readOnly"], true);
        assert_eq!(
            record["requestParameters"],
            serde_json::json!({
                "exportName": "disk",
                "keyId": KEY,
                "sourceAddress": "127.0.0.1:40000",
                "clientCertificate": {
                    "commonName": "client2",
                    "subjectAlternativeNames": ["client2.example"],
                },
            })
        );
        assert_eq!(record["resources"][0]["ARN"], KEY);
    }

    #[test]
    fn a_client_without_a_certificate_is_anonymous() {
        let call = attach_refused(&Refusal {
            export: "disk",
            client: None,
            peer: "[::1]:40000",
            key_arn: Some(KEY),
            reason: "a client certificate is required",
        })
        .expect("a record");
        assert_eq!(call.principal, "anonymous");
        assert_eq!(
            call.request_parameters["clientCertificate"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn an_unencrypted_export_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trail = Trail::open(dir.path(), "local", "000000000000").expect("trail");
        recorder(trail)(&Refusal {
            export: "plain",
            client: None,
            peer: "127.0.0.1:40000",
            key_arn: None,
            reason: "a client certificate is required",
        });
        assert!(records(dir.path()).is_empty());
    }
}
