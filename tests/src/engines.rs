//! The two engines a `.slt` file runs on. Results are rendered the same way
//! for both, so "distributed equals single node" is a plain string compare.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::Array;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast;
use ignis_core::job::{JobConfig, JobSpec, OutputSpec, TableSpec};
use ignis_driver::{Driver, DriverConfig, JobResult};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};

/// An error as the test file sees it (`statement error <regex>`).
#[derive(Debug)]
pub struct EngineError(pub String);

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EngineError {}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError(e.to_string())
}

/// True when `sql` is one query (rows come back), false for DDL and the like.
fn is_query(sql: &str) -> bool {
    match DFParser::parse_sql(sql) {
        Ok(stmts) => {
            stmts.len() == 1 && matches!(&stmts[0], Statement::Statement(s) if matches!(**s, ast::Statement::Query(_)))
        }
        Err(_) => true,
    }
}

/// Single-node DataFusion with its default settings: the oracle.
pub struct SingleNode {
    ctx: SessionContext,
}

impl SingleNode {
    pub async fn new(tables: &BTreeMap<String, TableSpec>) -> anyhow::Result<Self> {
        let ctx = SessionContext::new();
        for (name, t) in tables {
            ctx.register_parquet(name, &t.location, ParquetReadOptions::default()).await?;
        }
        Ok(Self { ctx })
    }
}

#[async_trait]
impl AsyncDB for SingleNode {
    type Error = EngineError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, EngineError> {
        let df = self.ctx.sql(sql).await.map_err(err)?;
        let query = is_query(sql);
        let batches = df.collect().await.map_err(err)?;
        if query { Ok(rows(&batches)) } else { Ok(DBOutput::StatementComplete(0)) }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "single-node"
    }
}

/// Ignis in local mode: each query is a job whose stages exchange data through
/// shuffle objects on disk. Statements (views, tables from VALUES) are checked
/// on a scratch session and replayed before every query of the file.
pub struct Distributed {
    driver: Driver,
    tables: BTreeMap<String, TableSpec>,
    shuffle_partitions: usize,
    setup: Vec<String>,
    scratch: SessionContext,
}

impl Distributed {
    pub async fn new(
        tables: &BTreeMap<String, TableSpec>,
        shuffle_root: &Path,
        shuffle_partitions: usize,
    ) -> anyhow::Result<Self> {
        let shuffle_root = url::Url::from_directory_path(shuffle_root)
            .map_err(|()| anyhow::anyhow!("shuffle root must be absolute"))?
            .to_string();
        let driver = Driver::local(2, DriverConfig { shuffle_root, ..DriverConfig::default() });
        let scratch = SingleNode::new(tables).await?.ctx;
        Ok(Self { driver, tables: tables.clone(), shuffle_partitions, setup: vec![], scratch })
    }

    pub fn job(&self, sql: &str) -> JobSpec {
        let mut text = self.setup.join(";\n");
        if !text.is_empty() {
            text.push_str(";\n");
        }
        text.push_str(sql);
        JobSpec {
            udfs: Vec::new(),
            name: None,
            tables: self.tables.clone(),
            sql: Some(text),
            steps: None,
            output: OutputSpec::Collect,
            config: JobConfig { shuffle_partitions: Some(self.shuffle_partitions), ..JobConfig::default() },
            stream: None,
        }
    }

    pub fn driver(&self) -> &Driver {
        &self.driver
    }
}

#[async_trait]
impl AsyncDB for Distributed {
    type Error = EngineError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, EngineError> {
        if !is_query(sql) {
            self.scratch.sql(sql).await.map_err(err)?.collect().await.map_err(err)?;
            self.setup.push(sql.trim().trim_end_matches(';').to_string());
            return Ok(DBOutput::StatementComplete(0));
        }
        let outcome = self.driver.run(&self.job(sql), &|_| {}).await.map_err(err)?;
        match outcome.result {
            JobResult::Rows { batches, .. } => Ok(rows(&batches)),
            other => Err(EngineError(format!("expected rows, got {other:?}"))),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "ignis-distributed"
    }
}

/// Render batches as sqllogictest rows: NULL for nulls, `(empty)` for empty
/// strings, floats rounded to 6 decimals (sums may add in another order).
pub fn rows(batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let Some(first) = batches.first() else {
        return DBOutput::Rows { types: vec![], rows: vec![] };
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            t if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
                DefaultColumnType::FloatingPoint
            }
            _ => DefaultColumnType::Text,
        })
        .collect();
    let options = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        for row in 0..batch.num_rows() {
            let cells = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(col, f)| cell(col.as_ref(), row, &f.value(row).to_string()))
                .collect();
            out.push(cells);
        }
    }
    DBOutput::Rows { types, rows: out }
}

fn cell(col: &dyn Array, row: usize, text: &str) -> String {
    if col.is_null(row) {
        return "NULL".into();
    }
    if col.data_type().is_floating()
        && let Ok(v) = text.parse::<f64>()
    {
        let rounded = (v * 1e6).round() / 1e6;
        return if rounded == 0.0 { "0".into() } else { rounded.to_string() };
    }
    if text.is_empty() { "(empty)".into() } else { text.to_string() }
}
