//! DataFusion's own SQL test corpus (`datafusion-sqllogictest`, the version
//! Ignis locks) run through Ignis distributed.
//!
//! The `.slt` files come from the cargo registry: `corpus/Cargo.toml` depends
//! on the crate, `cargo fetch` downloads it and `cargo metadata` says where it
//! is; nothing is compiled and nothing is copied into this repository.
//!
//! Each record runs on single-node DataFusion set up as the corpus's own
//! runner sets it up (the reference), and every query the reference passes
//! runs again as an Ignis job. Statements (`CREATE TABLE`, `INSERT`, CTAS,
//! external tables, views, `SET`) change the file's catalog, which is the
//! reference's session; its tables are materialised as split Parquet files
//! and given to the Ignis jobs as tables (see [`engines`]). The counts per
//! file are kept in `corpus/RESULTS.md`; a file whose right answers on Ignis fall
//! below the recorded count fails the suite.

pub mod engines;
pub mod render;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use ignis_driver::{Driver, DriverConfig};
use sqllogictest::{Condition, Record, Runner, TestErrorKind};

use engines::{Catalog, OnIgnis, Reference};
use render::Kind;

/// Marks a failure that follows `SET`s Ignis jobs do not carry.
const SET_MARK: &str = "after SET of";
/// The label the corpus's own runner gives DataFusion (`onlyif`/`skipif`).
const LABEL: &str = "Datafusion";
const CRATE: &str = "datafusion-sqllogictest";

/// The corpus's package directory in the cargo registry, fetched if needed.
pub fn locate(manifest_dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = manifest_dir.join("corpus/Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let fetch = std::process::Command::new(&cargo)
        .args(["fetch", "--locked", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .status()?;
    anyhow::ensure!(fetch.success(), "cargo fetch --manifest-path {} failed", manifest.display());
    let out = std::process::Command::new(&cargo)
        .args(["metadata", "--locked", "--offline", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()?;
    anyhow::ensure!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let package = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == CRATE))
        .ok_or_else(|| anyhow::anyhow!("{CRATE} is not among {}'s packages", manifest.display()))?;
    let path = package["manifest_path"].as_str().map(PathBuf::from).unwrap_or_default();
    path.parent().map(Path::to_path_buf).ok_or_else(|| anyhow::anyhow!("no directory for {CRATE}"))
}

/// Every `.slt` file under the corpus's `test_files/`, relative to it.
pub fn files(corpus: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, base, out)?;
            } else if path.extension().is_some_and(|e| e == "slt")
                && let Ok(rel) = path.strip_prefix(base)
            {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        Ok(())
    }
    let base = corpus.join("test_files");
    let mut out = Vec::new();
    walk(&base, &base, &mut out)?;
    out.sort();
    Ok(out)
}

/// Files and records left out, each with its reason (`corpus/skip.toml`).
#[derive(Debug, Default, serde::Deserialize)]
pub struct SkipList {
    /// A file name or a directory prefix ending in `/`, and why.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Why queries Ignis does not pass fail: a piece of their failure text
    /// (the longest that matches wins), and the cause. (They still run and
    /// count as failures.)
    #[serde(default)]
    pub causes: BTreeMap<String, String>,
    /// The same for one query, by `file:line`, where the text does not tell.
    #[serde(default)]
    pub queries: BTreeMap<String, String>,
}

impl SkipList {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Ok(toml::from_str(&std::fs::read_to_string(path)?)?)
    }

    /// Why the query at `file:line` failed with `message`, if known.
    pub fn cause(&self, file: &str, line: u32, message: &str) -> Option<&str> {
        self.queries
            .get(&format!("{file}:{line}"))
            .or_else(|| {
                // The most specific text that matches.
                let matching = self.causes.iter().filter(|(text, _)| message.contains(text.as_str()));
                matching.max_by_key(|(text, _)| text.len()).map(|(_, why)| why)
            })
            .map(String::as_str)
    }

    pub fn reason(&self, file: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(k, _)| if k.ends_with('/') { file.starts_with(k.as_str()) } else { file == k.as_str() })
            .map(|(_, v)| v.as_str())
    }
}

