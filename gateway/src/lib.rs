//! atrest's AWS-compatible front: the HTTP server that speaks the AWS KMS JSON 1.1
//! API with SigV4 authentication, and a key service client for any
//! AWS-KMS-compatible endpoint.
//!
//! The public map:
//!
//! - [`sigv4`]: AWS Signature Version 4 — verification (header and presigned query)
//!   and signing, shared by the server and the client.
//! - [`credentials`]: the access keys the server accepts (`<home>/iam/`).
//! - [`server`]: the HTTP(S) server, [`server::Gateway`] and its router by service.
//! - [`kms_api`]: the KMS operations over any [`crypto_core::kms::KeyService`].
//! - [`s3`]: the S3 REST API (path-style) over [`objstore::ObjectStore`], with
//!   streaming bodies, aws-chunked uploads and flexible checksums.
//! - [`client`]: [`client::RemoteKms`], a `KeyService` reached over HTTP.
//! - [`keys`]: [`keys::Keys`], the local keystore or a remote key service, chosen once.
//! - [`console`]: the web console at `/console/` (sessions, pages, their API).
#![forbid(unsafe_code)]

pub mod client;
pub mod console;
pub mod credentials;
mod error;
pub mod keys;
pub mod kms_api;
pub mod s3;
pub mod server;
pub mod sigv4;

pub use client::{RemoteKms, RemoteKmsConfig};
pub use console::Console;
pub use credentials::{AccessKey, AccessKeyStatus, CredentialStore};
pub use error::{ErrorReply, FormFault, GatewayError, Protocol};
pub use server::{Gateway, RunningGateway, Services, TlsFiles};
