//! The S3 store (aws-sdk-s3). `AWS_ENDPOINT_URL` points it at any S3-compatible
//! server (MinIO, s3s-fs, Ceph, R2); path-style addressing is then used, since such
//! servers rarely have per-bucket DNS names.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, meta::region::RegionProviderChain};
use aws_sdk_s3::{
    Client,
    config::{http::HttpResponse, retry::RetryConfig, timeout::TimeoutConfig},
    error::{DisplayErrorContext, SdkError},
    presigning::PresigningConfig,
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::Bytes;

use super::{ObjectMeta, Store, StoreError};

/// Objects larger than this go up in parts.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Images as objects in a bucket of an S3-compatible server.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
}

impl S3Store {
    /// Builds the client from the AWS SDK's standard environment
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …).
    pub async fn from_env(bucket: &str, prefix: &str) -> Self {
        let region = RegionProviderChain::default_provider().or_else("us-east-1");
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .load()
            .await;
        let endpoint = sdk.endpoint_url().map(str::to_string);
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(endpoint.is_some())
            // The SDK retries 5xx, throttling and timeouts with jittered exponential backoff.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(4)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        S3Store {
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
        }
    }

    /// A store on an explicit endpoint with static keys (tests, tools).
    pub fn from_parts(
        endpoint: &str,
        access_key: &str,
        secret_key: &str,
        bucket: &str,
        prefix: &str,
    ) -> Self {
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                access_key, secret_key, None, None, "renderq",
            ))
            .force_path_style(true)
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .build();
        S3Store {
            client: Client::from_conf(conf),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: Some(endpoint.to_string()),
        }
    }

    /// The S3 client, for reading objects back.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket images go to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put_multipart(
        &self,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(meta.content_type)
            .set_metadata(Some(metadata(meta)))
            .send()
            .await
            .map_err(|e| store_error("starting a multipart upload", e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            for (i, chunk) in body.chunks(PART_SIZE).enumerate() {
                let number = i as i32 + 1;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.slice_ref(chunk)))
                    .send()
                    .await
                    .map_err(|e| store_error("uploading a part", e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| store_error("completing a multipart upload", e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort: an abandoned upload only costs storage until lifecycle rules clean it.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

fn metadata(meta: &ObjectMeta) -> std::collections::HashMap<String, String> {
    [
        ("seed".to_string(), meta.seed.to_string()),
        ("model".to_string(), meta.model.clone()),
        ("job-id".to_string(), meta.job_id.clone()),
    ]
    .into()
}

fn store_error<E>(what: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + 'static,
{
    let retry = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status >= 500 || status == 429 || status == 408
        }
        _ => false,
    };
    StoreError {
        message: format!("S3 {what}: {}", DisplayErrorContext(&e)),
        retry,
    }
}

#[async_trait]
impl Store for S3Store {
    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| store_error(&format!("bucket `{}`", self.bucket), e))?;
        Ok(())
    }

    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError> {
        if body.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(key, body, meta).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(meta.content_type)
            .set_metadata(Some(metadata(meta)))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| store_error("upload", e))?;
        Ok(())
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn presigns(&self) -> bool {
        true
    }

    async fn share_url(&self, key: &str, expires: Duration) -> Result<String, StoreError> {
        let config = PresigningConfig::expires_in(expires).map_err(|e| StoreError {
            message: format!("presigning: {e}"),
            retry: false,
        })?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| store_error("presigning", e))?;
        Ok(presigned.uri().to_string())
    }

    async fn read_into(
        &self,
        key: &str,
        cap: u64,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, StoreError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| store_error("download", e))?;
        if object.content_length().is_some_and(|n| n as u64 > cap) {
            return Err(super::over_cap(&self.url(key), cap));
        }
        let mut body = object.body;
        let mut read = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError {
                message: format!("S3 download: {e}"),
                retry: true,
            })?;
            read += chunk.len() as u64;
            if read > cap {
                return Err(super::over_cap(&self.url(key), cap));
            }
            out.write_all(&chunk).map_err(|e| StoreError {
                message: format!("writing the download of {key}: {e}"),
                retry: false,
            })?;
        }
        Ok(read)
    }

    fn url(&self, key: &str) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("{}/{}/{key}", endpoint.trim_end_matches('/'), self.bucket),
            None => format!("s3://{}/{key}", self.bucket),
        }
    }
}
