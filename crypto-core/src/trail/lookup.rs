//! [`Trail::lookup`]: the records that match a filter, most recent first.

use std::collections::{BTreeSet, VecDeque};

use time::OffsetDateTime;

use super::record::{self};
use super::{for_each_line, FlockGuard, Trail, TrailError};

/// Which records `lookup` returns. Every field that is set must match.
#[derive(Clone, Debug, Default)]
pub struct LookupFilter {
    /// Exact `eventName`, e.g. `Decrypt`.
    pub event_name: Option<String>,
    /// A key id, key ARN, alias name or alias ARN. An alias matches the records
    /// that name it and every key it was seen resolving to in the trail.
    pub key_id: Option<String>,
    /// The caller: principal ARN, user name, principal id or access key id (which
    /// also finds refused requests that only claimed that key).
    pub principal: Option<String>,
    /// Inclusive lower bound on `eventTime`.
    pub start_time: Option<OffsetDateTime>,
    /// Inclusive upper bound on `eventTime`.
    pub end_time: Option<OffsetDateTime>,
    /// At most this many records (the most recent ones).
    pub max_results: Option<usize>,
    /// Only records older than this sequence number: where the previous page of a
    /// paged lookup ended ([`LookupPage::next_before`]).
    pub before_sequence: Option<u64>,
}

/// One page of a [`Trail::lookup_page`].
#[derive(Clone, Debug, PartialEq)]
pub struct LookupPage {
    /// The matching records, most recent first.
    pub records: Vec<FoundRecord>,
    /// When older records also match: the `before_sequence` of the next page.
    pub next_before: Option<u64>,
}

/// One record found by [`Trail::lookup`].
#[derive(Clone, Debug, PartialEq)]
pub struct FoundRecord {
    /// The record's line exactly as stored (it hashes to its `recordHash`).
    pub line: String,
    /// The record, parsed.
    pub event: serde_json::Value,
}

fn resource_arns(event: &serde_json::Value) -> impl Iterator<Item = &str> {
    event["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|resource| resource["ARN"].as_str())
}

/// The `atrestChain.sequence` of a record.
fn event_sequence(event: &serde_json::Value) -> Option<u64> {
    event.get("atrestChain")?.get("sequence")?.as_u64()
}

fn matches(
    event: &serde_json::Value,
    filter: &LookupFilter,
    alias_keys: &BTreeSet<String>,
) -> bool {
    if let Some(name) = &filter.event_name {
        if event["eventName"].as_str() != Some(name) {
            return false;
        }
    }
    if let Some(principal) = &filter.principal {
        let identity = &event["userIdentity"];
        let is_caller = ["arn", "userName", "principalId", "accessKeyId"]
            .iter()
            .any(|field| identity[field].as_str() == Some(principal));
        if !is_caller {
            return false;
        }
    }
    if filter.start_time.is_some() || filter.end_time.is_some() {
        let Some(at) = event["eventTime"]
            .as_str()
            .and_then(record::parse_event_time)
        else {
            return false;
        };
        if filter.start_time.is_some_and(|start| at < start)
            || filter.end_time.is_some_and(|end| at > end)
        {
            return false;
        }
    }
    if let Some(key) = &filter.key_id {
        let by_resource = resource_arns(event).any(|arn| {
            arn == key
                || alias_keys.contains(arn)
                || arn.rsplit_once("key/").is_some_and(|(_, id)| id == key)
        });
        let params = &event["requestParameters"];
        let by_parameter = [
            "keyId",
            "targetKeyId",
            "destinationKeyId",
            "sourceKeyId",
            "aliasName",
        ]
        .iter()
        .any(|field| params[field].as_str() == Some(key));
        if !by_resource && !by_parameter {
            return false;
        }
    }
    true
}

impl Trail {
    /// The records that match `filter`, most recent first. Lines that are not JSON
    /// (an interrupted write) are skipped; `validate` is what judges the trail.
    pub fn lookup(&self, filter: &LookupFilter) -> Result<Vec<FoundRecord>, TrailError> {
        self.lookup_page(filter).map(|page| page.records)
    }

    /// Like [`Trail::lookup`], and says where the next page starts when
    /// `max_results` cut older matching records off.
    pub fn lookup_page(&self, filter: &LookupFilter) -> Result<LookupPage, TrailError> {
        let files = self.files();
        let _lock = FlockGuard::shared(&files.log, &self.log_path)?;
        let alias_keys = match filter.key_id.as_deref() {
            Some(alias) if alias.starts_with("alias/") || alias.contains(":alias/") => {
                self.keys_named_by(alias)?
            }
            _ => BTreeSet::new(),
        };
        let limit = filter.max_results.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(LookupPage {
                records: Vec::new(),
                next_before: None,
            });
        }
        let mut found: VecDeque<FoundRecord> = VecDeque::new();
        let mut cut_off = false;
        for_each_line(&self.log_path, |line| {
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
                return Ok(());
            };
            let older = match (filter.before_sequence, event_sequence(&event)) {
                (None, _) => true,
                (Some(before), Some(sequence)) => sequence < before,
                (Some(_), None) => false,
            };
            if older && matches(&event, filter, &alias_keys) {
                if found.len() == limit {
                    found.pop_front();
                    cut_off = true;
                }
                found.push_back(FoundRecord {
                    line: String::from_utf8_lossy(line).into_owned(),
                    event,
                });
            }
            Ok(())
        })?;
        let next_before = if cut_off {
            found
                .front()
                .and_then(|oldest| event_sequence(&oldest.event))
        } else {
            None
        };
        Ok(LookupPage {
            records: found.into_iter().rev().collect(),
            next_before,
        })
    }

    /// ARNs of the keys that records naming `alias` touched.
    fn keys_named_by(&self, alias: &str) -> Result<BTreeSet<String>, TrailError> {
        let alias_name = alias.rsplit_once(":").map_or(alias, |(_, name)| name);
        let alias_name_bytes = memchr::memmem::Finder::new(alias_name.as_bytes());
        let mut keys = BTreeSet::new();
        for_each_line(&self.log_path, |line| {
            // In a line without a backslash every JSON string is its raw bytes, so a
            // line whose parameters name the alias contains `alias_name` (which
            // `alias` ends with) as is: other such lines need no parse. A line with
            // escapes is parsed, as every line was before.
            if memchr::memchr(b'\\', line).is_none() && alias_name_bytes.find(line).is_none() {
                return Ok(());
            }
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
                return Ok(());
            };
            let params = &event["requestParameters"];
            let names_alias = ["keyId", "aliasName", "destinationKeyId", "sourceKeyId"]
                .iter()
                .any(|field| {
                    params[field]
                        .as_str()
                        .is_some_and(|v| v == alias || v == alias_name)
                });
            if names_alias {
                keys.extend(resource_arns(&event).map(str::to_owned));
            }
            Ok(())
        })?;
        Ok(keys)
    }
}
