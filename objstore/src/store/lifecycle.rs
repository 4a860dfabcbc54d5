//! S3 lifecycle configurations (`lifecycle` in `bucket.json`) and the sweep that
//! applies them: current objects past their rule's `Expiration Days` are deleted as
//! a DeleteObject would (a delete marker in a versioned bucket), and multipart
//! uploads past `AbortIncompleteMultipartUpload DaysAfterInitiation` are aborted,
//! their encrypted parts removed.
//!
//! Only what is listed here is stored: the S3 front end refuses a configuration
//! with any other element rather than keeping a rule that would never act.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::ObjectStore;
use crate::Error;

/// Most rules in one configuration (S3's limit).
pub const MAX_LIFECYCLE_RULES: usize = 1000;
/// Longest rule ID (S3's limit).
pub const MAX_RULE_ID: usize = 255;

/// One lifecycle rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRule {
    /// Unique within the configuration, 1..=255 characters.
    pub id: String,
    /// `Status` Enabled (a Disabled rule is kept and does nothing).
    pub enabled: bool,
    /// `Filter/Prefix` (or the legacy rule-level `Prefix`); empty: every key.
    pub prefix: String,
    /// `Expiration/Days`: current objects this many days after their last write.
    pub expiration_days: Option<u32>,
    /// `AbortIncompleteMultipartUpload/DaysAfterInitiation`.
    pub abort_incomplete_days: Option<u32>,
}

/// A bucket's lifecycle configuration (PutBucketLifecycleConfiguration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleConfiguration {
    /// The rules, in the order they were put.
    pub rules: Vec<LifecycleRule>,
}

impl LifecycleConfiguration {
    /// S3's rules for a configuration: 1..=1000 rules, unique IDs of 1..=255
    /// characters, each rule with an action and every day count at least 1.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what: String| Err(Error::InvalidArgument(what));
        if self.rules.is_empty() || self.rules.len() > MAX_LIFECYCLE_RULES {
            return invalid(format!(
                "a lifecycle configuration holds 1 to {MAX_LIFECYCLE_RULES} rules, not {}",
                self.rules.len()
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.id.is_empty() || rule.id.chars().count() > MAX_RULE_ID {
                return invalid(format!(
                    "a rule ID has 1 to {MAX_RULE_ID} characters (rule {})",
                    i + 1
                ));
            }
            if self.rules[..i].iter().any(|r| r.id == rule.id) {
                return invalid(format!("the rule ID '{}' is used twice", rule.id));
            }
            if rule.expiration_days.is_none() && rule.abort_incomplete_days.is_none() {
                return invalid(format!(
                    "the rule '{}' has no action (Expiration or \
                     AbortIncompleteMultipartUpload)",
                    rule.id
                ));
            }
            if rule.expiration_days == Some(0) || rule.abort_incomplete_days == Some(0) {
                return invalid(format!(
                    "'Days' and 'DaysAfterInitiation' must be positive integers (rule '{}')",
                    rule.id
                ));
            }
        }
        Ok(())
    }
}

/// What one sweep did.
#[derive(Debug, Default)]
pub struct LifecycleSweep {
    /// (bucket, key) of every current object expired.
    pub expired: Vec<(String, String)>,
    /// (bucket, key, upload id) of every multipart upload aborted.
    pub aborted: Vec<(String, String, String)>,
    /// Buckets the sweep could not finish, with why (it goes on with the others).
    pub failed: Vec<(String, Error)>,
}

/// Whether something made at `then` is `days` lifecycle days old at `now`.
fn older_than(then: OffsetDateTime, days: u32, day: Duration, now: OffsetDateTime) -> bool {
    let age = day.saturating_mul(days);
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::MAX);
    then.checked_add(age).is_some_and(|due| due <= now)
}

impl ObjectStore {
    /// PutBucketLifecycleConfiguration (`Some`, validated here) or
    /// DeleteBucketLifecycle (`None`).
    pub fn put_bucket_lifecycle(
        &self,
        name: &str,
        lifecycle: Option<LifecycleConfiguration>,
    ) -> Result<(), Error> {
        if let Some(config) = &lifecycle {
            config.validate()?;
        }
        self.update_bucket(name, |info| info.lifecycle = lifecycle)?;
        Ok(())
    }

    /// GetBucketLifecycleConfiguration; NoSuchLifecycleConfiguration when none.
    pub fn bucket_lifecycle(&self, name: &str) -> Result<LifecycleConfiguration, Error> {
        self.bucket(name)?
            .lifecycle
            .ok_or_else(|| Error::NoSuchLifecycleConfiguration {
                bucket: name.to_owned(),
            })
    }

