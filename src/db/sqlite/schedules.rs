//! Stored cron schedules and their firings. On SQLite.

use super::*;

#[async_trait]
impl Schedules for SqliteRecord {
    async fn add_schedule(&self, s: &Schedule) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO schedules (name, cron, timezone, file, queue, options, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.file)
        .bind(&s.queue)
        .bind(serde_json::to_string(&s.options)?)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, DbError> {
        let rows = sqlx::query(&format!("SELECT {SCHEDULE} FROM schedules ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(schedule).collect()
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_fired(&self, name: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE schedules SET last_fired_for = max(coalesce(last_fired_for, 0), ?2) WHERE name = ?1",
        )
        .bind(name)
        .bind(at.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
