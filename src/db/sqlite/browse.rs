//! The HTTP API's paged reads and its tokens. On SQLite.

use super::*;
use crate::db::rows::{
    Columns, Dialect, JOB_DETAIL, Param, TOKEN_INFO, attempt_history, attempt_row, batch_info,
    batch_page_sql, browse_impl, job_detail, job_page_sql, may_have_ended_attempts, token_info,
    worker_row,
};

const DIALECT: Dialect = Dialect {
    schema: "",
    prompt: "json_extract(spec, '$.prompt')",
    position: "instr",
    models: "models",
    param: |n| format!("?{n}"),
};

fn job_columns() -> String {
    JOB_ROW
        .replace("{prompt}", "json_extract(spec, '$.prompt')")
        .replace("{metadata}", "json_extract(spec, '$.metadata')")
}

fn bound(
    sql: &str,
    params: Vec<Param>,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    params.into_iter().fold(sqlx::query(sql), |q, p| match p {
        Param::Text(t) => q.bind(t),
        Param::Id(id) => q.bind(id.to_string()),
        Param::Int(n) => q.bind(n),
        Param::Time(t) => q.bind(t.timestamp_millis()),
    })
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

browse_impl!(SqliteRecord);

#[async_trait]
impl Tokens for SqliteRecord {
    async fn create_token(
        &self,
        id: &str,
        name: &str,
        scope: Scope,
        secret_hash: &[u8],
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, scope, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(scope.as_str())
        .bind(secret_hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn active_token(
        &self,
        id: &str,
    ) -> Result<Option<(Scope, Vec<u8>, Option<DateTime<Utc>>)>, DbError> {
        let row = sqlx::query(
            "SELECT scope, secret_hash, last_used_at FROM api_tokens
             WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok((
                r.text(0)?.parse().map_err(DbError::Invalid)?,
                r.try_get(1)?,
                r.opt_time(2)?,
            ))
        })
        .transpose()
    }

    async fn touch_token(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE api_tokens SET last_used_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn any_active_token(&self) -> Result<bool, DbError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_tokens WHERE revoked_at IS NULL)")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_INFO} FROM api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_info).collect()
    }

    async fn revoke_token(&self, id_or_name: &str) -> Result<u64, DbError> {
        Ok(sqlx::query(
            "UPDATE api_tokens SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id_or_name)
        .bind(id_or_name)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
