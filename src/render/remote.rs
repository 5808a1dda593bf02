//! `remote/<name>`: jobs rendered by an images endpoint. This is how renderq serves
//! NPUs, which candle cannot drive: SGLang serves GLM-Image on Ascend (and on NVIDIA)
//! behind an OpenAI-style `POST {base}/images/generations`; Zhipu's hosted API speaks a
//! close variant. The model sent is `<name>`.
//!
//! One request per job (each job has its own prompt and seed), at most
//! `concurrency` at a time per endpoint. 429, 5xx, timeouts and dropped connections
//! are tried again with backoff, honouring `Retry-After`; other 4xx answers fail the
//! job with the server's own message. The API key is sent as a bearer token, to the
//! endpoint's own origin only, and never appears in a log line or an error.

mod reply;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use base64::Engine;
use image::RgbImage;
use reqwest::{StatusCode, Url, header::HeaderMap};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{RenderError, RenderRequest, Renderer};
use reply::*;

/// Longest `Retry-After` honoured within one render; a longer one ends the render
/// with a `Retry` error and the job's own backoff takes over.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Default cap on a response body: a 4096×4096 PNG as base64, with room to spare.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 128 << 20;
/// Most characters of a server's error message kept in a job's error.
const MAX_MESSAGE: usize = 500;

/// Which dialect the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// OpenAI's images API as SGLang serves it: `model, prompt, size, n,
    /// response_format`, plus SGLang's `seed`, `negative_prompt`,
    /// `num_inference_steps`, `guidance_scale`.
    Openai,
    /// Zhipu's `/api/paas/v4/images/generations`: `model, prompt, size`; answers with URLs.
    Zhipu,
}

/// How an OpenAI-style endpoint returns the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseFormat {
    /// Images in the answer, base64-encoded.
    #[value(name = "b64_json")]
    B64Json,
    /// URLs in the answer, then fetched (the key goes only to the endpoint's origin).
    Url,
}

impl ResponseFormat {
    fn as_str(self) -> &'static str {
        match self {
            ResponseFormat::B64Json => "b64_json",
            ResponseFormat::Url => "url",
        }
    }
}

