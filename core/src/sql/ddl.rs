//! `CREATE ... TABLE` bodies and SQL type names.

use arrow::datatypes::{DataType, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    self, ColumnOption, CreateTableOptions, Expr, SqlOption, TableConstraint, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::catalog::{AccessLevel, TableKind};
use crate::{Error, Result};

/// A parsed `CREATE ... TABLE`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    /// Namespace.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// USER / SHARED / STREAM.
    pub kind: TableKind,
    /// For shared tables.
    pub access: AccessLevel,
    /// (name, type, nullable) in order.
    pub columns: Vec<(String, DataType, bool)>,
    /// Primary-key column names.
    pub primary_key: Vec<String>,
    /// STREAM tables: row lifetime.
    pub ttl_seconds: Option<u64>,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
}

/// Parses the text after `CREATE [kind] TABLE`. `kind_kw` is `USER`/`SHARED`/`STREAM` when the
/// kind was a keyword; otherwise `WITH (TYPE = '...')` decides and the default is SHARED.
pub fn parse_create_table(rest: &str, kind_kw: Option<&str>) -> Result<CreateTable> {
    let sql = format!("CREATE TABLE {rest}");
    let stmts = Parser::parse_sql(&GenericDialect {}, &sql)
        .map_err(|e| Error::InvalidArgument(format!("invalid CREATE TABLE: {e}")))?;
    let [ast::Statement::CreateTable(ct)] = stmts.as_slice() else {
        return Err(Error::InvalidArgument(
            "expected exactly one CREATE TABLE statement".into(),
        ));
    };
    if ct.query.is_some() {
        return Err(Error::Unsupported(
            "CREATE TABLE ... AS SELECT is not supported".into(),
        ));
    }
    let parts: Vec<String> = ct
        .name
        .0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(ident_name)
        .collect();
    let [namespace, name] = parts.as_slice() else {
        return Err(Error::InvalidArgument(format!(
            "table names are qualified by their namespace: expected <namespace>.<table>, got '{}'",
            ct.name
        )));
    };

    let mut kind = match kind_kw {
        Some("USER") => Some(TableKind::User),
        Some("STREAM") => Some(TableKind::Stream),
        Some(_) => Some(TableKind::Shared),
        None => None,
    };
    let mut access = AccessLevel::Private;
    let mut ttl_seconds = None;
    let opts = match &ct.table_options {
        CreateTableOptions::None => &[][..],
        CreateTableOptions::With(o)
        | CreateTableOptions::Options(o)
        | CreateTableOptions::Plain(o) => o,
        CreateTableOptions::TableProperties(o) => o,
    };
    for opt in opts {
        let SqlOption::KeyValue { key, value } = opt else {
            return Err(Error::InvalidArgument(format!(
                "unsupported table option '{opt}'"
            )));
        };
        let v = option_value(value)?;
        match key.value.to_ascii_uppercase().as_str() {
            "TYPE" => {
                let k = match v.to_ascii_uppercase().as_str() {
                    "USER" => TableKind::User,
                    "SHARED" => TableKind::Shared,
                    "STREAM" => TableKind::Stream,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unknown table TYPE '{other}' (expected USER, SHARED or STREAM)"
                        )));
                    }
                };
                if kind.is_some_and(|existing| existing != k) {
                    return Err(Error::InvalidArgument(
                        "TYPE contradicts the table kind keyword".into(),
                    ));
                }
                kind = Some(k);
            }
            "ACCESS_LEVEL" => {
                access = match v.to_ascii_uppercase().as_str() {
                    "PUBLIC" => AccessLevel::Public,
                    "PRIVATE" => AccessLevel::Private,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "unknown ACCESS_LEVEL '{other}' (expected PUBLIC or PRIVATE)"
                        )));
                    }
                }
            }
            "TTL_SECONDS" => {
                ttl_seconds = Some(v.parse::<u64>().map_err(|_| {
                    Error::InvalidArgument(format!("TTL_SECONDS must be a whole number, got '{v}'"))
                })?)
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown table option '{other}'"
                )));
            }
        }
    }
    let kind = kind.unwrap_or(TableKind::Shared);

    let mut primary_key = Vec::new();
    let mut columns = Vec::with_capacity(ct.columns.len());
    for c in &ct.columns {
        let cname = ident_name(&c.name);
        if cname.starts_with('_') {
            return Err(Error::InvalidArgument(format!(
                "column names starting with '_' are reserved for system columns: '{cname}'"
            )));
        }
        if columns.iter().any(|(n, _, _)| *n == cname) {
            return Err(Error::InvalidArgument(format!(
                "column '{cname}' is defined twice"
            )));
        }
        let dt = sql_type_to_arrow(&c.data_type)?;
        let mut nullable = true;
        for o in &c.options {
            match &o.option {
                ColumnOption::PrimaryKey(_) => {
                    primary_key.push(cname.clone());
                    nullable = false;
                }
                ColumnOption::NotNull => nullable = false,
                ColumnOption::Null => {}
                other => {
                    return Err(Error::Unsupported(format!(
                        "column option '{other}' is not supported"
                    )));
                }
            }
        }
        columns.push((cname, dt, nullable));
    }
    for tc in &ct.constraints {
        match tc {
            TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(Error::InvalidArgument(
                        "the primary key is declared twice".into(),
                    ));
                }
                for ic in &pk.columns {
                    let Expr::Identifier(id) = &ic.column.expr else {
                        return Err(Error::InvalidArgument(
                            "primary key entries must be column names".into(),
                        ));
                    };
                    primary_key.push(ident_name(id));
                }
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "constraint '{other}' is not supported"
                )));
            }
        }
    }
    for k in &primary_key {
        match columns.iter_mut().find(|(n, _, _)| n == k) {
            Some(col) => col.2 = false,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "primary key column '{k}' is not a column"
                )));
            }
        }
    }
    if columns.is_empty() {
        return Err(Error::InvalidArgument(
            "a table needs at least one column".into(),
        ));
    }
    match kind {
        TableKind::User | TableKind::Shared if primary_key.is_empty() => {
            return Err(Error::InvalidArgument(format!(
                "{} tables need a PRIMARY KEY",
                kind.as_str()
            )));
        }
        TableKind::Stream if ttl_seconds.is_none() => {
            return Err(Error::InvalidArgument(
                "STREAM tables need WITH (TTL_SECONDS = n)".into(),
            ));
        }
        _ => {}
    }
    if kind != TableKind::Stream && ttl_seconds.is_some() {
        return Err(Error::InvalidArgument(
            "TTL_SECONDS applies to STREAM tables only".into(),
        ));
    }
    Ok(CreateTable {
        namespace: namespace.clone(),
        name: name.clone(),
        kind,
        access,
        columns,
        primary_key,
        ttl_seconds,
        if_not_exists: ct.if_not_exists,
    })
}

