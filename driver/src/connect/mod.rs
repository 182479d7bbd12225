//! Spark Connect: the gRPC protocol of `pyspark-client`, served beside the
//! HTTP job API (`ignis serve --spark-connect ADDR`), so PySpark code runs
//! unchanged. Every action becomes an Ignis job of the session's tenant, with
//! the tenant rules of `POST /v1/jobs`: API key, storage policy, job limits,
//! running and queued jobs; it shows in `GET /v1/jobs` like any job.
//!
//! ```text
//!  pyspark ──gRPC──> service (this module): auth (x-api-key), session
//!     │  Plan { root: Relation | command: Command }
//!     v
//!  relation::RelationPlanner ── expr::ExprPlanner   Spark relations/expressions
//!     │  DataFusion DataFrame (reads checked by the storage policy)      -> DataFusion
//!     v
//!  Driver::run_planned (via the job registry)       stages, tasks, commit
//!     │  rows
//!     v
//!  execute::Operation                               Arrow batches, kept for ReattachExecute
//! ```

mod analyze;
mod error;
mod execute;
mod expr;
mod params;
pub mod proto;
mod relation;
mod session;
mod types;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::SessionContext;
use ignis_core::error::IgnisError;
use ignis_core::job::{Access, Format, JobConfig, JobLocation, JobSpec, OutputSpec, WriteMode, WriteSpec};
use ignis_core::location::Location;
use ignis_core::stream::{OutputMode, StreamSpec, WatermarkSpec};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::JobResult;
use crate::PlannedJob;
use crate::planner::plan_error;
use crate::service::{AppState, JobState, Submission};
use execute::{Operation, ResponseStream};
use ignis_core::protocol::UdfRef;
use proto::spark::spark_connect_service_server::{SparkConnectService, SparkConnectServiceServer};
use proto::spark::{self as sc, execute_plan_response as epr};
use relation::RelationPlanner;
use session::{Session, Sessions};

/// Concurrent RPCs on one client connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The job that writes a cached DataFrame's rows.
const CACHE_JOB: &str = "cache";

/// The Spark version Ignis answers `spark.version` with: the protocol it speaks.
pub const SPARK_VERSION: &str = "4.2.0";

#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// A session nobody used for this long is released (its views and caches dropped).
    pub idle_timeout: Duration,
    /// The largest gRPC message accepted (a plan, or local data sent by createDataFrame).
    pub max_message_bytes: usize,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self { idle_timeout: Duration::from_secs(3600), max_message_bytes: 128 << 20 }
    }
}

/// Serve Spark Connect on `addr` until `shutdown` completes.
pub async fn serve(
    addr: std::net::SocketAddr,
    app: Arc<AppState>,
    config: ConnectConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), String> {
    let inner = Arc::new(Inner {
        app,
        sessions: Sessions::default(),
        config: config.clone(),
        caches: AtomicUsize::new(0),
        queries: std::sync::Mutex::default(),
    });
    let sweeper = tokio::spawn(sweep_idle(inner.clone()));
    let service = SparkConnectServiceServer::new(ConnectService { inner })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .add_service(service)
        .serve_with_shutdown(addr, shutdown)
        .await
        .map_err(|e| format!("Spark Connect server on {addr}: {e}"));
    sweeper.abort();
    result
}

async fn sweep_idle(inner: Arc<Inner>) {
    let every = (inner.config.idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        for session in inner.sessions.take_idle(inner.config.idle_timeout) {
            tracing::info!(tenant = %session.tenant, session = %session.id, "released an idle Spark Connect session");
            inner.end_session(&session).await;
        }
    }
}

struct Inner {
    app: Arc<AppState>,
    sessions: Sessions,
    config: ConnectConfig,
    /// Numbers cached DataFrames' directories.
    caches: AtomicUsize,
    /// Streaming queries: pyspark's query id (a UUID) -> (tenant, Ignis job id).
    queries: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
}

#[derive(Clone)]
struct ConnectService {
    inner: Arc<Inner>,
}

type RpcResult<T> = Result<Response<T>, Status>;

