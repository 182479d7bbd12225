//! Spark Connect relations as a DataFusion plan: reads (checked against the
//! tenant's storage policy), projections, filters, joins, aggregates, set
//! operations, sorts, temp views, `spark.sql`, local data, ranges, and cached
//! DataFrames read back from where their first action put them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, cast, lit};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use ignis_core::error::{IgnisError, Result};
use ignis_core::job::{Access, Format, JobLocation, TableOptions, TableSpec};
use ignis_core::location::Location;
use object_store::ObjectStoreExt;
use prost::Message;

use super::expr::{ExprPlanner, analysis, plan_alias};
use super::params::{self, Args};
use super::proto::spark::relation::RelType;
use super::proto::spark::{self as sc, Relation, join, set_operation};
use super::session::{Session, Sessions};
use super::types;
use crate::planner::{self as plan, plan_error};

/// Decides whether the session's tenant may read or write a location.
pub type PolicyCheck<'a> = &'a (dyn Fn(&JobLocation) -> Result<()> + Send + Sync);

/// Plans the relations of one request of one session.
pub struct RelationPlanner<'a> {
    pub ctx: SessionContext,
    pub session: &'a Session,
    pub sessions: &'a Sessions,
    pub policy: PolicyCheck<'a>,
    /// The tables the plan reads, by the names it registered them under.
    pub tables: Mutex<BTreeMap<String, TableSpec>>,
    /// Cached DataFrames the plan reads.
    pub cache_reads: Mutex<Vec<String>>,
    /// `repartition(n)` asked for this many partitions.
    pub partitions: Mutex<Option<usize>>,
    /// `spark.readStream...load()`: the streaming table (registered as
    /// [`STREAM_TABLE`], empty, for planning), and `withWatermark`'s column and delay.
    pub stream: Mutex<Option<TableSpec>>,
    pub watermark: Mutex<Option<(String, String)>>,
    next_table: AtomicUsize,
    /// Views being expanded, to refuse a view that reads itself.
    depth: AtomicUsize,
}

/// The name a streaming query's source has in its plan and its batches.
pub const STREAM_TABLE: &str = "ignis_stream";

/// How deep views may nest.
const MAX_VIEW_DEPTH: usize = 32;

impl<'a> RelationPlanner<'a> {
    pub fn new(ctx: SessionContext, session: &'a Session, sessions: &'a Sessions, policy: PolicyCheck<'a>) -> Self {
        Self {
            ctx,
            session,
            sessions,
            policy,
            tables: Mutex::default(),
            cache_reads: Mutex::default(),
            partitions: Mutex::default(),
            stream: Mutex::default(),
            watermark: Mutex::default(),
            next_table: AtomicUsize::new(0),
            depth: AtomicUsize::new(0),
        }
    }

    pub fn plan<'b>(&'b self, r: &'b Relation) -> BoxFuture<'b, Result<DataFrame>> {
        Box::pin(async move {
            if let Some(cached) = self.cached(r).await? {
                return Ok(cached);
            }
            let df = self.plan_uncached(r).await?;
            Ok(df)
        })
    }

    /// A cached DataFrame whose rows were written: read them back.
    async fn cached(&self, r: &Relation) -> Result<Option<DataFrame>> {
        let caches = self.session.caches();
        if caches.iter().all(|c| c.location.is_none()) {
            return Ok(None);
        }
        let key = r.encode_to_vec();
        let Some(location) = caches.into_iter().find(|c| c.key == key).and_then(|c| c.location) else {
            return Ok(None);
        };
        let spec = TableSpec::files_at(Format::Parquet, location.clone(), TableOptions::default());
        let df = self.register(spec).await?;
        lock(&self.cache_reads).push(location);
        Ok(Some(df))
    }

