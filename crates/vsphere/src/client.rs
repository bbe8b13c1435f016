//! The SOAP session over HTTPS: connect (`RetrieveServiceContent`), `Login`, calls carrying the
//! `vmware_soap_session` cookie and `SOAPAction: urn:vim25/<announced apiVersion>`, one re-login on
//! `NotAuthenticated`, a timeout on every call, and `Logout` — explicitly via [`Client::logout`],
//! or best-effort when the last clone is dropped inside a tokio runtime.
//!
//! The password lives only in [`Config`] (wrapped in [`Password`], whose `Debug` is `***`) and in
//! the `Login` envelope; no error carries a request body.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use reqwest::{StatusCode, Url, header};
use tokio::sync::Mutex;

use crate::{
    proto::{
        FaultKind, Password, Request, envelope,
        response::{self, ServiceContent},
        xml::{Element, MAX_BODY_BYTES},
    },
    tls::{self, TlsMode},
};

/// Default limit for one SOAP round trip. vim25 calls answer in milliseconds to seconds; a minute
/// covers a loaded vCenter while still failing a dead connection in bounded time.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Default TCP+TLS connect limit.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How much of an unexpected (non-SOAP) HTTP body is kept for the error message.
const ERROR_SNIPPET_BYTES: usize = 512;

/// How to reach and authenticate to vCenter or ESXi.
#[derive(Debug, Clone)]
pub struct Config {
    /// The SDK endpoint, e.g. `https://vcenter.example/sdk` (a bare host gets `/sdk`).
    pub endpoint: String,
    /// User name.
    pub username: String,
    /// Password (never printed).
    pub password: Password,
    /// Certificate policy.
    pub tls: TlsMode,
    /// Limit per SOAP call.
    pub call_timeout: Duration,
    /// Limit per connection attempt.
    pub connect_timeout: Duration,
}

