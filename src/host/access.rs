//! [`AccessPolicy`]: who a request comes from and what they may do, from the connection's peer
//! and the request's token. One policy serves every listener of a process (see
//! docs/access.md).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::Peer;
use crate::access::{Caller, Gate, Refusal, Rights, presented_token};

/// Who may do what on a process's listeners.
pub struct AccessPolicy {
    /// The uid whose unix-socket connections get every right (as root's do): the process's own,
    /// the store's owner.
    owner_uid: u32,
    /// Rights of other uids connecting to a unix socket.
    unix_others: Rights,
    /// Rights of TCP clients without a token.
    tcp_anonymous: Rights,
    tokens: Tokens,
}

impl AccessPolicy {
    /// A policy: the store owner (this process's uid) and root get every right on unix
    /// sockets, other uids `unix_others`, TCP clients `tcp_anonymous` unless a token in
    /// `tokens` gives them its rights.
    pub fn new(unix_others: Rights, tcp_anonymous: Rights, tokens: Tokens) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner_uid = unsafe { libc::geteuid() };
        Self { owner_uid, unix_others, tcp_anonymous, tokens }
    }

    /// The defaults a careful operator would pick: the owner and root everything, everybody
    /// else may read, no tokens.
    pub fn defaults() -> Self {
        Self::new(Rights::READ, Rights::READ, Tokens::default())
    }
}

impl Gate for AccessPolicy {
    fn caller(&self, extensions: &http::Extensions, headers: &http::HeaderMap) -> Result<Caller, Refusal> {
        if let Some(token) = presented_token(headers) {
            let entry = self.tokens.find(&token)?;
            return Ok(Caller { identity: format!("token {}", entry.name), rights: entry.rights });
        }
        Ok(match extensions.get::<Peer>() {
            Some(Peer::Unix(Some(credentials))) if credentials.uid == 0 || credentials.uid == self.owner_uid => {
                Caller { identity: format!("uid {}", credentials.uid), rights: Rights::ALL }
            }
            Some(Peer::Unix(Some(credentials))) => {
                Caller { identity: format!("uid {}", credentials.uid), rights: self.unix_others }
            }
            Some(Peer::Unix(None)) => Caller { identity: "an unknown unix peer".into(), rights: self.unix_others },
            Some(Peer::Tcp(addr)) => Caller { identity: format!("anonymous {addr}"), rights: self.tcp_anonymous },
            // Every connection comes through the host's accept loop, which says who the peer is.
            None => Caller { identity: "an unknown peer".into(), rights: Rights::NONE },
        })
    }
}

/// The tokens a process accepts: each a name, its rights, the SHA-256 of the token (the file
/// holds no secret) and optionally when it expires.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<TokenEntry>,
}

#[derive(Debug)]
struct TokenEntry {
    name: String,
    rights: Rights,
    sha256: [u8; 32],
    expires: Option<SystemTime>,
}

