//! [`Trail::lookup`]: the records that match a filter, most recent first.

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};

use serde::de::DeserializeSeed;

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

impl LookupFilter {
    /// Whether nothing is filtered out: no field to match, no page boundary, no limit.
    fn returns_every_line(&self) -> bool {
        let LookupFilter {
            event_name,
            key_id,
            principal,
            start_time,
            end_time,
            max_results,
            before_sequence,
        } = self;
        event_name.is_none()
            && key_id.is_none()
            && principal.is_none()
            && start_time.is_none()
            && end_time.is_none()
            && max_results.is_none()
            && before_sequence.is_none()
    }
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

/// What `lookup` reads of a line to judge it: the fields a filter looks at, borrowed
/// from the line unless an escape had to be decoded. Read by [`Fields::read`], which
/// accepts and refuses exactly the lines `serde_json::from_slice::<Value>` does, and
/// where a key repeats keeps the last value, as `Value` does; a field that is missing
/// or not of the type the filter compares (a string, or the sequence number) is
/// `None`, as `Value`'s `event["field"].as_str()` is. Building the whole `Value` (a
/// map and a string per field) of every line was most of a lookup's time; it is now
/// built only for the records returned.
#[derive(Debug, Default, PartialEq)]
struct Fields<'a> {
    event_name: Option<Cow<'a, str>>,
    event_time: Option<Cow<'a, str>>,
    /// `userIdentity`'s fields named in [`IDENTITY_FIELDS`], in that order.
    identity: [Option<Cow<'a, str>>; IDENTITY_FIELDS.len()],
    /// `requestParameters`' fields named in [`PARAMETER_FIELDS`], in that order.
    parameters: [Option<Cow<'a, str>>; PARAMETER_FIELDS.len()],
    /// The string `ARN`s of `resources` (an array of objects), in order.
    resource_arns: Vec<Cow<'a, str>>,
    /// `atrestChain.sequence`, when it is a non-negative integer.
    sequence: Option<u64>,
}

/// The caller's fields a principal filter compares with.
const IDENTITY_FIELDS: [&str; 4] = ["arn", "userName", "principalId", "accessKeyId"];
/// The request parameters that can name a key; the first four can also name an alias
/// (see [`Fields::names_alias`]).
const PARAMETER_FIELDS: [&str; 5] = [
    "keyId",
    "aliasName",
    "destinationKeyId",
    "sourceKeyId",
    "targetKeyId",
];

impl<'a> Fields<'a> {
    /// Reads `line`, or refuses it as `serde_json::from_slice::<Value>` would.
    fn read(line: &'a [u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(line);
        let fields = de::Any(de::Top).deserialize(&mut de)?;
        de.end()?;
        Ok(fields)
    }

    fn matches(&self, filter: &LookupFilter, alias_keys: &BTreeSet<String>) -> bool {
        if let Some(name) = &filter.event_name {
            if self.event_name.as_deref() != Some(name) {
                return false;
            }
        }
        if let Some(principal) = &filter.principal {
            let is_caller = self
                .identity
                .iter()
                .any(|field| field.as_deref() == Some(principal));
            if !is_caller {
                return false;
            }
        }
        if filter.start_time.is_some() || filter.end_time.is_some() {
            let Some(at) = self
                .event_time
                .as_deref()
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
            let by_resource = self.resource_arns.iter().any(|arn| {
                arn == key
                    || alias_keys.contains(arn.as_ref())
                    || arn.rsplit_once("key/").is_some_and(|(_, id)| id == key)
            });
            let by_parameter = self
                .parameters
                .iter()
                .any(|field| field.as_deref() == Some(key));
            if !by_resource && !by_parameter {
                return false;
            }
        }
        true
    }

    /// Whether the parameters name the alias (`keyId`, `aliasName`,
    /// `destinationKeyId` or `sourceKeyId` is its ARN or its name).
    fn names_alias(&self, alias: &str, alias_name: &str) -> bool {
        self.parameters[..4]
            .iter()
            .flatten()
            .any(|value| value == alias || value == alias_name)
    }
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
        if filter.returns_every_line() {
            // Every line that is JSON is returned: one `Value` parse judges and reads it.
            let mut records = Vec::new();
            for_each_line(&self.log_path, |line| {
                if record::cannot_be_json(line) {
                    return Ok(());
                }
                if let Ok(event) = serde_json::from_slice(line) {
                    records.push(FoundRecord {
                        line: String::from_utf8_lossy(line).into_owned(),
                        event,
                    });
                }
                Ok(())
            })?;
            records.reverse();
            return Ok(LookupPage {
                records,
                next_before: None,
            });
        }
        // The matching lines kept so far (at most `limit`, the newest), with their
        // sequence numbers; each becomes a `Value` only once it is sure to be returned.
        let mut found: VecDeque<(Vec<u8>, Option<u64>)> = VecDeque::new();
        let mut cut_off = false;
        for_each_line(&self.log_path, |line| {
            if record::cannot_be_json(line) {
                return Ok(());
            }
            let Ok(fields) = Fields::read(line) else {
                return Ok(());
            };
            let older = match (filter.before_sequence, fields.sequence) {
                (None, _) => true,
                (Some(before), Some(sequence)) => sequence < before,
                (Some(_), None) => false,
            };
            if older && fields.matches(filter, &alias_keys) {
                if found.len() == limit {
                    found.pop_front();
                    cut_off = true;
                }
                found.push_back((line.to_vec(), fields.sequence));
            }
            Ok(())
        })?;
        let next_before = if cut_off {
            found.front().and_then(|&(_, sequence)| sequence)
        } else {
            None
        };
        let records = found
            .into_iter()
            .rev()
            // `Fields::read` accepted the line, so a `Value` parse does too (the two
            // judge every line alike); nothing is dropped here.
            .filter_map(|(line, _)| {
                let event = serde_json::from_slice(&line).ok()?;
                Some(FoundRecord {
                    line: String::from_utf8_lossy(&line).into_owned(),
                    event,
                })
            })
            .collect();
        Ok(LookupPage {
            records,
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
            if memchr::memchr(b'\\', line).is_none() && alias_name_bytes.find(line).is_none()
                || record::cannot_be_json(line)
            {
                return Ok(());
            }
            let Ok(fields) = Fields::read(line) else {
                return Ok(());
            };
            if fields.names_alias(alias, alias_name) {
                keys.extend(fields.resource_arns.into_iter().map(Cow::into_owned));
            }
            Ok(())
        })?;
        Ok(keys)
    }
}

/// The visitors of [`Fields::read`]. Every value goes through `deserialize_any`, as
/// in a `Value` parse, so that strings and keys are checked as UTF-8 and numbers as
/// in range (serde's `IgnoredAny` would skip those checks); what is not kept is
/// visited and dropped.
mod de {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::{Fields, IDENTITY_FIELDS, PARAMETER_FIELDS};

