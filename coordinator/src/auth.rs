//! Who may call what: bearer tokens with scopes. A user token may use the
//! `Farm` service only, a worker token the `Workers` service only; with no
//! token configured at all, authentication is off (a local farm). The
//! client side (how a token is sent) lives in `stylefarm_shared::client`.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

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

/// Compares in time that does not depend on where the bytes differ
/// (`subtle`), so timing does not leak a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

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
