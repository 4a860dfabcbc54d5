//! ListObjectsV2 over a bucket's object headers.

use std::path::PathBuf;

use crate::format::ObjectHeader;
use crate::list::{plan_page, ListObjectsRequest};
use crate::Error;

use super::{headers_in, ObjectInfo, ObjectStore, OBJECTS_DIR, OBJECT_EXT};

/// One page of ListObjectsV2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListObjectsPage {
    /// The objects of the page, by key.
    pub objects: Vec<ObjectInfo>,
    /// `CommonPrefixes`: the keys rolled up at the delimiter, each once.
    pub common_prefixes: Vec<String>,
    /// Set exactly when the listing is truncated (`IsTruncated`).
    pub next_continuation_token: Option<String>,
}

impl ListObjectsPage {
    /// `KeyCount`: keys plus common prefixes.
    pub fn key_count(&self) -> usize {
        self.objects.len() + self.common_prefixes.len()
    }

    /// `IsTruncated`: whether another page follows.
    pub fn is_truncated(&self) -> bool {
        self.next_continuation_token.is_some()
    }
}

impl ObjectStore {
    /// ListObjectsV2. Reads every object header of the bucket (no key-service call):
    /// cost grows with the bucket, which suits one machine's buckets.
    pub fn list_objects_v2(
        &self,
        bucket: &str,
        req: &ListObjectsRequest,
    ) -> Result<ListObjectsPage, Error> {
        self.bucket(bucket)?;
        let dir = self.bucket_dir(bucket).join(OBJECTS_DIR);
        let mut all: Vec<(String, PathBuf, ObjectHeader)> = headers_in(&dir, |path| {
            path.extension()
                .is_some_and(|x| x == OBJECT_EXT)
                .then_some(())
        })?
        .into_iter()
        .map(|((), path, header)| (header.bound.key.clone(), path, header))
        .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<String> = all.iter().map(|(k, _, _)| k.clone()).collect();
        let plan = plan_page(&keys, req)?;
        let objects = plan
            .keys
            .iter()
            .map(|&i| {
                let (_, path, header) = &all[i];
                Self::read_info(path, header)
            })
            .collect::<Result<_, Error>>()?;
        Ok(ListObjectsPage {
            objects,
            common_prefixes: plan.common_prefixes,
            next_continuation_token: plan.next_continuation_token,
        })
    }
}
