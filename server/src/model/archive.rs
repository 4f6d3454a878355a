//! Archive states and kinds (see the parent module for why they live here), and a policy's filter,
//! which `db/` turns into SQL and stores in the policy's row.

use super::text_enum;

text_enum! {
    /// What a policy does with due rows.
    pub enum Mode ("archive policy mode") {
        /// Into segments.
        Archive = "archive",
        /// Deleted.
        Purge = "purge",
    }
}

text_enum! {
    /// What kind of run.
    pub enum RunKind ("archive run kind") {
        /// Rows into segments.
        Archive = "archive",
        /// Rows deleted.
        Purge = "purge",
        /// Segments back into the table.
        Restore = "restore",
        /// Expired segments deleted.
        Retention = "retention",
    }
}

text_enum! {
    /// Where a run is.
    pub enum RunState ("archive run state") {
        /// Working.
        Running = "running",
        /// Finished.
        Succeeded = "succeeded",
        /// Stopped by an error or interrupted.
        Failed = "failed",
        /// Stopped on request.
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// Where a segment is. Only `Committed` and `Restored` segments are shown to clients; the others
    /// are steps of writing or deleting one.
    pub enum SegmentState ("archive segment state") {
        /// Being written.
        Pending = "pending",
        /// Holds rows no longer in the table.
        Committed = "committed",
        /// Its rows are back in the table.
        Restored = "restored",
        /// Its object is being deleted by retention.
        Deleting = "deleting",
        /// Pending segment of a failed or interrupted batch, being removed.
        Discarding = "discarding",
    }
}

text_enum! {
    /// How a filter compares its column with its values.
    pub enum FilterOp ("filter operator") {
        /// `=`.
        Equal = "=",
        /// `<>`.
        NotEqual = "<>",
        /// `<`.
        Less = "<",
        /// `<=`.
        LessOrEqual = "<=",
        /// `>`.
        Greater = ">",
        /// `>=`.
        GreaterOrEqual = ">=",
        /// One of the values.
        In = "in",
        /// None of the values.
        NotIn = "not in",
        /// NULL (no values).
        IsNull = "is null",
        /// Not NULL (no values).
        IsNotNull = "is not null",
    }
}

impl FilterOp {
    /// How many values the operator takes (None: one or more).
    pub fn arity(self) -> Option<usize> {
        match self {
            FilterOp::In | FilterOp::NotIn => None,
            FilterOp::IsNull | FilterOp::IsNotNull => Some(0),
            FilterOp::Equal
            | FilterOp::NotEqual
            | FilterOp::Less
            | FilterOp::LessOrEqual
            | FilterOp::Greater
            | FilterOp::GreaterOrEqual => Some(1),
        }
    }
}

// A policy's filters are stored as a JSON array of `{column, op, values}`, the operator in its
// stored spelling.
impl serde::Serialize for FilterOp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for FilterOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A filter of a policy: only rows whose column compares so with the values are due. The column is
/// checked against the live schema, and each value against the column's type, when the policy is
/// saved; the values reach the database as bound parameters, never as SQL text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilterSpec {
    /// Column.
    pub column: String,
    /// Operator.
    pub op: FilterOp,
    /// Values (as text).
    pub values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_their_stored_json_form() {
        let f = FilterSpec { column: "room".into(), op: FilterOp::NotIn, values: vec!["a".into(), "b".into()] };
        let json = serde_json::to_string(&[&f]).unwrap();
        assert_eq!(json, r#"[{"column":"room","op":"not in","values":["a","b"]}]"#);
        assert_eq!(serde_json::from_str::<Vec<FilterSpec>>(&json).unwrap(), vec![f]);
        let bad = serde_json::from_str::<Vec<FilterSpec>>(r#"[{"column":"x","op":"~","values":[]}]"#).unwrap_err();
        assert!(bad.to_string().contains("unknown filter operator \"~\""), "{bad}");
        for op in FilterOp::ALL {
            assert_eq!(op.as_str().parse::<FilterOp>(), Ok(*op));
        }
    }
}
