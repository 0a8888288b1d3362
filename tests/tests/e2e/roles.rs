//! Role rules (DESIGN §3).

use crate::common::{PW, code, fixture, ints, strs};
use tonic::Code;

#[tokio::test]
async fn user_role_limits() {
    let f = fixture().await;
    for sql in [
        "CREATE NAMESPACE evil",
        "CREATE USER TABLE app.evil (id BIGINT PRIMARY KEY)",
        "DROP TABLE app.m",
        "ALTER TABLE app.m ADD COLUMN x TEXT",
        "CREATE USER mallory WITH PASSWORD 'x'",
        "DROP USER u_b",
    ] {
        let err = f.a.execute(sql).await.expect_err(sql);
        assert_eq!(code(&err), Code::PermissionDenied, "{sql}: {err}");
    }
    for sql in [
        "SELECT * FROM system.users",
        "SELECT * FROM system.stats",
        "SELECT * FROM app.secret",
    ] {
        let err = f.a.query_collect(sql).await.expect_err(sql);
        assert_eq!(code(&err), Code::PermissionDenied, "{sql}: {err}");
        assert!(!err.to_string().contains("classified"));
    }
    // PUBLIC shared: readable, not writable.
    assert_eq!(
        strs(&f.a, "SELECT title FROM app.rooms ORDER BY id", 0).await,
        vec!["Room one", "Room two"]
    );
    for sql in [
        "INSERT INTO app.rooms VALUES ('r3', 'x')",
        "UPDATE app.rooms SET title = 'x'",
        "DELETE FROM app.rooms",
    ] {
        let err = f.a.execute(sql).await.expect_err(sql);
        assert_eq!(code(&err), Code::PermissionDenied, "{sql}: {err}");
    }
    // EXECUTE AS needs service.
    let err =
        f.a.execute("EXECUTE AS USER 'u_b' DELETE FROM app.m")
            .await
            .unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied);
    assert_eq!(ints(&f.b, "SELECT count(*) FROM app.m").await, vec![2]);
}

#[tokio::test]
async fn service_and_dba_roles() {
    let f = fixture().await;
    // service: writes shared tables, impersonates users, still no DDL.
    assert_eq!(
        f.svc
            .execute("INSERT INTO app.rooms VALUES ('r3', 'Room three')")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        f.svc
            .execute("EXECUTE AS USER 'u_a' INSERT INTO app.m VALUES (10, 'r3', 'a-10')")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ints(&f.a, "SELECT id FROM app.m WHERE id = 10").await,
        vec![10]
    );
    assert_eq!(
        strs(
            &f.svc,
            "EXECUTE AS USER 'u_b' SELECT body FROM app.m ORDER BY id",
            0
        )
        .await,
        vec!["b-1", "b-2"]
    );
    assert_eq!(
        code(&f.svc.execute("CREATE NAMESPACE nope").await.unwrap_err()),
        Code::PermissionDenied
    );
    // EXECUTE AS never grants more than the caller has.
    f.root
        .execute(&format!("CREATE USER boss WITH PASSWORD '{PW}' ROLE dba"))
        .await
        .unwrap();
    assert_eq!(
        code(
            &f.svc
                .execute("EXECUTE AS USER 'boss' CREATE NAMESPACE nope")
                .await
                .unwrap_err()
        ),
        Code::PermissionDenied
    );
    // dba: DDL and system tables, but other users' rows only via EXECUTE AS.
    let boss = f.server.client("boss", PW).await.unwrap();
    boss.execute("CREATE NAMESPACE ops").await.unwrap();
    assert!(
        strs(&boss, "SELECT name FROM system.users", 0)
            .await
            .contains(&"u_a".to_string())
    );
    assert_eq!(ints(&boss, "SELECT count(*) FROM app.m").await, vec![0]);
    // Role changes apply to existing sessions at once (read per request).
    f.root.execute("ALTER USER u_a ROLE dba").await.unwrap();
    f.a.execute("CREATE NAMESPACE by_a").await.unwrap();
    f.root.execute("ALTER USER u_a ROLE user").await.unwrap();
    assert_eq!(
        code(&f.a.execute("CREATE NAMESPACE by_a2").await.unwrap_err()),
        Code::PermissionDenied
    );
    // A dropped user's token stops working.
    f.root.execute("DROP USER u_b").await.unwrap();
    assert_eq!(
        code(&f.b.query_collect("SELECT 1").await.unwrap_err()),
        Code::Unauthenticated
    );
}
