//! Stored cron schedules and their firings. On Postgres.

use super::*;

#[async_trait]
impl Schedules for PgRecord {
    async fn add_schedule(&self, s: &Schedule) -> Result<bool, DbError> {
        let done = sqlx::query(
            "INSERT INTO renderq.schedules (name, cron, timezone, file, queue, options)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.file)
        .bind(&s.queue)
        .bind(serde_json::to_value(&s.options)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE} FROM renderq.schedules ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule).collect()
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM renderq.schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_fired(&self, name: &str, at: DateTime<Utc>) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE renderq.schedules SET last_fired_for = greatest(last_fired_for, $2) WHERE name = $1",
        )
        .bind(name)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
