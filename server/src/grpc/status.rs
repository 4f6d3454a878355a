//! The one mapping from service errors to gRPC statuses.

use tonic::{Code, Status};

use crate::service::{self, DbError, QueryFailure};

impl From<service::Error> for Status {
    fn from(e: service::Error) -> Self {
        let code = match &e {
            service::Error::InvalidArgument(_) => Code::InvalidArgument,
            service::Error::NotFound(_) => Code::NotFound,
            service::Error::AlreadyExists(_) => Code::AlreadyExists,
            // FAILED_PRECONDITION rather than ABORTED: retrying at once does not help, the holder
            // has to finish (or its lease lapse) first.
            service::Error::FailedPrecondition(_) | service::Error::Busy(_) => Code::FailedPrecondition,
            service::Error::DataLoss(_) => Code::DataLoss,
            service::Error::OutOfRange(_) => Code::OutOfRange,
            service::Error::Cancelled(_) => Code::Cancelled,
            service::Error::Unavailable(_) => Code::Unavailable,
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
}
