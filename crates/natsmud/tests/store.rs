//! The account store's contract, run against both implementations: SQLite (a file in a
//! temporary directory) and PostgreSQL (a server of the test's own; skipped, saying so,
//! where PostgreSQL is not installed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use natsmud::db::{Accounts, DbError};
use natsmud_protocol::{PlayerId, PlayerName, RoomId};
use tempfile::TempDir;

/// A store and what keeps its database alive.
struct Store {
    accounts: Accounts,
    url: String,
    _sqlite: Option<TempDir>,
    _postgres: Option<common::Postgres>,
}

impl Store {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("natsmud.db").display());
        Self {
            accounts: Accounts::open(&url).await.unwrap(),
            url,
            _sqlite: Some(dir),
            _postgres: None,
        }
    }

    async fn postgres(test: &str) -> Option<Self> {
        let server = common::Postgres::start(test)?;
        let url = server.url.clone();
        Some(Self {
            accounts: Accounts::open(&url).await.unwrap(),
            url,
            _sqlite: None,
            _postgres: Some(server),
        })
    }

    /// The same database opened again, as another node (or a restart) would.
    async fn reopen(&self) -> Accounts {
        Accounts::open(&self.url).await.unwrap()
    }
}

/// Each named case, once per implementation: `sqlite::case` and `postgres::case`.
macro_rules! store_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let store = super::Store::sqlite().await;
                    super::$case(&store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(store) = super::Store::postgres(stringify!($case)).await else {
                        return;
                    };
                    super::$case(&store).await;
                }
            )*
        }
    };
}

store_tests!(
    accounts_are_created_and_found_by_name_and_id,
    names_are_unique_whatever_their_case,
    set_rooms_stores_the_last_room_of_each_player,
    a_deleted_account_is_gone,
    the_first_secret_recorded_is_the_clusters,
    the_schema_opens_again,
);

fn id(text: &str) -> PlayerId {
    PlayerId::parse(text).unwrap()
}

fn name(text: &str) -> PlayerName {
    PlayerName::parse(text).unwrap()
}

fn room(text: &str) -> RoomId {
    RoomId::parse(text).unwrap()
}

async fn accounts_are_created_and_found_by_name_and_id(store: &Store) {
    let db = &store.accounts;
    db.create(&id("p1"), &name("Alice"), "hash-1", &room("start"))
        .await
        .unwrap();
    let by_name = db.find_by_name(&name("ALICE")).await.unwrap().unwrap();
    assert_eq!(by_name.id, id("p1"));
    assert_eq!(
        by_name.name.as_str(),
        "Alice",
        "the name as it was registered"
    );
    assert_eq!(by_name.password_hash, "hash-1");
    assert_eq!(by_name.room_id, Some(room("start")));
    let by_id = db.find_by_id("p1").await.unwrap().unwrap();
    assert_eq!(by_id.name.as_str(), "Alice");
    assert!(db.find_by_name(&name("Bob")).await.unwrap().is_none());
    assert!(db.find_by_id("p2").await.unwrap().is_none());
}

async fn names_are_unique_whatever_their_case(store: &Store) {
    let db = &store.accounts;
    db.create(&id("p1"), &name("Alice"), "x", &room("start"))
        .await
        .unwrap();
    for taken in ["Alice", "alice", "ALICE"] {
        let again = db
            .create(
                &id(&format!("other-{taken}")),
                &name(taken),
                "y",
                &room("start"),
            )
            .await;
        assert!(
            matches!(again, Err(DbError::UsernameTaken)),
            "{taken}: {again:?}"
        );
    }
    let account = db.find_by_name(&name("alice")).await.unwrap().unwrap();
    assert_eq!(account.password_hash, "x", "the first account is untouched");
    // Another id is no excuse, and another name is fine.
    db.create(&id("p2"), &name("Alicia"), "z", &room("start"))
        .await
        .unwrap();
}

