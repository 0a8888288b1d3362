//! The catalog: namespaces, tables and users, persisted as a create-only log.
//!
//! Every DDL or user change is one [`CatalogEntry`], committed as the next version of
//! `catalog/_log/{v:020}.json` with create-if-absent semantics (a lost race re-reads the log and
//! retries), then applied to the in-memory state. Start-up replays the whole log.
//!
//! The in-memory state also owns each table's [`TableRuntime`]: its memoized schemas and write
//! buffer. The table registry is bounded by [`CatalogLimits::max_tables`], enforced at
//! `CREATE TABLE`, and entries are replaced on DDL (which invalidates memoized schemas).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use kalam_storage::buffer::{BufferAccounting, DELETED_COLUMN, SEQ_COLUMN};

use crate::provider::merge::{TIME_COLUMN, USER_COLUMN};
use crate::table::TableStore;
use kalam_storage::log::{Append, CreateOnlyLog};
use object_store::ObjectStore;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::context::Role;
use crate::{Error, Result};

/// Kind of table (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// One partition per user; a user sees only their own rows.
    User,
    /// One partition for everybody; access by `AccessLevel` and role.
    Shared,
    /// Append-only per-user rows that expire after `ttl_seconds`.
    Stream,
}

impl TableKind {
    /// `USER`, `SHARED` or `STREAM`.
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::User => "USER",
            TableKind::Shared => "SHARED",
            TableKind::Stream => "STREAM",
        }
    }
}

/// Who may read a shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevel {
    /// Every role may read; `service` and above may write.
    Public,
    /// Only `service` and above.
    Private,
}

/// One column as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Lowercase column name.
    pub name: String,
    /// Arrow type, as its `Display` text (parsed back with `FromStr`).
    pub data_type: String,
    /// Whether NULL is allowed (primary-key columns never are).
    pub nullable: bool,
}

impl ColumnDef {
    /// A column of `data_type`.
    pub fn new(name: impl Into<String>, data_type: &DataType, nullable: bool) -> Self {
        Self {
            name: name.into(),
            data_type: data_type.to_string(),
            nullable,
        }
    }

    fn field(&self) -> Result<Field> {
        let dt = DataType::from_str(&self.data_type).map_err(|e| {
            Error::Internal(format!("catalog column '{}' has bad type: {e}", self.name))
        })?;
        Ok(Field::new(&self.name, dt, self.nullable))
    }
}

/// A table definition as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    /// Unique id, never reused (names may be); assigned by [`Catalog::commit`].
    pub id: u64,
    /// Namespace (schema) name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// USER, SHARED or STREAM.
    pub kind: TableKind,
    /// Read access for shared tables (`Private` is the default).
    pub access: AccessLevel,
    /// Columns in order.
    pub columns: Vec<ColumnDef>,
    /// Primary-key column names (empty for STREAM tables).
    pub primary_key: Vec<String>,
    /// STREAM tables only: rows older than this disappear.
    pub ttl_seconds: Option<u64>,
    /// Milliseconds since the epoch.
    pub created_at_ms: i64,
}

/// A user as persisted. The password is an argon2id PHC string, never the password itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDef {
    /// Stable id; the partition key of this user's rows.
    pub id: String,
    /// Login name.
    pub name: String,
    /// argon2id hash.
    pub password_hash: String,
    /// Current role.
    pub role: Role,
    /// Milliseconds since the epoch.
    pub created_at_ms: i64,
}

/// One committed catalog change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatalogEntry {
    /// `CREATE NAMESPACE`.
    CreateNamespace { name: String },
    /// `DROP NAMESPACE` (with CASCADE the tables' drops are committed first).
    DropNamespace { name: String },
    /// `CREATE ... TABLE`.
    CreateTable(TableDef),
    /// `DROP TABLE`.
    DropTable { namespace: String, name: String },
    /// `ALTER TABLE ... ADD COLUMN`.
    AddColumn {
        namespace: String,
        table: String,
        column: ColumnDef,
    },
    /// `CREATE USER`.
    CreateUser(UserDef),
    /// `ALTER USER`.
    AlterUser {
        name: String,
        password_hash: Option<String>,
        role: Option<Role>,
    },
    /// `DROP USER`.
    DropUser { name: String },
}

