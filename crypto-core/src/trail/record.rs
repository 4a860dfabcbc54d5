//! One trail record: the CloudTrail-shaped JSON line built from an [`ApiCall`], its
//! hash-chain link, and the checks that a stored line is an unaltered record.
//!
//! A record is one line of compact JSON whose last field is
//! `"atrestChain":{"sequence":N,"previousHash":"<hex>","recordHash":"<hex>"}`.
//! `recordHash` is the SHA-256 of the line itself with the 64 hex digits of
//! `recordHash` replaced by `0`s, so the hash covers every byte of the record,
//! including its sequence number and the link to the previous record.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::format_description::well_known::Iso8601;
use time::OffsetDateTime;

use super::{ApiCall, EventSource, RefusedCaller, RefusedRequest, RequestSource, TrailProblem};

/// SHA-256 digest of a record line.
pub(crate) type RecordHash = [u8; 32];

/// `previousHash` of the first record.
pub(crate) const GENESIS_HASH: RecordHash = [0; 32];

/// The record line's last bytes are this key, 64 hex digits, `"}}`.
const HASH_KEY: &[u8] = b"\"recordHash\":\"";
const HASH_HEX_LEN: usize = 64;
const LINE_END: &[u8] = b"\"}}";

/// Field names whose values would be key material or ciphertext. AWS never logs
/// them; the key service must not send them. If one slips through it is dropped
/// here rather than written to disk.
const SECRET_FIELDS: &[&str] = &[
    "plaintext",
    "ciphertextBlob",
    "ciphertextForRecipient",
    "keyMaterial",
    "encryptedKeyMaterial",
    "importToken",
];

/// The position of a record in the chain, as stored in `atrestChain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChainLink {
    pub sequence: u64,
    pub previous_hash: RecordHash,
    pub record_hash: RecordHash,
}

/// Where the trail is kept and on whose behalf; fixed for a [`super::Trail`].
#[derive(Clone, Debug)]
pub(crate) struct TrailOrigin {
    pub region: String,
    pub account: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    event_version: &'static str,
    user_identity: UserIdentity<'a>,
    event_time: String,
    event_source: &'static str,
    event_name: &'a str,
    aws_region: &'a str,
    #[serde(rename = "sourceIPAddress")]
    source_ip_address: &'a str,
    user_agent: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
    request_parameters: serde_json::Value,
    response_elements: Option<serde_json::Value>,
    #[serde(rename = "requestID")]
    request_id: String,
    #[serde(rename = "eventID")]
    event_id: String,
    read_only: bool,
    resources: Vec<Resource<'a>>,
    event_type: &'static str,
    management_event: bool,
    recipient_account_id: &'a str,
    event_category: &'static str,
    /// Must stay the last field: the line's hash is found at a fixed offset from its end.
    atrest_chain: Chain,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<&'a str>,
}

/// Who made a call, as far as the record can say.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Caller<'a> {
    /// A principal ARN (proven by a signature, or the local caller).
    Principal(&'a str),
    Unknown,
    Anonymous,
}

/// What one record says, borrowed from an [`ApiCall`] or a [`RefusedRequest`].
#[derive(Debug)]
pub(crate) struct Event<'a> {
    event_time: OffsetDateTime,
    source_service: EventSource,
    event_name: &'a str,
    caller: Caller<'a>,
    source: &'a RequestSource,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
    request_parameters: &'a serde_json::Value,
    response_elements: Option<&'a serde_json::Value>,
    read_only: bool,
    resources: &'a [String],
}

impl<'a> Event<'a> {
    pub(crate) fn of_call(call: &'a ApiCall, source: &'a RequestSource) -> Event<'a> {
        Event {
            event_time: call.event_time,
            source_service: EventSource::Kms,
            event_name: &call.event_name,
            caller: Caller::Principal(&call.principal),
            source,
            error_code: call.error_code.as_deref(),
            error_message: call.error_message.as_deref(),
            request_parameters: &call.request_parameters,
            response_elements: call.response_elements.as_ref(),
            read_only: call.read_only,
            resources: &call.resources,
        }
    }

    pub(crate) fn of_refusal(refused: &'a RefusedRequest) -> Event<'a> {
        Event {
            event_time: refused.event_time,
            source_service: refused.event_source,
            event_name: &refused.event_name,
            caller: match &refused.caller {
                RefusedCaller::Unknown => Caller::Unknown,
                RefusedCaller::Anonymous => Caller::Anonymous,
                RefusedCaller::Principal(arn) => Caller::Principal(arn),
            },
            source: &refused.source,
            error_code: Some(&refused.error_code),
            error_message: Some(&refused.error_message),
            request_parameters: &refused.request_parameters,
            response_elements: None,
            read_only: refused.read_only,
            resources: &[],
        }
    }
}

