//! Accounts, each player's current room and the facts all nodes share, in SQLite (one
//! machine, the default) or PostgreSQL (nodes on several machines): [`Accounts`] is the one
//! interface, [`sqlite`] and [`postgres`] the two implementations, each with its own
//! migrations (`migrations/sqlite`, `migrations/postgres`). [`RoomWriter`] batches moves.

mod postgres;
mod sqlite;

use natsmud_protocol::{PlayerId, PlayerName, RoomId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("that username is taken")]
    UsernameTaken,
    #[error("unsupported database URL (use sqlite://… or postgres://…): {0}")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: PlayerId,
    pub name: PlayerName,
    pub password_hash: String,
    /// `None` for a new account, or when the stored id is no longer a valid room id.
    pub room_id: Option<RoomId>,
}

/// An account as stored, before its fields are checked.
#[derive(sqlx::FromRow)]
struct AccountRow {
    id: String,
    username: String,
    password_hash: String,
    room_id: Option<String>,
}

impl TryFrom<AccountRow> for Account {
    type Error = DbError;

    fn try_from(row: AccountRow) -> Result<Self, DbError> {
        let corrupt = |what: &str, e: String| {
            DbError::Sqlx(sqlx::Error::Decode(
                format!("stored {what} is invalid: {e}").into(),
            ))
        };
        Ok(Account {
            id: PlayerId::parse(&row.id).map_err(|e| corrupt("player id", e.to_string()))?,
            name: PlayerName::parse(&row.username)
                .map_err(|e| corrupt("username", e.to_string()))?,
            password_hash: row.password_hash,
            room_id: row.room_id.and_then(|r| RoomId::parse(&r).ok()),
        })
    }
}

fn unique_violation_is_taken(error: sqlx::Error) -> DbError {
    match error {
        sqlx::Error::Database(e) if e.is_unique_violation() => DbError::UsernameTaken,
        e => e.into(),
    }
}

/// The last room of each player in `moves`: a batched UPDATE … FROM takes an arbitrary row
/// when a player appears twice.
fn last_room_of_each(moves: &[(PlayerId, RoomId)]) -> Vec<(&str, &str)> {
    let mut latest: HashMap<&str, &str> = HashMap::with_capacity(moves.len());
    for (player, room) in moves {
        latest.insert(player.as_str(), room.as_str());
    }
    latest.into_iter().collect()
}

/// The key of the JWT secret's fingerprint in `cluster_settings`.
const SECRET_FINGERPRINT: &str = "jwt_secret_fingerprint";

/// This node's JWT secret against the one the world's first node recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCheck {
    /// This node's fingerprint.
    pub ours: String,
    /// The fingerprint stored in the database (ours, when this node was the first).
    pub cluster: String,
}

impl SecretCheck {
    pub fn matches(&self) -> bool {
        self.ours == self.cluster
    }
}

/// The account store: the same operations on either database.
#[derive(Clone)]
pub enum Accounts {
    Sqlite(sqlite::SqliteAccounts),
    Postgres(postgres::PgAccounts),
}

