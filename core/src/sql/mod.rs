//! The SQL front-end: recognises KalamFlight's own statements (DESIGN §4) and hands everything
//! else to DataFusion's parser.
//!
//! Our statements are recognised by their leading keywords with a small cursor; table bodies
//! (`(id BIGINT PRIMARY KEY, ...) WITH (...)`) are parsed by sqlparser as a `CREATE TABLE`.

mod cursor;
mod ddl;

pub use ddl::{CreateTable, parse_create_table, sql_type_to_arrow};

use cursor::Cursor;

use crate::context::Role;
use crate::{Error, Result};

/// A statement as KalamFlight sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// `CREATE NAMESPACE [IF NOT EXISTS] name`
    CreateNamespace { name: String, if_not_exists: bool },
    /// `DROP NAMESPACE [IF EXISTS] name [CASCADE]`
    DropNamespace {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    /// `CREATE [USER|SHARED|STREAM] TABLE ...`
    CreateTable(Box<CreateTable>),
    /// `DROP TABLE [IF EXISTS] ns.t`
    DropTable {
        namespace: String,
        name: String,
        if_exists: bool,
    },
    /// `ALTER TABLE ns.t ADD [COLUMN] c TYPE`
    AddColumn {
        namespace: String,
        table: String,
        column: String,
        data_type: arrow::datatypes::DataType,
    },
    /// `CREATE USER name WITH PASSWORD 'pw' [ROLE r]`
    CreateUser {
        name: String,
        password: String,
        role: Role,
    },
    /// `ALTER USER name [WITH] [PASSWORD 'pw'] [ROLE r]`
    AlterUser {
        name: String,
        password: Option<String>,
        role: Option<Role>,
    },
    /// `DROP USER [IF EXISTS] name`
    DropUser { name: String, if_exists: bool },
    /// `FLUSH TABLE ns.t`
    FlushTable { namespace: String, name: String },
    /// `KILL LIVE QUERY 'id'`
    KillLiveQuery { id: String },
    /// `EXECUTE AS USER 'name' <statement>`
    ExecuteAs { user: String, sql: String },
    /// Anything else: planned by DataFusion (SELECT, INSERT, UPDATE, DELETE, EXPLAIN ...).
    Sql,
}

impl Statement {
    /// Does this statement change the catalog (needs `dba`)?
    pub fn is_ddl(&self) -> bool {
        !matches!(
            self,
            Statement::Sql | Statement::ExecuteAs { .. } | Statement::KillLiveQuery { .. }
        )
    }
}

