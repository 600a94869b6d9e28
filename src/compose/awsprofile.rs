//! AWS shared profile files for `objectstore+s3://` stores: what the AWS CLI and SDKs read from
//! `~/.aws/credentials` and `~/.aws/config`, which `object_store` does not read itself.
//!
//! Precedence, first wins:
//! - credentials: given by a program ([`S3Spec::credentials`]), then the environment
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), then the profile;
//! - region: the URL's `region=`, then `AWS_REGION` / `AWS_DEFAULT_REGION`, then the profile;
//! - endpoint: the URL's `endpoint=`, then `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`, then the
//!   profile's `endpoint_url`.
//!
//! The files are read only when no access key is set (neither given nor in the environment):
//! the environment's key names its own account, and a profile's region or endpoint might not
//! belong to it. The profile is `AWS_PROFILE` (default `default`), its credentials the section
//! `[NAME]` of `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`), its settings the
//! section `[profile NAME]` (or `[default]`) of `AWS_CONFIG_FILE` (default `~/.aws/config`).
//! A default file that is missing, or the `default` profile absent from both, is no error (the
//! store then has no key from the files); a profile named by `AWS_PROFILE` that neither file
//! has, a file named by a variable that cannot be read, or a file that does not parse, is.

use std::path::{Path, PathBuf};

use ini::{Ini, ParseOption};

use super::url::S3Spec;

/// An error reading the profile files. Messages name the file and the profile, never a value
/// from the files (a parse error gives only the line and column).
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A file named by a variable, or one that exists but cannot be read.
    #[error("cannot read {file} (AWS profile {profile:?}): {source}")]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// The profile wanted.
        profile: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file that is not INI as the AWS tools write it.
    #[error("cannot parse {file} (AWS profile {profile:?}): line {line}, column {col}: {msg}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The profile wanted.
        profile: String,
        /// Where.
        line: usize,
        /// Where on the line.
        col: usize,
        /// What the parser expected (never the text it found).
        msg: String,
    },
    /// `AWS_PROFILE` names a profile neither file has.
    #[error("AWS profile {profile:?} (AWS_PROFILE) is in neither {credentials} nor {config}")]
    NoSuchProfile {
        /// The profile wanted.
        profile: String,
        /// The credentials file looked in.
        credentials: PathBuf,
        /// The config file looked in.
        config: PathBuf,
    },
    /// A profile with one half of an access key.
    #[error("AWS profile {profile:?} in {file} has {has} but no {missing}")]
    HalfAKey {
        /// The profile.
        profile: String,
        /// Its file.
        file: PathBuf,
        /// The key it has.
        has: &'static str,
        /// The key it lacks.
        missing: &'static str,
    },
}

/// An access key from a profile.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileKey {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, for temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for ProfileKey {
    // The secret and the token stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileKey").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// What to give the S3 client on top of what `object_store` reads from the environment itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// A key from the profile (`None`: the program's, the environment's, or none).
    pub key: Option<ProfileKey>,
    /// The region, when the URL or the profile sets one (`None`: the environment's, if any).
    pub region: Option<String>,
    /// The endpoint, from the URL, the environment or the profile.
    pub endpoint: Option<String>,
}

/// Resolves `spec`'s key, region and endpoint by the rules in the module doc, with `env` for
/// the environment (so tests need not change the process's).
pub fn resolve(spec: &S3Spec, env: &dyn Fn(&str) -> Option<String>) -> Result<Resolved, ProfileError> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let env_region = set("AWS_REGION").or_else(|| set("AWS_DEFAULT_REGION"));
    let env_endpoint = set("AWS_ENDPOINT_URL").or_else(|| set("AWS_ENDPOINT"));
    let mut resolved =
        Resolved { key: None, region: spec.region.clone(), endpoint: spec.endpoint.clone().or(env_endpoint.clone()) };
    if spec.credentials.is_some() || set("AWS_ACCESS_KEY_ID").is_some() {
        return Ok(resolved);
    }
    let profile = Profile::read(env)?;
    resolved.key = profile.key;
    if resolved.region.is_none() && env_region.is_none() {
        resolved.region = profile.region;
    }
    if resolved.endpoint.is_none() {
        resolved.endpoint = profile.endpoint_url;
    }
    Ok(resolved)
}

/// What one profile says.
#[derive(Debug, Default)]
struct Profile {
    key: Option<ProfileKey>,
    region: Option<String>,
    endpoint_url: Option<String>,
}

