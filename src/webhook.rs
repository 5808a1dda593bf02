//! Batch webhooks: when a batch finishes, a JSON summary is POSTed to the URL given
//! at submit (`--webhook`), signed the Standard Webhooks way and retried with backoff
//! on 5xx, 429 and network errors. The outcome is kept in `batches.webhook_status`.
//!
//! Signing: headers `webhook-id` (the same for every try of one delivery),
//! `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64>`, the
//! HMAC-SHA256 of `<id>.<timestamp>.<body>` under each secret of
//! `RENDERQ_WEBHOOK_SECRET` (`whsec_<base64>`; several, space-separated, while keys
//! rotate, give one signature each).
//!
//! Targets: anyone who can submit names the URL, so a worker refuses one that
//! resolves to a loopback, private, link-local or otherwise non-public address (the
//! cloud metadata service at 169.254.169.254 among them), unless its host is listed in
//! `RENDERQ_WEBHOOK_ALLOW_HOSTS`. The address checked is the address connected to;
//! redirects are not followed, and the receiver's body is not read.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::{info, warn};

use crate::{db::Record, job::BatchId, redact::webhook_origin};

/// Attempts per delivery.
const ATTEMPTS: u32 = 5;
/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// How workers sign and send webhooks.
#[derive(Clone, Default)]
pub struct WebhookSettings {
    /// Signing keys (decoded); the first signs, all sign while keys rotate.
    pub secrets: Vec<Vec<u8>>,
    /// Hosts a webhook may reach even at a non-public address (internal receivers).
    pub allow_hosts: Vec<String>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("secrets", &format!("{} secret(s)", self.secrets.len()))
            .field("allow_hosts", &self.allow_hosts)
            .finish()
    }
}

impl WebhookSettings {
    /// From `RENDERQ_WEBHOOK_SECRET` and `RENDERQ_WEBHOOK_ALLOW_HOSTS`. A secret that
    /// is set but malformed is an error; an unset one leaves `secrets` empty.
    pub fn from_env() -> Result<Self, String> {
        let secrets = match std::env::var("RENDERQ_WEBHOOK_SECRET") {
            Ok(text) if !text.trim().is_empty() => parse_secrets(&text)?,
            _ => Vec::new(),
        };
        let allow_hosts = std::env::var("RENDERQ_WEBHOOK_ALLOW_HOSTS")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Ok(WebhookSettings {
            secrets,
            allow_hosts,
        })
    }
}

/// `whsec_<base64> [whsec_<base64> …]` → the keys.
pub fn parse_secrets(text: &str) -> Result<Vec<Vec<u8>>, String> {
    text.split_whitespace()
        .enumerate()
        .map(|(i, secret)| {
            let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
                format!(
                    "RENDERQ_WEBHOOK_SECRET: secret {} does not start with `{SECRET_PREFIX}` \
                     (make one with: echo {SECRET_PREFIX}$(head -c 32 /dev/urandom | base64))",
                    i + 1
                )
            })?;
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(key) if key.len() >= 16 => Ok(key),
                Ok(_) => Err(format!(
                    "RENDERQ_WEBHOOK_SECRET: secret {} is shorter than 16 bytes",
                    i + 1
                )),
                Err(e) => Err(format!(
                    "RENDERQ_WEBHOOK_SECRET: secret {} is not base64 after `{SECRET_PREFIX}`: {e}",
                    i + 1
                )),
            }
        })
        .collect()
}

/// The `webhook-signature` header: `v1,<base64>` per key, space-separated.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            format!("v1,{sig}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a URL given with `--webhook`, and that the submitting side has a secret
/// to expect signatures under.
pub fn validate(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {}
        Ok(_) => {
            return Err(format!(
                "--webhook `{}` must be an http:// or https:// URL with a host",
                webhook_origin(url)
            ));
        }
        Err(e) => return Err(format!("--webhook `{}`: {e}", webhook_origin(url))),
    }
    let settings = WebhookSettings::from_env()?;
    if settings.secrets.is_empty() {
        return Err(
            "--webhook needs RENDERQ_WEBHOOK_SECRET (whsec_<base64>, the same on every \
                    worker): an unsigned webhook cannot be trusted by its receiver"
                .into(),
        );
    }
    Ok(())
}

