//! From a job specification to a DataFusion physical plan: register the tables,
//! turn `sql` or `steps` into a DataFrame, and plan it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::config::ConfigOptions;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use futures::{StreamExt, TryStreamExt};
use ignis_core::csv::{CsvScanOptions, CsvTable};
use ignis_core::error::{IgnisError, Result};
use ignis_core::job::{Format, JobSpec, TableSpec};
use ignis_core::session::session_context;
use ignis_executor::udf::{self, Component};

use super::errors::{describe, plan_error, user_error};
use super::map_batches::{self, Transforms};
use super::steps;

/// A job planned by DataFusion, before it is cut into stages.
pub struct PlannedJob {
    pub ctx: SessionContext,
    pub physical: Arc<dyn ExecutionPlan>,
}

/// Plan a job; `udfs` are the components whose functions it may call.
pub async fn plan_job(job: &JobSpec, udfs: &[Arc<Component>]) -> Result<PlannedJob> {
    let (ctx, df) = plan_dataframe(job, udfs).await?;
    let place = if job.sql.is_some() { "sql" } else { "steps" };
    let physical = df.create_physical_plan().await.map_err(|e| plan_error(place, e))?;
    Ok(PlannedJob { ctx, physical })
}

/// A job's query as a DataFrame (its logical plan), with the session that planned it.
pub async fn plan_dataframe(job: &JobSpec, udfs: &[Arc<Component>]) -> Result<(SessionContext, DataFrame)> {
    let mut functions = Vec::new();
    for component in udfs {
        functions.push(udf::functions(component)?);
    }
    let transforms = Arc::new(Transforms::new(functions.iter_mut().flat_map(|f| f.transforms.drain(..)).collect()));
    let ctx = session_context(job.config.shuffle_partitions(), job.config.batch_size(), &job.config.options);
    let ctx = map_batches::with_planner(ctx, transforms.clone());
    for f in functions {
        f.scalars.into_iter().for_each(|f| ctx.register_udf(f));
        f.aggregates.into_iter().for_each(|f| ctx.register_udaf(f));
    }
    let df = match (&job.sql, &job.steps) {
        (Some(sql), _) => {
            let statements = parse_sql(sql, ctx.state().config().options())?;
            let used = used_tables(&ctx, &statements);
            register_tables(
                &ctx,
                job.tables.iter().filter(|(name, _)| {
                    // The name as SQL sees it (`Orders` is `orders` unless quoted),
                    // parsed as `register_parquet` parses it.
                    used.as_ref().is_none_or(|u| u.contains(TableReference::from(name.as_str()).table()))
                }),
            )
            .await?;
            plan_sql(&ctx, statements).await?
        }
        (None, Some(steps)) => {
            register_tables(&ctx, job.tables.iter()).await?;
            steps::build(&ctx, steps, &transforms).await?
        }
        (None, None) => return Err(IgnisError::Job("missing `sql` or `steps`".into())),
    };
    Ok((ctx, df))
}

/// SQL text as statements, in the dialect and with the parser options of
/// `options`; a syntax error says where.
pub(crate) fn parse_sql(sql: &str, options: &ConfigOptions) -> Result<VecDeque<Statement>> {
    let dialect = options.sql_parser.dialect;
    let dialect = dialect_from_str(dialect).ok_or_else(|| {
        IgnisError::Job(format!("config.options: the SQL dialect '{dialect}' has no parser in this build"))
    })?;
    let parser = DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(options.sql_parser.recursion_limit.get())
        .build();
    let statements = parser.and_then(|mut p| p.parse_statements()).map_err(|e| {
        let mut err = plan_error("sql", e);
        if let IgnisError::Plan(msg) = &mut err
            && msg.ends_with("found: EOF\")")
        {
            msg.push_str(&format!(" at the end of the SQL text ({})", end_position(sql)));
        }
        err
    })?;
    super::statements::check(&statements)?;
    Ok(statements)
}

