//! The event history: a page of the trail, calls per minute, and the validation
//! of the chain and its digests.

use super::{blocking, json_reply, Console, Refusal, MAX_EVENTS_PAGE};
use crate::server::{Body, Gateway};
use crate::sigv4;
use crypto_core::trail::{digest, LookupFilter, Trail};
use http::{Response, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;

fn open_trail(gateway: &Gateway, console: &Console) -> Result<Trail, Refusal> {
    Trail::open(
        &console.home.join("trail"),
        gateway.kms().region(),
        gateway.kms().account(),
    )
    .map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "TrailError",
            e.to_string(),
        )
    })
}

/// `GET events?eventName=&keyId=&user=&before=&max=`: a page of the trail, newest
/// first, like `atrest trail lookup`.
pub(super) async fn events(
    gateway: &Arc<Gateway>,
    console: &Console,
    query: &str,
) -> Result<Response<Body>, Refusal> {
    let pairs = sigv4::query_pairs(query)?;
    let find = |name: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.clone())
    };
    let before = find("before")
        .map(|b| {
            b.parse::<u64>()
                .map_err(|_| Refusal::bad("before is a sequence number"))
        })
        .transpose()?;
    let max = find("max")
        .map(|m| {
            m.parse::<usize>()
                .map_err(|_| Refusal::bad("max is a count"))
        })
        .transpose()?
        .unwrap_or(50)
        .clamp(1, MAX_EVENTS_PAGE);
    let filter = LookupFilter {
        event_name: find("eventName"),
        key_id: find("keyId"),
        principal: find("user"),
        start_time: None,
        end_time: None,
        max_results: Some(max),
        before_sequence: before,
    };
    let trail = open_trail(gateway, console)?;
    let page = blocking(move || {
        trail.lookup_page(&filter).map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "TrailError",
                e.to_string(),
            )
        })
    })
    .await?;
    let events: Vec<&Value> = page.records.iter().map(|r| &r.event).collect();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "events": events, "before": page.next_before }),
    ))
}

/// `GET activity`: calls per minute by event name over the last hour.
pub(super) async fn activity(
    gateway: &Arc<Gateway>,
    console: &Console,
) -> Result<Response<Body>, Refusal> {
    let now = gateway.now();
    let start = now - time::Duration::hours(1);
    let filter = LookupFilter {
        event_name: None,
        key_id: None,
        principal: None,
        start_time: Some(start),
        end_time: None,
        max_results: Some(100_000),
        before_sequence: None,
    };
    let trail = open_trail(gateway, console)?;
    let records = blocking(move || {
        trail.lookup(&filter).map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "TrailError",
                e.to_string(),
            )
        })
    })
    .await?;
    let mut series: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for record in &records {
        let (Some(name), Some(when)) = (
            record.event["eventName"].as_str(),
            record.event["eventTime"].as_str(),
        ) else {
            continue;
        };
        let Ok(when) =
            time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339)
        else {
            continue;
        };
        let minute = (when - start).whole_minutes();
        if let Ok(minute @ 0..=59) = usize::try_from(minute) {
            series.entry(name.to_owned()).or_insert_with(|| vec![0; 60])[minute] += 1;
        }
    }
    let start_text = start
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "start": start_text, "minutes": 60, "series": series }),
    ))
}

/// `GET validate`: the chain and the signed digests, as `atrest trail validate`.
pub(super) async fn validate(
    console: &Console,
    gateway: &Arc<Gateway>,
) -> Result<Response<Body>, Refusal> {
    let trail = open_trail(gateway, console)?;
    let dir = console.home.join("trail");
    let result = blocking(move || {
        let chain = match trail.validate_against(None) {
            Ok(report) => report,
            Err(e) => return Ok(json!({ "valid": false, "error": format!("chain: {e}") })),
        };
        let digests = match digest::validate_digests(&dir, None) {
            Ok(report) => report,
            Err(e) => return Ok(json!({ "valid": false, "error": format!("digests: {e}") })),
        };
        let last_digest = digests.last_digest_time.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
        Ok(json!({
            "valid": true,
            "records": chain.records,
            "lastSequence": chain.last_sequence,
            "lastHash": chain.last_hash,
            "notes": chain.notes,
            "digests": digests.digests,
            "digestedRecords": digests.records,
            "digestPublicKey": digests.public_key,
            "lastDigestTime": last_digest,
        }))
    })
    .await?;
    Ok(json_reply(StatusCode::OK, &result))
}
