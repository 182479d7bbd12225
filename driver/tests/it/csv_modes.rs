//! Spark's CSV modes on a file with broken rows: PERMISSIVE (with a corrupt
//! record column), DROPMALFORMED (counted), FAILFAST (file, line, reason).

use std::path::Path;

use crate::common::*;

const BROKEN: &str = "id,name,amount,day\n\
1,alpha,10,2026-01-01\n\
2,beta,lots,2026-01-02\n\
3,gamma\n\
4,delta,40,2026-01-04,extra\n\
5,NA,50,not-a-date\n\
6,\"quoted, name\",60,2026-01-06\n";

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/part-0.csv"), BROKEN).unwrap();
    dir
}

fn job(ws: &Path, options: &str, sql: &str) -> String {
    let text = format!(
        "sql = \"{sql}\"\n[tables.t]\nformat = 'csv'\nlocation = 'data/'\n\
         options = {{ schema = 'id INT, name STRING, amount INT, day DATE', {options} }}\n"
    );
    std::fs::write(ws.join("job.toml"), text).unwrap();
    "job.toml".to_string()
}

#[test]
fn permissive_nulls_bad_fields_and_keeps_the_raw_line() {
    let ws = workspace();
    let file = job(
        ws.path(),
        "mode = 'PERMISSIVE', null_value = 'NA', column_name_of_corrupt_record = '_corrupt'",
        "SELECT id, name, amount, day, _corrupt FROM t ORDER BY id",
    );
    let out = ignis(&["run", &file], ws.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = |id: &str| text.lines().find(|l| l.starts_with(&format!("| {id} "))).unwrap_or_default().to_string();
    assert!(row("1").contains("alpha") && row("1").contains("2026-01-01"), "{text}");
    // A field that does not parse becomes null; the raw line is kept.
    assert!(row("2").contains("beta") && row("2").contains("2,beta,lots,2026-01-02"), "{text}");
    // Too few fields: the missing ones are null, the row is marked corrupt.
    assert!(row("3").contains("gamma") && row("3").contains("| 3,gamma"), "{text}");
    assert!(row("4").contains("4,delta,40,2026-01-04,extra"), "{text}");
    // null_value is null, not malformed by itself; the bad date is.
    assert!(row("5").contains("5,NA,50,not-a-date"), "{text}");
    let last_cell =
        |r: String| r.trim_end().trim_end_matches('|').rsplit('|').next().unwrap_or_default().trim().to_string();
    assert!(row("6").contains("quoted, name") && last_cell(row("6")).is_empty(), "{text}");
    assert!(last_cell(row("1")).is_empty(), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("| ")).count(), 7, "header + 6 rows: {text}");
}

#[test]
fn dropmalformed_skips_and_counts_bad_rows() {
    let ws = workspace();
    let file = job(ws.path(), "mode = 'DROPMALFORMED'", "SELECT id FROM t ORDER BY id");
    let out = ignis(&["run", &file], ws.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(|l| l.trim_matches(|c| c == '|' || c == ' ').to_string())
        .collect();
    assert_eq!(ids, vec!["1", "6"], "{}", stdout(&out));
    assert!(stderr(&out).contains("4 malformed rows dropped"), "{}", stderr(&out));
}

#[test]
fn failfast_names_file_line_and_reason() {
    let ws = workspace();
    let file = job(ws.path(), "mode = 'FAILFAST'", "SELECT count(*) FROM t");
    let out = ignis(&["run", &file], ws.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("part-0.csv: line 3: cannot parse 'lots' as Int32 for column 'amount'"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
}

#[test]
fn failfast_reports_a_row_of_the_wrong_width() {
    let ws = workspace();
    std::fs::write(ws.path().join("data/part-0.csv"), "id,name,amount,day\n1,a,1,2026-01-01\n2,b\n").unwrap();
    let file = job(ws.path(), "mode = 'FAILFAST'", "SELECT count(*) FROM t");
    let out = ignis(&["run", &file], ws.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 3: expected 4 fields, found 2"), "{}", stderr(&out));
}
