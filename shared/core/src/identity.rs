//! Who calls the HTTP API and what they may do: the OAuth scopes of SPEC §6 and the caller
//! a JWT authorizer vouched for.

use std::collections::BTreeSet;
use std::fmt;

/// The scopes the API knows. A route asks for exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Integrations, versions, mappings.
    Admin,
    /// Starting exchanges (`POST /exchanges`, events, sign-off).
    Invoke,
    /// Recover, retry, enable/disable/resume, resolve errors.
    Operate,
    /// Every GET.
    Read,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::Invoke, Scope::Operate, Scope::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "handoff:admin",
            Scope::Invoke => "handoff:invoke",
            Scope::Operate => "handoff:operate",
            Scope::Read => "handoff:read",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a request, as the authorizer validated its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: recorded on what the caller changes.
    pub subject: String,
    /// The Handoff scopes the token carries (others are ignored).
    pub scopes: BTreeSet<Scope>,
}

impl Caller {
    /// A caller from a token's `sub` and its scopes, given as a space-separated `scope`
    /// claim (RFC 8693 §4.2) or a list (`scp`, as Entra ID and Okta send).
    pub fn new<'a>(subject: impl Into<String>, scopes: impl IntoIterator<Item = &'a str>) -> Self {
        let scopes = scopes.into_iter().flat_map(str::split_whitespace).filter_map(Scope::parse).collect();
        Self { subject: subject.into(), scopes }
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_come_from_a_space_separated_claim_or_a_list_and_unknown_ones_are_ignored() {
        let caller = Caller::new("u1", ["handoff:read handoff:admin openid", "handoff:invoke"]);
        assert!(caller.may(Scope::Read) && caller.may(Scope::Admin) && caller.may(Scope::Invoke));
        assert!(!caller.may(Scope::Operate));
        assert_eq!(caller.scopes.len(), 3);
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("handoff:root"), None);
    }
}