/// Why an Ignis query did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Difference {
    /// The same rows in another order, for a query without a total order.
    RowOrder,
    /// Other rows of the same count where the query lets the engine pick
    /// (`LIMIT` or `first_value` without `ORDER BY`).
    RowChoice,
    /// The error the file expects, raised by another row.
    ErrorRow,
    /// Column types differ (the `query` line's letters).
    ColumnTypes,
    /// Both failed, with another message.
    ErrorText,
    /// The reference failed as the file expects; Ignis answered.
    NoError,
    /// Ignis failed where the reference answered.
    Error,
    /// Other rows.
    WrongAnswer,
}

impl Difference {
    pub fn label(self) -> &'static str {
        match self {
            Difference::RowOrder => "row order",
            Difference::RowChoice => "rows picked without ORDER BY",
            Difference::ColumnTypes => "column types",
            Difference::ErrorText => "error text",
            Difference::ErrorRow => "same error, another row",
            Difference::NoError => "no error",
            Difference::Error => "ignis error",
            Difference::WrongAnswer => "wrong answer",
        }
    }
}

impl FileReport {
    /// Queries whose answer is right, in the file's order or (where the query
    /// leaves the order or the choice of rows open) not, and expected errors
    /// raised by another row: the count the suite holds each file to, as an
    /// Ignis job's row order and first failing task may vary from run to run.
    pub fn right_answers(&self) -> usize {
        let open = self
            .ignis_failed
            .iter()
            .filter(|(_, d, _)| matches!(d, Difference::RowOrder | Difference::RowChoice | Difference::ErrorRow));
        self.ignis_passed + open.count()
    }
}

#[derive(Debug, Default, Clone)]
pub struct FileReport {
    pub file: String,
    /// Statement and query records the file runs (conditions applied).
    pub records: usize,
    /// Records single-node DataFusion passes.
    pub reference_passed: usize,
    /// Statements the reference passed and the catalog applied (not Ignis jobs).
    pub catalog: usize,
    /// Queries the reference passed that ran as Ignis jobs.
    pub ignis_run: usize,
    pub ignis_passed: usize,
    /// `file:line`, what differs, and the first lines of the runner's message.
    pub ignis_failed: Vec<(u32, Difference, String)>,
    /// Records the reference fails, with its message: not judged on Ignis.
    pub reference_failed: Vec<(u32, String)>,
    /// Records left out by design, with the reason.
    pub skipped: Vec<(u32, String)>,
    /// The whole file left out, and why.
    pub file_skipped: Option<String>,
}

/// What a record's SQL is to the runner.
enum Class {
    /// Runs as an Ignis job (and on the reference).
    Query,
    /// Changes the catalog; runs on the reference only.
    Catalog,
    /// Left out on Ignis, with the reason.
    Skip(&'static str),
}

const INTROSPECTION: &str = "reads information_schema or SHOW: the file's catalog and session as DataFusion sees them; an Ignis job sees only its own tables and Ignis's session settings";
const EXPLAIN: &str = "EXPLAIN shows the plan, and Ignis's plan has stages by design; Ignis jobs refuse EXPLAIN (`ignis explain` shows the stage plan)";

fn classify(sql: &str, ctx: &datafusion::prelude::SessionContext) -> Class {
    if sql.to_lowercase().contains("information_schema") {
        return Class::Skip(INTROSPECTION);
    }
    // In the dialect the file set, as the reference parses it.
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let Some(dialect) = dialect_from_str(dialect) else { return Class::Query };
    let parsed = DFParserBuilder::new(sql).with_dialect(dialect.as_ref()).build();
    let Ok(statements) = parsed.and_then(|mut p| p.parse_statements()) else {
        // Both sides must report the same syntax error.
        return Class::Query;
    };
    match statements.front() {
        Some(Statement::Statement(s)) => match s.as_ref() {
            ast::Statement::Query(q) if selects_into(q) => Class::Catalog,
            ast::Statement::Query(_) => Class::Query,
            ast::Statement::Explain { .. } | ast::Statement::ExplainTable { .. } => Class::Skip(EXPLAIN),
            ast::Statement::ShowVariable { .. }
            | ast::Statement::ShowVariables { .. }
            | ast::Statement::ShowTables { .. }
            | ast::Statement::ShowColumns { .. }
            | ast::Statement::ShowFunctions { .. } => Class::Skip(INTROSPECTION),
            _ => Class::Catalog,
        },
        Some(Statement::Explain(_)) => Class::Skip(EXPLAIN),
        Some(_) => Class::Catalog,
        None => Class::Query,
    }
}

fn selects_into(q: &ast::Query) -> bool {
    matches!(q.body.as_ref(), ast::SetExpr::Select(s) if s.into.is_some())
}

fn skipped_by_condition(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| match c {
        Condition::OnlyIf { label } => label != LABEL,
        Condition::SkipIf { label } => label == LABEL,
    })
}

