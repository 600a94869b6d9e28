//! The validated PathInfo type and its protobuf mapping.

use bytes::Bytes;

use crate::castore::Node;
use crate::castore::node::InvalidNode;
use crate::proto::store as proto;
use crate::storepath::{DIGEST_LEN, InvalidStorePath, StorePath, nixbase32};

/// A store path with its root node and narinfo metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// The store path; the root node's name on the wire.
    pub store_path: StorePath,
    /// The root node.
    pub node: Node,
    /// Referenced store paths, in order.
    pub references: Vec<StorePath>,
    /// Size of the NAR serialisation.
    pub nar_size: u64,
    /// SHA-256 of the NAR serialisation.
    pub nar_sha256: [u8; 32],
    /// narinfo signatures.
    pub signatures: Vec<Signature>,
    /// The derivation that built it, if known (name without `.drv`, as on the wire).
    pub deriver: Option<StorePath>,
    /// Content address, if content-addressed.
    pub ca: Option<ContentAddress>,
}

/// A narinfo signature: key name and 64-byte ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Key name, e.g. `cache.nixos.org-1`.
    pub name: String,
    /// The ed25519 signature bytes.
    pub data: [u8; 64],
}

/// The kinds of content address Nix knows (`NARInfo.CA.Hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    NarSha256,
    NarSha1,
    NarSha512,
    NarMd5,
    TextSha256,
    FlatSha1,
    FlatMd5,
    FlatSha256,
    FlatSha512,
}

impl CaKind {
    /// The narinfo prefix (`fixed:r:sha256`, `text:sha256`, ...).
    pub fn prefix(self) -> &'static str {
        match self {
            CaKind::NarSha256 => "fixed:r:sha256",
            CaKind::NarSha1 => "fixed:r:sha1",
            CaKind::NarSha512 => "fixed:r:sha512",
            CaKind::NarMd5 => "fixed:r:md5",
            CaKind::TextSha256 => "text:sha256",
            CaKind::FlatSha1 => "fixed:sha1",
            CaKind::FlatMd5 => "fixed:md5",
            CaKind::FlatSha256 => "fixed:sha256",
            CaKind::FlatSha512 => "fixed:sha512",
        }
    }

    /// Length of the digest for this hash algorithm.
    pub fn digest_len(self) -> usize {
        match self {
            CaKind::NarSha1 | CaKind::FlatSha1 => 20,
            CaKind::NarMd5 | CaKind::FlatMd5 => 16,
            CaKind::NarSha512 | CaKind::FlatSha512 => 64,
            CaKind::NarSha256 | CaKind::TextSha256 | CaKind::FlatSha256 => 32,
        }
    }

    /// The hash algorithm, as Nix names it (`sha256`, `sha1`, `sha512`, `md5`).
    pub fn algorithm(self) -> &'static str {
        match self {
            CaKind::NarSha1 | CaKind::FlatSha1 => "sha1",
            CaKind::NarMd5 | CaKind::FlatMd5 => "md5",
            CaKind::NarSha512 | CaKind::FlatSha512 => "sha512",
            CaKind::NarSha256 | CaKind::TextSha256 | CaKind::FlatSha256 => "sha256",
        }
    }

    fn from_proto(v: proto::nar_info::ca::Hash) -> Self {
        use proto::nar_info::ca::Hash as H;
        match v {
            H::NarSha256 => CaKind::NarSha256,
            H::NarSha1 => CaKind::NarSha1,
            H::NarSha512 => CaKind::NarSha512,
            H::NarMd5 => CaKind::NarMd5,
            H::TextSha256 => CaKind::TextSha256,
            H::FlatSha1 => CaKind::FlatSha1,
            H::FlatMd5 => CaKind::FlatMd5,
            H::FlatSha256 => CaKind::FlatSha256,
            H::FlatSha512 => CaKind::FlatSha512,
        }
    }

    fn to_proto(self) -> proto::nar_info::ca::Hash {
        use proto::nar_info::ca::Hash as H;
        match self {
            CaKind::NarSha256 => H::NarSha256,
            CaKind::NarSha1 => H::NarSha1,
            CaKind::NarSha512 => H::NarSha512,
            CaKind::NarMd5 => H::NarMd5,
            CaKind::TextSha256 => H::TextSha256,
            CaKind::FlatSha1 => H::FlatSha1,
            CaKind::FlatMd5 => H::FlatMd5,
            CaKind::FlatSha256 => H::FlatSha256,
            CaKind::FlatSha512 => H::FlatSha512,
        }
    }
}

/// A content address: kind plus digest of the right length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentAddress {
    /// What was hashed, and how.
    pub kind: CaKind,
    /// The digest.
    pub digest: Bytes,
}

impl ContentAddress {
    /// The narinfo `CA:` form, e.g. `fixed:r:sha256:<nixbase32>`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.kind.prefix(), nixbase32::encode(&self.digest))
    }
}

