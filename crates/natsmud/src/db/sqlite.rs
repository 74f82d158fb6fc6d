//! The store in a SQLite file: one machine (several nodes there may share the file).

use std::str::FromStr;
use std::time::Duration;

use natsmud_protocol::{PlayerId, PlayerName, RoomId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::{AccountRow, DbError, unique_violation_is_taken};

/// Moves per UPDATE statement: two bound values each, well under SQLite's 32,766.
const ROOMS_PER_STATEMENT: usize = 500;

#[derive(Clone)]
pub struct SqliteAccounts {
    pool: SqlitePool,
}

impl SqliteAccounts {
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
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn create(
        &self,
        id: &PlayerId,
        name: &PlayerName,
        password_hash: &str,
        room: &RoomId,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO players (id, username, username_folded, password_hash, room_id) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(name.as_str())
        .bind(name.folded())
        .bind(password_hash)
        .bind(room.as_str())
        .execute(&self.pool)
        .await
        .map_err(unique_violation_is_taken)?;
        Ok(())
    }

    pub(super) async fn find_by_name(
        &self,
        name: &PlayerName,
    ) -> Result<Option<AccountRow>, DbError> {
        Ok(sqlx::query_as(
            "SELECT id, username, password_hash, room_id FROM players WHERE username_folded = ?",
        )
        .bind(name.folded())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn find_by_id(&self, id: &str) -> Result<Option<AccountRow>, DbError> {
        Ok(
            sqlx::query_as("SELECT id, username, password_hash, room_id FROM players WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn delete(&self, id: &PlayerId) -> Result<(), DbError> {
        sqlx::query("DELETE FROM players WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One statement per [`ROOMS_PER_STATEMENT`] moves, not one per move: each statement
    /// is a round trip to SQLite's thread and back through the runtime's queue, which under
    /// full load (every wake-up queued behind a fan-out) costs far more than the update.
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a node sharing the file with
    /// others waits for it in the busy handler instead of failing half-way.
    pub async fn set_rooms(&self, latest: &[(&str, &str)]) -> Result<(), DbError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in latest.chunks(ROOMS_PER_STATEMENT) {
            let mut update: QueryBuilder<'_, Sqlite> =
                QueryBuilder::new("UPDATE players SET room_id = moves.column2 FROM (");
            update.push_values(chunk, |mut row, (player, room)| {
                row.push_bind(*player).push_bind(*room);
            });
            update.push(") AS moves WHERE players.id = moves.column1");
            // Every batch size is a different statement: not worth a slot in the cache.
            update.build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The setting `key`, stored as `value` first when it is not set yet.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, DbError> {
        sqlx::query(
            "INSERT INTO cluster_settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM cluster_settings WHERE key = ?")
                .bind(key)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
