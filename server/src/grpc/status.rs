//! The one mapping from service errors to gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::service::{self, DbError, QueryFailure};

impl From<service::Error> for Status {
    fn from(e: service::Error) -> Self {
        let code = match &e {
            service::Error::InvalidArgument(_) => Code::InvalidArgument,
            service::Error::PermissionDenied(_) => Code::PermissionDenied,
            service::Error::ResourceExhausted(_) => Code::ResourceExhausted,
            service::Error::NotFound(_) => Code::NotFound,
            service::Error::AlreadyExists(_) => Code::AlreadyExists,
            // FAILED_PRECONDITION rather than ABORTED: retrying at once does not help, the holder
            // has to finish (or its lease lapse) first.
            service::Error::FailedPrecondition(_) | service::Error::Busy(_) => Code::FailedPrecondition,
            service::Error::DataLoss(_) => Code::DataLoss,
            service::Error::OutOfRange(_) => Code::OutOfRange,
            service::Error::Cancelled(_) => Code::Cancelled,
            service::Error::Unavailable(_) => Code::Unavailable,
            service::Error::Aborted(_) => Code::Aborted,
            service::Error::UploadIncomplete { id, committed, declared } => {
                // The offset in the message for people, and as google.rpc.ErrorInfo for programs
                // (every gRPC SDK reads `grpc-status-details-bin`).
                let details = ErrorDetails::with_error_info(
                    UPLOAD_INCOMPLETE,
                    ERROR_DOMAIN,
                    [
                        ("upload_id".to_owned(), id.clone()),
                        ("committed_offset".to_owned(), committed.to_string()),
                        ("declared_size".to_owned(), declared.to_string()),
                    ],
                );
                return Status::with_error_details(Code::FailedPrecondition, e.to_string(), details);
            }
            service::Error::Db(db) => match db {
                // A saturated pool or an unreachable node: the caller may retry later.
                DbError::PoolTimeout { .. } | DbError::Connect { .. } => Code::Unavailable,
                DbError::Query { kind, .. } => query_code(*kind),
                DbError::Unsupported(_) => Code::FailedPrecondition,
                DbError::Migration(_) | DbError::UnsupportedUrl(_) | DbError::UnknownValue(_) => Code::Internal,
            },
        };
        if code == Code::Internal {
            // Logged once here, where it is turned into a response; the client sees the message too.
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

/// `google.rpc.ErrorInfo.domain` of strata's errors.
pub(crate) const ERROR_DOMAIN: &str = "strata.dev";
/// `ErrorInfo.reason` of an upload whose stream ended before its declared size.
pub(crate) const UPLOAD_INCOMPLETE: &str = "UPLOAD_INCOMPLETE";

fn query_code(kind: QueryFailure) -> Code {
    use QueryFailure as F;
    match kind {
        F::NotFound => Code::NotFound,
        F::Unavailable | F::ReadOnly | F::Busy => Code::Unavailable,
        F::Serialization => Code::Aborted,
        F::Conflict => Code::FailedPrecondition,
        F::Timeout => Code::DeadlineExceeded,
        F::Other => Code::Internal,
    }
}

/// The name of a gRPC status code, as recorded.
pub(super) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The `grpc-status` of headers or trailers, if there is one.
pub(super) fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(v))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pool_timeout_is_unavailable_and_bad_input_invalid() {
        let s: Status =
            service::Error::Db(DbError::PoolTimeout { node: "primary".into(), timeout: Duration::from_secs(1) }).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("primary"));
        let s: Status = service::Error::InvalidArgument("page_size must not be negative".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "page_size must not be negative");
    }

    #[test]
    fn an_incomplete_upload_carries_its_offset_as_error_info() {
        let s: Status =
            service::Error::UploadIncomplete { id: "u1".into(), committed: 8 << 20, declared: 12 << 20 }.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("offset 8388608"), "{}", s.message());
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!((info.reason.as_str(), info.domain.as_str()), (UPLOAD_INCOMPLETE, ERROR_DOMAIN));
        assert_eq!(info.metadata["committed_offset"], "8388608");
        assert_eq!(info.metadata["declared_size"], "12582912");
        assert_eq!(info.metadata["upload_id"], "u1");
    }
}
