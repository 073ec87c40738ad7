//! `check-config`'s view of the configuration: secrets and passwords replaced.

use super::Config;

impl Config {
    /// The effective configuration as TOML, with secrets replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.auth.jwt_secret.is_empty() {
            shown.auth.jwt_secret = "<redacted>".into();
        }
        shown.storage.url = redact_url_password(&shown.storage.url);
        shown.broker.redis_url = redact_url_password(&shown.broker.redis_url);
        if !shown.metrics.token.is_empty() {
            shown.metrics.token = "<redacted>".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `scheme://user:secret@host/db?password=x` -> `scheme://user:<redacted>@host/db?password=<redacted>`.
/// A password may hold `@`, `/`, `?` or `#` when it is not percent-encoded, so
/// the userinfo ends at the last `@` that is followed by something host-like;
/// redacting too much of an odd URL is fine, leaking a password is not.
pub(super) fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let host_like = |s: &str| {
        let host = &s[..s.find(['/', '?', '#']).unwrap_or(s.len())];
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[],%".contains(&b))
    };
    let at = rest
        .match_indices('@')
        .map(|(i, _)| i)
        .rev()
        .find(|&i| host_like(&rest[i + 1..]));
    let (userinfo, tail) = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.find(':') {
                Some(colon) => format!("{}:<redacted>", &userinfo[..colon]),
                None => userinfo.to_string(),
            };
            (format!("{shown}@"), &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    format!("{head}{userinfo}{}", redact_query_password(tail))
}

/// `…?sslmode=require&password=x` -> `…?sslmode=require&password=<redacted>`
/// (Postgres URLs may carry the password as a query parameter).
fn redact_query_password(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_string();
    };
    let (path, query) = tail.split_at(q + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                format!("{key}=<redacted>")
            }
            _ => param.to_string(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}
