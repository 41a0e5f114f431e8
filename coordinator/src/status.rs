//! Every failure mapped to a deliberate status, in one place: bad input →
//! INVALID_ARGUMENT, an unknown id or another user's collection →
//! NOT_FOUND, another worker's lease → PERMISSION_DENIED, a stale lease or
//! a state that does not allow the call → FAILED_PRECONDITION, storage or
//! database trouble → UNAVAILABLE/INTERNAL with the details in the log, not
//! in the reply (they hold the server's paths). The dashboard answers the
//! same statuses in HTTP's words ([`http`]).

use tonic::{Code, Status};

use crate::db::CallError;

pub(crate) fn db_err(e: crate::db::sql::Error) -> Status {
    tracing::error!("database: {e}");
    if e.is_transient() {
        // The database went away or chose this call to break a deadlock:
        // the same call again (here or on another coordinator) may pass.
        return Status::unavailable("the coordinator's database is unavailable; retry");
    }
    Status::internal("the coordinator's database failed (see its log)")
}

pub(crate) fn call_err(e: CallError) -> Status {
    match e {
        CallError::NoJob(_) | CallError::NoCollection(_) | CallError::NotRegistered(_) | CallError::Gone { .. } => {
            Status::not_found(e.to_string())
        }
        CallError::WrongWorker { .. } => Status::permission_denied(e.to_string()),
        CallError::Quarantined { .. }
        | CallError::Stale { .. }
        | CallError::Refused { .. }
        | CallError::Busy { .. }
        | CallError::Unfinished { .. }
        | CallError::WontFit(_) => Status::failed_precondition(e.to_string()),
        CallError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        CallError::OverQuota { .. } => Status::resource_exhausted(e.to_string()),
        CallError::NameTaken { .. } => Status::already_exists(e.to_string()),
        CallError::Db(e) => db_err(e),
    }
}

/// Storage trouble as a caller sees it: what failed, not where.
pub(crate) fn storage_err(what: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!("storage: {what}: {e}");
    Status::unavailable(format!("the farm's storage could not {what}; try again later"))
}

/// A gRPC status as the dashboard's HTTP API says it.
pub(crate) fn http(code: Code) -> axum::http::StatusCode {
    use axum::http::StatusCode;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
