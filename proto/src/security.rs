//! How clients reach the coordinator: TLS (optionally mutual) and a bearer
//! token in the `authorization` header. Tokens have scopes: a user token
//! may use the `Farm` service only, a worker token the `Workers` service
//! only.

use std::path::PathBuf;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// What a client needs to connect.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// CA that signed the coordinator's certificate (enables TLS; use an
    /// `https://` URL).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

impl ClientSecurity {
    /// The endpoint for `url`, with TLS configured when asked for.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| format!("`{url}` is not a coordinator URL: {e}"))?;
        let wants_tls = url.starts_with("https://");
        match (&self.tls_ca, wants_tls) {
            (Some(ca), true) => {
                let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
                if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                    tls = tls.identity(Identity::from_pem(read(cert, "client certificate")?, read(key, "client key")?));
                }
                endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS setup failed: {e}"))?;
            }
            (None, true) => return Err(format!("{url} is https: give the CA certificate (--tls-ca)")),
            (Some(_), false) => return Err(format!("--tls-ca given but {url} is not https://")),
            (None, false) => {}
        }
        Ok(endpoint)
    }

    /// Connects (once; callers retry as they see fit).
    pub async fn connect(&self, url: &str) -> Result<Channel, String> {
        let endpoint = self.endpoint(url)?;
        endpoint.connect().await.map_err(|e| {
            let mut msg = format!("cannot reach the coordinator at {url}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })
    }

    /// The interceptor that adds the bearer token.
    pub fn bearer(&self) -> Result<Bearer, String> {
        let value = match &self.token {
            Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| "the token has characters a header cannot carry".to_string())?),
            None => None,
        };
        Ok(Bearer(value))
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The server side: which tokens may call which service.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub users: Vec<String>,
    pub workers: Vec<String>,
}

/// Which service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Worker,
}

impl Tokens {
    /// No token configured at all: authentication is off.
    pub fn disabled(&self) -> bool {
        self.users.is_empty() && self.workers.is_empty()
    }

    /// Checks a request's bearer token against the scope of its service.
    pub fn check(&self, scope: Scope, request: &Request<()>) -> Result<(), Status> {
        if self.disabled() {
            return Ok(());
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("a bearer token is required (farmctl --token / farm-worker --token)"))?;
        let (own, other, name) = match scope {
            Scope::User => (&self.users, &self.workers, "user"),
            Scope::Worker => (&self.workers, &self.users, "worker"),
        };
        if own.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
            Ok(())
        } else if other.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
            Err(Status::permission_denied(format!("this token may not call the {name} service")))
        } else {
            Err(Status::unauthenticated("unknown token"))
        }
    }
}

/// Compares without an early exit, so timing does not leak the prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {t}")).unwrap());
        }
        r
    }

    #[test]
    fn scopes_are_enforced() {
        let t = Tokens { users: vec!["u".into()], workers: vec!["w".into()] };
        assert!(t.check(Scope::User, &req(Some("u"))).is_ok());
        assert!(t.check(Scope::Worker, &req(Some("w"))).is_ok());
        assert_eq!(t.check(Scope::User, &req(Some("w"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(t.check(Scope::Worker, &req(Some("u"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(t.check(Scope::User, &req(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(t.check(Scope::User, &req(Some("guess"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(Tokens::default().check(Scope::User, &req(None)).is_ok(), "no tokens configured: open");
    }
}