/// The job's table names the statements read, so a job registers (lists,
/// reads footers of, infers schemas of) only those; `None` when DataFusion
/// cannot tell, and then every table is registered.
fn used_tables(ctx: &SessionContext, statements: &VecDeque<Statement>) -> Option<HashSet<String>> {
    let state = ctx.state();
    let mut used = HashSet::new();
    for statement in statements {
        for reference in state.resolve_table_references(statement).ok()? {
            used.insert(reference.table().to_owned());
        }
    }
    Some(used)
}

/// Plan SQL statements: every statement but the last must be DDL (views,
/// external tables); the last is the query.
pub(crate) async fn plan_sql(ctx: &SessionContext, mut statements: VecDeque<Statement>) -> Result<DataFrame> {
    let state = ctx.state();
    let Some(last) = statements.pop_back() else {
        return Err(IgnisError::Plan("sql: no statement found".into()));
    };
    for (i, stmt) in statements.into_iter().enumerate() {
        let plan =
            state.statement_to_plan(stmt).await.map_err(|e| plan_error(&format!("sql statement {}", i + 1), e))?;
        if !matches!(plan, LogicalPlan::Ddl(_)) {
            return Err(IgnisError::Plan(format!(
                "sql statement {}: only the last statement may be a query; earlier ones must define views (CREATE VIEW ...)",
                i + 1
            )));
        }
        ctx.execute_logical_plan(plan).await.map_err(|e| plan_error("sql", e))?;
    }
    let plan = state.statement_to_plan(last).await.map_err(|e| plan_error("sql", e))?;
    match &plan {
        LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_) => {
            Err(IgnisError::Plan("sql: the last statement must be a query; use [output.write] to write results".into()))
        }
        _ => Ok(DataFrame::new(state, plan)),
    }
}

/// "line L, column C" of the end of `text`, counted as sqlparser counts (from 1).
fn end_position(text: &str) -> String {
    let line = text.lines().count().max(1);
    let column = text.lines().last().map(|l| l.chars().count()).unwrap_or(0) + 1;
    let line = if text.ends_with('\n') { line + 1 } else { line };
    let column = if text.ends_with('\n') { 1 } else { column };
    format!("Line: {line}, Column: {column}")
}

pub(crate) async fn register_tables(
    ctx: &SessionContext,
    tables: impl Iterator<Item = (&String, &TableSpec)>,
) -> Result<()> {
    for (name, table) in tables {
        register_table(ctx, name, table).await.map_err(|e| match e {
            IgnisError::DataFusion(inner) => {
                user_error(&format!("table '{name}' at {}", table.location), inner, IgnisError::Input)
            }
            other => other,
        })?;
    }
    Ok(())
}

