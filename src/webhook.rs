//! Batch webhooks: when a batch finishes, a signed JSON summary is POSTed to the URL
//! given at submit (`--webhook`), retried with backoff on 5xx, 429 and network
//! errors. The body is signed with HMAC-SHA256 under `RENDERQ_WEBHOOK_SECRET`:
//! header `X-Renderq-Signature: sha256=<hex>`. The outcome is kept in
//! `batches.webhook_status`.

use std::{sync::Arc, time::Duration};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::{info, warn};

use crate::{db::Record, job::BatchId, redact::redact_url};

/// Attempts per delivery.
const ATTEMPTS: u32 = 5;

/// `sha256=<hex>` of the body under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Checks a URL given with `--webhook`.
pub fn validate(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(_) => Err(format!(
            "--webhook `{}` must be http:// or https://",
            redact_url(url)
        )),
        Err(e) => Err(format!("--webhook `{}`: {e}", redact_url(url))),
    }
}

/// Delivers the summary of a finished batch, if it has a webhook. Never fails the
/// caller: the outcome is logged and recorded.
pub async fn deliver(record: Arc<dyn Record>, batch: BatchId, backoff: Duration) {
    let url = match record.webhook(batch).await {
        Ok(Some(hook)) => hook.url,
        Ok(None) => return,
        Err(e) => {
            warn!(%batch, "webhook: cannot read the batch: {e}");
            return;
        }
    };
    let summary = match record.progress(batch).await {
        Ok(Some(p)) => serde_json::json!({
            "event": "batch.done",
            "batch_id": batch.to_string(),
            "name": p.name,
            "total": p.total,
            "succeeded": p.succeeded,
            "failed": p.failed,
            "cancelled": p.cancelled,
        }),
        _ => return,
    };
    let body = summary.to_string();
    let secret = std::env::var("RENDERQ_WEBHOOK_SECRET").unwrap_or_default();
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client with default settings builds");
    let mut wait = backoff;
    let mut status = String::new();
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .header(
                "x-renderq-signature",
                signature(secret.as_bytes(), body.as_bytes()),
            )
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                status = format!("delivered ({})", r.status().as_u16());
                break;
            }
            Ok(r) => {
                let code = r.status().as_u16();
                status = format!("refused with {code}");
                code >= 500 || code == 429 || code == 408
            }
            // reqwest's errors carry the URL; show it redacted.
            Err(e) => {
                status = format!("failed: {}", e.without_url());
                true
            }
        };
        if !retry || attempt == ATTEMPTS {
            break;
        }
        tokio::time::sleep(wait.mul_f64(0.5 + rand::random::<f64>() * 0.5)).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    }
    info!(%batch, url = %redact_url(&url), "webhook {status}");
    if let Err(e) = record.set_webhook_status(batch, &status).await {
        warn!(%batch, "webhook status not recorded: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(validate("https://shop.example/hooks/renderq").is_ok());
        assert!(validate("ftp://x").is_err());
    }
}
