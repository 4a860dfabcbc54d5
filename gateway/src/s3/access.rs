//! Who may do what with a bucket and its objects, as the client configures it: object
//! ACLs (the canned `private` and `public-read`, PutObjectAcl, GetObjectAcl), bucket
//! policies (PutBucketPolicy, GetBucketPolicy, DeleteBucketPolicy; parsed and
//! evaluated by [`super::policy`]) and the public access block (Put-, Get-,
//! DeletePublicAccessBlock). Owners are accounts, shown by S3's canonical user id.

use http::{HeaderMap, StatusCode};
use objstore::Acl;
use sha2::{Digest, Sha256};

use super::auth::SecureTransport;
use super::routing::Call;
use super::xml::{XmlDocument, XmlWriter};
use super::{header, insert, policy, S3Answer, S3Service};
use crate::error::GatewayError;

const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

/// The account of a principal ARN (`arn:aws:iam::ACCOUNT:...`).
pub(super) fn account_of(arn: &str) -> &str {
    arn.split(':').nth(4).unwrap_or_default()
}

/// S3's canonical user id of an account: 64 hex digits.
pub(super) fn canonical_id(account: &str) -> String {
    hex::encode(Sha256::digest(
        format!("atrest-s3-owner:{account}").as_bytes(),
    ))
}

pub(super) fn owner_xml(w: &mut XmlWriter, owner_arn: &str) {
    let account = account_of(owner_arn);
    w.open("Owner")
        .leaf("ID", &canonical_id(account))
        .leaf("DisplayName", account)
        .close("Owner");
}

/// What a bucket policy's conditions look at in a request.
pub(super) fn request_facts(parts: &http::request::Parts) -> policy::RequestFacts {
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    policy::RequestFacts {
        secure_transport: parts.extensions.get::<SecureTransport>().is_some(),
        sse: text("x-amz-server-side-encryption"),
        sse_kms_key_id: text("x-amz-server-side-encryption-aws-kms-key-id"),
    }
}

/// Whether `principal` may do `action` on `resource` of `bucket`: an explicit Deny of
/// the bucket policy refuses; principals of the owner's account need no Allow,
/// others do. The owner's account may always manage the policy itself, so that a
/// policy cannot lock the owner out.
pub(super) fn authorize(
    bucket: &objstore::BucketInfo,
    principal: &str,
    action: &str,
    resource: &str,
    facts: &policy::RequestFacts,
) -> Result<(), GatewayError> {
    let denied = || GatewayError::AccessDenied("Access Denied".into());
    let same_account = account_of(&bucket.owner) == account_of(principal);
    let managing = matches!(
        action,
        "s3:PutBucketPolicy" | "s3:GetBucketPolicy" | "s3:DeleteBucketPolicy"
    );
    if managing {
        return if same_account { Ok(()) } else { Err(denied()) };
    }
    let Some(text) = &bucket.policy else {
        return if same_account { Ok(()) } else { Err(denied()) };
    };
    let policy = policy::BucketPolicy::parse(text, &bucket.name)?;
    let restricted = bucket
        .public_access_block
        .is_some_and(|b| b.restrict_public_buckets)
        && policy.is_public();
    if restricted && !same_account {
        return Err(denied());
    }
    match policy.evaluate(principal, action, resource, facts) {
        policy::Decision::Deny => Err(denied()),
        policy::Decision::Allow => Ok(()),
        policy::Decision::NotMentioned if same_account => Ok(()),
        policy::Decision::NotMentioned => Err(denied()),
    }
}

/// `x-amz-grant-*` (explicit ACL grants): atrest models the canned ACLs private and
/// public-read only, so a grant is refused rather than stored nowhere.
pub(super) fn refuse_grant_headers(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers
        .keys()
        .find(|name| name.as_str().starts_with("x-amz-grant-"))
    {
        Some(name) => Err(GatewayError::NotImplemented(format!(
            "ACL grants ({name}) are not implemented: atrest models the canned ACLs private \
             and public-read only (x-amz-acl)"
        ))),
        None => Ok(()),
    }
}