    /// Reads any JSON value with the visitor it holds.
    pub(super) struct Any<V>(pub V);

    impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for Any<V> {
        type Value = V::Value;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
            deserializer.deserialize_any(self.0)
        }
    }

    fn skip_seq<'de, A: SeqAccess<'de>>(mut items: A) -> Result<(), A::Error> {
        while items.next_element_seed(Any(Skip))?.is_some() {}
        Ok(())
    }

    fn skip_map<'de, A: MapAccess<'de>>(mut fields: A) -> Result<(), A::Error> {
        while fields.next_key_seed(Any(Skip))?.is_some() {
            fields.next_value_seed(Any(Skip))?;
        }
        Ok(())
    }

    /// Implements the visits that keep nothing: `$nothing` for a scalar, the items
    /// of an array or object checked and dropped.
    macro_rules! keeps_nothing_of {
        (arrays and objects ; $nothing:expr) => {
            fn visit_seq<A: SeqAccess<'de>>(self, items: A) -> Result<Self::Value, A::Error> {
                skip_seq(items)?;
                Ok($nothing)
            }

            fn visit_map<A: MapAccess<'de>>(self, fields: A) -> Result<Self::Value, A::Error> {
                skip_map(fields)?;
                Ok($nothing)
            }
        };
        ($($visit:ident($($arg:ty)?)),* ; $nothing:expr) => {
            $(fn $visit<E>(self $(, _: $arg)?) -> Result<Self::Value, E> {
                Ok($nothing)
            })*
        };
    }

    /// Any value, checked and dropped.
    struct Skip;

    impl<'de> Visitor<'de> for Skip {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        keeps_nothing_of!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64),
            visit_str(&str), visit_unit(); ());
        keeps_nothing_of!(arrays and objects; ());
    }

    /// A string, kept (borrowed when it had no escape); any other value, `None`.
    struct Text;

    impl<'de> Visitor<'de> for Text {
        type Value = Option<Cow<'de, str>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(text)))
        }

        fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(text.to_owned())))
        }

        keeps_nothing_of!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64),
            visit_unit(); None);
        keeps_nothing_of!(arrays and objects; None);
    }

    /// A non-negative integer, kept (what `Value::as_u64` returns); any other value,
    /// `None`.
    struct Count;

    impl<'de> Visitor<'de> for Count {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_u64<E>(self, count: u64) -> Result<Self::Value, E> {
            Ok(Some(count))
        }

        fn visit_i64<E>(self, count: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(count).ok())
        }

        keeps_nothing_of!(visit_bool(bool), visit_f64(f64), visit_str(&str), visit_unit(); None);
        keeps_nothing_of!(arrays and objects; None);
    }

    /// An object key (checked like any string): its place in a list of names.
    struct KeyIn<'n>(&'n [&'n str]);

    impl<'de> Visitor<'de> for KeyIn<'_> {
        type Value = Option<usize>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object key")
        }

        fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
            Ok(self.0.iter().position(|name| *name == key))
        }
    }

    /// An object's string fields of the given names (the last of a repeated key);
    /// any other value, none of them.
    struct Strings<const N: usize>(&'static [&'static str; N]);

    impl<'de, const N: usize> Visitor<'de> for Strings<N> {
        type Value = [Option<Cow<'de, str>>; N];

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Self::Value, A::Error> {
            let mut kept = [const { None }; N];
            while let Some(key) = fields.next_key_seed(Any(KeyIn(self.0)))? {
                match key {
                    Some(at) => kept[at] = fields.next_value_seed(Any(Text))?,
                    None => fields.next_value_seed(Any(Skip))?,
                }
            }
            Ok(kept)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, items: A) -> Result<Self::Value, A::Error> {
            skip_seq(items)?;
            Ok([const { None }; N])
        }

        keeps_nothing_of!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64),
            visit_str(&str), visit_unit(); [const { None }; N]);
    }

    /// `resources`: the string `ARN` of each object in an array; of any other value,
    /// none.
    struct ResourceArns;

    impl<'de> Visitor<'de> for ResourceArns {
        type Value = Vec<Cow<'de, str>>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
            let mut arns = Vec::new();
            while let Some([arn]) = items.next_element_seed(Any(Strings(&["ARN"])))? {
                arns.extend(arn);
            }
            Ok(arns)
        }

        fn visit_map<A: MapAccess<'de>>(self, fields: A) -> Result<Self::Value, A::Error> {
            skip_map(fields)?;
            Ok(Vec::new())
        }

        keeps_nothing_of!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64),
            visit_str(&str), visit_unit(); Vec::new());
    }

    /// `atrestChain`: its `sequence` as a count; of any other value, none.
    struct ChainSequence;

    impl<'de> Visitor<'de> for ChainSequence {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Self::Value, A::Error> {
            let mut sequence = None;
            while let Some(key) = fields.next_key_seed(Any(KeyIn(&["sequence"])))? {
                match key {
                    Some(_) => sequence = fields.next_value_seed(Any(Count))?,
                    None => fields.next_value_seed(Any(Skip))?,
                }
            }
            Ok(sequence)
        }

        keeps_nothing_of!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64),
            visit_str(&str), visit_unit(); None);

        fn visit_seq<A: SeqAccess<'de>>(self, items: A) -> Result<Self::Value, A::Error> {
            skip_seq(items)?;
            Ok(None)
        }
    }

    /// The whole line: a record's [`Fields`]; of any other value, none of them.
    pub(super) struct Top;

    const TOP_FIELDS: [&str; 6] = [
        "eventName",
        "eventTime",
        "userIdentity",
        "requestParameters",
        "resources",
        "atrestChain",
    ];

    impl<'de> Visitor<'de> for Top {
        type Value = Fields<'de>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = Fields::default();
            while let Some(key) = map.next_key_seed(Any(KeyIn(&TOP_FIELDS)))? {
                match key {
                    Some(0) => fields.event_name = map.next_value_seed(Any(Text))?,
                    Some(1) => fields.event_time = map.next_value_seed(Any(Text))?,
                    Some(2) => {
                        fields.identity = map.next_value_seed(Any(Strings(&IDENTITY_FIELDS)))?;
                    }
                    Some(3) => {
                        fields.parameters = map.next_value_seed(Any(Strings(&PARAMETER_FIELDS)))?;
                    }
                    Some(4) => fields.resource_arns = map.next_value_seed(Any(ResourceArns))?,
                    Some(_) => fields.sequence = map.next_value_seed(Any(ChainSequence))?,
                    None => map.next_value_seed(Any(Skip))?,
                }
            }
            Ok(fields)
        }

        keeps_nothing_of!(visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64),
            visit_str(&str), visit_unit(); Fields::default());

        fn visit_seq<A: SeqAccess<'de>>(self, items: A) -> Result<Self::Value, A::Error> {
            skip_seq(items)?;
            Ok(Fields::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lookup_page` as it was before [`Fields`]: every complete line parsed into a
    /// `Value` (twice for an alias: once for the keys it named, once to match), the
    /// filter applied to the `Value`.
    fn lookup_as_a_value(log: &[u8], filter: &LookupFilter) -> LookupPage {
        let mut lines: Vec<&[u8]> = log.split(|&b| b == b'\n').collect();
        lines.pop(); // An incomplete final line (or nothing, after the last newline).
        let events = |line: &&[u8]| serde_json::from_slice::<serde_json::Value>(line).ok();
        let resource_arns = |event: &serde_json::Value| -> Vec<String> {
            event["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|resource| resource["ARN"].as_str().map(str::to_owned))
                .collect()
        };
        let sequence_of =
            |event: &serde_json::Value| event.get("atrestChain")?.get("sequence")?.as_u64();
        let mut alias_keys = BTreeSet::new();
        if let Some(alias) = filter.key_id.as_deref() {
            if alias.starts_with("alias/") || alias.contains(":alias/") {
                let alias_name = alias.rsplit_once(":").map_or(alias, |(_, name)| name);
                for event in lines.iter().filter_map(events) {
                    let params = &event["requestParameters"];
                    let names_alias = ["keyId", "aliasName", "destinationKeyId", "sourceKeyId"]
                        .iter()
                        .any(|f| {
                            params[f]
                                .as_str()
                                .is_some_and(|v| v == alias || v == alias_name)
                        });
                    if names_alias {
                        alias_keys.extend(resource_arns(&event));
                    }
                }
            }
        }
        let matches = |event: &serde_json::Value| {
            if let Some(name) = &filter.event_name {
                if event["eventName"].as_str() != Some(name) {
                    return false;
                }
            }
            if let Some(principal) = &filter.principal {
                let identity = &event["userIdentity"];
                if !["arn", "userName", "principalId", "accessKeyId"]
                    .iter()
                    .any(|f| identity[f].as_str() == Some(principal))
                {
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
                if filter.start_time.is_some_and(|s| at < s)
                    || filter.end_time.is_some_and(|e| at > e)
                {
                    return false;
                }
            }
            if let Some(key) = &filter.key_id {
                let by_resource = resource_arns(event).iter().any(|arn| {
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
                .any(|f| params[f].as_str() == Some(key));
                if !by_resource && !by_parameter {
                    return false;
                }
            }
            true
        };
        let limit = filter.max_results.unwrap_or(usize::MAX);
        let mut found = Vec::new();
        for line in &lines {
            let Some(event) = events(line) else { continue };
            let older = match (filter.before_sequence, sequence_of(&event)) {
                (None, _) => true,
                (Some(before), Some(sequence)) => sequence < before,
                (Some(_), None) => false,
            };
            if older && matches(&event) {
                found.push(FoundRecord {
                    line: String::from_utf8_lossy(line).into_owned(),
                    event,
                });
            }
        }
        let cut = found.len().saturating_sub(limit);
        let next_before = (cut > 0 && limit > 0)
            .then(|| sequence_of(&found[cut].event))
            .flatten();
        let records = found.split_off(cut).into_iter().rev().collect();
        LookupPage {
            records: if limit == 0 { Vec::new() } else { records },
            next_before,
        }
    }

    const KEY: &str = "arn:aws:kms:local:000000000000:key/1234";

    /// Lines that test what a typed read could get wrong, each a record or close to one.
    fn tricky_lines() -> Vec<Vec<u8>> {
        let texts = [
            // A plain record, and the same with every string written with escapes.
            format!(r#"{{"eventName":"Decrypt","eventTime":"2026-11-28T10:01:00Z","userIdentity":{{"arn":"arn:aws:iam::000000000000:user/alice","userName":"alice"}},"requestParameters":{{"keyId":"{KEY}"}},"resources":[{{"ARN":"{KEY}"}}],"atrestChain":{{"sequence":1}}}}"#),
            format!(r#"{{"event\u004eame":"De\u0063rypt","eventTime":"2026-11-28T10:02:00Z","userIdentity":{{"\u0061rn":"arn:aws:iam::000000000000:user/\u0061lice"}},"requestParameters":{{"keyId":"{}"}},"resources":[{{"A\u0052N":"{KEY}"}}],"atrestChain":{{"sequence":2}}}}"#, KEY.replace("1234", "\\u0031234")),
            // The key uses an alias that only a later record (CreateAlias) resolves.
            r#"{"eventName":"Encrypt","requestParameters":{"keyId":"alias/fuzz"},"resources":[{"ARN":"arn:aws:kms:local:000000000000:key/later"}],"atrestChain":{"sequence":3}}"#.to_owned(),
            r#"{"eventName":"Encrypt","requestParameters":{"keyId":"x"},"resources":[{"ARN":"arn:aws:kms:local:000000000000:key/later"},{"ARN":5},7,{"ARN":"a","ARN":"arn:aws:kms:local:000000000000:key/b"}],"atrestChain":{"sequence":4}}"#.to_owned(),
            // Repeated keys: the last one counts, whatever its type.
            r#"{"eventName":"Decrypt","eventName":5,"userIdentity":{"arn":"x"},"userIdentity":[],"atrestChain":{"sequence":5},"atrestChain":{"sequence":6,"sequence":"7"}}"#.to_owned(),
            r#"{"userIdentity":{"userName":"bob","userName":"alice"},"requestParameters":{"keyId":"x","keyId":"alias/fuzz","aliasName":"alias/fuzz","aliasName":1},"atrestChain":{"sequence":"1","sequence":7}}"#.to_owned(),
            r#"{"eventName":5,"eventName":"Decrypt","resources":[{"ARN":"arn:aws:kms:local:000000000000:key/later"}],"resources":{},"requestParameters":{"keyId":"alias/fuzz"},"requestParameters":{"aliasName":"alias/fuzz","targetKeyId":"arn:aws:kms:local:000000000000:key/later"},"atrestChain":{"sequence":8}}"#.to_owned(),
            // Unknown fields, nested values of every kind, odd sequence numbers.
            r#"{"x":{"eventName":"Decrypt"},"y":[1,-2,3.5,true,null,{"a":[[]]}],"eventName":"Decrypt","atrestChain":{"sequence":-0}}"#.to_owned(),
            r#"{"eventName":"Decrypt","atrestChain":{"sequence":9.0}}"#.to_owned(),
            r#"{"eventName":"Decrypt","atrestChain":[{"sequence":9}]}"#.to_owned(),
            r#"{"eventName":"Decrypt","atrestChain":{"sequence":18446744073709551615}}"#.to_owned(),
            // Records out of order.
            r#"{"eventName":"CreateAlias","requestParameters":{"aliasName":"alias/fuzz","targetKeyId":"later"},"resources":[{"ARN":"arn:aws:kms:local:000000000000:key/later"}],"atrestChain":{"sequence":2}}"#.to_owned(),
            r#"{"eventName":"CreateAlias","requestParameters":{"aliasName":"alias\/fuzz"},"resources":[{"ARN":"arn:aws:kms:local:000000000000:key/escaped"}],"atrestChain":{"sequence":11}}"#.to_owned(),
            // Not records, or not JSON.
            "5".to_owned(),
            " [1] ".to_owned(),
            "\t\"text\"\r".to_owned(),
            "null".to_owned(),
            "-0".to_owned(),
            String::new(),
            "   ".to_owned(),
            r#"{"eventName":"Decrypt"} x"#.to_owned(),
            r#"{"eventName":"Decrypt","n":1e400}"#.to_owned(),
            r#"{"eventName":"Decrypt","s":"\ud800"}"#.to_owned(),
            format!("{}0{}", "[".repeat(200), "]".repeat(200)),
            format!(r#"{{"eventName":"Decrypt","deep":{}0{}}}"#, "[".repeat(126), "]".repeat(126)),
            format!(r#"{{"eventName":"Decrypt","deep":{}0{}}}"#, "[".repeat(127), "]".repeat(127)),
        ];
        let mut lines: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
        // Not UTF-8: in a string value, in a key, outside any string.
        lines.push(b"{\"eventName\":\"Decr\xffypt\"}".to_vec());
        lines.push(b"{\"event\xc3Name\":\"Decrypt\"}".to_vec());
        lines.push(b"{\"other\":[\"\xff\"],\"eventName\":\"Decrypt\"}".to_vec());
        lines.push(b"{\"eventName\":\"Decrypt\"}\xff".to_vec());
        lines
    }

    fn filters() -> Vec<LookupFilter> {
        let time = |minute: i64| {
            time::macros::datetime!(2026-11-28 10:00 UTC) + time::Duration::minutes(minute)
        };
        let by_key = |key: &str| LookupFilter {
            key_id: Some(key.into()),
            ..LookupFilter::default()
        };
        let mut filters = vec![
            LookupFilter::default(),
            by_key("alias/fuzz"),
            by_key("arn:aws:kms:local:000000000000:alias/fuzz"),
            by_key(KEY),
            by_key("1234"),
            by_key("later"),
            by_key("b"),
            LookupFilter {
                event_name: Some("Decrypt".into()),
                ..LookupFilter::default()
            },
            LookupFilter {
                principal: Some("alice".into()),
                ..LookupFilter::default()
            },
            LookupFilter {
                start_time: Some(time(2)),
                end_time: Some(time(2)),
                ..LookupFilter::default()
            },
        ];
        for limit in [0, 1, 2, 3] {
            filters.push(LookupFilter {
                max_results: Some(limit),
                ..by_key("alias/fuzz")
            });
            filters.push(LookupFilter {
                max_results: Some(limit),
                before_sequence: Some(9),
                ..LookupFilter::default()
            });
        }
        filters
    }

    /// Writes `log` as a trail's log and checks every filter against a `Value` lookup.
    fn assert_same_records(dir: &std::path::Path, log: &[u8]) {
        let trail = Trail::open(dir, "local", "000000000000").expect("open");
        std::fs::write(trail.log_path(), log).expect("write log");
        for filter in filters() {
            assert_eq!(
                trail.lookup_page(&filter).expect("lookup"),
                lookup_as_a_value(log, &filter),
                "{filter:?} over {}",
                String::from_utf8_lossy(log)
            );
        }
    }

    #[test]
    fn a_lookup_returns_what_a_value_lookup_returned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = tricky_lines();
        let mut log = lines.join(&b'\n');
        log.push(b'\n');
        assert_same_records(dir.path(), &log);
        // An alias that only a later line resolves, whatever the order.
        let mut reversed = lines.iter().rev().cloned().collect::<Vec<_>>().join(&b'\n');
        reversed.push(b'\n');
        assert_same_records(dir.path(), &reversed);
        // A truncated final line is not a record, even a whole one without its newline.
        assert_same_records(dir.path(), &log[..log.len() - 1]);
        for line in &lines {
            let mut one = line.clone();
            one.push(b'\n');
            assert_same_records(dir.path(), &one);
        }
    }

    #[test]
    fn the_typed_read_judges_lines_as_a_value_parse_does() {
        for line in tricky_lines() {
            assert_eq!(
                Fields::read(&line).is_ok(),
                serde_json::from_slice::<serde_json::Value>(&line).is_ok(),
                "{}",
                String::from_utf8_lossy(&line)
            );
            for cut in 0..line.len() {
                assert_eq!(
                    Fields::read(&line[..cut]).is_ok(),
                    serde_json::from_slice::<serde_json::Value>(&line[..cut]).is_ok()
                );
            }
        }
        let escaped = br#"{"eventName":"De\u0063rypt","eventTime":"now"}"#;
        let fields = Fields::read(escaped).expect("JSON");
        assert_eq!(fields.event_name.as_deref(), Some("Decrypt"));
        assert!(matches!(fields.event_time, Some(Cow::Borrowed("now"))));
    }

    proptest::proptest! {
        #[test]
        fn any_edit_of_a_trail_is_looked_up_as_a_value_lookup_does(
            edits in proptest::collection::vec((0usize..4000, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..4000,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut log = tricky_lines()[..12].join(&b'\n');
            log.push(b'\n');
            for (at, byte) in edits {
                let at = at % log.len();
                log[at] = byte;
            }
            log.truncate(log.len() - cut % 200);
            assert_same_records(dir.path(), &log);
        }

        #[test]
        fn the_typed_read_judges_any_bytes_as_a_value_parse_does(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            json in "[\\[\\]{}\":,0-9a-z \\\\.eE+-]{0,120}",
        ) {
            for line in [bytes.as_slice(), json.as_bytes()] {
                proptest::prop_assert_eq!(
                    Fields::read(line).is_ok(),
                    serde_json::from_slice::<serde_json::Value>(line).is_ok()
                );
            }
        }
    }
}
