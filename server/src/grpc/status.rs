//! The one mapping from service errors to gRPC statuses.

use tonic::{Code, Status};

use crate::{db, service};

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
                db::Error::PoolTimeout { .. } | db::Error::Connect { .. } => Code::Unavailable,
                db::Error::Query(q) => query_code(q),
                db::Error::Unsupported(_) => Code::FailedPrecondition,
                db::Error::Migration(_) | db::Error::UnsupportedUrl(_) | db::Error::UnknownValue(_) => Code::Internal,
            },
        };
        if code == Code::Internal {
            // Logged once here, where it is turned into a response; the client sees the message too.
            tracing::error!(error = %e, "internal error");
        }
        Status::new(code, e.to_string())
    }
}

fn query_code(e: &diesel::result::Error) -> Code {
    use diesel::result::{DatabaseErrorKind as K, Error as E};
    match e {
        E::NotFound => Code::NotFound,
        E::DatabaseError(K::ClosedConnection, _) => Code::Unavailable,
        E::DatabaseError(K::SerializationFailure, _) => Code::Aborted,
        E::DatabaseError(K::ReadOnlyTransaction, _) => Code::Unavailable,
        E::DatabaseError(K::UniqueViolation | K::ForeignKeyViolation | K::CheckViolation | K::NotNullViolation, _) => {
            Code::FailedPrecondition
        }
        // PostgreSQL's statement_timeout cancels with SQLSTATE 57014, which Diesel reports as Unknown.
        E::DatabaseError(_, info) if info.message().contains("statement timeout") => Code::DeadlineExceeded,
        E::DatabaseError(_, info) if info.message().contains("database is locked") => Code::Unavailable,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pool_timeout_is_unavailable_and_bad_input_invalid() {
        let s: Status =
            service::Error::Db(db::Error::PoolTimeout { node: "primary".into(), timeout: Duration::from_secs(1) })
                .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("primary"));
        let s: Status = service::Error::InvalidArgument("page_size must not be negative".into()).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "page_size must not be negative");
    }
}