/// A canned ACL from an AccessControlPolicy body: READ for AllUsers makes it
/// public-read; owner-only grants make it private; anything else is not modelled.
pub(super) fn acl_from_policy(body: &[u8]) -> Result<Acl, GatewayError> {
    let doc = XmlDocument::parse(body, "AccessControlPolicy")?;
    let uris = doc.all("URI")?;
    let permissions = doc.all("Permission")?;
    let public = uris.iter().any(|u| u == ALL_USERS);
    let other_groups = uris.iter().any(|u| u != ALL_USERS);
    if other_groups {
        return Err(GatewayError::NotImplemented(
            "atrest models the canned ACLs private and public-read only".into(),
        ));
    }
    if public && !permissions.iter().any(|p| p == "READ") {
        return Err(GatewayError::NotImplemented(
            "atrest models the canned ACLs private and public-read only".into(),
        ));
    }
    Ok(if public {
        Acl::PublicRead
    } else {
        Acl::Private
    })
}

/// GetObjectAcl's AccessControlPolicy for a canned ACL.
pub(super) fn acl_document(owner_arn: &str, acl: Acl) -> Vec<u8> {
    const XSI: &str = "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"";
    let account = account_of(owner_arn);
    let mut w = XmlWriter::new("AccessControlPolicy");
    owner_xml(&mut w, owner_arn);
    w.open("AccessControlList")
        .open("Grant")
        .open_with("Grantee", &format!("{XSI} xsi:type=\"CanonicalUser\""))
        .leaf("ID", &canonical_id(account))
        .leaf("DisplayName", account)
        .close("Grantee")
        .leaf("Permission", "FULL_CONTROL")
        .close("Grant");
    if acl == Acl::PublicRead {
        w.open("Grant")
            .open_with("Grantee", &format!("{XSI} xsi:type=\"Group\""))
            .leaf("URI", ALL_USERS)
            .close("Grantee")
            .leaf("Permission", "READ")
            .close("Grant");
    }
    w.close("AccessControlList");
    w.finish("AccessControlPolicy")
}

impl S3Service {
    /// BlockPublicAcls: a request that would make something public-read is refused.
    pub(super) fn refuse_public_acl(&self, bucket: &str, acl: Acl) -> Result<(), GatewayError> {
        let blocked = self
            .store
            .bucket(bucket)?
            .public_access_block
            .is_some_and(|b| b.block_public_acls);
        if blocked && acl == Acl::PublicRead {
            return Err(GatewayError::AccessDenied(
                "Access Denied: the bucket's BlockPublicAcls refuses a public-read ACL".into(),
            ));
        }
        Ok(())
    }

    /// PutObjectAcl: a canned ACL (`x-amz-acl`) or an AccessControlPolicy body.
    pub(super) fn put_object_acl(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        let parts = call.parts;
        let acl = match header(&parts.headers, "x-amz-acl")? {
            Some(canned) => Acl::parse(canned)?,
            None if !body.is_empty() => acl_from_policy(body)?,
            None => {
                return Err(GatewayError::InvalidRequest(
                    "PutObjectAcl needs an x-amz-acl header or an AccessControlPolicy \
                     body"
                        .into(),
                ))
            }
        };
        self.refuse_public_acl(bucket, acl)?;
        self.store.put_object_acl(bucket, &request.key, acl)?;
        Ok(S3Answer::empty(StatusCode::OK))
    }

    /// GetObjectAcl: the owner's FULL_CONTROL grant, and AllUsers' READ for public-read.
    pub(super) fn get_object_acl(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let request = call.request;
        let acl = self.store.object_acl(bucket, &request.key)?;
        let owner = self.store.bucket(bucket)?.owner;
        Ok(S3Answer::xml(acl_document(&owner, acl)))
    }