    async fn plan_uncached(&self, r: &Relation) -> Result<DataFrame> {
        let Some(rel) = &r.rel_type else {
            return Err(unsupported(
                "this DataFrame operation (unpivot, transpose, describe/summary and stat functions, \
                 mapInPandas and other Python code, or another relation type this server does not know)",
            ));
        };
        match rel {
            RelType::Read(read) => self.read(read).await,
            RelType::Project(p) => {
                let input = match &p.input {
                    Some(input) => self.plan(input).await?,
                    // `spark.range(1).select(...)`'s cousin: select without a FROM.
                    None => self.ctx.read_empty().map_err(|e| plan_error("select", e))?,
                };
                let exprs = self.exprs(&input).select_list(&p.expressions)?;
                if !datafusion::logical_expr::utils::find_aggregate_exprs(exprs.iter()).is_empty() {
                    // `df.select(F.sum("x"))` is a global aggregate in Spark.
                    return input.aggregate(vec![], exprs).map_err(|e| plan_error("select", e));
                }
                input.select(exprs).map_err(|e| plan_error("select", e))
            }
            RelType::Filter(f) => {
                let input = self.input(&f.input).await?;
                let condition = f.condition.as_ref().ok_or_else(|| unsupported("a filter without condition"))?;
                let condition = self.exprs(&input).expr(condition)?;
                input.filter(condition).map_err(|e| plan_error("filter", e))
            }
            RelType::Join(j) => self.join(j).await,
            RelType::SetOp(s) => self.set_op(s).await,
            RelType::Sort(s) => {
                let input = self.input(&s.input).await?;
                let keys = s.order.iter().map(|o| self.exprs(&input).sort(o)).collect::<Result<Vec<_>>>()?;
                input.sort(keys).map_err(|e| plan_error("sort", e))
            }
            RelType::Limit(l) => {
                let input = self.input(&l.input).await?;
                input.limit(0, Some(non_negative(l.limit, "limit")?)).map_err(|e| plan_error("limit", e))
            }
            RelType::Offset(o) => {
                let input = self.input(&o.input).await?;
                input.limit(non_negative(o.offset, "offset")?, None).map_err(|e| plan_error("offset", e))
            }
            RelType::Aggregate(a) => self.aggregate(a).await,
            RelType::Sql(s) => {
                let query = match Args::from_wire(&s.args, &s.pos_args, &s.named_arguments, &s.pos_arguments)? {
                    Some(args) => params::bind(&s.query, &args)?,
                    None => s.query.clone(),
                };
                self.sql(&query).await
            }
            RelType::LocalRelation(l) => self.local(l),
            RelType::Sample(s) => {
                let input = self.input(&s.input).await?;
                if s.with_replacement == Some(true) {
                    return Err(unsupported("sample(withReplacement=True)"));
                }
                let random = self.exprs(&input).expr(&function("rand", vec![]))?;
                let keep = random.clone().gt_eq(lit(s.lower_bound)).and(random.lt(lit(s.upper_bound)));
                input.filter(keep).map_err(|e| plan_error("sample", e))
            }
            RelType::Deduplicate(d) => {
                let input = self.input(&d.input).await?;
                if d.within_watermark == Some(true) {
                    return Err(unsupported("dropDuplicatesWithinWatermark (streaming)"));
                }
                if d.all_columns_as_keys == Some(true) || d.column_names.is_empty() {
                    return input.distinct().map_err(|e| plan_error("distinct", e));
                }
                let planner = self.exprs(&input);
                let keys = d.column_names.iter().map(|c| planner.expr(&column(c))).collect::<Result<Vec<_>>>()?;
                let all = input.schema().columns().into_iter().map(Expr::Column).collect();
                input.distinct_on(keys, all, None).map_err(|e| plan_error("dropDuplicates", e))
            }
            RelType::Range(r) => self.range(r),
            RelType::SubqueryAlias(a) => {
                let input = self.input(&a.input).await?;
                input.alias(&a.alias).map_err(|e| plan_error("alias", e))
            }
            RelType::Repartition(p) => {
                *lock(&self.partitions) = Some(positive(p.num_partitions, "repartition")?);
                self.input(&p.input).await
            }
            RelType::RepartitionByExpression(p) => {
                if let Some(n) = p.num_partitions {
                    *lock(&self.partitions) = Some(positive(n, "repartition")?);
                }
                self.input(&p.input).await
            }
            RelType::ToDf(t) => {
                let input = self.input(&t.input).await?;
                let fields = input.schema().columns();
                if fields.len() != t.column_names.len() {
                    return Err(analysis(format!(
                        "toDF: the DataFrame has {} columns, but {} names were given",
                        fields.len(),
                        t.column_names.len()
                    )));
                }
                let exprs =
                    fields.into_iter().zip(&t.column_names).map(|(c, n)| Expr::Column(c).alias(n)).collect::<Vec<_>>();
                input.select(exprs).map_err(|e| plan_error("toDF", e))
            }
            RelType::WithColumnsRenamed(w) => {
                let mut df = self.input(&w.input).await?;
                let mut renames: Vec<(String, String)> =
                    w.rename_columns_map.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
                renames.extend(w.renames.iter().map(|r| (r.col_name.clone(), r.new_col_name.clone())));
                for (from, to) in renames {
                    df = df.with_column_renamed(&from, &to).map_err(|e| plan_error("withColumnRenamed", e))?;
                }
                Ok(df)
            }
            RelType::ShowString(s) => self.input(&s.input).await,
            RelType::Drop(d) => {
                let input = self.input(&d.input).await?;
                let mut names: Vec<String> = d.column_names.clone();
                for e in &d.columns {
                    // Spark ignores a column that does not exist.
                    if let Ok(Expr::Column(c)) = self.exprs(&input).expr(e) {
                        names.push(c.name);
                    }
                }
                let keep: Vec<Expr> = input
                    .schema()
                    .columns()
                    .into_iter()
                    .filter(|c| !names.iter().any(|n| n == &c.name))
                    .map(Expr::Column)
                    .collect();
                input.select(keep).map_err(|e| plan_error("drop", e))
            }
            RelType::Tail(_) => Err(unsupported("tail()")),
            RelType::WithColumns(w) => {
                let mut df = self.input(&w.input).await?;
                for alias in &w.aliases {
                    let name = alias.name.first().ok_or_else(|| unsupported("withColumn without a name"))?;
                    let inner = alias.expr.as_deref().ok_or_else(|| unsupported("withColumn without an expression"))?;
                    let e = self.exprs(&df).expr(inner)?;
                    df = df.with_column(name, e).map_err(|e| plan_error("withColumn", e))?;
                }
                Ok(df)
            }
            RelType::Hint(h) => self.input(&h.input).await,
            RelType::WithWatermark(w) => {
                *lock(&self.watermark) = Some((w.event_time.clone(), w.delay_threshold.clone()));
                self.input(&w.input).await
            }
            RelType::CachedLocalRelation(_) => Err(unsupported(
                "local data larger than spark.sql.session.localRelationCacheThreshold (write it to a file and read it)",
            )),
            RelType::FillNa(f) => self.fill_na(f).await,
            RelType::DropNa(d) => {
                let input = self.input(&d.input).await?;
                let cols: Vec<Expr> = if d.cols.is_empty() {
                    input.schema().columns().into_iter().map(Expr::Column).collect()
                } else {
                    d.cols.iter().map(|c| self.exprs(&input).expr(&column(c))).collect::<Result<_>>()?
                };
                let min = d.min_non_nulls.unwrap_or(cols.len() as i32);
                let count = cols
                    .into_iter()
                    .map(|c| datafusion::logical_expr::when(c.is_not_null(), lit(1i32)).otherwise(lit(0i32)))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| plan_error("dropna", e))?
                    .into_iter()
                    .reduce(|a, b| a + b)
                    .unwrap_or_else(|| lit(0i32));
                input.filter(count.gt_eq(lit(min))).map_err(|e| plan_error("dropna", e))
            }
        }
    }

    async fn input(&self, input: &Option<Box<Relation>>) -> Result<DataFrame> {
        match input {
            Some(r) => self.plan(r).await,
            None => Err(unsupported("a relation without input")),
        }
    }

    pub fn exprs<'b>(&'b self, input: &'b DataFrame) -> ExprPlanner<'b> {
        ExprPlanner { ctx: &self.ctx, input }
    }

    /// A table registered for this plan under a fresh name.
    async fn register(&self, spec: TableSpec) -> Result<DataFrame> {
        let name = format!("__ignis_read_{}", self.next_table.fetch_add(1, Ordering::Relaxed));
        plan::register_tables(&self.ctx, std::iter::once((&name, &spec))).await?;
        let df = self.ctx.table(name.as_str()).await.map_err(|e| plan_error("read", e))?;
        lock(&self.tables).insert(name, spec);
        Ok(df)
    }

    async fn read(&self, read: &sc::Read) -> Result<DataFrame> {
        use sc::read::ReadType;
        if read.is_streaming {
            return match &read.read_type {
                Some(ReadType::DataSource(ds)) => self.stream_source(ds).await,
                _ => Err(unsupported("readStream.table(name) (read a format with load())")),
            };
        }
        match &read.read_type {
            Some(ReadType::NamedTable(t)) => self.named(&t.unparsed_identifier).await,
            Some(ReadType::DataSource(ds)) => self.data_source(ds).await,
            None => Err(unsupported("a read of nothing")),
        }
    }

    /// A temp view by name (`global_temp.name` for a global one).
    async fn named(&self, identifier: &str) -> Result<DataFrame> {
        let name = identifier.trim_matches('`');
        let view = match name.split_once('.') {
            Some((ns, view)) if ns.eq_ignore_ascii_case("global_temp") => {
                self.sessions.global_view(&self.session.tenant, view)
            }
            _ => self.session.view(name),
        };
        let Some(relation) = view else {
            return Err(analysis(format!(
                "[TABLE_OR_VIEW_NOT_FOUND] The table or view `{name}` cannot be found. Ignis has no catalog: \
                 create it with df.createOrReplaceTempView(\"{name}\") or read files with spark.read"
            )));
        };
        if self.depth.fetch_add(1, Ordering::Relaxed) >= MAX_VIEW_DEPTH {
            return Err(analysis(format!(
                "view `{name}` nests more than {MAX_VIEW_DEPTH} views deep (does it read itself?)"
            )));
        }
        let df = self.plan(&relation).await;
        self.depth.fetch_sub(1, Ordering::Relaxed);
        df
    }

    async fn data_source(&self, ds: &sc::read::DataSource) -> Result<DataFrame> {
        let format = ds.format.as_deref().unwrap_or("parquet").to_ascii_lowercase();
        let Some(format) = Format::files_from_name(&format) else {
            return Err(IgnisError::Plan(format!(
                "[UNSUPPORTED_DATASOURCE] spark.read.format(\"{format}\"): Ignis reads csv, parquet and json"
            )));
        };
        if !ds.predicates.is_empty() {
            return Err(unsupported("JDBC predicates"));
        }
        let mut frames = Vec::new();
        for path in &ds.paths {
            frames.push(self.read_path(format, path, ds).await?);
        }
        let mut frames = frames.into_iter();
        let first = frames.next().ok_or_else(|| IgnisError::Plan("spark.read: no path given (load(path))".into()))?;
        frames.try_fold(first, |acc, df| acc.union(df).map_err(|e| plan_error("read", e)))
    }

    /// `spark.readStream.format(...)...load()`: the stream's table, planned
    /// as an empty table of its schema; each batch of the stream reads its new data.
    async fn stream_source(&self, ds: &sc::read::DataSource) -> Result<DataFrame> {
        if lock(&self.stream).is_some() {
            return Err(unsupported("a query of two streams (stream-stream joins)"));
        }
        let format = ds.format.as_deref().unwrap_or("parquet").to_ascii_lowercase();
        let (spec, schema) = if format == "kafka" {
            let get = |key: &str| option(&ds.options, key).cloned();
            let servers = get("kafka.bootstrap.servers")
                .ok_or_else(|| IgnisError::Plan("readStream.format(\"kafka\") needs kafka.bootstrap.servers".into()))?;
            let topic = get("subscribe").ok_or_else(|| {
                IgnisError::Plan("readStream.format(\"kafka\") needs subscribe (one topic; assign and subscribePattern are not supported)".into())
            })?;
            if topic.contains(',') {
                return Err(unsupported("subscribing to several topics"));
            }
            let max = get("maxoffsetspertrigger")
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| IgnisError::Plan(format!("maxOffsetsPerTrigger: {v:?} is not a number")))
                })
                .transpose()?;
            let options = TableOptions {
                bootstrap_servers: Some(servers),
                topic: Some(topic),
                starting_offsets: get("startingoffsets"),
                max_offsets_per_trigger: max,
                ..TableOptions::default()
            };
            let spec =
                TableSpec { format: Format::Kafka, location: String::new(), options, stream: true, files: Vec::new() };
            (spec, crate::stream::kafka::ValueColumns::Raw.schema())
        } else {
            let Some(format) = Format::files_from_name(&format) else {
                return Err(IgnisError::Plan(format!(
                    "[UNSUPPORTED_DATASOURCE] readStream.format(\"{format}\"): Ignis streams kafka, csv, parquet and json"
                )));
            };
            let [path] = ds.paths.as_slice() else {
                return Err(IgnisError::Plan("readStream: give one directory (load(path))".into()));
            };
            let location = self.readable(path, "readStream path")?;
            let options = table_options(format, &ds.options, ds.schema.as_deref())?;
            let Some(ddl) = options.schema.clone() else {
                return Err(IgnisError::Plan(
                    "readStream of files needs a schema (readStream.schema(...)), as in Spark".into(),
                ));
            };
            let schema = crate::planner::parse_schema(&self.ctx, &ddl).await.map_err(IgnisError::Plan)?;
            let mut spec = TableSpec::files_at(format, location.url(), options);
            spec.stream = true;
            (spec, Arc::new(schema))
        };
        let empty = datafusion::datasource::MemTable::try_new(schema, vec![vec![]])?;
        self.ctx.register_table(STREAM_TABLE, Arc::new(empty))?;
        *lock(&self.stream) = Some(spec);
        self.ctx.table(STREAM_TABLE).await.map_err(|e| plan_error("readStream", e))
    }

    /// `path` parsed, if the tenant may read it; `field` names it in errors.
    fn readable(&self, path: &str, field: &str) -> Result<Location> {
        let location = Location::parse(path, None, field)?;
        (self.policy)(&JobLocation { field: field.into(), location: location.clone(), access: Access::Read })?;
        Ok(location)
    }

    async fn read_path(&self, format: Format, path: &str, ds: &sc::read::DataSource) -> Result<DataFrame> {
        let location = self.readable(path, "spark.read path")?;
        let options = table_options(format, &ds.options, ds.schema.as_deref())?;
        let spec = TableSpec::files_at(format, directory_or_file(&self.ctx, location.url()).await, options);
        let infer = option(&ds.options, "inferschema").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if format == Format::Csv && spec.options.schema.is_none() && !infer {
            // Spark reads CSV columns as strings unless told to infer.
            let probe = self.register(spec.clone()).await?;
            let ddl: Vec<String> =
                probe.schema().fields().iter().map(|f| format!("`{}` STRING", f.name().replace('`', "``"))).collect();
            let mut strings = spec;
            strings.options.schema = Some(ddl.join(", "));
            return self.register(strings).await;
        }
        self.register(spec).await
    }

    async fn join(&self, j: &sc::Join) -> Result<DataFrame> {
        let left = self.join_side(&j.left).await?;
        let right = self.join_side(&j.right).await?;
        let how = match j.join_type() {
            join::JoinType::Inner | join::JoinType::Unspecified | join::JoinType::Cross => JoinType::Inner,
            join::JoinType::FullOuter => JoinType::Full,
            join::JoinType::LeftOuter => JoinType::Left,
            join::JoinType::RightOuter => JoinType::Right,
            join::JoinType::LeftAnti => JoinType::LeftAnti,
            join::JoinType::LeftSemi => JoinType::LeftSemi,
        };
        if !j.using_columns.is_empty() {
            return self.join_using(left, right, how, &j.using_columns);
        }
        let on = match &j.join_condition {
            Some(condition) => {
                // Resolve the condition against both sides' columns.
                let both =
                    left.clone().join_on(right.clone(), JoinType::Inner, None).map_err(|e| plan_error("join", e))?;
                vec![self.exprs(&both).expr(condition)?]
            }
            None => Vec::new(),
        };
        left.join_on(right, how, on).map_err(|e| plan_error("join", e))
    }

    /// A join input, named after the DataFrame it is, so `df["c"]` finds its
    /// side; an input whose columns come from several relations keeps theirs.
    async fn join_side(&self, side: &Option<Box<Relation>>) -> Result<DataFrame> {
        let side_rel = side.as_deref().ok_or_else(|| unsupported("a join without both sides"))?;
        let df = self.plan(side_rel).await?;
        let plan_id = side_rel.common.as_ref().and_then(|c| c.plan_id);
        let is_alias = matches!(side_rel.rel_type, Some(RelType::SubqueryAlias(_)));
        let qualifiers: std::collections::HashSet<_> = df.schema().iter().map(|(q, _)| q.cloned()).collect();
        match plan_id {
            Some(id) if !is_alias && qualifiers.len() <= 1 => {
                df.alias(&plan_alias(id)).map_err(|e| plan_error("join", e))
            }
            _ => Ok(df),
        }
    }

    /// `join(other, on=["k"])`: the key columns once, first, then the others.
    fn join_using(&self, left: DataFrame, right: DataFrame, how: JoinType, keys: &[String]) -> Result<DataFrame> {
        let resolve = |df: &DataFrame, k: &str| self.exprs(df).expr(&column(k));
        let lkeys = keys.iter().map(|k| resolve(&left, k)).collect::<Result<Vec<_>>>()?;
        let rkeys = keys.iter().map(|k| resolve(&right, k)).collect::<Result<Vec<_>>>()?;
        let name = |e: &Expr| match e {
            Expr::Column(c) => c.flat_name(),
            other => other.to_string(),
        };
        let lnames: Vec<String> = lkeys.iter().map(name).collect();
        let rnames: Vec<String> = rkeys.iter().map(name).collect();
        let lcols = left.schema().columns();
        let rcols = right.schema().columns();
        let (state, lplan) = left.into_parts();
        let rplan = right.into_unoptimized_plan();
        let joined = LogicalPlanBuilder::from(lplan)
            .join(
                rplan,
                how,
                (
                    lnames.iter().map(|s| s.as_str().into()).collect::<Vec<datafusion::common::Column>>(),
                    rnames.iter().map(|s| s.as_str().into()).collect::<Vec<datafusion::common::Column>>(),
                ),
                None,
            )
            .and_then(|b| b.build())
            .map_err(|e| plan_error("join", e))?;
        let df = DataFrame::new(state, joined);
        let mut select = Vec::new();
        for ((k, l), r) in keys.iter().zip(&lkeys).zip(&rkeys) {
            let key = match how {
                JoinType::Right => r.clone(),
                JoinType::Full => datafusion::functions::core::expr_fn::coalesce(vec![l.clone(), r.clone()]),
                _ => l.clone(),
            };
            select.push(key.alias(k));
        }
        let is_key = |c: &datafusion::common::Column| keys.iter().any(|k| k.eq_ignore_ascii_case(&c.name));
        select.extend(lcols.into_iter().filter(|c| !is_key(c)).map(Expr::Column));
        if !matches!(how, JoinType::LeftSemi | JoinType::LeftAnti) {
            select.extend(rcols.into_iter().filter(|c| !is_key(c)).map(Expr::Column));
        }
        df.select(select).map_err(|e| plan_error("join", e))
    }

    async fn set_op(&self, s: &sc::SetOperation) -> Result<DataFrame> {
        let left = self.input(&s.left_input).await?;
        let right = self.input(&s.right_input).await?;
        let all = s.is_all.unwrap_or(false);
        let by_name = s.by_name.unwrap_or(false);
        let result = match (s.set_op_type(), all) {
            (set_operation::SetOpType::Union, _) if by_name => left.union_by_name(right),
            (set_operation::SetOpType::Union, true) => left.union(right),
            (set_operation::SetOpType::Union, false) => left.union_distinct(right),
            (set_operation::SetOpType::Intersect, true) => return multiset(left, right, true),
            (set_operation::SetOpType::Intersect, false) => left.intersect_distinct(right),
            (set_operation::SetOpType::Except, true) => return multiset(left, right, false),
            (set_operation::SetOpType::Except, false) => left.except_distinct(right),
            (set_operation::SetOpType::Unspecified, _) => return Err(unsupported("a set operation without type")),
        };
        result.map_err(|e| plan_error("set operation", e))
    }

    async fn aggregate(&self, a: &sc::Aggregate) -> Result<DataFrame> {
        use sc::aggregate::GroupType;
        let input = self.input(&a.input).await?;
        let planner = self.exprs(&input);
        let groups = a.grouping_expressions.iter().map(|e| planner.named(e)).collect::<Result<Vec<_>>>()?;
        let groups = match a.group_type() {
            GroupType::Groupby | GroupType::Unspecified => groups,
            GroupType::Rollup => vec![datafusion::logical_expr::rollup(groups)],
            GroupType::Cube => vec![datafusion::logical_expr::cube(groups)],
            GroupType::Pivot | GroupType::GroupingSets => return Err(unsupported("pivot and grouping sets")),
        };
        let aggs = a.aggregate_expressions.iter().map(|e| planner.named(e)).collect::<Result<Vec<_>>>()?;
        input.aggregate(groups, aggs).map_err(|e| plan_error("agg", e))
    }

    /// `spark.sql(query)`: the queries-only rule of every job, temp views
    /// visible by name.
    pub async fn sql(&self, query: &str) -> Result<DataFrame> {
        let statements = plan::parse_sql(query, self.ctx.state().config().options())?;
        if statements.len() != 1 {
            return Err(analysis("spark.sql runs one statement at a time".into()));
        }
        let state = self.ctx.state();
        for statement in &statements {
            let references = state.resolve_table_references(statement).map_err(|e| plan_error("sql", e))?;
            for reference in references {
                let name = reference.table().to_string();
                let full = match reference.schema() {
                    Some(schema) => format!("{schema}.{name}"),
                    None => name.clone(),
                };
                if self.ctx.table_exist(reference.clone()).unwrap_or(false) {
                    continue;
                }
                let known = self.session.has_view(&name)
                    || (reference.schema().is_some_and(|s| s.eq_ignore_ascii_case("global_temp"))
                        && self.sessions.global_view(&self.session.tenant, &name).is_some());
                if known {
                    let df = self.named(&full).await?;
                    self.ctx.register_table(reference, df.into_view()).map_err(|e| plan_error("sql", e))?;
                }
            }
        }
        plan::plan_sql(&self.ctx, statements).await
    }

    fn local(&self, l: &sc::LocalRelation) -> Result<DataFrame> {
        let batches = match &l.data {
            Some(data) => {
                let reader = StreamReader::try_new(std::io::Cursor::new(data.as_slice()), None)?;
                let schema = reader.schema();
                let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
                (schema, batches)
            }
            None => {
                let schema = match &l.schema {
                    Some(s) => types::parse_json_schema(s)?
                        .ok_or_else(|| unsupported("an empty DataFrame with a DDL schema (give a StructType)"))?,
                    None => Schema::empty(),
                };
                (Arc::new(schema), Vec::new())
            }
        };
        let (schema, batches) = batches;
        let table = MemTable::try_new(schema, vec![batches])?;
        self.ctx.read_table(Arc::new(table)).map_err(|e| plan_error("createDataFrame", e))
    }

    fn range(&self, r: &sc::Range) -> Result<DataFrame> {
        if r.step == 0 {
            return Err(analysis("range: step must not be 0".into()));
        }
        if let Some(n) = r.num_partitions {
            *lock(&self.partitions) = Some(positive(n, "range numPartitions")?);
        }
        let start = r.start.unwrap_or(0);
        let count = ((r.end as i128 - start as i128) + (r.step as i128 - r.step.signum() as i128)) / r.step as i128;
        if count > 10_000_000 {
            return Err(unsupported("spark.range of more than 10,000,000 rows"));
        }
        // The values as in-memory batches, which travel with the plan to every executor.
        let (step, end) = (r.step, r.end);
        let values = (0..count.max(0) as i64)
            .map(move |i| start + i * step)
            .take_while(move |v| if step > 0 { *v < end } else { *v > end });
        let values: Vec<i64> = values.collect();
        let schema =
            Arc::new(Schema::new(vec![datafusion::arrow::datatypes::Field::new("id", DataType::Int64, false)]));
        let batches = values
            .chunks(65536)
            .map(|chunk| {
                datafusion::arrow::record_batch::RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(datafusion::arrow::array::Int64Array::from(chunk.to_vec()))],
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let table = MemTable::try_new(schema, vec![batches])?;
        self.ctx.read_table(Arc::new(table)).map_err(|e| plan_error("range", e))
    }

    async fn fill_na(&self, f: &sc::NaFill) -> Result<DataFrame> {
        let input = self.input(&f.input).await?;
        let values = f.values.iter().map(types::literal).collect::<Result<Vec<_>>>()?;
        let columns = input.schema().columns();
        let targets: Vec<(String, ScalarValue)> = if f.cols.is_empty() {
            let value = values.first().cloned().ok_or_else(|| unsupported("fillna without a value"))?;
            columns.iter().map(|c| (c.name.clone(), value.clone())).collect()
        } else if values.len() == 1 {
            f.cols.iter().map(|c| (c.clone(), values[0].clone())).collect()
        } else {
            f.cols.iter().cloned().zip(values).collect()
        };
        let schema = input.schema().clone();
        let select = columns
            .into_iter()
            .map(|c| {
                let Some((_, value)) = targets.iter().find(|(n, _)| n == &c.name) else { return Expr::Column(c) };
                let t = schema
                    .qualified_field_from_column(&c)
                    .map(|(_, f)| f.data_type().clone())
                    .unwrap_or(DataType::Null);
                let fits = (t.is_numeric() && value.data_type().is_numeric())
                    || (matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                        && matches!(value, ScalarValue::Utf8(_)))
                    || (t == DataType::Boolean && matches!(value, ScalarValue::Boolean(_)));
                if !fits {
                    return Expr::Column(c);
                }
                let name = c.name.clone();
                datafusion::functions::core::expr_fn::coalesce(vec![Expr::Column(c), cast(lit(value.clone()), t)])
                    .alias(name)
            })
            .collect::<Vec<_>>();
        input.select(select).map_err(|e| plan_error("fillna", e))
    }
}