/// Why a protobuf PathInfo is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPathInfo {
    #[error("root node is missing")]
    NoNode,
    #[error("invalid root node: {0}")]
    Node(#[from] InvalidNode),
    #[error("root node name is not a valid store path basename: {0}")]
    NodeName(InvalidStorePath),
    #[error("narinfo is missing")]
    NoNarInfo,
    #[error("reference {0} is {1} bytes long, expected {DIGEST_LEN}")]
    ReferenceLen(usize, usize),
    #[error("{0} references but {1} reference_names")]
    ReferenceCount(usize, usize),
    #[error("reference_names[{0}] {1:?} is invalid: {2}")]
    ReferenceName(usize, String, InvalidStorePath),
    #[error("reference_names[{0}] {1:?} does not match the digest in references[{0}]")]
    ReferenceMismatch(usize, String),
    #[error("nar_sha256 is {0} bytes long, expected 32")]
    NarSha256Len(usize),
    #[error("signature {0} ({1:?}) is {2} bytes long, expected 64")]
    SignatureLen(usize, String, usize),
    #[error("deriver is invalid: {0}")]
    Deriver(InvalidStorePath),
    #[error("ca has an unknown hash type {0}")]
    CaType(i32),
    #[error("ca digest is {0} bytes long, expected {1} for {2}")]
    CaDigestLen(usize, usize, &'static str),
}

impl PathInfo {
    /// Validates a protobuf PathInfo against the wire contract's rules.
    pub fn from_proto(p: proto::PathInfo) -> Result<Self, InvalidPathInfo> {
        let (name, node) = Node::from_proto(p.node.ok_or(InvalidPathInfo::NoNode)?)?;
        let store_path = StorePath::from_basename_bytes(&name).map_err(InvalidPathInfo::NodeName)?;
        let narinfo = p.narinfo.ok_or(InvalidPathInfo::NoNarInfo)?;
        if p.references.len() != narinfo.reference_names.len() {
            return Err(InvalidPathInfo::ReferenceCount(p.references.len(), narinfo.reference_names.len()));
        }
        let mut references = Vec::with_capacity(p.references.len());
        for (i, (digest, name)) in p.references.iter().zip(&narinfo.reference_names).enumerate() {
            if digest.len() != DIGEST_LEN {
                return Err(InvalidPathInfo::ReferenceLen(i, digest.len()));
            }
            let path =
                StorePath::from_basename(name).map_err(|e| InvalidPathInfo::ReferenceName(i, name.clone(), e))?;
            if path.digest()[..] != digest[..] {
                return Err(InvalidPathInfo::ReferenceMismatch(i, name.clone()));
            }
            references.push(path);
        }
        let nar_sha256: [u8; 32] =
            narinfo.nar_sha256[..].try_into().map_err(|_| InvalidPathInfo::NarSha256Len(narinfo.nar_sha256.len()))?;
        let signatures = narinfo
            .signatures
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let data = s.data[..]
                    .try_into()
                    .map_err(|_| InvalidPathInfo::SignatureLen(i, s.name.clone(), s.data.len()))?;
                Ok(Signature { name: s.name, data })
            })
            .collect::<Result<_, InvalidPathInfo>>()?;
        let deriver = narinfo
            .deriver
            .map(|d| {
                let digest: [u8; DIGEST_LEN] = d.digest[..]
                    .try_into()
                    .map_err(|_| InvalidPathInfo::Deriver(InvalidStorePath::DigestLen(d.digest.len())))?;
                StorePath::from_parts(digest, &d.name).map_err(InvalidPathInfo::Deriver)
            })
            .transpose()?;
        let ca = narinfo
            .ca
            .map(|ca| {
                let kind = proto::nar_info::ca::Hash::try_from(ca.r#type)
                    .map(CaKind::from_proto)
                    .map_err(|_| InvalidPathInfo::CaType(ca.r#type))?;
                if ca.digest.len() != kind.digest_len() {
                    return Err(InvalidPathInfo::CaDigestLen(ca.digest.len(), kind.digest_len(), kind.prefix()));
                }
                Ok(ContentAddress { kind, digest: ca.digest })
            })
            .transpose()?;
        Ok(PathInfo { store_path, node, references, nar_size: narinfo.nar_size, nar_sha256, signatures, deriver, ca })
    }

    /// The bytes a PathInfo is stored as (its protobuf encoding, as on the wire).
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&self.to_proto())
    }

    /// A stored PathInfo read back under the digest it was stored by: it must decode, be
    /// valid, and be for that store path. The `Err` says what is wrong.
    pub fn decode_stored(bytes: &[u8], digest: &[u8; DIGEST_LEN]) -> Result<Self, String> {
        let message = <proto::PathInfo as prost::Message>::decode(bytes).map_err(|e| e.to_string())?;
        let info = PathInfo::from_proto(message).map_err(|e| e.to_string())?;
        if info.store_path.digest() != digest {
            return Err(format!("it is for {}", info.store_path));
        }
        Ok(info)
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> proto::PathInfo {
        proto::PathInfo {
            node: Some(self.node.clone().into_proto(Bytes::from(self.store_path.to_basename()))),
            references: self.references.iter().map(|r| Bytes::copy_from_slice(r.digest())).collect(),
            narinfo: Some(proto::NarInfo {
                nar_size: self.nar_size,
                nar_sha256: Bytes::copy_from_slice(&self.nar_sha256),
                signatures: self
                    .signatures
                    .iter()
                    .map(|s| proto::nar_info::Signature { name: s.name.clone(), data: Bytes::copy_from_slice(&s.data) })
                    .collect(),
                reference_names: self.references.iter().map(|r| r.to_basename()).collect(),
                deriver: self.deriver.as_ref().map(|d| proto::StorePath {
                    name: d.name().to_string(),
                    digest: Bytes::copy_from_slice(d.digest()),
                }),
                ca: self
                    .ca
                    .as_ref()
                    .map(|ca| proto::nar_info::Ca { r#type: ca.kind.to_proto() as i32, digest: ca.digest.clone() }),
            }),
        }
    }
}