/// More moves than one SQLite statement holds (500), with players moving twice in the
/// batch: the later move wins.
async fn set_rooms_stores_the_last_room_of_each_player(store: &Store) {
    let db = &store.accounts;
    let players: Vec<PlayerId> = (0..600).map(|n| id(&format!("p{n}"))).collect();
    for (n, player) in players.iter().enumerate() {
        db.create(player, &name(&format!("Player{n}")), "x", &room("start"))
            .await
            .unwrap();
    }
    let mut moves: Vec<(PlayerId, RoomId)> =
        players.iter().map(|p| (p.clone(), room("first"))).collect();
    moves.push((players[0].clone(), room("second")));
    moves.push((players[500].clone(), room("second")));
    moves.insert(0, (players[599].clone(), room("zeroth")));
    db.set_rooms(&moves).await.unwrap();
    // Unknown players are skipped, not an error.
    db.set_rooms(&[(id("nobody-here"), room("first"))])
        .await
        .unwrap();
    db.set_rooms(&[]).await.unwrap();

    let reopened = store.reopen().await;
    let room_of = async |player: &PlayerId| {
        reopened
            .find_by_id(player.as_str())
            .await
            .unwrap()
            .and_then(|a| a.room_id)
            .map(|r| r.as_str().to_owned())
    };
    assert_eq!(room_of(&players[0]).await.as_deref(), Some("second"));
    assert_eq!(room_of(&players[1]).await.as_deref(), Some("first"));
    assert_eq!(room_of(&players[500]).await.as_deref(), Some("second"));
    assert_eq!(room_of(&players[599]).await.as_deref(), Some("first"));
}

async fn a_deleted_account_is_gone(store: &Store) {
    let db = &store.accounts;
    db.create(&id("p1"), &name("Alice"), "x", &room("start"))
        .await
        .unwrap();
    db.delete(&id("p1")).await.unwrap();
    assert!(db.find_by_id("p1").await.unwrap().is_none());
    assert!(db.find_by_name(&name("Alice")).await.unwrap().is_none());
    // The name is free again.
    db.create(&id("p2"), &name("alice"), "y", &room("start"))
        .await
        .unwrap();
}

/// The first node's fingerprint stays; a node with another secret sees the difference, and
/// does not replace it.
async fn the_first_secret_recorded_is_the_clusters(store: &Store) {
    let first = store
        .accounts
        .check_secret("aaaaaaaaaaaaaaaa")
        .await
        .unwrap();
    assert!(first.matches());
    assert_eq!(first.cluster, "aaaaaaaaaaaaaaaa");
    let other_node = store.reopen().await;
    let same = other_node.check_secret("aaaaaaaaaaaaaaaa").await.unwrap();
    assert!(same.matches());
    let different = other_node.check_secret("bbbbbbbbbbbbbbbb").await.unwrap();
    assert!(!different.matches());
    assert_eq!(different.ours, "bbbbbbbbbbbbbbbb");
    assert_eq!(different.cluster, "aaaaaaaaaaaaaaaa");
    let again = store
        .accounts
        .check_secret("aaaaaaaaaaaaaaaa")
        .await
        .unwrap();
    assert!(again.matches(), "the mismatched node changed nothing");
}

/// Opening a migrated database again (a restart, or a second node) migrates nothing and
/// keeps every row.
async fn the_schema_opens_again(store: &Store) {
    store
        .accounts
        .create(&id("p1"), &name("Alice"), "x", &room("start"))
        .await
        .unwrap();
    store.accounts.close().await;
    let reopened = store.reopen().await;
    assert!(reopened.find_by_id("p1").await.unwrap().is_some());
    let _ = store.reopen().await;
}

/// With `sslmode=require` the store's connections to PostgreSQL are encrypted (rustls).
#[tokio::test]
async fn postgres_connections_can_use_tls() {
    use sqlx::Connection;
    let Some(server) = common::Postgres::start_tls("postgres_connections_can_use_tls") else {
        return;
    };
    let url = format!("{}?sslmode=require", server.url);
    let accounts = Accounts::open(&url).await.unwrap();
    accounts
        .create(&id("p1"), &name("Alice"), "x", &room("start"))
        .await
        .unwrap();
    assert!(accounts.find_by_id("p1").await.unwrap().is_some());
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(encrypted);
}

/// Databases made before the migrations moved to `migrations/sqlite` still open: sqlx
/// refuses a migration whose checksum (SHA-384 of its text) changed.
#[tokio::test]
async fn the_first_sqlite_migration_is_unchanged() {
    use sqlx::Connection;
    let store = Store::sqlite().await;
    let mut db = sqlx::SqliteConnection::connect(&store.url).await.unwrap();
    let checksum: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 20261123000001")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let hex: String = checksum.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, FIRST_MIGRATION_SHA384);
}

const FIRST_MIGRATION_SHA384: &str = "2882969fee3a745385e16fba57f658a9174fe5744aa481fec9610f9cf29bd57bfa77112dc54980dfec65e0f09df05bbd";