/// `intersectAll` / `exceptAll` with multiset semantics: the n-th copy of a
/// row on the left is kept while n <= (intersect) or > (except) the number of
/// copies on the right. (DataFusion's INTERSECT/EXCEPT ALL drop every copy.)
fn multiset(left: DataFrame, right: DataFrame, intersect: bool) -> Result<DataFrame> {
    use datafusion::functions_aggregate::expr_fn::count;
    use datafusion::functions_window::expr_fn::row_number;
    use datafusion::logical_expr::{ExprFunctionExt, Operator, binary_expr};
    let place = if intersect { "intersectAll" } else { "exceptAll" };
    let err = |e| plan_error(place, e);
    let names: Vec<String> = left.schema().fields().iter().map(|f| f.name().clone()).collect();
    if names.len() != right.schema().fields().len() {
        return Err(analysis(format!("{place}: both sides need the same number of columns")));
    }
    let lcols: Vec<Expr> = left.schema().columns().into_iter().map(Expr::Column).collect();
    let rcols: Vec<Expr> = right.schema().columns().into_iter().map(Expr::Column).collect();
    let numbered = row_number().partition_by(lcols.clone()).build().map_err(err)?;
    let mut lselect: Vec<Expr> = lcols.iter().zip(&names).map(|(c, n)| c.clone().alias(format!("__l_{n}"))).collect();
    lselect.push(numbered.alias("__ignis_n"));
    let left = left.select(lselect).map_err(err)?;
    let rgroups: Vec<Expr> = rcols.iter().zip(&names).map(|(c, n)| c.clone().alias(format!("__r_{n}"))).collect();
    let right = right.aggregate(rgroups, vec![count(lit(1i64)).alias("__ignis_copies")]).map_err(err)?;
    let on: Vec<Expr> = names
        .iter()
        .map(|n| {
            binary_expr(
                datafusion::logical_expr::col(format!("__l_{n}")),
                Operator::IsNotDistinctFrom,
                datafusion::logical_expr::col(format!("__r_{n}")),
            )
        })
        .collect();
    let joined = left.join_on(right, JoinType::Left, on).map_err(err)?;
    let copies = datafusion::functions::core::expr_fn::coalesce(vec![
        datafusion::logical_expr::col("__ignis_copies"),
        lit(0i64),
    ]);
    let n = cast(datafusion::logical_expr::col("__ignis_n"), DataType::Int64);
    let keep = if intersect { n.lt_eq(copies) } else { n.gt(copies) };
    let out: Vec<Expr> = names.iter().map(|n| datafusion::logical_expr::col(format!("__l_{n}")).alias(n)).collect();
    joined.filter(keep).and_then(|df| df.select(out)).map_err(err)
}