/// Bounds on what the catalog holds in memory.
#[derive(Debug, Clone)]
pub struct CatalogLimits {
    /// Most tables (and so table runtimes) at once.
    pub max_tables: usize,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        Self { max_tables: 10_000 }
    }
}

/// A table ready to serve: definition, memoized schemas and rows.
#[derive(Debug)]
pub struct TableRuntime {
    /// The definition this runtime was built from.
    pub def: TableDef,
    /// User columns only (what `SELECT *` shows).
    pub schema: SchemaRef,
    /// User columns + `_seq` (when a statement names `_seq`).
    pub schema_with_seq: SchemaRef,
    /// Positions of the primary-key columns in `schema`.
    pub pk_indices: Vec<usize>,
    /// User columns + `_seq` + `_deleted`: buffered rows and the merge-on-read schema.
    pub mem_schema: SchemaRef,
    /// `mem_schema` + `_ts` + `_user`: the Parquet files' schema.
    pub file_schema: SchemaRef,
    /// Buffer generations and files; shared by the runtimes of successive versions of the
    /// table (ALTER TABLE).
    pub store: Arc<TableStore>,
}

impl TableRuntime {
    /// The user-column schema `def` describes.
    pub fn schema_of(def: &TableDef) -> Result<SchemaRef> {
        let fields = def
            .columns
            .iter()
            .map(ColumnDef::field)
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Schema::new(fields)))
    }

    fn build(
        def: TableDef,
        store: Option<Arc<TableStore>>,
        acct: &Arc<BufferAccounting>,
    ) -> Result<Self> {
        let schema = Self::schema_of(&def)?;
        let mut fields: Vec<Arc<Field>> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(SEQ_COLUMN, DataType::UInt64, false)));
        let schema_with_seq = Arc::new(Schema::new(fields.clone()));
        fields.push(Arc::new(Field::new(
            DELETED_COLUMN,
            DataType::Boolean,
            false,
        )));
        let mem_schema = Arc::new(Schema::new(fields.clone()));
        fields.push(Arc::new(Field::new(TIME_COLUMN, DataType::Int64, false)));
        fields.push(Arc::new(Field::new(USER_COLUMN, DataType::Utf8, false)));
        let file_schema = Arc::new(Schema::new(fields));
        let pk_indices = def
            .primary_key
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    Error::Internal(format!(
                        "primary key column '{k}' missing in '{}'",
                        def.name
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let store = match store {
            Some(s) => s,
            None => Arc::new(TableStore::new(
                def.id,
                format!("{}.{}", def.namespace, def.name),
                def.kind,
                &schema,
                pk_indices.clone(),
                Arc::clone(acct),
            )?),
        };
        Ok(Self {
            def,
            schema,
            schema_with_seq,
            pk_indices,
            mem_schema,
            file_schema,
            store,
        })
    }

    /// `batch` (shaped as `mem_schema`) of `partition`, committed at `at_ms`, shaped as
    /// `file_schema`.
    pub fn to_file_batch(
        &self,
        batch: &RecordBatch,
        partition: &str,
        at_ms: i64,
    ) -> Result<RecordBatch> {
        let n = batch.num_rows();
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(Int64Array::from(vec![at_ms; n])));
        cols.push(Arc::new(StringArray::from(vec![partition; n])));
        RecordBatch::try_new(Arc::clone(&self.file_schema), cols)
            .map_err(|e| Error::Internal(format!("flush batch: {e}")))
    }

    /// `namespace.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.def.namespace, self.def.name)
    }
}

#[derive(Debug, Default)]
struct State {
    /// Last applied log version.
    version: u64,
    namespaces: BTreeSet<String>,
    /// (namespace, table) → runtime.
    tables: BTreeMap<(String, String), Arc<TableRuntime>>,
    /// name → user.
    users: BTreeMap<String, Arc<UserDef>>,
    /// id → name, for token lookups.
    user_ids: HashMap<String, String>,
    next_table_id: u64,
}

