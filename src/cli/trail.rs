//! `atrest trail ...`: look up and validate the audit trail of the key service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use crypto_core::kms::LocalKmsConfig;
use crypto_core::trail::{digest, Anchor, FoundRecord, LookupFilter, Trail, LOG_FILE};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum TrailCommand {
    /// Print the recorded key-service calls that match, most recent first, in the
    /// shape of `aws cloudtrail lookup-events`.
    Lookup {
        /// Only this operation, e.g. `Decrypt`.
        #[arg(long, value_name = "NAME")]
        event_name: Option<String>,
        /// Only calls on this key: key id, key ARN, alias name or alias ARN.
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// Only calls by this caller: principal ARN or user name.
        #[arg(long, value_name = "ARN")]
        principal: Option<String>,
        /// Calls at or after this time (RFC 3339, YYYY-MM-DD, or Unix seconds).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        start_time: Option<OffsetDateTime>,
        /// Calls at or before this time.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        end_time: Option<OffsetDateTime>,
        /// At most this many events (the most recent); when more match, the output
        /// has a `NextToken` for the next page.
        #[arg(long, value_name = "N")]
        max_results: Option<usize>,
        /// The `NextToken` of the previous page: continue with older events.
        #[arg(long, value_name = "TOKEN", value_parser = parse_next_token)]
        next_token: Option<u64>,
    },
    /// Check the hash chain: fails, naming the first bad record, if any record was
    /// edited, deleted, reordered or inserted.
    Validate {
        /// `LastSequence:LastHash` from an earlier validate, kept off this machine:
        /// also fails if the trail no longer holds that exact record (a rewrite with
        /// recomputed hashes).
        #[arg(long, value_name = "SEQUENCE:HASH")]
        anchor: Option<Anchor>,
        /// The digest signing key (as `trail digest` printed it, kept off this
        /// machine): the signed digests must all be this key's.
        #[arg(long, value_name = "HEX")]
        digest_public_key: Option<String>,
    },
    /// Write a signed digest of the records appended since the previous digest
    /// (`atrest kms serve` writes one every --digest-interval).
    Digest,
}

/// `NextToken`s are `before-<sequence>`: the page continues with records older than
/// that sequence number, so records appended meanwhile do not shift the pages.
const NEXT_TOKEN_PREFIX: &str = "before-";

fn parse_next_token(text: &str) -> Result<u64, String> {
    text.strip_prefix(NEXT_TOKEN_PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("'{text}' is not a NextToken printed by `atrest trail lookup`"))
}

pub fn run(cmd: TrailCommand, globals: &Globals) -> anyhow::Result<()> {
    let trail = open(globals)?;
    let dir = globals.home()?.join("trail");
    match cmd {
        TrailCommand::Lookup {
            event_name,
            key_id,
            principal,
            start_time,
            end_time,
            max_results,
            next_token,
        } => {
            let filter = LookupFilter {
                event_name,
                key_id,
                principal,
                start_time,
                end_time,
                max_results,
                before_sequence: next_token,
            };
            let page = trail.lookup_page(&filter)?;
            let events: Vec<Value> = page.records.iter().map(lookup_event).collect();
            let mut out = json!({ "Events": events });
            if let Some(before) = page.next_before {
                out["NextToken"] = json!(format!("{NEXT_TOKEN_PREFIX}{before}"));
            }
            super::kms::print_json(&out)
        }
        TrailCommand::Validate {
            anchor,
            digest_public_key,
        } => {
            let report = trail
                .validate_against(anchor.as_ref())
                .context("trail validation failed")?;
            let digests = digest::validate_digests(&dir, digest_public_key.as_deref())
                .context("trail validation against the signed digests failed")?;
            let last_digest = digests
                .last_digest_time
                .map(|t| t.format(&Rfc3339))
                .transpose()?;
            super::kms::print_json(&json!({
                "Valid": true,
                "TrailFile": report.path,
                "Records": report.records,
                "LastSequence": report.last_sequence,
                "LastHash": report.last_hash,
                "Notes": report.notes,
                "Digests": digests.digests,
                "DigestedRecords": digests.records,
                "DigestPublicKey": digests.public_key,
                "LastDigestTime": last_digest,
            }))
        }
        TrailCommand::Digest => {
            let signer = digest::DigestSigner::open_or_create(&dir)?;
            let written = digest::write_digest(&dir, &signer)?;
            super::kms::print_json(&json!({
                "DigestFile": written.path,
                "DigestSequence": written.digest_sequence,
                "Records": written.records,
                "PublicKey": signer.public_key_hex(),
            }))
        }
    }
}

