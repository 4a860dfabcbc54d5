//! Which service a request is for, told by its shape alone.

use crypto_core::kms::Operation;

use crate::error::GatewayError;
use crate::kms_api;

/// Which service a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A KMS JSON call, named by its `X-Amz-Target` header.
    Kms(Operation),
    /// Anything else: an S3 REST request.
    S3,
}

impl Route {
    /// Routes by the request's shape: the KMS JSON protocol is `POST` with an
    /// `X-Amz-Target` of `TrentService.*`; with S3 served, everything else is S3.
    pub fn of(parts: &http::request::Parts, services: Services) -> Result<Route, GatewayError> {
        let target = parts
            .headers
            .get("x-amz-target")
            .map(|v| {
                v.to_str()
                    .map_err(|_| GatewayError::BadRequest("X-Amz-Target is not ASCII text".into()))
            })
            .transpose()?;
        match target {
            _ if !services.kms => Ok(Route::S3),
            None if services.s3 => Ok(Route::S3),
            Some(target) => {
                if parts.method != http::Method::POST {
                    return Err(GatewayError::BadRequest(format!(
                        "the JSON protocol takes POST, not {}",
                        parts.method
                    )));
                }
                Ok(Route::Kms(kms_api::parse_target(target)?))
            }
            None => Err(GatewayError::UnknownOperation(
                "no service here answers this request: KMS requests are POST / with an \
                 X-Amz-Target header"
                    .into(),
            )),
        }
    }

    /// The service name SigV4 credential scopes must carry.
    pub fn signing_service(self) -> &'static str {
        match self {
            Route::Kms(_) => "kms",
            Route::S3 => "s3",
        }
    }
}

/// Which APIs a gateway serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Services {
    /// Whether KMS JSON calls (`X-Amz-Target: TrentService.*`) are answered.
    pub kms: bool,
    /// Whether S3 REST requests are answered.
    pub s3: bool,
}
