//! PutBucketLifecycleConfiguration's XML in, GetBucketLifecycleConfiguration's out.
//!
//! Only the elements atrest applies are taken (ID, Status, Filter/Prefix or the
//! legacy rule-level Prefix, Expiration/Days, AbortIncompleteMultipartUpload/
//! DaysAfterInitiation). Any other element (transitions, noncurrent-version rules,
//! tag or size filters, Expiration Date, ExpiredObjectDeleteMarker) is refused with
//! `501 NotImplemented` naming it: a rule stored but never applied would look like
//! protection (or cleanup) that does not happen.

use objstore::{LifecycleConfiguration, LifecycleRule};

use http::StatusCode;

use super::routing::Call;
use super::xml::{XmlDocument, XmlWriter};
use super::{S3Answer, S3Service};
use crate::error::GatewayError;

/// Every element a configuration may hold.
const TAKEN: &[&str] = &[
    "LifecycleConfiguration",
    "Rule",
    "ID",
    "Status",
    "Filter",
    "Prefix",
    "Expiration",
    "Days",
    "AbortIncompleteMultipartUpload",
    "DaysAfterInitiation",
];

fn malformed(what: impl Into<String>) -> GatewayError {
    GatewayError::MalformedXml(what.into())
}

fn days(rule: &XmlDocument<'_>, tag: &str) -> Result<Option<u32>, GatewayError> {
    rule.get(tag)?
        .map(|text| {
            text.trim().parse::<u32>().map_err(|_| {
                GatewayError::InvalidArgument(format!(
                    "'{tag}' must be a positive integer, not '{text}'"
                ))
            })
        })
        .transpose()
}

/// Parses a PutBucketLifecycleConfiguration body (validated further by the store).
pub(super) fn from_xml(body: &[u8]) -> Result<LifecycleConfiguration, GatewayError> {
    let doc = XmlDocument::parse(body, "LifecycleConfiguration")?;
    let names = doc.element_names();
    if let Some(other) = names.iter().find(|name| !TAKEN.contains(name)) {
        return Err(GatewayError::NotImplemented(format!(
            "the lifecycle element {other} is not implemented (atrest applies Expiration \
             Days and AbortIncompleteMultipartUpload, filtered by Prefix)"
        )));
    }
    let rules = doc.children("Rule")?;
    if rules.len() != names.iter().filter(|&&name| name == "Rule").count() {
        return Err(malformed("every Rule must be <Rule>...</Rule>"));
    }
    let mut out = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let enabled = match rule.get("Status")?.as_deref() {
            Some("Enabled") => true,
            Some("Disabled") => false,
            _ => return Err(malformed("a Rule's Status must be Enabled or Disabled")),
        };
        let expiration = rule.element_names().contains(&"Expiration");
        let expiration_days = days(rule, "Days")?;
        if expiration != expiration_days.is_some() {
            return Err(malformed("Expiration takes Days"));
        }
        let abort = rule
            .element_names()
            .contains(&"AbortIncompleteMultipartUpload");
        let abort_incomplete_days = days(rule, "DaysAfterInitiation")?;
        if abort != abort_incomplete_days.is_some() {
            return Err(malformed(
                "AbortIncompleteMultipartUpload takes DaysAfterInitiation",
            ));
        }
        out.push(LifecycleRule {
            // S3 names a rule without an ID itself.
            id: rule.get("ID")?.unwrap_or_else(|| format!("rule-{}", i + 1)),
            enabled,
            prefix: rule.get("Prefix")?.unwrap_or_default(),
            expiration_days,
            abort_incomplete_days,
        });
    }
    Ok(LifecycleConfiguration { rules: out })
}

/// GetBucketLifecycleConfiguration's answer.
pub(super) fn document(config: &LifecycleConfiguration) -> Vec<u8> {
    let mut w = XmlWriter::new("LifecycleConfiguration");
    for rule in &config.rules {
        w.open("Rule")
            .leaf("ID", &rule.id)
            .open("Filter")
            .leaf("Prefix", &rule.prefix)
            .close("Filter")
            .leaf("Status", if rule.enabled { "Enabled" } else { "Disabled" });
        if let Some(days) = rule.expiration_days {
            w.open("Expiration")
                .leaf("Days", &days.to_string())
                .close("Expiration");
        }
        if let Some(days) = rule.abort_incomplete_days {
            w.open("AbortIncompleteMultipartUpload")
                .leaf("DaysAfterInitiation", &days.to_string())
                .close("AbortIncompleteMultipartUpload");
        }
        w.close("Rule");
    }
    w.finish("LifecycleConfiguration")
}