/// A tokens file that cannot be used: the message names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("cannot read the tokens file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `NAME RIGHTS SHA256-HEX [EXPIRES]`.
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Tokens {
    /// Reads a tokens file: one token a line, `NAME RIGHTS SHA256-HEX [EXPIRES]`, where RIGHTS
    /// is a comma-separated list (read, write, sign, admin), SHA256-HEX the hex SHA-256 of the
    /// token (`printf %s "$TOKEN" | sha256sum`), and EXPIRES an RFC 3339 time
    /// (`2027-01-31T00:00:00Z`); `#` starts a comment.
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|(line, reason)| TokensError::Line { path: path.to_path_buf(), line, reason })
    }

    /// Parses the text of a tokens file; an error names the line (counted from 1).
    fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, rights, hash, rest @ ..] = fields.as_slice() else {
                return Err((n + 1, "expected NAME RIGHTS SHA256-HEX [EXPIRES]".into()));
            };
            let rights: Rights = rights.parse().map_err(|e: crate::access::UnknownRight| (n + 1, e.to_string()))?;
            let sha256 = data_encoding::HEXLOWER_PERMISSIVE
                .decode(hash.as_bytes())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| (n + 1, format!("{hash:?} is not the 64 hex digits of a SHA-256")))?;
            let expires = match rest {
                [] => None,
                [when] => Some(
                    humantime::parse_rfc3339_weak(when)
                        .map_err(|e| (n + 1, format!("expiry {when:?}: {e} (RFC 3339, e.g. 2027-01-31T00:00:00Z)")))?,
                ),
                _ => return Err((n + 1, "expected NAME RIGHTS SHA256-HEX [EXPIRES]".into())),
            };
            if entries.iter().any(|e| e.name == *name) {
                return Err((n + 1, format!("the name {name:?} is given twice")));
            }
            entries.push(TokenEntry { name: name.to_string(), rights, sha256, expires });
        }
        Ok(Self { entries })
    }

    /// Adds a token given as its secret (read from a file of its own, as nar-bridge's
    /// `--upload-token-file`), under `name` with `rights`.
    pub fn add_secret(&mut self, name: &str, rights: Rights, secret: &str) {
        let sha256 = Sha256::digest(secret.as_bytes()).into();
        self.entries.push(TokenEntry { name: name.to_string(), rights, sha256, expires: None });
    }

    /// Whether some token has `right`.
    pub fn any_has(&self, right: crate::access::Right) -> bool {
        self.entries.iter().any(|e| e.rights.has(right))
    }

    /// The entry of `token`; an unknown or expired token is refused.
    fn find(&self, token: &str) -> Result<&TokenEntry, Refusal> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let entry = self.entries.iter().find(|e| e.sha256 == hash).ok_or_else(|| Refusal("an unknown token".into()))?;
        if entry.expires.is_some_and(|at| at <= SystemTime::now()) {
            return Err(Refusal(format!("the token {} has expired", entry.name)));
        }
        Ok(entry)
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Right;
    use crate::host::Credentials;

    fn sha(token: &str) -> String {
        data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn tokens_are_found_by_hash_and_expire() {
        let text = format!(
            "# name rights hash [expires]\nci read,write {}\nold admin {} 2001-01-01T00:00:00Z\n",
            sha("ci-secret"),
            sha("old-secret")
        );
        let tokens = Tokens::parse(&text).unwrap();
        let ci = tokens.find("ci-secret").unwrap();
        assert_eq!((ci.name.as_str(), ci.rights), ("ci", "read,write".parse().unwrap()));
        assert_eq!(tokens.find("nope").unwrap_err().to_string(), "an unknown token");
        assert_eq!(tokens.find("old-secret").unwrap_err().to_string(), "the token old has expired");
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line, says) in [
            ("a read", 1, "expected NAME"),
            ("\na root ab", 2, "unknown right"),
            ("a read xyz", 1, "64 hex digits"),
            (&*format!("a read {} soon", sha("x")), 1, "RFC 3339"),
            (&*format!("a read {}\na read {}", sha("x"), sha("y")), 2, "twice"),
        ] {
            let (n, reason) = Tokens::parse(text).err().unwrap();
            assert_eq!(n, line, "{text}");
            assert!(reason.contains(says), "{text}: {reason}");
        }
    }

    #[test]
    fn callers_by_peer_and_token() {
        let tokens = Tokens::parse(&format!("push write {}", sha("t"))).unwrap();
        let policy = AccessPolicy::new(Rights::READ, Rights::NONE, tokens);
        let mut extensions = http::Extensions::new();
        let headers = http::HeaderMap::new();
        extensions.insert(Peer::Tcp("127.0.0.1:1".parse().unwrap()));
        assert_eq!(policy.caller(&extensions, &headers).unwrap().rights, Rights::NONE);
        let owner = Credentials { uid: policy.owner_uid, gid: 0, pid: None };
        extensions.insert(Peer::Unix(Some(owner)));
        assert_eq!(policy.caller(&extensions, &headers).unwrap().rights, Rights::ALL);
        let other = Credentials { uid: policy.owner_uid.wrapping_add(4242).max(1), gid: 0, pid: None };
        extensions.insert(Peer::Unix(Some(other)));
        assert_eq!(policy.caller(&extensions, &headers).unwrap().rights, Rights::READ);
        let mut with_token = http::HeaderMap::new();
        with_token.insert(http::header::AUTHORIZATION, "Bearer t".parse().unwrap());
        let caller = policy.caller(&extensions, &with_token).unwrap();
        assert_eq!(caller.identity, "token push");
        assert!(caller.rights.has(Right::Write) && !caller.rights.has(Right::Read));
        assert!(policy.caller(&http::Extensions::new(), &headers).unwrap().rights == Rights::NONE);
    }
}
