use super::*;
use crate::catalog::{AccessLevel, TableKind};
use arrow::datatypes::DataType;

#[test]
fn recognises_our_statements() {
    assert_eq!(
        parse("create namespace if not exists App").unwrap(),
        Statement::CreateNamespace {
            name: "app".into(),
            if_not_exists: true
        }
    );
    assert_eq!(
        parse("DROP NAMESPACE app CASCADE;").unwrap(),
        Statement::DropNamespace {
            name: "app".into(),
            if_exists: false,
            cascade: true
        }
    );
    assert_eq!(
        parse("CREATE USER alice WITH PASSWORD 'p''w' ROLE service").unwrap(),
        Statement::CreateUser {
            name: "alice".into(),
            password: "p'w".into(),
            role: Role::Service
        }
    );
    assert_eq!(
        parse("EXECUTE AS USER 'alice' SELECT 1").unwrap(),
        Statement::ExecuteAs {
            user: "alice".into(),
            sql: "SELECT 1".into()
        }
    );
    assert_eq!(parse("SELECT * FROM app.t").unwrap(), Statement::Sql);
    assert_eq!(
        parse("INSERT INTO app.t VALUES (1)").unwrap(),
        Statement::Sql
    );
    assert!(parse("CREATE USER bob").is_err());
    assert!(parse("CREATE USER bob WITH PASSWORD 'x' ROLE king").is_err());
    assert!(parse("DROP TABLE t").is_err(), "namespace required");
}

#[test]
fn parses_table_kinds_and_options() {
    let Statement::CreateTable(t) = parse(
        "CREATE USER TABLE app.messages (id BIGINT PRIMARY KEY, room TEXT, body TEXT, sent_at TIMESTAMP)",
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(t.kind, TableKind::User);
    assert_eq!(t.primary_key, vec!["id".to_string()]);
    assert_eq!(t.columns[0], ("id".into(), DataType::Int64, false));
    let Statement::CreateTable(t) = parse(
        "CREATE SHARED TABLE app.rooms (id TEXT PRIMARY KEY, title TEXT) WITH (ACCESS_LEVEL = 'PUBLIC')",
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!((t.kind, t.access), (TableKind::Shared, AccessLevel::Public));
    let Statement::CreateTable(t) =
        parse("CREATE TABLE app.t (a INT, b TEXT, PRIMARY KEY (a)) WITH (TYPE = 'USER')").unwrap()
    else {
        panic!()
    };
    assert_eq!(t.kind, TableKind::User);
    let Statement::CreateTable(t) =
        parse("CREATE STREAM TABLE app.typing (room TEXT, at TIMESTAMP) WITH (TTL_SECONDS = 30)")
            .unwrap()
    else {
        panic!()
    };
    assert_eq!((t.kind, t.ttl_seconds), (TableKind::Stream, Some(30)));
    assert!(
        parse("CREATE USER TABLE app.t (a INT)").is_err(),
        "pk required"
    );
    assert!(
        parse("CREATE TABLE t (a INT PRIMARY KEY)").is_err(),
        "namespace required"
    );
    assert!(parse("CREATE USER TABLE app.t (_seq INT PRIMARY KEY)").is_err());
}
