//! A cloud's connection settings from the `OS_*` environment variables of an openrc file or from a
//! `clouds.yaml` entry, turned into one [`CloudConfig`]. Pure: the caller reads the file and the
//! environment and passes them in.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Secret,
    identity::{Auth, Domain, Interface},
};

/// Everything needed to reach a cloud, wherever it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudConfig {
    /// Keystone, e.g. `https://keystone.example:5000/v3` (`/v3` is added when missing).
    pub auth_url: String,
    /// Credentials.
    pub auth: Auth,
    /// Region of the endpoints (`None`: the first region that has the service).
    pub region: Option<String>,
    /// Endpoint interface.
    pub interface: Interface,
    /// A CA bundle file to verify against (`OS_CACERT`, `cacert`).
    pub ca_file: Option<String>,
    /// `verify: false` in clouds.yaml, `OS_INSECURE=true`.
    pub insecure: bool,
}

/// What is missing or wrong in the settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required value is missing.
    #[error("{what} is not set ({hint})")]
    Missing {
        /// The value.
        what: &'static str,
        /// Where it could come from.
        hint: &'static str,
    },
    /// clouds.yaml is not YAML of the expected shape.
    #[error("clouds.yaml is malformed: {0}")]
    Yaml(String),
    /// The named cloud is not in clouds.yaml.
    #[error("cloud '{cloud}' is not in clouds.yaml (it has: {available})")]
    UnknownCloud {
        /// The name asked for.
        cloud: String,
        /// The names present.
        available: String,
    },
    /// An auth type other than password or application credential.
    #[error("auth type '{0}' is not supported (use password or v3applicationcredential)")]
    AuthType(String),
    /// An interface other than public, internal or admin.
    #[error("interface '{0}' is not one of public, internal, admin")]
    Interface(String),
}

/// Builds the config from `OS_*` variables (looked up through `var`).
///
/// # Errors
/// [`ConfigError::Missing`] naming the variable.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<CloudConfig, ConfigError> {
    let get = |k: &str| var(k).filter(|v| !v.is_empty());
    let mut values = BTreeMap::new();
    for (env, key) in [
        ("OS_AUTH_URL", "auth_url"),
        ("OS_USERNAME", "username"),
        ("OS_PASSWORD", "password"),
        ("OS_PROJECT_NAME", "project_name"),
        ("OS_TENANT_NAME", "project_name"),
        ("OS_USER_DOMAIN_NAME", "user_domain_name"),
        ("OS_USER_DOMAIN_ID", "user_domain_id"),
        ("OS_PROJECT_DOMAIN_NAME", "project_domain_name"),
        ("OS_PROJECT_DOMAIN_ID", "project_domain_id"),
        ("OS_DOMAIN_NAME", "domain_name"),
        ("OS_APPLICATION_CREDENTIAL_ID", "application_credential_id"),
        (
            "OS_APPLICATION_CREDENTIAL_SECRET",
            "application_credential_secret",
        ),
        ("OS_AUTH_TYPE", "auth_type"),
    ] {
        if let Some(v) = get(env) {
            values.entry(key.to_owned()).or_insert(v);
        }
    }
    let interface = match get("OS_INTERFACE").or_else(|| get("OS_ENDPOINT_TYPE")) {
        Some(text) => Interface::parse(&text).ok_or(ConfigError::Interface(text))?,
        None => Interface::Public,
    };
    Ok(CloudConfig {
        auth_url: values.remove("auth_url").ok_or(ConfigError::Missing {
            what: "OS_AUTH_URL",
            hint: "the Keystone URL",
        })?,
        auth: auth_from(&values, "OS_")?,
        region: get("OS_REGION_NAME"),
        interface,
        ca_file: get("OS_CACERT"),
        insecure: get("OS_INSECURE").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
    })
}

