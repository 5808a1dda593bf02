//! Secrets never reach logs, errors or `renderq status`: URLs are redacted before
//! they are printed.

/// Query (and fragment) parameters whose value is a secret: API keys, tokens,
/// passwords, signatures, and every `X-Amz-*` parameter of a presigned URL.
fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const SECRET_PARTS: [&str; 8] = [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "sig",
        "auth",
        "credential",
    ];
    name.starts_with("x-amz-") || SECRET_PARTS.iter().any(|p| name.contains(p))
}

/// `a=1&key=s3cret` → `a=1&key=***`.
fn redact_params(params: &str) -> String {
    params
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Where the userinfo ends (the index of its `@`), if the URL has one. Userinfo
/// may hold an unescaped `/`, `?` or `#` (a password pasted as it is), so when the
/// authority proper has no `@`, a later `@` still counts if a password separator
/// (`:`) comes before it.
fn userinfo_end(rest: &str) -> Option<usize> {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_end].rfind('@') {
        return Some(at);
    }
    let at = rest.find('@')?;
    rest[..at].contains(':').then_some(at)
}

/// Hides what in a URL is secret: the password (`user:***@`; for Redis, which
/// takes a bare password, the whole userinfo), query and fragment parameters named
/// like secrets (`?key=***`). Text that is not a URL is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (userinfo, rest) = match userinfo_end(rest) {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let shown_user = userinfo.map(|info| match info.split_once(':') {
        Some((user, _)) => format!("{user}:***@"),
        None if scheme.starts_with("redis") => "***@".to_string(),
        None => format!("{info}@"),
    });
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://{}{path}", shown_user.unwrap_or_default());
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_params(q));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(&redact_params(f));
    }
    out
}

/// A webhook URL as it may be shown: scheme and host only. Receivers such as
/// Slack's carry their secret in the path.
pub fn webhook_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            _ => "(a URL without a host)".into(),
        },
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://u:s3cret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("p://u:p@ss@h/x"), "p://u:***@h/x");
    }

    #[test]
    fn passwords_with_url_delimiters_are_hidden() {
        for (url, secret) in [
            ("postgres://u:pa/ss@h:5432/db", "pa/ss"),
            ("postgres://u:pa?ss@h/db", "pa?ss"),
            ("postgres://u:pa#ss@h/db", "pa#ss"),
            ("redis://:a/b?c#d@h:6379", "a/b?c#d"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} shown as {shown}");
            assert!(shown.contains("***@h"), "{url} shown as {shown}");
        }
    }

    #[test]
    fn secret_query_parameters_are_hidden() {
        assert_eq!(
            redact_url("http://npu:30000/v1?key=s3cret&model=sd"),
            "http://npu:30000/v1?key=***&model=sd"
        );
        let presigned = "https://b.s3.amazonaws.com/k.png?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&x-id=GetObject";
        let shown = redact_url(presigned);
        assert!(!shown.contains("AKIA") && !shown.contains("abc"), "{shown}");
        assert!(shown.ends_with("x-id=GetObject"), "{shown}");
        for name in [
            "token",
            "api_key",
            "password",
            "sig",
            "access_token",
            "Secret",
        ] {
            let shown = redact_url(&format!("https://h/p?{name}=hush"));
            assert_eq!(shown, format!("https://h/p?{name}=***"));
        }
        assert_eq!(
            redact_url("https://h/cb#access_token=hush&state=1"),
            "https://h/cb#access_token=***&state=1"
        );
        assert_eq!(redact_url("https://h/p?page=2"), "https://h/p?page=2");
    }

    #[test]
    fn webhooks_show_scheme_and_host_only() {
        assert_eq!(
            webhook_origin("https://hooks.slack.com/services/T000/B000/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            webhook_origin("http://u:pw@shop.internal:8080/hook?token=x"),
            "http://shop.internal:8080/…"
        );
    }
}
