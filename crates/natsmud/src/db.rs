//! Accounts and each player's current room, in SQLite.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use natsmud_protocol::{PlayerId, PlayerName, RoomId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    ///
    /// One statement per [`ROOMS_PER_STATEMENT`] moves, not one per move: each statement
    /// is a round trip to SQLite's thread and back through the runtime's queue, which under
    /// full load (every wake-up queued behind a fan-out) costs far more than the update.
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a node sharing the file with
    /// others waits for it in the busy handler instead of failing half-way.
    pub async fn set_rooms(&self, moves: &[(PlayerId, RoomId)]) -> Result<(), DbError> {
        // UPDATE … FROM takes an arbitrary row when a player appears twice: keep the last.
        let mut latest: HashMap<&str, &str> = HashMap::with_capacity(moves.len());
        for (player, room) in moves {
            latest.insert(player.as_str(), room.as_str());
        }
        let latest: Vec<(&str, &str)> = latest.into_iter().collect();
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

/// Moves per UPDATE statement: two bound values each, well under SQLite's 32,766.
const ROOMS_PER_STATEMENT: usize = 500;

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
    use natsmud_protocol::ids::IdError;

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

    #[tokio::test]
    async fn set_rooms_stores_the_last_room_of_each_player()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("rooms.db").display());
        let accounts = Accounts::open(&url).await?;
        let start = RoomId::parse("start")?;
        let mut players = Vec::new();
        for n in 0..(ROOMS_PER_STATEMENT + 100) {
            let id = PlayerId::parse(&format!("p{n}"))?;
            accounts
                .create(&id, &PlayerName::parse(&format!("Player{n}"))?, "x", &start)
                .await?;
            players.push(id);
        }
        let mut moves: Vec<(PlayerId, RoomId)> = players
            .iter()
            .map(|p| Ok((p.clone(), RoomId::parse("first")?)))
            .collect::<Result<_, IdError>>()?;
        moves.push((players[0].clone(), RoomId::parse("second")?));
        moves.push((
            players[ROOMS_PER_STATEMENT].clone(),
            RoomId::parse("second")?,
        ));
        accounts.set_rooms(&moves).await?;

        let room_of = async |id: &PlayerId| -> Result<Option<String>, DbError> {
            Ok(accounts
                .find_by_id(id.as_str())
                .await?
                .and_then(|a| a.room_id)
                .map(|r| r.as_str().to_owned()))
        };
        assert_eq!(room_of(&players[0]).await?.as_deref(), Some("second"));
        assert_eq!(room_of(&players[1]).await?.as_deref(), Some("first"));
        assert_eq!(
            room_of(&players[ROOMS_PER_STATEMENT]).await?.as_deref(),
            Some("second")
        );
        assert_eq!(
            room_of(&players[ROOMS_PER_STATEMENT + 99])
                .await?
                .as_deref(),
            Some("first")
        );
        Ok(())
    }
}