async fn register_table(ctx: &SessionContext, name: &str, table: &TableSpec) -> Result<()> {
    let opts = &table.options;
    if table.format == Format::Kafka {
        return Err(IgnisError::Job(format!(
            "tables.{name}: a Kafka topic is read by a streaming job only (add a [stream] section)"
        )));
    }
    let extension = opts.file_extension.clone().unwrap_or_else(|| format!(".{}", table.format.extension()));
    let paths = table_paths(ctx, name, table, &extension).await?;
    let schema = match &opts.schema {
        Some(ddl) => Some(
            parse_schema(ctx, ddl).await.map_err(|e| IgnisError::Job(format!("tables.{name}.options.schema: {e}")))?,
        ),
        None => None,
    };
    match table.format {
        Format::Csv => {
            let byte = |s: &Option<String>| s.as_deref().and_then(|s| s.bytes().next());
            let mut read = CsvReadOptions::new().has_header(opts.header.unwrap_or(true)).file_extension(&extension);
            if let Some(d) = byte(&opts.delimiter) {
                read = read.delimiter(d);
            }
            if let Some(q) = byte(&opts.quote) {
                read = read.quote(q);
            }
            if let Some(e) = byte(&opts.escape) {
                read = read.escape(e);
            }
            if let Some(s) = &schema {
                read = read.schema(s);
            }
            match paths {
                TablePaths::Location => ctx.register_csv(name, &table.location, read).await?,
                TablePaths::Files(files) => register_view(ctx, name, ctx.read_csv(files, read).await?)?,
            }
            if opts.wants_spark_csv() {
                register_spark_csv(ctx, name, table, &extension).await?;
            }
        }
        Format::Parquet => {
            fn read<'a>(extension: &'a str, schema: Option<&'a Schema>) -> ParquetReadOptions<'a> {
                let read = ParquetReadOptions::new().file_extension(extension);
                match schema {
                    Some(s) => read.schema(s),
                    None => read,
                }
            }
            let register = async |schema: Option<&Schema>| -> Result<()> {
                match &paths {
                    TablePaths::Location => {
                        ctx.register_parquet(name, &table.location, read(&extension, schema)).await?
                    }
                    TablePaths::Files(files) => {
                        register_view(ctx, name, ctx.read_parquet(files.clone(), read(&extension, schema)).await?)?
                    }
                }
                Ok(())
            };
            register(schema.as_ref()).await?;
            if schema.is_none() {
                let merged = ctx.table_provider(name).await?.schema();
                let urls = match &paths {
                    TablePaths::Location => vec![table.location.clone()],
                    TablePaths::Files(files) => files.clone(),
                };
                let files = parquet_file_schemas(ctx, &urls, &extension).await?;
                ctx.deregister_table(name)?;
                register(Some(&merged_nullability(&merged, &files))).await?;
            }
        }
        Format::Json => {
            let mut read = JsonReadOptions::default().file_extension(&extension);
            if let Some(s) = &schema {
                read = read.schema(s);
            }
            match paths {
                TablePaths::Location => ctx.register_json(name, &table.location, read).await?,
                TablePaths::Files(files) => register_view(ctx, name, ctx.read_json(files, read).await?)?,
            }
        }
        Format::Kafka => unreachable!("refused above"),
    }
    Ok(())
}

/// What a table reads: everything under its location, or a list of files.
enum TablePaths {
    Location,
    Files(Vec<String>),
}

/// The files a table reads: those it names; else, when its location is a
/// directory an Ignis job committed, the files its `_SUCCESS` manifest lists
/// (so files of a write that never committed stay unseen, as in a
/// stream's file sink); else every file with the extension under it.
async fn table_paths(ctx: &SessionContext, name: &str, table: &TableSpec, extension: &str) -> Result<TablePaths> {
    if !table.files.is_empty() {
        return Ok(TablePaths::Files(table.files.clone()));
    }
    let env = ctx.runtime_env();
    if let Some(files) = crate::commit::committed_files(&env, &table.location).await? {
        let files: Vec<String> = files
            .iter()
            .filter(|f| f.ends_with(extension))
            .map(|f| ignis_core::store::join(&table.location, f))
            .collect();
        if files.is_empty() {
            return Err(IgnisError::Input(format!(
                "table '{name}': the committed output at {} holds no {extension} files",
                table.location
            )));
        }
        return Ok(TablePaths::Files(files));
    }
    ensure_files_exist(ctx, name, &table.location, extension).await?;
    Ok(TablePaths::Location)
}

/// The schema of each Parquet file under `urls` (locations or files), as
/// DataFusion reads it (its footer cache makes a second read cheap).
async fn parquet_file_schemas(ctx: &SessionContext, urls: &[String], extension: &str) -> Result<Vec<SchemaRef>> {
    let state = ctx.state();
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let mut schemas = Vec::new();
    for url in urls {
        let url = ListingTableUrl::parse(url)?;
        let store = state.runtime_env().object_store(url.object_store())?;
        let metas: Vec<_> = url.list_all_files(&state, store.as_ref(), extension).await?.try_collect().await?;
        for meta in metas {
            schemas.push(format.infer_schema(&state, &store, std::slice::from_ref(&meta)).await?);
        }
    }
    Ok(schemas)
}