impl Profile {
    fn read(env: &dyn Fn(&str) -> Option<String>) -> Result<Profile, ProfileError> {
        let named = env("AWS_PROFILE").filter(|p| !p.is_empty());
        let name = named.clone().unwrap_or_else(|| "default".to_string());
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| match env(var).filter(|v| !v.is_empty()) {
            Some(path) => (PathBuf::from(path), true),
            None => (home.clone().unwrap_or_default().join(".aws").join(default), false),
        };
        let (credentials_file, credentials_named) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let (config_file, config_named) = file("AWS_CONFIG_FILE", "config");
        let credentials = load(&credentials_file, credentials_named, &name)?;
        let config = load(&config_file, config_named, &name)?;

        let mut profile = Profile::default();
        let mut found = false;
        if let Some(section) = credentials.as_ref().and_then(|ini| ini.section(Some(name.as_str()))) {
            found = true;
            let value = |key: &str| value_of(section, key);
            let half = |has, missing| ProfileError::HalfAKey {
                profile: name.clone(),
                file: credentials_file.clone(),
                has,
                missing,
            };
            profile.key = match (value("aws_access_key_id"), value("aws_secret_access_key")) {
                (Some(access_key_id), Some(secret_access_key)) => {
                    Some(ProfileKey { access_key_id, secret_access_key, session_token: value("aws_session_token") })
                }
                (Some(_), None) => return Err(half("aws_access_key_id", "aws_secret_access_key")),
                (None, Some(_)) => return Err(half("aws_secret_access_key", "aws_access_key_id")),
                (None, None) => None,
            };
        }
        // The AWS tools write `[default]` for the default profile and `[profile NAME]` for the
        // others in the config file, and accept `[profile default]` too.
        let sections = [format!("profile {name}"), name.clone()];
        let section = config.as_ref().and_then(|ini| {
            sections.iter().take(if name == "default" { 2 } else { 1 }).find_map(|s| ini.section(Some(s.as_str())))
        });
        if let Some(section) = section {
            found = true;
            let value = |key: &str| value_of(section, key);
            profile.region = value("region");
            profile.endpoint_url = value("endpoint_url").map(|e| e.trim_end_matches('/').to_string());
        }
        if !found && named.is_some() {
            return Err(ProfileError::NoSuchProfile {
                profile: name,
                credentials: credentials_file,
                config: config_file,
            });
        }
        Ok(profile)
    }
}