/// Run one corpus file (`rel` under `test_files/`) on both sides.
pub async fn run_file(corpus: &Path, rel: &str, scratch: &Path, driver: Arc<Driver>) -> anyhow::Result<FileReport> {
    let path = corpus.join("test_files").join(rel);
    let records = sqllogictest::parse_file::<Kind>(&path).map_err(|e| anyhow::anyhow!("parsing {rel}: {e}"))?;
    let ctx = engines::reference_session();
    let defaults = settings(&ctx);
    let stem = rel.trim_end_matches(".slt").replace('/', "_");
    let catalog = Catalog::new(scratch.join("tables").join(&stem));
    // The corpus writes under `test_files/scratch/<file>/` relative to the working directory.
    let _ = std::fs::create_dir_all(Path::new("test_files/scratch").join(Path::new(rel).with_extension("")));

    let reference_ctx = ctx.clone();
    let mut reference = Runner::new(move || {
        let ctx = reference_ctx.clone();
        async move { Ok(Reference { ctx }) }
    });
    let (ignis_driver, ignis_catalog) = (driver.clone(), catalog.clone());
    let mut ignis = Runner::new(move || {
        let (driver, catalog) = (ignis_driver.clone(), ignis_catalog.clone());
        async move { Ok(OnIgnis { driver, catalog }) }
    });
    configure(&mut reference);
    configure(&mut ignis);

    let mut report = FileReport { file: rel.to_string(), ..FileReport::default() };
    for record in records {
        let (sql, conditions, line) = match &record {
            Record::Halt { .. } => break,
            Record::Statement { sql, conditions, loc, .. } | Record::Query { sql, conditions, loc, .. } => {
                (sql.clone(), conditions.clone(), loc.line())
            }
            _ => {
                // Controls (sort mode, hash threshold...) apply to both sides.
                let _ = reference.run_async(record.clone()).await;
                let _ = ignis.run_async(record).await;
                continue;
            }
        };
        if skipped_by_condition(&conditions) {
            continue;
        }
        report.records += 1;
        let class = classify(&sql, &ctx);
        let on_reference = reference.run_async(record.clone()).await;
        if matches!(class, Class::Catalog) {
            catalog.sync(&ctx, &sql).await;
            catalog.follow(&changed_settings(&ctx, &defaults));
        }
        if let Err(e) = on_reference {
            report.reference_failed.push((line, first_lines(&e.to_string(), 2)));
            continue;
        }
        report.reference_passed += 1;
        match class {
            Class::Catalog => report.catalog += 1,
            Class::Skip(reason) => report.skipped.push((line, reason.to_string())),
            Class::Query => {
                report.ignis_run += 1;
                match ignis.run_async(record).await {
                    Ok(_) => report.ignis_passed += 1,
                    Err(e) => {
                        let mut message = first_lines(&e.to_string(), 6);
                        let unmaterialised = catalog.unmaterialised();
                        for (table, why) in unmaterialised.iter().filter(|(t, _)| sql.contains(t.as_str())) {
                            let _ = write!(message, " [table {table} not materialised: {why}]");
                        }
                        let (_, _, settings) = engines::carried(&changed_settings(&ctx, &defaults));
                        if !settings.is_empty() {
                            let _ = write!(message, " [{SET_MARK} {}]", settings.join(", "));
                        }
                        let mut d = difference(&e.kind());
                        if d == Difference::WrongAnswer && picks_rows(&sql, &e.kind()) {
                            d = Difference::RowChoice;
                        }
                        report.ignis_failed.push((line, d, message));
                    }
                }
            }
        }
    }
    Ok(report)
}

