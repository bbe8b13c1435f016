//! Where `convert` and `inspect` read from: a file path, stdin (`-`) or an http(s) URL fetched
//! with a blocking client (custom CA, basic auth from the environment).

use std::{fs, io::Read, path::PathBuf};

use anyhow::{Context, bail};

use crate::cli::HttpArgs;

/// A parsed INPUT argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    File(PathBuf),
    Stdin,
    Url(String),
}

impl Input {
    pub(crate) fn parse(arg: &str) -> Self {
        if arg == "-" {
            Input::Stdin
        } else if arg.starts_with("http://") || arg.starts_with("https://") {
            Input::Url(arg.to_owned())
        } else {
            Input::File(PathBuf::from(arg))
        }
    }

    /// How the input is named in messages, summaries and reports: URLs without credentials
    /// (`user:password@`), query or fragment.
    pub(crate) fn display(&self) -> String {
        match self {
            Input::File(p) => p.display().to_string(),
            Input::Stdin => "<stdin>".to_owned(),
            Input::Url(u) => {
                let bare = u.split(['?', '#']).next().unwrap_or(u);
                split_userinfo(bare).0
            }
        }
    }
}

/// `scheme://user:password@host/path` → (`scheme://host/path`, `Some("user:password")`).
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => (
            format!("{scheme}://{}", &rest[at + 1..]),
            Some(rest[..at].to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

/// The basic-auth password: the first line of `--http-password-file`, else
/// `VM_IMPORT_HTTP_PASSWORD`.
fn password(http: &HttpArgs) -> anyhow::Result<Option<String>> {
    if let Some(path) = &http.password_file {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read password file {}", path.display()))?;
        return Ok(Some(text.lines().next().unwrap_or("").to_owned()));
    }
    Ok(std::env::var("VM_IMPORT_HTTP_PASSWORD").ok())
}

/// Opens an http(s) URL as a streaming body. Non-2xx answers are errors.
pub(crate) fn open_url(url: &str, http: &HttpArgs) -> anyhow::Result<Box<dyn Read + Send>> {
    use ureq::tls::{PemItem, RootCerts, TlsConfig, parse_pem};
    let mut tls = TlsConfig::builder();
    if let Some(ca) = &http.ca_cert {
        let pem =
            fs::read(ca).with_context(|| format!("cannot read CA certificate file {}", ca.display()))?;
        let certs: Vec<_> = parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("{}: no PEM certificate found", ca.display());
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(true)
        .build()
        .into();
    // Credentials in the URL are used, but never shown: they leave the URL before any request
    // (whose errors may quote it) is made.
    let (bare, userinfo) = split_userinfo(url);
    let shown = Input::Url(url.to_owned()).display();
    let credentials = match (&http.username, userinfo) {
        (Some(user), _) => Some(format!("{user}:{}", password(http)?.unwrap_or_default())),
        (None, Some(userinfo)) => {
            eprintln!(
                "vm-import: warning: {shown}: credentials in a URL are visible to every user of this machine; \
                 use VM_IMPORT_HTTP_USERNAME with VM_IMPORT_HTTP_PASSWORD or --http-password-file"
            );
            Some(userinfo)
        }
        (None, None) => None,
    };
    let mut request = agent.get(&bare);
    if let Some(credentials) = credentials {
        request = request.header(
            "Authorization",
            format!("Basic {}", base64(credentials.as_bytes())),
        );
    }
    let response = request.call().map_err(|e| {
        // ureq's message may quote the URL it was given; that URL has no credentials.
        anyhow::anyhow!("GET {shown}: {e}")
    })?;
    Ok(Box::new(response.into_body().into_reader()))
}

/// Standard base64 with padding (RFC 4648 §4), for the basic-auth header only.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        for (url, shown) in [
            ("http://alice:pw@host/x.vmdk", "http://host/x.vmdk"),
            (
                "https://alice@host:8443/a/b.ova?sig=secret",
                "https://host:8443/a/b.ova",
            ),
            ("http://host/p@th/x.vmdk", "http://host/p@th/x.vmdk"),
            ("http://a:b@c@host/x", "http://host/x"),
        ] {
            assert_eq!(Input::parse(url).display(), shown, "{url}");
        }
        assert_eq!(
            split_userinfo("http://alice:pw@host/x").1.as_deref(),
            Some("alice:pw")
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn parses_input_kinds() {
        assert_eq!(Input::parse("-"), Input::Stdin);
        assert_eq!(
            Input::parse("https://h/x.vmdk"),
            Input::Url("https://h/x.vmdk".into())
        );
        assert_eq!(Input::parse("x.vmdk"), Input::File("x.vmdk".into()));
    }
}
