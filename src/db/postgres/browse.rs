//! The HTTP API's paged reads and its tokens. On Postgres.

use super::*;
use crate::db::rows::{
    Columns, Dialect, JOB_DETAIL, Param, TOKEN_INFO, attempt_history, attempt_row, batch_info,
    batch_page_sql, browse_impl, job_detail, job_page_sql, may_have_ended_attempts, token_info,
    worker_row,
};

const DIALECT: Dialect = Dialect {
    schema: "renderq.",
    prompt: "spec->>'prompt'",
    position: "strpos",
    models: "array_to_string(models, ',')",
    param: |n| format!("${n}"),
};

fn job_columns() -> String {
    JOB_ROW
        .replace("{prompt}", "spec->>'prompt'")
        .replace("{metadata}", "spec->'metadata'")
}

fn bound(
    sql: &str,
    params: Vec<Param>,
) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    params.into_iter().fold(sqlx::query(sql), |q, p| match p {
        Param::Text(t) => q.bind(t),
        Param::Id(id) => q.bind(id),
        Param::Int(n) => q.bind(n),
        Param::Time(t) => q.bind(t),
    })
}

browse_impl!(PgRecord);

#[async_trait]
impl Tokens for PgRecord {
    async fn create_token(
        &self,
        id: &str,
        name: &str,
        scope: Scope,
        secret_hash: &[u8],
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO renderq.api_tokens (id, name, scope, secret_hash) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(name)
        .bind(scope.as_str())
        .bind(secret_hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn active_token(
        &self,
        id: &str,
    ) -> Result<Option<(Scope, Vec<u8>, Option<DateTime<Utc>>)>, DbError> {
        let row = sqlx::query(
            "SELECT scope, secret_hash, last_used_at FROM renderq.api_tokens
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let scope: String = r.try_get(0)?;
            Ok((
                scope.parse().map_err(DbError::Invalid)?,
                r.try_get(1)?,
                r.try_get(2)?,
            ))
        })
        .transpose()
    }

    async fn touch_token(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE renderq.api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn any_active_token(&self) -> Result<bool, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM renderq.api_tokens WHERE revoked_at IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>, DbError> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_INFO} FROM renderq.api_tokens ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_info).collect()
    }

    async fn revoke_token(&self, id_or_name: &str) -> Result<u64, DbError> {
        Ok(sqlx::query(
            "UPDATE renderq.api_tokens SET revoked_at = now()
             WHERE (id = $1 OR name = $1) AND revoked_at IS NULL",
        )
        .bind(id_or_name)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
