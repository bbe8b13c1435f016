//! Keystone v3: the `POST /v3/auth/tokens` request for password and application-credential auth, the
//! token it answers (expiry, project, catalog), and picking an endpoint from the catalog by service
//! type, region and interface.

use serde::{Deserialize, Serialize};

use super::Secret;

/// A domain, by name (upstream's secrets) or by id (`OS_USER_DOMAIN_ID=default` in many openrc files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// `{"name": ..}`.
    Name(String),
    /// `{"id": ..}`.
    Id(String),
}

impl Domain {
    fn json(&self) -> serde_json::Value {
        match self {
            Self::Name(name) => serde_json::json!({ "name": name }),
            Self::Id(id) => serde_json::json!({ "id": id }),
        }
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "'{name}'"),
            Self::Id(id) => write!(f, "with id '{id}'"),
        }
    }
}

/// How to authenticate to Keystone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A user name and password, scoped to a project.
    Password {
        /// User name.
        username: String,
        /// The user's domain (upstream's secret key `domain_name`).
        user_domain: Domain,
        /// The project to scope to (upstream's `project_name`).
        project: String,
        /// The project's domain; upstream uses `domain_name` for both.
        project_domain: Domain,
        /// Password (never printed).
        password: Secret,
    },
    /// An application credential: it carries its own project scope, so no scope block is sent.
    ApplicationCredential {
        /// The credential's id.
        id: String,
        /// Its secret (never printed).
        secret: Secret,
    },
}

impl Auth {
    /// Who is logging in, for messages (never a secret).
    pub fn who(&self) -> String {
        match self {
            Self::Password {
                username,
                user_domain,
                ..
            } => format!("user '{username}' in domain {user_domain}"),
            Self::ApplicationCredential { id, .. } => format!("application credential {id}"),
        }
    }

    /// The JSON body of `POST /v3/auth/tokens`; `scoped = false` leaves the project scope out (used to
    /// tell a wrong password from a project the user cannot use).
    pub fn request_body(&self, scoped: bool) -> serde_json::Value {
        match self {
            Self::Password {
                username,
                user_domain,
                project,
                project_domain,
                password,
            } => {
                let mut auth = serde_json::json!({
                    "identity": {
                        "methods": ["password"],
                        "password": {"user": {
                            "name": username,
                            "domain": user_domain.json(),
                            "password": password.expose(),
                        }},
                    },
                });
                if scoped {
                    auth["scope"] =
                        serde_json::json!({"project": {"name": project, "domain": project_domain.json()}});
                }
                serde_json::json!({ "auth": auth })
            }
            Self::ApplicationCredential { id, secret } => serde_json::json!({
                "auth": {"identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": id, "secret": secret.expose()},
                }},
            }),
        }
    }
}

/// The body of a token response (`{"token": {...}}`).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The token's description.
    pub token: Token,
}

/// What Keystone says about a token. The token itself is the `X-Subject-Token` header.
#[derive(Debug, Clone, Deserialize)]
pub struct Token {
    /// When it stops working (RFC 3339, e.g. `2026-11-23T12:51:07.000000Z`).
    pub expires_at: String,
    /// The user.
    pub user: NamedRef,
    /// The project it is scoped to (absent for an unscoped token).
    #[serde(default)]
    pub project: Option<Project>,
    /// Services and their endpoints (absent for an unscoped token).
    #[serde(default)]
    pub catalog: Vec<CatalogEntry>,
}

impl Token {
    /// The expiry as a timestamp.
    ///
    /// # Errors
    /// When `expires_at` is not an RFC 3339 time (Keystone writes microseconds and `Z`).
    pub fn expires(&self) -> Result<jiff::Timestamp, jiff::Error> {
        self.expires_at.parse()
    }
}

/// An id and a name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NamedRef {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
}

/// The project a token is scoped to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Project {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Its domain.
    #[serde(default)]
    pub domain: Option<NamedRef>,
}

/// One service in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CatalogEntry {
    /// `compute`, `volumev3`, `block-storage`, `image`, `network`, `identity`, ...
    #[serde(rename = "type")]
    pub service_type: String,
    /// Name, e.g. `nova`.
    #[serde(default)]
    pub name: String,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Endpoint {
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// The region id (`region` is the legacy spelling of the same value).
    #[serde(default)]
    pub region_id: Option<String>,
    /// Legacy region field.
    #[serde(default)]
    pub region: Option<String>,
    /// The URL, with `$(project_id)s` already substituted by Keystone.
    pub url: String,
}

impl Endpoint {
    fn region(&self) -> Option<&str> {
        self.region_id.as_deref().or(self.region.as_deref())
    }
}

/// Which endpoint interface to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// What clients outside the cloud use.
    #[default]
    Public,
    /// The cloud's internal network.
    Internal,
    /// Administrative endpoints.
    Admin,
}

impl Interface {
    /// As Keystone spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Internal => "internal",
            Self::Admin => "admin",
        }
    }

    /// Parses `public`/`internal`/`admin`, also with the `URL` suffix clouds.yaml allows (`publicURL`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().trim_end_matches("URL") {
            "public" => Some(Self::Public),
            "internal" => Some(Self::Internal),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// Why no endpoint was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The catalog has no service of these types at all.
    #[error("the service catalog has no {wanted} service (it has: {available})")]
    NoService {
        /// The types looked for, e.g. `block-storage or volumev3`.
        wanted: String,
        /// The types it has.
        available: String,
    },
    /// The service exists, but not in this region with this interface.
    #[error(
        "the {service_type} service has no {interface} endpoint in region '{region}' (it has {interface} endpoints in: {regions})"
    )]
    NoEndpoint {
        /// The service type found.
        service_type: String,
        /// The region asked for.
        region: String,
        /// The interface asked for.
        interface: &'static str,
        /// The regions that do have that interface.
        regions: String,
    },
}

