//! The lab's OpenStack part, as `lab/up` wrote it into `lab.env`: Keystone's URL and the test
//! user's credentials (`OS_*`), the application credential, the admin password and the fakes'
//! control API (`OPENSTACK_*`); and [`KeystoneAdmin`], Keystone's admin API for tests that shape users,
//! projects and catalogs while they run.

use std::{collections::HashMap, path::PathBuf};

use crate::{Lab, LabError, parse_env_file};

/// Where and how to reach the lab's OpenStack.
#[derive(Debug, Clone)]
pub struct OpenstackLab {
    /// Keystone v3, `https://127.0.0.1:PORT/v3`.
    pub auth_url: String,
    /// The region with every service (`RegionOne`); `RegionTwo` has only Keystone.
    pub region: String,
    /// The test user (`importer`, domain `lab`).
    pub username: String,
    /// Its password.
    pub password: String,
    /// Its project (`migrations`, domain `lab`).
    pub project: String,
    /// The user's domain.
    pub user_domain: String,
    /// The project's domain.
    pub project_domain: String,
    /// The project's id.
    pub project_id: String,
    /// PEM of the lab CA (Keystone's and the fakes' certificates).
    pub ca_cert: PathBuf,
    /// An application credential of the test user, scoped to its project.
    pub app_cred_id: String,
    /// Its secret.
    pub app_cred_secret: String,
    /// Password of Keystone's `admin` user (project `admin`, domain `Default`).
    pub admin_password: String,
    /// Base URL of the fakes' control API (`/servers`, `/objects`, `/faults`, `/downloads`),
    /// basic auth `admin` with the admin password.
    pub control_url: String,
    /// Glance's file store directory.
    pub glance_store: PathBuf,
}

impl OpenstackLab {
    /// Reads the OpenStack values of `lab`'s env file.
    ///
    /// # Errors
    /// [`LabError::MissingEnvKey`] when the lab was started without its OpenStack part.
    pub fn of(lab: &Lab) -> Result<OpenstackLab, LabError> {
        let text = std::fs::read_to_string(&lab.env_file).map_err(|source| LabError::ReadEnvFile {
            path: lab.env_file.clone(),
            source,
        })?;
        let vars: HashMap<String, String> = parse_env_file(&text);
        let get = |key: &'static str| {
            vars.get(key).cloned().ok_or_else(|| LabError::MissingEnvKey {
                path: lab.env_file.clone(),
                key,
            })
        };
        Ok(OpenstackLab {
            auth_url: get("OS_AUTH_URL")?,
            region: get("OS_REGION_NAME")?,
            username: get("OS_USERNAME")?,
            password: get("OS_PASSWORD")?,
            project: get("OS_PROJECT_NAME")?,
            user_domain: get("OS_USER_DOMAIN_NAME")?,
            project_domain: get("OS_PROJECT_DOMAIN_NAME")?,
            project_id: get("OPENSTACK_PROJECT_ID")?,
            ca_cert: get("OS_CACERT")?.into(),
            app_cred_id: get("OPENSTACK_APP_CRED_ID")?,
            app_cred_secret: get("OPENSTACK_APP_CRED_SECRET")?,
            admin_password: get("OPENSTACK_ADMIN_PASSWORD")?,
            control_url: get("OPENSTACK_CONTROL_URL")?,
            glance_store: get("OPENSTACK_GLANCE_STORE")?.into(),
        })
    }
}

/// Why a call to Keystone's admin API failed.
#[derive(Debug, thiserror::Error)]
#[error("keystone admin: {step}: {detail}")]
pub struct KeystoneAdminError {
    /// What was being done (`POST /users`).
    pub step: String,
    /// The transport error or the answer's status and body.
    pub detail: String,
}

/// Keystone's admin API, for tests that shape users, projects and catalogs while they run: a user
/// whose password changes under an import, a project whose catalog lacks a service.
pub struct KeystoneAdmin {
    agent: ureq::Agent,
    url: String,
    token: String,
}

