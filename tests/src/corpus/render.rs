//! Query results as DataFusion's own `.slt` corpus expects them, so its
//! files can be checked as they are: `NULL`, `(empty)`, `true`/`false`,
//! floats and decimals as plain decimals rounded to 12 places with trailing
//! zeros dropped, `NaN`/`Infinity`, one row per line of a multi-line last cell,
//! and the corpus's column type letters (`I R T B D P ?`).

use std::str::FromStr;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type, DecimalType, Float16Type, Float32Type,
    Float64Type, SchemaRef,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use bigdecimal::BigDecimal;
use sqllogictest::{ColumnType, DBOutput};

/// The corpus's column type letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    DateTime,
    Integer,
    Float,
    Text,
    Timestamp,
    Other,
}

impl ColumnType for Kind {
    fn from_char(value: char) -> Option<Self> {
        Some(match value {
            'B' => Self::Boolean,
            'D' => Self::DateTime,
            'I' => Self::Integer,
            'R' => Self::Float,
            'T' => Self::Text,
            'P' => Self::Timestamp,
            _ => Self::Other,
        })
    }

    fn to_char(&self) -> char {
        match self {
            Self::Boolean => 'B',
            Self::DateTime => 'D',
            Self::Integer => 'I',
            Self::Float => 'R',
            Self::Text => 'T',
            Self::Timestamp => 'P',
            Self::Other => '?',
        }
    }
}

fn kind(t: &DataType) -> Kind {
    match t {
        DataType::Boolean => Kind::Boolean,
        t if t.is_integer() => Kind::Integer,
        t if t.is_floating() => Kind::Float,
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            Kind::Float
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
        DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => Kind::DateTime,
        DataType::Timestamp(..) => Kind::Timestamp,
        DataType::Dictionary(key, value)
            if key.is_integer() && matches!(**value, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
        {
            Kind::Text
        }
        _ => Kind::Other,
    }
}

/// A query's result: rows, or "statement complete" when it has no columns and no rows.
pub fn output(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<DBOutput<Kind>, String> {
    let types: Vec<Kind> = schema.fields().iter().map(|f| kind(f.data_type())).collect();
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let cells = batch.columns().iter().map(|c| cell(c, row)).collect::<Result<Vec<_>, _>>()?;
            split_last_cell(cells, &mut rows);
        }
    }
    if rows.is_empty() && types.is_empty() {
        Ok(DBOutput::StatementComplete(0))
    } else {
        Ok(DBOutput::Rows { types, rows })
    }
}

/// A last cell of several lines (plans) becomes one extra row per line,
/// numbered, with its indentation as dashes (the runner ignores spaces).
fn split_last_cell(mut cells: Vec<String>, rows: &mut Vec<Vec<String>>) {
    let Some(last) = cells.last() else {
        rows.push(cells);
        return;
    };
    if !last.contains('\n') {
        rows.push(cells);
        return;
    }
    let last = cells.pop().unwrap_or_default();
    rows.push(cells);
    for (i, line) in last.split('\n').enumerate() {
        let text = line.trim_start();
        let indent = "-".repeat(line.len() - text.len());
        rows.push(vec![format!("{:02}){indent}{text}", i + 1)]);
    }
}

/// One value as the corpus writes it.
pub fn cell(col: &ArrayRef, row: usize) -> Result<String, String> {
    if col.is_null(row) {
        return Ok("NULL".into());
    }
    Ok(match col.data_type() {
        DataType::Null => "NULL".into(),
        DataType::Boolean => col.as_boolean().value(row).to_string(),
        // An f16 or f32 prints its own shortest digits, not those of the f64 it widens to.
        DataType::Float16 => single(col.as_primitive::<Float16Type>().value(row).to_f32()),
        DataType::Float32 => single(col.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal32(_, s) => decimal::<Decimal32Type>(col.as_primitive::<Decimal32Type>().value(row), *s),
        DataType::Decimal64(_, s) => decimal::<Decimal64Type>(col.as_primitive::<Decimal64Type>().value(row), *s),
        DataType::Decimal128(_, s) => decimal::<Decimal128Type>(col.as_primitive::<Decimal128Type>().value(row), *s),
        DataType::Decimal256(_, s) => decimal::<Decimal256Type>(col.as_primitive::<Decimal256Type>().value(row), *s),
        DataType::Utf8 => text(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => text(col.as_string::<i64>().value(row)),
        DataType::Utf8View => text(col.as_string_view().value(row)),
        DataType::Dictionary(..) => {
            let dict = col.as_any_dictionary();
            let key = dict.normalized_keys()[row];
            return cell(dict.values(), key);
        }
        _ => {
            let options = FormatOptions::default().with_null("NULL");
            let formatter = ArrayFormatter::try_new(col.as_ref(), &options).map_err(|e| format!("Arrow error: {e}"))?;
            formatter.value(row).to_string()
        }
    })
}

fn text(s: &str) -> String {
    if s.is_empty() { "(empty)".into() } else { s.trim_end_matches('\n').replace('\u{0}', "\\0") }
}

fn special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v == f64::INFINITY {
        Some("Infinity".into())
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity".into())
    } else {
        None
    }
}

fn float(v: f64) -> String {
    special(v).unwrap_or_else(|| plain(&v.to_string(), 12))
}

fn single(v: f32) -> String {
    special(f64::from(v)).unwrap_or_else(|| plain(&v.to_string(), 12))
}

fn decimal<T: DecimalType>(v: T::Native, scale: i8) -> String {
    plain(&T::format_decimal(v, u8::MAX, scale), i64::from(scale))
}

/// A decimal text rounded to `places`, without trailing zeros or exponent.
fn plain(digits: &str, places: i64) -> String {
    match BigDecimal::from_str(digits) {
        Ok(d) => d.round(places).normalized().to_plain_string(),
        Err(_) => digits.to_string(),
    }
}

/// The corpus's result check: rows joined by spaces, trailing spaces ignored,
/// and `<slt:ignore>` in the expected text matching anything.
pub fn validate(normalizer: sqllogictest::Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    const IGNORE: &str = "<slt:ignore>";
    let expected: Vec<String> = expected.iter().map(normalizer).collect();
    let actual: Vec<String> = actual.iter().map(|r| r.join(" ").trim_end().to_string()).collect();
    if !expected.iter().any(|l| l.contains(IGNORE)) {
        return actual == expected;
    }
    let (expected, actual) = (expected.join("\n"), actual.join("\n"));
    let mut at = 0;
    for (i, piece) in expected.split(IGNORE).enumerate() {
        if piece.is_empty() {
            continue;
        }
        match actual[at..].find(piece) {
            Some(found) if i > 0 || found == 0 => at += found + piece.len(),
            _ => return false,
        }
    }
    true
}

/// Lines compare without trailing whitespace.
#[allow(clippy::ptr_arg)]
pub fn normalize(s: &String) -> String {
    s.trim_end().to_string()
}
