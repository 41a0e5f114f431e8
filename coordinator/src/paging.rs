//! Page tokens of the listing calls: the sequence number of the last item
//! a page handed out, so the next page starts after it whatever was added
//! or removed meanwhile.

use tonic::Status;

/// The sequence number a page token stands for (0: the first page).
pub(crate) fn page_after(token: &str) -> Result<i64, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token.parse::<i64>().map_err(|_| Status::invalid_argument(format!("page_token `{token}` was not handed out by this call")))
}

/// The token of the page after the one whose last item is `next` (None:
/// that was the last page).
pub(crate) fn page_token(next: Option<i64>) -> String {
    next.map(|n| n.to_string()).unwrap_or_default()
}