impl S3Service {
    /// PutBucketLifecycleConfiguration: the rules atrest applies.
    pub(super) fn put_bucket_lifecycle_configuration(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let config = from_xml(body)?;
        self.store.put_bucket_lifecycle(bucket, Some(config))?;
        Ok(S3Answer::empty(StatusCode::OK))
    }

    /// GetBucketLifecycleConfiguration.
    pub(super) fn get_bucket_lifecycle_configuration(
        &self,
        call: &Call<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let config = self.store.bucket_lifecycle(bucket)?;
        Ok(S3Answer::xml(document(&config)))
    }

    /// DeleteBucketLifecycle.
    pub(super) fn delete_bucket_lifecycle(
        &self,
        call: &Call<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        self.store.put_bucket_lifecycle(bucket, None)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTO3: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Rule><Expiration><Days>3</Days></Expiration><ID>logs</ID><Filter><Prefix>logs/</Prefix></Filter><Status>Enabled</Status><AbortIncompleteMultipartUpload><DaysAfterInitiation>1</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule><Rule><ID>off</ID><Prefix></Prefix><Status>Disabled</Status><Expiration><Days>9</Days></Expiration></Rule></LifecycleConfiguration>"#;

    #[test]
    fn a_boto3_configuration_round_trips() {
        let config = from_xml(BOTO3.as_bytes()).unwrap();
        assert_eq!(
            config.rules[0],
            LifecycleRule {
                id: "logs".into(),
                enabled: true,
                prefix: "logs/".into(),
                expiration_days: Some(3),
                abort_incomplete_days: Some(1),
            }
        );
        assert!(!config.rules[1].enabled);
        assert_eq!(config.rules[1].prefix, "");
        assert_eq!(from_xml(&document(&config)).unwrap(), config);
    }

    #[test]
    fn what_atrest_does_not_apply_is_refused_by_name() {
        for (element, body) in [
            ("Transition", "<Transition><Days>1</Days><StorageClass>GLACIER</StorageClass></Transition>"),
            ("NoncurrentVersionExpiration", "<NoncurrentVersionExpiration><NoncurrentDays>1</NoncurrentDays></NoncurrentVersionExpiration>"),
            ("Date", "<Expiration><Date>2030-01-01T00:00:00Z</Date></Expiration>"),
            ("ExpiredObjectDeleteMarker", "<Expiration><ExpiredObjectDeleteMarker>true</ExpiredObjectDeleteMarker></Expiration>"),
            ("Tag", "<Filter><Tag><Key>k</Key><Value>v</Value></Tag></Filter><Expiration><Days>1</Days></Expiration>"),
        ] {
            let xml = format!(
                "<LifecycleConfiguration><Rule><ID>r</ID><Status>Enabled</Status>{body}</Rule></LifecycleConfiguration>"
            );
            let err = from_xml(xml.as_bytes()).unwrap_err();
            assert_eq!(err.s3_code(), "NotImplemented", "{element}: {err}");
            assert!(err.message().contains(element), "{element}: {err}");
        }
    }

    #[test]
    fn malformed_rules_are_refused() {
        for body in [
            "<Rule><ID>r</ID><Expiration><Days>1</Days></Expiration></Rule>",
            "<Rule><ID>r</ID><Status>enabled</Status><Expiration><Days>1</Days></Expiration></Rule>",
            "<Rule><ID>r</ID><Status>Enabled</Status><Expiration></Expiration></Rule>",
            "<Rule><ID>r</ID><Status>Enabled</Status><Expiration><Days>-1</Days></Expiration></Rule>",
            "<Rule><ID>r</ID><Status>Enabled</Status><Expiration><Days>1</Days><Days>2</Days></Expiration></Rule>",
            "<Rule><ID>r</ID><Status>Enabled</Status><AbortIncompleteMultipartUpload></AbortIncompleteMultipartUpload></Rule>",
        ] {
            let xml = format!("<LifecycleConfiguration>{body}</LifecycleConfiguration>");
            let err = from_xml(xml.as_bytes()).unwrap_err();
            assert_eq!(err.reply(crate::error::Protocol::S3).status, 400, "{body}: {err}");
        }
    }
}