/// Builds the config from the entry `cloud` of a clouds.yaml document. A password missing from the
/// file (kept out of it on purpose) is taken from `password_fallback` (the caller passes `OS_PASSWORD`).
///
/// # Errors
/// [`ConfigError`].
pub fn from_clouds_yaml(
    text: &str,
    cloud: &str,
    password_fallback: Option<String>,
) -> Result<CloudConfig, ConfigError> {
    #[derive(Deserialize)]
    struct File {
        clouds: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        auth: BTreeMap<String, serde_yaml_ng::Value>,
        #[serde(default)]
        auth_type: Option<String>,
        #[serde(default)]
        region_name: Option<String>,
        #[serde(default)]
        interface: Option<String>,
        #[serde(default)]
        cacert: Option<String>,
        #[serde(default)]
        verify: Option<bool>,
    }
    let file: File = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    let Some(entry) = file.clouds.get(cloud) else {
        return Err(ConfigError::UnknownCloud {
            cloud: cloud.into(),
            available: file.clouds.keys().cloned().collect::<Vec<_>>().join(", "),
        });
    };
    let mut values: BTreeMap<String, String> = entry
        .auth
        .iter()
        .filter_map(|(k, v)| match v {
            serde_yaml_ng::Value::String(s) => Some((k.clone(), s.clone())),
            serde_yaml_ng::Value::Number(n) => Some((k.clone(), n.to_string())),
            _ => None,
        })
        .collect();
    if let Some(t) = &entry.auth_type {
        values.insert("auth_type".into(), t.clone());
    }
    if !values.contains_key("password")
        && let Some(p) = password_fallback
    {
        values.insert("password".into(), p);
    }
    let interface = match &entry.interface {
        Some(text) => Interface::parse(text).ok_or_else(|| ConfigError::Interface(text.clone()))?,
        None => Interface::Public,
    };
    Ok(CloudConfig {
        auth_url: values.remove("auth_url").ok_or(ConfigError::Missing {
            what: "auth.auth_url",
            hint: "in the clouds.yaml entry",
        })?,
        auth: auth_from(&values, "")?,
        region: entry.region_name.clone(),
        interface,
        ca_file: entry.cacert.clone(),
        insecure: entry.verify == Some(false),
    })
}

/// Credentials from a source Secret's data, with upstream's keys (`username`, `password`,
/// `project_name`, `domain_name` for both domains) and the finer ones clouds.yaml uses
/// (`user_domain_name`, `project_domain_name`, `*_domain_id`, `application_credential_id` and
/// `application_credential_secret`). The CA (`ca_cert`) is the caller's business.
///
/// # Errors
/// [`ConfigError::Missing`] naming the key.
pub fn auth_from_secret(data: &BTreeMap<String, String>) -> Result<Auth, ConfigError> {
    let values: BTreeMap<String, String> = data
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    auth_from(&values, "")
}

