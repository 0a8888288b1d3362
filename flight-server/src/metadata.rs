//! Static answers for `GetSqlInfo` and `GetXdbcTypeInfo`.

use std::sync::LazyLock;

use arrow_flight::sql::metadata::{
    SqlInfoData, SqlInfoDataBuilder, XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder,
};
use arrow_flight::sql::{Nullable, Searchable, SqlInfo, SqlSupportedTransaction, XdbcDataType};

/// Server identity and capabilities. Transactions are advertised as unsupported: ADBC would
/// otherwise send BeginTransaction on connect.
pub static SQL_INFO: LazyLock<Option<SqlInfoData>> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "KalamFlight");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.5");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    b.build().ok()
});

fn type_info(name: &str, t: XdbcDataType, size: Option<i32>) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type: t,
        column_size: size,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: false,
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: false,
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: t,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

/// The SQL types `CREATE TABLE` accepts.
pub static XDBC_INFO: LazyLock<Option<XdbcTypeInfoData>> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(type_info("BOOLEAN", XdbcDataType::XdbcBit, Some(1)));
    b.append(type_info("SMALLINT", XdbcDataType::XdbcSmallint, Some(16)));
    b.append(type_info("INTEGER", XdbcDataType::XdbcInteger, Some(32)));
    b.append(type_info("BIGINT", XdbcDataType::XdbcBigint, Some(64)));
    b.append(type_info("REAL", XdbcDataType::XdbcReal, Some(24)));
    b.append(type_info("DOUBLE", XdbcDataType::XdbcDouble, Some(53)));
    b.append(type_info("DECIMAL", XdbcDataType::XdbcDecimal, Some(38)));
    b.append(type_info("TEXT", XdbcDataType::XdbcVarchar, None));
    b.append(type_info("BYTEA", XdbcDataType::XdbcVarbinary, None));
    b.append(type_info("DATE", XdbcDataType::XdbcDate, None));
    b.append(type_info("TIMESTAMP", XdbcDataType::XdbcTimestamp, None));
    b.build().ok()
});