impl Config {
    /// A config with verified TLS against the system roots and the default timeouts.
    pub fn new(endpoint: impl Into<String>, username: impl Into<String>, password: Password) -> Self {
        Self {
            endpoint: endpoint.into(),
            username: username.into(),
            password,
            tls: TlsMode::SystemRoots,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Sets the TLS policy.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsMode) -> Self {
        self.tls = tls;
        self
    }

    /// Sets the per-call timeout.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not an http(s) URL.
    #[error("invalid vSphere endpoint '{endpoint}': {reason}")]
    InvalidEndpoint {
        /// As given.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// TLS could not be configured.
    #[error("cannot configure TLS for {endpoint}")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tls::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    BuildHttpClient(#[source] reqwest::Error),
    /// The request could not be sent or the response not read (connection, TLS, reset…).
    #[error("{method} to {endpoint}: transport error")]
    Transport {
        /// The vim25 method.
        method: &'static str,
        /// The endpoint.
        endpoint: String,
        /// What reqwest saw.
        #[source]
        source: reqwest::Error,
    },
    /// The call did not finish in time.
    #[error("{method} to {endpoint} timed out after {timeout:?}")]
    Timeout {
        /// The vim25 method.
        method: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The limit.
        timeout: Duration,
    },
    /// A status that is neither 200 nor a 500 carrying a SOAP fault.
    #[error("{method} to {endpoint}: unexpected HTTP {status}: {snippet}")]
    HttpStatus {
        /// The vim25 method.
        method: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The status.
        status: StatusCode,
        /// The start of the body, for diagnosis.
        snippet: String,
    },
    /// The response is larger than [`MAX_BODY_BYTES`].
    #[error("{method} response exceeds {MAX_BODY_BYTES} bytes")]
    ResponseTooLarge {
        /// The vim25 method.
        method: &'static str,
    },
    /// The response is a fault or malformed.
    #[error(transparent)]
    Response(#[from] response::Error),
    /// `Login` failed (wrong user name or password, or another fault).
    #[error("login to {endpoint} as '{username}' failed")]
    Login {
        /// The endpoint.
        endpoint: String,
        /// The user name (never the password).
        username: String,
        /// The fault or transport failure.
        #[source]
        source: Box<Error>,
    },
    /// `Login` succeeded but set no `vmware_soap_session` cookie.
    #[error("login to {endpoint} returned no vmware_soap_session cookie")]
    NoSessionCookie {
        /// The endpoint.
        endpoint: String,
    },
}

impl Error {
    /// The vmodl fault behind this error, if the server sent one.
    pub fn fault(&self) -> Option<&crate::proto::Fault> {
        match self {
            Self::Response(e) => e.fault(),
            Self::Login { source, .. } => source.fault(),
            _ => None,
        }
    }

    /// Whether the server said the credentials are wrong.
    pub fn is_invalid_login(&self) -> bool {
        self.fault().is_some_and(|f| f.kind == FaultKind::InvalidLogin)
    }
}

struct Inner {
    http: reqwest::Client,
    sdk: Url,
    config: Config,
    service: ServiceContent,
    soap_action: String,
    cookie: Mutex<Option<String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Some(cookie) = self.cookie.get_mut().take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let http = self.http.clone();
        let sdk = self.sdk.clone();
        let action = self.soap_action.clone();
        let request = envelope::logout(&self.service.session_manager);
        let timeout = self.config.call_timeout;
        handle.spawn(async move {
            // Best effort: the session would expire on its own; this just frees it early.
            let _ = http
                .post(sdk)
                .timeout(timeout)
                .header(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
                .header("SOAPAction", action)
                .header(header::COOKIE, cookie)
                .body(request.body)
                .send()
                .await;
        });
    }
}

/// A logged-in vim25 session. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("sdk", &self.inner.sdk.as_str())
            .field("username", &self.inner.config.username)
            .field("tls", &self.inner.config.tls)
            .field("api_version", &self.inner.service.api_version)
            .finish_non_exhaustive()
    }
}

fn sdk_url(endpoint: &str) -> Result<Url, Error> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(endpoint).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(invalid("scheme must be https"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in the URL would end up in logs and errors; they belong in Config.
        return Err(invalid("credentials must not be part of the URL"));
    }
    if url.host_str().is_none() {
        return Err(invalid("no host"));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/sdk");
    }
    Ok(url)
}

fn snippet(body: &[u8]) -> String {
    let cut = &body[..body.len().min(ERROR_SNIPPET_BYTES)];
    String::from_utf8_lossy(cut)
        .chars()
        .filter(|c| !c.is_control() || *c == ' ')
        .collect()
}

impl Client {
    /// Connects, reads the service content and logs in.
    ///
    /// # Errors
    /// [`Error::Login`] (check [`Error::is_invalid_login`]) for bad credentials; transport, TLS and
    /// response errors otherwise.
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let sdk = sdk_url(&config.endpoint)?;
        let tls = tls::client_config(&config.tls).map_err(|source| Error::Tls {
            endpoint: sdk.to_string(),
            source,
        })?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .user_agent(concat!("vm-import/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::BuildHttpClient)?;
        // The version is unknown before this call; every vim25 release answers it under "urn:vim25".
        let body = post(
            &http,
            &sdk,
            "urn:vim25",
            None,
            &envelope::retrieve_service_content(),
            config.call_timeout,
        )
        .await?
        .0;
        let service = response::service_content(&body)?;
        let soap_action = format!("urn:vim25/{}", service.api_version);
        if config.tls.is_insecure() {
            tracing::warn!(endpoint = %sdk, "TLS certificate verification is disabled (insecure)");
        }
        let client = Self {
            inner: Arc::new(Inner {
                http,
                sdk,
                config,
                service,
                soap_action,
                cookie: Mutex::new(None),
            }),
        };
        client.login().await?;
        Ok(client)
    }

    /// What `RetrieveServiceContent` said.
    pub fn service(&self) -> &ServiceContent {
        &self.inner.service
    }

    /// The SDK URL in use.
    pub fn sdk_url(&self) -> &Url {
        &self.inner.sdk
    }

    /// Whether TLS verification is off, for reports.
    pub fn tls_insecure(&self) -> bool {
        self.inner.config.tls.is_insecure()
    }

    /// The TLS policy in use.
    pub fn tls_mode(&self) -> &TlsMode {
        &self.inner.config.tls
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.inner.config.connect_timeout
    }

    pub(crate) async fn session_cookie(&self) -> Option<String> {
        self.inner.cookie.lock().await.clone()
    }

    async fn login(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let request = envelope::login(
            &inner.service.session_manager,
            &inner.config.username,
            &inner.config.password,
        );
        let wrap = |source: Error| Error::Login {
            endpoint: inner.sdk.to_string(),
            username: inner.config.username.clone(),
            source: Box::new(source),
        };
        let mut cookie = inner.cookie.lock().await;
        let (_, set_cookie) = post(
            &inner.http,
            &inner.sdk,
            &inner.soap_action,
            None,
            &request,
            inner.config.call_timeout,
        )
        .await
        .map_err(wrap)?;
        let value = set_cookie.ok_or_else(|| Error::NoSessionCookie {
            endpoint: inner.sdk.to_string(),
        })?;
        *cookie = Some(value);
        Ok(())
    }

    /// Sends one call; on `NotAuthenticated` logs in again and retries once.
    ///
    /// # Errors
    /// Transport, timeout, HTTP status and response errors (faults via [`Error::fault`]).
    pub async fn call(&self, request: &Request) -> Result<Element, Error> {
        match self.call_once(request).await {
            Err(e) if e.fault().is_some_and(|f| f.kind == FaultKind::NotAuthenticated) => {
                tracing::info!(
                    method = request.method,
                    "session not authenticated; logging in again"
                );
                self.login().await?;
                self.call_once(request).await
            }
            other => other,
        }
    }

    async fn call_once(&self, request: &Request) -> Result<Element, Error> {
        let inner = &self.inner;
        let cookie = inner.cookie.lock().await.clone();
        post(
            &inner.http,
            &inner.sdk,
            &inner.soap_action,
            cookie.as_deref(),
            request,
            inner.config.call_timeout,
        )
        .await
        .map(|(body, _)| body)
    }

    /// Logs out. Later calls fail with `NotAuthenticated` and re-login, so call this last.
    ///
    /// # Errors
    /// Transport or response errors of the `Logout` call; the session is forgotten either way.
    pub async fn logout(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let Some(cookie) = inner.cookie.lock().await.take() else {
            return Ok(());
        };
        let request = envelope::logout(&inner.service.session_manager);
        post(
            &inner.http,
            &inner.sdk,
            &inner.soap_action,
            Some(&cookie),
            &request,
            inner.config.call_timeout,
        )
        .await
        .map(|_| ())
    }
}

/// One POST; returns the response element and the `vmware_soap_session` cookie if one was set.
async fn post(
    http: &reqwest::Client,
    sdk: &Url,
    soap_action: &str,
    cookie: Option<&str>,
    request: &Request,
    timeout: Duration,
) -> Result<(Element, Option<String>), Error> {
    let method = request.method;
    let endpoint = || sdk.to_string();
    let work = async {
        let mut builder = http
            .post(sdk.clone())
            .header(header::CONTENT_TYPE, "text/xml; charset=\"utf-8\"")
            .header("SOAPAction", soap_action)
            .body(request.body.clone());
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        let mut response = builder.send().await.map_err(|e| Error::Transport {
            method,
            endpoint: endpoint(),
            source: e.without_url(),
        })?;
        let status = response.status();
        let set_cookie = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|v| v.trim_start().starts_with("vmware_soap_session="))
            .map(|v| v.trim().to_owned());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| Error::Transport {
            method,
            endpoint: endpoint(),
            source: e.without_url(),
        })? {
            if body.len().saturating_add(chunk.len()) > MAX_BODY_BYTES {
                return Err(Error::ResponseTooLarge { method });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, set_cookie, Bytes::from(body)))
    };
    let (status, set_cookie, body) =
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout {
                method,
                endpoint: endpoint(),
                timeout,
            })??;
    match status {
        StatusCode::OK => Ok((response::body(method, &body)?, set_cookie)),
        StatusCode::INTERNAL_SERVER_ERROR => match response::body(method, &body) {
            // A 500 must carry a fault; one that parses as a plain body is still a failure.
            Err(e @ response::Error::Fault { .. }) => Err(e.into()),
            _ => Err(Error::HttpStatus {
                method,
                endpoint: endpoint(),
                status,
                snippet: snippet(&body),
            }),
        },
        _ => Err(Error::HttpStatus {
            method,
            endpoint: endpoint(),
            status,
            snippet: snippet(&body),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_gets_sdk_path_and_refuses_credentials() {
        assert_eq!(
            sdk_url("https://vc.example").unwrap().as_str(),
            "https://vc.example/sdk"
        );
        assert_eq!(
            sdk_url("https://vc.example:8443/sdk").unwrap().as_str(),
            "https://vc.example:8443/sdk"
        );
        assert!(matches!(
            sdk_url("https://u:p@vc.example/sdk"),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            sdk_url("ftp://vc.example"),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert!(matches!(
            sdk_url("vc.example"),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn config_debug_hides_the_password() {
        let config = Config::new("https://vc", "admin", Password::new("hunter2"));
        let text = format!("{config:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***"));
    }
}
