//! The session: Keystone v3 login (password with user and project domains, or an application
//! credential), the service catalog read once into the endpoints the importer needs, the compute
//! microversion negotiated once, the token renewed before it expires, and every call made with
//! `X-Auth-Token`, a timeout and one re-login on `401` (a token revoked or expired early).
//!
//! Secrets live only in [`Config`] (as [`Secret`], whose `Debug` is `***`) and in the login body; no
//! error carries a request body or a token.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use reqwest::{Method, StatusCode, Url, header};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::{
    proto::{
        self, Microversion,
        clouds::CloudConfig,
        compute::{self, VersionDocument},
        identity::{self, Auth, CatalogError, Interface, TokenResponse},
    },
    tls::{self, TlsMode},
};

/// Default limit for one API call (not for downloads, which have an idle limit instead).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Default TCP+TLS connect limit.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A token is renewed when it has less than this left, so no long step starts on a dying token.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Largest JSON answer read (a server list of thousands fits easily).
const MAX_JSON_BYTES: usize = 32 << 20;

/// How much of an error body is kept.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Service types tried for block storage, newest name first.
const BLOCK_STORAGE_TYPES: &[&str] = &["block-storage", "volumev3"];

/// How to reach and authenticate to a cloud.
#[derive(Debug, Clone)]
pub struct Config {
    /// Keystone's URL; `/v3` is added when it does not end in it.
    pub auth_url: String,
    /// Credentials.
    pub auth: Auth,
    /// Region of the endpoints (`None`: the first region offering each service).
    pub region: Option<String>,
    /// Endpoint interface.
    pub interface: Interface,
    /// Certificate policy.
    pub tls: TlsMode,
    /// Limit per API call.
    pub call_timeout: Duration,
    /// Limit per connection attempt.
    pub connect_timeout: Duration,
    /// Renew the token when it has less than this left.
    pub renew_before: Duration,
}

impl Config {
    /// Verified TLS against the system roots, public interface, default timeouts.
    pub fn new(auth_url: impl Into<String>, auth: Auth) -> Self {
        Self {
            auth_url: auth_url.into(),
            auth,
            region: None,
            interface: Interface::Public,
            tls: TlsMode::SystemRoots,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            renew_before: DEFAULT_RENEW_BEFORE,
        }
    }

    /// From `OS_*` variables or a clouds.yaml entry; `ca_pem` is the content of its CA file.
    pub fn from_cloud(cloud: CloudConfig, ca_pem: Option<Vec<u8>>) -> Self {
        let tls = match (cloud.insecure, ca_pem) {
            (true, _) => TlsMode::Insecure,
            (false, Some(pem)) => TlsMode::CaBundle(pem),
            (false, None) => TlsMode::SystemRoots,
        };
        Self {
            region: cloud.region,
            interface: cloud.interface,
            tls,
            ..Self::new(cloud.auth_url, cloud.auth)
        }
    }

    /// Sets the TLS policy.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the region.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets how long before expiry the token is renewed.
    #[must_use]
    pub fn with_renew_before(mut self, renew_before: Duration) -> Self {
        self.renew_before = renew_before;
        self
    }
}

