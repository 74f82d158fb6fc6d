//! Accounts and each player's current room, in SQLite.

use std::str::FromStr;
use std::time::Duration;

use natsmud_protocol::{PlayerId, PlayerName, RoomId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("that username is taken")]
    UsernameTaken,
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

#[derive(Clone)]
pub struct Accounts {
    pool: SqlitePool,
}

impl Accounts {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a crash of the process (not of the OS) without losing a
            // committed row, at a fraction of FULL's fsync cost.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn create(
        &self,
        id: &PlayerId,
        name: &PlayerName,
        password_hash: &str,
        room: &RoomId,
    ) -> Result<(), DbError> {
        let result = sqlx::query(
            "INSERT INTO players (id, username, username_folded, password_hash, room_id) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(name.as_str())
        .bind(name.folded())
        .bind(password_hash)
        .bind(room.as_str())
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(DbError::UsernameTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn find_by_name(&self, name: &PlayerName) -> Result<Option<Account>, DbError> {
        let row = sqlx::query(
            "SELECT id, username, password_hash, room_id FROM players WHERE username_folded = ?",
        )
        .bind(name.folded())
        .fetch_optional(&self.pool)
        .await?;
        row.map(account_from_row).transpose()
    }

    pub async fn find_by_id(&self, id: &str) -> Result<Option<Account>, DbError> {
        let row =
            sqlx::query("SELECT id, username, password_hash, room_id FROM players WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(account_from_row).transpose()
    }

    pub async fn set_room(&self, id: &PlayerId, room: &RoomId) -> Result<(), DbError> {
        sqlx::query("UPDATE players SET room_id = ? WHERE id = ?")
            .bind(room.as_str())
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn delete(&self, id: &PlayerId) -> Result<(), DbError> {
        sqlx::query("DELETE FROM players WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn account_from_row(row: sqlx::sqlite::SqliteRow) -> Result<Account, DbError> {
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("username")?;
    let corrupt = |what: &str, e: String| {
        DbError::Sqlx(sqlx::Error::Decode(
            format!("stored {what} is invalid: {e}").into(),
        ))
    };
    Ok(Account {
        id: PlayerId::parse(&id).map_err(|e| corrupt("player id", e.to_string()))?,
        name: PlayerName::parse(&name).map_err(|e| corrupt("username", e.to_string()))?,
        password_hash: row.try_get("password_hash")?,
        room_id: row
            .try_get::<Option<String>, _>("room_id")?
            .and_then(|r| RoomId::parse(&r).ok()),
    })
}

impl Accounts {
    /// Stores many players' rooms in one transaction (the last room per player wins).
    pub async fn set_rooms(&self, moves: &[(PlayerId, RoomId)]) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for (player, room) in moves {
            sqlx::query("UPDATE players SET room_id = ? WHERE id = ?")
                .bind(room.as_str())
                .bind(player.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
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
}

/// Most moves stored in one transaction.
const GROUP_COMMIT_MAX: usize = 1024;

impl RoomWriter {
    pub fn spawn(accounts: Accounts) -> Self {
        let (tx, mut rx) = mpsc::channel::<RoomWrite>(GROUP_COMMIT_MAX * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(GROUP_COMMIT_MAX);
            while let Some(first) = rx.recv().await {
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
        Self { tx }
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
}