/// Where the remote endpoint is and how to talk to it.
#[derive(Clone)]
pub struct RemoteConfig {
    /// The API's base, e.g. `http://npu-host:30000/v1`; requests go to
    /// `{base}/images/generations`.
    pub base_url: String,
    /// The bearer key (`RENDERQ_REMOTE_API_KEY`).
    pub api_key: Option<String>,
    /// The API's dialect.
    pub flavor: Flavor,
    /// How an openai-flavoured endpoint returns images.
    pub response_format: ResponseFormat,
    /// Requests in flight to this endpoint, across all jobs of this worker.
    pub concurrency: usize,
    /// Whole-request limit (connect, generate, read).
    pub timeout: Duration,
    /// Tries per job within one render before the job's own retry takes over.
    pub attempts: u32,
    /// The first wait before a retry (doubling).
    pub backoff: Duration,
    /// Largest response body read (an image as JSON base64, or fetched by URL).
    pub max_response_bytes: usize,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("base_url", &crate::redact::redact_url(&self.base_url))
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("flavor", &self.flavor)
            .field("response_format", &self.response_format)
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl RemoteConfig {
    /// Settings for `base_url` with the defaults; the flavor is guessed from the URL
    /// (Zhipu's API lives under `/api/paas/`).
    pub fn new(base_url: &str) -> Self {
        let flavor = if base_url.contains("/api/paas/") || base_url.contains("bigmodel.cn") {
            Flavor::Zhipu
        } else {
            Flavor::Openai
        };
        RemoteConfig {
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: None,
            flavor,
            response_format: ResponseFormat::B64Json,
            concurrency: 4,
            timeout: Duration::from_secs(300),
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// Renders `remote/<name>` models on an OpenAI-style images endpoint, one request per job.
pub struct RemoteRenderer {
    cfg: RemoteConfig,
    endpoint: Url,
    /// The endpoint as errors and logs show it (password and secret parameters hidden).
    shown: String,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
}

/// What one HTTP exchange came to.
enum Failure {
    /// Worth trying again, after `after` when the server said so.
    Transient {
        message: String,
        after: Option<Duration>,
    },
    Fatal(String),
}

impl RemoteRenderer {
    /// A renderer for the endpoint of `cfg`; an unusable URL is refused.
    pub fn new(cfg: RemoteConfig) -> Result<Self, String> {
        // The path is extended; a query the server wants (`?key=…`) is kept.
        let mut endpoint = Url::parse(&cfg.base_url).map_err(|e| {
            format!(
                "RENDERQ_REMOTE_URL `{}` is not a URL: {e}",
                crate::redact::redact_url(&cfg.base_url)
            )
        })?;
        let path = format!(
            "{}/images/generations",
            endpoint.path().trim_end_matches('/')
        );
        endpoint.set_path(&path);
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(10).min(cfg.timeout))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(RemoteRenderer {
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            cfg,
            shown: crate::redact::redact_url(endpoint.as_str()),
            endpoint,
            client,
        })
    }

    fn body(&self, req: &RenderRequest, model: &str) -> Value {
        let size = format!("{}x{}", req.width, req.height);
        match self.cfg.flavor {
            Flavor::Zhipu => json!({ "model": model, "prompt": req.prompt, "size": size }),
            Flavor::Openai => {
                let mut body = json!({
                    "model": model,
                    "prompt": req.prompt,
                    "size": size,
                    "n": 1,
                    "response_format": self.cfg.response_format.as_str(),
                    "seed": req.seed,
                });
                let extra = [
                    (
                        "negative_prompt",
                        req.negative_prompt.clone().map(Value::from),
                    ),
                    ("num_inference_steps", req.steps.map(Value::from)),
                    ("guidance_scale", req.guidance.map(Value::from)),
                ];
                for (k, v) in extra {
                    if let Some(v) = v {
                        body[k] = v;
                    }
                }
                body
            }
        }
    }

    async fn render_one(&self, req: &RenderRequest) -> Result<RgbImage, RenderError> {
        let Some(model) = req.model.strip_prefix("remote/") else {
            return Err(RenderError::Abort(format!(
                "model `{}` is not a remote model",
                req.model
            )));
        };
        let body = self.body(req, model);
        let mut tried = 0;
        loop {
            tried += 1;
            let outcome = {
                let _permit = self.permits.acquire().await.expect("never closed");
                self.generate(&body).await
            };
            match outcome {
                Ok(image) => return Ok(image),
                Err(Failure::Fatal(m)) => return Err(RenderError::Abort(self.clean(&m))),
                Err(Failure::Transient { message, after }) => {
                    let wait = after.unwrap_or(self.cfg.backoff * 2u32.pow(tried.min(8) - 1));
                    if tried >= self.cfg.attempts || wait > MAX_RETRY_AFTER {
                        return Err(RenderError::Retry(
                            self.clean(&format!("{message} (after {tried} tries)")),
                        ));
                    }
                    tracing::debug!(model, tried, ?wait, "remote endpoint busy: {message}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One request, and the image it names.
    async fn generate(&self, body: &Value) -> Result<RgbImage, Failure> {
        let mut request = self.client.post(self.endpoint.clone()).json(body);
        if let Some(key) = &self.cfg.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let after = retry_after(response.headers());
        let body = read_capped(response, self.cfg.max_response_bytes, &self.shown).await?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let message = format!(
                "{} answered {status}: {}",
                self.shown,
                server_message(&text)
            );
            return Err(
                if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status.is_server_error()
                {
                    Failure::Transient { message, after }
                } else {
                    Failure::Fatal(message)
                },
            );
        }
        let reply: Value = serde_json::from_str(&text).map_err(|e| {
            Failure::Fatal(format!("{} answered with invalid JSON: {e}", self.shown))
        })?;
        let item = reply["data"].get(0).ok_or_else(|| {
            Failure::Fatal(format!(
                "{} answered without an image (`data` is empty)",
                self.shown
            ))
        })?;
        let bytes = if let Some(b64) = item["b64_json"].as_str() {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| Failure::Fatal(format!("`b64_json` is not base64: {e}")))?
        } else if let Some(url) = item["url"].as_str() {
            self.download(url).await?
        } else {
            return Err(Failure::Fatal(format!(
                "{} answered with neither `b64_json` nor `url`",
                self.shown
            )));
        };
        decode_capped(&bytes)
    }

    /// Fetches an image the endpoint answered with a URL (relative ones resolve
    /// against the endpoint). The key goes only to the endpoint's own origin.
    async fn download(&self, url: &str) -> Result<Vec<u8>, Failure> {
        let url = self
            .endpoint
            .join(url)
            .map_err(|e| Failure::Fatal(format!("the returned image URL is invalid: {e}")))?;
        let mut request = self.client.get(url.clone());
        if let Some(key) = &self.cfg.api_key
            && url.origin() == self.endpoint.origin()
        {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let message = format!("fetching the image at {} answered {status}", redact(&url));
            return Err(if status.is_server_error() {
                Failure::Transient {
                    message,
                    after: None,
                }
            } else {
                Failure::Fatal(message)
            });
        }
        read_capped(response, self.cfg.max_response_bytes, &redact(&url)).await
    }

    /// The key never leaves in an error, even if a server echoes it.
    fn clean(&self, message: &str) -> String {
        match &self.cfg.api_key {
            Some(key) if !key.is_empty() => message.replace(key.as_str(), "***"),
            _ => message.to_string(),
        }
    }
}

#[async_trait]
impl Renderer for RemoteRenderer {
    async fn render(&self, batch: &[RenderRequest]) -> Vec<Result<RgbImage, RenderError>> {
        futures::future::join_all(batch.iter().map(|r| self.render_one(r))).await
    }

    /// Requests are bounded by the endpoint's permits, not by calls: as many calls as
    /// permits keep every permit busy, each freed permit taken by a waiting request.
    fn lanes(&self) -> usize {
        self.cfg.concurrency.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_found_where_servers_put_them() {
        assert_eq!(
            server_message(r#"{"error":{"message":"prompt too long","type":"x"}}"#),
            "prompt too long"
        );
        assert_eq!(server_message(r#"{"detail":"bad size"}"#), "bad size");
        assert_eq!(
            server_message(r#"{"error":{"code":"1214"}}"#),
            r#"{"code":"1214"}"#
        );
        assert_eq!(server_message("plain text\n"), "plain text");
        assert_eq!(server_message(""), "(no message)");
        assert_eq!(server_message(&"x".repeat(2000)).len(), MAX_MESSAGE);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a past date: now");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_flavor_follows_the_url_and_the_key_is_not_shown() {
        assert_eq!(
            RemoteConfig::new("https://open.bigmodel.cn/api/paas/v4").flavor,
            Flavor::Zhipu
        );
        let mut cfg = RemoteConfig::new("http://npu:30000/v1/");
        assert_eq!(cfg.flavor, Flavor::Openai);
        assert_eq!(cfg.base_url, "http://npu:30000/v1");
        cfg.api_key = Some("sk-very-secret".into());
        assert!(!format!("{cfg:?}").contains("sk-very-secret"));
    }
}