#[derive(Serialize)]
struct Resource<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    #[serde(rename = "accountId")]
    account_id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Chain {
    sequence: u64,
    previous_hash: String,
    /// Must stay the last field (see [`Record::atrest_chain`]).
    record_hash: String,
}

/// Builds the line (without its newline) that records `event` as record `sequence`,
/// chained to the record whose hash is `previous`.
pub(crate) fn encode(
    event: &Event<'_>,
    origin: &TrailOrigin,
    sequence: u64,
    previous: &RecordHash,
) -> Result<(Vec<u8>, RecordHash), serde_json::Error> {
    let access_key_id = event.source.access_key_id.as_deref();
    let identity = match event.caller {
        Caller::Principal(arn) => identity_of(arn, &origin.account, access_key_id),
        Caller::Unknown => UserIdentity {
            kind: "Unknown",
            principal_id: None,
            arn: None,
            account_id: None,
            access_key_id,
            user_name: None,
        },
        Caller::Anonymous => UserIdentity {
            kind: "AWSAccount",
            principal_id: Some(""),
            arn: None,
            account_id: Some("anonymous"),
            access_key_id: None,
            user_name: None,
        },
    };
    let resources = event
        .resources
        .iter()
        .map(|arn| Resource {
            arn,
            account_id: arn_account(arn).unwrap_or(&origin.account),
            kind: "AWS::KMS::Key",
        })
        .collect();
    let (event_source, data_event) = match event.source_service {
        EventSource::Kms => ("kms.amazonaws.com", false),
        EventSource::S3 => ("s3.amazonaws.com", true),
    };
    let record = Record {
        event_version: "1.08",
        user_identity: identity,
        event_time: format_event_time(event.event_time),
        event_source,
        event_name: event.event_name,
        aws_region: &origin.region,
        source_ip_address: &event.source.ip_address,
        user_agent: &event.source.user_agent,
        error_code: event.error_code,
        error_message: event.error_message,
        request_parameters: without_secret_fields(event.request_parameters),
        response_elements: event.response_elements.map(without_secret_fields),
        request_id: event
            .source
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        event_id: uuid::Uuid::new_v4().to_string(),
        read_only: event.read_only,
        resources,
        event_type: "AwsApiCall",
        management_event: !data_event,
        recipient_account_id: &origin.account,
        event_category: if data_event { "Data" } else { "Management" },
        atrest_chain: Chain {
            sequence,
            previous_hash: hex::encode(previous),
            record_hash: "0".repeat(HASH_HEX_LEN),
        },
    };
    let mut line = serde_json::to_vec(&record)?;
    let hash = hash_of_line(&line);
    let start = line.len() - LINE_END.len() - HASH_HEX_LEN;
    line[start..start + HASH_HEX_LEN].copy_from_slice(hex::encode(hash).as_bytes());
    Ok((line, hash))
}

/// CloudTrail's `eventTime`: UTC, whole seconds, `Z` suffix.
fn format_event_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Parses an `eventTime` (or any ISO 8601 date-time with an offset).
pub(crate) fn parse_event_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Iso8601::DEFAULT).ok()
}

/// CloudTrail's `userIdentity` for a principal ARN that signed with `access_key_id`.
fn identity_of<'a>(
    principal: &'a str,
    default_account: &'a str,
    access_key_id: Option<&'a str>,
) -> UserIdentity<'a> {
    let account = arn_account(principal).unwrap_or(default_account);
    let resource = principal.splitn(6, ':').nth(5).unwrap_or(principal);
    let (kind, principal_id, user_name) = if resource == "root" {
        ("Root", account, None)
    } else if let Some(name) = resource.strip_prefix("user/") {
        let name = name.rsplit('/').next().unwrap_or(name);
        ("IAMUser", resource, Some(name))
    } else if resource.starts_with("assumed-role/") || resource.starts_with("role/") {
        ("AssumedRole", resource, None)
    } else {
        ("Unknown", resource, None)
    };
    UserIdentity {
        kind,
        principal_id: Some(principal_id),
        arn: Some(principal),
        account_id: Some(account),
        access_key_id,
        user_name,
    }
}