fn ident_name(id: &ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn option_value(e: &Expr) -> Result<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Ok(s.clone()),
            Value::Number(n, _) => Ok(n.clone()),
            other => Ok(other.to_string()),
        },
        Expr::Identifier(id) => Ok(id.value.clone()),
        other => Err(Error::InvalidArgument(format!(
            "unsupported option value '{other}'"
        ))),
    }
}

/// Parses a type name such as `BIGINT` or `DECIMAL(10, 2)`.
pub(crate) fn parse_type_text(text: &str) -> Result<DataType> {
    let sql = format!("CREATE TABLE t (c {text})");
    let stmts = Parser::parse_sql(&GenericDialect {}, &sql)
        .map_err(|e| Error::InvalidArgument(format!("invalid column type '{text}': {e}")))?;
    match stmts.as_slice() {
        [ast::Statement::CreateTable(ct)]
            if ct.columns.len() == 1 && ct.columns[0].options.is_empty() =>
        {
            sql_type_to_arrow(&ct.columns[0].data_type)
        }
        _ => Err(Error::InvalidArgument(format!(
            "invalid column type '{text}'"
        ))),
    }
}

/// Maps a SQL type to the Arrow type KalamFlight stores.
pub fn sql_type_to_arrow(t: &ast::DataType) -> Result<DataType> {
    use ast::DataType as S;
    Ok(match t {
        S::BigInt(_) | S::Int8(_) | S::Int64 => DataType::Int64,
        S::Int(_) | S::Integer(_) | S::Int4(_) | S::Int32 => DataType::Int32,
        S::SmallInt(_) | S::Int2(_) | S::Int16 => DataType::Int16,
        S::TinyInt(_) => DataType::Int8,
        S::BigIntUnsigned(_) | S::UBigInt | S::UInt64 => DataType::UInt64,
        S::IntUnsigned(_) | S::IntegerUnsigned(_) | S::UInt32 => DataType::UInt32,
        S::Boolean | S::Bool => DataType::Boolean,
        S::Text
        | S::String(_)
        | S::Varchar(_)
        | S::Char(_)
        | S::Character(_)
        | S::CharacterVarying(_)
        | S::Nvarchar(_)
        | S::JSON
        | S::Uuid => DataType::Utf8,
        S::Double(_) | S::DoublePrecision | S::Float8 | S::Float64 => DataType::Float64,
        S::Real | S::Float4 | S::Float32 => DataType::Float32,
        S::Float(_) => DataType::Float64,
        S::Timestamp(_, _) | S::Datetime(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        S::Date => DataType::Date32,
        S::Bytea | S::Blob(_) | S::Binary(_) | S::Varbinary(_) => DataType::Binary,
        S::Decimal(info) | S::Numeric(info) => {
            use ast::ExactNumberInfo as E;
            match info {
                E::None => DataType::Decimal128(38, 10),
                E::Precision(p) => DataType::Decimal128(*p as u8, 0),
                E::PrecisionAndScale(p, s) => DataType::Decimal128(*p as u8, *s as i8),
            }
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unsupported column type '{other}'"
            )));
        }
    })
}
