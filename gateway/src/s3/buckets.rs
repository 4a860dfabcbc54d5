//! The bucket operations: ListBuckets, CreateBucket, HeadBucket, DeleteBucket,
//! GetBucketLocation, and the bucket's versioning state (PutBucketVersioning,
//! GetBucketVersioning). Buckets belong to the signer's account.

use http::StatusCode;
use objstore::Acl;

use super::access::{account_of, owner_xml};
use super::routing::Call;
use super::xml::{XmlDocument, XmlWriter};
use super::{header, insert, iso_date, S3Answer, S3Service};
use crate::error::GatewayError;

impl S3Service {
    /// ListBuckets: the buckets of the signer's account.
    pub(super) fn list_buckets(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let principal = call.principal;
        let mut w = XmlWriter::new("ListAllMyBucketsResult");
        owner_xml(&mut w, principal);
        w.open("Buckets");
        for info in self.store.list_buckets()? {
            if account_of(&info.owner) != account_of(principal) {
                continue;
            }
            w.open("Bucket")
                .leaf("Name", &info.name)
                .leaf("CreationDate", &iso_date(info.creation_date))
                .close("Bucket");
        }
        w.close("Buckets");
        Ok(S3Answer::xml(w.finish("ListAllMyBucketsResult")))
    }

    /// CreateBucket, in this endpoint's region only; the bucket belongs to the signer's account.
    pub(super) fn create_bucket(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let parts = call.parts;
        let principal = call.principal;
        let region = call.region;
        if !body.is_empty() {
            let doc = XmlDocument::parse(body, "CreateBucketConfiguration")?;
            if let Some(location) = doc.get("LocationConstraint")? {
                if !location.is_empty() && location != region {
                    return Err(GatewayError::InvalidLocationConstraint(format!(
                        "The {location} location constraint is incompatible for the \
                         region specific endpoint this request was sent to ({region})."
                    )));
                }
            }
        }
        let acl = header(&parts.headers, "x-amz-acl")?
            .map(Acl::parse)
            .transpose()?;
        // S3 buckets belong to the account, not to the IAM identity that made
        // them.
        let owner = format!("arn:aws:iam::{}:root", account_of(principal));
        self.store.create_bucket(bucket, &owner)?;
        if let Some(acl) = acl {
            self.store.put_bucket_acl(bucket, acl)?;
        }
        let mut answer = S3Answer::empty(StatusCode::OK);
        insert(&mut answer.headers, "location", &format!("/{bucket}"));
        Ok(answer)
    }

    /// HeadBucket: the bucket exists and the caller may list it.
    pub(super) fn head_bucket(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let region = call.region;
        let mut answer = S3Answer::empty(StatusCode::OK);
        insert(&mut answer.headers, "x-amz-bucket-region", region);
        Ok(answer)
    }

    /// DeleteBucket: only an empty bucket.
    pub(super) fn delete_bucket(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        self.store.delete_bucket(bucket)?;
        Ok(S3Answer::empty(StatusCode::NO_CONTENT))
    }

    /// GetBucketLocation: this endpoint's region.
    pub(super) fn get_bucket_location(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let region = call.region;
        // us-east-1 is S3's empty location constraint.
        let mut w = XmlWriter::new("LocationConstraint");
        w.text(if region == "us-east-1" { "" } else { region });
        Ok(S3Answer::xml(w.finish("LocationConstraint")))
    }

    /// PutBucketVersioning (MFA delete is not implemented).
    pub(super) fn put_bucket_versioning(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let doc = XmlDocument::parse(body, "VersioningConfiguration")?;
        if doc.get("MfaDelete")?.as_deref() == Some("Enabled") {
            return Err(GatewayError::NotImplemented(
                "MFA delete is not implemented".into(),
            ));
        }
        let status = match doc.get("Status")?.as_deref() {
            Some("Enabled") => objstore::Versioning::Enabled,
            Some("Suspended") => objstore::Versioning::Suspended,
            _ => {
                return Err(GatewayError::MalformedXml(
                    "VersioningConfiguration's Status must be Enabled or Suspended".into(),
                ))
            }
        };
        self.store.put_bucket_versioning(bucket, status)?;
        Ok(S3Answer::empty(StatusCode::OK))
    }

    /// GetBucketVersioning: no Status until versioning was once set.
    pub(super) fn get_bucket_versioning(&self, call: &Call<'_>) -> Result<S3Answer, GatewayError> {
        let bucket = call.request.bucket.as_str();
        let mut w = XmlWriter::new("VersioningConfiguration");
        if let Some(status) = self.store.bucket_versioning(bucket)? {
            w.leaf("Status", status.as_str());
        }
        Ok(S3Answer::xml(w.finish("VersioningConfiguration")))
    }
}
