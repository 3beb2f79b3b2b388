//! Job heartbeats in the healthchecks.io protocol (issue 11, point 1): a job pings
//! `<url>/start` when it begins, `<url>` when it succeeds and `<url>/fail` (with a short
//! text) when it fails, so a monitor notices a job that stopped running or failing. This
//! module owns the URL (validated; never shown whole, as it is a credential) and what each
//! ping is; the application sends them.

use crate::ids::IntegrationCode;
use std::fmt;

/// The most characters of a failure's text a `fail` ping carries.
pub const MAX_FAIL_TEXT_CHARS: usize = 1000;

/// A check's ping URL, e.g. `https://hc-ping.com/<uuid>`. Its path is the credential.
#[derive(Clone, PartialEq, Eq)]
pub struct HeartbeatUrl(url::Url);

impl HeartbeatUrl {
    /// `None` for an empty setting (no heartbeat configured).
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        let url = url::Url::parse(value).map_err(|e| format!("a heartbeat URL must be an absolute URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("a heartbeat URL must be http(s) with a host".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a heartbeat URL takes no query or fragment (pings add their own path)".into());
        }
        Ok(Some(Self(url)))
    }

    /// Where `ping` goes.
    pub fn url_for(&self, ping: &Ping) -> String {
        let base = self.0.as_str().trim_end_matches('/');
        match ping {
            Ping::Start => format!("{base}/start"),
            Ping::Success => base.to_string(),
            Ping::Fail(_) => format!("{base}/fail"),
        }
    }

    /// What logs may show: scheme and host, never the path that identifies the check.
    pub fn redacted(&self) -> String {
        format!("{}://{}/…", self.0.scheme(), self.0.host_str().unwrap_or(""))
    }
}

/// Never the URL itself in debug output: it is a credential.
impl fmt::Debug for HeartbeatUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeartbeatUrl({})", self.redacted())
    }
}

/// The deployment-wide ping URL of scheduled integrations (`IntegrationHeartbeatUrlPattern`),
/// e.g. `https://hc-ping.com/<ping-key>/{code}`: `{code}` becomes the integration's code
/// as a healthchecks.io slug (lower case), so one setting monitors every schedule — a check
/// is created at its first ping when the project allows it. An integration's own
/// `heartbeatUrl` wins over it.
#[derive(Clone, PartialEq, Eq)]
pub struct HeartbeatPattern(String);

/// Where the integration code goes in a [`HeartbeatPattern`].
pub const CODE_PLACEHOLDER: &str = "{code}";

impl HeartbeatPattern {
    /// `None` for an empty setting.
    pub fn parse(value: &str) -> Result<Option<Self>, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(None);
        }
        if !value.contains(CODE_PLACEHOLDER) {
            return Err(format!("a heartbeat URL pattern must contain {CODE_PLACEHOLDER}"));
        }
        let pattern = Self(value.to_string());
        HeartbeatUrl::parse(&pattern.expand("CHECK"))?;
        Ok(Some(pattern))
    }

    fn expand(&self, code: &str) -> String {
        self.0.replace(CODE_PLACEHOLDER, &code.to_ascii_lowercase())
    }

    /// The ping URL of the integration `code`.
    pub fn url_for(&self, code: &IntegrationCode) -> Option<HeartbeatUrl> {
        // A code is letters, digits, '_' and '-': it always makes a valid path segment.
        HeartbeatUrl::parse(&self.expand(code.as_str())).ok().flatten()
    }
}

impl fmt::Debug for HeartbeatPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = HeartbeatUrl::parse(&self.expand("CHECK")).ok().flatten().map(|u| u.redacted()).unwrap_or_default();
        write!(f, "HeartbeatPattern({shown})")
    }
}

/// One ping of a job's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    Start,
    Success,
    /// The job failed; the text (bounded) says why.
    Fail(String),
}

impl Ping {
    pub fn failed(why: &str) -> Self {
        Self::Fail(why.chars().take(MAX_FAIL_TEXT_CHARS).collect())
    }

    /// The ping's body (the failure's text; nothing otherwise).
    pub fn body(&self) -> &str {
        match self {
            Self::Fail(text) => text,
            _ => "",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Success => "success",
            Self::Fail(_) => "fail",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_follow_the_healthchecks_protocol() {
        let url = HeartbeatUrl::parse("https://hc-ping.com/5f1a-secret/").expect("valid").expect("set");
        assert_eq!(url.url_for(&Ping::Start), "https://hc-ping.com/5f1a-secret/start");
        assert_eq!(url.url_for(&Ping::Success), "https://hc-ping.com/5f1a-secret");
        assert_eq!(url.url_for(&Ping::failed("boom")), "https://hc-ping.com/5f1a-secret/fail");
        assert_eq!(Ping::failed(&"x".repeat(5000)).body().len(), MAX_FAIL_TEXT_CHARS);
    }

    #[test]
    fn a_pattern_gives_each_integration_its_check() {
        let pattern = HeartbeatPattern::parse("https://hc-ping.com/key-123/{code}").expect("valid").expect("set");
        let code = IntegrationCode::parse("ORDER_SYNC").expect("code");
        assert_eq!(
            pattern.url_for(&code).expect("url").url_for(&Ping::Start),
            "https://hc-ping.com/key-123/order_sync/start"
        );
        assert!(!format!("{pattern:?}").contains("key-123"));
        assert_eq!(HeartbeatPattern::parse("").expect("empty"), None);
        assert!(HeartbeatPattern::parse("https://hc-ping.com/key").is_err(), "no {{code}}");
        assert!(HeartbeatPattern::parse("hc-ping.com/{code}").is_err(), "not absolute");
    }

    #[test]
    fn the_url_is_checked_and_never_shown_whole() {
        assert_eq!(HeartbeatUrl::parse("  ").expect("empty is none"), None);
        for bad in ["hc-ping.com/x", "ftp://h/x", "https://h/x?k=1", "file:///x"] {
            assert!(HeartbeatUrl::parse(bad).is_err(), "{bad}");
        }
        let url = HeartbeatUrl::parse("https://hc-ping.com/5f1a-secret").expect("valid").expect("set");
        assert_eq!(url.redacted(), "https://hc-ping.com/…");
        assert!(!format!("{url:?}").contains("secret"));
    }
}