/// The trail the key service of this home writes (`<home>/trail/`). Refuses to
/// create one: looking at a home that never had a key-service call is a mistake
/// (a wrong `--home`), not an empty history.
fn open(globals: &Globals) -> anyhow::Result<Trail> {
    let dir: PathBuf = globals.home()?.join("trail");
    if !dir.join(LOG_FILE).exists() {
        anyhow::bail!(
            "no audit trail in {}: no key-service call was made with this home",
            dir.display()
        );
    }
    let config = LocalKmsConfig::from_env()?;
    Ok(Trail::open(&dir, &config.region, &config.account)?)
}

/// One record in the shape of CloudTrail's LookupEvents, with the record's line
/// exactly as stored (so it can be re-hashed) in `CloudTrailEvent`.
fn lookup_event(found: &FoundRecord) -> Value {
    let record = &found.event;
    let identity = &record["userIdentity"];
    let username = identity["userName"]
        .as_str()
        .or_else(|| identity["arn"].as_str());
    let resources: Vec<Value> = record["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| json!({"ResourceType": r["type"], "ResourceName": r["ARN"]}))
        .collect();
    json!({
        "EventId": record["eventID"],
        "EventName": record["eventName"],
        "ReadOnly": record["readOnly"].as_bool().map(|b| b.to_string()),
        "EventTime": record["eventTime"],
        "EventSource": record["eventSource"],
        "Username": username,
        "Resources": resources,
        "CloudTrailEvent": found.line,
    })
}

/// RFC 3339, a bare date (midnight UTC), or Unix seconds.
fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = Date::parse(text, &date_format) {
        return Ok(date.midnight().assume_utc());
    }
    text.parse::<i64>()
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or_else(|| {
            format!("'{text}' is not a time: use RFC 3339 (2026-11-28T10:00:00Z), YYYY-MM-DD or Unix seconds")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        let noon = time::macros::datetime!(2026-11-28 12:00 UTC);
        assert_eq!(parse_time("2026-11-28T12:00:00Z"), Ok(noon));
        assert_eq!(parse_time("2026-11-28T13:00:00+01:00"), Ok(noon));
        assert_eq!(
            parse_time("2026-11-28"),
            Ok(time::macros::datetime!(2026-11-28 0:00 UTC))
        );
        assert_eq!(parse_time(&noon.unix_timestamp().to_string()), Ok(noon));
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn lookup_events_carry_the_record_as_a_string() {
        let record = json!({
            "eventID": "e", "eventName": "Decrypt", "readOnly": true,
            "eventTime": "2026-11-28T12:00:00Z", "eventSource": "kms.amazonaws.com",
            "userIdentity": {"arn": "arn:aws:iam::000000000000:root"},
            "resources": [{"ARN": "arn:k", "type": "AWS::KMS::Key"}],
        });
        let event = lookup_event(&FoundRecord {
            line: record.to_string(),
            event: record.clone(),
        });
        assert_eq!(event["Username"], "arn:aws:iam::000000000000:root");
        assert_eq!(event["ReadOnly"], "true");
        assert_eq!(event["Resources"][0]["ResourceName"], "arn:k");
        let inner: Value =
            serde_json::from_str(event["CloudTrailEvent"].as_str().expect("string")).expect("json");
        assert_eq!(inner, record);
    }
}