/// Picks the URL of the first service type in `types` (in order of preference) that has an endpoint
/// with `interface` in `region` (any region when `region` is `None`).
///
/// # Errors
/// [`CatalogError`] naming what is there instead.
pub fn select_endpoint(
    catalog: &[CatalogEntry],
    types: &[&str],
    region: Option<&str>,
    interface: Interface,
) -> Result<String, CatalogError> {
    let mut first_found: Option<&CatalogEntry> = None;
    for wanted in types {
        for entry in catalog.iter().filter(|e| e.service_type == *wanted) {
            first_found.get_or_insert(entry);
            let hit = entry
                .endpoints
                .iter()
                .find(|e| e.interface == interface.as_str() && region.is_none_or(|r| e.region() == Some(r)));
            if let Some(endpoint) = hit {
                return Ok(endpoint.url.clone());
            }
        }
    }
    match first_found {
        None => {
            let mut available: Vec<&str> = catalog.iter().map(|e| e.service_type.as_str()).collect();
            available.sort_unstable();
            available.dedup();
            Err(CatalogError::NoService {
                wanted: types.join(" or "),
                available: if available.is_empty() {
                    "nothing".into()
                } else {
                    available.join(", ")
                },
            })
        }
        Some(entry) => {
            let mut regions: Vec<&str> = entry
                .endpoints
                .iter()
                .filter(|e| e.interface == interface.as_str())
                .filter_map(Endpoint::region)
                .collect();
            regions.sort_unstable();
            regions.dedup();
            Err(CatalogError::NoEndpoint {
                service_type: entry.service_type.clone(),
                region: region.unwrap_or("").to_owned(),
                interface: interface.as_str(),
                regions: if regions.is_empty() {
                    "none".into()
                } else {
                    regions.join(", ")
                },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Vec<CatalogEntry> {
        serde_json::from_value(serde_json::json!([
            {"type": "compute", "name": "nova", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "region": "RegionOne", "url": "https://c1/v2.1"},
                {"interface": "internal", "region_id": "RegionOne", "url": "http://c1-int/v2.1"},
                {"interface": "public", "region_id": "RegionTwo", "url": "https://c2/v2.1"}]},
            {"type": "volumev3", "name": "cinderv3", "endpoints": [
                {"interface": "public", "region_id": "RegionOne", "url": "https://v1/v3/p1"}]},
            {"type": "identity", "name": "keystone", "endpoints": []}
        ]))
        .unwrap()
    }

    #[test]
    fn endpoints_are_chosen_by_region_and_interface() {
        let c = catalog();
        let pick = |t: &[&str], r, i| select_endpoint(&c, t, r, i);
        assert_eq!(
            pick(&["compute"], Some("RegionTwo"), Interface::Public).unwrap(),
            "https://c2/v2.1"
        );
        assert_eq!(
            pick(&["compute"], Some("RegionOne"), Interface::Internal).unwrap(),
            "http://c1-int/v2.1"
        );
        assert_eq!(
            pick(&["compute"], None, Interface::Public).unwrap(),
            "https://c1/v2.1"
        );
        assert_eq!(
            pick(
                &["block-storage", "volumev3"],
                Some("RegionOne"),
                Interface::Public
            )
            .unwrap(),
            "https://v1/v3/p1"
        );
    }

    #[test]
    fn missing_region_and_service_say_what_exists() {
        let c = catalog();
        let err = select_endpoint(&c, &["compute"], Some("RegionX"), Interface::Public).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the compute service has no public endpoint in region 'RegionX' (it has public endpoints in: RegionOne, RegionTwo)"
        );
        let err = select_endpoint(&c, &["image"], Some("RegionOne"), Interface::Public).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the service catalog has no image service (it has: compute, identity, volumev3)"
        );
    }

    #[test]
    fn password_body_scopes_the_project_unless_asked_not_to() {
        let auth = Auth::Password {
            username: "u".into(),
            user_domain: Domain::Name("ud".into()),
            project: "p".into(),
            project_domain: Domain::Id("pd".into()),
            password: Secret::new("pw"),
        };
        let body = auth.request_body(true);
        assert_eq!(
            body["auth"]["identity"]["password"]["user"]["domain"]["name"],
            "ud"
        );
        assert_eq!(body["auth"]["scope"]["project"]["domain"]["id"], "pd");
        assert!(auth.request_body(false)["auth"].get("scope").is_none());
        assert!(!format!("{auth:?}").contains("pw"), "Debug hides the password");
    }

    #[test]
    fn token_expiry_parses_keystone_timestamps() {
        let token: TokenResponse = serde_json::from_value(serde_json::json!({"token": {
            "expires_at": "2026-11-23T12:51:07.000000Z", "user": {"id": "u1", "name": "importer"},
            "project": {"id": "p1", "name": "migrations", "domain": {"id": "d1", "name": "lab"}}}}))
        .unwrap();
        assert_eq!(token.token.expires().unwrap().as_second(), 1_795_438_267);
        assert!(token.token.catalog.is_empty());
    }

    #[test]
    fn interfaces_parse_with_the_legacy_suffix() {
        assert_eq!(Interface::parse("publicURL"), Some(Interface::Public));
        assert_eq!(Interface::parse("internal"), Some(Interface::Internal));
        assert_eq!(Interface::parse("x"), None);
    }
}