impl Inner {
    /// The tenant a request acts for, by the API key it carries
    /// (`sc://host:port/;x-api-key=KEY`, or `Authorization: Bearer KEY`).
    fn tenant<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let metadata = request.metadata();
        let key = metadata.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| {
            let value = metadata.get("authorization")?.to_str().ok()?;
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
        });
        let Some(key) = key else {
            return Err(Status::unauthenticated(
                "missing API key: connect with SparkSession.builder.remote(\"sc://HOST:PORT/;x-api-key=KEY\")",
            ));
        };
        self.app.tenant_for_key(&key).ok_or_else(|| Status::unauthenticated("unknown API key"))
    }

    fn session<T>(&self, request: &Request<T>, session_id: &str) -> Result<Arc<Session>, Status> {
        let tenant = self.tenant(request)?;
        self.sessions.get_or_create(&tenant, session_id).map_err(|e| error::from_ignis(&e))
    }

    fn context(&self, session: &Session) -> SessionContext {
        let partitions = session.shuffle_partitions().unwrap_or(ignis_core::job::DEFAULT_SHUFFLE_PARTITIONS);
        ignis_core::session::session_context(partitions, ignis_core::job::DEFAULT_BATCH_SIZE, &Default::default())
    }

    /// The tenant's uploaded Wasm components whose functions `relation` may
    /// call (a function name found in its text: an expression or a
    /// `spark.sql` query), registered in `ctx`; their references for the tasks.
    async fn register_udfs(
        &self,
        ctx: &SessionContext,
        tenant: &str,
        relation: &sc::Relation,
    ) -> Result<Vec<UdfRef>, Status> {
        let registry = self.app.driver().udfs();
        let uploaded = registry.list(tenant).await.map_err(|e| error::from_ignis(&e))?;
        let text = relation.encode_to_vec();
        let used: Vec<String> = uploaded
            .into_iter()
            .filter(|u| u.functions.iter().any(|f| contains(&text, f.name.as_bytes())))
            .map(|u| u.digest)
            .collect();
        if used.is_empty() {
            return Ok(Vec::new());
        }
        let refs = registry.resolve(tenant, &used).await.map_err(|e| error::from_ignis(&e))?;
        for component in registry.load(&refs).await.map_err(|e| error::from_ignis(&e))? {
            let functions = ignis_executor::udf::functions(&component).map_err(|e| error::from_ignis(&e))?;
            functions.scalars.into_iter().for_each(|f| ctx.register_udf(f));
            functions.aggregates.into_iter().for_each(|f| ctx.register_udaf(f));
        }
        Ok(refs)
    }

    fn policy(&self, tenant: &str) -> impl Fn(&JobLocation) -> ignis_core::error::Result<()> + Send + Sync + '_ {
        let tenant = tenant.to_string();
        move |location: &JobLocation| {
            self.app
                .check_locations(&tenant, std::slice::from_ref(location))
                .map_err(|e| IgnisError::Job(format!("[INSUFFICIENT_PERMISSIONS] {}", e.body.message)))
        }
    }

    /// Plan a relation of `session` (reading cached DataFrames where written).
    async fn plan<'a>(
        &'a self,
        session: &'a Session,
        policy: relation::PolicyCheck<'a>,
        relation: &sc::Relation,
    ) -> Result<(RelationPlanner<'a>, DataFrame, Vec<UdfRef>), Status> {
        let ctx = self.context(session);
        let udfs = self.register_udfs(&ctx, &session.tenant, relation).await?;
        let planner = RelationPlanner::new(ctx, session, &self.sessions, policy);
        let df = planner.plan(relation).await.map_err(|e| error::from_ignis(&e))?;
        let df = spark_friendly(df).map_err(|e| error::from_ignis(&e))?;
        Ok((planner, df, udfs))
    }

    /// Run `relation` as an Ignis job of the session's tenant; its rows, or
    /// nothing for a write.
    async fn run_job(
        &self,
        session: &Session,
        op: &Operation,
        relation: &sc::Relation,
        output: OutputSpec,
        what: &str,
    ) -> Result<Arc<JobResult>, Status> {
        // A cache job writes `relation` itself: only what is inside it first.
        self.materialize_caches(session, op, relation, what == CACHE_JOB).await?;
        let policy = self.policy(&session.tenant);
        let (planner, df, udfs) = self.plan(session, &policy, relation).await?;
        let partitions = planner.partitions.lock().map(|p| *p).unwrap_or(None).or(session.shuffle_partitions());
        let job = JobSpec {
            name: Some(format!("spark connect: {what}")),
            tables: planner.tables.lock().map(|t| t.clone()).unwrap_or_default(),
            output,
            config: JobConfig { shuffle_partitions: partitions, ..Default::default() },
            ..Default::default()
        };
        self.app.job_limits().check(&job).map_err(|e| error::from_ignis(&e))?;
        let cache_reads = planner.cache_reads.lock().map(|c| c.clone()).unwrap_or_default();
        let (mut state, plan) = df.into_parts();
        state.config_mut().options_mut().execution.target_partitions = job.config.shuffle_partitions();
        let physical = state.create_physical_plan(&plan).await.map_err(|e| error::from_ignis(&plan_error(what, e)))?;
        let planned = PlannedJob { ctx: SessionContext::new_with_state(state), physical };
        let mut submission = Submission::new(job);
        submission.planned = Some((planned, udfs));
        submission.cache_reads = cache_reads;
        let (entry, ended) = self.app.submit(&session.tenant, submission).map_err(|e| error::from_api(&e))?;
        op.set_job(Some(entry.clone()));
        if op.is_cancelled() {
            entry.cancel();
        }
        let _ = ended.await;
        op.set_job(None);
        let status = entry.status();
        match status.state {
            JobState::Succeeded => entry.result().ok_or_else(|| {
                error::status(tonic::Code::Internal, &[], "the job's result was dropped before it was read")
            }),
            JobState::Cancelled => Err(error::cancelled()),
            _ => Err(status.error.as_ref().map(error::from_job).unwrap_or_else(|| Status::internal("the job failed"))),
        }
    }

    /// Write every DataFrame in `relation` that was `cache()`d and not yet
    /// written (the first action that needs it does), innermost first.
    fn materialize_caches<'a>(
        &'a self,
        session: &'a Session,
        op: &'a Operation,
        relation: &'a sc::Relation,
        skip_root: bool,
    ) -> futures::future::BoxFuture<'a, Result<(), Status>> {
        Box::pin(async move {
            let caches = session.caches();
            if caches.iter().all(|c| c.location.is_some()) {
                return Ok(());
            }
            let key = relation.encode_to_vec();
            let pending = caches.iter().find(|c| c.key == key);
            if let Some(cached) = pending.filter(|_| !skip_root) {
                if cached.location.is_some() {
                    return Ok(());
                }
                let n = self.caches.fetch_add(1, Ordering::Relaxed);
                let root = self.app.driver().config().shuffle_root.trim_end_matches('/').to_string();
                let location = format!("{root}/_cache/{}/{}/{n}/", session.tenant, session.server_id);
                let output = OutputSpec::Write(WriteSpec::to_files(
                    Format::Parquet,
                    location.clone(),
                    WriteMode::Overwrite,
                    Vec::new(),
                ));
                // The job plans the relation itself, after its own inner caches.
                self.run_job(session, op, relation, output, CACHE_JOB).await?;
                session.set_cache_location(&key, location);
                return Ok(());
            }
            for child in children(relation) {
                self.materialize_caches(session, op, child, false).await?;
            }
            Ok(())
        })
    }

    async fn end_session(&self, session: &Session) {
        for op in session.operations() {
            op.interrupt();
        }
        for cached in session.caches() {
            if let Some(location) = session.unpersist(&cached.key).flatten() {
                self.delete(&location).await;
            }
        }
    }

    async fn delete(&self, location: &str) {
        let env = ignis_core::store::runtime_env();
        let result = async {
            let (store, path) = ignis_core::store::resolve(&env, location)?;
            ignis_core::store::delete_prefix(store.as_ref(), location, &path).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(location, error = %e, "could not delete a cached DataFrame's files");
        }
    }

    async fn execute(&self, session: Arc<Session>, op: Arc<Operation>, plan: sc::Plan) -> Result<(), Status> {
        match plan.op_type {
            Some(sc::plan::OpType::Root(relation)) => self.execute_relation(&session, &op, relation).await,
            Some(sc::plan::OpType::Command(command)) => self.execute_command(&session, &op, command).await,
            None => Err(error::invalid("an ExecutePlan request without a plan")),
        }
    }

    async fn execute_relation(&self, session: &Session, op: &Operation, relation: sc::Relation) -> Result<(), Status> {
        if let Some(sc::relation::RelType::ShowString(show)) = &relation.rel_type {
            let input = show.input.clone().ok_or_else(|| error::invalid("show() of nothing"))?;
            let num_rows = usize::try_from(show.num_rows).unwrap_or(0);
            let limited = sc::Relation {
                common: None,
                rel_type: Some(sc::relation::RelType::Limit(Box::new(sc::Limit {
                    input: Some(input),
                    limit: i32::try_from(num_rows + 1).unwrap_or(i32::MAX),
                }))),
            };
            let rows = self.run_job(session, op, &limited, OutputSpec::Collect, "show").await?;
            let JobResult::Rows { schema, batches } = rows.as_ref() else {
                return Err(Status::internal("show wrote files"));
            };
            let truncate = usize::try_from(show.truncate).unwrap_or(0);
            let shown = execute::show_string(schema, batches, num_rows, truncate, show.vertical)
                .map_err(|e| error::from_ignis(&e.into()))?;
            self.push_rows(op, &shown.schema(), &[shown])
        } else {
            let rows = self.run_job(session, op, &relation, OutputSpec::Collect, "collect").await?;
            let JobResult::Rows { schema, batches } = rows.as_ref() else {
                return Err(Status::internal("collect wrote files"));
            };
            self.push_rows(op, schema, batches)
        }
    }

    fn push_rows(
        &self,
        op: &Operation,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        batches: &[datafusion::arrow::record_batch::RecordBatch],
    ) -> Result<(), Status> {
        op.push_schema(types::schema_to_spark(schema));
        for batch in execute::arrow_batches(schema, batches).map_err(|e| error::from_ignis(&e.into()))? {
            op.push(epr::ResponseType::ArrowBatch(batch));
        }
        Ok(())
    }

    async fn execute_command(&self, session: &Session, op: &Operation, command: sc::Command) -> Result<(), Status> {
        use sc::command::CommandType;
        match command.command_type {
            Some(CommandType::WriteOperation(w)) => self.write(session, op, w).await,
            Some(CommandType::CreateDataframeView(v)) => {
                let input = v.input.ok_or_else(|| error::invalid("createTempView of nothing"))?;
                check_view_name(&v.name)?;
                if v.is_global {
                    self.sessions
                        .set_global_view(&session.tenant, &v.name, input, v.replace)
                        .map_err(|e| error::from_ignis(&e))
                } else {
                    if !v.replace && session.has_view(&v.name) {
                        return Err(error::from_ignis(&session::already_exists(&v.name)));
                    }
                    session.set_view(&v.name, input);
                    Ok(())
                }
            }
            Some(CommandType::SqlCommand(sql)) => self.sql_command(session, op, sql).await,
            Some(CommandType::WriteStreamOperationStart(w)) => self.start_stream(session, op, w).await,
            Some(CommandType::StreamingQueryCommand(c)) => self.stream_command(session, op, c).await,
            Some(CommandType::RegisterFunction(f)) => Err(error::from_ignis(&IgnisError::Plan(format!(
                "[UNSUPPORTED_FEATURE] the Python UDF '{}' cannot be registered: Ignis runs WebAssembly UDFs (udf-sdk); \
                 upload one and call it with F.call_function",
                f.function_name
            )))),
            Some(CommandType::WriteOperationV2(w)) => Err(error::from_ignis(&IgnisError::Plan(format!(
                "[UNSUPPORTED_FEATURE] writeTo(\"{}\"): Ignis has no table catalog; write to a path with df.write.save(path)",
                w.table_name
            )))),
            None => Err(error::invalid("an unknown command (this Ignis does not serve it)")),
        }
    }

    async fn write(&self, session: &Session, op: &Operation, w: sc::WriteOperation) -> Result<(), Status> {
        use sc::write_operation::{SaveMode, SaveType};
        let input = w.input.as_ref().ok_or_else(|| error::invalid("a write of nothing"))?;
        let source = w.source.as_deref().unwrap_or("parquet");
        let Some(format) = Format::files_from_name(source) else {
            return Err(error::from_ignis(&IgnisError::Plan(format!(
                "[UNSUPPORTED_DATASOURCE] df.write.format(\"{}\"): Ignis writes parquet, csv and json",
                source.to_ascii_lowercase()
            ))));
        };
        let path = match &w.save_type {
            Some(SaveType::Path(p)) => p.clone(),
            Some(SaveType::Table(t)) => {
                return Err(error::from_ignis(&IgnisError::Plan(format!(
                    "[UNSUPPORTED_FEATURE] saveAsTable(\"{}\"): Ignis has no table catalog; write to a path with \
                     df.write.save(path) or .parquet(path)",
                    t.table_name
                ))));
            }
            None => return Err(error::invalid("df.write.save() needs a path")),
        };
        if w.bucket_by.is_some() || !w.sort_column_names.is_empty() {
            return Err(error::from_ignis(&IgnisError::Plan("[UNSUPPORTED_FEATURE] bucketBy and sortBy".into())));
        }
        let location = Location::parse(&path, None, "df.write path").map_err(|e| error::from_ignis(&e))?;
        let policy = self.policy(&session.tenant);
        policy(&JobLocation { field: "df.write path".into(), location: location.clone(), access: Access::Write })
            .map_err(|e| error::from_ignis(&e))?;
        let mode = match w.mode() {
            SaveMode::Append => WriteMode::Append,
            SaveMode::Overwrite => WriteMode::Overwrite,
            SaveMode::Ignore => WriteMode::Ignore,
            SaveMode::ErrorIfExists | SaveMode::Unspecified => WriteMode::Error,
        };
        let output =
            OutputSpec::Write(WriteSpec::to_files(format, location.url(), mode, w.partitioning_columns.clone()));
        self.run_job(session, op, input, output, "write").await.map(|_| ())
    }

    /// `df.writeStream...start()`: the query becomes an Ignis stream job (its
    /// plan unparsed to SQL over the stream's table, planned again for each
    /// batch), run by the job registry like `POST /v1/jobs` with the same
    /// tenant rules. The query id is the job id.
    async fn start_stream(
        &self,
        session: &Session,
        op: &Operation,
        w: sc::WriteStreamOperationStart,
    ) -> Result<(), Status> {
        use sc::write_stream_operation_start::{SinkDestination, Trigger};
        let fail = |e: IgnisError| error::from_ignis(&e);
        let input = w.input.as_ref().ok_or_else(|| error::invalid("writeStream of nothing"))?;
        let policy = self.policy(&session.tenant);
        let (planner, df, udfs) = self.plan(session, &policy, input).await?;
        if !udfs.is_empty() {
            return Err(fail(IgnisError::Plan("[UNSUPPORTED_FEATURE] UDFs in a stream over Spark Connect".into())));
        }
        let Some(source) = lock_take(&planner.stream) else {
            return Err(fail(IgnisError::Plan(
                "writeStream needs a streaming DataFrame (spark.readStream...load()); use df.write for a batch one"
                    .into(),
            )));
        };
        // Optimised first: a filter over a projection then reads the columns
        // below it, which unparses to SQL that plans again.
        let optimized = df.into_optimized_plan().map_err(|e| fail(plan_error("writeStream", e)))?;
        let sql = datafusion::sql::unparser::plan_to_sql(&optimized)
            .map_err(|e| fail(IgnisError::Plan(format!("[UNSUPPORTED_FEATURE] this streaming query: {e}"))))?
            .to_string();
        tracing::info!(tenant = %session.tenant, %sql, "a Spark Connect stream's query");
        let mut tables = planner.tables.lock().map(|t| t.clone()).unwrap_or_default();
        tables.insert(relation::STREAM_TABLE.to_string(), source);
        let option = |key: &str| w.options.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.clone());
        let checkpoint = option("checkpointLocation")
            .ok_or_else(|| fail(IgnisError::Plan("writeStream needs option(\"checkpointLocation\", ...)".into())))?;
        let trigger = match &w.trigger {
            Some(Trigger::ProcessingTimeInterval(t)) => Some(t.clone()),
            Some(Trigger::AvailableNow(true)) => Some("available_now".to_string()),
            Some(Trigger::Once(true)) => Some("once".to_string()),
            Some(Trigger::ContinuousCheckpointInterval(_)) => {
                return Err(fail(IgnisError::Plan("[UNSUPPORTED_FEATURE] continuous triggers".into())));
            }
            _ => None,
        };
        let output_mode = match w.output_mode.to_ascii_lowercase().as_str() {
            "" | "append" => OutputMode::Append,
            "update" => OutputMode::Update,
            "complete" => OutputMode::Complete,
            other => {
                return Err(fail(IgnisError::Plan(format!("outputMode {other:?}: use append, update or complete"))));
            }
        };
        let name = if w.format.is_empty() { "parquet" } else { w.format.as_str() };
        let output = match Format::from_name(name) {
            Some(Format::Kafka) => OutputSpec::Write(WriteSpec {
                topic: option("topic"),
                bootstrap_servers: option("kafka.bootstrap.servers"),
                ..WriteSpec::to_files(Format::Kafka, String::new(), WriteMode::Append, Vec::new())
            }),
            Some(format) => {
                let path = match &w.sink_destination {
                    Some(SinkDestination::Path(p)) => p.clone(),
                    _ => option("path")
                        .ok_or_else(|| fail(IgnisError::Plan("writeStream.start() needs a path".into())))?,
                };
                OutputSpec::Write(WriteSpec::to_files(
                    format,
                    path,
                    WriteMode::Append,
                    w.partitioning_column_names.clone(),
                ))
            }
            None => {
                return Err(fail(IgnisError::Plan(format!(
                    "[UNSUPPORTED_DATASOURCE] writeStream.format(\"{}\"): Ignis streams to parquet, csv, json and kafka",
                    w.format.to_ascii_lowercase()
                ))));
            }
        };
        let watermark = lock_take(&planner.watermark).map(|(column, delay)| WatermarkSpec { column, delay });
        let mut job = JobSpec {
            name: Some(if w.query_name.is_empty() { "spark connect: stream".into() } else { w.query_name.clone() }),
            tables,
            sql: Some(sql),
            output,
            config: JobConfig { shuffle_partitions: session.shuffle_partitions(), ..Default::default() },
            stream: Some(StreamSpec {
                trigger,
                checkpoint,
                output_mode,
                watermark,
                sql: None,
                deduplicate: Vec::new(),
                retained_batches: None,
            }),
            ..Default::default()
        };
        job.validate().map_err(|e| fail(IgnisError::Job(e)))?;
        self.app.job_limits().check(&job).map_err(fail)?;
        let locations = job.resolve_locations(None).map_err(fail)?;
        self.app.check_locations(&session.tenant, &locations).map_err(|e| error::from_api(&e))?;
        self.app.check_stream(&job).map_err(|e| error::from_api(&e))?;
        let (entry, _ended) =
            self.app.submit(&session.tenant, Submission::new(job)).map_err(|e| error::from_api(&e))?;
        // pyspark reads a query id as a UUID: the job id's 128 random bits.
        let job_id = entry.id.to_string();
        let hex = job_id.rsplit('-').next().unwrap_or_default();
        let id = if hex.len() == 32 {
            format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
        } else {
            job_id.clone()
        };
        lock(&self.queries).insert(id.clone(), (session.tenant.clone(), job_id));
        op.push(epr::ResponseType::WriteStreamOperationStartResult(sc::WriteStreamOperationStartResult {
            query_id: Some(sc::StreamingQueryInstanceId { id: id.clone(), run_id: id }),
            name: w.query_name,
        }));
        Ok(())
    }

    /// A streaming query's status, progress, stop, awaitTermination and exception.
    async fn stream_command(
        &self,
        session: &Session,
        op: &Operation,
        c: sc::StreamingQueryCommand,
    ) -> Result<(), Status> {
        use sc::streaming_query_command::Command as C;
        use sc::streaming_query_command_result::{self as res, ResultType};
        let query_id = c.query_id.clone().unwrap_or_default();
        let job_id = match lock(&self.queries).get(&query_id.id) {
            Some((tenant, job)) if *tenant == session.tenant => job.clone(),
            _ => return Err(error::status(tonic::Code::NotFound, &[], &format!("no streaming query {}", query_id.id))),
        };
        let job = self.app.job(&session.tenant, &job_id).map_err(|e| error::from_api(&e))?;
        let wait = |deadline: Option<std::time::Instant>| {
            let job = job.clone();
            async move {
                while !job.state().is_finished() {
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return false;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                true
            }
        };
        let status = job.status();
        let failure = status.error.as_ref().filter(|_| status.state == JobState::Failed).map(|e| e.message.clone());
        let result = match c.command {
            Some(C::Status(_)) => ResultType::Status(res::StatusResult {
                status_message: if job.state().is_finished() { "Stopped" } else { "Waiting for next trigger" }.into(),
                is_data_available: false,
                is_trigger_active: !job.state().is_finished(),
                is_active: !job.state().is_finished(),
            }),
            Some(C::LastProgress(_) | C::RecentProgress(_)) => ResultType::RecentProgress(res::RecentProgressResult {
                recent_progress_json: status
                    .stream
                    .iter()
                    .filter(|s| s.batches_done > 0)
                    .map(|s| progress_json(&query_id.id, status.name.as_deref().unwrap_or_default(), s))
                    .collect(),
            }),
            Some(C::Stop(_)) => {
                job.stop();
                wait(Some(std::time::Instant::now() + std::time::Duration::from_secs(300))).await;
                op.push(epr::ResponseType::StreamingQueryCommandResult(sc::StreamingQueryCommandResult {
                    query_id: Some(query_id),
                    result_type: None,
                }));
                return Ok(());
            }
            Some(C::AwaitTermination(a)) => {
                let deadline = a
                    .timeout_ms
                    .map(|ms| std::time::Instant::now() + std::time::Duration::from_millis(ms.max(0) as u64));
                let terminated = wait(deadline).await;
                if terminated && let Some(e) = job.status().error.filter(|_| job.state() == JobState::Failed) {
                    return Err(error::from_job(&e));
                }
                ResultType::AwaitTermination(res::AwaitTerminationResult { terminated })
            }
            Some(C::Exception(_)) => ResultType::Exception(res::ExceptionResult {
                exception_message: failure,
                error_class: None,
                stack_trace: None,
            }),
            Some(C::ProcessAllAvailable(_)) => {
                return Err(error::from_ignis(&IgnisError::Plan(
                    "[UNSUPPORTED_FEATURE] processAllAvailable (use trigger(availableNow=True) and awaitTermination)"
                        .into(),
                )));
            }
            None => return Err(error::invalid("a streaming query command of nothing")),
        };
        op.push(epr::ResponseType::StreamingQueryCommandResult(sc::StreamingQueryCommandResult {
            query_id: Some(query_id),
            result_type: Some(result),
        }));
        Ok(())
    }

    /// `spark.sql(...)`: a query comes back as a relation the client runs
    /// later (analysed now, so errors surface at once); `CREATE [OR REPLACE]
    /// TEMP VIEW` defines a view of the session.
    async fn sql_command(&self, session: &Session, op: &Operation, sql: sc::SqlCommand) -> Result<(), Status> {
        use datafusion::sql::parser::Statement as DfStatement;
        use datafusion::sql::sqlparser::ast::Statement;
        // pyspark 4 sends the query as an `input` SQL relation; older clients in `sql`.
        let mut sql = sql;
        let sql = match sql.input.take().and_then(|r| r.rel_type) {
            Some(sc::relation::RelType::Sql(s)) => sc::SqlCommand {
                sql: s.query,
                args: s.args,
                pos_args: s.pos_args,
                named_arguments: s.named_arguments,
                pos_arguments: s.pos_arguments,
                input: None,
            },
            _ => sql,
        };
        let bound = match params::Args::from_wire(&sql.args, &sql.pos_args, &sql.named_arguments, &sql.pos_arguments)
            .map_err(|e| error::from_ignis(&e))?
        {
            Some(args) => params::bind(&sql.sql, &args).map_err(|e| error::from_ignis(&e))?,
            None => sql.sql.clone(),
        };
        let statements = crate::planner::parse_sql(&bound, &Default::default()).map_err(|e| error::from_ignis(&e))?;
        let view = match statements.front() {
            Some(DfStatement::Statement(s)) => match s.as_ref() {
                Statement::CreateView(v) => Some((v.name.to_string(), v.query.to_string(), v.or_replace)),
                _ => None,
            },
            _ => None,
        };
        let relation = if let Some((name, query, replace)) = view {
            check_view_name(&name)?;
            if !replace && session.has_view(&name) {
                return Err(error::from_ignis(&session::already_exists(&name)));
            }
            let query = sql_relation(&query);
            // Analyse the view's query now, as Spark does.
            let policy = self.policy(&session.tenant);
            self.plan(session, &policy, &query).await?;
            session.set_view(&name, query);
            empty_relation()
        } else {
            let relation = sql_relation(&bound);
            // Analyse now, as Spark does; the client runs the relation later.
            let policy = self.policy(&session.tenant);
            self.plan(session, &policy, &relation).await?;
            relation
        };
        op.push(epr::ResponseType::SqlCommandResult(epr::SqlCommandResult { relation: Some(relation) }));
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The relations directly inside `r`.
fn children(r: &sc::Relation) -> Vec<&sc::Relation> {
    use sc::relation::RelType;
    fn one(x: &Option<Box<sc::Relation>>) -> Vec<&sc::Relation> {
        x.as_deref().into_iter().collect()
    }
    match &r.rel_type {
        Some(RelType::Project(p)) => one(&p.input),
        Some(RelType::Filter(x)) => one(&x.input),
        Some(RelType::Join(j)) => one(&j.left).into_iter().chain(one(&j.right)).collect(),
        Some(RelType::SetOp(s)) => one(&s.left_input).into_iter().chain(one(&s.right_input)).collect(),
        Some(RelType::Sort(x)) => one(&x.input),
        Some(RelType::Limit(x)) => one(&x.input),
        Some(RelType::Aggregate(x)) => one(&x.input),
        Some(RelType::Sample(x)) => one(&x.input),
        Some(RelType::Offset(x)) => one(&x.input),
        Some(RelType::Deduplicate(x)) => one(&x.input),
        Some(RelType::SubqueryAlias(x)) => one(&x.input),
        Some(RelType::Repartition(x)) => one(&x.input),
        Some(RelType::RepartitionByExpression(x)) => one(&x.input),
        Some(RelType::ToDf(x)) => one(&x.input),
        Some(RelType::WithColumnsRenamed(x)) => one(&x.input),
        Some(RelType::ShowString(x)) => one(&x.input),
        Some(RelType::Drop(x)) => one(&x.input),
        Some(RelType::Tail(x)) => one(&x.input),
        Some(RelType::WithColumns(x)) => one(&x.input),
        Some(RelType::Hint(x)) => one(&x.input),
        Some(RelType::FillNa(x)) => one(&x.input),
        Some(RelType::DropNa(x)) => one(&x.input),
        _ => Vec::new(),
    }
}

fn sql_relation(query: &str) -> sc::Relation {
    sc::Relation {
        common: None,
        rel_type: Some(sc::relation::RelType::Sql(sc::Sql { query: query.to_string(), ..Default::default() })),
    }
}

fn empty_relation() -> sc::Relation {
    sc::Relation {
        common: None,
        rel_type: Some(sc::relation::RelType::LocalRelation(sc::LocalRelation {
            data: None,
            schema: Some(r#"{"type":"struct","fields":[]}"#.into()),
        })),
    }
}

fn check_view_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(error::from_ignis(&IgnisError::Plan(format!(
            "[INVALID_VIEW_NAME] {name:?}: a view name is letters, digits and '_'"
        ))))
    }
}

/// The DataFrame with columns pyspark reads (see [`execute::spark_friendly`]).
fn spark_friendly(df: DataFrame) -> ignis_core::error::Result<DataFrame> {
    let needs = df.schema().fields().iter().any(|f| execute::spark_friendly(f.data_type()).is_some());
    if !needs {
        return Ok(df);
    }
    let exprs: Vec<Expr> = df
        .schema()
        .iter()
        .map(|(q, f)| {
            let column = Expr::Column(datafusion::common::Column::new(q.cloned(), f.name()));
            match execute::spark_friendly(f.data_type()) {
                Some(t) => cast(column, t).alias(f.name()),
                None => column,
            }
        })
        .collect();
    df.select(exprs).map_err(|e| plan_error("result", e))
}

#[tonic::async_trait]
impl SparkConnectService for ConnectService {
    type ExecutePlanStream = ResponseStream;
    type ReattachExecuteStream = ResponseStream;

    async fn execute_plan(&self, request: Request<sc::ExecutePlanRequest>) -> RpcResult<Self::ExecutePlanStream> {
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        let request = request.into_inner();
        let plan = request.plan.ok_or_else(|| error::invalid("ExecutePlan without a plan"))?;
        let id = request.operation_id.unwrap_or_else(|| ignis_core::ids::JobId::generate().to_string());
        if session.operation(&id).is_some() {
            return Err(error::invalid(format!("[INVALID_HANDLE.OPERATION_ALREADY_EXISTS] operation {id} exists")));
        }
        // A reattachable execution keeps its responses until the client
        // releases them; any other is forgotten once it ends (its stream holds it).
        let reattachable = request.request_options.iter().any(|o| {
            matches!(&o.request_option, Some(sc::execute_plan_request::request_option::RequestOption::ReattachOptions(r)) if r.reattachable)
        });
        let op = Operation::new(id, request.tags, session.id.clone(), session.server_id.clone());
        session.add_operation(op.clone());
        let inner = self.inner.clone();
        let running = op.clone();
        let task = tokio::spawn(async move {
            let outcome = inner.execute(session.clone(), running.clone(), plan).await;
            running.finish(outcome);
            if !reattachable {
                session.remove_operation(&running.id);
            }
        });
        op.set_task(task.abort_handle());
        Ok(Response::new(op.stream(None)?))
    }

    async fn analyze_plan(&self, request: Request<sc::AnalyzePlanRequest>) -> RpcResult<sc::AnalyzePlanResponse> {
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        self.inner.analyze(&session, request.into_inner()).await.map(Response::new)
    }

    async fn config(&self, request: Request<sc::ConfigRequest>) -> RpcResult<sc::ConfigResponse> {
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        let operation = request.into_inner().operation.ok_or_else(|| error::invalid("Config without an operation"))?;
        self.inner.config(&session, operation).map(Response::new)
    }

    async fn add_artifacts(
        &self,
        _request: Request<tonic::Streaming<sc::AddArtifactsRequest>>,
    ) -> RpcResult<sc::AddArtifactsResponse> {
        Err(Status::unimplemented(
            "Ignis takes no artifacts (jars, Python files); UDFs are WebAssembly components uploaded with POST /v1/udfs",
        ))
    }

    async fn artifact_status(
        &self,
        _request: Request<sc::ArtifactStatusesRequest>,
    ) -> RpcResult<sc::ArtifactStatusesResponse> {
        Err(Status::unimplemented("Ignis takes no artifacts"))
    }

    async fn interrupt(&self, request: Request<sc::InterruptRequest>) -> RpcResult<sc::InterruptResponse> {
        use sc::interrupt_request::{Interrupt, InterruptType};
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        let request = request.into_inner();
        let kind = request.interrupt_type();
        let chosen: Vec<_> = session
            .operations()
            .into_iter()
            .filter(|op| match (kind, &request.interrupt) {
                (InterruptType::All, _) => true,
                (InterruptType::Tag, Some(Interrupt::OperationTag(tag))) => op.tags.contains(tag),
                (InterruptType::OperationId, Some(Interrupt::OperationId(id))) => &op.id == id,
                _ => false,
            })
            .collect();
        let interrupted_ids = chosen.into_iter().filter(|op| op.interrupt()).map(|op| op.id.clone()).collect();
        Ok(Response::new(sc::InterruptResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            interrupted_ids,
        }))
    }

    async fn reattach_execute(
        &self,
        request: Request<sc::ReattachExecuteRequest>,
    ) -> RpcResult<Self::ReattachExecuteStream> {
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        let request = request.into_inner();
        let op = session.operation(&request.operation_id).ok_or_else(|| {
            error::invalid(format!(
                "[INVALID_HANDLE.OPERATION_NOT_FOUND] operation {} is not known (released?)",
                request.operation_id
            ))
        })?;
        Ok(Response::new(op.stream(request.last_response_id)?))
    }

    async fn release_execute(
        &self,
        request: Request<sc::ReleaseExecuteRequest>,
    ) -> RpcResult<sc::ReleaseExecuteResponse> {
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        let request = request.into_inner();
        if matches!(request.release, Some(sc::release_execute_request::Release::ReleaseAll(_))) {
            session.remove_operation(&request.operation_id);
        }
        Ok(Response::new(sc::ReleaseExecuteResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            operation_id: Some(request.operation_id),
        }))
    }

    async fn release_session(
        &self,
        request: Request<sc::ReleaseSessionRequest>,
    ) -> RpcResult<sc::ReleaseSessionResponse> {
        let tenant = self.inner.tenant(&request)?;
        let request = request.into_inner();
        let server_side_session_id = match self.inner.sessions.remove(&tenant, &request.session_id) {
            Some(session) => {
                self.inner.end_session(&session).await;
                session.server_id.clone()
            }
            None => String::new(),
        };
        Ok(Response::new(sc::ReleaseSessionResponse { session_id: request.session_id, server_side_session_id }))
    }

    async fn fetch_error_details(
        &self,
        request: Request<sc::FetchErrorDetailsRequest>,
    ) -> RpcResult<sc::FetchErrorDetailsResponse> {
        let session = self.inner.session(&request, &request.get_ref().session_id)?;
        Ok(Response::new(sc::FetchErrorDetailsResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
        }))
    }
}