impl KeystoneAdmin {
    /// Logs in as the lab's `admin` (project `admin`, domain `Default`).
    ///
    /// # Errors
    /// [`KeystoneAdminError`] when the CA cannot be read or Keystone refuses the login.
    pub fn login(os: &OpenstackLab) -> Result<Self, KeystoneAdminError> {
        use ureq::tls::{PemItem, RootCerts, TlsConfig, parse_pem};
        let pem = std::fs::read(&os.ca_cert).map_err(|e| KeystoneAdminError {
            step: format!("reading {}", os.ca_cert.display()),
            detail: e.to_string(),
        })?;
        let certs: Vec<_> = parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&certs))
                    .build(),
            )
            .http_status_as_error(false)
            // gunicorn closes an idle keep-alive connection after 2 s, and a blocking client only
            // learns that when its next request on it is reset: a new connection per call.
            .max_idle_connections(0)
            .build()
            .into();
        let mut admin = Self {
            agent,
            url: os.auth_url.trim_end_matches('/').to_owned(),
            token: String::new(),
        };
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"name": "Default"}, "password": os.admin_password}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
        let (_, token) = admin.call("POST", "/auth/tokens", Some(&body))?;
        admin.token = token.ok_or_else(|| KeystoneAdminError {
            step: "POST /auth/tokens".into(),
            detail: "no X-Subject-Token in the answer".into(),
        })?;
        Ok(admin)
    }

    /// Calls `METHOD /v3{path}`; returns the JSON answer (Null when empty) and X-Subject-Token.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(serde_json::Value, Option<String>), KeystoneAdminError> {
        let step = format!("{method} {path}");
        let fail = |detail: String| KeystoneAdminError {
            step: step.clone(),
            detail,
        };
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .header("X-Auth-Token", &self.token)
            .body(body.map(ToString::to_string).unwrap_or_default())
            .map_err(|e| fail(e.to_string()))?;
        let mut response = self.agent.run(request).map_err(|e| fail(e.to_string()))?;
        let token = response
            .headers()
            .get("X-Subject-Token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}: {text}")));
        }
        let value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| fail(format!("{e}: {text}")))?
        };
        Ok((value, token))
    }

    fn id_of(&self, path: &str, list: &str) -> Result<String, KeystoneAdminError> {
        let (answer, _) = self.call("GET", path, None)?;
        answer[list][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| KeystoneAdminError {
                step: format!("GET {path}"),
                detail: format!("nothing found: {answer}"),
            })
    }

    /// The id of the domain called `name`.
    ///
    /// # Errors
    /// [`KeystoneAdminError`] when there is none.
    pub fn domain_id(&self, name: &str) -> Result<String, KeystoneAdminError> {
        self.id_of(&format!("/domains?name={name}"), "domains")
    }

    /// The id of user `name` of domain `domain` (a name).
    ///
    /// # Errors
    /// [`KeystoneAdminError`] when there is none.
    pub fn user_id(&self, name: &str, domain: &str) -> Result<String, KeystoneAdminError> {
        let domain_id = self.domain_id(domain)?;
        self.id_of(&format!("/users?name={name}&domain_id={domain_id}"), "users")
    }

    /// Creates user `name` in domain `domain` (a name) and gives it the `member` role on
    /// `project_id`; returns the user's id.
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn create_member(
        &self,
        name: &str,
        password: &str,
        domain: &str,
        project_id: &str,
    ) -> Result<String, KeystoneAdminError> {
        let domain_id = self.domain_id(domain)?;
        let body = serde_json::json!({"user": {"name": name, "password": password, "domain_id": domain_id}});
        let (user, _) = self.call("POST", "/users", Some(&body))?;
        let id = user["user"]["id"].as_str().unwrap_or_default().to_owned();
        self.grant_member(project_id, &id)?;
        Ok(id)
    }

    /// Gives user `user_id` the `member` role on `project_id`.
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn grant_member(&self, project_id: &str, user_id: &str) -> Result<(), KeystoneAdminError> {
        let role = self.id_of("/roles?name=member", "roles")?;
        self.call(
            "PUT",
            &format!("/projects/{project_id}/users/{user_id}/roles/{role}"),
            None,
        )?;
        Ok(())
    }

    /// Changes a user's password, which revokes every token of the user. Returns after the
    /// revocation is in effect: Keystone compares revocations to the second, so the next second
    /// must have begun before a new token is issued, or it would count as revoked too.
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn set_password(&self, user_id: &str, password: &str) -> Result<(), KeystoneAdminError> {
        let body = serde_json::json!({"user": {"password": password}});
        self.call("PATCH", &format!("/users/{user_id}"), Some(&body))?;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        Ok(())
    }

    /// Deletes a user.
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn delete_user(&self, user_id: &str) -> Result<(), KeystoneAdminError> {
        self.call("DELETE", &format!("/users/{user_id}"), None)?;
        Ok(())
    }

    /// Creates project `name` in domain `domain` (a name); returns its id.
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn create_project(&self, name: &str, domain: &str) -> Result<String, KeystoneAdminError> {
        let domain_id = self.domain_id(domain)?;
        let body = serde_json::json!({"project": {"name": name, "domain_id": domain_id}});
        let (project, _) = self.call("POST", "/projects", Some(&body))?;
        Ok(project["project"]["id"].as_str().unwrap_or_default().to_owned())
    }

    /// Deletes a project (and, with it, its endpoint associations).
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn delete_project(&self, project_id: &str) -> Result<(), KeystoneAdminError> {
        self.call(
            "PATCH",
            &format!("/projects/{project_id}"),
            Some(&serde_json::json!({"project": {"enabled": false}})),
        )?;
        self.call("DELETE", &format!("/projects/{project_id}"), None)?;
        Ok(())
    }

    /// Limits the catalog of tokens scoped to `project_id` to the endpoints of `service_types`
    /// (Keystone's endpoint filter, `OS-EP-FILTER`): every other service is missing from it.
    ///
    /// # Errors
    /// [`KeystoneAdminError`].
    pub fn restrict_catalog(
        &self,
        project_id: &str,
        service_types: &[&str],
    ) -> Result<(), KeystoneAdminError> {
        let (services, _) = self.call("GET", "/services", None)?;
        let (endpoints, _) = self.call("GET", "/endpoints", None)?;
        let kept: Vec<&str> = services["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["type"].as_str().is_some_and(|t| service_types.contains(&t)))
            .filter_map(|s| s["id"].as_str())
            .collect();
        for endpoint in endpoints["endpoints"].as_array().into_iter().flatten() {
            let (Some(id), Some(service)) = (endpoint["id"].as_str(), endpoint["service_id"].as_str()) else {
                continue;
            };
            if kept.contains(&service) {
                self.call(
                    "PUT",
                    &format!("/OS-EP-FILTER/projects/{project_id}/endpoints/{id}"),
                    None,
                )?;
            }
        }
        Ok(())
    }
}
