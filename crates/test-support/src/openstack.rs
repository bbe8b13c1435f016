//! The lab's OpenStack part, as `lab/up` wrote it into `lab.env`: Keystone's URL and the test
//! user's credentials (`OS_*`), the application credential, the admin password and the fakes'
//! control API (`OPENSTACK_*`).

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