fn lock_take<T>(m: &std::sync::Mutex<Option<T>>) -> Option<T> {
    lock(m).take()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stream's last batch in the shape of Spark's `StreamingQueryProgress` JSON.
fn progress_json(id: &str, name: &str, s: &crate::stream::StreamStatus) -> String {
    let seconds = s.last_batch_ms.max(1) as f64 / 1000.0;
    let per_second = s.last_input_rows as f64 / seconds;
    serde_json::json!({
        "id": id,
        "runId": id,
        "name": name,
        "timestamp": crate::stream::rfc3339(now_micros()),
        "batchId": s.last_batch,
        "batchDuration": s.last_batch_ms,
        "durationMs": {"triggerExecution": s.last_batch_ms},
        "eventTime": s.watermark.as_ref().map(|w| serde_json::json!({"watermark": w})).unwrap_or(serde_json::json!({})),
        "stateOperators": [{
            "operatorName": "ignisStateRows",
            "numRowsTotal": s.state_rows,
            "numRowsUpdated": 0,
            "numRowsRemoved": 0,
            "allUpdatesTimeMs": 0,
            "allRemovalsTimeMs": 0,
            "commitTimeMs": 0,
            "memoryUsedBytes": 0,
            "numRowsDroppedByWatermark": s.late_rows,
            "numShufflePartitions": 0,
            "numStateStoreInstances": 0,
        }],
        "sources": [{
            "description": "ignis stream source",
            "startOffset": null,
            "endOffset": null,
            "latestOffset": null,
            "numInputRows": s.last_input_rows,
            "inputRowsPerSecond": per_second,
            "processedRowsPerSecond": per_second,
        }],
        "sink": {"description": "ignis stream sink", "numOutputRows": s.last_output_rows},
        "numInputRows": s.last_input_rows,
        "inputRowsPerSecond": per_second,
        "processedRowsPerSecond": per_second,
    })
    .to_string()
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default()
}