    /// PutBucketPolicy: a policy atrest can evaluate, unless BlockPublicPolicy refuses it.
    pub(super) fn put_bucket_policy(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let text = std::str::from_utf8(body).map_err(|_| {
            GatewayError::Object(objstore::Error::MalformedPolicy(
                "the policy is not UTF-8".into(),
            ))
        })?;
        let parsed = policy::BucketPolicy::parse(text, bucket)?;
        let block = self.store.bucket(bucket)?.public_access_block;
        if parsed.is_public() && block.is_some_and(|b| b.block_public_policy) {
            return Err(GatewayError::AccessDenied(
                "Access Denied: the bucket's BlockPublicPolicy refuses a policy that \
                 allows anyone"
                    .into(),
            ));
        }
        self.store
            .put_bucket_policy(bucket, Some(text.to_owned()))?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    /// GetBucketPolicy: the policy as it was put.
    pub(super) fn get_bucket_policy(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let text = self.store.bucket_policy(bucket)?;
        let mut answer = S3Answer::xml(text.into_bytes());
        insert(&mut answer.headers, "content-type", "application/json");
        Ok(answer)
    }

    /// DeleteBucketPolicy.
    pub(super) fn delete_bucket_policy(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        self.store.put_bucket_policy(bucket, None)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    /// PutPublicAccessBlock: the four flags, absent ones false.
    pub(super) fn put_public_access_block(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let doc = XmlDocument::parse(body, "PublicAccessBlockConfiguration")?;
        let flag = |name: &str| -> Result<bool, GatewayError> {
            match doc.get(name)?.as_deref() {
                None | Some("false") => Ok(false),
                Some("true") => Ok(true),
                Some(_) => Err(GatewayError::MalformedXml(format!(
                    "{name} must be true or false"
                ))),
            }
        };
        let block = objstore::PublicAccessBlock {
            block_public_acls: flag("BlockPublicAcls")?,
            ignore_public_acls: flag("IgnorePublicAcls")?,
            block_public_policy: flag("BlockPublicPolicy")?,
            restrict_public_buckets: flag("RestrictPublicBuckets")?,
        };
        self.store.put_public_access_block(bucket, Some(block))?;
        Ok(S3Answer::empty(StatusCode::OK))
    }

    /// GetPublicAccessBlock.
    pub(super) fn get_public_access_block(
        &self,
        call: &Call<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let block = self
            .store
            .bucket(bucket)?
            .public_access_block
            .ok_or_else(|| {
                GatewayError::Object(objstore::Error::NoSuchPublicAccessBlock {
                    bucket: bucket.to_owned(),
                })
            })?;
        let text = |b: bool| if b { "true" } else { "false" };
        let mut w = XmlWriter::new("PublicAccessBlockConfiguration");
        w.leaf("BlockPublicAcls", text(block.block_public_acls))
            .leaf("IgnorePublicAcls", text(block.ignore_public_acls))
            .leaf("BlockPublicPolicy", text(block.block_public_policy))
            .leaf("RestrictPublicBuckets", text(block.restrict_public_buckets));
        Ok(S3Answer::xml(w.finish("PublicAccessBlockConfiguration")))
    }

    /// DeletePublicAccessBlock.
    pub(super) fn delete_public_access_block(
        &self,
        call: &Call<'_>,
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        self.store.put_public_access_block(bucket, None)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_policies_map_to_canned_acls() {
        let public = acl_document("arn:aws:iam::000000000000:root", Acl::PublicRead);
        assert_eq!(acl_from_policy(&public).unwrap(), Acl::PublicRead);
        let private = acl_document("arn:aws:iam::000000000000:root", Acl::Private);
        assert_eq!(acl_from_policy(&private).unwrap(), Acl::Private);
        assert!(acl_from_policy(b"<Other/>").is_err());
    }
}
