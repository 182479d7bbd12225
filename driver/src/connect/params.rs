//! `spark.sql(query, args=...)`: Spark's parameter markers (`:name`, `?`)
//! replaced by the values as SQL literals, outside strings, quoted names and
//! comments. Values are quoted here, so an argument is data, never SQL.

use std::collections::HashMap;

use datafusion::common::ScalarValue;
use ignis_core::error::{IgnisError, Result};

use super::proto::spark::Expression;
use super::proto::spark::expression::{ExprType, Literal};
use super::types;

/// The arguments of one `spark.sql` call, by name or by position.
pub enum Args {
    Named(HashMap<String, ScalarValue>),
    Positional(Vec<ScalarValue>),
}

impl Args {
    /// The arguments as pyspark sends them (literals, or literal expressions).
    pub fn from_wire(
        args: &HashMap<String, Literal>,
        pos_args: &[Literal],
        named_arguments: &HashMap<String, Expression>,
        pos_arguments: &[Expression],
    ) -> Result<Option<Self>> {
        let literal_of = |e: &Expression| match &e.expr_type {
            Some(ExprType::Literal(l)) => types::literal(l),
            _ => Err(IgnisError::Plan(
                "[UNSUPPORTED_FEATURE] spark.sql arguments must be literal values, not column expressions".into(),
            )),
        };
        if !args.is_empty() || !named_arguments.is_empty() {
            let mut named = HashMap::new();
            for (k, v) in args {
                named.insert(k.clone(), types::literal(v)?);
            }
            for (k, v) in named_arguments {
                named.insert(k.clone(), literal_of(v)?);
            }
            return Ok(Some(Args::Named(named)));
        }
        if !pos_args.is_empty() || !pos_arguments.is_empty() {
            let mut values = pos_args.iter().map(types::literal).collect::<Result<Vec<_>>>()?;
            values.extend(pos_arguments.iter().map(literal_of).collect::<Result<Vec<_>>>()?);
            return Ok(Some(Args::Positional(values)));
        }
        Ok(None)
    }
}

/// `sql` with every marker replaced by its argument; a marker without an
/// argument is an error naming it.
pub fn bind(sql: &str, args: &Args) -> Result<String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = String::with_capacity(sql.len());
    let mut next_positional = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' | '`' => {
                let end = closing(&chars, i, c);
                out.extend(&chars[i..end]);
                i = end;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                let end = chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |p| i + p);
                out.extend(&chars[i..end]);
                i = end;
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let end = (i + 2..chars.len().saturating_sub(1))
                    .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                    .map_or(chars.len(), |j| j + 2);
                out.extend(&chars[i..end]);
                i = end;
            }
            ':' if chars.get(i + 1) == Some(&':') => {
                out.push_str("::");
                i += 2;
            }
            ':' if chars.get(i + 1).is_some_and(|c| c.is_alphabetic() || *c == '_') => {
                let end = (i + 1..chars.len())
                    .find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_'))
                    .unwrap_or(chars.len());
                let name: String = chars[i + 1..end].iter().collect();
                let Args::Named(named) = args else {
                    return Err(unbound(&format!(":{name}"), "the arguments are positional"));
                };
                let value =
                    named.get(&name).ok_or_else(|| unbound(&format!(":{name}"), "no argument has that name"))?;
                out.push_str(&sql_literal(value)?);
                i = end;
            }
            '?' => {
                let Args::Positional(values) = args else {
                    return Err(unbound("?", "the arguments are named"));
                };
                let value = values
                    .get(next_positional)
                    .ok_or_else(|| unbound("?", &format!("there are only {} positional arguments", values.len())))?;
                next_positional += 1;
                out.push_str(&sql_literal(value)?);
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The index after the quote that closes the one at `start` (a doubled quote
/// is part of the text).
fn closing(chars: &[char], start: usize, quote: char) -> usize {
    let mut j = start + 1;
    while j < chars.len() {
        if chars[j] == quote {
            if chars.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    chars.len()
}

fn unbound(marker: &str, why: &str) -> IgnisError {
    IgnisError::Plan(format!("[UNBOUND_SQL_PARAMETER] Found the unbound parameter: {marker} ({why})"))
}

/// A value as SQL text that reads back as the same value.
fn sql_literal(value: &ScalarValue) -> Result<String> {
    if value.is_null() {
        return Ok("NULL".into());
    }
    let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
    Ok(match value {
        ScalarValue::Boolean(Some(b)) => if *b { "TRUE" } else { "FALSE" }.into(),
        ScalarValue::Int8(Some(v)) => format!("CAST({v} AS TINYINT)"),
        ScalarValue::Int16(Some(v)) => format!("CAST({v} AS SMALLINT)"),
        ScalarValue::Int32(Some(v)) => format!("CAST({v} AS INT)"),
        ScalarValue::Int64(Some(v)) => format!("CAST({v} AS BIGINT)"),
        ScalarValue::Float32(Some(v)) if v.is_finite() => format!("CAST({v:?} AS FLOAT)"),
        ScalarValue::Float64(Some(v)) if v.is_finite() => format!("CAST({v:?} AS DOUBLE)"),
        ScalarValue::Utf8(Some(s)) => quoted(s),
        ScalarValue::Decimal128(Some(_), p, s) => format!("CAST({} AS DECIMAL({p},{s}))", quoted(&value.to_string())),
        ScalarValue::Date32(Some(_)) => format!("DATE {}", quoted(&value.to_string())),
        ScalarValue::TimestampMicrosecond(Some(_), _) => format!("TIMESTAMP {}", quoted(&value.to_string())),
        other => {
            return Err(IgnisError::Plan(format!(
                "[UNSUPPORTED_FEATURE] a spark.sql argument of type {} (use numbers, strings, booleans, decimals, \
                 dates or timestamps)",
                other.data_type()
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_outside_strings_and_comments_are_bound() {
        let named = Args::Named(HashMap::from([("c".to_string(), ScalarValue::Utf8(Some("it's".into())))]));
        let sql = "SELECT ':c', x::int FROM t -- :c\nWHERE country = :c";
        assert_eq!(
            bind(sql, &named).ok().as_deref(),
            Some("SELECT ':c', x::int FROM t -- :c\nWHERE country = 'it''s'")
        );
        let positional = Args::Positional(vec![ScalarValue::Int64(Some(3)), ScalarValue::Boolean(Some(true))]);
        assert_eq!(
            bind("SELECT * FROM t WHERE a > ? AND b = ?", &positional).ok().as_deref(),
            Some("SELECT * FROM t WHERE a > CAST(3 AS BIGINT) AND b = TRUE")
        );
        assert!(bind("SELECT ?, ?, ?", &positional).is_err());
        assert!(bind("SELECT :missing", &named).is_err());
    }
}