    /// Applies every bucket's enabled lifecycle rules as of `now`, a lifecycle day
    /// lasting `day` (24 h outside tests). An object is expired only if it is still
    /// the one listed (its ETag is checked under the commit lock, as `If-Match`
    /// does), so an object overwritten during the sweep is kept. No key-service call
    /// is made: deleting and aborting need no key.
    pub fn apply_lifecycle(&self, now: OffsetDateTime, day: Duration) -> LifecycleSweep {
        let mut sweep = LifecycleSweep::default();
        let buckets = match self.list_buckets() {
            Ok(buckets) => buckets,
            Err(err) => {
                sweep.failed.push((String::new(), err));
                return sweep;
            }
        };
        for bucket in buckets {
            let Some(config) = &bucket.lifecycle else {
                continue;
            };
            if let Err(err) = self.sweep_bucket(&bucket.name, config, now, day, &mut sweep) {
                sweep.failed.push((bucket.name.clone(), err));
            }
        }
        sweep
    }

    fn sweep_bucket(
        &self,
        bucket: &str,
        config: &LifecycleConfiguration,
        now: OffsetDateTime,
        day: Duration,
        sweep: &mut LifecycleSweep,
    ) -> Result<(), Error> {
        let rules: Vec<&LifecycleRule> = config.rules.iter().filter(|r| r.enabled).collect();
        if rules.iter().any(|r| r.expiration_days.is_some()) {
            let mut request = crate::ListObjectsRequest::default();
            loop {
                let page = self.list_objects_v2(bucket, &request)?;
                for object in &page.objects {
                    let due = rules.iter().any(|rule| {
                        object.key.starts_with(&rule.prefix)
                            && rule.expiration_days.is_some_and(|days| {
                                older_than(object.last_modified, days, day, now)
                            })
                    });
                    if !due {
                        continue;
                    }
                    match self.delete_object_version(bucket, &object.key, Some(&object.etag), None)
                    {
                        Ok(_) => sweep.expired.push((bucket.to_owned(), object.key.clone())),
                        // Overwritten or deleted since it was listed: not this
                        // object any more.
                        Err(Error::PreconditionFailed(_) | Error::NoSuchKey { .. }) => {}
                        Err(err) => return Err(err),
                    }
                }
                match page.next_continuation_token {
                    Some(token) => request.continuation_token = Some(token),
                    None => break,
                }
            }
        }
        if rules.iter().any(|r| r.abort_incomplete_days.is_some()) {
            for upload in self.list_multipart_uploads(bucket)? {
                let due = rules.iter().any(|rule| {
                    upload.key.starts_with(&rule.prefix)
                        && rule
                            .abort_incomplete_days
                            .is_some_and(|days| older_than(upload.initiated, days, day, now))
                });
                if !due {
                    continue;
                }
                match self.abort_multipart_upload(bucket, &upload.key, &upload.upload_id) {
                    Ok(()) => sweep.aborted.push((
                        bucket.to_owned(),
                        upload.key.clone(),
                        upload.upload_id.clone(),
                    )),
                    // Completed or aborted by a client meanwhile.
                    Err(Error::NoSuchUpload { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str) -> LifecycleRule {
        LifecycleRule {
            id: id.into(),
            enabled: true,
            prefix: String::new(),
            expiration_days: Some(1),
            abort_incomplete_days: None,
        }
    }

    #[test]
    fn configurations_s3_refuses_are_refused() {
        let config = |rules| LifecycleConfiguration { rules };
        config(vec![rule("a")]).validate().unwrap();
        assert!(config(vec![]).validate().is_err());
        assert!(config(vec![rule("a"), rule("a")]).validate().is_err());
        assert!(config(vec![rule("")]).validate().is_err());
        assert!(config(vec![rule(&"x".repeat(256))]).validate().is_err());
        let mut idle = rule("idle");
        idle.expiration_days = None;
        assert!(config(vec![idle]).validate().is_err());
        let mut zero = rule("zero");
        zero.expiration_days = Some(0);
        assert!(config(vec![zero]).validate().is_err());
    }

    #[test]
    fn age_is_counted_in_lifecycle_days_without_overflow() {
        let then = OffsetDateTime::UNIX_EPOCH;
        let day = Duration::from_secs(10);
        assert!(!older_than(
            then,
            2,
            day,
            then + time::Duration::seconds(19)
        ));
        assert!(older_than(then, 2, day, then + time::Duration::seconds(20)));
        assert!(!older_than(then, u32::MAX, Duration::MAX, then));
    }
}