/// What went wrong talking to the cloud.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The auth URL is not an http(s) URL.
    #[error("invalid Keystone URL '{url}': {reason}")]
    InvalidAuthUrl {
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// TLS could not be configured.
    #[error("cannot configure TLS")]
    Tls(#[source] tls::Error),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    BuildHttpClient(#[source] reqwest::Error),
    /// Keystone refused the user name and password, or the application credential.
    #[error(
        "Keystone at {auth_url} rejected the credentials of {who} (wrong password, unknown user or domain, or a disabled or expired credential)"
    )]
    InvalidCredentials {
        /// Keystone.
        auth_url: String,
        /// Who tried (never a secret).
        who: String,
    },
    /// The credentials are right but the project cannot be used.
    #[error(
        "{who} logged in to {auth_url}, but project '{project}' in domain {domain} does not exist or the user has no role on it"
    )]
    UnknownProject {
        /// Keystone.
        auth_url: String,
        /// Who.
        who: String,
        /// The project.
        project: String,
        /// Its domain.
        domain: String,
    },
    /// Keystone answered the login with something else.
    #[error("login to {auth_url} failed: HTTP {status}: {message}")]
    Login {
        /// Keystone.
        auth_url: String,
        /// The status.
        status: StatusCode,
        /// Keystone's message.
        message: String,
    },
    /// The login answer lacks the token or is malformed.
    #[error("Keystone at {auth_url} answered the login without a usable token: {reason}")]
    BadToken {
        /// Keystone.
        auth_url: String,
        /// What is wrong.
        reason: String,
    },
    /// The catalog lacks a service, or the region/interface has no endpoint for it.
    #[error("no usable endpoint")]
    Catalog(#[source] CatalogError),
    /// An endpoint URL from the catalog is not a URL.
    #[error("the catalog's {service} endpoint '{url}' is not a URL")]
    BadEndpoint {
        /// The service.
        service: &'static str,
        /// The URL.
        url: String,
    },
    /// The request could not be sent or the answer not read.
    #[error("{method} {url}: transport error")]
    Transport {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// What reqwest saw.
        #[source]
        source: reqwest::Error,
    },
    /// The call did not finish in time.
    #[error("{method} {url} timed out after {timeout:?}")]
    Timeout {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// A status other than success.
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The service's message.
        message: String,
    },
    /// The token was refused again right after a fresh login.
    #[error("{method} {url}: the service rejected a freshly issued token (HTTP 401)")]
    TokenRejected {
        /// Method.
        method: Method,
        /// URL.
        url: String,
    },
    /// The token expired or was revoked, and logging in again failed.
    #[error("the token expired or was revoked during {method} {url}, and logging in again failed")]
    Reauthenticate {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// Why the login failed.
        #[source]
        source: Box<Error>,
    },
    /// The answer is not the JSON expected.
    #[error("{method} {url}: unexpected answer")]
    Decode {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// What serde saw.
        #[source]
        source: serde_json::Error,
    },
    /// The answer is larger than the limit.
    #[error("{method} {url}: answer larger than {limit} bytes")]
    TooLarge {
        /// Method.
        method: Method,
        /// URL.
        url: String,
        /// The limit.
        limit: usize,
    },
}

impl Error {
    /// The HTTP status of a failed call, if it got that far.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } | Self::Login { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the object asked for does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// Whether this is about credentials (wrong, revoked, or an unusable project).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::InvalidCredentials { .. }
                | Self::UnknownProject { .. }
                | Self::TokenRejected { .. }
                | Self::Reauthenticate { .. }
        )
    }
}

/// The services the importer calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Nova.
    Compute,
    /// Cinder v3.
    BlockStorage,
    /// Glance v2.
    Image,
    /// Neutron.
    Network,
}

impl Service {
    /// Its usual name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Compute => "compute",
            Self::BlockStorage => "block-storage",
            Self::Image => "image",
            Self::Network => "network",
        }
    }
}

struct Session {
    token: String,
    expires: jiff::Timestamp,
}

#[derive(Debug, Clone)]
struct Endpoints {
    compute: Url,
    block_storage: Url,
    image: Url,
    network: Option<Url>,
}

struct Inner {
    http: reqwest::Client,
    config: Config,
    keystone: Url,
    endpoints: Endpoints,
    project_id: String,
    /// Set once by [`Client::connect`]; 2.1 (no header effect) while it is being negotiated.
    microversion: std::sync::OnceLock<Microversion>,
    session: Mutex<Session>,
    logins: AtomicU64,
}

/// A logged-in client. Cheap to clone (one session shared by the clones).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("keystone", &self.inner.keystone.as_str())
            .field("project_id", &self.inner.project_id)
            .field("microversion", &self.microversion())
            .finish_non_exhaustive()
    }
}

/// `…/v3` for whatever Keystone URL was given.
fn keystone_v3(url: &str) -> Result<Url, Error> {
    let invalid = |reason: String| Error::InvalidAuthUrl {
        url: url.to_owned(),
        reason,
    };
    let mut parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(invalid("the scheme must be https or http".into()));
    }
    let path = parsed.path().trim_end_matches('/').to_owned();
    let path = if path.ends_with("/v3") {
        path
    } else {
        format!("{path}/v3")
    };
    parsed.set_path(&path);
    Ok(parsed)
}

