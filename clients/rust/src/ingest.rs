//! Bulk ingest modes (`CommandStatementIngest`).

use arrow_flight::sql::{TableDefinitionOptions, TableExistsOption, TableNotExistOption};

/// What [`KalamClient::ingest`](crate::KalamClient::ingest) does when the target table does or
/// does not exist. Same four modes, and same wire mapping, as ADBC's `adbc_ingest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IngestMode {
    /// Create the table; fail if it already exists.
    Create,
    /// Append to the table; fail if it does not exist.
    Append,
    /// Create the table, replacing it if it already exists.
    Replace,
    /// Create the table if needed, then append.
    CreateAppend,
}

impl IngestMode {
    /// The Flight SQL options ADBC sends for this mode.
    pub(crate) fn table_definition_options(self) -> TableDefinitionOptions {
        let (if_not_exist, if_exists) = match self {
            IngestMode::Create => (TableNotExistOption::Create, TableExistsOption::Fail),
            IngestMode::Append => (TableNotExistOption::Fail, TableExistsOption::Append),
            IngestMode::Replace => (TableNotExistOption::Create, TableExistsOption::Replace),
            IngestMode::CreateAppend => (TableNotExistOption::Create, TableExistsOption::Append),
        };
        TableDefinitionOptions {
            if_not_exist: if_not_exist.into(),
            if_exists: if_exists.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_like_adbc() {
        let cases = [
            (
                IngestMode::Create,
                TableNotExistOption::Create,
                TableExistsOption::Fail,
            ),
            (
                IngestMode::Append,
                TableNotExistOption::Fail,
                TableExistsOption::Append,
            ),
            (
                IngestMode::Replace,
                TableNotExistOption::Create,
                TableExistsOption::Replace,
            ),
            (
                IngestMode::CreateAppend,
                TableNotExistOption::Create,
                TableExistsOption::Append,
            ),
        ];
        for (mode, if_not_exist, if_exists) in cases {
            let options = mode.table_definition_options();
            assert_eq!(options.if_not_exist(), if_not_exist, "{mode:?}");
            assert_eq!(options.if_exists(), if_exists, "{mode:?}");
        }
    }
}
