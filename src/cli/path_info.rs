//! `tvix-store path-info`.

use std::collections::BTreeMap;

use data_encoding::BASE64;
use serde::Serialize;
use tvix_store::compose::Role;
use tvix_store::pathinfo::PathInfo;
use tvix_store::storepath::StorePath;

use super::ServiceArgs;

/// Arguments of `tvix-store path-info`.
#[derive(clap::Args)]
pub struct Args {
    /// Store paths (`/nix/store/<hash>-<name>` or basenames).
    #[arg(required = true)]
    store_paths: Vec<String>,

    #[command(flatten)]
    services: ServiceArgs,
}

/// One element of the output: the keys and value formats of Nix 2.8's `nix path-info --json`,
/// in its key order. `registrationTime` is local to a Nix database and has no counterpart here.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonPathInfo {
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nar_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nar_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    references: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deriver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signatures: Option<Vec<String>>,
}

impl JsonPathInfo {
    fn invalid(path: &StorePath) -> Self {
        Self {
            path: path.to_absolute_path(),
            valid: Some(false),
            nar_hash: None,
            nar_size: None,
            references: None,
            ca: None,
            deriver: None,
            signatures: None,
        }
    }

    fn from_info(info: &PathInfo) -> Self {
        let mut references: Vec<String> = info.references.iter().map(StorePath::to_absolute_path).collect();
        references.sort();
        Self {
            path: info.store_path.to_absolute_path(),
            valid: None,
            nar_hash: Some(format!("sha256-{}", BASE64.encode(&info.nar_sha256))),
            nar_size: Some(info.nar_size),
            references: Some(references),
            ca: info.ca.as_ref().map(|c| c.to_nix_string()),
            deriver: info.deriver.as_ref().map(|d| format!("{}.drv", d.to_absolute_path())),
            signatures: (!info.signatures.is_empty())
                .then(|| info.signatures.iter().map(|s| format!("{}:{}", s.name, BASE64.encode(&s.data))).collect()),
        }
    }
}

/// Runs the command: a JSON list sorted by path, unknown paths as `{"path":…,"valid":false}`,
/// as Nix prints them.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let paths = args.store_paths.iter().map(|p| StorePath::parse(p)).collect::<Result<Vec<_>, _>>()?;
    let opened = args.services.open(Role::Client).await?;
    let mut out = BTreeMap::new();
    for path in paths {
        let entry = match opened.store.path_info.get(*path.digest()).await? {
            Some(info) if info.store_path == path => JsonPathInfo::from_info(&info),
            _ => JsonPathInfo::invalid(&path),
        };
        out.insert(path.to_absolute_path(), entry);
    }
    let list: Vec<_> = out.into_values().collect();
    println!("{}", serde_json::to_string(&list)?);
    Ok(())
}