fn endpoint_url(service: &'static str, url: &str) -> Result<Url, Error> {
    let mut parsed = Url::parse(url).map_err(|_| Error::BadEndpoint {
        service,
        url: url.to_owned(),
    })?;
    // Paths are appended as `base + "/servers"`: keep the base without its trailing slash.
    let trimmed = parsed.path().trim_end_matches('/').to_owned();
    parsed.set_path(&trimmed);
    Ok(parsed)
}

async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    method: &Method,
    url: &str,
) -> Result<Bytes, Error> {
    let mut response = response;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| Error::Transport {
        method: method.clone(),
        url: url.to_owned(),
        source,
    })? {
        if body.len() + chunk.len() > limit {
            return Err(Error::TooLarge {
                method: method.clone(),
                url: url.to_owned(),
                limit,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// One login: `Ok((token, expiry, body))`.
async fn login(
    http: &reqwest::Client,
    keystone: &Url,
    auth: &Auth,
    timeout: Duration,
) -> Result<(String, jiff::Timestamp, identity::Token), Error> {
    let url = format!("{keystone}/auth/tokens");
    let attempt = |scoped: bool| {
        let body = auth.request_body(scoped);
        let url = url.clone();
        async move {
            let send = http.post(&url).json(&body).timeout(timeout).send();
            let response = send.await.map_err(|source| {
                if source.is_timeout() {
                    Error::Timeout {
                        method: Method::POST,
                        url: url.clone(),
                        timeout,
                    }
                } else {
                    Error::Transport {
                        method: Method::POST,
                        url: url.clone(),
                        source,
                    }
                }
            })?;
            let status = response.status();
            let token = response
                .headers()
                .get("X-Subject-Token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = read_limited(response, MAX_JSON_BYTES, &Method::POST, &url).await?;
            Ok::<_, Error>((status, token, body))
        }
    };
    let auth_url = keystone.to_string();
    let (status, token, body) = attempt(true).await?;
    if status == StatusCode::UNAUTHORIZED {
        // Keystone says 401 for a wrong password and for a project the user cannot use alike; an
        // unscoped login tells them apart.
        if let Auth::Password {
            project,
            project_domain,
            ..
        } = auth
        {
            let (unscoped, _, _) = attempt(false).await?;
            if unscoped.is_success() {
                return Err(Error::UnknownProject {
                    auth_url,
                    who: auth.who(),
                    project: project.clone(),
                    domain: project_domain.to_string(),
                });
            }
        }
        return Err(Error::InvalidCredentials {
            auth_url,
            who: auth.who(),
        });
    }
    if !status.is_success() {
        return Err(Error::Login {
            auth_url,
            status,
            message: proto::error_message(&body),
        });
    }
    let bad = |reason: String| Error::BadToken {
        auth_url: auth_url.clone(),
        reason,
    };
    let token = token.ok_or_else(|| bad("no X-Subject-Token header".into()))?;
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
    let expires = parsed
        .token
        .expires()
        .map_err(|e| bad(format!("expires_at '{}': {e}", parsed.token.expires_at)))?;
    Ok((token, expires, parsed.token))
}

impl Client {
    /// Logs in, reads the catalog (compute, block storage and image are required; network is
    /// optional) and negotiates the compute microversion.
    ///
    /// # Errors
    /// [`Error::InvalidCredentials`], [`Error::UnknownProject`], [`Error::Catalog`] for a missing
    /// region or endpoint, transport and TLS errors.
    pub async fn connect(config: Config) -> Result<Client, Error> {
        let keystone = keystone_v3(&config.auth_url)?;
        let tls = tls::client_config(&config.tls).map_err(Error::Tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("vm-import/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::BuildHttpClient)?;
        let (token, expires, body) = login(&http, &keystone, &config.auth, config.call_timeout).await?;
        let project_id = body
            .project
            .as_ref()
            .map(|p| p.id.clone())
            .ok_or_else(|| Error::BadToken {
                auth_url: keystone.to_string(),
                reason: "the token is not scoped to a project".into(),
            })?;
        let region = config.region.as_deref();
        let pick = |name: &'static str, types: &[&str]| -> Result<Url, Error> {
            let url = identity::select_endpoint(&body.catalog, types, region, config.interface)
                .map_err(Error::Catalog)?;
            endpoint_url(name, &url)
        };
        let endpoints = Endpoints {
            compute: pick("compute", &["compute"])?,
            block_storage: pick("block-storage", BLOCK_STORAGE_TYPES)?,
            image: pick("image", &["image"])?,
            network: pick("network", &["network"]).ok(),
        };
        let client = Client {
            inner: Arc::new(Inner {
                http,
                config,
                keystone,
                endpoints,
                project_id,
                microversion: std::sync::OnceLock::new(),
                session: Mutex::new(Session { token, expires }),
                logins: AtomicU64::new(1),
            }),
        };
        let microversion = client.negotiate_microversion().await?;
        let _ = client.inner.microversion.set(microversion);
        Ok(client)
    }

    async fn negotiate_microversion(&self) -> Result<Microversion, Error> {
        let doc: VersionDocument = self.get_json(Service::Compute, "/").await?;
        let max = proto::parse_microversion(&doc.version.version);
        Ok(compute::choose_microversion(max))
    }

    /// The project the session is scoped to.
    pub fn project_id(&self) -> &str {
        &self.inner.project_id
    }

    /// The compute microversion in use.
    pub fn microversion(&self) -> Microversion {
        self.inner
            .microversion
            .get()
            .copied()
            .unwrap_or(Microversion(2, 1))
    }

    /// Whether certificate checks are off.
    pub fn tls_insecure(&self) -> bool {
        self.inner.config.tls.is_insecure()
    }

    /// Logins so far (1 after connect; each renewal or re-login after a 401 adds one).
    pub fn logins(&self) -> u64 {
        self.inner.logins.load(Ordering::Relaxed)
    }

    /// Whether the catalog has a network endpoint.
    pub fn has_network(&self) -> bool {
        self.inner.endpoints.network.is_some()
    }

    /// Revokes the session's token (best effort hygiene; tokens also expire on their own).
    ///
    /// # Errors
    /// Transport or status errors of the `DELETE /v3/auth/tokens`.
    pub async fn logout(&self) -> Result<(), Error> {
        let token = self.inner.session.lock().await.token.clone();
        let url = format!("{}/auth/tokens", self.inner.keystone);
        let response = self
            .inner
            .http
            .delete(&url)
            .header("X-Auth-Token", &token)
            .header("X-Subject-Token", &token)
            .timeout(self.inner.config.call_timeout)
            .send()
            .await
            .map_err(|source| Error::Transport {
                method: Method::DELETE,
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(Error::Status {
            method: Method::DELETE,
            url,
            status,
            message: String::new(),
        })
    }

    /// The current token, renewed first when it is about to expire (or `force`d, after a 401).
    async fn token(&self, force: bool, stale: Option<&str>) -> Result<String, Error> {
        let mut session = self.inner.session.lock().await;
        let renew_at = session
            .expires
            .checked_sub(jiff::SignedDuration::try_from(self.inner.config.renew_before).unwrap_or_default())
            .unwrap_or(session.expires);
        // After a 401 only the caller holding the stale token logs in again; others reuse the new one.
        let stale_now = force && stale.is_none_or(|t| t == session.token);
        if stale_now || jiff::Timestamp::now() >= renew_at {
            let (token, expires, _) = login(
                &self.inner.http,
                &self.inner.keystone,
                &self.inner.config.auth,
                self.inner.config.call_timeout,
            )
            .await?;
            self.inner.logins.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(forced = force, "logged in again");
            *session = Session { token, expires };
        }
        Ok(session.token.clone())
    }

    fn base(&self, service: Service) -> Result<&Url, Error> {
        let e = &self.inner.endpoints;
        match service {
            Service::Compute => Ok(&e.compute),
            Service::BlockStorage => Ok(&e.block_storage),
            Service::Image => Ok(&e.image),
            Service::Network => e.network.as_ref().ok_or_else(|| {
                Error::Catalog(CatalogError::NoService {
                    wanted: "network".into(),
                    available: "no network service in the catalog".into(),
                })
            }),
        }
    }

    /// The full URL of `path` (starting with `/`) on `service`.
    pub fn url(&self, service: Service, path: &str) -> Result<String, Error> {
        Ok(format!(
            "{}{}",
            self.base(service)?.as_str().trim_end_matches('/'),
            path
        ))
    }

    /// Sends a request built by `build` (called again for the retry after a 401) with the token and,
    /// for compute, the microversion headers. `timeout: None` for streaming downloads. The response
    /// is returned whatever its status, except 401.
    pub(crate) async fn send(
        &self,
        service: Service,
        method: Method,
        path: &str,
        timeout: Option<Duration>,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        let url = self.url(service, path)?;
        let mut token = self.token(false, None).await?;
        for attempt in 0..2 {
            let mut request = self
                .inner
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", &token)
                .header(header::ACCEPT, "application/json");
            if service == Service::Compute {
                let v = self.microversion().to_string();
                request = request
                    .header("OpenStack-API-Version", format!("compute {v}"))
                    .header("X-OpenStack-Nova-API-Version", v);
            }
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            let response = build(request).send().await.map_err(|source| {
                if source.is_timeout() {
                    Error::Timeout {
                        method: method.clone(),
                        url: url.clone(),
                        timeout: timeout.unwrap_or_default(),
                    }
                } else {
                    Error::Transport {
                        method: method.clone(),
                        url: url.clone(),
                        source,
                    }
                }
            })?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if attempt == 1 {
                break;
            }
            tracing::info!(%url, "token refused (expired or revoked): logging in again");
            token = self
                .token(true, Some(&token))
                .await
                .map_err(|source| Error::Reauthenticate {
                    method: method.clone(),
                    url: url.clone(),
                    source: Box::new(source),
                })?;
        }
        Err(Error::TokenRejected { method, url })
    }

    /// A call whose success answer is read whole (bounded) and returned with its status.
    pub(crate) async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, header::HeaderMap, Bytes), Error> {
        let timeout = self.inner.config.call_timeout;
        let response = self
            .send(service, method.clone(), path, Some(timeout), |r| match body {
                Some(b) => r.json(b),
                None => r,
            })
            .await?;
        let url = response.url().to_string();
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            let body = read_limited(response, MAX_ERROR_BYTES, &method, &url)
                .await
                .unwrap_or_default();
            return Err(Error::Status {
                method,
                url,
                status,
                message: proto::error_message(&body),
            });
        }
        let bytes = read_limited(response, MAX_JSON_BYTES, &method, &url).await?;
        Ok((status, headers, bytes))
    }

    /// `GET` decoded as `T`.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
    ) -> Result<T, Error> {
        self.call_json(service, Method::GET, path, None).await
    }

    /// Any call whose answer is decoded as `T`.
    pub(crate) async fn call_json<T: DeserializeOwned>(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, Error> {
        let (_, _, bytes) = self.call(service, method.clone(), path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            method,
            url: self.url(service, path).unwrap_or_default(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_urls_get_v3_once() {
        assert_eq!(
            keystone_v3("https://k:5000").unwrap().as_str(),
            "https://k:5000/v3"
        );
        assert_eq!(
            keystone_v3("https://k:5000/v3/").unwrap().as_str(),
            "https://k:5000/v3"
        );
        assert_eq!(
            keystone_v3("https://k/identity").unwrap().as_str(),
            "https://k/identity/v3"
        );
        assert!(keystone_v3("ftp://k").is_err());
        assert!(keystone_v3("not a url").is_err());
    }

    #[test]
    fn endpoint_bases_lose_their_trailing_slash() {
        assert_eq!(
            endpoint_url("image", "https://g:9292/").unwrap().as_str(),
            "https://g:9292/"
        );
        assert_eq!(
            endpoint_url("compute", "https://n/compute/v2.1/")
                .unwrap()
                .as_str(),
            "https://n/compute/v2.1"
        );
    }
}
