//! Who may do what: the [`Rights`] a request carries, and the [`Caller`] the host layer tells
//! every request it is (see `docs/access.md`).
//!
//! The host layer (`crate::host`) establishes the caller of each request (the unix socket
//! peer's uid, a bearer token, or an anonymous TCP address) and refuses a request whose caller
//! lacks the right it needs before any service sees it; a service that decides more finely
//! (replacing an existing store path needs [`Right::Admin`]) reads the [`Caller`] from the
//! request's extensions.

use std::fmt;

/// One right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Read blobs, directories and PathInfo.
    Read,
    /// Add blobs, directories and new store paths (each checked against what it claims).
    Write,
    /// Have the server sign what it stores or serves.
    Sign,
    /// Verify, delete, collect garbage, replace a store path by other contents.
    Admin,
    /// Have PathInfos stored as claimed, without the server checking them against the
    /// contents: for importers whose own computation is trusted (the store's owner, who could
    /// write its files anyway). Give it to no caller whose PathInfos a signing store must not
    /// sign unchecked.
    Trusted,
}

impl Right {
    const ALL: [Right; 5] = [Right::Read, Right::Write, Right::Sign, Right::Admin, Right::Trusted];

    /// The right's name, as flags and token files spell it.
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Sign => "sign",
            Right::Admin => "admin",
            Right::Trusted => "trusted",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of rights.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    /// No right at all.
    pub const NONE: Rights = Rights(0);
    /// Reading only.
    pub const READ: Rights = Rights(1);
    /// Every right.
    pub const ALL: Rights = Rights(0b1_1111);

    /// Whether `right` is among these.
    pub fn has(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }

    /// These and `right`.
    pub fn with(self, right: Right) -> Rights {
        Rights(self.0 | right.bit())
    }
}

/// A list of rights that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown right {0:?}: the rights are read, write, sign, admin, trusted (comma-separated), all or none")]
pub struct UnknownRight(pub String);

impl std::str::FromStr for Rights {
    type Err = UnknownRight;

    /// `read,write`, `all`, `none` (or empty).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rights = Rights::NONE;
        for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            rights = match word {
                "all" => Rights::ALL,
                "none" => rights,
                _ => rights.with(
                    Right::ALL.into_iter().find(|r| r.name() == word).ok_or_else(|| UnknownRight(word.to_string()))?,
                ),
            };
        }
        Ok(rights)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Right::ALL.into_iter().filter(|r| self.has(*r)).map(Right::name).collect();
        if names.is_empty() { f.write_str("none") } else { f.write_str(&names.join(",")) }
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Establishes who made a request and what they may do, from what the connection said about
/// its peer (the request's extensions) and the credentials in its headers. The host layer
/// implements it from its settings; the servers ask it for every request.
pub trait Gate: Send + Sync {
    /// The caller of a request; an error when it presents a credential that is not valid
    /// (an unknown or expired token): such a request is refused whatever it asks for.
    fn caller(&self, extensions: &http::Extensions, headers: &http::HeaderMap) -> Result<Caller, Refusal>;
}

/// A credential that is not valid; the message names the credential (a token's name, never
/// the token) or says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The gate of a server embedded in a program that serves it itself: every request gets
/// [`Caller::embedded`].
pub struct Open;

impl Gate for Open {
    fn caller(&self, _: &http::Extensions, _: &http::HeaderMap) -> Result<Caller, Refusal> {
        Ok(Caller::embedded())
    }
}

/// The token a request carries: `Authorization: Bearer <token>`, or the password of HTTP Basic
/// authentication (what Nix sends from a netrc file); `None` without either.
pub fn presented_token(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = data_encoding::BASE64.decode(credentials.trim().as_bytes()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        return decoded.split_once(':').map(|(_, password)| password.to_string());
    }
    None
}

/// Who made a request and what they may do, as the host layer established it. Carried in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who it is, for log lines (`uid 1000`, `token ci-push`, `anonymous 127.0.0.1:41234`);
    /// never a secret.
    pub identity: String,
    /// What it may do.
    pub rights: Rights,
}

impl Caller {
    /// The caller of a request that did not come through the host layer (a service embedded
    /// in a program that serves it itself): whoever built that server decides who reaches it.
    pub fn embedded() -> Self {
        Self { identity: "an embedding program".into(), rights: Rights::ALL }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_as_bearer_or_as_the_basic_password() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        let basic = format!("Basic {}", data_encoding::BASE64.encode(b"nix:s3cret"));
        headers.insert(http::header::AUTHORIZATION, basic.parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        headers.insert(http::header::AUTHORIZATION, "basic dXNlcjpzM2NyZXQ=".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"), "any case, any user");
        headers.insert(http::header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(presented_token(&headers), None);
    }

    #[test]
    fn rights_parse_and_print() {
        let rw: Rights = "read, write".parse().unwrap();
        assert!(rw.has(Right::Read) && rw.has(Right::Write) && !rw.has(Right::Admin));
        assert_eq!(rw.to_string(), "read,write");
        assert_eq!("all".parse::<Rights>().unwrap(), Rights::ALL);
        assert_eq!("none".parse::<Rights>().unwrap(), Rights::NONE);
        assert_eq!("".parse::<Rights>().unwrap(), Rights::NONE);
        assert_eq!(Rights::NONE.to_string(), "none");
        assert!("read,root".parse::<Rights>().unwrap_err().to_string().contains("\"root\""));
    }
}