fn auth_from(values: &BTreeMap<String, String>, prefix: &'static str) -> Result<Auth, ConfigError> {
    let auth_type = values.get("auth_type").map(String::as_str).unwrap_or("");
    let app_cred = matches!(auth_type, "v3applicationcredential" | "applicationcredential")
        || (auth_type.is_empty() && values.contains_key("application_credential_id"));
    if app_cred {
        let missing = |what| ConfigError::Missing {
            what,
            hint: "for application-credential auth",
        };
        return Ok(Auth::ApplicationCredential {
            id: values.get("application_credential_id").cloned().ok_or_else(|| {
                missing(if prefix.is_empty() {
                    "auth.application_credential_id"
                } else {
                    "OS_APPLICATION_CREDENTIAL_ID"
                })
            })?,
            secret: Secret::new(
                values
                    .get("application_credential_secret")
                    .cloned()
                    .ok_or_else(|| {
                        missing(if prefix.is_empty() {
                            "auth.application_credential_secret"
                        } else {
                            "OS_APPLICATION_CREDENTIAL_SECRET"
                        })
                    })?,
            ),
        });
    }
    if !matches!(auth_type, "" | "password" | "v3password") {
        return Err(ConfigError::AuthType(auth_type.into()));
    }
    let env = !prefix.is_empty();
    let missing = |file: &'static str, var: &'static str| ConfigError::Missing {
        what: if env { var } else { file },
        hint: "for password auth",
    };
    // `domain_name` (upstream's secret key, OS_DOMAIN_NAME) stands for both domains when the
    // specific ones are absent; with nothing at all, Keystone's `Default` domain.
    let domain = |name_key: &str, id_key: &str| {
        values
            .get(name_key)
            .map(|n| Domain::Name(n.clone()))
            .or_else(|| values.get(id_key).map(|i| Domain::Id(i.clone())))
            .or_else(|| values.get("domain_name").map(|n| Domain::Name(n.clone())))
            .unwrap_or_else(|| Domain::Name("Default".into()))
    };
    Ok(Auth::Password {
        username: values
            .get("username")
            .cloned()
            .ok_or_else(|| missing("auth.username", "OS_USERNAME"))?,
        user_domain: domain("user_domain_name", "user_domain_id"),
        project: values
            .get("project_name")
            .cloned()
            .ok_or_else(|| missing("auth.project_name", "OS_PROJECT_NAME"))?,
        project_domain: domain("project_domain_name", "project_domain_id"),
        password: Secret::new(
            values
                .get("password")
                .cloned()
                .ok_or_else(|| missing("auth.password (or OS_PASSWORD)", "OS_PASSWORD"))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openrc_variables_make_a_password_config() {
        let env: BTreeMap<&str, &str> = BTreeMap::from([
            ("OS_AUTH_URL", "https://k:5000/v3"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
            ("OS_PROJECT_NAME", "proj"),
            ("OS_USER_DOMAIN_NAME", "lab"),
            ("OS_PROJECT_DOMAIN_ID", "default"),
            ("OS_REGION_NAME", "RegionOne"),
            ("OS_INTERFACE", "internal"),
        ]);
        let config = from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(config.region.as_deref(), Some("RegionOne"));
        assert_eq!(config.interface, Interface::Internal);
        let Auth::Password {
            user_domain,
            project_domain,
            ..
        } = config.auth
        else {
            panic!("password auth")
        };
        assert_eq!(user_domain, Domain::Name("lab".into()));
        assert_eq!(project_domain, Domain::Id("default".into()));
    }

    #[test]
    fn upstream_domain_name_covers_both_domains() {
        let env = BTreeMap::from([
            ("OS_AUTH_URL", "https://k/v3"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
            ("OS_PROJECT_NAME", "proj"),
            ("OS_DOMAIN_NAME", "corp"),
        ]);
        let config = from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        let Auth::Password {
            user_domain,
            project_domain,
            ..
        } = config.auth
        else {
            panic!("password auth")
        };
        assert_eq!(
            (user_domain.clone(), project_domain),
            (Domain::Name("corp".into()), user_domain)
        );
    }

    #[test]
    fn upstream_secret_keys_keep_working() {
        let data = BTreeMap::from(
            [
                ("username", "u"),
                ("password", "p"),
                ("project_name", "proj"),
                ("domain_name", "corp"),
                ("ca_cert", ""),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        let Auth::Password {
            username,
            user_domain,
            project,
            project_domain,
            password,
        } = auth_from_secret(&data).unwrap()
        else {
            panic!("password auth")
        };
        assert_eq!(
            (username.as_str(), project.as_str(), password.expose()),
            ("u", "proj", "p")
        );
        assert_eq!(
            (user_domain, project_domain),
            (Domain::Name("corp".into()), Domain::Name("corp".into()))
        );
        let app = BTreeMap::from(
            [
                ("application_credential_id", "i"),
                ("application_credential_secret", "s"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert!(matches!(
            auth_from_secret(&app),
            Ok(Auth::ApplicationCredential { .. })
        ));
        assert_eq!(
            auth_from_secret(&BTreeMap::new()).unwrap_err().to_string(),
            "auth.username is not set (for password auth)"
        );
    }

    #[test]
    fn missing_values_are_named() {
        let err = from_env(|k| (k == "OS_AUTH_URL").then(|| "https://k/v3".to_owned())).unwrap_err();
        assert_eq!(err.to_string(), "OS_USERNAME is not set (for password auth)");
    }

    #[test]
    fn clouds_yaml_entries_with_app_credentials_and_password_fallback() {
        let yaml = r#"
clouds:
  lab:
    auth: {auth_url: "https://k/v3", username: u, project_name: p, user_domain_name: lab, project_domain_name: lab}
    region_name: RegionOne
    interface: publicURL
    cacert: /ca.pem
  app:
    auth_type: v3applicationcredential
    auth: {auth_url: "https://k/v3", application_credential_id: id1, application_credential_secret: s1}
    verify: false
"#;
        let lab = from_clouds_yaml(yaml, "lab", Some("from-env".into())).unwrap();
        assert_eq!(lab.ca_file.as_deref(), Some("/ca.pem"));
        assert!(matches!(lab.auth, Auth::Password { ref password, .. } if password.expose() == "from-env"));
        let app = from_clouds_yaml(yaml, "app", None).unwrap();
        assert!(app.insecure);
        assert!(matches!(app.auth, Auth::ApplicationCredential { ref id, .. } if id == "id1"));
        assert_eq!(
            from_clouds_yaml(yaml, "nope", None).unwrap_err().to_string(),
            "cloud 'nope' is not in clouds.yaml (it has: app, lab)"
        );
    }
}