/// The account field of an ARN (`arn:partition:service:region:ACCOUNT:resource`).
fn arn_account(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    if parts.next() != Some("arn") {
        return None;
    }
    parts.nth(3).filter(|account| !account.is_empty())
}

/// A copy of `value` with every object field named in [`SECRET_FIELDS`] removed, at
/// any depth.
fn without_secret_fields(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(fields) => fields
            .iter()
            .filter(|(name, _)| {
                let secret = SECRET_FIELDS.iter().any(|s| s.eq_ignore_ascii_case(name));
                if secret {
                    tracing::warn!(field = %name, "dropped a key-material field from a trail record");
                }
                !secret
            })
            .map(|(name, inner)| (name.clone(), without_secret_fields(inner)))
            .collect(),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(without_secret_fields).collect())
        }
        other => other.clone(),
    }
}

/// SHA-256 of `line` with its last 64 hex digits (the `recordHash` value) read as `0`s.
/// The caller has checked that `line` ends with the hash field.
pub(crate) fn hash_of_line(line: &[u8]) -> RecordHash {
    let hash_start = line.len() - LINE_END.len() - HASH_HEX_LEN;
    let mut hasher = Sha256::new();
    hasher.update(&line[..hash_start]);
    hasher.update([b'0'; HASH_HEX_LEN]);
    hasher.update(&line[hash_start + HASH_HEX_LEN..]);
    hasher.finalize().into()
}

/// A line that is not a well-formed, unaltered record: why, and the sequence number
/// it claims (to name it), read in the same pass.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub problem: TrailProblem,
    pub claimed_sequence: Option<u64>,
}

/// Checks that `line` is a well-formed, unaltered record and returns its link. The
/// line is parsed once ([`scan`]); the error says what is wrong, for
/// `trail validate` to print.
pub(crate) fn verify(line: &[u8]) -> Result<ChainLink, Rejected> {
    let chain = scan(line).map_err(|err| Rejected {
        problem: TrailProblem::NotJson {
            detail: err.to_string(),
        },
        claimed_sequence: None,
    })?;
    let claimed_sequence = chain.as_ref().and_then(sequence_of);
    check(line, chain.as_ref()).map_err(|problem| Rejected {
        problem,
        claimed_sequence,
    })
}

/// [`verify`] once the line is parsed: `chain` is its `atrestChain` value.
fn check(line: &[u8], chain: Option<&serde_json::Value>) -> Result<ChainLink, TrailProblem> {
    let chain = chain.ok_or(TrailProblem::NoChain)?;
    let sequence = sequence_of(chain)
        .filter(|&sequence| sequence > 0)
        .ok_or(TrailProblem::BadSequence)?;
    let previous_hash = chain
        .get("previousHash")
        .and_then(serde_json::Value::as_str)
        .and_then(parse_hash)
        .ok_or(TrailProblem::BadPreviousHash)?;
    let stored_hex = chain
        .get("recordHash")
        .and_then(serde_json::Value::as_str)
        .ok_or(TrailProblem::MissingRecordHash)?;
    let record_hash = parse_hash(stored_hex).ok_or(TrailProblem::BadRecordHash)?;
    let suffix_len = HASH_KEY.len() + HASH_HEX_LEN + LINE_END.len();
    let ends_with_hash = line.len() >= suffix_len
        && line.ends_with(LINE_END)
        && line[line.len() - suffix_len..].starts_with(HASH_KEY)
        && &line[line.len() - LINE_END.len() - HASH_HEX_LEN..line.len() - LINE_END.len()]
            == stored_hex.as_bytes();
    if !ends_with_hash {
        return Err(TrailProblem::HashNotLast);
    }
    if hash_of_line(line) != record_hash {
        return Err(TrailProblem::HashMismatch);
    }
    Ok(ChainLink {
        sequence,
        previous_hash,
        record_hash,
    })
}

/// `atrestChain.sequence`, when it is a non-negative integer.
fn sequence_of(chain: &serde_json::Value) -> Option<u64> {
    chain.get("sequence")?.as_u64()
}

/// The sequence number a line claims, if it has one; for naming a bad record.
pub(crate) fn claimed_sequence(line: &[u8]) -> Option<u64> {
    scan(line).ok()??.get("sequence")?.as_u64()
}

