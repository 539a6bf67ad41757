//! The record table's name: checked once, then spliced into SQL text.

use crate::store::StoreError;
use std::fmt;

/// Default table name.
pub const DEFAULT_TABLE: &str = "idemq_records";

/// Longest table name part: Postgres truncates identifiers at 63 bytes, and the index name adds
/// [`INDEX_SUFFIX`] to the table name.
const MAX_NAME: usize = 63 - INDEX_SUFFIX.len();
const INDEX_SUFFIX: &str = "_expires_at_idx";

/// A validated, optionally schema-qualified table name such as `idemq_records` or
/// `billing.idemq_records`.
///
/// Table names cannot be bound as query parameters, so they end up in the SQL text. To make that
/// safe by construction, every part must be 1..=48 characters of lower-case ASCII letters, digits
/// and `_`, not starting with a digit; parts are additionally double-quoted in the SQL, so reserved
/// words such as `order` work too.
///
/// ```
/// use idemq::store::postgres::TableName;
/// assert!(TableName::new("billing.idemq_records").is_ok());
/// assert!(TableName::new("x; DROP TABLE users").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    /// Validates `qualified` (`name` or `schema.name`).
    pub fn new(qualified: &str) -> Result<Self, StoreError> {
        let invalid = |why: &str| {
            StoreError::InvalidConfig(format!("invalid postgres table name {qualified:?}: {why}"))
        };
        let mut parts = qualified.split('.');
        let (schema, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, _) => (None, name),
            (Some(schema), Some(name), None) => (Some(schema), name),
            _ => return Err(invalid("expected `name` or `schema.name`")),
        };
        for part in schema.iter().chain([&name]) {
            check_part(part).map_err(invalid)?;
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        })
    }

    /// The quoted, possibly schema-qualified name as it appears in SQL.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.name),
            None => format!("\"{}\"", self.name),
        }
    }

    /// The quoted schema name, when the name is qualified.
    pub fn schema_sql(&self) -> Option<String> {
        self.schema.as_ref().map(|s| format!("\"{s}\""))
    }

    /// The quoted, unqualified name of the expiry index (created in the table's schema).
    pub fn index_sql(&self) -> String {
        format!("\"{}{INDEX_SUFFIX}\"", self.name)
    }
}

impl Default for TableName {
    fn default() -> Self {
        Self {
            schema: None,
            name: DEFAULT_TABLE.to_owned(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

fn check_part(part: &str) -> Result<(), &'static str> {
    if part.is_empty() || part.len() > MAX_NAME {
        return Err("each part must be 1..=48 characters");
    }
    if part.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("a part must not start with a digit");
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err("only lower-case ASCII letters, digits and `_` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_qualified_names() {
        assert_eq!(
            TableName::new("idemq_records").unwrap().sql(),
            "\"idemq_records\""
        );
        let t = TableName::new("billing.order").unwrap();
        assert_eq!(t.sql(), "\"billing\".\"order\"");
        assert_eq!(t.index_sql(), "\"order_expires_at_idx\"");
        assert_eq!(t.to_string(), "billing.order");
        assert_eq!(TableName::default(), TableName::new(DEFAULT_TABLE).unwrap());
    }

    #[test]
    fn rejects_anything_that_could_escape_the_identifier() {
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a.b.c",
            "Records",
            "1abc",
            "a b",
            "a\"b",
            "a;drop table x",
            "ключ",
            &"a".repeat(49),
        ] {
            assert!(
                matches!(TableName::new(bad), Err(StoreError::InvalidConfig(_))),
                "{bad:?} accepted"
            );
        }
        assert!(TableName::new(&"a".repeat(48)).is_ok());
    }
}
