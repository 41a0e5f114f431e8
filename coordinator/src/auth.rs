//! Who may call what, and who is calling: bearer tokens with scopes. A
//! user token may use the `Farm` service and sees the collections it
//! submitted; an admin token may use the `Farm` service and sees every
//! collection; a worker token may use the `Workers` service only. With no
//! token configured at all, authentication is off (a local farm) and every
//! caller sees everything. The client side (how a token is sent) lives in
//! `stylefarm_shared::client`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The server side: which tokens may call which service.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub users: Vec<String>,
    pub admins: Vec<String>,
    pub workers: Vec<String>,
}

/// Who made a `Farm` call, put in the request's extensions by the
/// interceptor: collections are owned by `owner`, a digest of the token
/// (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub owner: String,
    /// Sees and acts on every collection.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see a collection owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.admin || self.owner == owner
    }

    /// What `found` holds if the caller may see its owner's things, else
    /// NOT_FOUND saying `missing` (e.g. "no job ID"): another user's thing
    /// answers exactly as one that does not exist. The one visibility
    /// check of the `Farm` service, the Watch route and the dashboard.
    pub fn visible<T>(&self, found: Option<(String, T)>, missing: impl FnOnce() -> String) -> Result<T, Status> {
        match found {
            Some((owner, thing)) if self.may_see(&owner) => Ok(thing),
            _ => Err(Status::not_found(missing())),
        }
    }

    /// The caller of a request that passed [`Tokens::user`]; a request
    /// that never went through it (a test calling a handler directly) is
    /// nobody in particular and sees nothing but its own.
    pub fn of<T>(request: &Request<T>) -> Caller {
        request.extensions().get::<Caller>().cloned().unwrap_or(Caller { owner: String::new(), admin: false })
    }
}

fn owner_of(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("user-{}", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
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
        self.users.is_empty() && self.admins.is_empty() && self.workers.is_empty()
    }

    /// Checks a `Farm` call's token and names its caller.
    pub fn user(&self, request: &Request<()>) -> Result<Caller, Status> {
        if self.disabled() {
            return Ok(Caller { owner: String::new(), admin: true });
        }
        self.check(Scope::User, request)?;
        let token = bearer(request).unwrap_or_default();
        let admin = self.admins.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        Ok(Caller { owner: owner_of(token), admin })
    }

    /// Checks a request's bearer token against the scope of its service.
    pub fn check(&self, scope: Scope, request: &Request<()>) -> Result<(), Status> {
        if self.disabled() {
            return Ok(());
        }
        let token = bearer(request).ok_or_else(|| Status::unauthenticated("a bearer token is required (farmctl --token / farm-worker --token)"))?;
        let known = |tokens: &[String]| tokens.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
        let (own, other, name) = match scope {
            Scope::User => (known(&self.users) || known(&self.admins), known(&self.workers), "user"),
            Scope::Worker => (known(&self.workers), known(&self.users) || known(&self.admins), "worker"),
        };
        if own {
            Ok(())
        } else if other {
            Err(Status::permission_denied(format!("this token may not call the {name} service")))
        } else {
            Err(Status::unauthenticated("unknown token"))
        }
    }
}

fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
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
        let t = Tokens { users: vec!["u".into()], admins: vec!["a".into()], workers: vec!["w".into()] };
        assert!(t.check(Scope::User, &req(Some("a"))).is_ok());
        assert_eq!(t.check(Scope::Worker, &req(Some("a"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(t.check(Scope::User, &req(Some("u"))).is_ok());
        assert!(t.check(Scope::Worker, &req(Some("w"))).is_ok());
        assert_eq!(t.check(Scope::User, &req(Some("w"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(t.check(Scope::Worker, &req(Some("u"))).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(t.check(Scope::User, &req(None)).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(t.check(Scope::User, &req(Some("guess"))).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(Tokens::default().check(Scope::User, &req(None)).is_ok(), "no tokens configured: open");
    }

    #[test]
    fn callers_own_by_token_and_admins_see_all() {
        let t = Tokens { users: vec!["u1".into(), "u2".into()], admins: vec!["a".into()], workers: vec![] };
        let (u1, u2, a) = (t.user(&req(Some("u1"))).unwrap(), t.user(&req(Some("u2"))).unwrap(), t.user(&req(Some("a"))).unwrap());
        assert_ne!(u1.owner, u2.owner);
        assert!(!u1.owner.contains("u1"), "the token itself is not the owner's name");
        assert!(u1.may_see(&u1.owner) && !u1.may_see(&u2.owner) && !u1.admin);
        assert!(a.admin && a.may_see(&u1.owner) && a.may_see(&u2.owner));
        assert!(Tokens::default().user(&req(None)).unwrap().may_see("anyone"), "a local farm without tokens is open");
    }
}
