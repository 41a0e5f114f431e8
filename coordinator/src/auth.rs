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
    /// The owners of named user and admin tokens (`--user-token
    /// NAME=TOKEN`), by name: what the sharing flags (`--share NAME=W`)
    /// and the pages call them.
    pub names: std::collections::BTreeMap<String, String>,
}

/// A user or admin token flag's value: `TOKEN`, or `NAME=TOKEN`, which
/// names its user. A name is 1 to 32 of a-z A-Z 0-9 . _ -; a value whose
/// part before the first `=` is not a name, or whose part after it is
/// empty or only `=` (base64's padding), is a token as a whole.
pub fn named_token(arg: &str) -> (Option<String>, String) {
    match arg.split_once('=') {
        Some((name, token)) if is_name(name) && token.chars().any(|c| c != '=') => (Some(name.to_string()), token.to_string()),
        _ => (None, arg.to_string()),
    }
}

fn is_name(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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

/// The owner of what `token` submits: a digest, so the token itself is
/// never stored.
pub fn owner_of(token: &str) -> String {
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
    /// User tokens (`users`) and admin tokens (`admins`) as the flags give
    /// them, `NAME=TOKEN` or `TOKEN`, and worker tokens. A name given to
    /// two tokens is refused.
    pub fn from_flags(users: &[String], admins: &[String], workers: &[String]) -> Result<Tokens, String> {
        let mut tokens = Tokens { workers: workers.iter().filter(|t| !t.is_empty()).cloned().collect(), ..Tokens::default() };
        for (arg, admin) in users.iter().map(|t| (t, false)).chain(admins.iter().map(|t| (t, true))) {
            let (name, token) = named_token(arg);
            if token.is_empty() {
                continue;
            }
            if let Some(name) = name {
                if tokens.names.insert(name.clone(), owner_of(&token)).is_some() {
                    return Err(format!("two tokens are named {name}: a name is one user's"));
                }
            }
            if admin { &mut tokens.admins } else { &mut tokens.users }.push(token);
        }
        Ok(tokens)
    }

    /// The owner of the token named `name`.
    pub fn owner_named(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }

    /// The name of `owner`'s token, if it was given one.
    pub fn name_of(&self, owner: &str) -> Option<&str> {
        self.names.iter().find(|(_, o)| *o == owner).map(|(n, _)| n.as_str())
    }

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
        let t = Tokens { users: vec!["u".into()], admins: vec!["a".into()], workers: vec!["w".into()], ..Tokens::default() };
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
        let t = Tokens { users: vec!["u1".into(), "u2".into()], admins: vec!["a".into()], workers: vec![], ..Tokens::default() };
        let (u1, u2, a) = (t.user(&req(Some("u1"))).unwrap(), t.user(&req(Some("u2"))).unwrap(), t.user(&req(Some("a"))).unwrap());
        assert_ne!(u1.owner, u2.owner);
        assert!(!u1.owner.contains("u1"), "the token itself is not the owner's name");
        assert!(u1.may_see(&u1.owner) && !u1.may_see(&u2.owner) && !u1.admin);
        assert!(a.admin && a.may_see(&u1.owner) && a.may_see(&u2.owner));
        assert!(Tokens::default().user(&req(None)).unwrap().may_see("anyone"), "a local farm without tokens is open");
    }

    #[test]
    fn a_token_may_name_its_user() {
        assert_eq!(named_token("ana=s3cret"), (Some("ana".into()), "s3cret".into()));
        assert_eq!(named_token("s3cret"), (None, "s3cret".into()));
        // Base64 padding, a name that is not one, nothing after the `=`:
        // the whole value is the token.
        for whole in ["c2VjcmV0==", "not a name=x", "ana=", "=x"] {
            assert_eq!(named_token(whole), (None, whole.into()), "{whole}");
        }
        let t = Tokens::from_flags(&["ana=a1".into(), "anonymous".into()], &["root=r1".into()], &[]).unwrap();
        assert_eq!((t.users.clone(), t.admins.clone()), (vec!["a1".to_string(), "anonymous".to_string()], vec!["r1".to_string()]));
        assert_eq!(t.owner_named("ana"), Some(owner_of("a1").as_str()));
        assert_eq!(t.name_of(&owner_of("r1")), Some("root"));
        assert_eq!(t.name_of(&owner_of("anonymous")), None);
        assert!(Tokens::from_flags(&["ana=a1".into(), "ana=a2".into()], &[], &[]).unwrap_err().contains("two tokens are named ana"));
    }
}
