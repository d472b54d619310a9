//! Bearer tokens: the tokens file, its reload, and the check of an
//! `authorization` header.
//!
//! The file has one token a line, optionally followed by a tenant:
//!
//! ```text
//! # team A's services: everything they send carries tenant="team-a"
//! 3q2+7wEXAMPLEtokenA team-a
//! # an edge collector forwarding for everyone: no tenant, labels kept
//! 9ZEXAMPLEtokenEdge
//! ```
//!
//! Tokens are RFC 6750 `token68` strings (what fits a `Bearer` header).
//! Errors name the file and the line, never the token: a token must not
//! reach a log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The label a tenant's token puts on everything it sends.
pub const TENANT_LABEL: &str = "tenant";

/// Why a request was refused for its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No `authorization` header.
    MissingToken,
    /// An `authorization` header that is not `Bearer <token68>`.
    MalformedHeader,
    /// A well-formed token that is not in the file (wrong, or removed).
    UnknownToken,
}

impl AuthRefusal {
    /// Every reason, in exposition order.
    pub const ALL: [AuthRefusal; 3] = [AuthRefusal::MissingToken, AuthRefusal::MalformedHeader, AuthRefusal::UnknownToken];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthRefusal::MissingToken => "missing_token",
            AuthRefusal::MalformedHeader => "malformed_header",
            AuthRefusal::UnknownToken => "unknown_token",
        }
    }

    /// What the client is told (nothing about which tokens exist).
    pub fn message(self) -> &'static str {
        match self {
            AuthRefusal::MissingToken => "missing bearer token: send `authorization: Bearer <token>`",
            AuthRefusal::MalformedHeader => "malformed authorization header: expected `Bearer <token>`",
            AuthRefusal::UnknownToken => "unknown bearer token",
        }
    }
}

/// The tokens of one file: token -> tenant (`None`: labels are kept as sent).
#[derive(Debug, Default)]
pub struct Tokens {
    tenants: HashMap<String, Option<String>>,
}

impl Tokens {
    /// Parses a tokens file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Tokens, String> {
        let mut tenants = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = || format!("{} line {}", path.display(), i + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let token = fields.next().expect("a non-empty line has a field");
            let tenant = fields.next();
            if fields.next().is_some() {
                return Err(format!("{}: expected `token` or `token tenant`, found more fields", at()));
            }
            if !is_token68(token) {
                return Err(format!("{}: the token is not a bearer token (letters, digits and -._~+/ then optional =)", at()));
            }
            if let Some(t) = tenant {
                // The tenant is not echoed either: a mistyped line may hold a
                // token in the tenant's place.
                check_tenant(t).map_err(|e| format!("{}: the tenant (second field): {e}", at()))?;
            }
            if tenants.insert(token.to_string(), tenant.map(str::to_string)).is_some() {
                return Err(format!("{}: this token is listed twice", at()));
            }
        }
        Ok(Tokens { tenants })
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether there is none (then every request is refused).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The tenant of the request whose `authorization` header is `header`.
    pub fn check(&self, header: Option<&[u8]>) -> Result<Option<&str>, AuthRefusal> {
        let header = header.ok_or(AuthRefusal::MissingToken)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthRefusal::MalformedHeader)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthRefusal::MalformedHeader)?;
        let token = token.trim_start();
        if !scheme.eq_ignore_ascii_case("bearer") || !is_token68(token) {
            return Err(AuthRefusal::MalformedHeader);
        }
        // The map's hasher is keyed per process (SipHash, random keys): how
        // long a lookup takes tells nothing useful about the stored tokens.
        self.tenants.get(token).map(Option::as_deref).ok_or(AuthRefusal::UnknownToken)
    }
}

/// RFC 6750 `b64token` / RFC 7235 `token68`: `1*( ALPHA / DIGIT / "-" / "." /
/// "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// A tenant is a label value chosen by an operator: short, printable, no
/// spaces (the file is whitespace-separated).
fn check_tenant(tenant: &str) -> Result<(), String> {
    if tenant.len() > 128 {
        return Err("longer than 128 bytes".into());
    }
    if !tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return Err("use letters, digits and -._: only".into());
    }
    Ok(())
}

/// A tokens file and its current contents; [`TokenStore::reload`] (SIGHUP)
/// swaps them at once, so a removed token stops working for the next
/// request.
pub struct TokenStore {
    path: PathBuf,
    current: parking_lot::RwLock<Arc<Tokens>>,
}

impl TokenStore {
    /// Reads `path`; an unreadable or invalid file is an error.
    pub fn load(path: &Path) -> Result<TokenStore, String> {
        let tokens = read(path)?;
        if tokens.is_empty() {
            tracing::warn!(path = %path.display(), "the tokens file lists no token: every request will be refused");
        }
        Ok(TokenStore { path: path.to_path_buf(), current: parking_lot::RwLock::new(Arc::new(tokens)) })
    }

    /// Re-reads the file; on an error the old tokens stay.
    pub fn reload(&self) -> Result<usize, String> {
        let tokens = read(&self.path)?;
        let n = tokens.len();
        *self.current.write() = Arc::new(tokens);
        Ok(n)
    }

    /// The tokens now.
    pub fn current(&self) -> Arc<Tokens> {
        self.current.read().clone()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read(path: &Path) -> Result<Tokens, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
    Tokens::parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Tokens, String> {
        Tokens::parse(text, Path::new("tokens"))
    }

    #[test]
    fn tokens_with_and_without_tenants() {
        let t = parse("# comment\n\n  abc123  team-a \nxyz/+_~.-==\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(Some(b"Bearer abc123")), Ok(Some("team-a")));
        assert_eq!(t.check(Some(b"bearer   xyz/+_~.-==")), Ok(None));
        assert_eq!(t.check(Some(b"Bearer nope")), Err(AuthRefusal::UnknownToken));
        assert_eq!(t.check(None), Err(AuthRefusal::MissingToken));
        assert_eq!(t.check(Some(b"Basic abc123")), Err(AuthRefusal::MalformedHeader));
        assert_eq!(t.check(Some(b"Bearer")), Err(AuthRefusal::MalformedHeader));
        assert_eq!(t.check(Some(b"Bearer a b")), Err(AuthRefusal::MalformedHeader));
        assert_eq!(t.check(Some(&[0xff, 0xfe])), Err(AuthRefusal::MalformedHeader));
    }

    #[test]
    fn errors_name_the_line_never_the_token() {
        for (text, line, what) in [
            ("ok\nsecret-token tenant extra\n", 2, "more fields"),
            ("sec ret\"x\n", 1, "tenant"),
            ("s3cr\"et\n", 1, "not a bearer token"),
            ("dup\n#\ndup t\n", 3, "twice"),
            ("secret bad/tenant\n", 1, "tenant"),
            // Found by the fuzz target: a tenant field that holds the token.
            ("secret-token secret-token!\n", 1, "tenant"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(&format!("line {line}")) && e.contains(what), "{text:?}: {e}");
            assert!(!e.contains("secret") && !e.contains("s3cr") && !e.contains("dup\""), "{e}");
        }
        assert!(parse("").unwrap().is_empty());
    }
}