/// Whether an address is one a webhook may reach without being allow-listed.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || (first == 0x64 && v6.segments()[1] == 0xff9b) // NAT64 of any IPv4
                || first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// Where a delivery may connect: the URL's host resolved, every address checked.
async fn target(
    url: &reqwest::Url,
    allow_hosts: &[String],
) -> Result<(String, SocketAddr), String> {
    let host = url
        .host_str()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = url.port_or_known_default().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or(format!("{host} resolves to no address"))?;
    if allow_hosts.contains(&host) {
        return Ok((host, first));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "{host} resolves to {}, which is not a public address \
             (list the host in RENDERQ_WEBHOOK_ALLOW_HOSTS for an internal receiver)",
            bad.ip()
        ));
    }
    Ok((host, first))
}

/// Delivers the summary of a finished batch, if it has a webhook. Never fails the
/// caller: the outcome is logged and recorded.
pub async fn deliver(
    record: Arc<dyn Record>,
    batch: BatchId,
    backoff: Duration,
    settings: Arc<WebhookSettings>,
) {
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
    // One id per finish of the batch (a retried batch finishes again): a receiver
    // tells a repeat of this delivery from the next one by it.
    let finished = record
        .batch_finished_at(batch)
        .await
        .ok()
        .flatten()
        .map_or(0, |t| t.timestamp_millis());
    let id = format!("msg_{}_{finished}", batch.0.simple());
    let status = send(&url, &id, summary.to_string(), backoff, &settings).await;
    info!(%batch, url = %webhook_origin(&url), "webhook {status}");
    let outcome = if status.starts_with("delivered") {
        "delivered"
    } else {
        "failed"
    };
    crate::telemetry::metrics().webhook(outcome);
    if let Err(e) = record.set_webhook_status(batch, &status).await {
        warn!(%batch, "webhook status not recorded: {e}");
    }
}

/// Sends one delivery, with its retries; returns its outcome as recorded.
async fn send(
    url: &str,
    id: &str,
    body: String,
    backoff: Duration,
    settings: &WebhookSettings,
) -> String {
    if settings.secrets.is_empty() {
        return "not sent: RENDERQ_WEBHOOK_SECRET is not set on the worker".into();
    }
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) => u,
        Err(e) => return format!("not sent: {e}"),
    };
    crate::install_crypto_provider();
    let mut wait = backoff;
    let mut status = String::new();
    for attempt in 1..=ATTEMPTS {
        // Resolved and checked on every try: the address connected to is the one checked.
        let (host, addr) = match target(&parsed, &settings.allow_hosts).await {
            Ok(t) => t,
            Err(e) => return format!("refused: {e}"),
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, addr)
            .build()
            .expect("a client with these settings builds");
        let timestamp = chrono::Utc::now().timestamp();
        let sent = client
            .post(parsed.clone())
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&settings.secrets, id, timestamp, body.as_bytes()),
            )
            .body(body.clone())
            .send()
            .await;
        // The receiver's body is never read: dropping the response closes it.
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                status = format!("delivered ({})", r.status().as_u16());
                break;
            }
            Ok(r) if r.status().is_redirection() => {
                status = format!(
                    "refused with {} (redirects are not followed)",
                    r.status().as_u16()
                );
                false
            }
            Ok(r) => {
                let code = r.status().as_u16();
                status = format!("refused with {code}");
                code >= 500 || code == 429 || code == 408
            }
            // reqwest's errors carry the URL, which may hold a secret: leave it out.
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
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let keys = parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&keys, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotating_keys_give_one_signature_each() {
        let keys = parse_secrets(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_c2Vjb25kIHNlY3JldCBrZXkgYnl0ZXM=",
        )
        .unwrap();
        let sig = signature(&keys, "msg_1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn malformed_secrets_are_refused_with_the_reason() {
        assert!(parse_secrets("hook-secret").unwrap_err().contains("whsec_"));
        assert!(parse_secrets("whsec_!!!").unwrap_err().contains("base64"));
        assert!(
            parse_secrets("whsec_c2hvcnQ=")
                .unwrap_err()
                .contains("16 bytes")
        );
    }

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