/// The table schema merged across files, as Spark's mergeSchema does, with
/// each column nullable unless every file has it and declares it non-null (a
/// column some file lacks is null in that file's rows). Keeping declared
/// non-null columns so matters to plans: a `NOT IN` over a nullable key is a
/// null-aware anti join, which DataFusion must build from the outer side
/// (TPC-H q16 built 1.2M `partsupp` rows to probe 56 suppliers).
fn merged_nullability(merged: &Schema, files: &[SchemaRef]) -> Schema {
    let non_null = |name: &str| files.iter().all(|file| file.field_with_name(name).is_ok_and(|f| !f.is_nullable()));
    let fields = merged.fields().iter().map(|f| f.as_ref().clone().with_nullable(!non_null(f.name())));
    Schema::new(fields.collect::<Vec<_>>())
}

fn register_view(ctx: &SessionContext, name: &str, df: DataFrame) -> Result<()> {
    ctx.register_table(name, df.into_view())?;
    Ok(())
}

/// Replace the native CSV table `name` (registered, so its schema is known
/// or inferred) with Ignis's Spark-style reader over the same files.
async fn register_spark_csv(ctx: &SessionContext, name: &str, table: &TableSpec, extension: &str) -> Result<()> {
    let schema = ctx.table_provider(name).await?.schema();
    let url = ListingTableUrl::parse(&table.location)?;
    let state = ctx.state();
    let store = state.runtime_env().object_store(url.object_store())?;
    let mut metas: Vec<_> = url.list_all_files(&state, store.as_ref(), extension).await?.try_collect().await?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    let base = url.object_store();
    let files = metas.iter().map(|m| format!("{}{}", base.as_str(), m.location)).collect();
    let o = &table.options;
    let byte = |s: &Option<String>, default: u8| s.as_deref().and_then(|s| s.bytes().next()).unwrap_or(default);
    let options = CsvScanOptions {
        header: o.header.unwrap_or(true),
        delimiter: byte(&o.delimiter, b','),
        quote: byte(&o.quote, b'"'),
        escape: o.escape.as_deref().and_then(|s| s.bytes().next()),
        null_value: o.null_value.clone(),
        mode: o.mode.unwrap_or_default(),
        corrupt_column: o.column_name_of_corrupt_record.clone(),
    };
    ctx.deregister_table(name)?;
    ctx.register_table(name, Arc::new(CsvTable::new(files, schema, options)))?;
    Ok(())
}

/// Spark fails on a path that does not exist; so do we, naming the table.
async fn ensure_files_exist(ctx: &SessionContext, name: &str, location: &str, extension: &str) -> Result<()> {
    let url = ListingTableUrl::parse(location)
        .map_err(|e| IgnisError::Job(format!("tables.{name}.location: '{location}' is not a valid location: {e}")))?;
    let state = ctx.state();
    let store = state.runtime_env().object_store(url.object_store())?;
    let mut files = url.list_all_files(&state, store.as_ref(), extension).await?;
    match files.next().await {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(user_error(&format!("table '{name}': cannot list {location}"), e, IgnisError::Input)),
        None => Err(IgnisError::Input(format!(
            "table '{name}': no {extension} files found at {location} (path does not exist or is empty)"
        ))),
    }
}

/// A DDL column list (`order_id BIGINT, country STRING`) as an Arrow schema,
/// with DataFusion's SQL type names.
pub(crate) async fn parse_schema(ctx: &SessionContext, ddl: &str) -> std::result::Result<Schema, String> {
    let sql = format!("CREATE EXTERNAL TABLE ignis_schema ({ddl}) STORED AS CSV LOCATION 'unused'");
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(&sql, &dialect).map_err(|e| describe(&e))?;
    let plan = state.statement_to_plan(statement).await.map_err(|e| describe(&e))?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(t)) => Ok(t.schema.as_arrow().clone()),
        _ => Err("not a column list".into()),
    }
}
