//! ListObjectsV2 over a bucket's keys: prefix, delimiter and common prefixes,
//! max-keys, start-after and continuation tokens, in lexicographic (UTF-8 byte) order.

use crate::Error;

/// S3's default and largest page.
pub const MAX_KEYS: usize = 1000;

/// The parameters of ListObjectsV2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListObjectsRequest {
    /// Only keys that start with this (empty: all).
    pub prefix: String,
    /// Usually `/`; empty means no grouping.
    pub delimiter: String,
    /// 0..=1000 entries (keys plus common prefixes); `None` means 1000; larger values
    /// are lowered to 1000, as S3 does.
    pub max_keys: Option<usize>,
    /// A previous page's `next_continuation_token`; wins over `start_after`.
    pub continuation_token: Option<String>,
    /// List only keys after this one.
    pub start_after: Option<String>,
}

/// Which keys and common prefixes one page holds, before object metadata is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PagePlan {
    /// Indexes into the sorted key list.
    pub keys: Vec<usize>,
    pub common_prefixes: Vec<String>,
    pub next_continuation_token: Option<String>,
}

/// Where a page resumes: after a key, or after every key under a common prefix.
enum Resume {
    AfterKey(String),
    AfterPrefix(String),
}

impl Resume {
    fn token(&self) -> String {
        match self {
            Resume::AfterKey(k) => hex::encode(format!("k{k}")),
            Resume::AfterPrefix(p) => hex::encode(format!("p{p}")),
        }
    }

    fn parse(token: &str) -> Result<Resume, Error> {
        let invalid =
            || Error::InvalidArgument("The continuation token provided is incorrect".into());
        let bytes = hex::decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        match text.split_at_checked(1) {
            Some(("k", key)) => Ok(Resume::AfterKey(key.to_owned())),
            Some(("p", prefix)) if !prefix.is_empty() => Ok(Resume::AfterPrefix(prefix.to_owned())),
            _ => Err(invalid()),
        }
    }

    fn skips(&self, key: &str) -> bool {
        match self {
            Resume::AfterKey(k) => key <= k.as_str(),
            Resume::AfterPrefix(p) => key < p.as_str() || key.starts_with(p.as_str()),
        }
    }
}

/// ListObjects (version 1)'s `marker` as a continuation token of the same listing:
/// a marker that ends at the listing's first delimiter after the prefix is a common
/// prefix (the `NextMarker` of a page that ended on one), after which every key under
/// it is skipped; any other marker resumes after that key.
pub fn marker_token(marker: &str, prefix: &str, delimiter: &str) -> String {
    let is_group = !delimiter.is_empty()
        && marker
            .strip_prefix(prefix)
            .and_then(|rest| {
                rest.find(delimiter)
                    .map(|at| at + delimiter.len() == rest.len())
            })
            .unwrap_or(false);
    if is_group {
        Resume::AfterPrefix(marker.to_owned()).token()
    } else {
        Resume::AfterKey(marker.to_owned()).token()
    }
}