fn settings(ctx: &datafusion::prelude::SessionContext) -> BTreeMap<String, Option<String>> {
    ctx.state().config().options().entries().into_iter().map(|e| (e.key, e.value)).collect()
}

/// The options a file's `SET`s changed from the defaults.
fn changed_settings(
    ctx: &datafusion::prelude::SessionContext,
    defaults: &BTreeMap<String, Option<String>>,
) -> Vec<(String, String)> {
    settings(ctx)
        .into_iter()
        .filter(|(k, v)| defaults.get(k) != Some(v))
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect()
}

/// A query whose answer is any rows of a kind, or values in any order
/// (`LIMIT`, `first_value`, `array_agg`, `string_agg` without `ORDER BY`),
/// answered with other rows of the same count.
fn picks_rows(sql: &str, kind: &TestErrorKind) -> bool {
    let sql = sql.to_lowercase();
    // No ORDER BY, or a LIMIT inside a subquery (which then picks any rows).
    let inner_limit = sql.rfind(')').is_some_and(|close| sql[..close].contains("limit"));
    let unordered = !sql.contains("order by") || inner_limit;
    let picks =
        ["limit", "first_value", "last_value", "array_agg", "string_agg", "any_value"].iter().any(|w| sql.contains(w));
    let same_count = match kind {
        TestErrorKind::QueryResultMismatch { expected, actual, .. } => {
            expected.lines().count() == actual.lines().count()
        }
        _ => false,
    };
    unordered && picks && same_count
}

/// The corpus runner's checks: its label, strict column types, its row comparison.
fn configure<D: sqllogictest::AsyncDB<ColumnType = Kind>, M: sqllogictest::MakeConnection<Conn = D>>(
    runner: &mut Runner<D, M>,
) {
    runner.add_label(LABEL);
    runner.with_column_validator(sqllogictest::strict_column_validator);
    runner.with_normalizer(render::normalize);
    runner.with_validator(render::validate);
}

fn difference(kind: &TestErrorKind) -> Difference {
    match kind {
        TestErrorKind::ErrorMismatch { err, expected_err, .. } => {
            // Values in quotes name the row that failed; which row fails first
            // depends on which task does.
            let unquote = |s: &str| {
                s.split('\'')
                    .enumerate()
                    .map(|(i, part)| if i % 2 == 1 { "?" } else { part })
                    .collect::<Vec<_>>()
                    .join("'")
            };
            let expected = ["(regex) ", "(multiline) "].iter().find_map(|p| expected_err.strip_prefix(p));
            if expected.is_some_and(|e| unquote(&err.to_string()).contains(&unquote(e))) {
                Difference::ErrorRow
            } else {
                Difference::ErrorText
            }
        }
        TestErrorKind::Ok { .. } => Difference::NoError,
        TestErrorKind::Fail { .. } => Difference::Error,
        TestErrorKind::QueryResultColumnsMismatch { .. } => Difference::ColumnTypes,
        TestErrorKind::QueryResultMismatch { expected, actual, .. } => {
            let sorted = |s: &str| {
                let mut lines: Vec<String> =
                    s.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
                lines.sort();
                lines
            };
            if sorted(expected) == sorted(actual) { Difference::RowOrder } else { Difference::WrongAnswer }
        }
        _ => Difference::Error,
    }
}

fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(n).collect();
    lines.join(" / ").replace('|', "\\|")
}

/// A local driver whose jobs shuffle through files under `shuffle_root`.
pub fn local_driver(shuffle_root: &Path) -> anyhow::Result<Arc<Driver>> {
    let shuffle_root = url::Url::from_directory_path(shuffle_root)
        .map_err(|()| anyhow::anyhow!("shuffle root must be absolute"))?
        .to_string();
    Ok(Arc::new(Driver::local(2, DriverConfig { shuffle_root, ..DriverConfig::default() })))
}

/// The results file: a summary, one row per file, and every record Ignis did
/// not pass with what differs.
pub fn results_markdown(reports: &[FileReport], skip: &SkipList) -> String {
    let sum = |f: fn(&FileReport) -> usize| reports.iter().map(f).sum::<usize>();
    let (run, passed) = (sum(|r| r.ignis_run), sum(|r| r.ignis_passed));
    let reference = sum(|r| r.reference_passed);
    let judged = reference - sum(|r| r.skipped.len());
    let pct = |a: usize, b: usize| if b == 0 { 0.0 } else { 100.0 * a as f64 / b as f64 };
    let mut by_difference: BTreeMap<Difference, usize> = BTreeMap::new();
    for r in reports {
        for (_, d, _) in &r.ignis_failed {
            *by_difference.entry(*d).or_default() += 1;
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "# DataFusion's sqllogictest corpus on Ignis distributed\n");
    let _ = writeln!(
        out,
        "Generated by `scripts/conformance --record` from `{CRATE}` (the version in `tests/corpus/Cargo.toml`).\n\
         Every query single-node DataFusion passes runs as an Ignis job in local mode ({} shuffle partitions, every table \
         split over {} Parquet files); statements build the file's catalog (see `tests/src/corpus/`).\n",
        engines::SHUFFLE_PARTITIONS,
        engines::FILES_PER_TABLE
    );
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "- files: {} ({} skipped whole, reasons below)",
        reports.len(),
        reports.iter().filter(|r| r.file_skipped.is_some()).count()
    );
    let _ = writeln!(out, "- records: {}; single-node DataFusion passes {reference}", sum(|r| r.records));
    let _ = writeln!(
        out,
        "- of those: {} statements applied by the catalog, {} left out by design (EXPLAIN, information_schema, SHOW), {run} queries run as Ignis jobs",
        sum(|r| r.catalog),
        sum(|r| r.skipped.len())
    );
    let _ = writeln!(out, "- Ignis passes {passed} of {run} queries ({:.2}%)", pct(passed, run));
    let right = sum(|r| r.right_answers());
    let _ = writeln!(
        out,
        "- Ignis answers {right} of {run} queries right ({:.2}%): its passes, and answers whose row order, rows or \
         failing row the query leaves open (no ORDER BY, LIMIT without ORDER BY, array_agg/string_agg/first_value \
         without ORDER BY)",
        pct(right, run)
    );
    let _ = writeln!(
        out,
        "- of the {judged} records single-node passes and Ignis does not leave out by design, Ignis passes {} ({:.2}%)",
        passed + sum(|r| r.catalog),
        pct(passed + sum(|r| r.catalog), judged)
    );
    let after_set = reports.iter().flat_map(|r| &r.ignis_failed).filter(|(_, _, m)| m.contains(SET_MARK)).count();
    let failed = run - passed;
    let _ = writeln!(
        out,
        "- of the {failed} queries Ignis does not pass, {after_set} run after the file `SET` a DataFusion option that no Ignis \
         job setting carries (dialect, time zone, parse_float_as_decimal...); without them Ignis passes {passed} of {} ({:.2}%)",
        run - after_set,
        pct(passed, run - after_set)
    );
    let _ = writeln!(out, "- what differs, over all {failed}:");
    for (d, n) in &by_difference {
        let _ = writeln!(out, "  - {}: {n}", d.label());
    }
    let _ = writeln!(out, "\n## Per file\n");
    let _ = writeln!(
        out,
        "| file | records | single-node passes | catalog | Ignis run | Ignis passes | Ignis right answers | Ignis fails | left out | note |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in reports {
        let note = r.file_skipped.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.file,
            r.records,
            r.reference_passed,
            r.catalog,
            r.ignis_run,
            r.ignis_passed,
            r.right_answers(),
            r.ignis_failed.len(),
            r.skipped.len(),
            note.replace('|', "\\|")
        );
    }
    // Order-open answers (row order, rows picked, the same error from another
    // row) need no cause: they are right answers.
    let needs_cause =
        |d: &Difference| !matches!(d, Difference::RowOrder | Difference::RowChoice | Difference::ErrorRow);
    let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unexplained = 0;
    for r in reports {
        for (line, _, message) in r.ignis_failed.iter().filter(|(_, d, _)| needs_cause(d)) {
            match skip.cause(&r.file, *line, message) {
                Some(cause) => *causes.entry(cause).or_default() += 1,
                None => unexplained += 1,
            }
        }
    }
    let _ = writeln!(out, "\n## Why the others fail\n");
    let _ = writeln!(
        out,
        "Causes from `tests/corpus/skip.toml` (`[causes]`: by failure text, `[queries]`: by query), with the number of \
         failing queries each explains (row order, rows picked and the same error from another row are right answers \
         and left out). Unexplained: {unexplained}.\n"
    );
    let mut ranked: Vec<(&str, usize)> = causes.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (cause, n) in ranked {
        let _ = writeln!(out, "- {n}: {cause}");
    }
    let _ = writeln!(out, "\n## Queries Ignis does not pass\n");
    for r in reports {
        for (line, d, message) in &r.ignis_failed {
            let why = match skip.cause(&r.file, *line, message) {
                Some(cause) if needs_cause(d) => format!(" **Cause:** {cause}"),
                _ => String::new(),
            };
            let _ = writeln!(out, "- `{}:{line}` {}: {message}{why}", r.file, d.label());
        }
    }
    let _ = writeln!(out, "\n## Records single-node DataFusion fails (not judged)\n");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for r in reports {
        for (_, message) in &r.reference_failed {
            *reasons.entry(reference_reason(message)).or_default() += 1;
        }
    }
    for (reason, n) in reasons {
        let _ = writeln!(out, "- {n}: {reason}");
    }
    out
}

/// Why the reference failed a record, in a few words.
fn reference_reason(message: &str) -> String {
    let m = message.to_lowercase();
    if m.contains("testing/data")
        || m.contains("core/tests/data")
        || m.contains("no such file")
        || m.contains("not found: ../")
    {
        "reads a file of DataFusion's repository that the crate does not ship".into()
    } else if m.contains("invalid function") || m.contains("not found in registry") {
        "calls a function of a DataFusion feature Ignis does not build".into()
    } else if m.contains("table") && m.contains("not found") {
        "reads a table the corpus's runner registers in Rust code, or one an earlier failed statement should have made"
            .into()
    } else {
        format!("other: {}", message.chars().take(160).collect::<String>())
    }
}

/// Ignis's right answers per file as recorded in a results file.
pub fn recorded_passes(markdown: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in markdown.lines().filter(|l| l.starts_with("| ") && l.contains(".slt")) {
        let cells: Vec<&str> = line.split(" | ").map(|c| c.trim_matches(|ch| ch == '|' || ch == ' ')).collect();
        if let (Some(file), Some(passes)) = (cells.first(), cells.get(6).and_then(|c| c.parse().ok())) {
            out.insert(file.to_string(), passes);
        }
    }
    out
}
