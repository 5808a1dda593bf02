//! Reading what an images endpoint answers: bodies and images within caps, the
//! server's own message, its Retry-After, and errors with no secret in them.

use super::*;

/// Largest side of an image the endpoint may answer with, and the most memory its
/// decoding may take: a small file that declares a huge image is refused before
/// anything that size is allocated.
pub(super) const MAX_DECODED_SIDE: u32 = 8192;
pub(super) const MAX_DECODE_ALLOC: u64 = 512 << 20;

/// Reads a response body, refusing one larger than `cap` bytes (by its declared
/// length first, then as it arrives).
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
    shown: &str,
) -> Result<Vec<u8>, Failure> {
    let too_big = || {
        Failure::Fatal(format!(
            "{shown} answered with more than {cap} bytes (RENDERQ_REMOTE_MAX_RESPONSE_BYTES)"
        ))
    };
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Decodes the returned image within [`MAX_DECODED_SIDE`] and [`MAX_DECODE_ALLOC`].
pub(super) fn decode_capped(bytes: &[u8]) -> Result<RgbImage, Failure> {
    let unreadable =
        |e: image::ImageError| Failure::Fatal(format!("the returned image cannot be read: {e}"));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Failure::Fatal(format!("the returned image cannot be read: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    Ok(reader.decode().map_err(unreadable)?.to_rgb8())
}

/// A URL without its query (presigned download URLs carry credentials there).
pub(super) fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    crate::redact::redact_url(shown.as_str())
}

pub(super) fn transport(e: reqwest::Error) -> Failure {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let message = match e.url() {
        Some(url) => format!("request to {} {what}", redact(url)),
        None => format!("request {what}"),
    };
    Failure::Transient {
        message,
        after: None,
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The server's own words: `error.message`, `error`, `detail` or `message` of a JSON
/// answer, or the start of the body.
pub(super) fn server_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let found = [
            &v["error"]["message"],
            &v["error"],
            &v["detail"],
            &v["message"],
        ]
        .into_iter()
        .find(|x| !x.is_null())?;
        Some(match found {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    });
    let text = from_json.unwrap_or_else(|| body.trim().to_string());
    if text.is_empty() {
        return "(no message)".into();
    }
    text.chars().take(MAX_MESSAGE).collect()
}