impl Accounts {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`), creating a SQLite file
    /// if needed, and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(sqlite::SqliteAccounts::open(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(postgres::PgAccounts::open(url).await?))
        } else {
            Err(DbError::UnsupportedUrl(redact_url(url)))
        }
    }

    /// Which database this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    pub async fn create(
        &self,
        id: &PlayerId,
        name: &PlayerName,
        password_hash: &str,
        room: &RoomId,
    ) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => db.create(id, name, password_hash, room).await,
            Self::Postgres(db) => db.create(id, name, password_hash, room).await,
        }
    }

    pub async fn find_by_name(&self, name: &PlayerName) -> Result<Option<Account>, DbError> {
        let row = match self {
            Self::Sqlite(db) => db.find_by_name(name).await?,
            Self::Postgres(db) => db.find_by_name(name).await?,
        };
        row.map(Account::try_from).transpose()
    }

    pub async fn find_by_id(&self, id: &str) -> Result<Option<Account>, DbError> {
        let row = match self {
            Self::Sqlite(db) => db.find_by_id(id).await?,
            Self::Postgres(db) => db.find_by_id(id).await?,
        };
        row.map(Account::try_from).transpose()
    }

    pub async fn delete(&self, id: &PlayerId) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => db.delete(id).await,
            Self::Postgres(db) => db.delete(id).await,
        }
    }

    /// Stores many players' rooms in one transaction (the last room per player wins).
    pub async fn set_rooms(&self, moves: &[(PlayerId, RoomId)]) -> Result<(), DbError> {
        let latest = last_room_of_each(moves);
        match self {
            Self::Sqlite(db) => db.set_rooms(&latest).await,
            Self::Postgres(db) => db.set_rooms(&latest).await,
        }
    }

    /// Records `fingerprint` as the world's JWT secret's unless one is recorded already
    /// (the first node to start decides), and returns both to compare.
    pub async fn check_secret(&self, fingerprint: &str) -> Result<SecretCheck, DbError> {
        let cluster = match self {
            Self::Sqlite(db) => {
                db.setting_or_insert(SECRET_FINGERPRINT, fingerprint)
                    .await?
            }
            Self::Postgres(db) => {
                db.setting_or_insert(SECRET_FINGERPRINT, fingerprint)
                    .await?
            }
        };
        Ok(SecretCheck {
            ours: fingerprint.to_owned(),
            cluster,
        })
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(db) => db.close().await,
            Self::Postgres(db) => db.close().await,
        }
    }
}

/// `url` with any password replaced, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

type RoomWrite = (PlayerId, RoomId, oneshot::Sender<Result<(), String>>);

/// Stores players' rooms with group commit: every move waiting when a transaction starts
/// goes into it. Each mover still waits for its own room to be stored before it is
/// answered (so an answered move survives a crash), but a thousand moves a second cost a
/// few transactions, not a thousand.
#[derive(Clone)]
pub struct RoomWriter {
    tx: mpsc::Sender<RoomWrite>,
    stop: CancellationToken,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Most moves stored in one transaction.
const GROUP_COMMIT_MAX: usize = 1024;

impl RoomWriter {
    pub fn spawn(accounts: Accounts) -> Self {
        let (tx, mut rx) = mpsc::channel::<RoomWrite>(GROUP_COMMIT_MAX * 4);
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
            loop {
                let first = tokio::select! {
                    biased;
                    first = rx.recv() => match first {
                        Some(first) => first,
                        None => return,
                    },
                    _ = stopping.cancelled() => {
                        // Whatever was sent before `close` is stored; later moves are
                        // refused (their sender sees the writer gone).
                        rx.close();
                        match rx.recv().await {
                            Some(first) => first,
                            None => return,
                        }
                    }
                };
                batch.push(first);
                while batch.len() < GROUP_COMMIT_MAX {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let moves: Vec<(PlayerId, RoomId)> = batch
                    .iter()
                    .map(|(p, r, _)| (p.clone(), r.clone()))
                    .collect();
                let result = accounts.set_rooms(&moves).await.map_err(|e| e.to_string());
                for (_, _, done) in batch.drain(..) {
                    let _ = done.send(result.clone());
                }
            }
        });
        Self {
            tx,
            stop,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Returns once `player`'s room is stored.
    pub async fn store(&self, player: &PlayerId, room: &RoomId) -> Result<(), String> {
        let (done, stored) = oneshot::channel();
        self.tx
            .send((player.clone(), room.clone(), done))
            .await
            .map_err(|_| "the room writer has stopped".to_owned())?;
        stored
            .await
            .map_err(|_| "the room writer has stopped".to_owned())?
    }

    /// Stores every room sent so far, then stops; later `store`s fail.
    pub async fn close(&self) {
        self.stop.cancel();
        let task = self.task.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More moves than one statement holds, with players moving twice in the batch.
    /// Shutdown closes the writer before the database: every move sent before that is
    /// stored, and a move after it is refused rather than lost.
    #[tokio::test]
    async fn closing_the_writer_stores_what_was_sent() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("rooms.db").display());
        let accounts = Accounts::open(&url).await?;
        let start = RoomId::parse("start")?;
        let mut players = Vec::new();
        for n in 0..200 {
            let id = PlayerId::parse(&format!("p{n}"))?;
            accounts
                .create(&id, &PlayerName::parse(&format!("Player{n}"))?, "x", &start)
                .await?;
            players.push(id);
        }
        let writer = RoomWriter::spawn(accounts.clone());
        let moved = RoomId::parse("moved")?;
        let mut answers = Vec::new();
        for player in &players {
            let (done, stored) = oneshot::channel();
            writer
                .tx
                .send((player.clone(), moved.clone(), done))
                .await?;
            answers.push(stored);
        }
        writer.close().await;
        accounts.close().await;
        for answer in answers {
            assert_eq!(
                answer.await?,
                Ok(()),
                "every move sent before close is stored"
            );
        }
        assert!(writer.store(&players[0], &start).await.is_err());
        let reopened = Accounts::open(&url).await?;
        for player in &players {
            let room = reopened
                .find_by_id(player.as_str())
                .await?
                .and_then(|a| a.room_id);
            assert_eq!(room.as_ref(), Some(&moved));
        }
        Ok(())
    }

    #[test]
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(
            redact_url("postgres://natsmud:hunter2@db.example:5432/mud?sslmode=require"),
            "postgres://natsmud:***@db.example:5432/mud?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://natsmud@db/mud"),
            "postgres://natsmud@db/mud"
        );
        assert_eq!(
            redact_url("sqlite://data/natsmud.db"),
            "sqlite://data/natsmud.db"
        );
    }
}