/// Parses `line` as JSON exactly as `serde_json::from_slice::<Value>` would accept
/// or refuse it (UTF-8 strings and keys, numbers in range, nesting depth, nothing
/// after the value), with the same error, but keeps only the top-level
/// `atrestChain` value (the last one, as `Value` keeps a repeated key). Building the
/// whole record as a `Value` (a map and a string per field) was most of the cost of
/// checking a trail.
fn scan(line: &[u8]) -> Result<Option<serde_json::Value>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let chain = Scan { top: true }.deserialize(&mut de)?;
    de.end()?;
    Ok(chain)
}

/// One JSON value checked and dropped; at the top level, a record's `atrestChain`
/// is kept.
struct Scan {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Scan {
    type Value = Option<serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan {
    type Value = Option<serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        while items.next_element_seed(Scan { top: false })?.is_some() {}
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Self::Value, A::Error> {
        let mut chain = None;
        while let Some(is_chain) = fields.next_key_seed(ChainKey)? {
            if self.top && is_chain {
                chain = Some(fields.next_value::<serde_json::Value>()?);
            } else {
                fields.next_value_seed(Scan { top: false })?;
            }
        }
        Ok(chain)
    }
}

/// An object key (checked like any string): whether it is `atrestChain`.
struct ChainKey;

impl<'de> DeserializeSeed<'de> for ChainKey {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for ChainKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == "atrestChain")
    }
}

/// Whether `line` is certainly not JSON, i.e. `serde_json::from_slice::<Value>`
/// certainly refuses it, judged without a parse. `false` says nothing: the line may
/// still be refused.
///
/// Each test is a necessary condition of a JSON text as serde_json reads it: the
/// whole text is UTF-8 (strings and keys are checked; any other non-ASCII byte is a
/// syntax error), and around optional whitespace there is one value, whose first
/// and last bytes pair up (`{`..`}`, `[`..`]`, `"`..`"`, a number's sign or digit
/// and its last digit, `t`..`e`, `f`..`e`, `n`..`l`). A fuzzed trail is mostly lines
/// that fail these (empty ones above all); refusing them here saves the parse and
/// the error it builds (with its line and column). Only the ends of the line are
/// looked at byte by byte: a test of every byte would be traced, byte by byte, by
/// the fuzzer.
pub(crate) fn cannot_be_json(line: &[u8]) -> bool {
    if std::str::from_utf8(line).is_err() {
        return true;
    }
    // serde_json's whitespace; a line holds no newline.
    let is_blank = |byte: &&u8| matches!(byte, b' ' | b'\t' | b'\r');
    let (Some(first), Some(last)) = (
        line.iter().find(|b| !is_blank(b)),
        line.iter().rev().find(|b| !is_blank(b)),
    ) else {
        return true;
    };
    let ends_without = |byte: u8| *last != byte;
    match first {
        b'{' => ends_without(b'}'),
        b'[' => ends_without(b']'),
        b'"' => ends_without(b'"'),
        b't' | b'f' => ends_without(b'e'),
        b'n' => ends_without(b'l'),
        b'-' | b'0'..=b'9' => !last.is_ascii_digit(),
        _ => true,
    }
}