/// The catalog. Reads are lock-light (`RwLock` held only to clone an `Arc`); commits are
/// serialised by `commit_lock`.
#[derive(Debug)]
pub struct Catalog {
    log: CreateOnlyLog,
    state: RwLock<State>,
    /// One commit at a time from this process.
    commit_lock: tokio::sync::Mutex<()>,
    limits: CatalogLimits,
    accounting: Arc<BufferAccounting>,
}

/// Name of the system schema.
pub const SYSTEM_NAMESPACE: &str = "system";

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Catalog {
    /// Opens the catalog stored in `store` and replays its log.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        limits: CatalogLimits,
        accounting: Arc<BufferAccounting>,
    ) -> Result<Self> {
        let catalog = Self {
            log: CreateOnlyLog::new(store, "catalog"),
            state: RwLock::new(State {
                next_table_id: 1,
                ..State::default()
            }),
            commit_lock: tokio::sync::Mutex::new(()),
            limits,
            accounting,
        };
        catalog.catch_up().await?;
        Ok(catalog)
    }

    /// Applies log entries committed since our last read (by us or another writer).
    async fn catch_up(&self) -> Result<()> {
        let from = self.state.read().version + 1;
        let entries: Vec<(u64, CatalogEntry)> = self.log.read_from(from).await?;
        for (v, entry) in entries {
            let mut st = self.state.write();
            // Entries were validated when committed; replay must not reject them.
            self.apply(&mut st, &entry)?;
            st.version = v;
        }
        Ok(())
    }

    /// Validates `entry` against the current state, commits it to the log and applies it.
    /// A created table gets its id here, under the commit lock, so ids are unique (the WAL
    /// names tables by id).
    pub async fn commit(&self, mut entry: CatalogEntry) -> Result<()> {
        let _guard = self.commit_lock.lock().await;
        for _attempt in 0..16 {
            let version = {
                let st = self.state.read();
                if let CatalogEntry::CreateTable(def) = &mut entry {
                    def.id = st.next_table_id;
                }
                self.validate(&st, &entry)?;
                st.version + 1
            };
            match self.log.try_append(version, &entry).await? {
                Append::Committed => {
                    let mut st = self.state.write();
                    self.apply(&mut st, &entry)?;
                    st.version = version;
                    return Ok(());
                }
                Append::Conflict => self.catch_up().await?,
            }
        }
        Err(Error::Storage(kalam_storage::Error::CommitContention {
            path: "catalog/_log".into(),
            attempts: 16,
        }))
    }

    fn validate(&self, st: &State, entry: &CatalogEntry) -> Result<()> {
        match entry {
            CatalogEntry::CreateNamespace { name } => {
                if name == SYSTEM_NAMESPACE || st.namespaces.contains(name) {
                    return Err(Error::AlreadyExists(format!(
                        "namespace '{name}' already exists"
                    )));
                }
            }
            CatalogEntry::DropNamespace { name } => {
                if !st.namespaces.contains(name) {
                    return Err(Error::NotFound(format!(
                        "namespace '{name}' does not exist"
                    )));
                }
                if st.tables.keys().any(|(ns, _)| ns == name) {
                    return Err(Error::InvalidArgument(format!(
                        "namespace '{name}' is not empty; use DROP NAMESPACE {name} CASCADE"
                    )));
                }
            }
            CatalogEntry::CreateTable(def) => {
                if !st.namespaces.contains(&def.namespace) {
                    return Err(Error::NotFound(format!(
                        "namespace '{}' does not exist",
                        def.namespace
                    )));
                }
                if st
                    .tables
                    .contains_key(&(def.namespace.clone(), def.name.clone()))
                {
                    return Err(Error::AlreadyExists(format!(
                        "table '{}.{}' already exists",
                        def.namespace, def.name
                    )));
                }
                if st.tables.len() >= self.limits.max_tables {
                    return Err(Error::ResourceExhausted(format!(
                        "table limit reached ({} tables)",
                        self.limits.max_tables
                    )));
                }
            }
            CatalogEntry::DropTable { namespace, name } => {
                if !st.tables.contains_key(&(namespace.clone(), name.clone())) {
                    return Err(Error::NotFound(format!(
                        "table '{namespace}.{name}' does not exist"
                    )));
                }
            }
            CatalogEntry::AddColumn {
                namespace,
                table,
                column,
            } => {
                let Some(rt) = st.tables.get(&(namespace.clone(), table.clone())) else {
                    return Err(Error::NotFound(format!(
                        "table '{namespace}.{table}' does not exist"
                    )));
                };
                if rt.def.columns.iter().any(|c| c.name == column.name) || column.name == SEQ_COLUMN
                {
                    return Err(Error::AlreadyExists(format!(
                        "column '{}' already exists in '{namespace}.{table}'",
                        column.name
                    )));
                }
                if !column.nullable {
                    return Err(Error::InvalidArgument(
                        "an added column must be nullable (existing rows read it as NULL)".into(),
                    ));
                }
            }
            CatalogEntry::CreateUser(u) => {
                if st.users.contains_key(&u.name) {
                    return Err(Error::AlreadyExists(format!(
                        "user '{}' already exists",
                        u.name
                    )));
                }
            }
            CatalogEntry::AlterUser { name, .. } | CatalogEntry::DropUser { name } => {
                if !st.users.contains_key(name) {
                    return Err(Error::NotFound(format!("user '{name}' does not exist")));
                }
            }
        }
        Ok(())
    }

    fn apply(&self, st: &mut State, entry: &CatalogEntry) -> Result<()> {
        match entry {
            CatalogEntry::CreateNamespace { name } => {
                st.namespaces.insert(name.clone());
            }
            CatalogEntry::DropNamespace { name } => {
                st.namespaces.remove(name);
                st.tables.retain(|(ns, _), rt| {
                    if ns == name {
                        rt.store.drop_files();
                    }
                    ns != name
                });
            }
            CatalogEntry::CreateTable(def) => {
                st.next_table_id = st.next_table_id.max(def.id + 1);
                let rt = TableRuntime::build(def.clone(), None, &self.accounting)?;
                st.tables
                    .insert((def.namespace.clone(), def.name.clone()), Arc::new(rt));
            }
            CatalogEntry::DropTable { namespace, name } => {
                if let Some(rt) = st.tables.remove(&(namespace.clone(), name.clone())) {
                    // Its files go once the last reader lets go of them.
                    rt.store.drop_files();
                }
            }
            CatalogEntry::AddColumn {
                namespace,
                table,
                column,
            } => {
                let key = (namespace.clone(), table.clone());
                if let Some(old) = st.tables.get(&key) {
                    let mut def = old.def.clone();
                    def.columns.push(column.clone());
                    let rt =
                        TableRuntime::build(def, Some(Arc::clone(&old.store)), &self.accounting)?;
                    st.tables.insert(key, Arc::new(rt));
                }
            }
            CatalogEntry::CreateUser(u) => {
                st.user_ids.insert(u.id.clone(), u.name.clone());
                st.users.insert(u.name.clone(), Arc::new(u.clone()));
            }
            CatalogEntry::AlterUser {
                name,
                password_hash,
                role,
            } => {
                if let Some(old) = st.users.get(name) {
                    let mut u = (**old).clone();
                    if let Some(h) = password_hash {
                        u.password_hash = h.clone();
                    }
                    if let Some(r) = role {
                        u.role = *r;
                    }
                    st.users.insert(name.clone(), Arc::new(u));
                }
            }
            CatalogEntry::DropUser { name } => {
                if let Some(u) = st.users.remove(name) {
                    st.user_ids.remove(&u.id);
                }
            }
        }
        Ok(())
    }

    /// Does the namespace exist?
    pub fn namespace_exists(&self, name: &str) -> bool {
        name == SYSTEM_NAMESPACE || self.state.read().namespaces.contains(name)
    }

    /// User namespaces, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        self.state.read().namespaces.iter().cloned().collect()
    }

    /// The runtime of `namespace.name`.
    pub fn table(&self, namespace: &str, name: &str) -> Option<Arc<TableRuntime>> {
        self.state
            .read()
            .tables
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every table of `namespace` (or all tables), sorted by name.
    pub fn tables(&self, namespace: Option<&str>) -> Vec<Arc<TableRuntime>> {
        let st = self.state.read();
        match namespace {
            // Keys sort by (namespace, name): read just this namespace's range.
            Some(ns) => st
                .tables
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, t)| Arc::clone(t))
                .collect(),
            None => st.tables.values().cloned().collect(),
        }
    }

    /// Number of tables.
    pub fn table_count(&self) -> usize {
        self.state.read().tables.len()
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.state.read().users.len()
    }

    /// Every table keyed by id (for WAL recovery).
    pub fn tables_by_id(&self) -> HashMap<u64, Arc<TableRuntime>> {
        self.state
            .read()
            .tables
            .values()
            .map(|t| (t.def.id, Arc::clone(t)))
            .collect()
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<Arc<UserDef>> {
        self.state.read().users.get(name).cloned()
    }

    /// The user whose id is `id`.
    pub fn user_by_id(&self, id: &str) -> Option<Arc<UserDef>> {
        let st = self.state.read();
        st.user_ids.get(id).and_then(|n| st.users.get(n)).cloned()
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Vec<Arc<UserDef>> {
        self.state.read().users.values().cloned().collect()
    }

    /// Total buffered bytes across tables.
    pub fn buffer_bytes(&self) -> usize {
        self.accounting.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn table(ns: &str, name: &str) -> TableDef {
        TableDef {
            id: 1,
            namespace: ns.into(),
            name: name.into(),
            kind: TableKind::User,
            access: AccessLevel::Private,
            columns: vec![
                ColumnDef::new("id", &DataType::Int64, false),
                ColumnDef::new("body", &DataType::Utf8, true),
            ],
            primary_key: vec!["id".into()],
            ttl_seconds: None,
            created_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn concurrent_creates_get_distinct_table_ids() {
        let c = Arc::new(
            Catalog::open(
                Arc::new(InMemory::new()),
                CatalogLimits::default(),
                Arc::default(),
            )
            .await
            .unwrap(),
        );
        c.commit(CatalogEntry::CreateNamespace { name: "app".into() })
            .await
            .unwrap();
        let (x, y) = tokio::join!(
            c.commit(CatalogEntry::CreateTable(table("app", "x"))),
            c.commit(CatalogEntry::CreateTable(table("app", "y")))
        );
        x.unwrap();
        y.unwrap();
        let (ix, iy) = (
            c.table("app", "x").unwrap().def.id,
            c.table("app", "y").unwrap().def.id,
        );
        assert_ne!(ix, iy);
    }

    #[tokio::test]
    async fn catalog_survives_reopen_and_validates() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let acct = Arc::new(BufferAccounting::default());
        let c = Catalog::open(
            Arc::clone(&store),
            CatalogLimits::default(),
            Arc::clone(&acct),
        )
        .await
        .unwrap();
        c.commit(CatalogEntry::CreateNamespace { name: "app".into() })
            .await
            .unwrap();
        assert!(matches!(
            c.commit(CatalogEntry::CreateNamespace { name: "app".into() })
                .await,
            Err(Error::AlreadyExists(_))
        ));
        c.commit(CatalogEntry::CreateTable(table("app", "m")))
            .await
            .unwrap();
        c.commit(CatalogEntry::AddColumn {
            namespace: "app".into(),
            table: "m".into(),
            column: ColumnDef::new("edited", &DataType::Boolean, true),
        })
        .await
        .unwrap();
        assert!(matches!(
            c.commit(CatalogEntry::CreateTable(table("nope", "m")))
                .await,
            Err(Error::NotFound(_))
        ));

        // A second catalog over the same store sees everything, and a commit from the first
        // one after the second's open is picked up by the second via conflict + catch-up.
        let c2 = Catalog::open(Arc::clone(&store), CatalogLimits::default(), acct)
            .await
            .unwrap();
        assert_eq!(c2.namespaces(), vec!["app".to_string()]);
        assert_eq!(c2.table("app", "m").unwrap().schema.fields().len(), 3);
        c.commit(CatalogEntry::CreateNamespace { name: "b".into() })
            .await
            .unwrap();
        c2.commit(CatalogEntry::CreateNamespace { name: "c".into() })
            .await
            .unwrap();
        assert_eq!(
            c2.namespaces(),
            vec!["app".to_string(), "b".into(), "c".into()]
        );
    }
}
