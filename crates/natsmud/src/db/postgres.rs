//! The store in PostgreSQL: nodes on several machines share accounts and rooms.

use std::str::FromStr;
use std::time::Duration;

use natsmud_protocol::{PlayerId, PlayerName, RoomId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::{AccountRow, DbError, unique_violation_is_taken};

#[derive(Clone)]
pub struct PgAccounts {
    pool: PgPool,
}

impl PgAccounts {
    pub async fn open(url: &str) -> Result<Self, DbError> {
        let options = PgConnectOptions::from_str(url)?;
        // One connection first: a pool that cannot connect says only that it timed out, not
        // why (refused, bad password, no such database).
        PgConnection::connect_with(&options).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // A login waits at most this long for a connection rather than hanging while
            // the database is away.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        // Nodes starting together migrate one at a time: sqlx holds an advisory lock.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
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
            "INSERT INTO players (id, username, username_folded, password_hash, room_id) VALUES ($1, $2, $3, $4, $5)",
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
            "SELECT id, username, password_hash, room_id FROM players WHERE username_folded = $1",
        )
        .bind(name.folded())
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn find_by_id(&self, id: &str) -> Result<Option<AccountRow>, DbError> {
        Ok(
            sqlx::query_as(
                "SELECT id, username, password_hash, room_id FROM players WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    pub async fn delete(&self, id: &PlayerId) -> Result<(), DbError> {
        sqlx::query("DELETE FROM players WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The whole batch in one statement of two array parameters, however many moves: one
    /// round trip, one prepared statement, no limit on bound values.
    pub async fn set_rooms(&self, latest: &[(&str, &str)]) -> Result<(), DbError> {
        let (players, rooms): (Vec<&str>, Vec<&str>) = latest.iter().copied().unzip();
        sqlx::query(
            "UPDATE players SET room_id = moves.room \
             FROM unnest($1::text[], $2::text[]) AS moves(id, room) \
             WHERE players.id = moves.id",
        )
        .bind(players)
        .bind(rooms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The setting `key`, stored as `value` first when it is not set yet.
    pub async fn setting_or_insert(&self, key: &str, value: &str) -> Result<String, DbError> {
        sqlx::query(
            "INSERT INTO cluster_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM cluster_settings WHERE key = $1")
                .bind(key)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