/// Spark reads a path that names no object as a directory (its files); a
/// directory's URL ends with `/` for DataFusion.
async fn directory_or_file(ctx: &SessionContext, url: String) -> String {
    if url.ends_with('/') {
        return url;
    }
    let env = ctx.runtime_env();
    let is_object = match ignis_core::store::resolve(&env, &url) {
        Ok((store, path)) => store.head(&path).await.is_ok(),
        Err(_) => true,
    };
    if is_object { url } else { format!("{url}/") }
}

/// Spark's reader options as an Ignis table's.
fn table_options(
    format: Format,
    options: &std::collections::HashMap<String, String>,
    schema: Option<&str>,
) -> Result<TableOptions> {
    let mut out = TableOptions::default();
    let flag = |v: &str| v.eq_ignore_ascii_case("true");
    if let Some(schema) = schema.filter(|s| !s.trim().is_empty()) {
        out.schema = Some(match types::parse_json_schema(schema)? {
            Some(s) => s
                .fields()
                .iter()
                .map(|f| format!("`{}` {}", f.name(), types::sql_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", "),
            None => schema.to_string(),
        });
    }
    for (key, value) in options {
        match key.to_ascii_lowercase().as_str() {
            "header" => out.header = Some(flag(value)),
            "sep" | "delimiter" => out.delimiter = Some(value.clone()),
            "quote" => out.quote = Some(value.clone()),
            "escape" => out.escape = Some(value.clone()),
            "nullvalue" => out.null_value = Some(value.clone()),
            "mode" => {
                out.mode = Some(serde_json::from_value(serde_json::Value::String(value.to_ascii_uppercase())).map_err(
                    |_| {
                        IgnisError::Plan(format!("option mode: {value:?} is not PERMISSIVE, DROPMALFORMED or FAILFAST"))
                    },
                )?)
            }
            "columnnameofcorruptrecord" => out.column_name_of_corrupt_record = Some(value.clone()),
            "inferschema" | "path" | "multiline" | "mergeschema" | "encoding" | "charset" => {}
            other => tracing::debug!(option = other, "ignoring a reader option Ignis does not use"),
        }
    }
    if format == Format::Csv && out.header.is_none() {
        // Spark's CSV default: no header line.
        out.header = Some(false);
    }
    Ok(out)
}

fn option<'m>(options: &'m std::collections::HashMap<String, String>, key: &str) -> Option<&'m String> {
    options.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

fn column(name: &str) -> sc::Expression {
    sc::Expression {
        expr_type: Some(sc::expression::ExprType::UnresolvedAttribute(sc::expression::UnresolvedAttribute {
            unparsed_identifier: name.to_string(),
            plan_id: None,
        })),
    }
}

fn function(name: &str, arguments: Vec<sc::Expression>) -> sc::Expression {
    sc::Expression {
        expr_type: Some(sc::expression::ExprType::UnresolvedFunction(sc::expression::UnresolvedFunction {
            function_name: name.to_string(),
            arguments,
            is_distinct: false,
            is_user_defined_function: false,
        })),
    }
}

fn non_negative(n: i32, what: &str) -> Result<usize> {
    usize::try_from(n).map_err(|_| analysis(format!("{what} must not be negative, got {n}")))
}

fn positive(n: i32, what: &str) -> Result<usize> {
    match usize::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(analysis(format!("{what}: the number of partitions must be positive, got {n}"))),
    }
}

fn unsupported(what: &str) -> IgnisError {
    IgnisError::Plan(format!("[UNSUPPORTED_FEATURE] Ignis does not support {what} yet"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