/// Plans one page over `keys`, which must be sorted ascending and unique.
pub(crate) fn plan_page(keys: &[String], req: &ListObjectsRequest) -> Result<PagePlan, Error> {
    let max = req.max_keys.unwrap_or(MAX_KEYS).min(MAX_KEYS);
    let resume = match (&req.continuation_token, &req.start_after) {
        (Some(token), _) => Some(Resume::parse(token)?),
        (None, Some(after)) => Some(Resume::AfterKey(after.clone())),
        (None, None) => None,
    };
    let mut plan = PagePlan {
        keys: Vec::new(),
        common_prefixes: Vec::new(),
        next_continuation_token: None,
    };
    let mut emitted = 0usize;
    let mut last: Option<Resume> = None;
    let start = keys.partition_point(|k| k.as_str() < req.prefix.as_str());
    for (i, key) in keys.iter().enumerate().skip(start) {
        if !key.starts_with(req.prefix.as_str()) {
            break;
        }
        if resume.as_ref().is_some_and(|r| r.skips(key)) {
            continue;
        }
        let group = if req.delimiter.is_empty() {
            None
        } else {
            key[req.prefix.len()..]
                .find(req.delimiter.as_str())
                .map(|at| key[..req.prefix.len() + at + req.delimiter.len()].to_owned())
        };
        if let (Some(group), Some(Resume::AfterPrefix(p))) = (&group, &last) {
            if group == p {
                continue;
            }
        }
        if emitted == max {
            // One more entry exists: the page is truncated, resume after the last one.
            plan.next_continuation_token = last.as_ref().map(Resume::token);
            break;
        }
        emitted += 1;
        match group {
            Some(group) => {
                plan.common_prefixes.push(group.clone());
                last = Some(Resume::AfterPrefix(group));
            }
            None => {
                plan.keys.push(i);
                last = Some(Resume::AfterKey(key.clone()));
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(list: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    /// Pages through everything and returns (keys, prefixes) in order.
    fn all_pages(keys: &[String], mut req: ListObjectsRequest) -> (Vec<String>, Vec<String>) {
        let (mut ks, mut ps) = (Vec::new(), Vec::new());
        loop {
            let plan = plan_page(keys, &req).unwrap();
            ks.extend(plan.keys.iter().map(|&i| keys[i].clone()));
            ps.extend(plan.common_prefixes);
            match plan.next_continuation_token {
                Some(t) => req.continuation_token = Some(t),
                None => return (ks, ps),
            }
        }
    }

    #[test]
    fn delimiter_groups_into_common_prefixes() {
        let k = keys(&["a/1", "a/2", "b", "c/x/y", "c/z", "d"]);
        let req = ListObjectsRequest {
            delimiter: "/".into(),
            ..Default::default()
        };
        let plan = plan_page(&k, &req).unwrap();
        let listed: Vec<&str> = plan.keys.iter().map(|&i| k[i].as_str()).collect();
        assert_eq!(listed, ["b", "d"]);
        assert_eq!(plan.common_prefixes, ["a/", "c/"]);
        assert_eq!(plan.next_continuation_token, None);

        let req = ListObjectsRequest {
            prefix: "c/".into(),
            delimiter: "/".into(),
            ..Default::default()
        };
        let plan = plan_page(&k, &req).unwrap();
        assert_eq!(plan.common_prefixes, ["c/x/"]);
        assert_eq!(
            plan.keys.iter().map(|&i| k[i].as_str()).collect::<Vec<_>>(),
            ["c/z"]
        );
    }

    #[test]
    fn max_keys_and_tokens_page_through_prefixes() {
        let k = keys(&["a/1", "a/2", "b", "c/x", "d"]);
        let req = ListObjectsRequest {
            delimiter: "/".into(),
            max_keys: Some(1),
            ..Default::default()
        };
        let first = plan_page(&k, &req).unwrap();
        assert_eq!(first.common_prefixes, ["a/"]);
        assert!(first.next_continuation_token.is_some());
        let (ks, ps) = all_pages(&k, req);
        assert_eq!(ks, ["b", "d"]);
        assert_eq!(ps, ["a/", "c/"]);
    }

    #[test]
    fn start_after_and_zero_max_keys() {
        let k = keys(&["a", "b", "c"]);
        let req = ListObjectsRequest {
            start_after: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(plan_page(&k, &req).unwrap().keys, [1, 2]);
        let req = ListObjectsRequest {
            max_keys: Some(0),
            ..Default::default()
        };
        let plan = plan_page(&k, &req).unwrap();
        assert!(plan.keys.is_empty() && plan.next_continuation_token.is_none());
    }

    #[test]
    fn bad_tokens_are_invalid_argument() {
        let k = keys(&["a"]);
        for token in ["zz", "00", &hex::encode("x1"), &hex::encode("p")] {
            let req = ListObjectsRequest {
                continuation_token: Some(token.to_string()),
                ..Default::default()
            };
            assert_eq!(
                plan_page(&k, &req).unwrap_err().s3_code(),
                "InvalidArgument"
            );
        }
    }

    /// The model: group every matching key, dedup, in order.
    fn model(
        keys: &[String],
        prefix: &str,
        delim: &str,
        after: &str,
    ) -> (Vec<String>, Vec<String>) {
        let (mut ks, mut ps): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        for k in keys
            .iter()
            .filter(|k| k.starts_with(prefix) && k.as_str() > after)
        {
            match (!delim.is_empty())
                .then(|| k[prefix.len()..].find(delim))
                .flatten()
            {
                Some(at) => {
                    let p = k[..prefix.len() + at + delim.len()].to_string();
                    if ps.last() != Some(&p) {
                        ps.push(p);
                    }
                }
                None => ks.push(k.clone()),
            }
        }
        (ks, ps)
    }

    proptest! {
        #[test]
        fn prop_paging_matches_model(
            set in proptest::collection::btree_set("[ab/]{1,5}", 0..30),
            prefix in "[ab/]{0,2}",
            slash in any::<bool>(),
            max in 1usize..5,
            after in "[ab/]{0,3}",
        ) {
            let k: Vec<String> = set.into_iter().collect();
            let delim = if slash { "/" } else { "" };
            let req = ListObjectsRequest {
                prefix: prefix.clone(),
                delimiter: delim.into(),
                max_keys: Some(max),
                start_after: Some(after.clone()),
                ..Default::default()
            };
            // Common prefixes that sort before start-after but contain later keys are
            // still listed, as on S3.
            let got = all_pages(&k, req);
            let want = model(&k, &prefix, delim, &after);
            prop_assert_eq!(got, want);
        }
    }
}