/// A setting of a section, trimmed; an empty one counts as absent.
fn value_of(section: &ini::Properties, key: &str) -> Option<String> {
    section.get(key).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

/// Reads and parses one file; a default file that does not exist is `None`.
fn load(file: &Path, named: bool, profile: &str) -> Result<Option<Ini>, ProfileError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(source) => {
            return Err(ProfileError::Unreadable { file: file.to_path_buf(), profile: profile.to_string(), source });
        }
    };
    // As the AWS tools read them: no quoting or escapes in values (a secret may hold a `\`),
    // indented lines continue a nested value (`s3 =` followed by its own settings).
    let options = ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: true,
        enabled_preserve_key_leading_whitespace: false,
    };
    Ini::load_from_str_opt(&text, options).map(Some).map_err(|e| ProfileError::Parse {
        file: file.to_path_buf(),
        profile: profile.to_string(),
        line: e.line,
        col: e.col,
        msg: e.msg.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn spec(region: Option<&str>, endpoint: Option<&str>) -> S3Spec {
        S3Spec {
            url: "objectstore+s3://b/p".into(),
            bucket: "b".into(),
            prefix: "p".into(),
            endpoint: endpoint.map(String::from),
            region: region.map(String::from),
            credentials: None,
        }
    }

    struct Files {
        dir: tempfile::TempDir,
        env: HashMap<String, String>,
    }

    impl Files {
        /// A HOME with `~/.aws/credentials` and `~/.aws/config` holding two profiles.
        fn new() -> Files {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join(".aws")).unwrap();
            std::fs::write(
                dir.path().join(".aws/credentials"),
                "[default]\naws_access_key_id = DEFAULTID\naws_secret_access_key = default\\secret\n\n\
                 # the other one\n[other]\naws_access_key_id=OTHERID\naws_secret_access_key=othersecret\n\
                 aws_session_token=othertoken\n",
            )
            .unwrap();
            std::fs::write(
                dir.path().join(".aws/config"),
                "[default]\nregion = file-region\nendpoint_url = http://file-endpoint:3900/\n\
                 s3 =\n  endpoint_url = http://nested-not-used\n\n\
                 [profile other]\nregion = other-region\n\n[profile config-only]\nregion = r3\n",
            )
            .unwrap();
            let env = HashMap::from([("HOME".to_string(), dir.path().display().to_string())]);
            Files { dir, env }
        }
        fn with(mut self, var: &str, value: &str) -> Files {
            self.env.insert(var.into(), value.into());
            self
        }
        fn resolve(&self, spec: &S3Spec) -> Result<Resolved, ProfileError> {
            resolve(spec, &|name| self.env.get(name).cloned())
        }
    }

    fn key(id: &str, secret: &str, token: Option<&str>) -> Option<ProfileKey> {
        Some(ProfileKey {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: token.map(String::from),
        })
    }

    #[test]
    fn the_default_profile_gives_key_region_and_endpoint() {
        let r = Files::new().resolve(&spec(None, None)).unwrap();
        assert_eq!(r.key, key("DEFAULTID", "default\\secret", None));
        assert_eq!(r.region.as_deref(), Some("file-region"));
        // The top-level endpoint_url, not the one nested under `s3 =`.
        assert_eq!(r.endpoint.as_deref(), Some("http://file-endpoint:3900"));
    }

    #[test]
    fn the_url_wins_over_the_files() {
        let r = Files::new().resolve(&spec(Some("url-region"), Some("http://url:1"))).unwrap();
        assert_eq!(r.key, key("DEFAULTID", "default\\secret", None));
        assert_eq!(r.region.as_deref(), Some("url-region"));
        assert_eq!(r.endpoint.as_deref(), Some("http://url:1"));
    }

    #[test]
    fn the_environment_wins_over_the_files() {
        // Region and endpoint variables: the files' are not used (object_store reads the
        // region variable itself, so it is left unset here).
        let files = Files::new().with("AWS_REGION", "env-region").with("AWS_ENDPOINT_URL", "http://env:2");
        let r = files.resolve(&spec(None, None)).unwrap();
        assert_eq!(r.key, key("DEFAULTID", "default\\secret", None));
        assert_eq!(r.region, None);
        assert_eq!(r.endpoint.as_deref(), Some("http://env:2"));
        let files = Files::new().with("AWS_DEFAULT_REGION", "env-region");
        assert_eq!(files.resolve(&spec(None, None)).unwrap().region, None);
        // A key in the environment: the files are not read at all, even a broken one.
        let files = Files::new().with("AWS_ACCESS_KEY_ID", "ENVID").with("AWS_PROFILE", "no-such-profile");
        assert_eq!(files.resolve(&spec(None, None)).unwrap(), Resolved::default());
        // And the URL still wins over the environment.
        let files = Files::new().with("AWS_ENDPOINT", "http://env:2");
        assert_eq!(files.resolve(&spec(None, Some("http://url:1"))).unwrap().endpoint.as_deref(), Some("http://url:1"));
    }

    #[test]
    fn aws_profile_picks_the_sections() {
        let r = Files::new().with("AWS_PROFILE", "other").resolve(&spec(None, None)).unwrap();
        assert_eq!(r.key, key("OTHERID", "othersecret", Some("othertoken")));
        assert_eq!(r.region.as_deref(), Some("other-region"));
        assert_eq!(r.endpoint, None);
        // A profile only the config file has: its settings, no key.
        let r = Files::new().with("AWS_PROFILE", "config-only").resolve(&spec(None, None)).unwrap();
        assert_eq!((r.key, r.region.as_deref()), (None, Some("r3")));
    }

    #[test]
    fn the_variables_name_the_files() {
        let files = Files::new();
        let elsewhere = files.dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "[default]\naws_access_key_id=X\naws_secret_access_key=Y\n").unwrap();
        let files = files
            .with("AWS_SHARED_CREDENTIALS_FILE", &elsewhere.display().to_string())
            .with("AWS_CONFIG_FILE", &files_path(&elsewhere, "missing-config"));
        // A config file named by its variable must exist.
        let err = files.resolve(&spec(None, None)).unwrap_err().to_string();
        assert!(err.contains("missing-config") && err.contains("\"default\""), "{err}");
    }

    fn files_path(next_to: &Path, name: &str) -> String {
        next_to.with_file_name(name).display().to_string()
    }

    #[test]
    fn no_files_no_key_and_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let r = resolve(&spec(None, None), &|name| (name == "HOME").then(|| home.clone())).unwrap();
        assert_eq!(r, Resolved::default());
    }

    #[test]
    fn a_missing_profile_or_a_broken_file_is_one_line_naming_file_and_profile() {
        let files = Files::new().with("AWS_PROFILE", "nope");
        let err = files.resolve(&spec(None, None)).unwrap_err().to_string();
        assert!(err.contains("\"nope\"") && err.contains(".aws/credentials") && err.contains(".aws/config"), "{err}");
        assert_eq!(err.lines().count(), 1);

        let files = Files::new();
        std::fs::write(
            files.dir.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = ID\naws_secret_access_key = verysecret\n[broken\n",
        )
        .unwrap();
        let err = files.resolve(&spec(None, None)).unwrap_err().to_string();
        assert!(err.contains(".aws/credentials") && err.contains("\"default\"") && err.contains("line"), "{err}");
        assert!(!err.contains("verysecret"), "{err}");
        assert_eq!(err.lines().count(), 1);

        std::fs::write(files.dir.path().join(".aws/credentials"), "[default]\naws_secret_access_key = verysecret\n")
            .unwrap();
        let err = files.resolve(&spec(None, None)).unwrap_err().to_string();
        assert!(err.contains("no aws_access_key_id") && !err.contains("verysecret"), "{err}");
    }
}