/// Classifies `sql`. Returns [`Statement::Sql`] for anything DataFusion should plan.
pub fn parse(sql: &str) -> Result<Statement> {
    let mut c = Cursor::new(sql);
    if c.keywords(&["CREATE", "NAMESPACE"]) {
        let if_not_exists = c.keywords(&["IF", "NOT", "EXISTS"]);
        let name = c.expect_ident("namespace name")?;
        c.expect_end()?;
        return Ok(Statement::CreateNamespace {
            name,
            if_not_exists,
        });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["DROP", "NAMESPACE"]) {
        let if_exists = c.keywords(&["IF", "EXISTS"]);
        let name = c.expect_ident("namespace name")?;
        let cascade = c.keyword("CASCADE");
        c.expect_end()?;
        return Ok(Statement::DropNamespace {
            name,
            if_exists,
            cascade,
        });
    }
    let mut c = Cursor::new(sql);
    if c.keyword("CREATE") {
        let mut kind_kw = None;
        for kw in ["USER", "SHARED", "STREAM"] {
            let save = c.pos();
            if c.keyword(kw) && c.keyword("TABLE") {
                kind_kw = Some(kw);
                break;
            }
            c.reset(save);
        }
        if let Some(kw) = kind_kw {
            return Ok(Statement::CreateTable(Box::new(parse_create_table(
                c.rest(),
                Some(kw),
            )?)));
        }
        if c.keyword("TABLE") {
            return Ok(Statement::CreateTable(Box::new(parse_create_table(
                c.rest(),
                None,
            )?)));
        }
        if c.keyword("USER") {
            let name = c.expect_ident("user name")?;
            if !(c.keyword("WITH") && c.keyword("PASSWORD")) {
                return Err(Error::InvalidArgument(
                    "expected CREATE USER name WITH PASSWORD 'password' [ROLE user|service|dba|system]".into(),
                ));
            }
            let password = c.expect_string("password")?;
            let role = if c.keyword("ROLE") {
                parse_role(&mut c)?
            } else {
                Role::User
            };
            c.expect_end()?;
            return Ok(Statement::CreateUser {
                name,
                password,
                role,
            });
        }
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["ALTER", "USER"]) {
        let name = c.expect_ident("user name")?;
        c.keyword("WITH");
        let mut password = None;
        let mut role = None;
        loop {
            if c.keyword("PASSWORD") {
                password = Some(c.expect_string("password")?);
            } else if c.keyword("ROLE") {
                role = Some(parse_role(&mut c)?);
            } else {
                break;
            }
        }
        c.expect_end()?;
        if password.is_none() && role.is_none() {
            return Err(Error::InvalidArgument(
                "ALTER USER needs PASSWORD '...' or ROLE r".into(),
            ));
        }
        return Ok(Statement::AlterUser {
            name,
            password,
            role,
        });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["DROP", "USER"]) {
        let if_exists = c.keywords(&["IF", "EXISTS"]);
        let name = c.expect_ident("user name")?;
        c.expect_end()?;
        return Ok(Statement::DropUser { name, if_exists });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["DROP", "TABLE"]) {
        let if_exists = c.keywords(&["IF", "EXISTS"]);
        let (namespace, name) = c.expect_table_name()?;
        c.expect_end()?;
        return Ok(Statement::DropTable {
            namespace,
            name,
            if_exists,
        });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["ALTER", "TABLE"]) {
        let (namespace, table) = c.expect_table_name()?;
        if !c.keyword("ADD") {
            return Err(Error::Unsupported(
                "only ALTER TABLE ... ADD COLUMN is supported".into(),
            ));
        }
        c.keyword("COLUMN");
        let column = c.expect_ident("column name")?;
        let type_sql = c.rest().trim().trim_end_matches(';').trim();
        if type_sql.is_empty() {
            return Err(Error::InvalidArgument(
                "ALTER TABLE ADD COLUMN needs a type".into(),
            ));
        }
        let data_type = ddl::parse_type_text(type_sql)?;
        return Ok(Statement::AddColumn {
            namespace,
            table,
            column,
            data_type,
        });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["FLUSH", "TABLE"]) {
        let (namespace, name) = c.expect_table_name()?;
        c.expect_end()?;
        return Ok(Statement::FlushTable { namespace, name });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["KILL", "LIVE", "QUERY"]) {
        let id = c.expect_string("live query id")?;
        c.expect_end()?;
        return Ok(Statement::KillLiveQuery { id });
    }
    let mut c = Cursor::new(sql);
    if c.keywords(&["EXECUTE", "AS", "USER"]) {
        let user = c.expect_string_or_ident("user name")?;
        let rest = c.rest().trim();
        if rest.is_empty() {
            return Err(Error::InvalidArgument(
                "EXECUTE AS USER 'name' needs a statement".into(),
            ));
        }
        return Ok(Statement::ExecuteAs {
            user,
            sql: rest.to_string(),
        });
    }
    Ok(Statement::Sql)
}

fn parse_role(c: &mut Cursor<'_>) -> Result<Role> {
    let r = c.expect_string_or_ident("role")?;
    Role::parse(&r).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "unknown role '{r}' (expected user, service, dba or system)"
        ))
    })
}

/// Does the statement mention the hidden `_seq` column (so it must be exposed)?
pub fn mentions_seq(sql: &str) -> bool {
    sql.as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"_seq"))
}

#[cfg(test)]
mod tests;