/// 64 lowercase hex digits to a hash (uppercase is rejected: the line is hashed as
/// written, and `encode` writes lowercase).
pub(crate) fn parse_hash(text: &str) -> Option<RecordHash> {
    if text.len() != HASH_HEX_LEN || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A record that must verify, with its JSON.
    fn verified(line: &[u8]) -> (ChainLink, serde_json::Value) {
        let link = verify(line).expect("verifies");
        (link, serde_json::from_slice(line).expect("JSON"))
    }

    /// What `verify` said before it parsed in one pass: the whole line into a
    /// `Value`, and again for the sequence number of a rejected line.
    fn verify_as_a_value(line: &[u8]) -> Result<ChainLink, (String, Option<u64>)> {
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|err| (format!("not a JSON record ({err})"), None))?;
        let claimed = value
            .get("atrestChain")
            .and_then(|c| c.get("sequence"))
            .and_then(serde_json::Value::as_u64);
        check(line, value.get("atrestChain")).map_err(|p| (p.to_string(), claimed))
    }

    /// The one-pass parse accepts and refuses exactly what a `Value` parse does, with
    /// the same message and claimed sequence number.
    fn assert_same_verdict(line: &[u8]) {
        let one_pass = verify(line).map_err(|r| (r.problem.to_string(), r.claimed_sequence));
        assert_eq!(
            one_pass,
            verify_as_a_value(line),
            "{}",
            String::from_utf8_lossy(line)
        );
    }

    #[test]
    fn one_pass_parse_judges_lines_as_a_value_parse_does() {
        let (line, _) = encode(
            &Event::of_call(&call(), &local()),
            &origin(),
            7,
            &GENESIS_HASH,
        )
        .expect("encodes");
        let text = String::from_utf8(line.clone()).expect("UTF-8");
        let chain_at = text.find("\"atrestChain\"").expect("chain");
        let cases: Vec<Vec<u8>> = vec![
            line.clone(),
            b"".to_vec(),
            b"[1,2]".to_vec(),
            b"\"text\"".to_vec(),
            b"{\"a\":1} x".to_vec(),
            b"{\"a\":1e400}".to_vec(),
            b"{\"a\":\"\xff\"}".to_vec(),
            b"{\"\xff\":1}".to_vec(),
            b"{\"a\":\"\\ud800\"}".to_vec(),
            format!("{}0", "[".repeat(200)).into_bytes(),
            b"{\"atrestChain\":null}".to_vec(),
            b"{\"atrestChain\":{\"sequence\":-3}}".to_vec(),
            b"{\"atrestChain\":{\"sequence\":5},\"atrestChain\":{\"sequence\":6}}".to_vec(),
            b"{\"x\":{\"atrestChain\":{\"sequence\":5}}}".to_vec(),
            // A second atrestChain before the real one, and one after it.
            format!("{{\"atrestChain\":{{\"sequence\":9}},{}", &text[1..]).into_bytes(),
            format!(
                "{},\"atrestChain\":{{\"sequence\":9}}}}",
                &text[..text.len() - 1]
            )
            .into_bytes(),
            text.replacen("\"atrestChain\"", "\"atrestChain\\u0020\"", 1)
                .into_bytes(),
            text.as_bytes()[..chain_at].to_vec(),
        ];
        for case in &cases {
            assert_same_verdict(case);
        }
        for at in 0..line.len() {
            for byte in [b'"', b'{', b'}', b'0', b'\\', 0xc3, b' '] {
                let mut edited = line.clone();
                edited[at] = byte;
                assert_same_verdict(&edited);
            }
            assert_same_verdict(&line[..at]);
        }
    }

    fn origin() -> TrailOrigin {
        TrailOrigin {
            region: "local".into(),
            account: "000000000000".into(),
        }
    }

    fn local() -> RequestSource {
        RequestSource::local()
    }

    fn refusal(caller: RefusedCaller) -> RefusedRequest {
        RefusedRequest {
            event_time: time::macros::datetime!(2026-11-28 10:07:59 UTC),
            event_source: EventSource::Kms,
            event_name: "ListKeys".into(),
            caller,
            error_code: "InvalidSignatureException".into(),
            error_message: "The request signature we calculated does not match".into(),
            request_parameters: serde_json::Value::Null,
            read_only: true,
            source: RequestSource::remote(
                "::ffff:192.0.2.7".parse().expect("an address"),
                Some(b"aws-cli/2.15.0 evil\nline\x1b[31m"),
                Some("AKIAEXAMPLE"),
            ),
        }
    }

    #[test]
    fn a_refused_request_names_what_it_claimed_and_where_it_came_from() {
        let refused = refusal(RefusedCaller::Unknown);
        let (line, _) =
            encode(&Event::of_refusal(&refused), &origin(), 3, &GENESIS_HASH).expect("encodes");
        let (_, value) = verified(&line);
        assert_eq!(
            value["userIdentity"],
            json!({"type": "Unknown", "accessKeyId": "AKIAEXAMPLE"})
        );
        assert_eq!(value["sourceIPAddress"], "192.0.2.7");
        assert_eq!(
            value["userAgent"],
            "aws-cli/2.15.0 evil\u{fffd}line\u{fffd}[31m"
        );
        assert_eq!(value["errorCode"], "InvalidSignatureException");
        assert_eq!(value["eventSource"], "kms.amazonaws.com");
        assert_eq!(value["responseElements"], serde_json::Value::Null);
        assert_eq!(value["resources"], json!([]));

        let mut anonymous = refusal(RefusedCaller::Anonymous);
        anonymous.event_source = EventSource::S3;
        let (line, _) =
            encode(&Event::of_refusal(&anonymous), &origin(), 4, &GENESIS_HASH).expect("encodes");
        let (_, value) = verified(&line);
        assert_eq!(
            value["userIdentity"],
            json!({"type": "AWSAccount", "principalId": "", "accountId": "anonymous"})
        );
        assert_eq!(value["eventSource"], "s3.amazonaws.com");
        assert_eq!(value["eventCategory"], "Data");
        assert_eq!(value["managementEvent"], false);

        let proven = refusal(RefusedCaller::Principal(
            "arn:aws:iam::111111111111:user/Eve".into(),
        ));
        let (line, _) =
            encode(&Event::of_refusal(&proven), &origin(), 5, &GENESIS_HASH).expect("encodes");
        let (_, value) = verified(&line);
        assert_eq!(value["userIdentity"]["type"], "IAMUser");
        assert_eq!(value["userIdentity"]["accessKeyId"], "AKIAEXAMPLE");
        assert_eq!(value["userIdentity"]["accountId"], "111111111111");
    }

    #[test]
    fn client_chosen_texts_are_bounded() {
        let long = "A".repeat(10_000);
        let source = RequestSource::remote(
            "127.0.0.1".parse().expect("an address"),
            Some(long.as_bytes()),
            Some(&long),
        );
        assert_eq!(
            source.user_agent.chars().count(),
            super::super::MAX_USER_AGENT_CHARS
        );
        assert!(source.user_agent.ends_with("..."));
        assert_eq!(
            source.access_key_id.as_deref().map(|id| id.chars().count()),
            Some(super::super::MAX_ACCESS_KEY_ID_CHARS)
        );
        let empty = RequestSource::remote("127.0.0.1".parse().expect("an address"), None, Some(""));
        assert_eq!((empty.user_agent.as_str(), empty.access_key_id), ("", None));
    }

    #[test]
    fn an_allowed_call_from_the_network_carries_its_source() {
        let source = RequestSource::remote(
            "10.1.2.3".parse().expect("an address"),
            Some(b"Boto3/1.35.0"),
            Some("AKIAALICE"),
        );
        let (line, _) = encode(
            &Event::of_call(&call(), &source),
            &origin(),
            1,
            &GENESIS_HASH,
        )
        .expect("encodes");
        let (_, value) = verified(&line);
        assert_eq!(value["sourceIPAddress"], "10.1.2.3");
        assert_eq!(value["userAgent"], "Boto3/1.35.0");
        assert_eq!(value["userIdentity"]["accessKeyId"], "AKIAALICE");
        assert_eq!(
            value["userIdentity"]["arn"],
            "arn:aws:iam::111122223333:user/Alice"
        );
        let answered = source.with_request_id("5e1f0c1e-0000-4000-8000-000000000001");
        let (line, _) = encode(
            &Event::of_call(&call(), &answered),
            &origin(),
            1,
            &GENESIS_HASH,
        )
        .expect("encodes");
        let (_, value) = verified(&line);
        assert_eq!(value["requestID"], "5e1f0c1e-0000-4000-8000-000000000001");
        let (line, _) = encode(
            &Event::of_call(&call(), &local()),
            &origin(),
            1,
            &GENESIS_HASH,
        )
        .expect("encodes");
        let (_, value) = verified(&line);
        assert_eq!(value["sourceIPAddress"], "localhost");
        assert!(value["userIdentity"].get("accessKeyId").is_none());
    }

    fn call() -> ApiCall {
        ApiCall {
            event_time: time::macros::datetime!(2026-11-28 10:07:59.123 UTC),
            event_name: "GenerateDataKey".into(),
            principal: "arn:aws:iam::111122223333:user/Alice".into(),
            request_parameters: json!({
                "keyId": "alias/MyKMSKey",
                "keySpec": "AES_256",
                "encryptionContext": {"Department": "Engineering"},
            }),
            response_elements: None,
            error_code: None,
            error_message: None,
            read_only: true,
            resources: vec!["arn:aws:kms:local:111122223333:key/1234".into()],
        }
    }

    #[test]
    fn encoded_record_is_cloudtrail_shaped_and_verifies() {
        let (line, hash) =
            encode(&Event::of_call(&call(), &local()), &origin(), 7, &[9; 32]).expect("encodes");
        let (link, value) = verified(&line);
        assert_eq!(link.sequence, 7);
        assert_eq!(link.previous_hash, [9; 32]);
        assert_eq!(link.record_hash, hash);
        assert_eq!(value["eventVersion"], "1.08");
        assert_eq!(value["eventTime"], "2026-11-28T10:07:59Z");
        assert_eq!(value["eventSource"], "kms.amazonaws.com");
        assert_eq!(value["awsRegion"], "local");
        assert_eq!(value["userIdentity"]["type"], "IAMUser");
        assert_eq!(value["userIdentity"]["userName"], "Alice");
        assert_eq!(value["userIdentity"]["accountId"], "111122223333");
        assert_eq!(value["responseElements"], serde_json::Value::Null);
        assert!(value.get("errorCode").is_none());
        assert_eq!(value["resources"][0]["type"], "AWS::KMS::Key");
        assert_eq!(value["resources"][0]["accountId"], "111122223333");
        assert_eq!(value["recipientAccountId"], "000000000000");
        assert_eq!(value["eventCategory"], "Management");
        assert_ne!(value["eventID"], value["requestID"]);
        assert!(!line.contains(&b'\n'));
    }

    #[test]
    fn every_single_byte_change_is_detected() {
        let (line, _) = encode(
            &Event::of_call(&call(), &local()),
            &origin(),
            1,
            &GENESIS_HASH,
        )
        .expect("encodes");
        for at in 0..line.len() {
            for replacement in [b' ', b'0', b'x', b'"'] {
                if line[at] == replacement {
                    continue;
                }
                let mut edited = line.clone();
                edited[at] = replacement;
                assert!(
                    verify(&edited).is_err(),
                    "byte {at} -> {replacement} accepted"
                );
            }
        }
        assert!(verify(&line[..line.len() - 1]).is_err());
    }

    #[test]
    fn root_and_role_principals_get_their_identity_type() {
        let root = identity_of("arn:aws:iam::000000000000:root", "999", None);
        assert_eq!(
            (root.kind, root.principal_id),
            ("Root", Some("000000000000"))
        );
        let role = identity_of("arn:aws:sts::1:assumed-role/admin/session", "999", None);
        assert_eq!(role.kind, "AssumedRole");
        let odd = identity_of("somebody", "999", None);
        assert_eq!((odd.kind, odd.account_id), ("Unknown", Some("999")));
    }

    #[test]
    fn key_material_fields_are_dropped_at_any_depth() {
        let mut leaky = call();
        leaky.response_elements = Some(json!({
            "keyId": "k",
            "Plaintext": "c2VjcmV0",
            "nested": [{"ciphertextBlob": "YmxvYg=="}],
        }));
        let (line, _) = encode(
            &Event::of_call(&leaky, &local()),
            &origin(),
            1,
            &GENESIS_HASH,
        )
        .expect("encodes");
        let text = String::from_utf8(line).expect("utf-8");
        assert!(!text.contains("c2VjcmV0") && !text.contains("YmxvYg=="));
        assert!(text.contains("\"keyId\":\"k\""));
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics_on_arbitrary_lines(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = verify(&line);
            let _ = claimed_sequence(&line);
        }

        #[test]
        fn any_client_text_makes_one_bounded_verifiable_line(
            agent in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            claimed in "\\PC{0,300}",
            control in "[\\x00-\\x1f\\x7f]{0,20}",
        ) {
            let claimed = format!("{control}{claimed}");
            let mut refused = refusal(RefusedCaller::Unknown);
            refused.source = RequestSource::remote(
                "2001:db8::1".parse().expect("an address"),
                Some(&agent),
                Some(&claimed),
            );
            let (line, _) = encode(&Event::of_refusal(&refused), &origin(), 1, &GENESIS_HASH)
                .expect("encodes");
            let (_, value) = verified(&line);
            proptest::prop_assert!(!line.contains(&b'\n'));
            let agent = value["userAgent"].as_str().expect("a string");
            proptest::prop_assert!(agent.chars().count() <= crate::trail::MAX_USER_AGENT_CHARS);
            proptest::prop_assert!(!agent.chars().any(char::is_control));
            if let Some(id) = value["userIdentity"]["accessKeyId"].as_str() {
                proptest::prop_assert!(id.chars().count() <= crate::trail::MAX_ACCESS_KEY_ID_CHARS);
                proptest::prop_assert!(!id.chars().any(char::is_control));
            }
            proptest::prop_assert_eq!(value["sourceIPAddress"].as_str(), Some("2001:db8::1"));
        }

        #[test]
        fn lines_refused_without_a_parse_are_never_json(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            json in "[\\[\\]{}\":,0-9a-z \t\r\\\\.eE+-]{0,120}",
        ) {
            assert_refusal_is_sound(&bytes);
            assert_refusal_is_sound(json.as_bytes());
        }

        #[test]
        fn one_pass_parse_judges_any_bytes_as_a_value_parse_does(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            json in "[\\[\\]{}\":,0-9a-z \\\\.eE+-]{0,120}",
        ) {
            assert_same_verdict(&bytes);
            assert_same_verdict(json.as_bytes());
        }

        #[test]
        fn any_call_round_trips_through_a_record(
            name in "[A-Za-z]{1,30}",
            principal in "\\PC{0,60}",
            key in "\\PC{0,80}",
            context_value in "\\PC{0,80}",
            error in proptest::option::of("\\PC{0,80}"),
            sequence in 1u64..,
            previous in proptest::prelude::any::<[u8; 32]>(),
        ) {
            let mut api_call = call();
            api_call.event_name = name.clone();
            api_call.principal = principal.clone();
            api_call.request_parameters = json!({"keyId": key, "encryptionContext": {"k": context_value}});
            api_call.error_code = error.as_ref().map(|_| "ValidationException".to_owned());
            api_call.error_message = error.clone();
            let (line, hash) = encode(&Event::of_call(&api_call, &local()), &origin(), sequence, &previous).expect("encodes");
            let (link, value) = verified(&line);
            proptest::prop_assert_eq!(link, ChainLink { sequence, previous_hash: previous, record_hash: hash });
            proptest::prop_assert_eq!(value["eventName"].as_str(), Some(name.as_str()));
            proptest::prop_assert_eq!(value["userIdentity"]["arn"].as_str(), Some(principal.as_str()));
            proptest::prop_assert_eq!(value["requestParameters"]["keyId"].as_str(), Some(key.as_str()));
            proptest::prop_assert_eq!(value["errorMessage"].as_str(), error.as_deref());
            proptest::prop_assert!(!line.contains(&b'\n'));
        }
    }

    /// `cannot_be_json` only ever refuses what a `Value` parse refuses.
    fn assert_refusal_is_sound(line: &[u8]) {
        if cannot_be_json(line) {
            assert!(
                serde_json::from_slice::<serde_json::Value>(line).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn lines_refused_without_a_parse_are_not_json() {
        let (line, _) = encode(
            &Event::of_call(&call(), &local()),
            &origin(),
            7,
            &GENESIS_HASH,
        )
        .expect("encodes");
        let json_texts: [&[u8]; 12] = [
            &line,
            b"{}",
            b" [ ] ",
            b"\t\"\"\r",
            b"true",
            b"false",
            b"null",
            b"0",
            b"-12",
            b"1.5e3",
            b"\r{\"a\":[1,{}]}\t",
            b"\"\xc3\xa9\"",
        ];
        for text in json_texts {
            assert!(!cannot_be_json(text), "{}", String::from_utf8_lossy(text));
        }
        let refused: [&[u8]; 14] = [
            b"",
            b"   ",
            b"\t\r",
            b"{",
            b"{\"a\":1",
            b"[1",
            b"\"abc",
            b"tru",
            b"nule",
            b"-",
            b"1.",
            b"x",
            b"{\"a\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
        ];
        for text in refused {
            assert!(cannot_be_json(text), "{}", String::from_utf8_lossy(text));
            assert_refusal_is_sound(text);
        }
        for at in 0..line.len() {
            for byte in [b'"', b'{', b'}', b' ', 0xc3, b'\n', 0] {
                let mut edited = line.clone();
                edited[at] = byte;
                assert_refusal_is_sound(&edited);
            }
            assert_refusal_is_sound(&line[..at]);
            assert_refusal_is_sound(&line[at..]);
        }
    }

    #[test]
    fn uppercase_or_short_hashes_are_rejected() {
        assert!(parse_hash(&"A".repeat(64)).is_none());
        assert!(parse_hash(&"a".repeat(63)).is_none());
        assert_eq!(parse_hash(&"ab".repeat(32)), Some([0xab; 32]));
    }
}
